//! `pvbench-blk`: our vhost-user-blk backend (`pvbackend`) against QEMU's
//! `qemu-storage-daemon`, same run, same image file on tmpfs, both driven
//! by the native vhost-user driver (`pvtest::vhost_user`): 4 KiB random
//! reads and writes at several queue depths and queue counts. Reports IOPS,
//! p50/p99 latency (submission to completion reaped, as the driver sees it)
//! and the backend process's CPU time per request (utime + stime from
//! `/proc/<pid>/stat`, all threads), with the ratio ours/qsd.
//!
//! ```text
//! cargo run --release -p pvdrivers-tests --bin pvbench-blk -- --seconds 5
//! cargo run --release -p pvdrivers-tests --bin pvbench-blk -- --io sync,hybrid,pool
//! cargo run --release -p pvdrivers-tests --bin pvbench-blk -- --io sync,hybrid,pool \
//!     --delay-us 1000 --depths 1,32 --queues 1 --no-qsd
//! ```
//!
//! `--io` lists pvbackend's I/O modes to measure (one disk per mode on the
//! same image, same daemon; see `host_backend::blk::io`); each case prints
//! one row per mode, all against the same qemu-storage-daemon figures.
//! `--delay-us N` arms pvbackend's test-only fault injection
//! (`PVBACKEND_FAULT_DELAY_US`): every disk operation takes N µs more, as
//! on a slow device; the ratio column is then against the first `--io`
//! mode instead of qsd (which has no such delay), and `--no-qsd` skips it.
//!
//! Each case runs with one driver thread per queue keeping `qd` requests in
//! flight on its queue (so the total depth is `qd x queues`), indirect
//! descriptors (as Linux's driver uses them) and EVENT_IDX, after a short
//! unmeasured warm-up. Offsets come from a fixed seed, so both backends get
//! the same request sequence. The driver shares the machine's cores with
//! the backend: figures are for comparing backends on one machine, not
//! absolute device speeds.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pvtest::peers::PvBackend;
use pvtest::vhost_user::blk::{BlkQueue, BlkRequest, Completion, Layout, NativeBlkDriver, S_OK};
use pvtest::QemuStorageDaemon;

const BLOCK: u32 = 4096;
const QUEUE_SIZE: u16 = 256;

struct Args {
    seconds: f64,
    warmup: f64,
    image_mib: u64,
    dir: PathBuf,
    seed: u64,
    depths: Vec<usize>,
    queues: Vec<u16>,
    io: Vec<String>,
    delay_us: u64,
    qsd: bool,
}

fn usage() -> &'static str {
    "pvbench-blk [--seconds S] [--warmup S] [--image-mib N] [--dir DIR] [--seed N] \
     [--depths 1,32,128] [--queues 1,2] [--io hybrid[,sync,pool]] [--delay-us N] [--no-qsd]\n\
     Benchmarks pvbackend against qemu-storage-daemon with the native vhost-user driver\n\
     (4 KiB random read and write). Defaults: 5 s per case, 0.5 s warm-up, 256 MiB image\n\
     in /dev/shm, seed 1."
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seconds: 5.0,
        warmup: 0.5,
        image_mib: 256,
        dir: PathBuf::from("/dev/shm"),
        seed: 1,
        depths: vec![1, 32, 128],
        queues: vec![1, 2],
        io: vec!["hybrid".into()],
        delay_us: 0,
        qsd: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "-h" || k == "--help" {
            return Err(usage().into());
        }
        if k == "--no-qsd" {
            a.qsd = false;
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{k} needs a value\n{}", usage()))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{k} {v}: {e}"));
        let list = |v: &str| -> Result<Vec<u64>, String> {
            v.split(',')
                .map(|x| x.trim().parse::<u64>().map_err(|e| format!("{k} {x}: {e}")))
                .collect()
        };
        match k.as_str() {
            "--seconds" => a.seconds = num(&v)?,
            "--warmup" => a.warmup = num(&v)?,
            "--image-mib" => a.image_mib = num(&v)? as u64,
            "--dir" => a.dir = PathBuf::from(v),
            "--seed" => a.seed = num(&v)? as u64,
            "--delay-us" => a.delay_us = num(&v)? as u64,
            "--io" => {
                a.io = v.split(',').map(|x| x.trim().to_owned()).collect();
                if a.io
                    .iter()
                    .any(|m| !["sync", "pool", "hybrid"].contains(&m.as_str()))
                {
                    return Err(format!("--io takes sync, pool and/or hybrid\n{}", usage()));
                }
            }
            "--depths" => a.depths = list(&v)?.into_iter().map(|x| x as usize).collect(),
            "--queues" => {
                a.queues = list(&v)?
                    .into_iter()
                    .map(|x| u16::try_from(x).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(format!("unknown option {k}\n{}", usage())),
        }
    }
    if a.depths
        .iter()
        .any(|&d| d == 0 || d > usize::from(QUEUE_SIZE))
    {
        return Err(format!("depths must be 1..={QUEUE_SIZE}"));
    }
    if a.queues.iter().any(|&q| q == 0 || q > 2) {
        return Err("queues must be 1 or 2".into());
    }
    Ok(a)
}

