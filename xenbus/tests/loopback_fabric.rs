//! The loopback fabric enforces grants the way Xen does: a map of a ref
//! granted to another domain, of a revoked or never-granted ref, or a
//! writable map of a read-only grant is refused; a mapped grant cannot be
//! revoked; a read-only map cannot be made writable; event channels bind
//! only to ports allocated for the binder. One test runs the frontend in a
//! separate process.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use xenbus::platform::loopback::{Broker, BrokerRefusal, FabricError, LoopbackDomain};
use xenbus::platform::{EventChannels, GrantMapper, GrantTable, PlatformError, SharedPages};
use xenbus::ring::PAGE_SIZE;

const T: Option<Duration> = Some(Duration::from_secs(30));

fn broker() -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::spawn(dir.path().join("broker")).expect("broker");
    (dir, b)
}

fn refused(r: Result<NonNull<u8>, FabricError>) -> BrokerRefusal {
    match r {
        Err(FabricError::Refused(e)) => e,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("the map was allowed"),
    }
}

fn fill(p: NonNull<u8>, byte: u8) {
    // SAFETY: `p` is a page of this domain's memory (alloc_pages) or a
    // writable map of one; the test is the only local user of it.
    unsafe { std::ptr::write_bytes(p.as_ptr(), byte, PAGE_SIZE) }
}

fn read(p: NonNull<u8>) -> Vec<u8> {
    let mut v = vec![0u8; PAGE_SIZE];
    // SAFETY: `p` is a mapped page (valid for PAGE_SIZE reads) that no one
    // writes concurrently in this test.
    unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), v.as_mut_ptr(), PAGE_SIZE) };
    v
}

#[test]
fn grants_are_checked_for_domain_type_and_revocation() {
    let (_d, b) = broker();
    let front = LoopbackDomain::connect(b.path(), 5, 16).expect("dom5");
    let back = LoopbackDomain::connect(b.path(), 0, 0).expect("dom0");
    let other = LoopbackDomain::connect(b.path(), 3, 0).expect("dom3");
    assert!(matches!(
        LoopbackDomain::connect(b.path(), 5, 1),
        Err(FabricError::Refused(BrokerRefusal::Busy))
    ));

    let page = front.alloc_pages(1).expect("page");
    fill(page, 0xA5);
    let g = front.grant(0, page, false).expect("grant");

    // Granted to dom0: dom3 may not map it.
    assert_eq!(
        refused(other.map_grants(5, &[g], false)),
        BrokerRefusal::WrongDomain
    );
    // Out of range and never granted.
    assert_eq!(
        refused(back.map_grants(5, &[1 << 20], false)),
        BrokerRefusal::BadRef
    );
    assert_eq!(
        refused(back.map_grants(5, &[g + 1], false)),
        BrokerRefusal::BadRef
    );
    // No such granter.
    assert_eq!(
        refused(back.map_grants(9, &[g], false)),
        BrokerRefusal::NoDomain
    );

    let m = back.map_grants(5, &[g], true).expect("dom0 maps");
    assert_eq!(read(m), vec![0xA5; PAGE_SIZE], "the backend sees the page");
    fill(m, 0x3C);
    assert_eq!(
        read(page),
        vec![0x3C; PAGE_SIZE],
        "the frontend sees the write"
    );

    // SAFETY: `g` was granted above and is not revoked.
    let busy = unsafe { front.end_access(g) };
    assert_eq!(busy, Err(PlatformError::GrantInUse), "mapped grants stay");

    // SAFETY: `m` is the one-page map above, unused from here on.
    unsafe { back.unmap(m, 1) };
    // SAFETY: as above; the map is gone, so revocation succeeds.
    unsafe { front.end_access(g) }.expect("revoke after unmap");
    assert_eq!(
        refused(back.map_grants(5, &[g], false)),
        BrokerRefusal::BadRef,
        "a revoked ref cannot be mapped"
    );
}

