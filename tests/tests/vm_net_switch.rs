//! Our switch (pvbackend's vhost-user-net ports) between two guests running
//! the Linux kernel's own virtio-net driver (a real peer): ping both ways
//! over link-local addresses, a 4 MiB TCP transfer whose checksum is
//! computed at the far end, and MAC learning seen in the metrics while
//! both guests are up. Then three guests: a unicast stream between two of
//! them stays off the third's port, and a broadcast reaches both others.

use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::Guest;

const MAC_A: &str = "52:54:00:00:0a:01";
const MAC_B: &str = "52:54:00:00:0b:02";
const IP_A: &str = "169.254.10.1";
const IP_B: &str = "169.254.10.2";

/// Waits (up to 240 s) until `peer` answers a ping: the other guest boots
/// on its own schedule. Then three more pings, all answered.
fn ping(peer: &str) -> String {
    format!(
        "n=0; until ping -c 1 -W 1 {peer} >/dev/null; do n=$((n+1)); [ $n -lt 240 ] || exit 1; done\n\
         ping -c 3 -W 5 {peer}\n"
    )
}

/// Configures eth0 with `ip`/16 (and its broadcast address) and prints the MAC the kernel uses.
fn net_up(ip: &str) -> String {
    format!(
        r#"
ip link set eth0 up
ip addr add {ip}/16 brd + dev eth0
echo "pvtest: eth0 $(cat /sys/class/net/eth0/address) $(cat /sys/class/net/eth0/mtu)"
"#
    )
}

/// Boots a guest running `script` with its NIC (the kernel's virtio-net
/// driver) on the switch port at `sock`.
fn switch_guest(name: &str, sock: &std::path::Path, mac: &str, script: &str) -> Guest {
    Guest::builder(name)
        .memory_mib(256)
        .modules(["virtio_pci", "virtio_net"])
        .vhost_user_net(sock, mac)
        .script(script)
        .timeout(Duration::from_secs(900))
        .start()
        .expect("start guest")
}

fn sha_line<'a>(console: &'a str, tag: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.split_once(tag).map(|(_, rest)| rest.trim()))
}

