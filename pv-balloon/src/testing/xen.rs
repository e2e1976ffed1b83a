//! A fake Xen reservation platform: a set of frames the guest has given
//! back, honest by default, and told to do part of a call, fail, or lie.

use std::collections::BTreeSet;
use std::vec::Vec;

use xenbus::platform::PlatformError;

use crate::xen::Reservation;

/// What the next reservation call does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Behaviour {
    /// Do the whole call.
    #[default]
    Honest,
    /// Do only the first `n` frames (then behave honestly again).
    Partial(usize),
    /// Fail with this error (once).
    Fail(PlatformError),
    /// Claim `n` frames done whatever was asked (once).
    Claim(usize),
}

/// The fake platform.
#[derive(Debug, Default)]
pub struct FakeReservation {
    /// Frames Xen holds (given back by the guest).
    pub released: BTreeSet<u64>,
    /// Every call: (true for decrease, the frames asked).
    pub calls: Vec<(bool, Vec<u64>)>,
    /// Behaviour of the next decrease call.
    pub next_decrease: Behaviour,
    /// Behaviour of the next increase call.
    pub next_increase: Behaviour,
    /// Frames the guest gave that Xen already held (a double inflate).
    pub double_release: u64,
    /// Frames the guest asked back that Xen did not hold.
    pub bogus_populate: u64,
}

impl FakeReservation {
    fn run(&mut self, decrease: bool, frames: &[u64]) -> Result<usize, PlatformError> {
        self.calls.push((decrease, frames.to_vec()));
        let b = if decrease {
            core::mem::take(&mut self.next_decrease)
        } else {
            core::mem::take(&mut self.next_increase)
        };
        let n = match b {
            Behaviour::Honest => frames.len(),
            Behaviour::Partial(n) => n.min(frames.len()),
            Behaviour::Fail(e) => return Err(e),
            Behaviour::Claim(n) => return Ok(n),
        };
        for f in &frames[..n] {
            if decrease {
                if !self.released.insert(*f) {
                    self.double_release += 1;
                }
            } else if !self.released.remove(f) {
                self.bogus_populate += 1;
            }
        }
        Ok(n)
    }
}

impl Reservation for FakeReservation {
    fn decrease_reservation(&mut self, frames: &[u64]) -> Result<usize, PlatformError> {
        self.run(true, frames)
    }

    fn increase_reservation(&mut self, frames: &[u64]) -> Result<usize, PlatformError> {
        self.run(false, frames)
    }
}
