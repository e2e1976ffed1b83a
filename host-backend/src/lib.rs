//! The pvdrivers host backend daemon: vhost-user block and net backends for
//! QEMU, Xen backends over grant-mapped rings, the balloon policy over QMP,
//! metrics and graceful shutdown.
//!
//! Only the crate exists so far; the backends arrive with their issues.
