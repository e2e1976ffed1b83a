//! Hostile indices and bytes in the xenstore ring page, seen from the guest:
//! the ring must reject impossible indices, never read or write outside the
//! page, and never hand out more than was produced.
#![no_main]

use core::ptr::NonNull;
use libfuzzer_sys::fuzz_target;
use xenbus::xenstore::ring::{offset, Side, XenstoreRing, RING_SIZE};

#[repr(C, align(4096))]
struct Page([u8; 4096]);

fuzz_target!(|data: &[u8]| {
    // The first 16 bytes are the peer-visible indices (req_cons, req_prod,
    // rsp_cons, rsp_prod); the rest drives operations.
    let mut page = Box::new(Page([0x5A; 4096]));
    let n = data.len().min(16);
    page.0[offset::REQ_CONS..offset::REQ_CONS + n].copy_from_slice(&data[..n]);
    let ops = &data[n..];
    let ptr = NonNull::from(&mut page.0).cast::<u8>();
    // SAFETY: the page is 4096 bytes, 4096-aligned, lives until the end of
    // this closure (after the ring), and is only touched through the ring
    // and the raw "peer" stores below.
    let mut ring = unsafe { XenstoreRing::attach(ptr, Side::Guest) };
    let mut buf = [0u8; RING_SIZE + 16];
    for op in ops.chunks(5) {
        match op[0] % 3 {
            0 => {
                let len = (usize::from(op.get(1).copied().unwrap_or(0)) * 5).min(buf.len());
                if let Ok(got) = ring.read(&mut buf[..len]) {
                    assert!(got <= RING_SIZE && got <= len);
                }
            }
            1 => {
                let len = usize::from(op.get(1).copied().unwrap_or(0)) * 5;
                if let Ok(put) = ring.write(&[0xAB; 1280][..len]) {
                    assert!(put <= RING_SIZE && put <= len);
                }
            }
            _ => {
                // The peer rewrites one of its indices.
                let v = u32::from_le_bytes([
                    op.get(1).copied().unwrap_or(0),
                    op.get(2).copied().unwrap_or(0),
                    op.get(3).copied().unwrap_or(0),
                    op.get(4).copied().unwrap_or(0),
                ]);
                let off = if op[0] & 8 == 0 {
                    offset::RSP_PROD
                } else {
                    offset::REQ_CONS
                };
                let p = ptr.as_ptr().wrapping_add(off).cast::<u32>();
                // SAFETY: `off` is an aligned in-page field offset; this
                // thread is the only other accessor and uses atomics as the
                // ring does.
                unsafe { core::sync::atomic::AtomicU32::from_ptr(p) }
                    .store(v, core::sync::atomic::Ordering::SeqCst);
            }
        }
        let _ = ring.available();
        let _ = ring.space();
    }
    // `ring` (no `Drop`: it only points at the page) is not used past here,
    // so the page outlives every access through it.
    drop(page);
});
