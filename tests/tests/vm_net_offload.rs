//! Offloads through our switch between two kernel guests: A negotiates
//! every offload the switch offers (checksum, TSO4/6, ECN, both ways), B's
//! NIC masks them all (QEMU `csum=off,guest_tso4=off,...`). A's TCP stream
//! to B leaves A as 64 KiB TSO frames with partial checksums, so the
//! switch must segment them and complete every checksum for B; B's plain
//! frames reach A as sent. Each direction moves 4 MiB of random data whose
//! sha256 the receiver computes, and the metrics show which path ran.

use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::Guest;

const MAC_A: &str = "52:54:00:00:0c:01";
const MAC_B: &str = "52:54:00:00:0d:02";
const IP_A: &str = "169.254.12.1";
const IP_B: &str = "169.254.12.2";

/// Every offload feature QEMU's virtio-net can mask.
const NO_OFFLOADS: &str = ",csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,\
host_ecn=off,host_ufo=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off";

/// Listens on 5000 into /tmp/recv, brings eth0 up at `me`, waits for
/// `peer`, sends 4 MiB of random data to it, then waits for the peer's
/// data and prints both sums and what the NIC offers.
fn script(me: &str, peer: &str) -> String {
    format!(
        r#"
dd if=/dev/urandom of=/tmp/data bs=64k count=64 2>/dev/null
echo "pvtest: sent sha256 $(sha256sum /tmp/data | cut -d' ' -f1)"
# nc's stdin is a FIFO this shell holds open: no EOF, and nc exits when
# the sender finishes.
mkfifo /tmp/in
nc -l -p 5000 < /tmp/in > /tmp/recv &
NC=$!
exec 3> /tmp/in
until grep -q ':1388 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6; do sleep 0.2; done
ip link set eth0 up
ip addr add {me}/16 brd + dev eth0
echo "pvtest: features $(cat /sys/class/net/eth0/device/features)"
n=0; until ping -c 1 -W 1 {peer} >/dev/null; do n=$((n+1)); [ $n -lt 240 ] || exit 1; done
# The peer's listener was up before its address: the port is open.
nc {peer} 5000 < /tmp/data
echo "pvtest: sent to {peer}"
wait $NC || true
exec 3>&-
echo "pvtest: received $(wc -c < /tmp/recv) bytes"
echo "pvtest: recv sha256 $(sha256sum /tmp/recv | cut -d' ' -f1)"
"#
    )
}

fn sha_line<'a>(console: &'a str, tag: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.split_once(tag).map(|(_, rest)| rest.trim()))
}

/// The virtio feature bit `bit` of a `features` line (sysfs prints the
/// bits as a string of 0/1, bit 0 first).
fn feature(console: &str, bit: usize) -> bool {
    sha_line(console, "pvtest: features ").and_then(|f| f.as_bytes().get(bit).copied())
        == Some(b'1')
}

#[test]
fn tcp_between_a_guest_with_offloads_and_one_without() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, sock_a, sock_b) = PvBackend::two_port_switch(dir.path()).expect("backend");
    let guest = |name: &str, sock: &std::path::Path, mac: &str, props: &str, script: &str| {
        Guest::builder(name)
            .memory_mib(256)
            .modules(["virtio_pci", "virtio_net"])
            .vhost_user_net_with(sock, mac, props)
            .script(script)
            .timeout(Duration::from_secs(1200))
            .start()
            .expect("start guest")
    };
    let a = guest("net-offload-a", &sock_a, MAC_A, "", &script(IP_A, IP_B));
    let b = guest(
        "net-offload-b",
        &sock_b,
        MAC_B,
        NO_OFFLOADS,
        &script(IP_B, IP_A),
    );
    let out_a = a.wait();
    let out_b = b.wait();
    let m = backend.fetch_metrics().expect("metrics");
    for out in [&out_a, &out_b] {
        if !out.passed() {
            panic!(
                "{}\n--- backend log ---\n{}\n--- metrics ---\n{m}",
                out.failure_report(),
                backend.log()
            );
        }
    }
    // A took CSUM (0) and HOST_TSO4 (11); B took neither.
    assert!(
        feature(&out_a.console, 0) && feature(&out_a.console, 11),
        "{}",
        out_a.console
    );
    assert!(
        !feature(&out_b.console, 0) && !feature(&out_b.console, 11),
        "{}",
        out_b.console
    );
    for (from, to) in [(&out_a, &out_b), (&out_b, &out_a)] {
        assert!(
            to.console_has("pvtest: received 4194304 bytes"),
            "{}",
            to.console
        );
        let sent = sha_line(&from.console, "pvtest: sent sha256 ").expect("sender's sum");
        let recv = sha_line(&to.console, "pvtest: recv sha256 ").expect("receiver's sum");
        assert_eq!(sent.len(), 64, "{sent}");
        assert_eq!(sent, recv, "the data arrived changed");
    }
    // A's TSO frames were segmented and checksummed for B; nothing of
    // A's was dropped for its headers.
    let v = |s: &str| PvBackend::metric(&m, s).unwrap_or(0.0);
    assert!(
        v(r#"pvbackend_net_offload_segmented_total{port="b"}"#) >= 1.0,
        "{m}"
    );
    assert!(
        v(r#"pvbackend_net_csum_completed_total{port="b"}"#) >= 1.0,
        "{m}"
    );
    for reason in [
        "bad_header",
        "gso_size",
        "hdr_len",
        "csum_offsets",
        "gso_frame",
        "oversized",
    ] {
        let s = format!("pvbackend_net_drops_total{{port=\"a\",reason=\"{reason}\"}}");
        assert_eq!(v(&s), 0.0, "{s}\n{m}");
    }
}
