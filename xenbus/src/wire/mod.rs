//! On-the-wire layouts shared with the other domain, checked at compile time
//! against the sizes and offsets of the C headers (and at test time against
//! the headers themselves, see `tests/c_peer.rs`).
//!
//! Every type here is plain data: any byte pattern is a valid value
//! (`FromBytes`), so a copy taken from shared memory can always be decoded and
//! must then be validated field by field by the code that uses it.

pub mod blkif;
pub mod grant;
pub mod netif;
pub mod sring;
