//! `pvbackend`: the pvdrivers host backend daemon. A thin wrapper over the
//! `host_backend` library: command line, logging, signals.

// The doc comments on the CLI types are clap's `--help` text, written for a
// terminal: their `[,name=N]` option syntax is not rustdoc link syntax.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use host_backend::blk::parse_disk_spec;
use host_backend::config::Config;
use host_backend::net::parse_net_port_spec;

/// pvdrivers host backend: serves guest disks to QEMU over vhost-user-blk
/// and joins guest NICs (vhost-user-net) through an L2 learning switch.
///
/// Each disk is a raw image file or block device, exported on its own
/// vhost-user socket. Point QEMU at it with
///   -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
///   -chardev socket,id=d0,path=SOCKET,reconnect=1
///   -device vhost-user-blk-pci,chardev=d0,num-queues=N
/// SIGTERM or SIGINT stops it: connections are closed after the requests in
/// hand, disks are flushed, sockets removed, exit status 0.
///
/// With --balloon-guest/--balloon-watch (or a [balloon] table) it also runs
/// the memory-balance manager over the guests' QMP sockets;
/// `pvbackend guests` shows every guest's memory, `pvbackend top` the load
/// every guest puts on the host (disks, NICs, memory).
#[derive(Parser, Debug)]
#[command(
    name = "pvbackend",
    version,
    verbatim_doc_comment,
    after_long_help = LONG_HELP_TAIL
)]
struct Cli {
    /// TOML configuration file ([daemon] and [[disk]] tables; see the
    /// host-backend crate docs for every key).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// A disk to serve, in addition to the config file's:
    /// path=IMG,socket=SOCK[,readonly][,serial=S][,name=N][,guest=G][,queues=N][,queue-size=N][,poll-us=N]
    /// [,io=sync|pool|hybrid][,io-threads=N][,stop-timeout-ms=N].
    /// queues defaults to 4 (must be at least QEMU's num-queues, whose
    /// default is the guest's vCPU count); queue-size to 256; poll-us
    /// (busy-poll an emptied queue before sleeping, 0 never) to 50; io
    /// (where requests execute: sync in the queue worker, pool on the
    /// disk's I/O threads, hybrid in the worker when the transfer cannot
    /// block and on the pool otherwise) to hybrid; io-threads to 4;
    /// stop-timeout-ms (how long QEMU's GET_VRING_BASE waits for a request
    /// stuck in the disk before the queue is reset and the request left to
    /// the next owner) to 30000. guest names the guest the disk belongs to
    /// (a `guest` label on its metrics).
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,

    /// A switch port (a guest NIC on a vhost-user-net socket), in addition
    /// to the config file's: socket=SOCK[,name=N][,guest=G][,mac=M][,mtu=N][,rate-mbps=N][,poll-us=N].
    /// All ports join one L2 learning switch; mtu defaults to 1500, the
    /// rate limit (ingress, Mbit/s) to none, poll-us (watch the guest's TX
    /// ring that long after a burst, within a 10% CPU budget; at most 1000)
    /// to 0, never.
    #[arg(long = "net-port", value_name = "SPEC")]
    net_ports: Vec<String>,

    /// Log level: error, warn, info, debug or trace (overrides the config
    /// file; RUST_LOG overrides both).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,

    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9977; port 0 picks
    /// a free port, logged at start). Overrides the config file's
    /// metrics_listen. Every series is documented in host-backend's
    /// metrics module.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,

    /// What a syscall outside a thread's seccomp allow-list does: trap
    /// (the default: the violation is logged with the syscall number and
    /// thread, the daemon exits with status 159 and its supervisor
    /// restarts it), log (the kernel logs it, the syscall runs) or off.
    /// Overrides the config file's [daemon] seccomp.
    #[arg(long, value_name = "MODE")]
    seccomp: Option<host_backend::sandbox::Mode>,

    /// Seconds to wait for in-flight requests when stopping (default 10,
    /// or the config file's shutdown_timeout_secs).
    #[arg(long, value_name = "SECS")]
    shutdown_timeout: Option<u64>,

    /// A guest for the balloon manager: name=N,qmp=SOCK[,min=MIB][,max=MIB]
    /// (QEMU: -qmp unix:SOCK,server=on,wait=off). Enables the manager.
    #[arg(long = "balloon-guest", value_name = "SPEC")]
    balloon_guests: Vec<String>,

    /// Manage every *.qmp socket in DIR (guest name = file stem), picking
    /// up new ones and dropping vanished ones. Enables the manager.
    #[arg(long, value_name = "DIR")]
    balloon_watch: Option<PathBuf>,

