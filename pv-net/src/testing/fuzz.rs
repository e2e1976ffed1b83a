//! Fuzz drivers (coming).
