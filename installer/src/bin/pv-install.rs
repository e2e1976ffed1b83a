//! `pv-install`: which devices of this guest the pvdrivers runtimes
//! serve; see the `installer` crate docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use installer::units::Systemctl;
use installer::{Error, Installer, Kind};

/// Command line of `pv-install`.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "Choose which virtio devices of this Linux guest the pvdrivers runtimes serve",
    long_about = "Choose which virtio devices of this Linux guest the pvdrivers runtimes \
(pvblkd, pvnetd, pvballoond) take from the kernel. The choice is kept in \
/etc/pvdrivers/guest.toml; each device is served by a unit instanced by its PCI \
address (pvblkd@0000:00:04.0.service) and started again at every boot by \
pvdrivers-guest.service. Every change is applied fully or rolled back; --dry-run \
prints it and changes nothing."
)]
struct Cli {
    /// The configuration file.
    #[arg(long, default_value = "/etc/pvdrivers/guest.toml")]
    config: PathBuf,
    /// Where the runtimes are installed.
    #[arg(long, default_value = "/usr/sbin", hide = true)]
    sbin: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every virtio and Xen PV device, its driver, what the config says, its unit's state.
    Status,
    /// Serve DEVICE with the pvdrivers runtime of KIND (now and at every boot).
    Enable {
        /// blk, net or balloon.
        kind: Kind,
        /// A PCI address (0000:00:04.0), serial:TEXT (blk), mac:ADDR (net) or all.
        device: String,
        /// Print the steps; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop serving DEVICE and hand it back to the kernel's driver.
    Disable {
        /// blk, net or balloon.
        kind: Kind,
        /// As given to enable.
        device: String,
        /// Print the steps; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Start the runtime of every device the config names (run at boot).
    Sync {
        /// Print the steps; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop every runtime and hand every device back (package removal).
    ReleaseAll {
        /// Print the steps; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn print_plan(steps: &[installer::plan::Step]) {
    if steps.is_empty() {
        println!("nothing to do");
    }
    for (i, s) in steps.iter().enumerate() {
        println!("{}. {s}", i + 1);
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let mut inst = Installer {
        sysfs: installer::sysfs::Sysfs::new("/"),
        config_path: cli.config,
        sbin: cli.sbin,
        units: Systemctl,
        claim_timeout: installer::CLAIM_TIMEOUT,
    };
    let need_root = |what: &str, dry: bool| {
        if dry || installer::is_root() {
            Ok(())
        } else {
            Err(Error::NotRoot(what.to_owned()))
        }
    };
    match cli.command {
        Cmd::Status => print!("{}", inst.status()?),
        Cmd::Enable {
            kind,
            device,
            dry_run,
        } => {
            need_root(&format!("enable {} {device}", kind.name()), dry_run)?;
            let steps = inst.plan_enable(kind, &device)?;
            if dry_run {
                print_plan(&steps);
            } else {
                inst.apply(&steps)?;
                println!(
                    "{} {device}: enabled (pvdrivers serves it now and at boot)",
                    kind.name()
                );
            }
        }
        Cmd::Disable {
            kind,
            device,
            dry_run,
        } => {
            need_root(&format!("disable {} {device}", kind.name()), dry_run)?;
            let steps = inst.plan_disable(kind, &device)?;
            if dry_run {
                print_plan(&steps);
            } else {
                inst.apply(&steps)?;
                println!(
                    "{} {device}: disabled (back with the kernel's driver)",
                    kind.name()
                );
            }
        }
        Cmd::Sync { dry_run } => {
            need_root("sync", dry_run)?;
            if dry_run {
                let plan = inst.plan_sync()?;
                for (what, steps) in plan.per_device {
                    println!("{what}:");
                    print_plan(&steps);
                }
                for p in plan.problems {
                    println!("problem: {p}");
                }
            } else {
                let report = inst.sync()?;
                for d in &report.done {
                    println!("{d}");
                }
                for f in &report.failed {
                    eprintln!("pv-install: {f}");
                }
                if !report.failed.is_empty() {
                    return Err(Error::Systemctl {
                        args: "sync".into(),
                        detail: format!("{} device(s) not served", report.failed.len()),
                    });
                }
            }
        }
        Cmd::ReleaseAll { dry_run } => {
            need_root("release-all", dry_run)?;
            let steps = inst.plan_release_all()?;
            if dry_run {
                print_plan(&steps);
            } else {
                inst.apply(&steps)?;
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pv-install: {e}");
            ExitCode::FAILURE
        }
    }
}
