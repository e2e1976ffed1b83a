//! Our switch driven by the native vhost-user frontend on two ports: frames
//! cross as sent, MAC learning turns flooding into unicast, and a malicious
//! guest's runt, oversized, bad-header and malformed-chain frames are
//! dropped and counted without reaching the other port, which keeps
//! working.

use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::vhost_user::split::{ChainDesc, Next};
use pvtest::vhost_user::{NativeNetDriver, NetOptions};

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0xaa, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0xbb, 2];
const BCAST: [u8; 6] = [0xff; 6];
const WAIT: Duration = Duration::from_secs(30);

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f.extend_from_slice(payload);
    f
}

struct Setup {
    _dir: tempfile::TempDir,
    backend: PvBackend,
    a: NativeNetDriver,
    b: NativeNetDriver,
}

fn setup() -> Setup {
    setup_with(&NetOptions {
        queue_size: 64,
        read_config: true,
        event_idx: false,
    })
}

fn setup_with(opts: &NetOptions) -> Setup {
    setup_ports(opts, "")
}

/// `port_opts` is appended to both ports' `--net-port` specs.
fn setup_ports(opts: &NetOptions, port_opts: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let backend = PvBackend::start_with(
        &[],
        &[
            format!(
                "socket={},name=a,mac=52:54:00:00:aa:01{port_opts}",
                sa.display()
            ),
            format!("socket={},name=b,mtu=1500{port_opts}", sb.display()),
        ],
        &["--log-level", "info", "--metrics", "127.0.0.1:0"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    let a = NativeNetDriver::connect_with(&sa, opts).expect("connect a");
    let b = NativeNetDriver::connect_with(&sb, opts).expect("connect b");
    Setup {
        _dir: dir,
        backend,
        a,
        b,
    }
}

#[test]
fn frames_cross_and_macs_are_learned() {
    let Setup {
        backend,
        mut a,
        mut b,
        _dir,
    } = setup();
    // MAC (port a is configured with one), MTU and STATUS agreed.
    let f = a.config().features;
    assert_eq!(
        f & (1 << 5 | 1 << 3 | 1 << 16 | 1 << 32),
        1 << 5 | 1 << 3 | 1 << 16 | 1 << 32,
        "{f:#x}"
    );
    assert_eq!(b.config().features & (1 << 5), 0, "b has no MAC configured");
    let ca = a.config();
    assert_eq!((ca.mac, ca.status & 1, ca.mtu), (MAC_A, 1, 1500));

    // A broadcast from A floods to B, byte for byte, behind a header with
    // no offloads and num_buffers 1.
    let f1 = frame(BCAST, MAC_A, b"hello from a");
    a.send(&f1).expect("send");
    let got = b.recv(WAIT).expect("recv").expect("b got the broadcast");
    assert_eq!(got.frame, f1);
    assert_eq!(got.header, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    // B answers A (A was learned: unicast), then A sends to B (learned now).
    let f2 = frame(MAC_A, MAC_B, &[7u8; 1486]);
    b.send(&f2).expect("send");
    assert_eq!(a.recv(WAIT).expect("recv").expect("a got it").frame, f2);
    let f3 = frame(MAC_B, MAC_A, &[9u8; 100]);
    a.send(&f3).expect("send");
    assert_eq!(b.recv(WAIT).expect("recv").expect("b got it").frame, f3);
    // Many frames in a row (more than a queue's worth) all arrive in order.
    for i in 0..200u32 {
        a.send(&frame(MAC_B, MAC_A, &i.to_le_bytes()))
            .expect("send");
        let r = b.recv(WAIT).expect("recv").expect("frame");
        assert_eq!(&r.frame[14..18], &i.to_le_bytes());
    }
    a.wait_tx_done(WAIT).expect("tx done");

    let m = backend.fetch_metrics().expect("metrics");
    let v = |s: &str| PvBackend::metric(&m, s).unwrap_or(-1.0);
    assert_eq!(
        v(r#"pvbackend_switch_mac{port="a",mac="52:54:00:00:aa:01"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        v(r#"pvbackend_switch_mac{port="b",mac="52:54:00:00:bb:02"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(v(r#"pvbackend_net_learned_macs{port="a"}"#), 1.0, "{m}");
    assert_eq!(
        v(r#"pvbackend_net_rx_packets_total{port="a"}"#),
        202.0,
        "{m}"
    );
    assert_eq!(
        v(r#"pvbackend_net_tx_packets_total{port="b"}"#),
        202.0,
        "{m}"
    );
    assert_eq!(
        v(r#"pvbackend_net_rx_bytes_total{port="b"}"#),
        f2.len() as f64,
        "{m}"
    );
    // Only the first (broadcast) frame was flooded.
    assert_eq!(v(r#"pvbackend_net_flooded_total{port="a"}"#), 1.0, "{m}");
    assert_eq!(v(r#"pvbackend_net_flooded_total{port="b"}"#), 0.0, "{m}");
}

#[test]
fn malicious_frames_never_reach_the_other_port() {
    let Setup {
        backend,
        mut a,
        mut b,
        _dir,
    } = setup();
    let (scratch, _) = a.scratch();
    let ram = a.ram().clone();
    let hdr = [0u8; 12];

    // Runt: 13 bytes of frame.
    a.send_with_header(&hdr, &[0xff; 13]).expect("runt");
    // Oversized: MTU 1500 + 18 + 1.
    a.send_with_header(&hdr, &frame(BCAST, MAC_A, &[0; 1505]))
        .expect("oversized");
    // Offloads never negotiated: NEEDS_CSUM, then GSO TCPv4.
    let mut csum = hdr;
    csum[0] = 1;
    a.send_with_header(&csum, &frame(BCAST, MAC_A, &[1; 60]))
        .expect("csum");
    let mut gso = hdr;
    gso[1] = 1;
    a.send_with_header(&gso, &frame(BCAST, MAC_A, &[2; 60]))
        .expect("gso");
    // Malformed chains, all over a well-formed broadcast in scratch memory.
    let evil = frame(BCAST, MAC_A, b"evil");
    ram.write(scratch, &hdr).expect("ram");
    ram.write(scratch + 12, &evil).expect("ram");
    let len = (12 + evil.len()) as u32;
    // A loop: 0 -> 1 -> 0.
    a.send_raw(&[
        ChainDesc::readable(scratch, 12).then(Next::Chain(1)),
        ChainDesc::readable(scratch + 12, len - 12).then(Next::Chain(0)),
    ])
    .expect("loop");
    // A next index outside the table.
    a.send_raw(&[ChainDesc::readable(scratch, len).then(Next::Raw(999))])
        .expect("escape");
    // A device-writable descriptor in a TX chain.
    a.send_raw(&[
        ChainDesc::readable(scratch, 12).then(Next::Chain(1)),
        ChainDesc::writable(scratch + 12, len - 12),
    ])
    .expect("writable");
    // Memory outside guest RAM.
    a.send_raw(&[ChainDesc::readable(0xdead_0000_0000, len)])
        .expect("outside");
    // A 4 GiB length.
    a.send_raw(&[ChainDesc::readable(scratch, u32::MAX)])
        .expect("huge");
    // A head outside the descriptor table.
    a.send_bogus_head(500).expect("bogus head");
    // Then a valid frame: the first and only thing B sees.
    let good = frame(BCAST, MAC_A, b"the good one");
    a.send(&good).expect("good");
    let r = b.recv(WAIT).expect("recv").expect("b got the good frame");
    assert_eq!(r.frame, good, "something else reached b first");
    assert_eq!(b.recv(Duration::from_millis(500)).expect("recv"), None);
    a.wait_tx_done(WAIT).expect("every chain returned");

    // B's side still works both ways, and A still works.
    let back = frame(MAC_A, MAC_B, b"b is fine");
    b.send(&back).expect("send");
    assert_eq!(a.recv(WAIT).expect("recv").expect("a got it").frame, back);

    let m = backend.fetch_metrics().expect("metrics");
    let v = |reason: &str| {
        PvBackend::metric(
            &m,
            &format!("pvbackend_net_drops_total{{port=\"a\",reason=\"{reason}\"}}"),
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(v("runt"), 1.0, "{m}");
    assert_eq!(v("oversized"), 2.0, "{m}"); // the frame and the 4 GiB chain
    assert_eq!(v("bad_header"), 2.0, "{m}");
    assert_eq!(v("malformed_chain"), 5.0, "{m}"); // loop, escape, writable, outside, bogus head
    assert_eq!(
        PvBackend::metric(&m, r#"pvbackend_net_rx_packets_total{port="a"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        PvBackend::metric(&m, r#"pvbackend_net_worker_panics_total{port="a"}"#),
        Some(0.0),
        "{m}"
    );
}

/// A 1 Mbit/s port (64 KiB burst, then 125 kB/s), offered more than any
/// correct limiter could pass: every frame is counted once as passed or
/// limited, the burst passed, and what passed never exceeds the burst plus
/// the rate times the span of the limiter's decisions. That span is read
/// from before the first frame to after the last count, so a slow run
/// only loosens the bound: no machine speed makes a correct limiter fail,
/// and one that lets through more than its rate fails on any.
#[test]
fn rate_limited_port_drops_and_counts_the_excess() {
    const RATE_BYTES_PER_SEC: f64 = 125_000.0;
    const BURST_BYTES: f64 = 65_536.0;
    const FRAME_BYTES: usize = 1500;
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let backend = PvBackend::start_with(
        &[],
        &[
            format!("socket={},name=a,rate-mbps=1", sa.display()),
            format!("socket={},name=b", sb.display()),
        ],
        &["--log-level", "info", "--metrics", "127.0.0.1:0"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    let mut a = NativeNetDriver::connect(&sa, 64).expect("connect a");
    let mut b = NativeNetDriver::connect(&sb, 64).expect("connect b");
    let limited_key = r#"pvbackend_net_drops_total{port="a",reason="rate_limited"}"#;
    // The bucket is full (it never holds more than the burst) until the
    // first frame, sent after this clock read: what passes is at most the
    // burst plus what the rate credits from here to the last count.
    let first_frame_after = std::time::Instant::now();
    let allowed = || BURST_BYTES + RATE_BYTES_PER_SEC * first_frame_after.elapsed().as_secs_f64();
    // Send (at least the 2000 frames, 3 MB, that would take over 20 s to
    // pass in full) until more was offered than any correct limiter could
    // have let through by now; a sender slower than 125 kB/s never gets
    // there, so a generous deadline stops that.
    let deadline = first_frame_after + Duration::from_secs(600);
    let mut sent = 0usize;
    while sent < 2000 || (sent * FRAME_BYTES) as f64 <= allowed() {
        for _ in 0..200 {
            a.send(&frame(BCAST, MAC_A, &[sent as u8; FRAME_BYTES - 14]))
                .expect("send");
            sent += 1;
        }
        a.wait_tx_done(WAIT).expect("tx done");
        assert!(
            std::time::Instant::now() < deadline,
            "{sent} frames in 600 s never outran a 1 Mbit/s bucket"
        );
    }
    let m = backend.fetch_metrics().expect("metrics");
    // Every decision the bucket made was before this.
    let allowed = allowed();
    let v = |s: &str| PvBackend::metric(&m, s).unwrap_or(-1.0);
    let passed = v(r#"pvbackend_net_rx_packets_total{port="a"}"#);
    let passed_bytes = v(r#"pvbackend_net_rx_bytes_total{port="a"}"#);
    let limited = v(limited_key);
    assert_eq!(passed + limited, sent as f64, "{m}");
    assert_eq!(passed_bytes, passed * FRAME_BYTES as f64, "{m}");
    // The full bucket lets the first 43 frames through.
    assert!(
        passed >= (BURST_BYTES / FRAME_BYTES as f64).floor(),
        "passed {passed}, limited {limited}:\n{m}"
    );
    assert!(
        passed_bytes <= allowed,
        "{passed_bytes} bytes of {sent} frames passed; a 1 Mbit/s bucket allows {allowed:.0} by now:\n{m}"
    );
    assert!(limited >= 1.0, "{m}");
    // What passed the limiter reached b (up to its RX ring and backlog).
    let first = b.recv(WAIT).expect("recv").expect("b got the burst");
    assert_eq!(first.frame.len(), FRAME_BYTES);
    // b's ingress is unlimited: it still gets a frame through.
    let back = frame(MAC_A, MAC_B, b"unlimited");
    b.send(&back).expect("send");
    let got = loop {
        let r = a.recv(WAIT).expect("recv").expect("a got b's frame");
        if r.frame == back {
            break r;
        }
    };
    assert_eq!(got.frame, back);
}

/// A driver that moves its TX avail index more than a queue ahead (no
/// chain can be popped there) with EVENT_IDX agreed, where the switch
/// re-checks the ring before sleeping: each kick is counted as a malformed
/// chain and the port's worker goes back to waiting (the second kick is
/// counted too, so it was not left spinning on the first), and frames to
/// that guest still arrive.
#[test]
fn avail_index_run_ahead_is_counted_per_kick() {
    let Setup {
        backend,
        mut a,
        mut b,
        _dir,
    } = setup_with(&NetOptions {
        queue_size: 64,
        read_config: true,
        event_idx: true,
    });
    b.send(&frame(BCAST, MAC_B, b"hi")).expect("send");
    a.recv(WAIT).expect("recv").expect("a got b's hello");
    let key = r#"pvbackend_net_drops_total{port="a",reason="malformed_chain"}"#;
    let wait_count = |n: f64| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let m = backend.fetch_metrics().expect("metrics");
            if PvBackend::metric(&m, key).unwrap_or(0.0) >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{key} never reached {n}\n{m}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    a.send_avail_idx_ahead(65).expect("bogus avail index");
    wait_count(1.0);
    a.send_avail_idx_ahead(0).expect("kick again");
    wait_count(2.0);
    b.send(&frame(MAC_A, MAC_B, b"still")).expect("send");
    let got = a.recv(WAIT).expect("recv").expect("a still receives");
    assert_eq!(got.frame, frame(MAC_A, MAC_B, b"still"));
}

#[test]
fn burst_api_moves_many_frames_in_order() {
    burst_run(false, "");
}

/// The same with EVENT_IDX agreed: kicks follow the switch's avail_event
/// and calls come only when the driver arms them before waiting.
#[test]
fn burst_api_with_event_idx() {
    burst_run(true, "");
}

/// With EVENT_IDX and the switch polling after each burst (TX
/// notifications held off for up to 200 us, then re-armed with a re-check):
/// every frame still arrives, in order, and the polling windows were
/// entered (each one ends as a hit or a miss, counted).
#[test]
fn burst_api_with_event_idx_and_polling() {
    burst_run(true, ",poll-us=200");
}

fn burst_run(event_idx: bool, port_opts: &str) {
    let Setup {
        backend,
        mut a,
        mut b,
        _dir,
    } = setup_ports(
        &NetOptions {
            queue_size: 64,
            read_config: true,
            event_idx,
        },
        port_opts,
    );
    for d in [&a, &b] {
        assert_eq!(d.config().features & (1 << 29) != 0, event_idx);
    }
    // Learn B's MAC first, so A's frames are unicast.
    b.send(&frame(BCAST, MAC_B, b"hi")).expect("send");
    a.recv(WAIT).expect("recv").expect("a got b's hello");
    const N: u32 = 1000;
    let (mut next, mut got) = (0u32, 0u32);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while got < N {
        assert!(
            std::time::Instant::now() < deadline,
            "sent {next} got {got}"
        );
        // Bursts of up to 16, one kick each; the closure stops at N.
        let before = next;
        let queued = a
            .send_burst(16, |ram, slot| {
                if next >= N {
                    return Ok(None);
                }
                let f = frame(MAC_B, MAC_A, &next.to_le_bytes());
                ram.write(slot, &[0u8; 12])?;
                ram.write(slot + 12, &f)?;
                next += 1;
                Ok(Some(12 + f.len() as u32))
            })
            .expect("send burst");
        assert_eq!(queued as u32, next - before);
        let n = b
            .recv_burst(usize::MAX, |ram, slot, len| {
                assert_eq!(len, 12 + 18);
                let f = ram.read(slot + 12, 18)?;
                assert_eq!(f, frame(MAC_B, MAC_A, &got.to_le_bytes()));
                got += 1;
                Ok(())
            })
            .expect("recv burst");
        if n == 0 && queued == 0 {
            b.wait_rx_call(Duration::from_millis(10)).expect("wait");
        }
    }
    a.wait_tx_done(WAIT).expect("tx done");
    let m = backend.fetch_metrics().expect("metrics");
    assert_eq!(
        PvBackend::metric(&m, r#"pvbackend_net_tx_packets_total{port="b"}"#),
        Some(f64::from(N)),
        "{m}"
    );
    let windows = ["hits", "misses"]
        .map(|k| {
            PvBackend::metric(&m, &format!(r#"pvbackend_net_poll_{k}_total{{port="a"}}"#))
                .unwrap_or(0.0)
        })
        .iter()
        .sum::<f64>();
    if port_opts.contains("poll-us") {
        assert!(windows >= 1.0, "no polling window on port a\n{m}");
    } else {
        assert_eq!(windows, 0.0, "polling without poll-us\n{m}");
    }
}

const MAC_C: [u8; 6] = [0x52, 0x54, 0, 0, 0xcc, 3];

/// Receives the next frames on `port` and checks they are exactly
/// `frames`, in order.
fn expect_frames(port: &str, d: &mut NativeNetDriver, frames: &[&[u8]]) {
    for (i, want) in frames.iter().enumerate() {
        let got = d
            .recv(WAIT)
            .expect("recv")
            .unwrap_or_else(|| panic!("port {port}: frame {i} never arrived"));
        assert_eq!(
            got.frame, *want,
            "port {port}: frame {i} is not the one expected (a frame that should not reach it?)"
        );
    }
}

/// Three ports: a broadcast reaches both other ports and never the
/// ingress one, and unicast to a learned MAC reaches only that MAC's port.
///
/// Every step waits until its frames arrived before the next is sent, so
/// each port's receive order is fixed; a unicast that leaked to the third
/// port, or a broadcast copied back to its sender, shows up as an
/// unexpected frame in that order (each sender follows its unicast with a
/// broadcast marker, which a leaked copy would precede). The counters,
/// read once the last marker arrived (so every worker has finished every
/// frame before it), must match the deliveries exactly.
#[test]
fn three_ports_unicast_stays_private_and_broadcast_skips_the_ingress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, socks) = PvBackend::switch(dir.path(), &["a", "b", "c"]).expect("backend");
    let [mut a, mut b, mut c] =
        [0, 1, 2].map(|i| NativeNetDriver::connect(&socks[i], 64).expect("connect"));

    // Each port says hello with a broadcast: learned, flooded to the other
    // two.
    let hb = frame(BCAST, MAC_B, b"hello from b");
    b.send(&hb).expect("send");
    expect_frames("a", &mut a, &[&hb]);
    expect_frames("c", &mut c, &[&hb]);
    let hc = frame(BCAST, MAC_C, b"hello from c");
    c.send(&hc).expect("send");
    expect_frames("a", &mut a, &[&hc]);
    expect_frames("b", &mut b, &[&hc]);
    let ha = frame(BCAST, MAC_A, b"hello from a");
    a.send(&ha).expect("send");
    expect_frames("b", &mut b, &[&ha]);
    expect_frames("c", &mut c, &[&ha]);

    // A -> B unicast, then a broadcast marker from A.
    let u_ab = frame(MAC_B, MAC_A, &[0xab; 1000]);
    let ma = frame(BCAST, MAC_A, b"marker a");
    a.send(&u_ab).expect("send");
    a.send(&ma).expect("send");
    expect_frames("b", &mut b, &[&u_ab, &ma]);
    expect_frames("c", &mut c, &[&ma]);
    // B -> A unicast, then a broadcast marker from B.
    let u_ba = frame(MAC_A, MAC_B, &[0xba; 1000]);
    let mb = frame(BCAST, MAC_B, b"marker b");
    b.send(&u_ba).expect("send");
    b.send(&mb).expect("send");
    expect_frames("a", &mut a, &[&u_ba, &mb]);
    expect_frames("c", &mut c, &[&mb]);
    for d in [&mut a, &mut b, &mut c] {
        d.wait_tx_done(WAIT).expect("tx done");
    }

    // Every frame the switch delivered was received above: a broadcast
    // copied back to its sender or a leaked unicast would be counted here
    // even if it arrived after the checks.
    let m = backend.fetch_metrics().expect("metrics");
    let v = |s: &str| PvBackend::metric(&m, s).unwrap_or(-1.0);
    for (port, rx, tx, flooded) in [
        ("a", 3.0, 4.0, 2.0),
        ("b", 3.0, 4.0, 2.0),
        ("c", 1.0, 4.0, 1.0),
    ] {
        assert_eq!(
            v(&format!(
                "pvbackend_net_rx_packets_total{{port=\"{port}\"}}"
            )),
            rx,
            "{port}: {m}"
        );
        assert_eq!(
            v(&format!(
                "pvbackend_net_tx_packets_total{{port=\"{port}\"}}"
            )),
            tx,
            "{port}: {m}"
        );
        assert_eq!(
            v(&format!("pvbackend_net_flooded_total{{port=\"{port}\"}}")),
            flooded,
            "{port}: {m}"
        );
        assert_eq!(
            v(&format!("pvbackend_net_learned_macs{{port=\"{port}\"}}")),
            1.0,
            "{port}: {m}"
        );
    }
    for d in [&mut a, &mut b, &mut c] {
        assert_eq!(
            d.recv(Duration::ZERO).expect("recv"),
            None,
            "a frame left over"
        );
    }
}
