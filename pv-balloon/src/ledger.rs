//! What both transports share: the pages the glue hands in, the limits it
//! sets, the accounting of the balloon, and the policy that turns a target
//! into bounded steps ([`Plan`]).
//!
//! Every quantity here is in 4 KiB frames (`VIRTIO_BALLOON_PFN_SHIFT` and
//! Xen's frame size), whatever the guest's page size: a guest page of 16 or
//! 64 KiB is several frames and is always moved whole.

use crate::BalloonError;

/// Bytes of one balloon frame (virtio PFN unit, Xen frame).
pub const FRAME_SIZE: u64 = 4096;
/// Frame numbers in one inflate/deflate buffer or reservation call by
/// default (Linux's `VIRTIO_BALLOON_ARRAY_PFNS_MAX`); see
/// [`Limits::batch_frames`].
pub const FRAMES_PER_BATCH: usize = 256;
/// Most frame numbers [`Limits::batch_frames`] may ask for in one buffer or
/// call: 64 MiB of 4 KiB frames, a 64 KiB PFN array. (virtio-balloon sets no
/// limit per buffer, and QEMU's device takes any length; this bounds the
/// buffer the core allocates and the work of one device notification.)
pub const MAX_BATCH_FRAMES: usize = 16384;

/// One guest page handed to the balloon by the OS glue.
///
/// The glue keeps whatever it needs to give the page back to its allocator
/// (a virtual address, an MDL, a `struct page`); the core only asks for the
/// guest-physical address.
///
/// # What the glue guarantees for a page it hands in
///
/// From the call that takes it until the core hands it back (an
/// [`Event::Released`] or a returned page), the page is the balloon's:
/// nothing in the guest reads, writes, moves or frees it; its
/// guest-physical address stays fixed (pinned, not migrated by compaction,
/// not part of a transparent huge page that could be split or collapsed);
/// and no page is handed in twice.
pub trait GuestPage {
    /// Guest-physical address of the first byte, aligned to the guest page
    /// size.
    fn phys_addr(&self) -> u64;
}

impl GuestPage for u64 {
    fn phys_addr(&self) -> u64 {
        *self
    }
}

/// Limits the glue sets for the balloon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Guest memory in 4 KiB frames (what targets are checked against).
    pub guest_frames: u64,
    /// Frames the balloon never takes: the balloon refuses to grow beyond
    /// `guest_frames - floor_frames`.
    pub floor_frames: u64,
    /// Guest page size in bytes: a power of two from 4 KiB to 1 MiB, and
    /// at most one batch.
    pub page_size: u64,
    /// 4 KiB frames per inflate/deflate buffer or reservation call, from
    /// one guest page to [`MAX_BATCH_FRAMES`] ([`FRAMES_PER_BATCH`] by
    /// default). Larger batches mean fewer device round trips per MiB.
    pub batch_frames: usize,
}

impl Limits {
    /// Limits for a guest of `guest_bytes` of memory with 4 KiB pages that
    /// keeps at least `floor_bytes` out of the balloon.
    pub fn new(guest_bytes: u64, floor_bytes: u64) -> Self {
        Self {
            guest_frames: guest_bytes / FRAME_SIZE,
            floor_frames: floor_bytes.div_ceil(FRAME_SIZE),
            page_size: FRAME_SIZE,
            batch_frames: FRAMES_PER_BATCH,
        }
    }

    /// Checks the limits make sense.
    pub fn validate(&self) -> Result<(), BalloonError> {
        let ok = self.page_size.is_power_of_two()
            && self.page_size >= FRAME_SIZE
            && self.page_size <= FRAME_SIZE * FRAMES_PER_BATCH as u64
            && self.batch_frames <= MAX_BATCH_FRAMES
            && self.batch_frames as u64 >= self.frames_per_page()
            && self.floor_frames <= self.guest_frames;
        if ok {
            Ok(())
        } else {
            Err(BalloonError::BadLimits)
        }
    }

    /// 4 KiB frames per guest page.
    pub fn frames_per_page(&self) -> u64 {
        (self.page_size / FRAME_SIZE).max(1)
    }

    /// Guest pages in one buffer or reservation call.
    pub fn pages_per_batch(&self) -> usize {
        (self.batch_frames as u64 / self.frames_per_page()).max(1) as usize
    }

    /// Largest balloon in frames the floor allows.
    pub fn max_balloon(&self) -> u64 {
        self.guest_frames.saturating_sub(self.floor_frames)
    }
}

/// The next step toward the target, in guest pages (at most one buffer's
/// worth). See the crate docs for the loop that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// At the target, or waiting for a buffer in flight.
    Idle,
    /// Hand up to this many pages to `inflate` (fewer is fine: the glue
    /// may be short of memory or near its own free-memory floor).
    Inflate {
        /// Guest pages wanted.
        pages: usize,
    },
    /// Call `deflate` with this many pages.
    Deflate {
        /// Guest pages to give back.
        pages: usize,
    },
}

