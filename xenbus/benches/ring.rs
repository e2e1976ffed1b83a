//! Requests per second through a single-page blkif ring, frontend and
//! backend on two threads, ours against the `ring.h` macros compiled into the
//! same binary (the C peer from `tests/c/`, built by `build.rs`), with the
//! same entry sizes, batch sizes and loop shape on both sides. Both sides
//! poll (spin, then yield; no event channel) so that only the ring is
//! measured. On a loaded machine the two-thread figures are dominated by the
//! scheduler, so a second group runs both ends in turn on one thread: the
//! cost of the ring operations alone.
//!
//! Both variants use what they take off the ring the way a driver would (the
//! copied entry and the notify decision go through `black_box` here and an
//! empty `asm` with a memory operand in C): otherwise GCC drops most of
//! `RING_COPY_*`'s copy and the event-index load, and the C side would move
//! far fewer cache lines per request than a real driver. In the two-thread
//! group the frontend runs on one CPU and the backend on another, pinned the
//! same way for both variants, so thread placement is not part of the result.
//!
//! `cargo bench -p xenbus --bench ring`

use std::hint::{black_box, spin_loop};
use std::thread::yield_now;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use xenbus::platform::inproc::SharedMem;
use xenbus::ring::{BackRing, FrontRing};
use xenbus::wire::blkif::{BlkifRequest, BlkifResponse};

/// Requests per measured run.
const N: u64 = 200_000;
const BATCHES: [u32; 3] = [1, 8, 32];

/// Idle backoff, the same as the C side's: spin, then yield.
fn idle(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        spin_loop();
    } else {
        *spins = 0;
        yield_now();
    }
}

/// The first two CPUs this process may run on, if there are two.
fn cpu_pair() -> Option<(usize, usize)> {
    // SAFETY: `cpu_set_t` is plain data; all-zero is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a valid, writable set of
    // the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return None;
    }
    // SAFETY: `set` was filled in above; CPU_ISSET only reads it.
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
    Some((cpus.next()?, cpus.next()?))
}

/// Restricts the calling thread to `cpu` (best effort: a benchmark aid).
fn pin(cpu: usize) {
    // SAFETY: as in `cpu_pair`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu < CPU_SETSIZE` (it came from a set); `set` is writable.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid set.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
}

/// Runs `run` with the calling (frontend) thread pinned to the first CPU of
/// `cpus`, handing it the CPU the backend thread must pin itself to, then
/// lets the calling thread run anywhere again. The same for both variants.
fn pinned<R>(run: impl FnOnce(Option<usize>) -> R) -> R {
    // SAFETY: as in `cpu_pair`.
    let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `saved` is writable.
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&saved), &mut saved) } == 0;
    let pair = if ok { cpu_pair() } else { None };
    if let Some((front, _)) = pair {
        pin(front);
    }
    let r = run(pair.map(|(_, back)| back));
    if pair.is_some() {
        // SAFETY: restores the set read above for the calling thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&saved), &saved) };
    }
    r
}

fn rust_run(batch: u32) -> Duration {
    pinned(|back_cpu| rust_run_pinned(batch, back_cpu))
}

