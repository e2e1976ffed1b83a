//! `pvbench-switch-rr`: what one crossing of our switch adds to a round
//! trip, without guests. Two native vhost-user-net drivers
//! (`pvtest::vhost_user::NativeNetDriver`, EVENT_IDX on, as Linux
//! negotiates) on two switch ports play ping-pong with `--size`-byte
//! frames: a responder thread waits on its RX call eventfd and sends each
//! frame back, the main thread times `--count` round trips. Peer in the
//! same run: the same ping-pong between two threads over a Unix datagram
//! socket pair (one kernel hand-off per direction, the floor any
//! cross-thread path pays).
//!
//! ```text
//! cargo build --release -p pvdrivers-tests --bin pvbench-switch-rr
//! ./target/release/pvbench-switch-rr --count 20000 [--size 64] [--poll-us N]
//! ```
//!
//! Through the switch a direction costs two hand-offs (driver kick ->
//! switch worker, switch call -> responder), through the socket pair one;
//! the difference of the medians is the switch hop, to set against the
//! 400-550 µs TCG guest round trip of `pvbench-net`.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pvtest::peers::PvBackend;
use pvtest::vhost_user::{NativeNetDriver, NetOptions};

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0x30, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0x30, 2];
const WAIT: Duration = Duration::from_secs(10);

struct Args {
    count: usize,
    size: usize,
    poll_us: u32,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        count: 20_000,
        size: 64,
        poll_us: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--count" => a.count = v()?.parse().context("--count")?,
            "--size" => a.size = v()?.parse().context("--size")?,
            "--poll-us" => a.poll_us = v()?.parse().context("--poll-us")?,
            "-h" | "--help" => bail!("pvbench-switch-rr [--count 20000] [--size 64] [--poll-us 0]"),
            o => bail!("unknown argument {o}"),
        }
    }
    if !(14..=1514).contains(&a.size) {
        bail!("--size must be 14..=1514 (an Ethernet frame)");
    }
    Ok(a)
}

fn frame(dst: [u8; 6], src: [u8; 6], size: usize, seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    let s = seq.to_le_bytes();
    let n = s.len().min(size - 14);
    f[14..14 + n].copy_from_slice(&s[..n]);
    f
}

/// p50, p99, p99.9 in µs.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99), at(0.999))
}

fn switch_rr(a: &Args, dir: &std::path::Path) -> Result<Vec<Duration>> {
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let poll = if a.poll_us > 0 {
        format!(",poll-us={}", a.poll_us)
    } else {
        String::new()
    };
    let backend = PvBackend::start_with(
        &[],
        &[
            format!("socket={},name=a{poll}", sa.display()),
            format!("socket={},name=b{poll}", sb.display()),
        ],
        &["--log-level", "info"],
        &dir.join("pvbackend.log"),
    )
    .context("start pvbackend")?;
    let opts = NetOptions {
        queue_size: 256,
        read_config: true,
        event_idx: true,
    };
    let mut da = NativeNetDriver::connect_with(&sa, &opts).context("connect a")?;
    let mut db = NativeNetDriver::connect_with(&sb, &opts).context("connect b")?;
    // Both MACs learned before timing: every timed frame is unicast.
    db.send(&frame([0xff; 6], MAC_B, a.size, 0))?;
    da.recv(WAIT)?.context("a never got b's hello")?;
    da.send(&frame(MAC_B, MAC_A, a.size, 0))?;
    db.recv(WAIT)?.context("b never got a's hello")?;

    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let responder = std::thread::spawn(move || -> Result<()> {
        while !st.load(Ordering::Acquire) {
            if let Some(r) = db.recv(Duration::from_millis(100))? {
                let mut f = r.frame;
                if f.len() >= 12 {
                    f[..6].copy_from_slice(&MAC_A);
                    f[6..12].copy_from_slice(&MAC_B);
                }
                db.send(&f)?;
            }
        }
        Ok(())
    });
    let mut times = Vec::with_capacity(a.count);
    let mut result = Ok(());
    for i in 0..(a.count + 200) as u64 {
        let f = frame(MAC_B, MAC_A, a.size, i);
        let t = Instant::now();
        if let Err(e) = da.send(&f) {
            result = Err(e.into());
            break;
        }
        match da.recv(WAIT) {
            Ok(Some(r)) if r.frame.get(14..22) == f.get(14..22) => {}
            Ok(Some(_)) => {
                result = Err(anyhow::anyhow!("round trip {i}: wrong frame back"));
                break;
            }
            Ok(None) => {
                result = Err(anyhow::anyhow!("round trip {i}: no answer in {WAIT:?}"));
                break;
            }
            Err(e) => {
                result = Err(e.into());
                break;
            }
        }
        // The first 200 warm up.
        if i >= 200 {
            times.push(t.elapsed());
        }
    }
    stop.store(true, Ordering::Release);
    let joined = responder
        .join()
        .map_err(|_| anyhow::anyhow!("responder panicked"))?;
    drop(backend);
    result?;
    joined?;
    Ok(times)
}

fn socket_rr(a: &Args) -> Result<Vec<Duration>> {
    let (sa, sb) = UnixDatagram::pair().context("socketpair")?;
    let n = a.count + 200;
    let responder = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 2048];
        for _ in 0..n {
            let len = sb.recv(&mut buf)?;
            sb.send(&buf[..len])?;
        }
        Ok(())
    });
    let mut buf = vec![0u8; 2048];
    let mut times = Vec::with_capacity(a.count);
    for i in 0..n as u64 {
        let f = frame(MAC_B, MAC_A, a.size, i);
        let t = Instant::now();
        sa.send(&f)?;
        let len = sa.recv(&mut buf)?;
        if buf.get(..len) != Some(&f[..]) {
            bail!("socket round trip {i}: wrong datagram back");
        }
        if i >= 200 {
            times.push(t.elapsed());
        }
    }
    responder
        .join()
        .map_err(|_| anyhow::anyhow!("socket responder panicked"))??;
    Ok(times)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let dir = tempfile::tempdir()?;
    println!(
        "pvbench-switch-rr: {} round trips of {} B, poll-us {}, load average {}",
        a.count,
        a.size,
        a.poll_us,
        loadavg()
    );
    let sw = percentiles(switch_rr(&a, dir.path())?);
    let so = percentiles(socket_rr(&a)?);
    println!(
        "{:<40} {:>9} {:>9} {:>9}",
        "path", "p50 us", "p99 us", "p99.9 us"
    );
    for (name, p) in [
        ("our switch (native drivers, EVENT_IDX)", sw),
        ("unix datagram socket pair", so),
    ] {
        println!("{name:<40} {:>9.1} {:>9.1} {:>9.1}", p.0, p.1, p.2);
    }
    println!(
        "ratio switch/socket: p50 {:.2}x  p99 {:.2}x;  switch hop (p50 difference / 2 directions): {:.1} us",
        sw.0 / so.0,
        sw.1 / so.1,
        (sw.0 - so.0) / 2.0
    );
    println!("load average after: {}", loadavg());
    Ok(())
}
