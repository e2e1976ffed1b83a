//! The daemon's guests as whole machines: one QMP connection per guest
//! that everything in the daemon shares ([`mux`]), the lifecycle commands
//! that save, stop and restore every guest in parallel under one deadline
//! ([`lifecycle`], issue 14), what each did to each guest ([`report`]),
//! and the control socket `pvbackend guests ...` reaches the daemon on
//! ([`control`]). The guests are the `[[guests.guest]]` tables ([`config`]).
//!
//! What it refuses: acting on a guest whose name another entry already
//! took (reported, the others handled), restoring a guest whose QMP
//! socket already answers, restoring a state file twice (it is renamed
//! once restored), and any wait past the command's deadline.

pub mod config;
pub mod control;
pub mod lifecycle;
pub mod mux;
pub mod report;

pub use config::{GuestEntry, GuestsConfig};
pub use lifecycle::{Guests, Plan};
