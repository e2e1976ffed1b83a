//! Driver packages for pvdrivers guests: the Linux guest package, the Windows
//! driver package (INF layout) and the install/uninstall tools.
//!
//! Only the crate exists so far; packaging arrives with its issue.