/// What the core hands back to the glue while it polls.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<P> {
    /// A page left the balloon: the glue owns it again and may use it.
    Released(P),
    /// A free-page report completed: the range is the glue's again.
    Reported(crate::FreeRange),
    /// The device returned the stats buffer: call `supply_stats`.
    StatsRequested,
    /// The target changed (balloon size in 4 KiB frames, already clamped).
    TargetChanged {
        /// New target balloon size in frames.
        frames: u64,
    },
    /// The device or host did something wrong that did not stop the
    /// balloon (bad used length, target beyond memory). Counted in
    /// [`Counters`] too.
    Warning(BalloonError),
}

/// Counters: every warning and fault the core logs is counted here.
/// Monotonic from construction (a reset does not clear them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames inflated (acknowledged by the device / taken by Xen).
    pub inflated_frames: u64,
    /// Frames deflated (handed back to the glue).
    pub deflated_frames: u64,
    /// Deflates done under memory pressure (`oom_deflate`).
    pub oom_deflates: u64,
    /// Stats buffers posted.
    pub stats_posted: u64,
    /// Free-page reports completed.
    pub reports: u64,
    /// Target changes seen.
    pub target_changes: u64,
    /// Targets clamped because they exceeded guest memory (warning).
    pub clamped_targets: u64,
    /// Targets the host wrote that were not numbers (warning).
    pub bad_targets: u64,
    /// Used lengths that were impossible (warning).
    pub bad_lengths: u64,
    /// Times the balloon stopped on a device fault (error).
    pub stops: u64,
    /// Successful resets.
    pub resets: u64,
}

/// Balloon size and target, in 4 KiB frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Target balloon size, clamped to the floor.
    pub target: u64,
    /// What the device or host asked for, before clamping.
    pub requested: u64,
    /// Frames in the balloon, acknowledged (what `actual` reports).
    pub held: u64,
    /// Frames posted for inflation, not yet acknowledged.
    pub inflating: u64,
    /// Frames posted for deflation, not yet acknowledged.
    pub deflating: u64,
    /// Inflation is held off after a deflate under memory pressure, until
    /// the target changes or the glue calls `resume_inflate`.
    pub oom_hold: bool,
}

/// Accounting and policy shared by both transports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ledger {
    pub limits: Limits,
    pub st: Status,
}

impl Ledger {
    pub fn new(limits: Limits) -> Result<Self, BalloonError> {
        limits.validate()?;
        Ok(Self {
            limits,
            st: Status::default(),
        })
    }

    /// Set the target balloon size (frames). Returns a warning when the
    /// request exceeds guest memory, and whether the clamped target changed.
    pub fn set_target(&mut self, requested: u64) -> (Option<BalloonError>, bool) {
        let warn =
            (requested > self.limits.guest_frames).then_some(BalloonError::TargetBeyondMemory {
                requested,
                guest: self.limits.guest_frames,
            });
        let target = requested.min(self.limits.max_balloon());
        let changed = target != self.st.target || requested != self.st.requested;
        if changed {
            self.st.oom_hold = false;
        }
        self.st.requested = requested;
        self.st.target = target;
        (warn, changed)
    }

    /// Change the floor (e.g. as the guest's own demand changes). The
    /// target is re-clamped; a balloon already above it is deflated by the
    /// plan.
    pub fn set_floor(&mut self, floor_frames: u64) -> Result<(), BalloonError> {
        let mut l = self.limits;
        l.floor_frames = floor_frames;
        l.validate()?;
        self.limits = l;
        self.st.target = self.st.requested.min(l.max_balloon());
        Ok(())
    }

    /// Frames the balloon will hold once the buffers in flight complete.
    pub fn projected(&self) -> u64 {
        self.st.held.saturating_add(self.st.inflating)
    }

    /// The frames the device should see as `actual`.
    pub fn actual(&self) -> u64 {
        self.st.held.saturating_add(self.st.deflating)
    }

    pub fn plan(&self, inflate_busy: bool, deflate_busy: bool, held_pages: usize) -> Plan {
        let per = self.limits.frames_per_page();
        let batch = self.limits.pages_per_batch();
        let cur = self.projected();
        let target = self.st.target;
        if cur < target {
            if self.st.oom_hold || inflate_busy {
                return Plan::Idle;
            }
            // Round down: never overshoot the target with a big page.
            let n = ((target - cur) / per).min(batch as u64) as usize;
            if n == 0 {
                Plan::Idle
            } else {
                Plan::Inflate { pages: n }
            }
        } else if cur > target {
            if deflate_busy {
                return Plan::Idle;
            }
            // Round up: the balloon ends at or below the target, never
            // above (and the inflate rounding above then leaves it there).
            let n = (cur - target)
                .div_ceil(per)
                .min(batch as u64)
                .min(held_pages as u64) as usize;
            if n == 0 {
                Plan::Idle
            } else {
                Plan::Deflate { pages: n }
            }
        } else {
            Plan::Idle
        }
    }

