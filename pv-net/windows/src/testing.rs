//! Fuzz driver for the OID and NET_BUFFER_LIST decisions, shared by the
//! cargo-fuzz target (`pv-net/windows/fuzz/`) and a short deterministic run
//! in the test suite (`tests/fuzz_smoke.rs`).
//!
//! One input is a device (MAC, MTU, offloads, slots) then a sequence of
//! operations, each chosen by one byte: an OID query or set with an
//! arbitrary OID (mostly from [`SUPPORTED_OIDS`]) and buffer, a NET_BUFFER
//! gathered from an arbitrary MDL chain, a transmit checksum request, or a
//! received frame with a device checksum state. Checked for each:
//!
//! - never a panic;
//! - a query writes at most the buffer, and "too short" names a size that
//!   is larger than the buffer and then suffices;
//! - a refused set changes nothing; an accepted one reads no more than it
//!   was given, and what it set reads back (filter, list, lookahead), with
//!   offloads never beyond the device's;
//! - gathered pieces are non-empty, lie inside their MDLs, go forward, and
//!   add up to the frame;
//! - a transmit checksum request lands inside the frame;
//! - a received frame changes only in the checksum field the device left
//!   partial, and the receive word claims only TCP/UDP success.

use std::vec;
use std::vec::Vec;

use pv_net::{NetInfo, RxCsum};

use crate::nbl::{self, rx_bits, Piece, TxCsumInfo, MAX_PIECES};
use crate::oid::{oids, Adapter, OidError, SUPPORTED_OIDS};

/// Which kinds of operation an input reached (the smoke run checks it
/// reaches each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// Queries answered.
    pub query_ok: usize,
    /// Queries refused.
    pub query_err: usize,
    /// Sets accepted.
    pub set_ok: usize,
    /// Sets refused.
    pub set_err: usize,
    /// NET_BUFFERs gathered.
    pub gathered: usize,
    /// Checksum requests made.
    pub tx_csum: usize,
    /// Receive checksum words claiming success.
    pub rx_claimed: usize,
}

struct Input<'a> {
    d: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.d.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn done(&self) -> bool {
        self.at >= self.d.len()
    }
}

/// Run one input; panics on a broken invariant.
pub fn run(data: &[u8]) -> Reached {
    let mut inp = Input { d: data, at: 0 };
    let f = inp.byte();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&inp.bytes(6));
    let info = NetInfo {
        mac,
        mtu: inp.u16().clamp(pv_net::MIN_MTU, pv_net::MAX_MTU),
        tx_csum: f & 1 != 0,
        rx_csum: f & 2 != 0,
        link_status: true,
        rx_slots: u16::from(inp.byte()) + 1,
        tx_slots: u16::from(inp.byte()) + 1,
        event_idx: false,
    };
    let mut a = Adapter::new(&info, f & 4 != 0);
    let mut r = Reached::default();
    let mut ops = 0;
    while !inp.done() && ops < 256 {
        ops += 1;
        let op = inp.byte();
        let oid = if op & 0x10 != 0 {
            u32::from_le_bytes([inp.byte(), inp.byte(), inp.byte(), inp.byte()])
        } else {
            SUPPORTED_OIDS[usize::from(inp.byte()) % SUPPORTED_OIDS.len()]
        };
        match op % 5 {
            0 => query(&a, oid, usize::from(inp.byte()) * 2, &mut r),
            1 => {
                let buf = if op & 0x20 != 0 {
                    shaped_set(oid, &mut inp)
                } else {
                    let n = usize::from(inp.byte());
                    inp.bytes(n)
                };
                set(&mut a, oid, &buf, &mut r);
            }
            2 => {
                let n = usize::from(inp.byte() % 80);
                let lens: Vec<usize> = (0..n).map(|_| usize::from(inp.u16() % 2048)).collect();
                let first = usize::from(inp.u16() % 4096);
                let len = usize::from(inp.u16());
                gather(&lens, first, len, a.mtu, &mut r);
            }
            3 => {
                let frame = if op & 0x20 != 0 {
                    shaped_frame(&mut inp)
                } else {
                    let n = usize::from(inp.byte());
                    inp.bytes(n)
                };
                let w = u64::from(inp.u16()) | (u64::from(inp.u16()) << 16);
                if let Ok(Some(c)) = nbl::tx_csum(&frame, TxCsumInfo::from_word(w), &a.offload) {
                    assert!(usize::from(c.start) + usize::from(c.offset) + 2 <= frame.len());
                    assert!(usize::from(c.start) >= pv_net::ETH_HLEN);
                    r.tx_csum += 1;
                }
            }
            _ => {
                let mut frame = if op & 0x20 != 0 {
                    shaped_frame(&mut inp)
                } else {
                    let n = usize::from(inp.byte());
                    inp.bytes(n)
                };
                let csum = match inp.byte() % 4 {
                    0 => RxCsum::None,
                    1 => RxCsum::Valid,
                    2 => RxCsum::Blank,
                    _ => RxCsum::Partial {
                        start: inp.u16() % 300,
                        offset: inp.u16() % 64,
                    },
                };
                let before = frame.clone();
                let w = nbl::rx_checksum_info(&mut frame, csum, &a.offload);
                assert_eq!(w & !(rx_bits::TCP_SUCCEEDED | rx_bits::UDP_SUCCEEDED), 0);
                let field = match csum {
                    RxCsum::Partial { start, offset } => {
                        Some(usize::from(start) + usize::from(offset))
                    }
                    _ => None,
                };
                for (i, (x, y)) in frame.iter().zip(before.iter()).enumerate() {
                    if x != y {
                        let f = field.expect("only a partial checksum writes");
                        assert!(i == f || i == f + 1, "byte {i} changed outside the field");
                    }
                }
                if w != 0 {
                    r.rx_claimed += 1;
                }
                a.counters.rx(&frame);
                let _ = nbl::accept(&frame, a.packet_filter(), &a.current_mac, a.multicast());
            }
        }
    }
    r
}

