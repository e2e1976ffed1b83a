//! Fake netback (coming).
