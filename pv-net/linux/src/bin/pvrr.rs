//! `pvrr`: a request/response latency and stream throughput tool for test
//! guests (static). One side runs `pvrr server`; the other runs
//! `pvrr rr` (UDP or TCP round trips of a fixed size, reporting
//! p50/p99/p99.9) or `pvrr stream` (a TCP bulk transfer, reporting MB/s).
//! Output is one `pvrr: key=value ...` line for scripts to parse.

use std::io::{self, Read, Write};
use std::net::{AddrParseError, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "pvrr", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Answer UDP and TCP requests on PORT until killed.
    Server {
        #[arg(long, default_value_t = 7000)]
        port: u16,
    },
    /// Round trips of SIZE bytes each way; prints latency percentiles.
    Rr {
        /// Server address.
        server: String,
        #[arg(long, default_value_t = 7000)]
        port: u16,
        /// Bytes per request and per response (1..=1400).
        #[arg(long, default_value_t = 1)]
        size: usize,
        /// Measured round trips.
        #[arg(long, default_value_t = 5000)]
        count: usize,
        /// Unmeasured round trips first.
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        /// TCP instead of UDP.
        #[arg(long)]
        tcp: bool,
    },
    /// Sends BYTES over TCP; prints MB/s (10^6 bytes per second).
    Stream {
        server: String,
        #[arg(long, default_value_t = 7000)]
        port: u16,
        #[arg(long, default_value_t = 16 << 20)]
        bytes: u64,
    },
}

const UDP_TIMEOUT: Duration = Duration::from_secs(1);

/// What a `pvrr` run can fail with.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// The user asked for a request size UDP cannot carry in one frame.
    #[error("size {0} is not in 1..=1400")]
    BadSize(usize),
    /// The user named a server address that does not parse.
    #[error("bad address {server}: {source}")]
    BadAddress {
        server: String,
        #[source]
        source: AddrParseError,
    },
    /// The server could not listen on its port.
    #[error("listen: {0}")]
    Listen(#[source] io::Error),
    /// The server could not be reached.
    #[error("connect {to}: {source}")]
    Connect {
        to: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A socket call failed mid-run.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Every round trip was lost.
    #[error("no round trip completed")]
    NoRoundTrip,
    /// The server received another byte count than was sent.
    #[error("server counted {got} bytes of {sent}")]
    ShortCount { got: u64, sent: u64 },
}

fn serve_udp(port: u16) -> std::io::Result<()> {
    let s = UdpSocket::bind(("0.0.0.0", port))?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = s.recv_from(&mut buf)?;
        s.send_to(&buf[..n], from)?;
    }
}

fn serve_tcp_conn(mut c: TcpStream) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    let mut kind = [0u8; 5];
    c.read_exact(&mut kind)?;
    let size = u32::from_le_bytes([kind[1], kind[2], kind[3], kind[4]]) as usize;
    match kind[0] {
        b'R' => {
            let mut buf = vec![0u8; size.clamp(1, 65536)];
            loop {
                if c.read_exact(&mut buf).is_err() {
                    return Ok(());
                }
                c.write_all(&buf)?;
            }
        }
        b'S' => {
            let mut buf = vec![0u8; 65536];
            let mut total: u64 = 0;
            loop {
                let n = c.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            c.write_all(&total.to_le_bytes())
        }
        _ => Ok(()),
    }
}

