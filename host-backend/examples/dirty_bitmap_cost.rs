//! What the guest-memory bitmap costs on the data path with no dirty log
//! set: vhost-user-backend's `BitmapMmapRegion` (an `Arc` clone per slice,
//! a read lock per mark) against `host_backend::dirty_log::DirtyBitmap`,
//! in the operations a request makes (a small `write_obj` such as a used
//! entry or status byte; a 4 KiB `get_slice` + `mark_dirty` such as a disk
//! read's buffer; a `read_obj` such as a descriptor). Rounds alternate
//! between the two types; the figure is ns per operation, best round.
//!
//! ```text
//! cargo run --release -p host-backend --example dirty_bitmap_cost
//! ```

use std::hint::black_box;
use std::time::Instant;

use host_backend::dirty_log::{DirtyBitmap, RegionLog};
use vhost_user_backend::bitmap::{BitmapMmapRegion, BitmapReplace};
use vm_memory::bitmap::Bitmap;
use vm_memory::mmap::NewBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

const REGION: usize = 64 << 20;
const OPS: u64 = 2_000_000;
const ROUNDS: usize = 5;

fn memory<B: NewBitmap + Bitmap>() -> GuestMemoryMmap<B> {
    let r = GuestRegionMmap::<B>::from_range(GuestAddress(0), REGION, None).expect("region");
    GuestMemoryMmap::from_regions(vec![r]).expect("memory")
}

/// ns per op of `f` over OPS ops.
fn time(mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    for i in 0..OPS {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / OPS as f64
}

fn ops<B: Bitmap>(mem: &GuestMemoryMmap<B>) -> [f64; 3] {
    let addr = |i: u64| GuestAddress((i * 4096 * 7) % (REGION as u64 - 8192));
    [
        time(|i| mem.write_obj(i as u16, addr(i)).expect("write")),
        time(|i| {
            let s = mem.get_slice(addr(i), 4096).expect("slice");
            s.bitmap().mark_dirty(0, 4096);
            black_box(&s);
        }),
        time(|i| {
            black_box(mem.read_obj::<u64>(addr(i)).expect("read"));
        }),
    ]
}

fn main() {
    let theirs = memory::<BitmapMmapRegion>();
    let ours = memory::<DirtyBitmap>();
    let logged = memory::<DirtyBitmap>();
    let log: std::sync::Arc<[std::sync::atomic::AtomicU8]> = (0..REGION / 4096 / 8)
        .map(|_| std::sync::atomic::AtomicU8::new(0))
        .collect();
    for r in logged.iter() {
        let l = RegionLog::in_memory(0, REGION as u64, log.clone()).expect("log");
        host_backend::dirty_log::region_bitmap(r).replace(l);
    }
    let mut best = [[f64::MAX; 3]; 3];
    for _ in 0..ROUNDS {
        for (k, b) in [ops(&theirs), ops(&ours), ops(&logged)]
            .into_iter()
            .enumerate()
        {
            for (j, v) in b.into_iter().enumerate() {
                best[k][j] = best[k][j].min(v);
            }
        }
    }
    println!("| bitmap | write_obj u16 ns | get_slice 4 KiB + mark ns | read_obj u64 ns |");
    println!("|---|---|---|---|");
    for (name, b) in [
        ("BitmapMmapRegion, no log", best[0]),
        ("DirtyBitmap, no log", best[1]),
        ("DirtyBitmap, log set", best[2]),
    ] {
        println!("| {name} | {:.1} | {:.1} | {:.1} |", b[0], b[1], b[2]);
    }
}