#[test]
fn read_only_grants_cannot_be_written() {
    let (_d, b) = broker();
    let front = LoopbackDomain::connect(b.path(), 5, 4).expect("dom5");
    let back = LoopbackDomain::connect(b.path(), 0, 0).expect("dom0");
    let page = front.alloc_pages(1).expect("page");
    fill(page, 0x11);
    let g = front.grant(0, page, true).expect("grant ro");
    assert_eq!(
        refused(back.map_grants(5, &[g], true)),
        BrokerRefusal::ReadOnly
    );
    let m = back.map_grants(5, &[g], false).expect("read-only map");
    assert_eq!(read(m), vec![0x11; PAGE_SIZE]);
    // The kernel refuses to make it writable: the descriptor is read-only.
    match back.try_make_writable(m) {
        Err(FabricError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}"),
        other => panic!("a read-only map became writable: {other:?}"),
    }
    // SAFETY: `g` is granted and not revoked.
    let busy = unsafe { front.end_access(g) };
    assert_eq!(busy, Err(PlatformError::GrantInUse));
    // SAFETY: `m` is the map above, unused from here on.
    unsafe { back.unmap(m, 1) };
    // SAFETY: as above.
    unsafe { front.end_access(g) }.expect("revoke");
}

#[test]
fn a_failed_multi_page_map_leaves_nothing_pinned() {
    let (_d, b) = broker();
    let front = LoopbackDomain::connect(b.path(), 5, 4).expect("dom5");
    let back = LoopbackDomain::connect(b.path(), 0, 0).expect("dom0");
    let pages = front.alloc_pages(2).expect("pages");
    let p1 = NonNull::new(pages.as_ptr().wrapping_add(PAGE_SIZE)).expect("page 1");
    let g0 = front.grant(0, pages, false).expect("grant 0");
    let g1 = front.grant(0, p1, true).expect("grant 1 ro");
    fill(pages, 1);
    fill(p1, 2);
    // The second page is read-only: a writable map of both fails...
    assert_eq!(
        refused(back.map_grants(5, &[g0, g1], true)),
        BrokerRefusal::ReadOnly
    );
    // ...and left the first unpinned, so it can be revoked.
    // SAFETY: `g0` is granted and not revoked.
    unsafe { front.end_access(g0) }.expect("g0 not left pinned");
    let g0 = front.grant(0, pages, false).expect("grant 0 again");
    // A read-only map of both is contiguous, in gref order.
    let m = back.map_grants(5, &[g1, g0], false).expect("map both");
    let hi = NonNull::new(m.as_ptr().wrapping_add(PAGE_SIZE)).expect("second");
    assert_eq!(read(m), vec![2; PAGE_SIZE]);
    assert_eq!(read(hi), vec![1; PAGE_SIZE]);
    // SAFETY: `m` is the two-page map above, unused from here on.
    unsafe { back.unmap(m, 2) };
    // Only the domain's own memory can be granted.
    let local = Box::new([0u8; 2 * PAGE_SIZE]);
    let addr = (local.as_ptr() as usize).next_multiple_of(PAGE_SIZE);
    let foreign = NonNull::new(addr as *mut u8).expect("non-null");
    assert!(front.grant(0, foreign, false).is_err());
}

#[test]
fn a_dead_mapper_releases_its_pins() {
    let (_d, b) = broker();
    let front = LoopbackDomain::connect(b.path(), 5, 4).expect("dom5");
    let g = {
        let back = LoopbackDomain::connect(b.path(), 0, 0).expect("dom0");
        let page = front.alloc_pages(1).expect("page");
        let g = front.grant(0, page, false).expect("grant");
        let _m = back.map_grants(5, &[g], true).expect("map");
        // SAFETY: `g` is granted and not revoked.
        let busy = unsafe { front.end_access(g) };
        assert_eq!(busy, Err(PlatformError::GrantInUse));
        g
        // `back` disconnects here without unmapping.
    };
    // The broker notices the hang-up asynchronously: wait for the revoke to
    // go through, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // SAFETY: `g` is granted and not revoked (failed attempts change
        // nothing).
        match unsafe { front.end_access(g) } {
            Ok(()) => break,
            Err(PlatformError::GrantInUse) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("the dead mapper's pin was never released: {e}"),
        }
    }
    // And dom0's id can join again.
    LoopbackDomain::connect(b.path(), 0, 0).expect("dom0 again");
}

