//! The pv-net Linux guest runtime (`pvnetd`) in a guest: it claims the
//! guest's virtio-net PCI function from the kernel, drives it with the
//! pv-net core, and exposes a TAP interface (`pvnet0`) that the guest's own
//! IP stack uses. The peer is another guest running the Linux kernel's
//! virtio-net driver (a real peer), joined to ours by QEMU's built-in
//! `-netdev stream` (QEMU's own virtio-net device on both sides) or by our
//! switch (pvbackend's vhost-user-net ports). On each: ping both ways and a
//! 4 MiB TCP transfer each way whose SHA-256 is computed at the far end;
//! then SIGTERM, and the kernel's virtio_net driver takes the device back.
//! Link-local addresses only; no `-netdev user`.

use std::path::Path;
use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::{Guest, GuestBuilder};

/// The runtime's guest (A) and the kernel-driver peer (B).
const MAC_A: &str = "52:54:00:00:1a:01";
const MAC_B: &str = "52:54:00:00:1b:02";
const IP_A: &str = "169.254.20.1";
const IP_B: &str = "169.254.20.2";
/// Bytes sent each way.
const BYTES: u64 = 4 << 20;

/// Shell helpers for A: start `pvnetd` on the PCI function behind eth0 and
/// wait for `pvnet0`; stop it with SIGTERM and wait until the kernel's
/// virtio_net has the function back.
const HELPERS: &str = r#"
start_pvnetd() {
  bdf=$(basename "$(readlink -f /sys/class/net/eth0/device/..)")
  echo $bdf > /tmp/bdf
  echo "pvtest: eth0 is $bdf"
  pvnetd --pci $bdf --ifname pvnet0 > /tmp/pvnetd.log 2>&1 &
  echo $! > /tmp/pvnetd.pid
  i=0
  while [ "$(cat /sys/class/net/pvnet0/carrier 2>/dev/null)" != 1 ]; do
    i=$((i+1))
    if [ $i -gt 300 ] || ! kill -0 $(cat /tmp/pvnetd.pid) 2>/dev/null; then
      echo "pvtest: pvnetd did not come up"; cat /tmp/pvnetd.log; return 1
    fi
    sleep 0.2
  done
  [ ! -e /sys/class/net/eth0 ] || { echo "pvtest: eth0 still there"; return 1; }
  echo "pvtest: pvnet0 $(cat /sys/class/net/pvnet0/address) $(cat /sys/class/net/pvnet0/mtu)"
}
stop_pvnetd() {
  pid=$(cat /tmp/pvnetd.pid); bdf=$(cat /tmp/bdf)
  kill -TERM $pid
  rc=0; wait $pid || rc=$?
  cat /tmp/pvnetd.log
  [ $rc = 0 ] || { echo "pvtest: pvnetd exit status $rc"; return 1; }
  [ ! -e /sys/class/net/pvnet0 ] || { echo "pvtest: pvnet0 still there"; return 1; }
  i=0
  while ! ls /sys/bus/pci/devices/$bdf/virtio*/net/ >/dev/null 2>&1; do
    i=$((i+1)); [ $i -le 150 ] || { echo "pvtest: no interface came back on $bdf"; return 1; }
    sleep 0.2
  done
  back=$(ls /sys/bus/pci/devices/$bdf/virtio*/net/)
  drv=$(basename "$(readlink /sys/bus/pci/devices/$bdf/virtio*/driver)")
  echo "pvtest: $bdf is back as $back ($drv) $(cat /sys/class/net/$back/address)"
}
"#;

/// Listen on `port` into /tmp/recv in the background (PID in $NC), and
/// return once the socket is listening. nc's stdin is a FIFO this shell
/// holds open (fd 3): no EOF, which would make nc close its sending half,
/// and nc exits when the sender finishes. busybox `nc -l` listens on `::`
/// when IPv6 is built in, so the socket may show in `/proc/net/tcp6`.
fn listen(port: u16) -> String {
    format!(
        r#"
mkfifo /tmp/in
nc -l -p {port} < /tmp/in > /tmp/recv &
NC=$!
exec 3> /tmp/in
i=0
until cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q ':{port:04X} [0-9A-F]*:0000 0A'; do
  i=$((i+1)); [ $i -le 300 ] && kill -0 $NC || {{ echo "pvtest: nc -l {port} not listening"; exit 1; }}
  sleep 0.2
done
"#
    )
}