    /// Balloon manager: log decisions, do not apply them.
    #[arg(long)]
    balloon_dry_run: bool,

    /// Balloon manager: seconds between policy rounds (default 5).
    #[arg(long, value_name = "SECS")]
    balloon_interval: Option<u64>,

    /// Balloon manager: read the host's available memory (a number of MiB)
    /// from FILE instead of /proc/meminfo (to simulate a shortage).
    #[arg(long, value_name = "FILE")]
    host_available_file: Option<PathBuf>,

    /// The control socket `pvbackend guests shutdown|restore|list` talk
    /// to (default $RUNTIME_DIRECTORY/control.sock, else
    /// /run/pvdrivers/control.sock; opened when [[guests.guest]] exist or
    /// a path is given here or as [guests] control_socket).
    #[arg(long, value_name = "PATH", global = true)]
    control: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

/// The man-page sections of `--help` (after the options).
const LONG_HELP_TAIL: &str = "\
FILES
    /etc/pvdrivers/pvbackend.toml
        The packaged configuration (a conffile): [daemon], [[disk]],
        [[net_port]], [switch] and [balloon] tables, every key documented
        in the file itself. `pvbackend check-config FILE` validates it.
    /run/pvdrivers/
        Sockets of the packaged service (systemd RuntimeDirectory=).

SOCKET ACCESS
    Each [[disk]] and [[net_port]] (and --disk/--net-port spec) may set
    socket_owner, socket_group and socket_mode (socket-owner=, ... in a
    spec), applied before the daemon reports ready. For libvirt's
    unprivileged QEMU: socket_group = \"kvm\" (or \"libvirt-qemu\") and
    socket_mode = \"0660\".

SYSTEMD
    Run as pvbackend.service (Type=notify): READY=1 is sent once every
    configured socket listens; with WatchdogSec= a thread sends WATCHDOG=1
    while no device thread (a disk's server thread, each queue worker and
    I/O thread, each switch port's worker) has been busy longer than
    [daemon] stall_timeout_secs (default 30). A wedged thread stops the
    pings and systemd restarts the daemon; disks complete in queue order,
    so QEMU (reconnect=1) redoes exactly the unfinished requests.

SIGNALS
    SIGTERM, SIGINT   close connections after the requests in hand, flush
                      every disk, remove the sockets, exit 0, within
                      shutdown_timeout_secs.
    SIGHUP            reload (systemctl reload pvbackend): re-read the
                      config file; disks whose socket is new are added,
                      disks no longer listed are removed unless a frontend
                      is connected (refused, logged); running disks and
                      other settings are untouched (changes logged as
                      needing a restart).

EXIT STATUS
    0    stopped on request, or check-config found the file valid
    1    a device could not start (image, socket), or check-config failed
    2    bad command line or configuration
    159  a thread made a syscall outside its seccomp allow-list (logged
         with the syscall number and thread; --seccomp=trap)

SANDBOX
    Each thread runs under its class's seccomp allow-list (--seccomp,
    [daemon] seccomp). With [daemon] user (and group), the daemon drops to
    that user once every image is open and every socket bound, with no
    capabilities left; [daemon] landlock = true also restricts file access
    to the images, socket directories, config file, /proc and /etc.

ENVIRONMENT
    RUST_LOG            log filter (overrides --log-level)
    NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID
                        set by systemd (sd_notify(3))
    PVBACKEND_FAULT_*   test-only fault injection (panic, delay, wedge,
                        forbidden syscall, Landlock probe);
                        never set these in production: the daemon logs a
                        warning when one is armed

METRICS
    --metrics ADDR (or metrics_listen) serves GET /metrics in the
    OpenMetrics text format; every series is documented in the host-backend
    crate (blk, net and balloon metrics modules), and `pvbackend guests`
    prints the balloon series as a table.
";

#[derive(Subcommand, Debug)]
enum Command {
    /// Xen: the toolstack's vbd commands and the blkback daemon
    /// (on the loopback fabric; see docs/XEN.md).
    Xen {
        #[command(subcommand)]
        action: host_backend::xen::cli::XenCommand,
    },
    /// Validate a configuration file without serving anything: parse it,
    /// check every device table (and that each disk image exists), name
    /// the line at fault. Exit status 0 when valid, 1 otherwise. The
    /// package's postinst runs it on /etc/pvdrivers/pvbackend.toml.
    CheckConfig {
        /// The file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a table of every balloon-managed guest's memory (target,
    /// actual, free, available, major faults, stats age), refreshed every
    /// --every seconds, read from a running daemon's metrics endpoint.
    Guests {
        /// The daemon's metrics address (its --metrics / metrics_listen).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9977")]
        metrics: String,
        /// Seconds between refreshes.
        #[arg(long, value_name = "SECS", default_value_t = 2)]
        every: u64,
        /// Print one snapshot and exit.
        #[arg(long)]
        once: bool,
        #[command(subcommand)]
        action: Option<GuestsAction>,
    },
    /// The load view: which guest is loading the host, and on which disk
    /// or NIC. Per guest, over each interval: disk read/write IOPS and
    /// MB/s, p50/p99 latency, in-flight, errors; NIC rx/tx pps and Mbit/s,
    /// drops; memory target/actual/available and balloon movement. Live
    /// full-screen view (keys shown: sort by any column, expand a guest to
    /// its disks, queues and ports, q quits), or --once / --json. Reads a
    /// running daemon's metrics endpoint. Devices are grouped by their
    /// guest= (see --disk, --net-port).
    Top {
        /// The daemon's metrics address (its --metrics / metrics_listen).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9977")]
        metrics: String,
        /// Seconds between scrapes (the rates' interval), at least 1.
        #[arg(long, value_name = "SECS", default_value_t = 2)]
        every: u64,
        /// Print one table after one interval and exit.
        #[arg(long)]
        once: bool,
        /// Print one JSON object per interval, one per line (with --once:
        /// one, then exit).
        #[arg(long)]
        json: bool,
        /// Sort by: iops (read+write, the default), guest, rd-iops,
        /// wr-iops, rd-mbps, wr-mbps, p50, p99, inflight, errors, rx-pps,
        /// tx-pps, rx-mbit, tx-mbit, drops, mem-target, mem-actual,
        /// mem-avail, balloon.
        #[arg(long, value_name = "COLUMN", default_value = "iops")]
        sort: String,
        /// Seconds a scrape may take (connect, send, read) before it fails.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
    },
}

fn top(metrics: &str, every: u64, once: bool, json: bool, sort: &str, timeout: u64) -> ExitCode {
    use host_backend::top::{table::SortBy, Options};
    let Some(sort) = SortBy::from_name(sort) else {
        eprintln!(
            "pvbackend top: --sort {sort}: not a column (one of {})",
            SortBy::names()
        );
        return ExitCode::from(2);
    };
    let opts = Options {
        metrics: metrics.to_owned(),
        every: std::time::Duration::from_secs(every.max(1)),
        once,
        json,
        sort,
        timeout: std::time::Duration::from_secs(timeout.max(1)),
    };
    match host_backend::top::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvbackend top: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Lifecycle commands, run by the daemon on its control socket.
#[derive(Subcommand, Debug)]
enum GuestsAction {
    /// Save every guest, in parallel, under one overall deadline; a guest
    /// that cannot be saved is powered down (ACPI), then quit, then killed
    /// at the deadline. Prints one report per guest.
    Shutdown {
        /// Every guest is gone after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 90.0)]
        deadline: f64,
        /// Saving stops after this many seconds (default 45% of the deadline).
        #[arg(long, value_name = "SECS")]
        save_deadline: Option<f64>,
        /// One JSON report per line instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Start every saved guest again from its state, in parallel, under
    /// one deadline (each guest's restore_command).
    Restore {
        #[arg(long, value_name = "SECS", default_value_t = 120.0)]
        deadline: f64,
        #[arg(long)]
        json: bool,
    },
    /// Each configured guest's QEMU state, pid and saved state.
    List {
        /// One JSON object per line instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v.max(0.0)).unwrap_or(Duration::MAX)
}

/// Runs a lifecycle command against the daemon; the exit status says
/// whether every guest ended as asked.
fn guests_action(control: Option<PathBuf>, action: &GuestsAction) -> ExitCode {
    use host_backend::guests::{config::default_control_socket, control, report};
    let path = control.unwrap_or_else(default_control_socket);
    let (req, wait, json, good): (_, _, _, &[&str]) = match action {
        GuestsAction::Shutdown {
            deadline,
            save_deadline,
            json,
        } => (
            serde_json::json!({
                "cmd": "shutdown",
                "deadline_ms": secs(*deadline).as_millis() as u64,
                "save_ms": save_deadline.map(|s| secs(s).as_millis() as u64),
            }),
            secs(*deadline),
            *json,
            &[
                "saved",
                "powered_off",
                "quit",
                "terminated",
                "killed",
                "not_running",
            ],
        ),
        GuestsAction::Restore { deadline, json } => (
            serde_json::json!({"cmd": "restore", "deadline_ms": secs(*deadline).as_millis() as u64}),
            secs(*deadline),
            *json,
            &["restored", "no_state"],
        ),
        GuestsAction::List { json } => (
            serde_json::json!({"cmd": "list"}),
            Duration::from_secs(30),
            *json,
            &[],
        ),
    };
    // The daemon answers within the deadline; allow it the final kills.
    let reply = match control::request(&path, &req, wait + Duration::from_secs(30)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pvbackend guests: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(rows) = reply["guests"].as_array() {
        if !json {
            println!("{:<16} {:<24} {:>8} SAVED STATE", "GUEST", "STATUS", "PID");
        }
        for r in rows {
            if json {
                println!("{r}");
            } else {
                let text = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
                println!(
                    "{:<16} {:<24} {:>8} {}",
                    text("guest"),
                    text("status"),
                    r["pid"]
                        .as_u64()
                        .map_or_else(|| "-".into(), |p| p.to_string()),
                    text("saved_state")
                );
            }
        }
        return ExitCode::SUCCESS;
    }
    let reports: Vec<report::Report> = match serde_json::from_value(reply["reports"].clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pvbackend guests: bad reply from the daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        for r in &reports {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        print!("{}", report::table(&reports));
    }
    if reports.iter().all(|r| good.contains(&r.outcome.as_str())) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The config file named by --config, if any (devices on the command line
/// are added by the caller).
fn load_config(cli: &Cli) -> Result<Config, String> {
    match &cli.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Xen { action }) = cli.command {
        return host_backend::xen::cli::run(action);
    }
    if let Some(Command::Top {
        metrics,
        every,
        once,
        json,
        sort,
        timeout,
    }) = &cli.command
    {
        return top(metrics, *every, *once, *json, sort, *timeout);
    }
    if let Some(Command::Guests {
        action: Some(action),
        ..
    }) = &cli.command
    {
        return guests_action(cli.control.clone(), action);
    }
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return match host_backend::check::check_file(file) {
            Ok(summary) => {
                println!("{}: valid: {summary}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pvbackend check-config: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Guests {
        metrics,
        every,
        once,
        action: None,
    }) = &cli.command
    {
        return match host_backend::balloon::cli::run(
            metrics,
            std::time::Duration::from_secs((*every).max(1)),
            *once,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pvbackend guests: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pvbackend: {e}");
            return ExitCode::from(2);
        }
    };
    for spec in &cli.disks {
        match parse_disk_spec(spec) {
            Ok(d) => config.disks.push(d),
            Err(e) => {
                eprintln!("pvbackend: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for spec in &cli.balloon_guests {
        match host_backend::balloon::config::parse_guest_spec(spec) {
            Ok(g) => {
                config.balloon.guests.push(g);
                config.balloon.enabled = true;
            }
            Err(e) => {
                eprintln!("pvbackend: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for spec in &cli.net_ports {
        match parse_net_port_spec(spec) {
            Ok(p) => config.net_ports.push(p),
            Err(e) => {
                eprintln!("pvbackend: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(d) = cli.balloon_watch {
        config.balloon.watch_dir = Some(d);
        config.balloon.enabled = true;
    }
    if cli.balloon_dry_run {
        config.balloon.dry_run = true;
    }
    if let Some(s) = cli.balloon_interval {
        config.balloon.interval_secs = s;
    }
    if let Some(f) = cli.host_available_file {
        config.balloon.host_available_file = Some(f);
    }
    if let Some(a) = cli.metrics {
        config.daemon.metrics_listen = Some(a);
    }
    if let Some(c) = cli.control {
        config.guests.control_socket = Some(c);
    }
    if let Some(m) = cli.seccomp {
        config.daemon.seccomp = m;
    }
    if let Some(t) = cli.shutdown_timeout {
        config.daemon.shutdown_timeout_secs = t;
    }
    let level = cli
        .log_level
        .or_else(|| config.daemon.log_level.clone())
        .unwrap_or_else(|| "info".into());
    env_logger::Builder::new()
        .parse_filters(&level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("pvbackend: cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    // SIGHUP (the unit's ExecReload=): re-read the config file, keep the
    // command line's devices.
    let reload = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone()) {
        eprintln!("pvbackend: cannot install signal handler: {e}");
        return ExitCode::FAILURE;
    }
    let cli_disks = config.disks[config.disks.len().saturating_sub(cli.disks.len())..].to_vec();
    let reload_from = cli.config.clone();
    let load = move || -> Result<Config, String> {
        let mut c = match &reload_from {
            Some(path) => Config::load(path).map_err(|e| e.to_string())?,
            None => return Err("started without --config: nothing to re-read".into()),
        };
        c.disks.extend(cli_disks.iter().cloned());
        Ok(c)
    };
    match host_backend::daemon::run_with_reload(&config, stop, &reload, &load) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvbackend: {e}");
            ExitCode::FAILURE
        }
    }
}
