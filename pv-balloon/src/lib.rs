//! Memory balloon core for pvdrivers.
//!
//! Transport-neutral balloon logic for virtio-balloon ([`virtio`]) and the
//! Xen balloon ([`xen`]). `no_std` + `alloc`: the same code serves the Linux
//! guest runtime and the Windows kernel glue; the OS glue supplies pages
//! (by guest-physical address, [`GuestPage`]), a transport or the Xen
//! reservation calls, and drives the loop below.
//!
//! # What it is for and what it refuses
//!
//! - Moves the balloon toward a target (virtio `num_pages`, Xen
//!   `memory/target`) in bounded steps ([`Plan`]): at most
//!   [`Limits::batch_frames`] 4 KiB frames per buffer or reservation call
//!   ([`FRAMES_PER_BATCH`] by default, as Linux does); never beyond the floor the glue sets ([`Limits`]); a guest
//!   page bigger than 4 KiB is always several frames, moved whole.
//! - Tells the device (or Xen) before giving pages back on deflate.
//! - The device and the host are untrusted: targets beyond guest memory are
//!   clamped and counted, `memory/target` must be a decimal number,
//!   completions must match the one buffer posted per queue, used lengths
//!   must be possible, reservation calls may not claim more than asked.
//!   Faults that leave the queues untrustworthy stop the balloon until
//!   `reset`; the rest are [`Event::Warning`]s and [`Counters`]. Nothing the
//!   device writes can make this code panic or loop.
//!
//! # Driving it (for the OS glue, e.g. the Linux runtime)
//!
//! The Linux userspace runtime (`pv-balloon/linux`, crate
//! `pv_balloon_linux`, binary `pvballoond`) pins anonymous memory and
//! must make each page's frame number hold still while the balloon has it:
//! `mmap` private anonymous memory (no hugetlbfs),
//! `madvise(MADV_NOHUGEPAGE)` so no transparent huge page is built or split
//! under it, touch each page once so it is backed, `mlock` it so it is
//! never swapped, and set `vm.compact_unevictable_allowed=0` (mlocked pages
//! are otherwise still migrated by compaction) and `kernel.numa_balancing=0`
//! on multi-node guests. It then reads the frame from `/proc/self/pagemap`
//! (8 bytes per page: bit 63 present, bits 0–54 the PFN; needs
//! `CAP_SYS_ADMIN`, else the PFN reads as 0 — refuse such pages) and hands
//! `(vaddr, pfn << 12)` as its [`GuestPage`] type. It never touches the page
//! again until the core gives it back ([`Event::Released`]); then it
//! `munlock`s and `munmap`s
//! (or `MADV_DONTNEED`s) it. For virtio the loop is:
//!
//! ```text
//! balloon = VirtioBalloon::new(transport, device ID from the bus, VirtioBalloonConfig::new(limits))?
//! loop {
//!     wait for an interrupt (config change or queue) or a timer tick
//!     transport.ack_interrupt()
//!     balloon.poll(&mut |ev| match ev {
//!         Released(page)   => give page back to the allocator,
//!         StatsRequested   => stats_due = true,
//!         Reported(range)  => the range is free memory again,
//!         TargetChanged{..} | Warning(..) => log / metrics,
//!     })?                      // Err: device fault -> balloon.reset(..)
//!     if stats_due { balloon.supply_stats(&read /proc/meminfo + /proc/vmstat)?; }
//!     if under memory pressure { balloon.oom_deflate(n, &mut sink)?; continue }
//!     match balloon.plan() {
//!         Inflate { pages } => { v = allocate and pin up to `pages` pages,
//!                                fewer if free memory is near the runtime's
//!                                own floor; balloon.inflate(&mut v)? }
//!         Deflate { pages } => { balloon.deflate(pages, &mut sink)?; }
//!         Idle => sleep until the next interrupt or tick
//!     }
//! }
//! ```
//!
//! One buffer per queue is in flight, so a step completes before the next
//! is planned; [`Plan::Idle`] while a buffer is in flight means "poll
//! again after the next interrupt". The Xen loop is the same with
//! [`xen::XenBalloon::handle_watch`] on `memory/target` watch events in
//! place of the config interrupt, and inflate/deflate completing at once
//! (hypercalls are synchronous).
//!
//! Free-page reporting hands the device ranges of memory that are free in
//! the guest's allocator. Only kernel glue (the Windows driver, a kernel
//! module) can know and hold such ranges; a userspace runtime cannot, and
//! should leave `PAGE_REPORTING` refused.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod error;
pub mod ledger;
pub mod stats;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod virtio;
pub mod xen;

pub use error::BalloonError;
pub use ledger::{
    Counters, Event, GuestPage, Limits, Plan, Status, FRAMES_PER_BATCH, FRAME_SIZE,
    MAX_BATCH_FRAMES,
};
pub use stats::{MemStats, StatTag};
pub use virtio::{FreeRange, VirtioBalloon, VirtioBalloonConfig, VirtioDeviceId, VirtioFeatures};