/// Ping the peer, send it 4 MiB of random data, then report what we got.
fn exchange(me: &str, peer_ip: &str, peer_port: u16) -> String {
    format!(
        r#"
# The peer may still be booting: wait (bounded) for its first answer.
n=0
until ping -c 1 -W 2 {peer_ip} >/dev/null; do
  n=$((n+1)); [ $n -le 150 ] || {{ echo "pvtest: no answer from {peer_ip}"; exit 1; }}
done
ping -c 3 -W 10 {peer_ip}
echo "pvtest: ping from {me} ok"
dd if=/dev/urandom of=/tmp/data bs=64k count={blocks} 2>/dev/null
echo "pvtest: {me} sent sha256 $(sha256sum /tmp/data | cut -d' ' -f1)"
nc {peer_ip} {peer_port} < /tmp/data
echo "pvtest: {me} sent"
wait $NC || true
exec 3>&-
echo "pvtest: {me} received $(wc -c < /tmp/recv) bytes"
echo "pvtest: {me} recv sha256 $(sha256sum /tmp/recv | cut -d' ' -f1)"
"#,
        blocks = BYTES / 65536
    )
}

/// A: the runtime; it receives on 5001 and sends to B's 5000.
fn script_a() -> String {
    format!(
        r#"{HELPERS}
start_pvnetd
{listen}
ip addr add {IP_A}/16 dev pvnet0
{exchange}
stop_pvnetd
echo "pvtest: runtime scenario done"
"#,
        listen = listen(5001),
        exchange = exchange("a", IP_B, 5000),
    )
}

/// B: the kernel's virtio-net; it receives on 5000 and sends to A's 5001.
fn script_b() -> String {
    format!(
        r#"
{listen}
ip link set eth0 up
ip addr add {IP_B}/16 dev eth0
echo "pvtest: eth0 $(cat /sys/class/net/eth0/address)"
{exchange}
"#,
        listen = listen(5000),
        exchange = exchange("b", IP_A, 5001),
    )
}

fn runtime_guest(name: &str) -> GuestBuilder {
    Guest::builder(name)
        .cpus(2)
        .memory_mib(512)
        .modules(["virtio_pci", "virtio_net", "tun", "uio_pci_generic"])
        .binary("pvnetd")
        .script(&script_a())
        .timeout(Duration::from_secs(900))
}

fn kernel_guest(name: &str) -> GuestBuilder {
    Guest::builder(name)
        .memory_mib(256)
        .modules(["virtio_pci", "virtio_net"])
        .script(&script_b())
        .timeout(Duration::from_secs(900))
}

fn sha_line<'a>(console: &'a str, tag: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.split_once(tag).map(|(_, rest)| rest.trim()))
}