fn server(port: u16) -> Result<(), Error> {
    std::thread::spawn(move || {
        if let Err(e) = serve_udp(port) {
            eprintln!("pvrr: udp server: {e}");
        }
    });
    let l = TcpListener::bind(("0.0.0.0", port)).map_err(Error::Listen)?;
    println!("pvrr: server listening on port {port}");
    for c in l.incoming() {
        match c {
            Ok(c) => {
                std::thread::spawn(move || {
                    let _ = serve_tcp_conn(c);
                });
            }
            Err(e) => eprintln!("pvrr: accept: {e}"),
        }
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn addr(server: &str, port: u16) -> Result<SocketAddr, Error> {
    format!("{server}:{port}")
        .parse()
        .map_err(|source| Error::BadAddress {
            server: server.into(),
            source,
        })
}

fn rr(
    server: &str,
    port: u16,
    size: usize,
    count: usize,
    warmup: usize,
    tcp: bool,
) -> Result<(), Error> {
    if !(1..=1400).contains(&size) {
        return Err(Error::BadSize(size));
    }
    let to = addr(server, port)?;
    let mut lat = Vec::with_capacity(count);
    let mut lost = 0usize;
    let start = Instant::now();
    if tcp {
        let mut c = TcpStream::connect(to).map_err(|source| Error::Connect { to, source })?;
        c.set_nodelay(true)?;
        let mut hello = vec![b'R'];
        hello.extend_from_slice(&(size as u32).to_le_bytes());
        c.write_all(&hello)?;
        let req = vec![0x5au8; size];
        let mut resp = vec![0u8; size];
        for i in 0..warmup + count {
            let t = Instant::now();
            c.write_all(&req)?;
            c.read_exact(&mut resp)?;
            if i >= warmup {
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    } else {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        s.set_read_timeout(Some(UDP_TIMEOUT))?;
        let mut req = vec![0x5au8; size.max(4)];
        let mut resp = [0u8; 2048];
        for i in 0..warmup + count {
            let seq = (i as u32).to_le_bytes();
            let n = size.min(4);
            req[..n].copy_from_slice(&seq[..n]);
            let t = Instant::now();
            s.send(&req[..size])?;
            // Skip late answers to earlier (timed-out) requests.
            let ok = loop {
                match s.recv(&mut resp) {
                    Ok(m) if m == size && resp[..n] == seq[..n] => break true,
                    Ok(_) => continue,
                    Err(_) => break false,
                }
            };
            if !ok {
                if i >= warmup {
                    lost += 1;
                }
                continue;
            }
            if i >= warmup {
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    println!(
        "pvrr: mode=rr proto={} size={size} count={} lost={lost} p50_us={:.1} p99_us={:.1} p999_us={:.1} min_us={:.1} max_us={:.1} mean_us={:.1} rate_per_s={:.0}",
        if tcp { "tcp" } else { "udp" },
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.first().copied().unwrap_or(0.0),
        lat.last().copied().unwrap_or(0.0),
        mean,
        (warmup + count) as f64 / secs
    );
    if lat.is_empty() {
        return Err(Error::NoRoundTrip);
    }
    Ok(())
}

fn stream(server: &str, port: u16, bytes: u64) -> Result<(), Error> {
    let to = addr(server, port)?;
    let mut c = TcpStream::connect(to).map_err(|source| Error::Connect { to, source })?;
    let mut hello = vec![b'S'];
    hello.extend_from_slice(&0u32.to_le_bytes());
    c.write_all(&hello)?;
    let buf = vec![0xa5u8; 65536];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        c.write_all(&buf[..n])?;
        left -= n as u64;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let mut total = [0u8; 8];
    c.read_exact(&mut total)?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_le_bytes(total);
    println!(
        "pvrr: mode=stream bytes={got} secs={secs:.3} mb_per_s={:.2}",
        got as f64 / secs / 1e6
    );
    if got != bytes {
        return Err(Error::ShortCount { got, sent: bytes });
    }
    Ok(())
}

fn main() -> ExitCode {
    // Keep every page resident: a page fault inside a round trip would be
    // measured as network latency. Failure (no CAP_IPC_LOCK) is harmless.
    // SAFETY: mlockall takes flags only and touches no memory of ours.
    let _ = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Server { port } => server(port),
        Cmd::Rr {
            server,
            port,
            size,
            count,
            warmup,
            tcp,
        } => rr(&server, port, size, count, warmup, tcp),
        Cmd::Stream {
            server,
            port,
            bytes,
        } => stream(&server, port, bytes),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvrr: {e}");
            ExitCode::FAILURE
        }
    }
}