    /// Can `pages` more guest pages go in without crossing the floor?
    pub fn check_inflate(&self, pages: usize) -> Result<u64, BalloonError> {
        let frames = (pages as u64).saturating_mul(self.limits.frames_per_page());
        let would_be = self.projected().saturating_add(frames);
        let max = self.limits.max_balloon();
        if would_be > max {
            return Err(BalloonError::BeyondFloor { would_be, max });
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(guest: u64, floor: u64, page: u64) -> Ledger {
        let l = Limits {
            guest_frames: guest,
            floor_frames: floor,
            page_size: page,
            batch_frames: FRAMES_PER_BATCH,
        };
        let Ok(l) = Ledger::new(l) else {
            panic!("bad limits")
        };
        l
    }

    #[test]
    fn limits_refuse_nonsense() {
        let bad = [
            (10, 11, 4096, 256),
            (10, 0, 2048, 256),
            (10, 0, 12288, 256),
            (10, 0, 2 << 20, 256),
            // A batch smaller than a page, empty, or beyond the maximum.
            (10, 0, 65536, 8),
            (10, 0, 4096, 0),
            (10, 0, 4096, MAX_BATCH_FRAMES + 1),
        ];
        for (g, f, p, b) in bad {
            let l = Limits {
                guest_frames: g,
                floor_frames: f,
                page_size: p,
                batch_frames: b,
            };
            assert_eq!(l.validate(), Err(BalloonError::BadLimits), "{l:?}");
        }
        assert_eq!(Limits::new(1 << 30, 1).floor_frames, 1);
    }

    #[test]
    fn plan_batches_and_never_overshoots_big_pages() {
        let mut l = ledger(100_000, 0, 4096);
        l.set_target(1000);
        assert_eq!(l.plan(false, false, 0), Plan::Inflate { pages: 256 });
        assert_eq!(l.plan(true, false, 0), Plan::Idle);
        // A larger batch: 16 MiB of 4 KiB pages per step, 16 pages of
        // 64 KiB for a target of 40 frames still.
        let mut big = l.limits;
        big.batch_frames = 4096;
        let Ok(mut l) = Ledger::new(big) else {
            panic!("bad limits")
        };
        l.set_target(10_000);
        assert_eq!(l.plan(false, false, 0), Plan::Inflate { pages: 4096 });
        l.st.held = 8192;
        assert_eq!(l.plan(false, false, 8192), Plan::Inflate { pages: 1808 });
        l.set_target(0);
        assert_eq!(l.plan(false, false, 8192), Plan::Deflate { pages: 4096 });
        // 64 KiB pages: 16 frames each, 16 pages per batch.
        let mut l = ledger(100_000, 0, 65536);
        l.set_target(40);
        assert_eq!(l.plan(false, false, 0), Plan::Inflate { pages: 2 });
        l.st.held = 32;
        assert_eq!(l.plan(false, false, 2), Plan::Idle);
        l.set_target(20);
        assert_eq!(l.plan(false, false, 2), Plan::Deflate { pages: 1 });
        l.st.held = 16;
        assert_eq!(l.plan(false, false, 1), Plan::Idle);
    }

    #[test]
    fn target_is_clamped_to_floor_and_memory() {
        let mut l = ledger(1000, 200, 4096);
        let (w, changed) = l.set_target(5000);
        assert!(changed);
        assert_eq!(
            w,
            Some(BalloonError::TargetBeyondMemory {
                requested: 5000,
                guest: 1000
            })
        );
        assert_eq!(l.st.target, 800);
        let (w, _) = l.set_target(900);
        assert_eq!(w, None);
        assert_eq!(l.st.target, 800);
        assert_eq!(
            l.check_inflate(801),
            Err(BalloonError::BeyondFloor {
                would_be: 801,
                max: 800
            })
        );
        assert_eq!(l.check_inflate(800), Ok(800));
        assert_eq!(l.set_floor(2000), Err(BalloonError::BadLimits));
        assert_eq!(l.set_floor(950), Ok(()));
        assert_eq!(l.st.target, 50);
    }

    #[test]
    fn oom_hold_stops_inflation_until_target_changes() {
        let mut l = ledger(1000, 0, 4096);
        l.set_target(100);
        l.st.oom_hold = true;
        assert_eq!(l.plan(false, false, 0), Plan::Idle);
        let (_, changed) = l.set_target(100);
        assert!(!changed);
        assert!(l.st.oom_hold);
        l.set_target(90);
        assert!(!l.st.oom_hold);
        assert_eq!(l.plan(false, false, 0), Plan::Inflate { pages: 90 });
    }
}
