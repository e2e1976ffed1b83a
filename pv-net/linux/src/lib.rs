//! The pv-net Linux guest runtime (`pvnetd`) and request/response tool
//! (`pvrr`).
//!
//! `pvnetd` claims a virtio-net PCI device from the kernel (through
//! `pv-linux`, as `pvblkd` does for block), drives it from userspace with
//! the pv-net core (`pv_net::virtio`), and gives the guest kernel a TAP
//! interface with the device's MAC, MTU and link state, so the guest's own
//! IP stack, `ping` and TCP run over it.
//!
//! # Layout
//!
//! The same file roles as the other runtimes (`pv-blk/linux`,
//! `pv-balloon/linux`): [`config`] (the command line), [`device`] (claim
//! the PCI function, start the core, hand it back), [`server`] (the loop
//! between the device and the TAP), [`error`]; and this device's own
//! kernel interface, [`tap`]. The binaries in `src/bin/` are thin: parse,
//! log, run.
//!
//! # How it runs
//!
//! One thread: frames the device received are written to the TAP (one
//! `writev` each, header and frame); frames the kernel wrote to the TAP are
//! copied into the core's transmit slots, with one kick decision per batch
//! (`flush_tx`, notification suppression by the device's event index).
//!
//! # Checksum offload
//!
//! Mapped, not computed, where both ends can: the TAP carries a
//! `virtio_net_hdr` (`IFF_VNET_HDR`, 12 bytes). When the device offers
//! `VIRTIO_NET_F_CSUM` the TAP offers `TUN_F_CSUM`, so the kernel sends
//! `CHECKSUM_PARTIAL` frames as `NEEDS_CSUM` + start/offset and the core
//! passes that to the device. When the device lacks it (our switch and
//! QEMU's stream/socket netdevs offer no checksum offload) the kernel
//! checksums each frame itself by default (`--tap-csum auto`): it folds the
//! sum into the copy from the sending process instead of us making a
//! separate pass over the frame (the benchmark runs so far, on a loaded
//! host, could not separate the effect from the load: docs/BENCHMARKS.md,
//! "pvnetd INTx wake-ups"). `--tap-csum on` offers `TUN_F_CSUM` anyway and
//! completes the checksum in software; `off` (or `--no-csum-offload`)
//! never offers it. Received `DATA_VALID` and `NEEDS_CSUM` (with
//! `GUEST_CSUM`) are handed to the kernel as they came.
//!
//! # Polling and wake-ups
//!
//! After the last frame either way the loop spins for `--spin-us`
//! (`pv_linux::poll::AdaptivePoller`; yielding the CPU, so the guest's own
//! tasks woken by our last frame run first on a one-vCPU guest). With
//! INTx the spin reads the TAP and yields only every `--spin-tap-every`-th
//! turn and looks at the device's rings (plain memory) every turn: system
//! calls are what a spinning guest spends its vCPU on under TCG. Then it sleeps in `ppoll` on the TAP (a frame from the kernel
//! ends the sleep at once) and, by default (`--irq intx`), on the device's
//! INTx interrupt: the function is bound to `uio_pci_generic` while we hold
//! it, and just before sleeping the receive queue (and the transmit queue
//! only while its slots ran out) is asked for an interrupt at the next
//! completion, then re-checked, so a frame that arrived meanwhile is served
//! instead of slept on (no lost wake-up: the device either sees the armed
//! event index, or we see its completion in the re-check). On waking the
//! interrupt is acknowledged (the ISR read lowers the line) and disarmed
//! again: while spinning the device never interrupts. The sleep still has
//! a timeout, doubling from `--min-sleep-us` to `--max-sleep-us`, because
//! under TCG an INTx wake-up can arrive late. While transmit slots are all
//! in flight the TAP is left out of the `ppoll` (it would stay readable)
//! and a transmit completion wakes us instead.
//!
//! How the sleeps ended is counted (`Wakeups`, in the exit log and, with
//! `--stats-every-s`, periodically): a sleep that timed out with a
//! completion already on the armed ring would be a lost or late
//! interrupt. Measured (docs/BENCHMARKS.md, "pvnetd wake-ups: none
//! lost"): none lost; under TCG on a loaded host an INTx can come up to a
//! few milliseconds late, which the timeout caps.
//!
//! With `--irq off` (or without `uio_pci_generic`) there are no interrupts
//! and the old timed sleeps serve: warm for `--warm-ms` after the last
//! frame (sleeps doubling from `--min-sleep-us` to `--warm-sleep-us`), then
//! cold (sleeps of `--max-sleep-us`), so a frame from the device waits at
//! most the current sleep.
//!
//! CPU budget: `--spin-us` per burst of traffic, then one wake-up per
//! frame (interrupt) or timeout; idle, one per `--max-sleep-us`. Timer
//! slack is set to 1 µs so the short sleeps are what they say.
//!
//! # Failure handling
//!
//! A frame the device wrote out of spec is dropped and counted by the core.
//! A device the core stops trusting is reset (frames in flight are lost,
//! as on any NIC reset) and service goes on; a reset that fails ends the
//! daemon (exit 1) after giving the device back.
//!
//! # Stopping
//!
//! SIGTERM/SIGINT: carrier off and the TAP down, the device reset (the
//! core's drop), the function handed back to the kernel (`drivers_probe`:
//! `virtio-pci` then `virtio_net`, and an `ethN` reappears), exit 0.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod device;
pub mod error;
pub mod server;
pub mod tap;

pub use config::Cli;
pub use device::run;
pub use error::{Error, Result};
