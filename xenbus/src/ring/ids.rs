//! Request ids for a frontend: a bounded allocator that also judges the ids
//! the backend echoes back.

use alloc::vec::Vec;

use super::RingError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdState {
    /// Never handed out since the tracker was made.
    NeverIssued,
    InFlight,
    /// Answered and back on the free list.
    Answered,
}

/// Hands out ids `0..capacity` (capacity = ring size, so a full ring has
/// every id in flight) and checks each response id: it must be in flight.
///
/// A response for an id that was never issued (or is out of range) is
/// [`RingError::UnknownResponseId`]; one for an id already answered is
/// [`RingError::DuplicateResponseId`]. Either stops the tracker: the error is
/// latched and returned by every later call, as the ring does.
#[derive(Debug)]
pub struct IdTracker {
    state: Vec<IdState>,
    /// Free ids, used as a stack.
    free: Vec<u32>,
    fault: Option<RingError>,
}

impl IdTracker {
    /// A tracker for ids `0..capacity`.
    pub fn new(capacity: u32) -> Self {
        let cap = capacity as usize;
        let mut state = Vec::with_capacity(cap);
        state.resize(cap, IdState::NeverIssued);
        // Reversed so that ids come out 0, 1, 2, ...
        let free = (0..capacity).rev().collect();
        Self {
            state,
            free,
            fault: None,
        }
    }

    /// Number of ids not in flight.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Number of ids in flight.
    pub fn in_flight(&self) -> usize {
        self.state.len() - self.free.len()
    }

    /// The latched fault, if any.
    pub fn fault(&self) -> Option<RingError> {
        self.fault
    }

    /// Take a free id.
    pub fn alloc(&mut self) -> Result<u32, RingError> {
        if let Some(e) = self.fault {
            return Err(e);
        }
        let id = self.free.pop().ok_or(RingError::IdsExhausted)?;
        if let Some(s) = self.state.get_mut(id as usize) {
            *s = IdState::InFlight;
        }
        Ok(id)
    }

    /// Give back an id that was allocated but never sent.
    pub fn cancel(&mut self, id: u32) -> Result<(), RingError> {
        self.complete(u64::from(id)).map(|_| ())
    }

    /// Judge a response's id (as the backend wrote it, any width) and free
    /// it. Returns the id as allocated.
    pub fn complete(&mut self, id: u64) -> Result<u32, RingError> {
        if let Some(e) = self.fault {
            return Err(e);
        }
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| self.state.get_mut(i).map(|s| (i, s)));
        let Some((i, state)) = slot else {
            return Err(*self.fault.insert(RingError::UnknownResponseId { id }));
        };
        match *state {
            IdState::InFlight => {
                *state = IdState::Answered;
                // `i < capacity <= u32::MAX`, so this cannot truncate.
                let id32 = i as u32;
                self.free.push(id32);
                Ok(id32)
            }
            IdState::NeverIssued => Err(*self.fault.insert(RingError::UnknownResponseId { id })),
            IdState::Answered => Err(*self.fault.insert(RingError::DuplicateResponseId { id })),
        }
    }
}
