//! One round of the balloon loop, OS-independent: what the driver's worker
//! thread runs on every tick (and what the host tests drive against the
//! core's fake device).
//!
//! A round: take in everything the device did (deflated pages go back to
//! the kernel by being dropped: the driver's page type frees itself), reset
//! after a fault that leaves the queues untrustworthy, answer a stats
//! request with the kernel's figures, then take one step toward the
//! target (inflate with pages the kernel can spare, or deflate).

use alloc::vec::Vec;
use core::cell::Cell;

use pv_balloon::{BalloonError, Event, GuestPage, MemStats, Plan, VirtioBalloon};
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;

/// What the balloon needs from the kernel.
pub trait Kernel {
    /// A page the kernel handed out; dropping it gives it back.
    type Page: GuestPage;
    /// Up to `n` pages; fewer (even none) when the kernel is short.
    fn alloc_pages(&mut self, n: usize) -> Vec<Self::Page>;
    /// The kernel's memory figures now.
    fn stats(&mut self) -> MemStats;
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Pages given back to the kernel (deflated, or handed back by a reset).
    pub released: usize,
    /// Pages posted for inflation.
    pub inflated: usize,
    /// Pages posted for deflation.
    pub deflated: usize,
    /// The kernel gave fewer pages than the plan asked for.
    pub short: bool,
    /// Stats were sent.
    pub stats_sent: bool,
    /// The device was reset after a fault.
    pub reset: bool,
}

impl Round {
    /// Did the round change anything (worth another round at once)?
    pub fn progressed(&self) -> bool {
        self.inflated > 0 || self.deflated > 0 || self.released > 0 || self.reset
    }
}