#[test]
fn event_channels_bind_only_for_their_remote_and_wake_both_ways() {
    let (_d, b) = broker();
    let front = LoopbackDomain::connect(b.path(), 5, 1).expect("dom5");
    let back = LoopbackDomain::connect(b.path(), 0, 0).expect("dom0");
    let other = LoopbackDomain::connect(b.path(), 3, 0).expect("dom3");
    let fp = front.alloc_unbound(0).expect("alloc unbound");
    assert_eq!(
        other.bind_interdomain(5, fp),
        Err(PlatformError::BadPeerReference),
        "the port was allocated for dom0"
    );
    assert_eq!(
        back.bind_interdomain(5, fp + 100),
        Err(PlatformError::BadPeerReference)
    );
    // A notification sent before the bind is not lost.
    front.notify(fp).expect("early notify");
    let bp = back.bind_interdomain(5, fp).expect("bind");
    assert_eq!(
        back.bind_interdomain(5, fp),
        Err(PlatformError::BadPeerReference),
        "already bound"
    );
    assert!(back.wait(bp, T).expect("wait"), "pending after bind");
    assert!(
        !back.wait(bp, Some(Duration::ZERO)).expect("poll"),
        "consumed"
    );
    back.notify(bp).expect("notify front");
    assert!(front.wait(fp, T).expect("front wait"));
    front.notify(fp).expect("notify back");
    assert!(back.wait(bp, T).expect("back wait"));
    back.close(bp);
    front.close(fp);
    assert_eq!(front.notify(fp), Err(PlatformError::BadPeerReference));
}

/// The frontend runs in a child process (this test binary re-run with
/// `PVXEN_LOOPBACK_CHILD` set): it grants a page and allocates a port, the
/// parent (dom0) maps and answers, the child checks the answer.
#[test]
fn a_frontend_process_and_a_backend_share_a_page_and_events() {
    if let Ok(path) = std::env::var("PVXEN_LOOPBACK_CHILD") {
        let front = LoopbackDomain::connect(&path, 7, 4).expect("child joins");
        let page = front.alloc_pages(1).expect("page");
        fill(page, 0x77);
        let g = front.grant(0, page, false).expect("grant");
        let port = front.alloc_unbound(0).expect("port");
        println!("READY {g} {port}");
        std::io::stdout().flush().expect("flush");
        assert!(front.wait(port, T).expect("wait"), "parent's event");
        assert_eq!(read(page), vec![0x99; PAGE_SIZE], "parent's write");
        // SAFETY: `g` is granted and not revoked; the parent unmapped it
        // before notifying.
        unsafe { front.end_access(g) }.expect("revoke");
        println!("DONE");
        return;
    }
    let (_d, b) = broker();
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "a_frontend_process_and_a_backend_share_a_page_and_events",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PVXEN_LOOPBACK_CHILD", b.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("READY ").map(|(_, r)| r.to_owned()))
        .expect("child ready line");
    // (libtest may print the test's name on the same line first.)
    let nums: Vec<u32> = ready
        .split_whitespace()
        .map(|s| s.parse().expect("number"))
        .collect();
    let (g, port) = (nums[0], nums[1]);
    let back = LoopbackDomain::connect(b.path(), 0, 0).expect("dom0");
    let m = back.map(7, &[g], true).expect("map the child's grant");
    assert_eq!(read(m), vec![0x77; PAGE_SIZE]);
    fill(m, 0x99);
    // SAFETY: `m` is the one-page map above, unused from here on.
    unsafe { back.unmap(m, 1) };
    let bp = back.bind_interdomain(7, port).expect("bind");
    back.notify(bp).expect("notify");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("child exit");
    assert!(status.success(), "child failed: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("DONE")), "{rest:?}");
}