/// Both guests' verdicts, the data checked at each far end, the runtime's
/// TAP carrying the device's MAC, and the device back with virtio_net.
fn check(a: Guest, b: Guest, extra: &dyn Fn() -> String) {
    let out_b = b.wait();
    let out_a = a.wait();
    for out in [&out_a, &out_b] {
        if !out.passed() {
            panic!("{}\n{}", out.failure_report(), extra());
        }
    }
    assert!(out_a.console_has("pvtest: runtime scenario done"));
    assert!(
        out_a.console_has("pvnetd: pvnet0 serving"),
        "{}",
        out_a.console
    );
    assert!(out_a.console_has(&format!("pvtest: pvnet0 {MAC_A} 1500")));
    assert!(out_a.console_has("pvtest: ping from a ok"));
    assert!(out_b.console_has("pvtest: ping from b ok"));
    for (sender, receiver, out_s, out_r) in [("a", "b", &out_a, &out_b), ("b", "a", &out_b, &out_a)]
    {
        assert!(
            out_r.console_has(&format!("pvtest: {receiver} received {BYTES} bytes")),
            "{}",
            out_r.console
        );
        let sent = sha_line(&out_s.console, &format!("pvtest: {sender} sent sha256 "))
            .expect("sender's sum");
        let recv = sha_line(&out_r.console, &format!("pvtest: {receiver} recv sha256 "))
            .expect("receiver's sum");
        assert_eq!(sent.len(), 64, "{sent}");
        assert_eq!(
            sent, recv,
            "data from {sender} to {receiver} arrived changed"
        );
    }
    // Sleeps end on the device's INTx (uio_pci_generic), not only on
    // timers: the runtime took interrupts. (B's pings and data reach A
    // while it sleeps after seconds of setup; the count only stays 0 if no
    // interrupt is ever delivered.)
    assert!(
        out_a.console_has("wake-ups: INTx (uio_pci_generic)"),
        "{}",
        out_a.console
    );
    let interrupts = out_a
        .console
        .lines()
        .find_map(|l| {
            let (before, _) = l.split_once(" interrupts, poller")?;
            before.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no interrupt count in:\n{}", out_a.console));
    assert!(interrupts > 0, "no INTx taken:\n{}", out_a.console);
    // SIGTERM: TAP down, device reset, function back with virtio_net and
    // the MAC the device has.
    assert!(out_a.console_has("stopped cleanly"), "{}", out_a.console);
    assert!(
        out_a.console_has("released to the kernel"),
        "{}",
        out_a.console
    );
    assert!(
        out_a.console.lines().any(|l| l.contains(" is back as eth")
            && l.contains("(virtio_net)")
            && l.contains(MAC_A)),
        "{}",
        out_a.console
    );
}

#[test]
fn runtime_on_qemu_virtio_net_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("stream.sock");
    // A listens, B connects.
    let a = runtime_guest("pvnet-runtime-stream-a")
        .virtio_net_stream(&sock, true, MAC_A)
        .start()
        .expect("start guest a");
    wait_for_path(&sock);
    let b = kernel_guest("pvnet-runtime-stream-b")
        .virtio_net_stream(&sock, false, MAC_B)
        .start()
        .expect("start guest b");
    check(a, b, &String::new);
}

#[test]
fn runtime_on_our_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, sock_a, sock_b) = PvBackend::two_port_switch(dir.path()).expect("backend");
    let a = runtime_guest("pvnet-runtime-switch-a")
        .vhost_user_net(&sock_a, MAC_A)
        .start()
        .expect("start guest a");
    let b = kernel_guest("pvnet-runtime-switch-b")
        .vhost_user_net(&sock_b, MAC_B)
        .start()
        .expect("start guest b");
    check(a, b, &|| format!("--- backend log ---\n{}", backend.log()));

    // The switch saw our runtime's frames as well-formed: both MACs
    // learned, the 4 MiB crossed both ways, no guest-fault drops.
    let m = backend.fetch_metrics().expect("metrics");
    let v = |s: &str| PvBackend::metric(&m, s).unwrap_or(0.0);
    for port in ["a", "b"] {
        let s = format!("pvbackend_net_tx_bytes_total{{port=\"{port}\"}}");
        assert!(v(&s) >= BYTES as f64, "{s} in:\n{m}");
        for reason in ["runt", "oversized", "bad_header", "malformed_chain"] {
            let s = format!("pvbackend_net_drops_total{{port=\"{port}\",reason=\"{reason}\"}}");
            assert_eq!(v(&s), 0.0, "{s} in:\n{m}");
        }
    }
    let status = backend
        .stop(Duration::from_secs(30))
        .expect("signal")
        .expect("backend exits after SIGTERM");
    assert!(status.success(), "backend exit status {status}");
}

/// QEMU creates the stream socket once it listens.
fn wait_for_path(p: &Path) {
    for _ in 0..600 {
        if p.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} did not appear", p.display());
}