/// A set buffer of the shape its OID expects, with fuzzed contents, so
/// sets get past the length checks.
fn shaped_set(oid: u32, inp: &mut Input<'_>) -> Vec<u8> {
    match oid {
        oids::OID_802_3_MULTICAST_LIST => {
            let n = usize::from(inp.byte() % 40);
            let mut v = inp.bytes(6 * n);
            for m in v.chunks_mut(6) {
                m[0] |= inp.byte() & 1;
            }
            v
        }
        oids::OID_TCP_OFFLOAD_PARAMETERS => {
            let mut v = inp.bytes(crate::oid::OFFLOAD_PARAMETERS_BYTES);
            v[..4].copy_from_slice(&crate::oid::object_header(0x80, 1, 20));
            for b in &mut v[4..15] {
                *b %= 5;
            }
            v
        }
        _ => {
            let v = u32::from(inp.u16()) & (crate::oid::filter::SUPPORTED | 0x10);
            v.to_le_bytes().to_vec()
        }
    }
}

/// An Ethernet frame with an IPv4 or IPv6 header and a TCP or UDP header,
/// fields fuzzed, so checksum decisions get past the header parsing.
fn shaped_frame(inp: &mut Input<'_>) -> Vec<u8> {
    let sel = inp.byte();
    let mut f = inp.bytes(12);
    if sel & 1 != 0 {
        f.extend_from_slice(&[0x81, 0x00, inp.byte(), inp.byte()]);
    }
    let v6 = sel & 2 != 0;
    let tcp = sel & 4 != 0;
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut ip = inp.bytes(40);
        ip[0] = 0x60 | (ip[0] & 0xF);
        ip[6] = if tcp { 6 } else { 17 };
        f.extend_from_slice(&ip);
    } else {
        f.extend_from_slice(&[0x08, 0x00]);
        let ihl = 5 + usize::from(inp.byte() % 3);
        let mut ip = inp.bytes(4 * ihl);
        ip[0] = 0x40 | ihl as u8;
        ip[9] = if tcp { 6 } else { 17 };
        f.extend_from_slice(&ip);
    }
    let l4 = if tcp { 20 } else { 8 };
    let extra = usize::from(inp.byte() % 64);
    f.extend(inp.bytes(l4 + extra));
    if sel & 8 != 0 {
        let cut = usize::from(inp.byte()) % f.len();
        f.truncate(cut);
    }
    f
}

fn query(a: &Adapter, oid: u32, len: usize, r: &mut Reached) {
    let mut buf = vec![0u8; len];
    match a.query(oid, &mut buf) {
        Ok(n) => {
            assert!(n <= len);
            r.query_ok += 1;
        }
        Err(OidError::BufferTooShort { needed }) => {
            assert!(needed > len, "{oid:#x}: needed {needed} with {len} given");
            let mut big = vec![0u8; needed];
            assert!(
                a.query(oid, &mut big).is_ok(),
                "{oid:#x}: {needed} bytes do not suffice"
            );
            r.query_err += 1;
        }
        Err(_) => r.query_err += 1,
    }
}

fn set(a: &mut Adapter, oid: u32, buf: &[u8], r: &mut Reached) {
    let before = a.clone();
    match a.set(oid, buf) {
        Ok(done) => {
            assert!(done.read <= buf.len());
            let mut out = [0u8; 512];
            match oid {
                oids::OID_GEN_CURRENT_PACKET_FILTER | oids::OID_GEN_CURRENT_LOOKAHEAD => {
                    assert_eq!(a.query(oid, &mut out), Ok(4));
                    assert_eq!(out[..4], buf[..4]);
                }
                oids::OID_802_3_MULTICAST_LIST => {
                    assert_eq!(a.query(oid, &mut out), Ok(buf.len()));
                    assert_eq!(&out[..buf.len()], buf);
                }
                _ => {}
            }
            for (on, can) in [
                (a.offload.v4_tcp, a.hw.v4_tcp),
                (a.offload.v4_udp, a.hw.v4_udp),
                (a.offload.v6_tcp, a.hw.v6_tcp),
                (a.offload.v6_udp, a.hw.v6_udp),
            ] {
                assert!((!on.tx || can.tx) && (!on.rx || can.rx));
            }
            r.set_ok += 1;
        }
        Err(_) => {
            assert_eq!(*a, before, "a refused set of {oid:#x} changed the adapter");
            r.set_err += 1;
        }
    }
}

fn gather(lens: &[usize], first: usize, len: usize, mtu: u16, r: &mut Reached) {
    let mut out = [Piece {
        mdl: 0,
        offset: 0,
        len: 0,
    }; MAX_PIECES];
    if let Ok(n) = nbl::gather(lens, first, len, mtu, &mut out) {
        let mut total = 0;
        let mut last = None;
        for p in &out[..n] {
            assert!(p.len > 0);
            assert!(p.offset + p.len <= lens[p.mdl]);
            assert!(last.is_none_or(|l| p.mdl > l));
            if p.mdl > 0 {
                assert_eq!(p.offset, 0);
            } else {
                assert_eq!(p.offset, first);
            }
            last = Some(p.mdl);
            total += p.len;
        }
        assert_eq!(total, len);
        r.gathered += 1;
    }
}
