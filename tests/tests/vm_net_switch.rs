//! Our switch (pvbackend's vhost-user-net ports) between two guests running
//! the Linux kernel's own virtio-net driver (a real peer): ping both ways
//! over link-local addresses, a 4 MiB TCP transfer whose checksum is
//! computed at the far end, and MAC learning seen in the metrics while
//! both guests are up.

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

/// Configures eth0 with `ip`/16 and prints the MAC the kernel uses.
fn net_up(ip: &str) -> String {
    format!(
        r#"
ip link set eth0 up
ip addr add {ip}/16 dev eth0
echo "pvtest: eth0 $(cat /sys/class/net/eth0/address) $(cat /sys/class/net/eth0/mtu)"
"#
    )
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
    let guest = |name: &str, sock: &std::path::Path, mac: &str, script: &str| {
        Guest::builder(name)
            .memory_mib(256)
            .modules(["virtio_pci", "virtio_net"])
            .vhost_user_net(sock, mac)
            .script(script)
            .timeout(Duration::from_secs(900))
            .start()
            .expect("start guest")
    };
    let mut a = guest("net-switch-a", &sock_a, MAC_A, &script_a);
    let b = guest("net-switch-b", &sock_b, MAC_B, &script_b);

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
