//! The queue's fuzz driver, used by the cargo-fuzz target in
//! `pv-virtq/fuzz/` and by a short deterministic run in the test suite
//! (`tests/fuzz_smoke.rs`).
//!
//! An input is a script: every byte picks an action (a chain added, a
//! chain taken by the device and completed honestly or with any id and
//! length, the used index run anywhere, a pop, interrupts re-armed), the
//! following bytes are its arguments. The queue must never panic or loop,
//! and what it reports must stay true: a popped token was in flight and
//! comes back once, a used length is within the chain's writable bytes, a
//! fatal error leaves every chain to `drain`, and a buffer not in flight is
//! never written.

use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

use super::{DeviceQueue, TestHal};
use crate::{Part, VirtQueue};

/// A fuzz input read as a script: bytes in order, zeros once it runs out
/// (so every action has arguments). Shared by the device crates' fuzz
/// drivers.
#[derive(Debug)]
pub struct Script<'a> {
    d: &'a [u8],
    i: usize,
}

impl<'a> Script<'a> {
    /// A script over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { d: data, i: 0 }
    }

    /// The next byte, `None` once the input is used up.
    pub fn u8(&mut self) -> Option<u8> {
        let b = self.d.get(self.i).copied();
        self.i += 1;
        b
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8().unwrap_or(0), self.u8().unwrap_or(0)])
    }

    /// The next four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8().unwrap_or(0)).collect()
    }
}

/// `n` pseudo-random scripts of up to 511 bytes from `seed` (xorshift64*),
/// for the short deterministic fuzz runs in the test suites.
pub fn scripts(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut x = seed;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..n)
        .map(|_| {
            let len = (next() % 512) as usize;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

/// Drive the shared virtqueue directly against a scripted device: tokens
/// come back at most once and only while in flight, lengths are checked
/// against the chain, and buffers not in flight keep their canary.
pub fn virtq(data: &[u8]) {
    const CANARY: u8 = 0x5A;
    let mut s = Script::new(data);
    let sel = s.u8().unwrap_or(0);
    let size = 1u16 << (1 + sel % 4);
    let Ok(mut q) = VirtQueue::<TestHal>::new(0, size, sel & 16 != 0, sel & 32 != 0) else {
        return;
    };
    let (d, a, u) = q.addresses();
    let mut dev = DeviceQueue::new(u32::from(size), d, a, u);
    let mut bufs = vec![[CANARY; 32]; 16];
    let mut in_flight: BTreeSet<u32> = BTreeSet::new();
    let mut steps = 0;
    while let Some(op) = s.u8() {
        steps += 1;
        if steps > 512 {
            break;
        }
        match op % 6 {
            0 => {
                // A chain over free buffers `t`, `t+1`, ... (wrapping).
                let t = u32::from(s.u8().unwrap_or(0) % 16);
                let n = 1 + usize::from(s.u8().unwrap_or(0) % 3);
                let ids: Vec<u32> = (0..n as u32).map(|k| (t + k) % 16).collect();
                if ids.iter().any(|i| in_flight.contains(i)) {
                    continue;
                }
                let mut parts = Vec::new();
                for (k, &i) in ids.iter().enumerate() {
                    let p = core::ptr::NonNull::from(&mut bufs[i as usize][..]);
                    parts.push(if (op >> 4 >> k) & 1 == 0 {
                        Part::In(p)
                    } else {
                        Part::Out(p)
                    });
                }
                // SAFETY: the buffers live in `bufs` for the whole run and
                // are not touched while in flight (the canary check below
                // only reads idle ones); the queue is drained before
                // `bufs` is dropped.
                if unsafe { q.add(&parts, t | ((n as u32) << 8)) }.is_ok() {
                    in_flight.extend(ids);
                }
            }
            1 => {
                if let Some(c) = dev.take_chain() {
                    let n = usize::from(s.u8().unwrap_or(0) % 64);
                    let fill = s.bytes(n);
                    c.write_in(&fill);
                    let id = if s.u8().unwrap_or(0) & 1 == 0 {
                        u32::from(c.head)
                    } else {
                        s.u32() % (u32::from(size) + 2)
                    };
                    dev.push_used(id, u32::from(s.u8().unwrap_or(0)));
                }
            }
            2 => dev.set_used_idx(s.u16()),
            3 | 4 => match q.pop() {
                Ok(Some(used)) => {
                    let t = used.token & 0xFF;
                    let n = used.token >> 8;
                    for k in 0..n {
                        assert!(in_flight.remove(&((t + k) % 16)), "token not in flight");
                    }
                    if let Ok(l) = used.len {
                        assert!(l <= used.writable);
                    }
                    for k in 0..n {
                        bufs[((t + k) % 16) as usize] = [CANARY; 32];
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    assert!(e.needs_reset());
                    q.drain(&mut |tok| {
                        for k in 0..(tok >> 8) {
                            in_flight.remove(&(((tok & 0xFF) + k) % 16));
                        }
                    });
                    assert!(in_flight.is_empty());
                    bufs = vec![[CANARY; 32]; 16];
                    dev = DeviceQueue::new(u32::from(size), d, a, u);
                }
            },
            _ => {
                let _ = q.kick_needed();
                let _ = q.enable_interrupts();
            }
        }
        for (i, b) in bufs.iter().enumerate() {
            if !in_flight.contains(&(i as u32)) {
                assert!(b.iter().all(|&x| x == CANARY), "idle buffer {i} written");
            }
        }
    }
    q.drain(&mut |_| {});
}
