//! pvbackend's Xen blkback end to end on the loopback fabric: the toolstack
//! command writes the devices, the real C `xenstored` carries the
//! handshake, every state transition is checked from the outside with the
//! C tools (`xenstore-watch`, `xenstore-read`), and pv-blk's Xen frontend
//! writes and verifies stamped blocks from its own process.
//!
//! The hypervisor is the fabric's broker, run in this test process; the
//! backend (`pvbackend xen blkback`) and the frontends (`pvxenblk`) are
//! separate processes.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pv_blk::pattern;
use pvtest::guest_bins::host_path_of;
use pvtest::process::ChildGuard;
use xenbus::platform::loopback::{Broker, LoopbackDomain};
use xenbus::xenstore::daemon::{tool, GuestDomain, Xenstored};
use xenbus::xenstore::state::XenbusState;
use xenbus::xenstore::wire::{Access, Perm};

const WAIT: Duration = Duration::from_secs(120);
const DISK_BYTES: u64 = 8 << 20;

struct Fabric {
    xs: Xenstored,
    broker: Broker,
    dir: tempfile::TempDir,
}

fn fabric() -> Fabric {
    let dir = tempfile::tempdir().expect("tempdir");
    let xs = Xenstored::start();
    let broker = Broker::spawn(dir.path().join("broker")).expect("broker");
    Fabric { xs, broker, dir }
}

fn image(f: &Fabric, name: &str) -> PathBuf {
    let p = f.dir.path().join(name);
    let file = fs::File::create(&p).expect("image");
    file.set_len(DISK_BYTES).expect("size");
    p
}

fn pvbackend() -> PathBuf {
    host_path_of("pvbackend").expect("build pvbackend")
}

fn xen_cmd(f: &Fabric, args: &[&str]) -> std::process::Output {
    Command::new(pvbackend())
        .arg("xen")
        .args(args)
        .arg("--xenstore")
        .arg(f.xs.socket())
        .output()
        .expect("run pvbackend xen")
}