/// Run one round. `Err` only for faults a reset did not clear; warnings
/// are logged by the core and counted in its counters.
pub fn round<H, T, K>(
    b: &mut VirtioBalloon<H, T, K::Page>,
    k: &mut K,
) -> Result<Round, BalloonError>
where
    H: Hal,
    T: Transport,
    K: Kernel,
{
    let mut r = Round::default();
    let stats_due = Cell::new(false);
    let released = Cell::new(0usize);
    let mut sink = |ev: Event<K::Page>| match ev {
        // Dropping the page gives it back to the kernel.
        Event::Released(p) => {
            released.set(released.get() + 1);
            drop(p);
        }
        Event::StatsRequested => stats_due.set(true),
        Event::Reported(_) | Event::TargetChanged { .. } | Event::Warning(_) => {}
    };
    if let Err(e) = b.poll(&mut sink) {
        if !e.needs_reset() {
            return Err(e);
        }
        log::error!("virtio-balloon: device fault ({e}); resetting, the balloon starts over");
        b.reset(&mut sink)?;
        r.reset = true;
    }
    if stats_due.get() {
        let s = k.stats();
        if let Err(e) = b.supply_stats(&s) {
            log::warn!("virtio-balloon: stats: {e}");
        } else {
            r.stats_sent = true;
        }
    }
    match b.plan() {
        Plan::Idle => {}
        Plan::Inflate { pages } => {
            let mut v = k.alloc_pages(pages);
            r.short = v.len() < pages;
            if !v.is_empty() {
                // On error the pages stay in `v` and go back to the kernel
                // when it is dropped.
                r.inflated = b.inflate(&mut v)?;
            }
        }
        Plan::Deflate { pages } => {
            r.deflated = b.deflate(pages, &mut sink)?;
        }
    }
    r.released = released.get();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;
    use core::cell::RefCell;
    use pv_balloon::testing::virtio::{FakeBalloon, IdentityHal};
    use pv_balloon::virtio::{DEFLATEQ, INFLATEQ};
    use pv_balloon::{StatTag, VirtioBalloonConfig, VirtioDeviceId, VirtioFeatures};
    use std::collections::BTreeSet;

    /// A page of the fake kernel: its frame, and the kernel's free set it
    /// returns to when dropped (as the driver's MDL page frees itself).
    #[derive(Debug)]
    struct Page {
        pfn: u64,
        free: Rc<RefCell<BTreeSet<u64>>>,
    }

    impl GuestPage for Page {
        fn phys_addr(&self) -> u64 {
            self.pfn << 12
        }
    }

    impl Drop for Page {
        fn drop(&mut self) {
            assert!(self.free.borrow_mut().insert(self.pfn), "page freed twice");
        }
    }

    struct FakeKernel {
        free: Rc<RefCell<BTreeSet<u64>>>,
        stats: MemStats,
    }

    impl FakeKernel {
        fn new(frames: u64) -> Self {
            Self {
                free: Rc::new(RefCell::new((0x1000..0x1000 + frames).collect())),
                stats: MemStats::default(),
            }
        }
        fn free_count(&self) -> usize {
            self.free.borrow().len()
        }
    }

    impl Kernel for FakeKernel {
        type Page = Page;
        fn alloc_pages(&mut self, n: usize) -> Vec<Page> {
            let mut free = self.free.borrow_mut();
            let take: Vec<u64> = free.iter().copied().take(n).collect();
            take.iter()
                .map(|&pfn| {
                    free.remove(&pfn);
                    Page {
                        pfn,
                        free: Rc::clone(&self.free),
                    }
                })
                .collect()
        }
        fn stats(&mut self) -> MemStats {
            self.stats
        }
    }

    type Balloon = VirtioBalloon<IdentityHal, FakeBalloon, Page>;

    fn balloon(dev: &FakeBalloon) -> Balloon {
        let limits = crate::kstats::limits(1 << 30);
        VirtioBalloon::new(
            dev.clone(),
            VirtioDeviceId::TRADITIONAL_BALLOON,
            VirtioBalloonConfig::new(limits),
        )
        .expect("bring-up")
    }

    fn features() -> VirtioFeatures {
        VirtioFeatures::VERSION_1 | VirtioFeatures::MUST_TELL_HOST | VirtioFeatures::STATS_VQ
    }

    #[test]
    fn inflate_hands_the_device_exactly_the_pages_taken_and_deflate_returns_them() {
        let dev = FakeBalloon::new(features(), 64);
        let mut k = FakeKernel::new(4096);
        let mut b = balloon(&dev);
        dev.set_num_pages(300);
        let r = round(&mut b, &mut k).expect("round");
        assert_eq!(r.inflated, 256);
        dev.process(INFLATEQ);
        let r = round(&mut b, &mut k).expect("round");
        assert_eq!(r.inflated, 44);
        dev.process(INFLATEQ);
        round(&mut b, &mut k).expect("round");
        // The device holds exactly the frames the kernel no longer has.
        let taken: BTreeSet<u32> = (0x1000u32..0x1000 + 4096)
            .filter(|p| !k.free.borrow().contains(&u64::from(*p)))
            .collect();
        assert_eq!(taken.len(), 300);
        assert_eq!(dev.balloon(), taken);
        assert_eq!(dev.actual(), 300);

        dev.set_num_pages(0);
        let mut rounds = 0;
        while b.status().held > 0 || b.status().deflating > 0 {
            let r = round(&mut b, &mut k).expect("round");
            dev.process(DEFLATEQ);
            rounds += 1;
            assert!(rounds < 10, "deflate does not converge: {:?}", b.status());
            let _ = r;
        }
        round(&mut b, &mut k).expect("round");
        assert!(dev.balloon().is_empty());
        assert_eq!(k.free_count(), 4096, "every page went back to the kernel");
        assert_eq!(dev.actual(), 0);
    }

    #[test]
    fn a_short_kernel_inflates_what_it_can() {
        let dev = FakeBalloon::new(features(), 64);
        let mut k = FakeKernel::new(10);
        let mut b = balloon(&dev);
        dev.set_num_pages(100);
        let r = round(&mut b, &mut k).expect("round");
        assert_eq!((r.inflated, r.short), (10, true));
        dev.process(INFLATEQ);
        let r = round(&mut b, &mut k).expect("round");
        assert_eq!((r.inflated, r.short), (0, true));
        assert_eq!(dev.balloon().len(), 10);
    }

    #[test]
    fn stats_requests_are_answered_with_the_kernels_figures() {
        let dev = FakeBalloon::new(features(), 64);
        let mut k = FakeKernel::new(16);
        k.stats
            .set(StatTag::Avail, 12345)
            .set(StatTag::MemTot, 1 << 30);
        let mut b = balloon(&dev);
        assert!(dev.request_stats());
        let r = round(&mut b, &mut k).expect("round");
        assert!(r.stats_sent);
        dev.process(pv_balloon::virtio::STATSQ);
        let s = MemStats::decode(&dev.last_stats());
        assert_eq!(s.get(StatTag::Avail), Some(12345));
    }

    #[test]
    fn a_device_fault_resets_and_every_page_goes_back() {
        let dev = FakeBalloon::new(features(), 64);
        let mut k = FakeKernel::new(64);
        let mut b = balloon(&dev);
        dev.set_num_pages(32);
        round(&mut b, &mut k).expect("round");
        dev.process(INFLATEQ);
        round(&mut b, &mut k).expect("round");
        assert_eq!(k.free_count(), 32);
        // A completion on the deflate queue, where nothing was posted.
        dev.push_used(DEFLATEQ, 0, 0);
        let r = round(&mut b, &mut k).expect("round after reset");
        assert!(r.reset);
        assert_eq!(r.released, 32);
        assert_eq!(b.counters().resets, 1);
    }
}
