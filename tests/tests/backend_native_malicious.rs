//! The malicious guest: descriptor chains no honest driver builds, sent to
//! our backend (`pvbackend`) through the native vhost-user driver.
//!
//! Each case must complete with an error status in the status byte, or be
//! dropped with used length 0 where the chain has no usable status byte
//! (some cases, marked ambiguous, leave either reading open: what counts as
//! "the status byte" of a looping or garbage chain is the device's call).
//! Never with status OK, never by acting on a malformed write. After every
//! case, correct I/O must still work on both queues of the same disk and on
//! a second disk of the same daemon, and the daemon must be alive.
//!
//! Every case runs even when an earlier one fails (the driver reconnects),
//! and the test fails listing every failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::vhost_user::blk::{
    DriverError, NativeBlkDriver, SECTOR, STATUS_UNWRITTEN, S_IOERR, S_OK, S_UNSUPP, T_DISCARD,
    T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES,
};
use pvtest::vhost_user::split::{
    write_table, ChainDesc, Descriptor, Next, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};

const MIB: u64 = 1 << 20;
const DISK_BYTES: u64 = 16 * MIB;
const QUEUE_SIZE: u16 = 256;
const TIMEOUT: Duration = Duration::from_secs(60);
/// Sectors the health checks write (never targeted by malformed writes).
const HEALTH_SECTORS: u64 = 2048;
/// Where malformed writes aim; must stay untouched.
const TARGET_SECTOR: u64 = 8192;
/// What the target region holds.
const TARGET_FILL: u8 = 0x5A;
/// What scratch buffers hold before a case (a read must not be reported
/// done without writing them, and the status sentinel differs from it).
const SCRATCH_FILL: u8 = 0xAA;

/// Deterministic bytes (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Bump allocator over the driver's scratch RAM, reset per case.
struct Scratch<'a> {
    drv: &'a NativeBlkDriver,
    next: u64,
    end: u64,
}

impl Scratch<'_> {
    fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next;
        self.next = (at + len.max(1)).div_ceil(64) * 64;
        assert!(self.next <= self.end, "scratch exhausted");
        self.drv
            .ram()
            .fill(at, len as usize, SCRATCH_FILL)
            .expect("fill scratch");
        at
    }

    /// A 16-byte request header.
    fn header(&mut self, req_type: u32, sector: u64) -> u64 {
        let at = self.alloc(16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.drv.ram().write(at, &h).expect("header");
        at
    }

    /// A header followed by a payload in one buffer.
    fn header_with(&mut self, req_type: u32, sector: u64, payload: &[u8]) -> u64 {
        let at = self.alloc(16 + payload.len() as u64);
        let mut bytes = req_type.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&sector.to_le_bytes());
        bytes.extend_from_slice(payload);
        self.drv
            .ram()
            .write(at, &bytes)
            .expect("header and payload");
        at
    }

    /// A status byte, set to the "unwritten" sentinel.
    fn status(&mut self) -> u64 {
        let at = self.alloc(1);
        self.drv
            .ram()
            .write(at, &[STATUS_UNWRITTEN])
            .expect("status");
        at
    }

    /// An indirect table.
    fn table(&mut self, t: &[Descriptor]) -> u64 {
        let at = self.alloc(16 * t.len() as u64);
        write_table(self.drv.ram(), at, t).expect("table");
        at
    }

    fn garbage(&mut self, rng: &mut Rng, len: usize) -> u64 {
        let at = self.alloc(len as u64);
        self.drv.ram().write(at, &rng.bytes(len)).expect("garbage");
        at
    }
}

/// What a case's chain must lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A status byte exists here: it must get IOERR (or UNSUPP).
    Error { status_at: u64 },
    /// The status byte must be UNSUPP.
    Unsupported { status_at: u64 },
    /// No usable status byte: dropped, used length 0.
    Dropped,
    /// Either an error status at `status_at` or dropped (loops, garbage).
    Either { status_at: u64 },
    /// Either an error status at one of two places, or dropped.
    EitherAt([u64; 2]),
}

struct Case {
    chain: Vec<ChainDesc>,
    expect: Expect,
    /// Sectors a malformed write aims at (must stay untouched).
    writes_target: bool,
}

fn r(addr: u64, len: u32) -> ChainDesc {
    ChainDesc::readable(addr, len)
}
fn w(addr: u64, len: u32) -> ChainDesc {
    ChainDesc::writable(addr, len)
}
fn linked(d: &[ChainDesc]) -> Vec<ChainDesc> {
    pvtest::vhost_user::split::linked(d)
}
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
    Descriptor {
        addr,
        len,
        flags,
        next,
    }
}

