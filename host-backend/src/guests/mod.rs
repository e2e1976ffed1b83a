//! The daemon's guests: one QMP connection per guest ([`mux`]) that the
//! balloon manager and the lifecycle commands share.
pub mod mux;