fn create_vbd(f: &Fabric, domid: u16, devid: u32, img: &Path) {
    let out = xen_cmd(
        f,
        &[
            "create-vbd",
            "--domid",
            &domid.to_string(),
            "--devid",
            &devid.to_string(),
            "--target",
            &img.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "create-vbd: {out:?}");
}

fn blkback(f: &Fabric) -> ChildGuard {
    let log = fs::File::create(f.dir.path().join("blkback.log")).expect("log");
    let mut cmd = Command::new(pvbackend());
    cmd.args(["xen", "blkback", "--broker"])
        .arg(f.broker.path())
        .arg("--xenstore")
        .arg(f.xs.socket())
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    ChildGuard::spawn("pvbackend xen blkback", &mut cmd).expect("start blkback")
}

fn blkback_log(f: &Fabric) -> String {
    fs::read_to_string(f.dir.path().join("blkback.log")).unwrap_or_default()
}

/// `xenstore-read` (the C tool): the value, or None if it fails.
fn c_read(f: &Fabric, path: &str) -> Option<String> {
    let out = f.xs.cli("xenstore-read", &[path]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// Wait until `path` reads `want`, as seen by the C tools: `xenstore-watch`
/// wakes us on every change, `xenstore-read` reads the value.
fn c_wait_value(f: &Fabric, path: &str, want: &str) {
    let mut w = Command::new(tool("xenstore-watch"))
        .arg(path)
        .env("XENSTORED_PATH", f.xs.socket())
        .stdout(Stdio::piped())
        .spawn()
        .expect("xenstore-watch");
    let (tx, rx) = mpsc::channel();
    let out = w.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let ok = loop {
        let v = c_read(f, path);
        if v.as_deref() == Some(want) {
            break true;
        }
        seen.push(v);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        // A watch event (or the first fire) means: read again.
        if rx.recv_timeout(left).is_err() {
            break false;
        }
    };
    let _ = w.kill();
    let _ = w.wait();
    assert!(
        ok,
        "{path} never became {want:?} (read: {seen:?}); blkback log:\n{}",
        blkback_log(f)
    );
}

fn verify_image(img: &Path, blocks: u64, seed: u64) {
    let data = fs::read(img).expect("read image");
    for i in 0..blocks {
        let b = &data[(i * 4096) as usize..((i + 1) * 4096) as usize];
        pattern::verify(b, seed, i).unwrap_or_else(|e| panic!("image block {i}: {e}"));
    }
}

#[test]
fn toolstack_and_blkback_handshake_every_state_seen_by_the_c_tools() {
    let f = fabric();
    let img = image(&f, "disk.img");
    let (domid, devid) = (5u16, 51712u32);
    let fe = format!("/local/domain/{domid}/device/vbd/{devid}");
    let be = format!("/local/domain/0/backend/vbd/{domid}/{devid}");
    create_vbd(&f, domid, devid, &img);

    // What the toolstack wrote, read by the C client, and the permissions
    // `xl` sets: the guest owns its frontend (dom0 may read), dom0 owns the
    // backend (the guest may read).
    assert_eq!(
        c_read(&f, &format!("{fe}/backend")).as_deref(),
        Some(&be[..])
    );
    assert_eq!(
        c_read(&f, &format!("{be}/frontend")).as_deref(),
        Some(&fe[..])
    );
    assert_eq!(c_read(&f, &format!("{fe}/state")).as_deref(), Some("1"));
    assert_eq!(c_read(&f, &format!("{be}/state")).as_deref(), Some("1"));
    assert_eq!(
        c_read(&f, &format!("{be}/params")).as_deref(),
        Some(&img.to_string_lossy()[..])
    );
    let mut dom0 = f.xs.client();
    assert_eq!(
        dom0.get_perms(&fe).expect("fe perms"),
        [Perm::new(Access::None, 5), Perm::new(Access::Read, 0)]
    );
    assert_eq!(
        dom0.get_perms(&be).expect("be perms"),
        [Perm::new(Access::None, 0), Perm::new(Access::Read, 5)]
    );

    f.xs.introduce(&mut dom0, u32::from(domid));
    let mut back = blkback(&f);
    // Backend: Initialising -> InitWait, with its features.
    c_wait_value(&f, &format!("{be}/state"), "2");
    assert_eq!(
        c_read(&f, &format!("{be}/max-ring-page-order")).as_deref(),
        Some("4")
    );
    assert_eq!(
        c_read(&f, &format!("{be}/feature-flush-cache")).as_deref(),
        Some("1")
    );
    assert_eq!(
        c_read(&f, &format!("{be}/sectors")).as_deref(),
        Some(&(DISK_BYTES / 512).to_string()[..])
    );

    // The frontend (domain 5, over its xenstore ring page and the fabric)
    // publishes its ring: Initialised; the backend maps it: Connected.
    let plat = LoopbackDomain::connect(f.broker.path(), domid, 256).expect("dom5");
    let mut guest = GuestDomain::attach(f.xs.dir(), u32::from(domid)).expect("ring");
    let c = &mut guest.client;
    let mut conn = pv_blk_linux::xen::initialise(c, &plat, domid, devid, 2).expect("initialise");
    c_wait_value(&f, &format!("{fe}/state"), "3");
    assert_eq!(
        c_read(&f, &format!("{fe}/ring-page-order")).as_deref(),
        Some("2")
    );
    assert!(c_read(&f, &format!("{fe}/ring-ref3")).is_some());
    c_wait_value(&f, &format!("{be}/state"), "4");
    pv_blk_linux::xen::finish_connect(c, &conn).expect("connect");
    c_wait_value(&f, &format!("{fe}/state"), "4");

    // Data flows (the process-separated check is the next test).
    let r = pv_blk_linux::xen::run_pattern(&plat, &mut conn, 16, 7, 8).expect("pattern");
    assert_eq!(r.blocks, 16);
    verify_image(&img, 16, 7);

    // Close: frontend Closing -> backend Closed -> frontend Closed.
    let pv_blk_linux::xen::Connected { front, me } = conn;
    drop(front);
    me.set_state(c, XenbusState::Closing).expect("closing");
    c_wait_value(&f, &format!("{fe}/state"), "5");
    c_wait_value(&f, &format!("{be}/state"), "6");
    me.set_state(c, XenbusState::Closed).expect("closed");
    c_wait_value(&f, &format!("{fe}/state"), "6");

    // The toolstack removes the device; both directories go.
    let out = xen_cmd(&f, &["destroy-vbd", "--domid", "5", "--devid", "51712"]);
    assert!(out.status.success(), "destroy-vbd: {out:?}");
    assert_eq!(c_read(&f, &be), None);
    assert_eq!(c_read(&f, &fe), None);
    assert!(
        back.try_wait().expect("blkback").is_none(),
        "blkback died:\n{}",
        blkback_log(&f)
    );
    back.signal(libc::SIGTERM).expect("SIGTERM");
    let st = back
        .wait_timeout(WAIT)
        .expect("wait")
        .expect("blkback stops");
    assert!(st.success(), "blkback exit {st}:\n{}", blkback_log(&f));
}

fn pvxenblk(f: &Fabric, domid: u16, devid: u32, order: u32, blocks: u64, seed: u64) {
    let out = Command::new(host_path_of("pvxenblk").expect("build pvxenblk"))
        .arg("--broker")
        .arg(f.broker.path())
        .arg("--xenstore-dir")
        .arg(f.xs.dir())
        .args([
            "--domid",
            &domid.to_string(),
            "--devid",
            &devid.to_string(),
            "--max-ring-page-order",
            &order.to_string(),
            "--blocks",
            &blocks.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .output()
        .expect("run pvxenblk");
    assert!(
        out.status.success(),
        "pvxenblk dom{domid} failed: {}\n{}\nblkback log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        blkback_log(f)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("verified {blocks} blocks"))
            && text.contains(&format!("ring-page-order {order}")),
        "{text}"
    );
}

#[test]
fn stamped_write_verify_from_frontend_processes_single_and_multi_page_rings() {
    let f = fabric();
    let mut dom0 = f.xs.client();
    let images: Vec<PathBuf> = (0..2).map(|i| image(&f, &format!("d{i}.img"))).collect();
    for (i, img) in images.iter().enumerate() {
        let domid = 5 + i as u16;
        create_vbd(&f, domid, 51712, img);
        f.xs.introduce(&mut dom0, u32::from(domid));
    }
    let mut back = blkback(&f);
    // Domain 5 on a one-page ring, domain 6 on a four-page ring (64 blocks
    // in batches of 32: more than one page's 32 slots are in use).
    pvxenblk(&f, 5, 51712, 0, 64, 11);
    pvxenblk(&f, 6, 51712, 2, 256, 12);
    verify_image(&images[0], 64, 11);
    verify_image(&images[1], 256, 12);
    // Each frontend closed; each backend followed to Closed.
    for domid in [5, 6] {
        c_wait_value(
            &f,
            &format!("/local/domain/0/backend/vbd/{domid}/51712/state"),
            "6",
        );
    }
    assert!(
        back.try_wait().expect("blkback").is_none(),
        "blkback died:\n{}",
        blkback_log(&f)
    );
    drop(dom0);
}

/// A hostile frontend (domain 5, driven by hand here) sends requests with
/// bad grant refs, segments out of their page, sectors past the disk,
/// unknown and unoffered operations: each gets an error response with its
/// id and the ring goes on (valid writes, a discard and a flush on it land
/// in the image); then it runs `req_prod` ahead of the ring: the
/// backend disconnects that device only. Domain 6's disk is served
/// throughout, and the backend process never dies.
#[test]
fn a_hostile_frontend_cannot_crash_or_wedge_the_backend() {
    use core::sync::atomic::{AtomicU32, Ordering};
    use std::ptr::NonNull;
    use xenbus::platform::{EventChannels, GrantTable, SharedPages};
    use xenbus::ring::{FrontRing, RingRegion, PAGE_SIZE};
    use xenbus::wire::blkif::{
        BlkifRequest, BlkifRequestDiscard, BlkifResponse, OP_DISCARD, OP_FLUSH_DISKCACHE,
        OP_INDIRECT, OP_READ, OP_WRITE, RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY,
    };
    use xenbus::xenstore::state::XenbusEndpoint;
    use zerocopy::{FromZeros, IntoBytes};

    let f = fabric();
    let mut dom0 = f.xs.client();
    let imgs: Vec<PathBuf> = (0..2).map(|i| image(&f, &format!("h{i}.img"))).collect();
    for (i, img) in imgs.iter().enumerate() {
        create_vbd(&f, 5 + i as u16, 51712, img);
        f.xs.introduce(&mut dom0, 5 + i as u32);
    }
    let mut back = blkback(&f);
    let fe = "/local/domain/5/device/vbd/51712";
    let be = "/local/domain/0/backend/vbd/5/51712";

    let plat = LoopbackDomain::connect(f.broker.path(), 5, 16).expect("dom5");
    let mut guest = GuestDomain::attach(f.xs.dir(), 5).expect("ring");
    let c = &mut guest.client;
    let me = XenbusEndpoint::new(fe, be, "hostile");
    me.watch_peer(c).expect("watch");
    c_wait_value(&f, &format!("{be}/state"), "2");
    let ring_page = plat.alloc_pages(1).expect("ring page");
    let ring_ref = plat.grant(0, ring_page, false).expect("grant ring");
    // SAFETY: one page of our memory, used only through this ring (and the
    // atomic poke below) until the end of the test.
    let region = unsafe { RingRegion::new(ring_page, PAGE_SIZE) }.expect("region");
    let mut ring: FrontRing<'_, BlkifRequest, BlkifResponse> =
        FrontRing::init(region).expect("ring");
    let port = plat.alloc_unbound(0).expect("port");
    let (rr, ev) = (ring_ref.to_string(), port.to_string());
    me.publish(
        c,
        &[
            ("ring-ref", rr.as_bytes()),
            ("event-channel", ev.as_bytes()),
            ("protocol", b"x86_64-abi"),
        ],
        Some(XenbusState::Initialised),
    )
    .expect("publish");
    c_wait_value(&f, &format!("{be}/state"), "4");

    let data = plat.alloc_pages(4).expect("data pages");
    let page = |i: usize| NonNull::new(data.as_ptr().wrapping_add(i * PAGE_SIZE)).expect("page");
    let rw = plat.grant(0, page(0), false).expect("rw");
    let ro = plat.grant(0, page(1), true).expect("ro");
    let other_dom = plat.grant(3, page(2), false).expect("to dom3");
    let revoked = plat.grant(0, page(3), false).expect("to revoke");
    // SAFETY: `revoked` was just granted and never mapped.
    unsafe { plat.end_access(revoked) }.expect("revoke");

    let req = |id: u64, op: u8, sector: u64, segs: &[(u32, u8, u8)]| {
        let mut r = BlkifRequest::new_zeroed();
        r.operation = op;
        r.id = id;
        r.sector_number = sector;
        r.nr_segments = segs.len() as u8;
        for (i, (g, a, b)) in segs.iter().enumerate() {
            r.seg[i].gref = *g;
            r.seg[i].first_sect = *a;
            r.seg[i].last_sect = *b;
        }
        r
    };
    let sectors = DISK_BYTES / 512;
    let mut zero_segs = req(10, OP_READ, 0, &[]);
    zero_segs.nr_segments = 0;
    let mut many_segs = req(11, OP_READ, 0, &[(rw, 0, 7)]);
    many_segs.nr_segments = 200;
    let cases: Vec<(BlkifRequest, i16)> = vec![
        (req(1, OP_READ, 0, &[(4000, 0, 7)]), RSP_ERROR), // never granted
        (req(2, OP_READ, 0, &[(other_dom, 0, 7)]), RSP_ERROR), // granted to dom3
        (req(3, OP_READ, 0, &[(ro, 0, 7)]), RSP_ERROR),   // read into a read-only grant
        (req(4, OP_READ, 0, &[(revoked, 0, 7)]), RSP_ERROR), // revoked
        (req(5, OP_WRITE, 0, &[(rw, 3, 8)]), RSP_ERROR),  // past the page
        (req(6, OP_WRITE, 0, &[(rw, 5, 2)]), RSP_ERROR),  // backwards
        (req(7, OP_READ, sectors - 7, &[(rw, 0, 7)]), RSP_ERROR), // past the disk
        (req(8, 9, 0, &[]), RSP_ERROR),                   // unknown operation
        (req(9, OP_INDIRECT, 0, &[]), RSP_EOPNOTSUPP),    // not offered
        (zero_segs, RSP_ERROR),
        (many_segs, RSP_ERROR),
        // And the ring still works: write page 0 through its grant and a
        // read-only grant, read it back.
        (req(12, OP_WRITE, 8, &[(rw, 0, 7)]), RSP_OKAY),
        (req(13, OP_WRITE, 16, &[(ro, 0, 7)]), RSP_OKAY),
    ];
    for (i, byte) in [(0, 0xAB), (1, 0xCD)] {
        // SAFETY: page `i` is ours and no request is in flight yet.
        unsafe { std::ptr::write_bytes(page(i).as_ptr(), byte, PAGE_SIZE) };
    }
    for (r, _) in &cases {
        ring.push_request(r).expect("push");
    }
    if ring.push_requests_and_check_notify().expect("publish") {
        plat.notify(port).expect("notify");
    }
    let mut got: Vec<BlkifResponse> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < cases.len() {
        while let Some(r) = ring.consume_response().expect("responses") {
            got.push(r);
        }
        if got.len() < cases.len() {
            assert!(
                Instant::now() < deadline,
                "backend wedged; log:\n{}",
                blkback_log(&f)
            );
            plat.wait(port, Some(Duration::from_secs(1))).expect("wait");
        }
    }
    for (r, want) in &cases {
        let rsp = got.iter().find(|g| g.id == r.id).expect("answered");
        assert_eq!(
            (rsp.status, rsp.operation),
            (*want, r.operation),
            "request {} (op {})",
            r.id,
            r.operation
        );
    }
    let img = fs::read(&imgs[0]).expect("image");
    assert_eq!(&img[8 * 512..16 * 512], &[0xAB; 4096][..]);
    assert_eq!(&img[16 * 512..24 * 512], &[0xCD; 4096][..]);
    assert!(
        img[..8 * 512].iter().all(|b| *b == 0),
        "refused requests wrote nothing"
    );

    // Discard and flush on the same ring: the discarded block reads back
    // as zeroes in the image (a hole punched in the file).
    let mut d = BlkifRequestDiscard::new_zeroed();
    d.operation = OP_DISCARD;
    d.id = 14;
    d.sector_number = 8;
    d.nr_sectors = 8;
    let mut slot = BlkifRequest::new_zeroed();
    slot.as_mut_bytes()[..size_of::<BlkifRequestDiscard>()].copy_from_slice(d.as_bytes());
    ring.push_request(&slot).expect("push discard");
    ring.push_request(&req(15, OP_FLUSH_DISKCACHE, 0, &[]))
        .expect("push flush");
    if ring.push_requests_and_check_notify().expect("publish") {
        plat.notify(port).expect("notify");
    }
    let mut more: Vec<BlkifResponse> = Vec::new();
    while more.len() < 2 {
        while let Some(r) = ring.consume_response().expect("responses") {
            more.push(r);
        }
        if more.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "backend wedged; log:\n{}",
                blkback_log(&f)
            );
            plat.wait(port, Some(Duration::from_secs(1))).expect("wait");
        }
    }
    let statuses: Vec<(u64, u8, i16)> =
        more.iter().map(|r| (r.id, r.operation, r.status)).collect();
    assert_eq!(
        statuses,
        [
            (14, OP_DISCARD, RSP_OKAY),
            (15, OP_FLUSH_DISKCACHE, RSP_OKAY)
        ]
    );
    let img = fs::read(&imgs[0]).expect("image");
    assert!(
        img[8 * 512..16 * 512].iter().all(|b| *b == 0),
        "the discarded block still holds data"
    );
    assert_eq!(
        &img[16 * 512..24 * 512],
        &[0xCD; 4096][..],
        "discard stayed in range"
    );

    // Run the producer index ahead of the ring: the backend must drop the
    // device (Closed), not loop or crash.
    let size = ring.size();
    let rsp_prod = (got.len() + more.len()) as u32;
    // SAFETY: offset 0 of our ring page is `req_prod`, a 4-aligned u32
    // only ever accessed atomically (by the ring and the backend).
    let req_prod = unsafe { AtomicU32::from_ptr(ring_page.as_ptr().cast::<u32>()) };
    req_prod.store(rsp_prod + size + 7, Ordering::SeqCst);
    plat.notify(port).expect("notify");
    c_wait_value(&f, &format!("{be}/state"), "6");
    assert!(
        blkback_log(&f).contains("broke the ring"),
        "{}",
        blkback_log(&f)
    );

    // Domain 6 is served as if nothing happened, by the same process.
    pvxenblk(&f, 6, 51712, 1, 32, 21);
    verify_image(&imgs[1], 32, 21);
    assert!(
        back.try_wait().expect("blkback").is_none(),
        "blkback died:\n{}",
        blkback_log(&f)
    );
}
