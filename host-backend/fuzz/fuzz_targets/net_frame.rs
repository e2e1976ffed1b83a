//! The switch's guest-facing parsing on hostile input: a TX descriptor
//! chain (order, directions, lengths, addresses), the virtio-net header and
//! frame behind it, the forwarding decision on a MAC table the input keeps
//! feeding, and the copy into a hostile RX chain. Every outcome is a typed
//! drop or a frame within the MTU; a decision never sends a frame back to
//! its ingress port; an RX copy never writes past the chain.
#![no_main]

use std::time::{Duration, Instant};

use host_backend::net::frame::{check_tx, copy_tx_chain, hdr_len, Desc, FRAME_OVERHEAD};
use host_backend::net::port::write_rx;
use host_backend::net::switch::{decide, Decision, MacTable};
use libfuzzer_sys::fuzz_target;

const MEM_BASE: u64 = 0x1000;

fn descs(n: usize, rest: &mut &[u8]) -> Vec<Desc> {
    let mut out = Vec::new();
    for _ in 0..n {
        if rest.len() < 6 {
            break;
        }
        let r = *rest;
        let addr = MEM_BASE.wrapping_add(u64::from(u16::from_le_bytes([r[0], r[1]]) & 0x0fff))
            ^ (u64::from(r[2] & 0x80) << 40);
        let len = match r[3] & 3 {
            0 => u32::from(r[4]),
            1 => u32::from(u16::from_le_bytes([r[4], r[2]])),
            2 => u32::MAX - u32::from(r[4]),
            _ => 64 * u32::from(r[4]),
        };
        out.push(Desc {
            addr,
            len,
            write_only: r[5] & 1 == 1,
        });
        *rest = &r[6..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ntx, nrx, flags) = (usize::from(data[0] % 8), usize::from(data[1] % 8), data[2]);
    let ingress = usize::from(data[3] % 4);
    let mut rest = &data[4..];
    let tx = descs(ntx, &mut rest);
    let rx = descs(nrx, &mut rest);
    let mem = rest;
    let hl = hdr_len(if flags & 1 != 0 { 1 << 32 } else { 0 });
    let mtu = if flags & 2 != 0 { 68 } else { 1500 };
    let max = hl + usize::from(mtu) + FRAME_OVERHEAD;
    let copied = copy_tx_chain(&tx, flags & 4 == 0, max, |addr, out| {
        let start = addr.checked_sub(MEM_BASE).ok_or(())? as usize;
        let src = mem
            .get(start..start.checked_add(out.len()).ok_or(())?)
            .ok_or(())?;
        out.copy_from_slice(src);
        Ok(())
    });
    let Ok(buf) = copied else { return };
    assert!(buf.len() <= max);
    let Ok(frame) = check_tx(&buf, hl, mtu) else {
        return;
    };
    assert!(frame.len() >= 14 && frame.len() <= usize::from(mtu) + FRAME_OVERHEAD);

    // Learn from the frame and from a second copy with source and
    // destination swapped on another port, then decide.
    let now = Instant::now();
    let mut table = MacTable::new(Duration::from_secs(u64::from(flags >> 4) + 1));
    let mut swapped = frame.to_vec();
    swapped[..6].copy_from_slice(&frame[6..12]);
    swapped[6..12].copy_from_slice(&frame[..6]);
    let _ = decide(&mut table, (ingress + 1) % 4, &swapped, now);
    let later = now + Duration::from_secs(u64::from(flags >> 3 & 1) * 20);
    let (d, _) = decide(&mut table, ingress, frame, later);
    if let Decision::Unicast(p) = d {
        assert_ne!(p, ingress, "a frame went back to its ingress port");
    }

    // Copy into the RX chain: never more than header + frame, never past a
    // descriptor.
    let header = [0u8; 12];
    let mut wrote = 0usize;
    let r = write_rx(&rx, flags & 8 == 0, &header[..hl], frame, |addr, bytes| {
        let ok = rx
            .iter()
            .any(|d| addr >= d.addr && addr - d.addr + bytes.len() as u64 <= u64::from(d.len));
        assert!(ok, "write outside the RX chain");
        wrote += bytes.len();
        Ok(())
    });
    if let Ok(n) = r {
        assert_eq!(n as usize, hl + frame.len());
        assert_eq!(wrote, hl + frame.len());
    }
});
