//! `pvio`: the guest I/O tool. Writes and verifies self-describing block
//! stamps (see `pv_blk::pattern`) on a block device or file, so a test can
//! check data end to end: in the guest, or on the host image afterwards.
//!
//! Runs inside test guests as a static binary; exits 0 on success, 1 when
//! verification finds a bad block, 2 on usage or I/O errors.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pv_blk::pattern;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "pvdrivers guest I/O tool: stamp and verify blocks end to end"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Stamp every block of the range with (seed, block index) and fsync.
    Write(Range),
    /// Check that every block of the range carries the stamp for the seed.
    Verify(Range),
    /// Random O_DIRECT reads for a fixed time: IOPS and latency percentiles.
    /// Each job is one thread with one request in flight (queue depth =
    /// jobs).
    Randread {
        /// Block device or file.
        path: PathBuf,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Parallel jobs (threads), one request in flight each.
        #[arg(long, default_value_t = 1)]
        jobs: u32,
        /// Read size in bytes (a multiple of 512).
        #[arg(long, default_value_t = 4096)]
        block_size: usize,
        /// Seed of the offset sequence.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Sequential O_DIRECT reads for a fixed time (wrapping at the end),
    /// `jobs` threads each reading its own stretch: throughput.
    Seqread {
        /// Block device or file.
        path: PathBuf,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Read size in bytes (a multiple of 512).
        #[arg(long, default_value_t = 1 << 20)]
        block_size: usize,
    },
    /// Drive a virtio-blk PCI device directly with the pv-blk core (no
    /// kernel driver, no NBD): claim it, keep `qd` reads in flight for a
    /// fixed time by busy-polling, print IOPS and latency percentiles (or
    /// throughput), hand the device back to the kernel.
    Direct {
        /// PCI address of the virtio-blk device.
        #[arg(long)]
        pci: String,
        /// Random or sequential reads.
        #[arg(long, value_enum, default_value_t = DirectMode::Rand)]
        mode: DirectMode,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests in flight.
        #[arg(long, default_value_t = 1)]
        qd: u32,
        /// Read size in bytes (a multiple of 512, at most 2 MiB).
        #[arg(long, default_value_t = 4096)]
        block_size: usize,
        /// Seed of the offset sequence.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Copy each completed read out of its DMA buffer (as a runtime
        /// serving the data must), to measure what touching hugepage DMA
        /// memory costs.
        #[arg(long)]
        touch: bool,
    },
    /// Zero a byte range of a block device with BLKZEROOUT (the kernel sends
    /// WRITE_ZEROES when the device offers it).
    Zeroout {
        /// Block device.
        path: PathBuf,
        /// First byte (a multiple of 512).
        #[arg(long)]
        offset: u64,
        /// Bytes to zero (a multiple of 512).
        #[arg(long)]
        len: u64,
    },
    /// Print the size of the device in bytes.
    Size {
        /// Block device or file.
        path: PathBuf,
    },
}

/// Access pattern of the direct mode.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DirectMode {
    /// Uniformly random block offsets.
    Rand,
    /// Consecutive blocks, wrapping at the end.
    Seq,
}

#[derive(Args, Debug)]
struct Range {
    /// Block device or file.
    path: PathBuf,
    /// Run identifier stored in every block; verify fails on another run's blocks.
    #[arg(long)]
    seed: u64,
    /// Block size in bytes (a multiple of 8, at least 512).
    #[arg(long, default_value_t = 4096)]
    block_size: usize,
    /// First block to touch.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Number of blocks (default: up to the end of the device).
    #[arg(long)]
    count: Option<u64>,
    /// Bypass the page cache (O_DIRECT) for writes and reads alike: every
    /// block is one device request, completed by the device before the
    /// next is issued (a verify reads what the device holds, never a cached
    /// copy). The block size must then be a multiple of 512.
    #[arg(long)]
    direct: bool,
}

/// Opens `r.path` for the range commands (write and verify), with O_DIRECT
/// when asked.
fn open_range(r: &Range, write: bool) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    if r.direct && (r.block_size < 512 || !r.block_size.is_multiple_of(512)) {
        return Err(format!(
            "--direct needs a block size that is a multiple of 512, not {}",
            r.block_size
        ));
    }
    let mut o = OpenOptions::new();
    o.read(true).write(write);
    if r.direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(&r.path)
        .map_err(|e| format!("open {}: {e}", r.path.display()))
}

