//! `pvbackend xen ...`: the toolstack's vbd commands and the blkback
//! daemon (kept here so `main.rs` only hooks the subcommand in).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use xenbus::platform::DomId;
use xenbus::xenstore::unix::{default_socket_path, UnixClient};

use super::server::{self, BlkbackOptions};
use super::toolstack::{self, VbdSpec};
use super::XenError;

/// Xen subcommands.
#[derive(Subcommand, Debug)]
pub enum XenCommand {
    /// Create a vbd's frontend and backend xenstore directories and
    /// permissions as `xl block-attach` does (the guest's home too, if
    /// missing).
    CreateVbd {
        #[command(flatten)]
        vbd: VbdArgs,
        /// The disk image.
        #[arg(long, value_name = "PATH")]
        target: PathBuf,
        /// Attach read-only.
        #[arg(long)]
        read_only: bool,
    },
    /// Detach a vbd as `xl block-detach` does: ask the backend to close,
    /// wait for Closed (up to --timeout), remove both directories. Exit
    /// status 1 if the backend did not close in time.
    DestroyVbd {
        #[command(flatten)]
        vbd: VbdArgs,
        /// Seconds to wait for the backend to close.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Run the block backend: serve every vbd under
    /// /local/domain/DOMID/backend/vbd until SIGTERM/SIGINT.
    Blkback {
        /// The loopback fabric's broker socket.
        #[arg(long, value_name = "PATH")]
        broker: PathBuf,
        /// Our domain id.
        #[arg(long, default_value_t = 0)]
        domid: DomId,
        /// The xenstored socket (default as for create-vbd).
        #[arg(long, value_name = "PATH")]
        xenstore: Option<PathBuf>,
    },
}

/// Which vbd, and where xenstore is.
#[derive(clap::Args, Debug)]
pub struct VbdArgs {
    /// The guest's domain id.
    #[arg(long)]
    domid: DomId,
    /// The device id (`virtual-device`; 51712 = xvda).
    #[arg(long, default_value_t = 51712)]
    devid: u32,
    /// The backend's domain id.
    #[arg(long, default_value_t = 0)]
    backend_domid: DomId,
    /// The xenstored socket (default: $XENSTORED_PATH, then
    /// $XENSTORED_RUNDIR/socket, then /var/run/xenstored/socket).
    #[arg(long, value_name = "PATH")]
    xenstore: Option<PathBuf>,
}

fn client(path: Option<PathBuf>) -> Result<UnixClient, XenError> {
    let mut c = UnixClient::connect_unix(path.unwrap_or_else(default_socket_path))?;
    c.set_timeout(Some(Duration::from_secs(30)));
    Ok(c)
}

fn run_inner(cmd: XenCommand) -> Result<bool, XenError> {
    match cmd {
        XenCommand::CreateVbd {
            vbd:
                VbdArgs {
                    domid,
                    devid,
                    backend_domid,
                    xenstore,
                },
            target,
            read_only,
        } => {
            let mut c = client(xenstore)?;
            if c.read_opt(&format!("/local/domain/{domid}"))?.is_none() {
                toolstack::create_domain_home(&mut c, domid)?;
            }
            toolstack::create_vbd(
                &mut c,
                &VbdSpec {
                    domid,
                    devid,
                    backend_domid,
                    target: &target,
                    writable: !read_only,
                },
            )?;
            Ok(true)
        }
        XenCommand::DestroyVbd {
            vbd:
                VbdArgs {
                    domid,
                    devid,
                    backend_domid,
                    xenstore,
                },
            timeout,
        } => {
            let mut c = client(xenstore)?;
            toolstack::destroy_vbd(
                &mut c,
                domid,
                devid,
                backend_domid,
                Duration::from_secs(timeout),
            )
        }
        XenCommand::Blkback {
            broker,
            domid,
            xenstore,
        } => {
            let _ =
                env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                    .try_init();
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            server::run(
                &BlkbackOptions {
                    xenstore: xenstore.unwrap_or_else(default_socket_path),
                    broker,
                    domid,
                },
                &stop,
            )?;
            Ok(true)
        }
    }
}

/// Run a `pvbackend xen` command.
pub fn run(cmd: XenCommand) -> ExitCode {
    match run_inner(cmd) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("pvbackend xen: the backend did not close in time");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pvbackend xen: {e}");
            ExitCode::FAILURE
        }
    }
}
