//! The Windows StorPort miniport's block logic, decided in host-testable
//! `no_std` code: the driver only translates between StorPort and this
//! crate, and between this crate and the block core ([`pv_blk`]).
//!
//! # What is decided here
//!
//! - [`cdb`]: every SCSI command a disk class driver sends, decoded and
//!   validated field by field into a [`Decision`]: block-core requests to
//!   submit (a [`Plan`]), data produced in place ([`pages`]), GOOD, or
//!   CHECK CONDITION with fixed-format [`sense`] data.
//! - [`srb`]: SRB and SRB_EX function codes into actions; SRB status,
//!   SCSI status and autosense for every outcome, including block-core
//!   failures.
//! - [`srb_ex`]: a `STORAGE_REQUEST_BLOCK`'s bytes (header, BTL8 address,
//!   CDB16/CDB32/variable CDB, PnP and power blocks) checked and decoded
//!   into the same plain types, and a completion written back.
//! - [`engine`]: the in-flight table (each SRB completed exactly once),
//!   multi-part plans (UNMAP descriptors, FUA writes), and the bus reset
//!   policy (device reset before SRBs are completed).
//!
//! # What it refuses
//!
//! No OS types, no FFI, no allocation after [`Engine::new`]. The StorPort
//! driver that translates to and from this crate is `pv-blk-windows-driver`
//! (`driver/`); see README.md.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod cdb;
pub mod disk;
pub mod engine;
pub mod pages;
pub mod sense;
pub mod srb;
pub mod srb_ex;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use cdb::{decide, Command, Decision, Direction, Part, Plan, Reply, ScsiRequest};
pub use disk::{Disk, Identity, Serial, MAX_UNMAP_DESCRIPTORS};
pub use engine::{Engine, EngineStats, SrbCtx};
pub use sense::{Asc, Sense, SenseKey};
pub use srb::{decide_srb, Completion, SrbAction, SrbIn};
