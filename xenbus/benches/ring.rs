//! Requests per second through a single-page blkif ring, frontend and
//! backend on two threads, ours against the `ring.h` macros compiled into the
//! same binary (the C peer from `tests/c/`, built by `build.rs`), with the
//! same entry sizes, batch sizes and loop shape on both sides. Both sides
//! poll (spin, then yield; no event channel) so that only the ring is
//! measured. On a loaded machine the two-thread figures are dominated by the
//! scheduler, so a second group runs both ends in turn on one thread: the
//! cost of the ring operations alone.
//!
//! `cargo bench -p xenbus --bench ring`

use std::hint::spin_loop;
use std::thread::yield_now;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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

fn rust_run(batch: u32) -> Duration {
    let mem = SharedMem::new(1);
    let mut front = FrontRing::<BlkifRequest, BlkifResponse>::init(mem.region()).expect("init");
    let mut back =
        BackRing::<BlkifRequest, BlkifResponse>::attach(mem.region(), 0).expect("attach");
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut served = 0u64;
            let mut spins = 0;
            let mut rsp = BlkifResponse::default();
            while served < N {
                let mut any = false;
                while let Some(req) = back.consume_request().expect("honest frontend") {
                    rsp.id = req.id;
                    rsp.operation = req.operation;
                    back.push_response(&rsp).expect("answer");
                    served += 1;
                    any = true;
                }
                if any {
                    back.push_responses_and_check_notify().expect("push");
                } else {
                    idle(&mut spins);
                }
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
                front.push_requests_and_check_notify().expect("push");
            }
            let mut any = false;
            while let Some(_rsp) = front.consume_response().expect("honest backend") {
                done += 1;
                any = true;
            }
            if !any {
                idle(&mut spins);
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
        front.push_requests_and_check_notify().expect("push");
        while let Some(got) = back.consume_request().expect("honest frontend") {
            rsp.id = got.id;
            rsp.operation = got.operation;
            back.push_response(&rsp).expect("answer");
        }
        back.push_responses_and_check_notify().expect("push");
        while let Some(_r) = front.consume_response().expect("honest backend") {
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

criterion_group!(benches, bench);
criterion_main!(benches);