#[test]
fn kernel_virtio_net_through_our_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, sock_a, sock_b) = PvBackend::two_port_switch(dir.path()).expect("backend");

    // A: receiver. Its listener is up before its address, so once B's
    // ping gets an answer the port is open.
    let script_a = format!(
        r#"
# nc's stdin is a FIFO this shell holds open: no EOF (which would make
# nc close its sending half), and nc exits when the sender finishes.
mkfifo /tmp/in
nc -l -p 5000 < /tmp/in > /tmp/recv &
NC=$!
exec 3> /tmp/in
until grep -q ':1388 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6; do sleep 0.2; done
{up}
{ping}echo "pvtest: ping from a ok"
wait $NC || true
exec 3>&-
echo "pvtest: a received $(wc -c < /tmp/recv) bytes"
echo "pvtest: recv sha256 $(sha256sum /tmp/recv | cut -d' ' -f1)"
"#,
        up = net_up(IP_A),
        ping = ping(IP_B),
    );
    // B: sender.
    let script_b = format!(
        r#"
dd if=/dev/urandom of=/tmp/data bs=64k count=64 2>/dev/null
echo "pvtest: sent sha256 $(sha256sum /tmp/data | cut -d' ' -f1)"
{up}
{ping}echo "pvtest: ping from b ok"
nc {IP_A} 5000 < /tmp/data
echo "pvtest: b sent"
"#,
        up = net_up(IP_B),
        ping = ping(IP_A),
    );
    let mut a = switch_guest("net-switch-a", &sock_a, MAC_A, &script_a);
    let b = switch_guest("net-switch-b", &sock_b, MAC_B, &script_b);

    // Both pings done means both MACs were learned; the guests are still
    // up (A waits for the transfer), so their ports are connected.
    if let Err(e) = a.wait_for_console("pvtest: ping from a ok", Duration::from_secs(600)) {
        panic!(
            "{e}\n--- a ---\n{}\n--- backend log ---\n{}",
            a.drain_console(),
            backend.log()
        );
    }
    let m = backend.fetch_metrics().expect("metrics");

    let out_b = b.wait();
    let out_a = a.wait();
    for out in [&out_a, &out_b] {
        if !out.passed() {
            panic!(
                "{}\n--- backend log ---\n{}",
                out.failure_report(),
                backend.log()
            );
        }
    }
    assert!(out_a.console_has(&format!("pvtest: eth0 {MAC_A}")));
    assert!(out_b.console_has(&format!("pvtest: eth0 {MAC_B}")));
    assert!(out_b.console_has("pvtest: ping from b ok"));
    assert!(
        out_a.console_has("pvtest: a received 4194304 bytes"),
        "{}",
        out_a.console
    );
    let sent = sha_line(&out_b.console, "pvtest: sent sha256 ").expect("sender's sum");
    let recv = sha_line(&out_a.console, "pvtest: recv sha256 ").expect("receiver's sum");
    assert_eq!(sent.len(), 64, "{sent}");
    assert_eq!(sent, recv, "the data arrived changed");

    // MAC learning, as the metrics showed it mid-run.
    let v = |s: &str| PvBackend::metric(&m, s).unwrap_or(0.0);
    for (port, mac) in [("a", MAC_A), ("b", MAC_B)] {
        let s = format!("pvbackend_switch_mac{{port=\"{port}\",mac=\"{mac}\"}}");
        assert_eq!(v(&s), 1.0, "{s} missing in:\n{m}");
        let s = format!("pvbackend_net_learned_macs{{port=\"{port}\"}}");
        assert!(v(&s) >= 1.0, "{s} in:\n{m}");
        // ARP broadcasts were flooded; pings crossed both ways.
        for dir in ["rx", "tx"] {
            let s = format!("pvbackend_net_{dir}_packets_total{{port=\"{port}\"}}");
            assert!(v(&s) >= 3.0, "{s} in:\n{m}");
        }
    }
    assert!(
        v(r#"pvbackend_net_flooded_total{port="a"}"#)
            + v(r#"pvbackend_net_flooded_total{port="b"}"#)
            >= 1.0,
        "no flooding (ARP) seen:\n{m}"
    );
    // Well-behaved kernel drivers trip none of the guest-fault drops.
    let m_end = backend.fetch_metrics().expect("metrics");
    for reason in [
        "runt",
        "oversized",
        "bad_header",
        "malformed_chain",
        "rx_chain",
    ] {
        for port in ["a", "b"] {
            let s = format!("pvbackend_net_drops_total{{port=\"{port}\",reason=\"{reason}\"}}");
            assert_eq!(PvBackend::metric(&m_end, &s), Some(0.0), "{s} in:\n{m_end}");
        }
    }
    // The 4 MiB crossed the switch from b to a.
    let bytes =
        PvBackend::metric(&m_end, r#"pvbackend_net_tx_bytes_total{port="a"}"#).unwrap_or(0.0);
    assert!(bytes >= 4194304.0, "a got only {bytes} bytes:\n{m_end}");

    let status = backend
        .stop(Duration::from_secs(30))
        .expect("signal")
        .expect("backend exits after SIGTERM");
    assert!(status.success(), "backend exit status {status}");
    assert!(
        !sock_a.exists() && !sock_b.exists(),
        "sockets removed on stop"
    );
}

const MAC_C: &str = "52:54:00:00:0c:03";
const IP_C: &str = "169.254.10.3";
const BROADCAST: &str = "169.254.255.255";

/// Three guests on three ports. A streams 4 MiB to B over TCP (unicast
/// between learned MACs both ways), then pings the broadcast address,
/// which B and C both answer; then tells B and C it is done. The switch
/// must have sent port c fewer frames than the stream alone needs: had the
/// stream (or its ACKs) been flooded, c would have been offered every one
/// of its frames.
#[test]
fn three_guests_unicast_stays_off_the_third_port() {
    const STREAM: u64 = 4 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, socks) = PvBackend::switch(dir.path(), &["a", "b", "c"]).expect("backend");

    // B and C answer broadcast pings, and stay up until A connects to
    // their port 5001 (their listeners are up before their addresses).
    let bystander = |ip: &str, extra: &str| {
        format!(
            r#"
echo 0 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts
nc -l -p 5001 > /tmp/bye &
BYE=$!
{extra}
until grep -q ':1389 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6; do sleep 0.2; done
{up}
wait $BYE
echo "pvtest: told $(cat /tmp/bye)"
"#,
            up = net_up(ip),
        )
    };
    let script_b = bystander(
        IP_B,
        r#"mkfifo /tmp/in
nc -l -p 5000 < /tmp/in > /tmp/recv &
NC=$!
exec 3> /tmp/in
until grep -q ':1388 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6; do sleep 0.2; done"#,
    ) + r#"
wait $NC || true
exec 3>&-
echo "pvtest: b received $(wc -c < /tmp/recv) bytes"
"#;
    let script_c = bystander(IP_C, "");
    let script_a = format!(
        r#"
dd if=/dev/urandom of=/tmp/data bs=64k count={blocks} 2>/dev/null
{up}
{ping_b}{ping_c}nc {IP_B} 5000 < /tmp/data
echo "pvtest: a sent"
ping -c 3 -W 10 {BROADCAST} > /tmp/bping || true
cat /tmp/bping
grep -q "from {IP_B}" /tmp/bping
grep -q "from {IP_C}" /tmp/bping
echo "pvtest: broadcast answered by b and c"
echo bye | nc {IP_B} 5001
echo bye | nc {IP_C} 5001
"#,
        blocks = STREAM / 65536,
        up = net_up(IP_A),
        ping_b = ping(IP_B),
        ping_c = ping(IP_C),
    );
    let b = switch_guest("net-switch3-b", &socks[1], MAC_B, &script_b);
    let c = switch_guest("net-switch3-c", &socks[2], MAC_C, &script_c);
    let a = switch_guest("net-switch3-a", &socks[0], MAC_A, &script_a);
    let outs = [a.wait(), b.wait(), c.wait()];
    for out in &outs {
        if !out.passed() {
            panic!(
                "{}\n--- backend log ---\n{}",
                out.failure_report(),
                backend.log()
            );
        }
    }
    assert!(outs[0].console_has("pvtest: broadcast answered by b and c"));
    assert!(
        outs[1].console_has(&format!("pvtest: b received {STREAM} bytes")),
        "{}",
        outs[1].console
    );

    // Every guest is gone: the counters are final.
    let m = backend.fetch_metrics().expect("metrics");
    let v = |s: &str| PvBackend::metric(&m, s).unwrap_or(0.0);
    // Bytes the switch sent towards c: delivered, or dropped at c (a
    // dropped frame counted at its largest, a 64 KiB TSO frame: with
    // offloads frames are not MTU-sized, so frames are not counted).
    let dropped_at_c = ["no_rx_buffer", "rx_chain", "oversized"]
        .iter()
        .map(|r| {
            v(&format!(
                "pvbackend_net_drops_total{{port=\"c\",reason=\"{r}\"}}"
            ))
        })
        .sum::<f64>();
    let to_c = v(r#"pvbackend_net_tx_bytes_total{port="c"}"#) + 65536.0 * dropped_at_c;
    let to_b = v(r#"pvbackend_net_tx_bytes_total{port="b"}"#);
    let stream = STREAM as f64;
    eprintln!("pvtest: bytes to b {to_b}, to c at most {to_c}, stream {stream}");
    assert!(to_b >= stream, "b got fewer bytes than the stream:\n{m}");
    assert!(
        to_c < stream,
        "port c was offered up to {to_c} bytes, the a-to-b stream alone is {stream}:\n{m}"
    );
}