fn rust_run_pinned(batch: u32, back_cpu: Option<usize>) -> Duration {
    let mem = SharedMem::new(1);
    let mut front = FrontRing::<BlkifRequest, BlkifResponse>::init(mem.region()).expect("init");
    let mut back =
        BackRing::<BlkifRequest, BlkifResponse>::attach(mem.region(), 0).expect("attach");
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(cpu) = back_cpu {
                pin(cpu);
            }
            let mut served = 0u64;
            let mut spins = 0;
            let mut rsp = BlkifResponse::default();
            while served < N {
                // One read of req_prod per pass; drain exactly what it showed.
                let avail = back.unconsumed_requests().expect("honest frontend");
                if avail == 0 {
                    idle(&mut spins);
                    continue;
                }
                for _ in 0..avail {
                    let req = back.consume_request().expect("honest frontend");
                    let req = req.expect("counted");
                    black_box(&req);
                    rsp.id = req.id;
                    rsp.operation = req.operation;
                    back.push_response(&rsp).expect("answer");
                    served += 1;
                }
                black_box(back.push_responses_and_check_notify().expect("push"));
            }
        });
        let start = Instant::now();
        let (mut sent, mut done) = (0u64, 0u64);
        let mut spins = 0;
        let mut req = BlkifRequest::default();
        while done < N {
            let mut k = 0;
            while k < batch && sent < N && !front.is_full() {
                req.id = sent;
                req.sector_number = sent * 8;
                front.push_request(&req).expect("room");
                sent += 1;
                k += 1;
            }
            if k > 0 {
                black_box(front.push_requests_and_check_notify().expect("push"));
            }
            // One read of rsp_prod per pass; drain exactly what it showed.
            let avail = front.unconsumed_responses().expect("honest backend");
            if avail == 0 {
                idle(&mut spins);
                continue;
            }
            for _ in 0..avail {
                let rsp = front.consume_response().expect("honest backend");
                black_box(&rsp.expect("counted"));
                done += 1;
            }
        }
        start.elapsed()
    })
}

fn rust_lockstep(batch: u32) -> Duration {
    let mem = SharedMem::new(1);
    let mut front = FrontRing::<BlkifRequest, BlkifResponse>::init(mem.region()).expect("init");
    let mut back =
        BackRing::<BlkifRequest, BlkifResponse>::attach(mem.region(), 0).expect("attach");
    let start = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    let mut req = BlkifRequest::default();
    let mut rsp = BlkifResponse::default();
    while done < N {
        let mut k = 0;
        while k < batch && sent < N && !front.is_full() {
            req.id = sent;
            req.sector_number = sent * 8;
            front.push_request(&req).expect("room");
            sent += 1;
            k += 1;
        }
        black_box(front.push_requests_and_check_notify().expect("push"));
        while let Some(got) = back.consume_request().expect("honest frontend") {
            black_box(&got);
            rsp.id = got.id;
            rsp.operation = got.operation;
            back.push_response(&rsp).expect("answer");
        }
        black_box(back.push_responses_and_check_notify().expect("push"));
        while let Some(r) = front.consume_response().expect("honest backend") {
            black_box(&r);
            done += 1;
        }
    }
    start.elapsed()
}

#[cfg(xen_c_peer)]
mod c {
    use core::ffi::{c_int, c_uint, c_void};

    #[repr(C)]
    pub struct Ring {
        _opaque: [u8; 0],
    }

    extern "C" {
        pub fn xcp_front_new(
            sring: *mut c_void,
            bytes: usize,
            start: c_uint,
            init: c_int,
        ) -> *mut Ring;
        pub fn xcp_front_free(f: *mut Ring);
        pub fn xcp_back_new(sring: *mut c_void, bytes: usize, start: c_uint) -> *mut Ring;
        pub fn xcp_back_free(b: *mut Ring);
        pub fn xcp_bench_front(f: *mut Ring, n: u64, batch: c_uint);
        pub fn xcp_bench_back(b: *mut Ring, n: u64);
        pub fn xcp_bench_lockstep(f: *mut Ring, b: *mut Ring, n: u64, batch: c_uint);
    }

    /// A C ring handle that may move to the backend thread.
    pub struct Handle(pub *mut Ring);
    // SAFETY: the C ring state is heap memory used by one thread at a time.
    unsafe impl Send for Handle {}
}

#[cfg(xen_c_peer)]
fn c_run(batch: u32) -> Duration {
    pinned(|back_cpu| c_run_pinned(batch, back_cpu))
}