/// xorshift64*: the same offsets for both backends.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rw {
    Read,
    Write,
}

impl Rw {
    fn name(self) -> &'static str {
        match self {
            Rw::Read => "randread",
            Rw::Write => "randwrite",
        }
    }
}

/// Figures of one case on one backend.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    iops: f64,
    p50_us: f64,
    p99_us: f64,
    backend_cpu_us: f64,
    driver_cpu_us: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all threads), in clock ticks.
fn cpu_ticks(pid: &str) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may hold spaces) start at 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        f.get(n - 3)
            .ok_or("short stat")?
            .parse::<u64>()
            .map_err(|e| e.to_string())
    };
    Ok(field(14)? + field(15)?)
}

/// One driver thread: keeps `qd` requests in flight on `q` until `until`,
/// then drains. Records latencies (ns) when `record`. Returns completions.
fn drive(
    q: &mut BlkQueue,
    rw: Rw,
    qd: usize,
    blocks: u64,
    seed: u64,
    until: Instant,
    lat: &mut Vec<u32>,
) -> Result<u64, String> {
    let mut rng = Rng(seed | 1);
    let data = vec![0xA5u8; BLOCK as usize];
    let next = |rng: &mut Rng| -> BlkRequest {
        let sector = (rng.next() % blocks) * u64::from(BLOCK / 512);
        match rw {
            Rw::Read => BlkRequest::Read { sector, len: BLOCK },
            Rw::Write => BlkRequest::Write {
                sector,
                data: data.clone(),
            },
        }
    };
    for _ in 0..qd {
        q.enqueue(&next(&mut rng), Layout::Indirect)
            .map_err(|e| e.to_string())?;
    }
    q.notify().map_err(|e| e.to_string())?;
    let mut done: Vec<Completion> = Vec::with_capacity(qd);
    let mut completed = 0u64;
    let timeout = Duration::from_secs(30);
    while q.in_flight() > 0 {
        done.clear();
        q.wait(&mut done, timeout).map_err(|e| e.to_string())?;
        let submit = Instant::now() < until;
        for c in &done {
            if c.status != Some(S_OK) {
                return Err(format!("request failed with status {:?}", c.status));
            }
            lat.push(u32::try_from(c.latency.as_nanos()).unwrap_or(u32::MAX));
            completed += 1;
            if submit {
                q.enqueue(&next(&mut rng), Layout::Indirect)
                    .map_err(|e| e.to_string())?;
            }
        }
        if submit {
            q.notify().map_err(|e| e.to_string())?;
        }
    }
    Ok(completed)
}