/// A zeroed buffer of `len` bytes aligned to 4096 (O_DIRECT needs it).
struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let off = raw.as_ptr().align_offset(4096);
        Self { raw, off, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pvio: {e}");
            ExitCode::from(2)
        }
    }
}

fn device_size(f: &mut File) -> std::io::Result<u64> {
    // Works for block devices as well as regular files.
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(size)
}

fn blocks_in(r: &Range, size: u64) -> Result<u64, String> {
    let bs = r.block_size as u64;
    let avail = (size / bs).saturating_sub(r.start);
    match r.count {
        Some(c) if c > avail => Err(format!(
            "{} has {} blocks of {} bytes after block {}, {} asked",
            r.path.display(),
            avail,
            bs,
            r.start,
            c
        )),
        Some(c) => Ok(c),
        None => Ok(avail),
    }
}

fn run(cmd: Cmd) -> Result<ExitCode, String> {
    match cmd {
        Cmd::Randread {
            path,
            seconds,
            jobs,
            block_size,
            seed,
        } => randread(&path, seconds, jobs.max(1), block_size, seed),
        Cmd::Seqread {
            path,
            seconds,
            block_size,
        } => seqread(&path, seconds, block_size),
        Cmd::Direct {
            pci,
            mode,
            seconds,
            qd,
            block_size,
            seed,
            touch,
        } => direct::run(&pci, mode, seconds, qd.max(1), block_size, seed, touch),
        Cmd::Zeroout { path, offset, len } => {
            use std::os::unix::io::AsRawFd;
            /// `_IO(0x12, 127)`.
            const BLKZEROOUT: libc::c_ulong = 0x127f;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            let range = [offset, len];
            // SAFETY: BLKZEROOUT reads a u64[2] through the pointer, which
            // points to a live local array for the duration of the call.
            let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
            if rc != 0 {
                return Err(format!(
                    "BLKZEROOUT {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
            println!("pvio: zeroed {len} bytes at {offset}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Size { path } => {
            let mut f = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
            let size =
                device_size(&mut f).map_err(|e| format!("size of {}: {e}", path.display()))?;
            println!("{size}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Write(r) => {
            let mut f = open_range(&r, true)?;
            let size = device_size(&mut f).map_err(|e| e.to_string())?;
            let count = blocks_in(&r, size)?;
            let mut aligned = AlignedBuf::new(r.block_size);
            let buf = aligned.get();
            f.seek(SeekFrom::Start(r.start * r.block_size as u64))
                .map_err(|e| e.to_string())?;
            for i in r.start..r.start + count {
                pattern::stamp(buf, r.seed, i).map_err(|e| e.to_string())?;
                f.write_all(buf)
                    .map_err(|e| format!("write block {i}: {e}"))?;
            }
            f.sync_all()
                .map_err(|e| format!("fsync {}: {e}", r.path.display()))?;
            println!(
                "pvio: wrote {count} blocks of {} bytes (seed {})",
                r.block_size, r.seed
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify(r) => {
            let mut f = open_range(&r, false)?;
            let size = device_size(&mut f).map_err(|e| e.to_string())?;
            let count = blocks_in(&r, size)?;
            let mut aligned = AlignedBuf::new(r.block_size);
            let buf = aligned.get();
            f.seek(SeekFrom::Start(r.start * r.block_size as u64))
                .map_err(|e| e.to_string())?;
            let mut bad = 0u64;
            for i in r.start..r.start + count {
                f.read_exact(buf)
                    .map_err(|e| format!("read block {i}: {e}"))?;
                if let Err(e) = pattern::verify(buf, r.seed, i) {
                    if bad < 10 {
                        println!("pvio: block {i}: {e}");
                    }
                    bad += 1;
                }
            }
            if bad > 0 {
                println!("pvio: {bad} of {count} blocks bad");
                return Ok(ExitCode::from(1));
            }
            println!(
                "pvio: verified {count} blocks of {} bytes (seed {})",
                r.block_size, r.seed
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `jobs` threads of back-to-back random O_DIRECT reads for `seconds`
/// and prints one summary line: `pvio: randread jobs=J iops=N p50_us=A
/// p99_us=B p999_us=C`.
fn randread(
    path: &std::path::Path,
    seconds: u64,
    jobs: u32,
    bs: usize,
    seed: u64,
) -> Result<ExitCode, String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::time::{Duration, Instant};
    if bs < 512 || !bs.is_multiple_of(512) {
        return Err(format!("block size {bs} is not a multiple of 512"));
    }
    let mut probe = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let blocks = device_size(&mut probe).map_err(|e| e.to_string())? / bs as u64;
    if blocks == 0 {
        return Err(format!("{} is smaller than one block", path.display()));
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..jobs)
        .map(|j| {
            let path = path.to_owned();
            std::thread::spawn(move || -> Result<Vec<u32>, String> {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .map_err(|e| format!("open {}: {e}", path.display()))?;
                let mut buf = AlignedBuf::new(bs);
                let mut x = seed ^ (u64::from(j) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut lat = Vec::with_capacity(1 << 16);
                while Instant::now() < deadline {
                    // xorshift64: cheap, deterministic offsets.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = (x % blocks) * bs as u64;
                    let t = Instant::now();
                    f.read_exact_at(buf.get(), off)
                        .map_err(|e| format!("read at {off}: {e}"))?;
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| "a reader thread panicked".to_owned())??,
        );
    }
    if all.is_empty() {
        return Err("no read completed".into());
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "pvio: randread jobs={jobs} iops={} p50_us={} p99_us={} p999_us={}",
        all.len() as u64 / seconds.max(1),
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
    Ok(ExitCode::SUCCESS)
}

/// Sequential O_DIRECT reads for `seconds`; prints `pvio: seqread bs=B
/// mib_s=M iops=N`.
fn seqread(path: &std::path::Path, seconds: u64, bs: usize) -> Result<ExitCode, String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::time::{Duration, Instant};
    if bs < 512 || !bs.is_multiple_of(512) {
        return Err(format!("block size {bs} is not a multiple of 512"));
    }
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let blocks = device_size(&mut f).map_err(|e| e.to_string())? / bs as u64;
    if blocks == 0 {
        return Err(format!("{} is smaller than one block", path.display()));
    }
    let mut buf = AlignedBuf::new(bs);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let off = (n % blocks) * bs as u64;
        f.read_exact_at(buf.get(), off)
            .map_err(|e| format!("read at {off}: {e}"))?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "pvio: seqread bs={bs} mib_s={:.1} iops={}",
        (n * bs as u64) as f64 / secs / (1 << 20) as f64,
        (n as f64 / secs) as u64
    );
    Ok(ExitCode::SUCCESS)
}

/// The no-kernel-driver, no-NBD benchmark: the pv-blk core on a claimed
/// PCI device.
mod direct {
    use std::collections::HashMap;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use pv_blk::virtio::{VirtioBlk, VirtioBlkConfig};
    use pv_blk::{BlockFrontend, IoBuf, Request, SECTOR_SIZE};
    use pv_linux::dma::{self, DmaBuf, LinuxHal};
    use pv_linux::pci::{PciAddress, PciDevice};
    use virtio_drivers::transport::pci::PciTransport;

    use super::DirectMode;

    pub fn run(
        pci: &str,
        mode: DirectMode,
        seconds: u64,
        qd: u32,
        bs: usize,
        seed: u64,
        touch: bool,
    ) -> Result<ExitCode, String> {
        if bs < 512 || !bs.is_multiple_of(512) || bs > dma::HUGEPAGE_SIZE {
            return Err(format!(
                "block size {bs}: want a multiple of 512 up to 2 MiB"
            ));
        }
        let addr: PciAddress = pci.parse().map_err(|e: pv_linux::Error| e.to_string())?;
        dma::init(64, 1).map_err(|e| e.to_string())?;
        let dev = PciDevice::claim(addr).map_err(|e| format!("claim {addr}: {e}"))?;
        let r = bench(&dev, mode, seconds, qd, bs, seed, touch);
        dev.release().map_err(|e| e.to_string())?;
        r
    }

    fn bench(
        dev: &PciDevice,
        mode: DirectMode,
        seconds: u64,
        qd: u32,
        bs: usize,
        seed: u64,
        touch: bool,
    ) -> Result<ExitCode, String> {
        let mut copy = if touch { vec![0u8; bs] } else { Vec::new() };
        // Declared before the frontend so that they are dropped after it on
        // every path: dropping the frontend resets the device, which then no
        // longer touches them.
        let mut bufs = (0..qd)
            .map(|_| DmaBuf::new(bs))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let transport = dev.virtio_transport().map_err(|e| e.to_string())?;
        let mut blk: VirtioBlk<LinuxHal, PciTransport> =
            VirtioBlk::new(transport, VirtioBlkConfig::default())
                .map_err(|e| format!("virtio-blk init: {e}"))?;
        let info = blk.info();
        let blocks = info.capacity_sectors * SECTOR_SIZE as u64 / bs as u64;
        if blocks == 0 {
            return Err("device smaller than one block".into());
        }
        if qd > info.queue_depth {
            return Err(format!(
                "qd {qd} above the queue depth {}",
                info.queue_depth
            ));
        }
        let mut x = seed | 1;
        let mut seq = 0u64;
        let mut next_block = || match mode {
            DirectMode::Rand => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % blocks
            }
            DirectMode::Seq => {
                seq += 1;
                (seq - 1) % blocks
            }
        };
        let sectors_per_block = (bs / SECTOR_SIZE) as u64;
        // Token -> (buffer slot, submit time).
        let mut in_flight: HashMap<u32, (usize, Instant)> = HashMap::new();
        let submit = |blk: &mut VirtioBlk<LinuxHal, PciTransport>,
                      bufs: &mut [DmaBuf],
                      slot: usize,
                      block: u64|
         -> Result<(u32, Instant), String> {
            let b = &mut bufs[slot];
            let io = [IoBuf::new(b.as_ptr(), b.len())];
            let req = Request::read(block * sectors_per_block, &io);
            // Latency counts from before the submission (the notify is part
            // of it).
            let at = Instant::now();
            // SAFETY: buffer `slot` is used by this request alone until its
            // token completes (the slot is only resubmitted after that), and
            // the buffers outlive the frontend's use of them: they are
            // dropped after `blk`, whose drop resets the device first.
            let t = unsafe { blk.submit(&req) }.map_err(|e| format!("submit: {e}"))?;
            Ok((t.raw(), at))
        };
        let start = Instant::now();
        let deadline = start + Duration::from_secs(seconds);
        for slot in 0..qd as usize {
            let (t, at) = submit(&mut blk, &mut bufs, slot, next_block())?;
            in_flight.insert(t, (slot, at));
        }
        let mut lat: Vec<u32> = Vec::with_capacity(1 << 20);
        let mut errors = 0u64;
        let mut done = Vec::new();
        let mut end = None;
        let drain_deadline = deadline + Duration::from_secs(30);
        while !in_flight.is_empty() {
            done.clear();
            blk.poll_completions(&mut |t, r| done.push((t.raw(), r.is_ok())))
                .map_err(|e| format!("device fault: {e}"))?;
            let now = Instant::now();
            let running = now < deadline;
            if !running && end.is_none() {
                end = Some(now);
            }
            // Retire every completion before resubmitting: a new request
            // may reuse the token of one completed in this same batch.
            let mut free = Vec::with_capacity(done.len());
            for &(t, ok) in &done {
                let Some((slot, at)) = in_flight.remove(&t) else {
                    continue;
                };
                if !ok {
                    errors += 1;
                }
                if touch {
                    if let Some(b) = bufs.get(slot) {
                        copy.copy_from_slice(b.as_slice());
                    }
                }
                if running {
                    lat.push(u32::try_from(now.duration_since(at).as_micros()).unwrap_or(u32::MAX));
                    free.push(slot);
                }
            }
            for slot in free {
                let (t2, at2) = submit(&mut blk, &mut bufs, slot, next_block())?;
                in_flight.insert(t2, (slot, at2));
            }
            if now > drain_deadline {
                return Err(format!("{} requests never completed", in_flight.len()));
            }
            if done.is_empty() {
                std::hint::spin_loop();
            }
        }
        drop(blk);
        drop(bufs);
        if errors > 0 {
            return Err(format!("{errors} reads failed"));
        }
        if lat.is_empty() {
            return Err("no read completed".into());
        }
        let secs = end.unwrap_or(deadline).duration_since(start).as_secs_f64();
        let n = lat.len();
        lat.sort_unstable();
        let pct = |p: f64| lat[((n as f64 * p) as usize).min(n - 1)];
        let name = match (mode, touch) {
            (DirectMode::Rand, false) => "direct-randread",
            (DirectMode::Seq, false) => "direct-seqread",
            (DirectMode::Rand, true) => "direct-randread-touch",
            (DirectMode::Seq, true) => "direct-seqread-touch",
        };
        println!(
            "pvio: {name} qd={qd} bs={bs} iops={} mib_s={:.1} p50_us={} p99_us={} p999_us={}",
            (n as f64 / secs) as u64,
            (n as u64 * bs as u64) as f64 / secs / (1 << 20) as f64,
            pct(0.50),
            pct(0.99),
            pct(0.999)
        );
        Ok(ExitCode::SUCCESS)
    }
}