#[cfg(xen_c_peer)]
fn c_run_pinned(batch: u32, back_cpu: Option<usize>) -> Duration {
    let mem = SharedMem::new(1);
    // SAFETY: `mem` is a live page that outlives both C rings (freed below,
    // after the scope joins the backend thread).
    let front = unsafe { c::xcp_front_new(mem.as_ptr().cast(), mem.len(), 0, 1) };
    // SAFETY: as above.
    let back = c::Handle(unsafe { c::xcp_back_new(mem.as_ptr().cast(), mem.len(), 0) });
    assert!(!front.is_null() && !back.0.is_null());
    let elapsed = std::thread::scope(|s| {
        s.spawn(move || {
            let back = back;
            if let Some(cpu) = back_cpu {
                pin(cpu);
            }
            // SAFETY: a live C back ring used only by this thread.
            unsafe { c::xcp_bench_back(back.0, N) };
            // SAFETY: allocated by xcp_back_new, freed once.
            unsafe { c::xcp_back_free(back.0) };
        });
        let start = Instant::now();
        // SAFETY: a live C front ring used only by this thread.
        unsafe { c::xcp_bench_front(front, N, batch) };
        start.elapsed()
    });
    // SAFETY: allocated by xcp_front_new, freed once.
    unsafe { c::xcp_front_free(front) };
    elapsed
}

#[cfg(xen_c_peer)]
fn c_lockstep(batch: u32) -> Duration {
    let mem = SharedMem::new(1);
    // SAFETY: `mem` is a live page that outlives both C rings.
    let front = unsafe { c::xcp_front_new(mem.as_ptr().cast(), mem.len(), 0, 1) };
    // SAFETY: as above.
    let back = unsafe { c::xcp_back_new(mem.as_ptr().cast(), mem.len(), 0) };
    assert!(!front.is_null() && !back.is_null());
    let start = Instant::now();
    // SAFETY: live C rings on one page, used by this thread only.
    unsafe { c::xcp_bench_lockstep(front, back, N, batch) };
    let elapsed = start.elapsed();
    // SAFETY: allocated by xcp_front_new / xcp_back_new, freed once.
    unsafe { c::xcp_front_free(front) };
    // SAFETY: as above.
    unsafe { c::xcp_back_free(back) };
    elapsed
}

fn bench(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("blkif_ring_1page_2threads");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    for batch in BATCHES {
        g.bench_with_input(BenchmarkId::new("rust", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| (0..iters).map(|_| rust_run(batch)).sum())
        });
        #[cfg(xen_c_peer)]
        g.bench_with_input(BenchmarkId::new("c_ring_h", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| (0..iters).map(|_| c_run(batch)).sum())
        });
    }
    g.finish();

    let mut g = cr.benchmark_group("blkif_ring_1page_lockstep");
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for batch in BATCHES {
        g.bench_with_input(BenchmarkId::new("rust", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| (0..iters).map(|_| rust_lockstep(batch)).sum())
        });
        #[cfg(xen_c_peer)]
        g.bench_with_input(BenchmarkId::new("c_ring_h", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| (0..iters).map(|_| c_lockstep(batch)).sum())
        });
    }
    g.finish();
    #[cfg(not(xen_c_peer))]
    eprintln!(
        "SKIPPED: C ring.h side (C peer not built: needs a host Linux build with libxen-dev)"
    );
}

/// `RING_AB=<rounds>`: instead of criterion, alternate one Rust run and one
/// C run per round for each batch size and print the median rate of each
/// and their ratio. On a shared machine whose load drifts, interleaving gives
/// both variants the same noise, which criterion's one-after-the-other
/// groups do not.
fn ab(rounds: usize) {
    #[cfg(xen_c_peer)]
    for batch in BATCHES {
        let (mut r, mut c) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            r.push(N as f64 / rust_run(batch).as_secs_f64() / 1e6);
            c.push(N as f64 / c_run(batch).as_secs_f64() / 1e6);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (mr, mc) = (median(&mut r), median(&mut c));
        let (br, bc) = (r[r.len() - 1], c[c.len() - 1]);
        println!(
            "2threads batch {batch:2}: median rust {mr:6.2} c_ring_h {mc:6.2} Melem/s ratio {:.2}x | best rust {br:6.2} c_ring_h {bc:6.2} ratio {:.2}x ({rounds} rounds)",
            mr / mc,
            br / bc
        );
    }
    #[cfg(not(xen_c_peer))]
    let _ = rounds;
}

criterion_group!(benches, bench);

fn main() {
    if let Some(rounds) = std::env::var("RING_AB").ok().and_then(|v| v.parse().ok()) {
        ab(rounds);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