fn run_case(
    socket: &Path,
    backend_pid: u32,
    rw: Rw,
    qd: usize,
    queues: u16,
    args: &Args,
    blocks: u64,
) -> Result<Figures, String> {
    let mut drv =
        NativeBlkDriver::connect(socket, queues, QUEUE_SIZE).map_err(|e| e.to_string())?;
    let run =
        |drv: &mut NativeBlkDriver, secs: f64, seed: u64| -> Result<(u64, Vec<u32>, f64), String> {
            let start = Instant::now();
            let until = start + Duration::from_secs_f64(secs);
            let results: Vec<Result<(u64, Vec<u32>), String>> = std::thread::scope(|s| {
                let handles: Vec<_> = drv
                    .queues_mut()
                    .iter_mut()
                    .map(|q| {
                        let qseed = seed ^ (u64::from(q.index()) << 32);
                        s.spawn(move || {
                            let mut lat = Vec::with_capacity(1 << 20);
                            drive(q, rw, qd, blocks, qseed, until, &mut lat).map(|n| (n, lat))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("driver thread panicked".into()))
                    })
                    .collect()
            });
            let elapsed = start.elapsed().as_secs_f64();
            let mut n = 0;
            let mut lat = Vec::new();
            for r in results {
                let (k, l) = r?;
                n += k;
                lat.extend(l);
            }
            Ok((n, lat, elapsed))
        };
    if args.warmup > 0.0 {
        run(&mut drv, args.warmup, args.seed.wrapping_add(0x5157))?;
    }
    let pid = backend_pid.to_string();
    let (b0, d0) = (cpu_ticks(&pid)?, cpu_ticks("self")?);
    let (n, mut lat, elapsed) = run(&mut drv, args.seconds, args.seed)?;
    let (b1, d1) = (cpu_ticks(&pid)?, cpu_ticks("self")?);
    drop(drv);
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    let per_req_us = |ticks: u64| ticks as f64 / clock_ticks() * 1e6 / n.max(1) as f64;
    Ok(Figures {
        iops: n as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        backend_cpu_us: per_req_us(b1.saturating_sub(b0)),
        driver_cpu_us: per_req_us(d1.saturating_sub(d0)),
    })
}

fn fill_image(path: &Path, bytes: u64, seed: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = Rng(seed | 1);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        for w in chunk.chunks_exact_mut(8) {
            w.copy_from_slice(&rng.next().to_le_bytes());
        }
        f.write_all(&chunk)?;
    }
    f.flush()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvbench-blk: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("pvbench-blk-")
        .tempdir_in(&args.dir)
        .map_err(|e| format!("temp dir in {}: {e}", args.dir.display()))?;
    let img = dir.path().join("disk.img");
    fill_image(&img, args.image_mib << 20, args.seed).map_err(|e| format!("image: {e}"))?;
    let blocks = (args.image_mib << 20) / u64::from(BLOCK);
    let max_queues = args.queues.iter().copied().max().unwrap_or(1);
    // One disk per I/O mode, all on the same image, in one daemon.
    let socks: Vec<PathBuf> = args
        .io
        .iter()
        .map(|m| dir.path().join(format!("pvbackend-{m}.sock")))
        .collect();
    let specs: Vec<String> = args
        .io
        .iter()
        .zip(&socks)
        .map(|(m, sock)| {
            format!(
                "path={},socket={},serial=pvbench,queues={max_queues},queue-size={QUEUE_SIZE},io={m}",
                img.display(),
                sock.display()
            )
        })
        .collect();
    if args.delay_us > 0 {
        // Read by the daemon only (fault injection for the slow-device case).
        std::env::set_var("PVBACKEND_FAULT_DELAY_US", args.delay_us.to_string());
    }
    let ours = PvBackend::start(
        &specs,
        &["--log-level", "info"],
        &dir.path().join("pvbackend.log"),
    )
    .map_err(|e| format!("pvbackend: {e}"))?;
    let qsd = if args.qsd {
        let qsd_sock = dir.path().join("qsd.sock");
        let q = QemuStorageDaemon::start(&img, &qsd_sock, u32::from(max_queues))
            .map_err(|e| format!("qemu-storage-daemon: {e}"))?;
        let pid = q.pid().ok_or("qemu-storage-daemon has no pid")?;
        Some((q, qsd_sock, pid))
    } else {
        None
    };
    let ours_pid = ours.pid().ok_or("pvbackend has no pid")?;
    println!(
        "pvbench-blk: {} MiB image on {}, {} s per case (+{} s warm-up), seed {}, 4 KiB, indirect descriptors, EVENT_IDX{}",
        args.image_mib,
        args.dir.display(),
        args.seconds,
        args.warmup,
        args.seed,
        if args.delay_us > 0 {
            format!(", pvbackend disk operations delayed {} µs (fault injection)", args.delay_us)
        } else {
            String::new()
        }
    );
    let base_name = if args.delay_us > 0 || qsd.is_none() {
        format!("{} mode", args.io[0])
    } else {
        "qsd".to_owned()
    };
    println!("qd is per queue (one driver thread per queue); CPU is µs of backend (or driver) CPU time per request; ratio is IOPS against {base_name}\n");
    let header = format!(
        "| {:<9} | {:>3} | {:>1} | {:<6} | {:>9} | {:>9} | {:>5} | {:>15} | {:>15} | {:>13} | {:>13} | {:>9} |",
        "case", "qd", "q", "io", "ours IOPS", "qsd IOPS", "ratio", "ours p50/p99 µs", "qsd p50/p99 µs", "ours CPU/req", "qsd CPU/req", "drv CPU"
    );
    println!("{header}");
    println!(
        "|{}|",
        header[1..header.len() - 1]
            .split('|')
            .map(|c| "-".repeat(c.chars().count()))
            .collect::<Vec<_>>()
            .join("|")
    );
    for rw in [Rw::Read, Rw::Write] {
        for &queues in &args.queues {
            for &qd in &args.depths {
                let mut rows = Vec::new();
                for (mode, sock) in args.io.iter().zip(&socks) {
                    let a =
                        run_case(sock, ours_pid, rw, qd, queues, args, blocks).map_err(|e| {
                            format!(
                                "pvbackend ({mode}) {} qd{qd} q{queues}: {e}\nlog:\n{}",
                                rw.name(),
                                ours.log()
                            )
                        })?;
                    rows.push((mode, a));
                }
                let b = match &qsd {
                    Some((_, sock, pid)) => Some(
                        run_case(sock, *pid, rw, qd, queues, args, blocks)
                            .map_err(|e| format!("qsd {} qd{qd} q{queues}: {e}", rw.name()))?,
                    ),
                    None => None,
                };
                let base = if args.delay_us > 0 || b.is_none() {
                    rows[0].1.iops
                } else {
                    b.map_or(1.0, |b| b.iops)
                };
                let b = b.unwrap_or_default();
                for (mode, a) in rows {
                    println!(
                        "| {:<9} | {:>3} | {:>1} | {:<6} | {:>9.0} | {:>9.0} | {:>5.2} | {:>15} | {:>15} | {:>13.1} | {:>13.1} | {:>9} |",
                        rw.name(),
                        qd,
                        queues,
                        mode,
                        a.iops,
                        b.iops,
                        a.iops / base.max(1.0),
                        format!("{:.0}/{:.0}", a.p50_us, a.p99_us),
                        format!("{:.0}/{:.0}", b.p50_us, b.p99_us),
                        a.backend_cpu_us,
                        b.backend_cpu_us,
                        format!("{:.1}/{:.1}", a.driver_cpu_us, b.driver_cpu_us),
                    );
                }
            }
        }
    }
    drop(qsd);
    let _ = ours.stop(Duration::from_secs(30));
    Ok(())
}
