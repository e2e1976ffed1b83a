// SPDX-License-Identifier: GPL-2.0
//! A periodic call on a kernel work item (C half: `pv_tick.c`): the
//! fallback poll of a driver whose interrupts can be late or lost, so a
//! missed notification delays the driver by one period instead of wedging
//! it. The call runs in process context (it may sleep and allocate).

use core::ffi::c_void;
use core::ptr::NonNull;

use kernel::prelude::*;

extern "C" {
    fn pv_tick_start(
        f: unsafe extern "C" fn(ctx: *const c_void),
        ctx: *const c_void,
        period_ms: u32,
    ) -> *mut c_void;
    fn pv_tick_stop(t: *mut c_void);
    fn pv_tick_kick(t: *mut c_void);
}

/// A running periodic call; dropping it waits for a call in progress and
/// stops the next ones.
pub struct Tick(NonNull<c_void>);

// SAFETY: the C item is only touched by `pv_tick_start` and `pv_tick_stop`
// (once, in drop), and the workqueue, which is thread-safe; what the call
// does with its context is the contract of [`Tick::start`].
unsafe impl Send for Tick {}
// SAFETY: `&Tick` only kicks the item, which the workqueue serialises.
unsafe impl Sync for Tick {}

impl Tick {
    /// Calls `f(ctx)` every `period_ms` from a workqueue thread, the first
    /// time one period from now.
    ///
    /// # Safety
    ///
    /// `ctx` must stay valid, and `f(ctx)` sound to call from any thread at
    /// any time, until the returned [`Tick`] is dropped.
    pub unsafe fn start(
        f: unsafe extern "C" fn(ctx: *const c_void),
        ctx: *const c_void,
        period_ms: u32,
    ) -> Result<Self> {
        // SAFETY: the caller keeps `ctx` and `f` valid until drop, which
        // stops the item before returning.
        let raw = unsafe { pv_tick_start(f, ctx, period_ms) };
        NonNull::new(raw).map(Self).ok_or(ENOMEM)
    }

    /// The C item, for [`Tick::kick_raw`] from where the `Tick` cannot be
    /// borrowed.
    pub fn as_raw(&self) -> *mut c_void {
        self.0.as_ptr()
    }

    /// [`Tick::kick`] through [`Tick::as_raw`].
    ///
    /// # Safety
    ///
    /// `raw` is [`Tick::as_raw`] of a `Tick` not yet dropped.
    pub unsafe fn kick_raw(raw: *mut c_void) {
        // SAFETY: the caller passes a live item.
        unsafe { pv_tick_kick(raw) };
    }

    /// Runs the call as soon as possible instead of at the next period
    /// (callable from any context, atomic included).
    pub fn kick(&self) {
        // SAFETY: `self.0` is a live item (stopped only in drop).
        unsafe { pv_tick_kick(self.0.as_ptr()) };
    }
}

impl Drop for Tick {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from `pv_tick_start` and is stopped once.
        unsafe { pv_tick_stop(self.0.as_ptr()) };
    }
}