fn case(chain: Vec<ChainDesc>, expect: Expect) -> Case {
    Case {
        chain,
        expect,
        writes_target: false,
    }
}

fn write_case(chain: Vec<ChainDesc>, expect: Expect) -> Case {
    Case {
        chain,
        expect,
        writes_target: true,
    }
}

type Builder = fn(&mut Scratch<'_>, &mut Rng) -> Case;

fn c(name: &'static str, build: Builder) -> (&'static str, Builder) {
    (name, build)
}

/// Every malformed chain, by name.
fn cases() -> Vec<(&'static str, Builder)> {
    vec![
        c(
            "loop: status descriptor chains back to the header",
            |s, _| {
                let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
                let chain = vec![
                    r(h, 16).then(Next::Chain(1)),
                    w(d, 4096).then(Next::Chain(2)),
                    w(st, 1).then(Next::Chain(0)),
                ];
                case(chain, Expect::Either { status_at: st })
            },
        ),
        c("loop: a descriptor chaining to itself", |s, _| {
            let h = s.header(T_IN, 0);
            case(vec![r(h, 16).then(Next::Chain(0))], Expect::Dropped)
        }),
        c("loop: writable descriptor chaining to itself", |s, _| {
            let (h, st) = (s.header(T_IN, 0), s.status());
            let chain = vec![r(h, 16).then(Next::Chain(1)), w(st, 1).then(Next::Chain(1))];
            case(chain, Expect::Either { status_at: st })
        }),
        c("next index outside the descriptor table", |s, _| {
            let (h, d) = (s.header(T_IN, 0), s.alloc(4096));
            let chain = vec![
                r(h, 16).then(Next::Chain(1)),
                w(d, 4096).then(Next::Raw(9999)),
            ];
            case(
                chain,
                Expect::Either {
                    status_at: d + 4095,
                },
            )
        }),
        c("next index equal to the queue size", |s, _| {
            let (h, st) = (s.header(T_IN, 0), s.status());
            let chain = vec![r(h, 16).then(Next::Raw(QUEUE_SIZE)), w(st, 1)];
            case(chain, Expect::Dropped)
        }),
        c("header at guest address 0 (outside guest RAM)", |s, _| {
            let (d, st) = (s.alloc(4096), s.status());
            case(
                linked(&[r(0, 16), w(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("header beyond the end of guest RAM", |s, _| {
            let (d, st) = (s.alloc(4096), s.status());
            let far = s.drv.ram().end() + MIB;
            case(
                linked(&[r(far, 16), w(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("header straddling the end of guest RAM", |s, _| {
            let (d, st) = (s.alloc(4096), s.status());
            let edge = s.drv.ram().end() - 8;
            case(
                linked(&[r(edge, 16), w(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("header address wrapping around 2^64", |s, _| {
            let (d, st) = (s.alloc(4096), s.status());
            let chain = linked(&[r(u64::MAX - 7, 16), w(d, 4096), w(st, 1)]);
            case(chain, Expect::Error { status_at: st })
        }),
        c("read buffer outside guest RAM", |s, _| {
            let (h, st) = (s.header(T_IN, 0), s.status());
            let far = s.drv.ram().end() + MIB;
            case(
                linked(&[r(h, 16), w(far, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("read buffer straddling the end of guest RAM", |s, _| {
            let (h, st) = (s.header(T_IN, 0), s.status());
            let edge = s.drv.ram().end() - 2048;
            case(
                linked(&[r(h, 16), w(edge, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("write data outside guest RAM", |s, _| {
            let (h, st) = (s.header(T_OUT, TARGET_SECTOR), s.status());
            let far = s.drv.ram().end() + MIB;
            write_case(
                linked(&[r(h, 16), r(far, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("status byte outside guest RAM", |s, _| {
            let (h, d) = (s.header(T_IN, 0), s.alloc(4096));
            let far = s.drv.ram().end() + 100;
            case(linked(&[r(h, 16), w(d, 4096), w(far, 1)]), Expect::Dropped)
        }),
        c("device-writable header", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            case(
                linked(&[w(h, 16), w(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("device-readable status byte", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            case(
                linked(&[r(h, 16), w(d, 4096), r(st, 1)]),
                Expect::Either {
                    status_at: d + 4095,
                },
            )
        }),
        c("write request with device-writable data", |s, _| {
            let (h, d, st) = (s.header(T_OUT, TARGET_SECTOR), s.alloc(4096), s.status());
            write_case(
                linked(&[r(h, 16), w(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("read request with device-readable data", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            case(
                linked(&[r(h, 16), r(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("readable data after the status byte", |s, _| {
            let (h, d, st) = (s.header(T_OUT, TARGET_SECTOR), s.alloc(4096), s.status());
            write_case(
                linked(&[r(h, 16), w(st, 1), r(d, 4096)]),
                Expect::Either { status_at: st },
            )
        }),
        c("short header (8 bytes)", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            case(
                linked(&[r(h, 8), w(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("missing header", |s, _| {
            let (d, st) = (s.alloc(4096), s.status());
            case(
                linked(&[w(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("no writable byte at all", |s, _| {
            let (h, d) = (s.header(T_OUT, TARGET_SECTOR), s.alloc(4096));
            write_case(linked(&[r(h, 16), r(d, 4096)]), Expect::Dropped)
        }),
        c("zero-length descriptors only", |s, _| {
            let (h, st) = (s.header(T_IN, 0), s.status());
            case(linked(&[r(h, 0), w(st, 0)]), Expect::Dropped)
        }),
        c("read length u32::MAX", |s, _| {
            // Over 4 GiB in total: forbidden to drivers (virtio 1.2
            // §2.7.5.2); rust-vmm stops walking the chain there, so the
            // device may not find the status byte.
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            case(
                linked(&[r(h, 16), w(d, u32::MAX), w(st, 1)]),
                Expect::Either { status_at: st },
            )
        }),
        c("read length 2 GiB", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            case(
                linked(&[r(h, 16), w(d, 1 << 31), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("write length 2 GiB", |s, _| {
            let (h, d, st) = (s.header(T_OUT, TARGET_SECTOR), s.alloc(4096), s.status());
            write_case(
                linked(&[r(h, 16), r(d, 1 << 31), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("header descriptor of length u32::MAX", |s, _| {
            // Over 4 GiB in total: forbidden to drivers (virtio 1.2
            // §2.7.5.2); rust-vmm stops walking the chain there, so the
            // device may not find the status byte.
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            case(
                linked(&[r(h, u32::MAX), w(d, 4096), w(st, 1)]),
                Expect::Either { status_at: st },
            )
        }),
        c("write past the end of the disk", |s, _| {
            let last = DISK_BYTES / SECTOR - 1;
            let (h, d, st) = (s.header(T_OUT, last), s.alloc(4096), s.status());
            case(
                linked(&[r(h, 16), r(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("sector number overflowing the byte offset", |s, _| {
            let (h, d, st) = (s.header(T_IN, u64::MAX / 256), s.alloc(4096), s.status());
            case(
                linked(&[r(h, 16), w(d, 4096), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("read length not a multiple of 512", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            case(
                linked(&[r(h, 16), w(d, 100), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("too many segments (indirect table of 300)", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(512), s.status());
            let mut t = vec![desc(h, 16, VRING_DESC_F_NEXT, 1)];
            for i in 1..299u16 {
                t.push(desc(d, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, i + 1));
            }
            t.push(desc(st, 1, VRING_DESC_F_WRITE, 0));
            let table = s.table(&t);
            case(
                vec![ChainDesc::indirect(table, 300)],
                Expect::Either { status_at: st },
            )
        }),
        c(
            "too many segments (whole ring: 255 data segments)",
            |s, _| {
                // 256 descriptors: header, 254 data buffers, and a last one of
                // 513 bytes holding a 255th data segment and the status byte;
                // seg_max is 254.
                let (h, d, last) = (s.header(T_IN, 0), s.alloc(512), s.alloc(513));
                s.drv
                    .ram()
                    .write(last + 512, &[STATUS_UNWRITTEN])
                    .expect("status");
                let mut chain = vec![r(h, 16)];
                chain.extend((0..254).map(|_| w(d, 512)));
                chain.push(w(last, 513));
                case(
                    linked(&chain),
                    Expect::Error {
                        status_at: last + 512,
                    },
                )
            },
        ),
        c("indirect table of random bytes", |s, rng| {
            let (t, st) = (s.garbage(rng, 16 * 32), s.status());
            case(
                vec![ChainDesc::indirect(t, 32)],
                Expect::Either { status_at: st },
            )
        }),
        c("indirect table length not a multiple of 16", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            let t = s.table(&[
                desc(h, 16, VRING_DESC_F_NEXT, 1),
                desc(d, 4096, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
                desc(st, 1, VRING_DESC_F_WRITE, 0),
            ]);
            let mut ind = ChainDesc::indirect(t, 3);
            ind.len = 40;
            case(vec![ind], Expect::Either { status_at: st })
        }),
        c("indirect table of length 0", |s, _| {
            let t = s.alloc(64);
            case(vec![ChainDesc::indirect(t, 0)], Expect::Dropped)
        }),
        c("indirect table outside guest RAM", |s, _| {
            let far = s.drv.ram().end() + MIB;
            case(vec![ChainDesc::indirect(far, 3)], Expect::Dropped)
        }),
        c("nested indirect descriptor", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            let inner = s.table(&[
                desc(h, 16, VRING_DESC_F_NEXT, 1),
                desc(d, 4096, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
                desc(st, 1, VRING_DESC_F_WRITE, 0),
            ]);
            let outer = s.table(&[desc(inner, 48, VRING_DESC_F_INDIRECT, 0)]);
            case(
                vec![ChainDesc::indirect(outer, 1)],
                Expect::Either { status_at: st },
            )
        }),
        c("indirect descriptor that also has NEXT", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            let t = s.table(&[
                desc(h, 16, VRING_DESC_F_NEXT, 1),
                desc(d, 4096, VRING_DESC_F_WRITE, 0),
            ]);
            // A device may ignore NEXT on an indirect descriptor (then the
            // status is the table's last writable byte) or refuse the chain.
            let chain = vec![ChainDesc::indirect(t, 2).then(Next::Chain(1)), w(st, 1)];
            case(chain, Expect::EitherAt([st, d + 4095]))
        }),
        c("indirect next index outside the table", |s, _| {
            let (h, d) = (s.header(T_IN, 0), s.alloc(4096));
            let t = s.table(&[
                desc(h, 16, VRING_DESC_F_NEXT, 1),
                desc(d, 4096, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 77),
            ]);
            case(
                vec![ChainDesc::indirect(t, 2)],
                Expect::Either {
                    status_at: d + 4095,
                },
            )
        }),
        c("indirect write with device-writable data", |s, _| {
            let (h, d, st) = (s.header(T_OUT, TARGET_SECTOR), s.alloc(4096), s.status());
            let t = s.table(&[
                desc(h, 16, VRING_DESC_F_NEXT, 1),
                desc(d, 4096, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
                desc(st, 1, VRING_DESC_F_WRITE, 0),
            ]);
            write_case(
                vec![ChainDesc::indirect(t, 3)],
                Expect::Error { status_at: st },
            )
        }),
        c("unsupported request type", |s, _| {
            let (h, st) = (s.header(0xDEAD, 0), s.status());
            case(
                linked(&[r(h, 16), w(st, 1)]),
                Expect::Unsupported { status_at: st },
            )
        }),
        c("GET_ID with device-readable buffer", |s, _| {
            let (h, d, st) = (s.header(T_GET_ID, 0), s.alloc(20), s.status());
            case(
                linked(&[r(h, 16), r(d, 20), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("discard with flags set", |s, _| {
            let seg = dwz(TARGET_SECTOR, 8, 1);
            let (h, st) = (s.header_with(T_DISCARD, 0, &seg), s.status());
            write_case(
                linked(&[r(h, 32), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("discard of zero sectors", |s, _| {
            let seg = dwz(TARGET_SECTOR, 0, 0);
            let (h, st) = (s.header_with(T_DISCARD, 0, &seg), s.status());
            case(
                linked(&[r(h, 32), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("discard past the end of the disk", |s, _| {
            let seg = dwz(DISK_BYTES / SECTOR - 8, 16, 0);
            let (h, st) = (s.header_with(T_DISCARD, 0, &seg), s.status());
            case(
                linked(&[r(h, 32), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("discard payload not a multiple of 16 bytes", |s, _| {
            let seg = dwz(TARGET_SECTOR, 8, 0);
            let (h, st) = (s.header_with(T_DISCARD, 0, &seg), s.status());
            write_case(
                linked(&[r(h, 28), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("discard payload missing", |s, _| {
            let (h, st) = (s.header(T_DISCARD, 0), s.status());
            case(
                linked(&[r(h, 16), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c("write-zeroes with unknown flag bits", |s, _| {
            let seg = dwz(TARGET_SECTOR, 8, 0xFFFF_FFFE);
            let (h, st) = (s.header_with(T_WRITE_ZEROES, 0, &seg), s.status());
            write_case(
                linked(&[r(h, 32), w(st, 1)]),
                Expect::Error { status_at: st },
            )
        }),
        c(
            "write-zeroes with more ranges than max_write_zeroes_seg",
            |s, _| {
                let segs: Vec<u8> = (0..300)
                    .flat_map(|i| dwz(TARGET_SECTOR + i, 1, 0))
                    .collect();
                let (h, st) = (s.header_with(T_WRITE_ZEROES, 0, &segs), s.status());
                let len = 16 + segs.len() as u32;
                write_case(
                    linked(&[r(h, len), w(st, 1)]),
                    Expect::Error { status_at: st },
                )
            },
        ),
    ]
}

/// Loops whose first queue-size (or table-size) descriptors form a
/// well-formed request: a device that just stops walking after that many
/// descriptors executes them and reports OK.
fn looping_cases() -> Vec<(&'static str, Builder)> {
    vec![
        c("loop inside an indirect table", |s, _| {
            let (h, d, st) = (s.header(T_IN, 0), s.alloc(4096), s.status());
            let t = s.table(&[
                desc(h, 16, VRING_DESC_F_NEXT, 1),
                desc(d, 4096, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
                desc(st, 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
            ]);
            case(
                vec![ChainDesc::indirect(t, 3)],
                Expect::Either { status_at: st },
            )
        }),
        c("loop inside an indirect table (write)", |s, rng| {
            let (h, d, st) = (s.header(T_OUT, TARGET_SECTOR), s.alloc(4096), s.status());
            s.drv.ram().write(d, &rng.bytes(4096)).expect("data");
            let t = s.table(&[
                desc(h, 16, VRING_DESC_F_NEXT, 1),
                desc(d, 4096, VRING_DESC_F_NEXT, 2),
                desc(st, 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
            ]);
            write_case(
                vec![ChainDesc::indirect(t, 3)],
                Expect::Either { status_at: st },
            )
        }),
        c(
            "loop closing after exactly queue-size ring descriptors (write)",
            |s, rng| {
                let (h, d, st) = (s.header(T_OUT, TARGET_SECTOR), s.alloc(512), s.status());
                s.drv.ram().write(d, &rng.bytes(512)).expect("data");
                let mut chain = vec![r(h, 16)];
                chain.extend((0..usize::from(QUEUE_SIZE) - 2).map(|_| r(d, 512)));
                chain.push(w(st, 1));
                let mut chain = linked(&chain);
                let last = chain.len() - 1;
                chain[last] = chain[last].then(Next::Chain(0));
                write_case(chain, Expect::Either { status_at: st })
            },
        ),
    ]
}

fn dwz(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut v = sector.to_le_bytes().to_vec();
    v.extend_from_slice(&sectors.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v
}

/// The daemon, two disks and a driver on each.
struct Rig {
    _dir: tempfile::TempDir,
    backend: PvBackend,
    img_a: PathBuf,
    sock_a: PathBuf,
    sock_b: PathBuf,
    a: Option<NativeBlkDriver>,
    b: Option<NativeBlkDriver>,
    /// Expected content of the health-check sectors of each disk.
    shadow_a: Vec<u8>,
    shadow_b: Vec<u8>,
    rng: Rng,
}

fn connect_a(sock: &Path) -> NativeBlkDriver {
    let mut d = NativeBlkDriver::connect(sock, 2, QUEUE_SIZE).expect("connect disk A");
    for q in d.queues_mut() {
        q.set_timeout(TIMEOUT);
    }
    d
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

impl Rig {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (img_a, img_b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let mut a_bytes = vec![0u8; DISK_BYTES as usize];
        let t = (TARGET_SECTOR * SECTOR) as usize;
        a_bytes[t..t + (MIB as usize)].fill(TARGET_FILL);
        std::fs::write(&img_a, &a_bytes).expect("image A");
        std::fs::write(&img_b, vec![0u8; DISK_BYTES as usize]).expect("image B");
        let (sock_a, sock_b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
        let backend = PvBackend::start(
            &[
                format!(
                    "path={},socket={},serial=evil-a,queues=2,queue-size={QUEUE_SIZE}",
                    img_a.display(),
                    sock_a.display()
                ),
                format!(
                    "path={},socket={},serial=victim-b,queues=1",
                    img_b.display(),
                    sock_b.display()
                ),
            ],
            &["--log-level", "info"],
            &dir.path().join("backend.log"),
        )
        .expect("start pvbackend");
        let a = connect_a(&sock_a);
        let b = NativeBlkDriver::connect(&sock_b, 1, 64).expect("connect disk B");
        let health = (HEALTH_SECTORS * SECTOR) as usize;
        Self {
            _dir: dir,
            backend,
            img_a,
            sock_a,
            sock_b,
            a: Some(a),
            b: Some(b),
            shadow_a: vec![0u8; health],
            shadow_b: vec![0u8; health],
            rng: Rng(0x0BAD_5EED),
        }
    }

    fn a(&mut self) -> &mut NativeBlkDriver {
        self.a.as_mut().expect("disk A connected")
    }

    fn b(&mut self) -> &mut NativeBlkDriver {
        self.b.as_mut().expect("disk B connected")
    }

    fn scratch(&self) -> Scratch<'_> {
        let drv = self.a.as_ref().expect("disk A connected");
        let (base, len) = drv.scratch();
        Scratch {
            drv,
            next: base,
            end: base + len,
        }
    }

    /// Correct I/O on both queues of disk A and on disk B; daemon alive.
    fn health(&mut self) -> Result<(), String> {
        let pid = self.backend.pid().ok_or("no daemon pid")?;
        if !process_alive(pid) {
            return Err(format!(
                "daemon {pid} is dead; log:\n{}",
                self.backend.log()
            ));
        }
        for q in 0..2u16 {
            let sector = (self.rng.next() % (HEALTH_SECTORS / 8)) * 8;
            let data = self.rng.bytes(4096);
            let at = (sector * SECTOR) as usize;
            let queue = self
                .a
                .as_mut()
                .ok_or("disk A not connected")?
                .queue(q)
                .map_err(|e| e.to_string())?;
            queue
                .write(sector, &data)
                .map_err(|e| format!("disk A queue {q} write: {e}"))?;
            self.shadow_a[at..at + 4096].copy_from_slice(&data);
            let got = queue
                .read(0, (HEALTH_SECTORS * SECTOR) as u32 / 8)
                .map_err(|e| format!("disk A queue {q} read: {e}"))?;
            if got[..] != self.shadow_a[..got.len()] {
                return Err(format!("disk A queue {q}: read back differs"));
            }
            let got = queue
                .read(sector, 4096)
                .map_err(|e| format!("disk A queue {q} read: {e}"))?;
            if got != data {
                return Err(format!(
                    "disk A queue {q}: sector {sector} read back differs"
                ));
            }
        }
        let sector = (self.rng.next() % (HEALTH_SECTORS / 8)) * 8;
        let data = self.rng.bytes(4096);
        self.b()
            .write(sector, &data)
            .map_err(|e| format!("disk B write: {e}"))?;
        let got = self
            .b()
            .read(sector, 4096)
            .map_err(|e| format!("disk B read: {e}"))?;
        if got != data {
            return Err("disk B: read back differs".into());
        }
        let at = (sector * SECTOR) as usize;
        self.shadow_b[at..at + 4096].copy_from_slice(&data);
        Ok(())
    }

    /// The target region of malformed writes is untouched.
    fn target_intact(&mut self) -> Result<(), String> {
        let got = self
            .a()
            .read(TARGET_SECTOR, MIB as u32 / 4)
            .map_err(|e| format!("read target: {e}"))?;
        if got.iter().any(|&b| b != TARGET_FILL) {
            return Err("a malformed write changed the disk (seen by the device)".into());
        }
        let img = std::fs::read(&self.img_a).map_err(|e| e.to_string())?;
        let t = (TARGET_SECTOR * SECTOR) as usize;
        if img[t..t + MIB as usize].iter().any(|&b| b != TARGET_FILL) {
            return Err("a malformed write changed the image file".into());
        }
        Ok(())
    }

    /// Puts the target region back after a case wrote it.
    fn restore_target(&mut self) {
        let fill = vec![TARGET_FILL; MIB as usize / 4];
        for i in 0..4u64 {
            let sector = TARGET_SECTOR + i * (MIB / 4) / SECTOR;
            let _ = self.a().write(sector, &fill);
        }
    }

    /// After a failure: new connections, so later cases still run.
    fn reconnect(&mut self) {
        // The backend serves one connection per disk: close the old first.
        self.a = None;
        self.a = Some(connect_a(&self.sock_a));
        self.b = None;
        self.b = Some(NativeBlkDriver::connect(&self.sock_b, 1, 64).expect("reconnect disk B"));
    }
}

fn check_outcome(
    drv: &NativeBlkDriver,
    expect: Expect,
    used_len: u32,
) -> Result<&'static str, String> {
    let byte = |at: u64| {
        drv.ram()
            .read(at, 1)
            .map(|v| v[0])
            .map_err(|e| e.to_string())
    };
    match expect {
        Expect::Dropped if used_len == 0 => Ok("dropped"),
        Expect::Dropped => Err(format!(
            "expected a drop (used len 0), got used len {used_len}"
        )),
        Expect::Error { status_at } | Expect::Unsupported { status_at } => {
            let st = byte(status_at)?;
            let ok = match expect {
                Expect::Unsupported { .. } => st == S_UNSUPP,
                _ => st == S_IOERR || st == S_UNSUPP,
            };
            if used_len == 0 {
                Err(format!(
                    "dropped (used len 0) although the chain has a status byte (status {st:#x})"
                ))
            } else if !ok {
                Err(format!(
                    "status {st:#x} (used len {used_len}), expected an error status"
                ))
            } else {
                Ok("error status")
            }
        }
        Expect::EitherAt([a, b]) => {
            let (sa, sb) = (byte(a)?, byte(b)?);
            let err = |st: u8| st == S_IOERR || st == S_UNSUPP;
            if used_len == 0 && sa != S_OK && sb != S_OK {
                Ok("dropped")
            } else if err(sa) || err(sb) {
                Ok("error status")
            } else {
                Err(format!(
                    "status {sa:#x} / {sb:#x} with used len {used_len}: neither dropped nor an error"
                ))
            }
        }
        Expect::Either { status_at } => {
            let st = byte(status_at)?;
            if used_len == 0 && st != S_OK {
                Ok("dropped")
            } else if st == S_IOERR || st == S_UNSUPP {
                Ok("error status")
            } else {
                Err(format!(
                    "status {st:#x} with used len {used_len}: neither dropped nor an error"
                ))
            }
        }
    }
}

/// Runs `cases` on disk A queue 0, each followed by the health checks;
/// returns the failures (the per-case report is printed).
fn run_cases(rig: &mut Rig, cases: Vec<(&'static str, Builder)>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (name, build) in cases {
        let mut rng = Rng(name.len() as u64 * 0x9E37_79B9);
        let c = {
            let mut s = rig.scratch();
            build(&mut s, &mut rng)
        };
        // The used length is checked by the cases themselves (a failing
        // chain's meaning is the device's call); the driver's own bound is
        // the largest possible.
        let outcome = rig
            .a()
            .queue(0)
            .and_then(|q| {
                let t = q.submit_raw(&c.chain, u32::MAX)?;
                q.wait_for(t, TIMEOUT)
            })
            .map_err(|e: DriverError| format!("no valid completion: {e}"))
            .and_then(|done| check_outcome(rig.a(), c.expect, done.used_len));
        let mut result = outcome.clone().map(drop);
        if c.writes_target {
            result = result.and_then(|()| rig.target_intact());
        }
        let result = result.and_then(|()| rig.health());
        match result {
            Ok(()) => report.push(format!("ok   {name}: {}", outcome.unwrap_or("?"))),
            Err(e) => {
                report.push(format!("FAIL {name}: {e}"));
                failures.push(format!("{name}: {e}"));
                rig.reconnect();
                rig.restore_target();
            }
        }
    }
    println!("{}", report.join("\n"));
    failures
}

#[test]
fn malformed_chains_fail_cleanly_and_the_device_keeps_serving() {
    let mut rig = Rig::start();
    rig.health().expect("healthy before any malformed request");
    let n = cases().len();
    let failures = run_cases(&mut rig, cases());
    let pid = rig.backend.pid().expect("pid");
    assert!(process_alive(pid), "daemon died");
    assert!(
        failures.is_empty(),
        "{} of {n} malformed cases failed:\n{}\nbackend log:\n{}",
        failures.len(),
        failures.join("\n"),
        rig.backend.log()
    );
    // Disk B saw only correct I/O: its image matches the shadow.
    rig.b = None;
    let b_img = std::fs::read(rig.sock_b.with_file_name("b.img")).expect("image B");
    assert!(
        b_img[..rig.shadow_b.len()] == rig.shadow_b[..],
        "disk B image"
    );
}

/// Looping chains must fail too, even when their first descriptors look
/// like a request (see [`looping_cases`]).
#[test]
fn looping_chains_are_refused_even_when_they_look_well_formed() {
    let mut rig = Rig::start();
    rig.health().expect("healthy before any malformed request");
    let failures = run_cases(&mut rig, looping_cases());
    assert!(
        failures.is_empty(),
        "looping chains accepted:\n{}",
        failures.join("\n")
    );
}

/// A head index outside the descriptor table in the available ring: no
/// chain to complete, but the queue must go on serving.
#[test]
fn head_index_outside_the_table_does_not_stop_the_queue() {
    let mut rig = Rig::start();
    rig.health().expect("healthy before");
    rig.a()
        .queue(0)
        .expect("queue")
        .submit_bogus_head(QUEUE_SIZE + 3)
        .expect("publish bogus head");
    if let Err(e) = rig.health() {
        panic!(
            "queue 0 does not serve after a bogus head index: {e}\nbackend log:\n{}",
            rig.backend.log()
        );
    }
    let pid = rig.backend.pid().expect("pid");
    assert!(process_alive(pid), "daemon died");
}

/// A random descriptor chain: 1 to 6 descriptors with random flags, next
/// pointers, lengths and addresses (in scratch RAM with a random header,
/// outside guest RAM, at its edges, or garbage indirect tables). Addresses
/// inside guest RAM stay in the scratch area, so the device can only
/// scribble on buffers the driver does not use.
fn random_chain(s: &mut Scratch<'_>, rng: &mut Rng) -> Vec<ChainDesc> {
    let n = 1 + (rng.next() % 6) as usize;
    let types = [T_IN, T_OUT, 4, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 0x1234];
    let lens = [
        0u32,
        1,
        8,
        15,
        16,
        17,
        32,
        512,
        4096,
        4097,
        1 << 20,
        u32::MAX,
    ];
    let end = s.drv.ram().end();
    (0..n)
        .map(|_| {
            let len = lens[(rng.next() % lens.len() as u64) as usize];
            let addr = match rng.next() % 8 {
                0 => 0,
                1 => end - 8,
                2 => end + (rng.next() % MIB),
                3 => u64::MAX - (rng.next() % 64),
                4 => {
                    let t = types[(rng.next() % types.len() as u64) as usize];
                    let sector = TARGET_SECTOR + rng.next() % 64;
                    let payload = dwz(
                        sector,
                        1 + (rng.next() % 16) as u32,
                        (rng.next() % 3) as u32,
                    );
                    s.header_with(t, sector, &payload)
                }
                5 => s.garbage(rng, 16 * 8),
                _ => s.alloc(u64::from(len.min(8192))),
            };
            let mut flags = (rng.next() % 8) as u16;
            if flags & VRING_DESC_F_INDIRECT != 0 && rng.next().is_multiple_of(2) {
                flags &= !VRING_DESC_F_INDIRECT;
            }
            let next = match rng.next() % 4 {
                0 => Next::End,
                1 => Next::Raw((rng.next() % 300) as u16),
                _ => Next::Chain((rng.next() % n as u64) as usize),
            };
            ChainDesc {
                addr,
                len,
                flags: flags & !VRING_DESC_F_NEXT,
                next,
            }
        })
        .collect()
}

/// Hundreds of random chains (fixed seed): each must come back (any
/// status, or dropped), the device must keep serving both disks and the
/// daemon must stay alive. A deterministic, in-test cousin of a fuzz
/// target over descriptor chains; `PVTEST_CHAIN_SEED=N` picks another seed.
#[test]
fn random_chains_never_stop_the_device() {
    const CHAINS: usize = 2000;
    let seed = std::env::var("PVTEST_CHAIN_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0xF022_5EED);
    let mut rig = Rig::start();
    rig.health().expect("healthy before");
    let mut rng = Rng(seed | 1);
    for i in 0..CHAINS {
        let chain = {
            let mut s = rig.scratch();
            random_chain(&mut s, &mut rng)
        };
        let r = rig.a().queue(0).and_then(|q| {
            let t = q.submit_raw(&chain, u32::MAX)?;
            q.wait_for(t, TIMEOUT)
        });
        if let Err(e) = r {
            panic!(
                "seed {seed} chain {i} {chain:?}: {e}\nbackend log:\n{}",
                rig.backend.log()
            );
        }
        if i % 20 == 19 {
            if let Err(e) = rig.health() {
                panic!(
                    "seed {seed}, after chain {i} {chain:?}: {e}\nbackend log:\n{}",
                    rig.backend.log()
                );
            }
        }
    }
    rig.health().expect("healthy after");
}
