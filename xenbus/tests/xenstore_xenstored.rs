//! The xenstore client against the real C `xenstored` (Debian
//! `xen-utils-4.17`) and the C client tools (`xenstore-utils`).
//!
//! The daemon runs under the fixture of `xenbus::xenstore::daemon` (a
//! preload standing in for the hypervisor calls it imports, so its real
//! protocol engine serves a unix socket in a private run directory). Each
//! test starts its own daemon and a guard kills it afterwards. Missing tools make the tests fail with the
//! package to install; they never pass silently.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use xenbus::xenstore::client::{Error, TransportError};
use xenbus::xenstore::daemon::{tool, GuestDomain, Xenstored};
use xenbus::xenstore::state::{ShutdownRequest, ShutdownWatcher, XenbusEndpoint, XenbusState};
use xenbus::xenstore::unix::UnixClient;
use xenbus::xenstore::wire::{Access, EncodeError, MsgType, Perm, XsErrno};

const T: Option<Duration> = xenbus::xenstore::daemon::TIMEOUT;

#[test]
fn basic_operations() {
    let xs = Xenstored::start();
    let mut c = xs.client();
    c.write("/test/a", b"hello").expect("write");
    assert_eq!(c.read("/test/a").expect("read"), b"hello");
    c.write("/test/empty", b"").expect("write empty");
    assert_eq!(c.read("/test/empty").expect("read"), b"");
    c.mkdir("/test/dir").expect("mkdir");
    c.mkdir("/test/dir").expect("mkdir twice is fine");
    let mut names = c.directory("/test").expect("directory");
    names.sort();
    assert_eq!(names, ["a", "dir", "empty"]);
    assert!(c.directory("/test/dir").expect("empty dir").is_empty());
    c.rm("/test/a").expect("rm");
    assert!(matches!(
        c.read("/test/a"),
        Err(Error::Xenstore(XsErrno::NoEnt))
    ));
    assert!(c.read_opt("/test/a").expect("read_opt").is_none());
    // Removing a missing node is an error in xenstored 4.17 (ENOENT).
    let rm_missing = c.rm("/test/nothing/here");
    assert!(
        matches!(rm_missing, Ok(()) | Err(Error::Xenstore(XsErrno::NoEnt))),
        "{rm_missing:?}"
    );

    // Permissions: owner first.
    let perms = c.get_perms("/test/dir").expect("get_perms");
    assert_eq!(perms[0], Perm::new(Access::None, 0));
    let want = [
        Perm::new(Access::None, 0),
        Perm::new(Access::Read, 1),
        Perm::new(Access::Both, 2),
        Perm::new(Access::Write, 3),
    ];
    c.set_perms("/test/dir", &want).expect("set_perms");
    assert_eq!(c.get_perms("/test/dir").expect("get_perms"), want);
    assert!(matches!(
        c.get_perms("/missing"),
        Err(Error::Xenstore(XsErrno::NoEnt))
    ));

    assert_eq!(
        c.get_domain_path(7).expect("domain path"),
        "/local/domain/7"
    );
    assert!(c.is_domain_introduced(0).expect("dom0 introduced"));

    // A transaction aborted leaves nothing behind.
    let tx = c.transaction_start().expect("start");
    c.transaction_end(tx, false).expect("abort");
}

#[test]
fn limits_and_daemon_errors() {
    let mut xs = Xenstored::start();
    let mut c = xs.client();
    // Largest write that fits in one payload.
    let path = "/big";
    let value = vec![b'v'; 4096 - path.len() - 1];
    c.write(path, &value).expect("maximal write");
    assert_eq!(c.read(path).expect("read back"), value);
    // One byte more is refused locally (the daemon would drop us).
    let too_big = vec![b'v'; value.len() + 1];
    assert!(matches!(
        c.write(path, &too_big),
        Err(Error::Encode(EncodeError::PayloadTooLong { len: 4097 }))
    ));
    // Path checks done by the daemon itself (sent raw, bypassing ours).
    let raw = |c: &mut UnixClient, ty, payload: &[u8]| c.request(ty, 0, payload);
    assert!(matches!(
        raw(&mut c, MsgType::Read, b"/a//b\0"),
        Err(Error::Xenstore(XsErrno::Inval))
    ));
    assert!(matches!(
        raw(&mut c, MsgType::Read, b"/a b\0"),
        Err(Error::Xenstore(XsErrno::Inval))
    ));
    let mut long = b"/".to_vec();
    long.extend(vec![b'a'; 3100]);
    long.push(0);
    assert!(matches!(
        raw(&mut c, MsgType::Read, &long),
        Err(Error::Xenstore(XsErrno::Inval))
    ));
    assert!(matches!(
        raw(&mut c, MsgType::SetPerms, b"/big\0x9\0"),
        Err(Error::Xenstore(XsErrno::Inval))
    ));
    // Unknown request type (20, XS_RESTRICT, was removed): ENOSYS... sent raw.
    let mut s = UnixStream::connect(xs.socket()).expect("connect");
    {
        use std::io::{Read, Write};
        let h = xenbus::xenstore::wire::Header {
            ty: 20,
            req_id: 77,
            tx_id: 0,
            len: 1,
        };
        s.write_all(&h.to_bytes()).expect("send");
        s.write_all(b"\0").expect("send");
        s.set_read_timeout(T).expect("timeout");
        let mut hdr = [0u8; 16];
        s.read_exact(&mut hdr).expect("reply");
        let h = xenbus::xenstore::wire::Header::from_bytes(&hdr);
        let mut body = vec![0u8; h.len as usize];
        s.read_exact(&mut body).expect("body");
        assert_eq!((h.ty, h.req_id), (MsgType::Error as u32, 77));
        assert_eq!(XsErrno::from_payload(&body), XsErrno::NoSys);
    }

    // E2BIG: a directory listing longer than one payload. The client pages
    // through it with DIRECTORY_PART.
    let mut names = Vec::new();
    for i in 0..120 {
        let n = format!("child-with-a-rather-long-name-{i:04}");
        c.write(&format!("/many/{n}"), b"x").expect("write child");
        names.push(n);
    }
    assert!(matches!(
        raw(&mut c, MsgType::Directory, b"/many\0"),
        Err(Error::Xenstore(XsErrno::TooBig))
    ));
    let mut got = c.directory("/many").expect("paged directory");
    got.sort();
    assert_eq!(got, names);

    // A frame over the payload limit makes the daemon drop the connection:
    // our other client sees a clean "closed", and the daemon lives on.
    let mut victim = xs.client();
    victim.write("/v", b"1").expect("write");
    {
        use std::io::Write;
        let h = xenbus::xenstore::wire::Header {
            ty: MsgType::Write as u32,
            req_id: 1,
            tx_id: 0,
            len: 5000,
        };
        let mut s = UnixStream::connect(xs.socket()).expect("connect");
        s.write_all(&h.to_bytes()).expect("send");
        let _ = s.write_all(&vec![b'x'; 5000]);
        s.set_read_timeout(T).expect("timeout");
        let mut buf = [0u8; 16];
        use std::io::Read;
        let n = s.read(&mut buf);
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "daemon kept an over-long frame's connection: {n:?}"
        );
    }
    assert!(xs.alive());
    assert_eq!(c.read("/v").expect("daemon still serves"), b"1");
}

/// Waits (up to a generous 60 s) until the thread at `task` (a
/// `/proc/PID/task/TID` directory) sleeps inside `read(2)` or `recvfrom(2)`,
/// the only calls a client waiting for the daemon makes.
fn wait_blocked_in_read(task: &Path, what: &str) {
    let calls = [libc::SYS_read.to_string(), libc::SYS_recvfrom.to_string()];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let syscall = fs::read_to_string(task.join("syscall")).unwrap_or_default();
        let state = fs::read_to_string(task.join("stat")).unwrap_or_default();
        // The state follows the command name's closing parenthesis.
        let sleeping = state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('S'));
        let nr = syscall.split_whitespace().next().unwrap_or("");
        if sleeping && calls.iter().any(|c| c == nr) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never blocked reading its socket (syscall: {syscall:?}, stat: {state:?})"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn dropped_connection_is_a_clean_error() {
    let mut xs = Xenstored::start();
    let mut c = xs.client();
    c.write("/x", b"1").expect("write");
    c.watch("/x", "t").expect("watch");
    let _ = c.next_event(T).expect("initial fire");
    xs.kill();
    let e = c.read("/x").expect_err("must fail");
    assert!(
        matches!(e, Error::Transport(TransportError::Closed)),
        "expected a closed connection, got {e:?}"
    );
    assert!(e.should_reconnect());
    assert!(matches!(c.read("/x"), Err(Error::Poisoned)));

    // And a client that was waiting for events when the daemon died.
    let xs = Xenstored::start();
    let mut c = xs.client();
    c.watch("/y", "t").expect("watch");
    let _ = c.next_event(T).expect("initial fire");
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        // "PID/task/TID": where the test can see this thread block.
        let me = fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        tx.send(me).expect("send");
        c.next_event(T)
    });
    let me = rx
        .recv_timeout(T.expect("timeout"))
        .expect("waiter started");
    wait_blocked_in_read(&Path::new("/proc").join(me), "the event waiter");
    drop(xs);
    let r = waiter.join().expect("join");
    assert!(
        matches!(r, Err(Error::Transport(TransportError::Closed))),
        "{r:?}"
    );
}

#[test]
fn transactions_conflict_and_retry() {
    let xs = Xenstored::start();
    let mut a = xs.client();
    let mut b = xs.client();
    a.write("/tx/counter", b"0").expect("init");

    // Manual: a conflicting write from another connection makes the commit
    // fail with EAGAIN.
    let tx = a.transaction_start().expect("start");
    let v = a.read_tx_for_test(tx, "/tx/counter");
    assert_eq!(v, b"0");
    b.write("/tx/counter", b"5").expect("conflicting write");
    a.request(MsgType::Write, tx, b"/tx/counter\x001")
        .expect("write in tx");
    let e = a.transaction_end(tx, true).expect_err("must fail");
    assert!(e.is_again(), "{e:?}");
    assert_eq!(a.read("/tx/counter").expect("read"), b"5");

    // The helper reruns the whole body.
    let mut runs = 0;
    a.transaction(8, |tx| {
        runs += 1;
        let v: u32 = String::from_utf8_lossy(&tx.read("/tx/counter")?)
            .parse()
            .unwrap_or(0);
        if runs == 1 {
            b.write("/tx/counter", b"10")
                .expect("conflict on first run");
        }
        tx.write("/tx/counter", format!("{}", v + 1).as_bytes())
    })
    .expect("transaction");
    assert_eq!(runs, 2);
    assert_eq!(a.read("/tx/counter").expect("read"), b"11");

    // Two connections incrementing concurrently never lose an update.
    a.write("/tx/counter", b"0").expect("reset");
    let sock = xs.socket().to_path_buf();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let sock = sock.clone();
            thread::spawn(move || {
                let mut c = UnixClient::connect_unix(&sock).expect("connect");
                c.set_timeout(T);
                let mut retries = 0u32;
                for _ in 0..40 {
                    let mut attempts = 0;
                    c.transaction(1000, |tx| {
                        attempts += 1;
                        let v: u32 = String::from_utf8_lossy(&tx.read("/tx/counter")?)
                            .parse()
                            .unwrap_or(0);
                        tx.write("/tx/counter", format!("{}", v + 1).as_bytes())
                    })
                    .expect("increment");
                    retries += attempts - 1;
                }
                retries
            })
        })
        .collect();
    let retries: u32 = workers.into_iter().map(|w| w.join().expect("join")).sum();
    assert_eq!(a.read("/tx/counter").expect("read"), b"80");
    eprintln!("concurrent increments: {retries} EAGAIN retries");
}

/// Reads inside an explicit transaction through the raw request API.
trait RawTx {
    fn read_tx_for_test(&mut self, tx: u32, path: &str) -> Vec<u8>;
}
impl RawTx for UnixClient {
    fn read_tx_for_test(&mut self, tx: u32, path: &str) -> Vec<u8> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        self.request(MsgType::Read, tx, &p).expect("read in tx")
    }
}

#[test]
fn watches_fire_across_connections() {
    let xs = Xenstored::start();
    let mut a = xs.client();
    let mut b = xs.client();
    a.watch("/w", "tok").expect("watch");
    let ev = a.next_event(T).expect("initial fire");
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("/w", "tok"));

    // Events from b's writes arrive while a is busy with its own requests:
    // they are queued, replies still match.
    for i in 0..20 {
        b.write(&format!("/w/k{i}"), b"v").expect("b writes");
        a.write(&format!("/other/{i}"), b"x")
            .expect("a writes elsewhere");
        assert_eq!(a.read(&format!("/other/{i}")).expect("a reads"), b"x");
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let ev = a.next_event(T).expect("event");
        assert_eq!(ev.token, "tok");
        if ev.path != "/w" {
            seen.push(ev.path);
        }
    }
    let want: Vec<String> = (0..20).map(|i| format!("/w/k{i}")).collect();
    assert_eq!(seen, want);

    // Removal fires too; a second watch has its own token.
    a.watch("/w/k3", "tok2").expect("watch 2");
    assert_eq!(a.next_event_for("tok2", T).expect("initial").path, "/w/k3");
    b.rm("/w/k3").expect("rm");
    assert_eq!(a.next_event_for("tok2", T).expect("rm fires").path, "/w/k3");
    // The /w watch saw it too.
    assert_eq!(
        a.next_event_for("tok", T).expect("rm under /w").path,
        "/w/k3"
    );

    // After unwatch, b's writes queue nothing for that token: b's write is
    // done before a's next request is handled, so an event would be queued
    // before the reply.
    a.unwatch("/w", "tok").expect("unwatch");
    a.unwatch("/w/k3", "tok2").expect("unwatch 2");
    while a.try_next_event().is_some() {}
    b.write("/w/after", b"1").expect("write after unwatch");
    a.watch("/sync", "sync").expect("watch sync");
    let ev = a.next_event(T).expect("sync fire");
    assert_eq!(ev.token, "sync", "no event for the removed watch");
    assert!(matches!(
        a.unwatch("/w", "tok"),
        Err(Error::Xenstore(XsErrno::NoEnt))
    ));
    // Duplicate watch.
    assert!(matches!(
        a.watch("/sync", "sync"),
        Err(Error::Xenstore(XsErrno::Exist))
    ));

    // Special paths.
    a.watch("@releaseDomain", "rel").expect("special watch");
    assert_eq!(
        a.next_event_for("rel", T).expect("initial").path,
        "@releaseDomain"
    );
}

#[test]
fn interop_with_c_client_tools() {
    let xs = Xenstored::start();
    let mut c = xs.client();
    c.write("/interop/from-rust", b"rust value").expect("write");
    let out = xs.cli("xenstore-read", &["/interop/from-rust"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "rust value"
    );

    let out = xs.cli(
        "xenstore-write",
        &["/interop/from-c", "c value", "/interop/c2", "2"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(c.read("/interop/from-c").expect("read"), b"c value");
    let mut names = c.directory("/interop").expect("dir");
    names.sort();
    assert_eq!(names, ["c2", "from-c", "from-rust"]);

    let out = xs.cli("xenstore-ls", &["/interop"]);
    assert!(out.status.success(), "{out:?}");
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(ls.contains("from-rust = \"rust value\""), "{ls}");

    c.set_perms(
        "/interop/from-rust",
        &[Perm::new(Access::None, 0), Perm::new(Access::Read, 4)],
    )
    .expect("set perms");
    let out = xs.cli("xenstore-ls", &["-p", "/interop"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(ls.contains("(n0,r4)"), "{ls}");

    // A C watcher sees our write.
    let mut w = Command::new(tool("xenstore-watch"))
        .args(["-n", "2", "/interop/watched"])
        .env("XENSTORED_PATH", xs.socket())
        .stdout(Stdio::piped())
        .spawn()
        .expect("xenstore-watch");
    // Its first event is the initial fire; ours is the second. Writing
    // repeatedly until it exits tolerates us racing its registration.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.write("/interop/watched", b"x").expect("write");
        if w.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "xenstore-watch never saw our write"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let out = w.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .filter(|l| l.starts_with("/interop/watched"))
            .count()
            >= 2,
        "{text}"
    );

    let out = xs.cli("xenstore-rm", &["/interop/from-c"]);
    assert!(out.status.success(), "{out:?}");
    assert!(c
        .read("/interop/from-c")
        .expect_err("must fail")
        .is_not_found());
}

/// A handshake between a frontend and a backend, each on its own connection
/// in its own thread, driven only by state nodes and watches.
#[test]
fn xenbus_handshake_through_xenstored() {
    let xs = Xenstored::start();
    let fe_dir = "/local/domain/5/device/vif/0";
    let be_dir = "/local/domain/0/backend/vif/5/0";
    let mut tool = xs.client();
    // What the toolstack does: both directories, both in Initialising, each
    // pointing at the other.
    tool.transaction(8, |tx| {
        tx.write(&format!("{fe_dir}/backend"), be_dir.as_bytes())?;
        tx.write(&format!("{fe_dir}/state"), b"1")?;
        tx.write(&format!("{be_dir}/frontend"), fe_dir.as_bytes())?;
        tx.write(&format!("{be_dir}/state"), b"1")
    })
    .expect("toolstack setup");

    let sock = xs.socket().to_path_buf();
    let backend = thread::spawn(move || -> Result<Vec<XenbusState>, Error> {
        let mut c =
            UnixClient::connect_unix(&sock).map_err(|e| Error::Transport(TransportError::Io(e)))?;
        c.set_timeout(T);
        let me = XenbusEndpoint::new(be_dir, fe_dir, "be");
        me.watch_peer(&mut c)?;
        let mut seen = Vec::new();
        me.publish(
            &mut c,
            &[("feature-rx-copy", b"1"), ("feature-sg", b"1")],
            Some(XenbusState::InitWait),
        )?;
        seen.push(me.wait_peer_at_least(&mut c, XenbusState::Initialised, T)?);
        let keys = me.read_peer(&mut c, &["tx-ring-ref", "rx-ring-ref", "event-channel"])?;
        assert!(
            keys.iter().all(|k| k.is_some()),
            "frontend keys present: {keys:?}"
        );
        me.set_state(&mut c, XenbusState::Connected)?;
        // Wait for the frontend to start closing, then close.
        seen.push(me.wait_peer(&mut c, T, |s| s.is_closing())?);
        me.set_state(&mut c, XenbusState::Closing)?;
        me.set_state(&mut c, XenbusState::Closed)?;
        seen.push(me.wait_peer(&mut c, T, |s| s == XenbusState::Closed)?);
        Ok(seen)
    });

    let sock = xs.socket().to_path_buf();
    let frontend = thread::spawn(move || -> Result<Vec<XenbusState>, Error> {
        let mut c =
            UnixClient::connect_unix(&sock).map_err(|e| Error::Transport(TransportError::Io(e)))?;
        c.set_timeout(T);
        let me = XenbusEndpoint::new(fe_dir, be_dir, "fe");
        me.watch_peer(&mut c)?;
        let mut seen = Vec::new();
        seen.push(me.wait_peer_at_least(&mut c, XenbusState::InitWait, T)?);
        let features = me.read_peer(
            &mut c,
            &["feature-rx-copy", "feature-sg", "feature-gso-tcpv4"],
        )?;
        assert_eq!(features, [Some(b"1".to_vec()), Some(b"1".to_vec()), None]);
        me.publish(
            &mut c,
            &[
                ("tx-ring-ref", b"8"),
                ("rx-ring-ref", b"9"),
                ("event-channel", b"3"),
                ("request-rx-copy", b"1"),
            ],
            Some(XenbusState::Initialised),
        )?;
        seen.push(me.wait_peer_at_least(&mut c, XenbusState::Connected, T)?);
        me.set_state(&mut c, XenbusState::Connected)?;
        // Now close: Closing, wait for the backend to be Closed, Closed.
        me.set_state(&mut c, XenbusState::Closing)?;
        seen.push(me.wait_peer(&mut c, T, |s| s == XenbusState::Closed)?);
        me.set_state(&mut c, XenbusState::Closed)?;
        Ok(seen)
    });

    let fe_seen = frontend.join().expect("frontend thread").expect("frontend");
    let be_seen = backend.join().expect("backend thread").expect("backend");
    assert_eq!(fe_seen[0], XenbusState::InitWait);
    assert_eq!(fe_seen[1], XenbusState::Connected);
    assert_eq!(fe_seen[2], XenbusState::Closed);
    assert!(
        be_seen[0] >= XenbusState::Initialised && be_seen[0] <= XenbusState::Connected,
        "{be_seen:?}"
    );
    assert!(be_seen[1].is_closing(), "{be_seen:?}");
    assert_eq!(be_seen[2], XenbusState::Closed);
    assert_eq!(
        tool.read(&format!("{fe_dir}/state")).expect("fe state"),
        b"6"
    );
    assert_eq!(
        tool.read(&format!("{be_dir}/state")).expect("be state"),
        b"6"
    );
}

// ---- a guest domain on the ring page --------------------------------------

fn introduce_guest(xs: &Xenstored, dom0: &mut UnixClient, domid: u32) -> GuestDomain {
    xs.introduce(dom0, domid);
    GuestDomain::attach(xs.dir(), domid).expect("attach the guest ring")
}

#[test]
fn guest_ring_against_xenstored_and_permissions() {
    let xs = Xenstored::start();
    let mut dom0 = xs.client();
    // The toolstack creates the guest's home, owned by the guest.
    dom0.mkdir("/local/domain/5").expect("mkdir home");
    dom0.set_perms("/local/domain/5", &[Perm::new(Access::None, 5)])
        .expect("perms home");
    dom0.write("/secret", b"dom0 only").expect("secret");
    dom0.write("/shared", b"readable").expect("shared");
    dom0.set_perms(
        "/shared",
        &[Perm::new(Access::None, 0), Perm::new(Access::Read, 5)],
    )
    .expect("perms shared");

    let mut g = introduce_guest(&xs, &mut dom0, 5);
    let c = &mut g.client;
    // (C xenstored 4.17 leaves `server_features` at 0 on introduce; the
    // oxenstored daemon advertises reconnection and the error field.)
    assert_eq!(
        c.transport_mut().ring().connection(),
        xenbus::xenstore::ring::CONNECTED
    );
    assert_eq!(c.transport_mut().ring().error(), 0);
    // Relative paths resolve under the guest's home.
    c.write("data/x", b"from the ring")
        .expect("guest write (relative)");
    assert_eq!(
        dom0.read("/local/domain/5/data/x").expect("dom0 reads"),
        b"from the ring"
    );
    assert_eq!(
        c.read("/local/domain/5/data/x").expect("guest read"),
        b"from the ring"
    );
    // Frames around the 1 KiB ring size straddle the wrap in both rings.
    for len in [0usize, 1000, 1023, 1024, 1025, 1900] {
        let v: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        c.write("data/big", &v).expect("big write");
        assert_eq!(c.read("data/big").expect("big read"), v);
    }
    assert!(
        c.transport_mut().ring().prod() > 1024 * 4,
        "the ring wrapped several times"
    );
    // An unprivileged domain is held to the node size quota (2048 bytes by
    // default, including the node's metadata).
    assert!(matches!(
        c.write("data/big", &[b'q'; 3000]),
        Err(Error::Xenstore(XsErrno::NoSpc))
    ));
    // A reply of almost a full payload (four times the ring) comes through.
    let huge: Vec<u8> = (0..4000).map(|i| b'A' + (i % 26) as u8).collect();
    dom0.write("/local/domain/5/data/huge", &huge)
        .expect("dom0 writes a huge node");
    assert_eq!(c.read("data/huge").expect("huge read"), huge);

    // Permission errors for an unprivileged domain.
    assert!(matches!(
        c.read("/secret"),
        Err(Error::Xenstore(XsErrno::Acces))
    ));
    assert!(matches!(
        c.write("/secret", b"x"),
        Err(Error::Xenstore(XsErrno::Acces))
    ));
    assert_eq!(c.read("/shared").expect("readable"), b"readable");
    assert!(matches!(
        c.write("/shared", b"x"),
        Err(Error::Xenstore(XsErrno::Acces))
    ));
    assert!(matches!(
        c.write("/newtop", b"x"),
        Err(Error::Xenstore(XsErrno::Acces))
    ));
    assert!(matches!(
        c.set_perms("/shared", &[Perm::new(Access::Both, 5)]),
        Err(Error::Xenstore(XsErrno::Acces))
    ));
    // Privileged operations are refused.
    let e = c.introduce(9, 1, 1).expect_err("must fail");
    assert!(
        matches!(
            e,
            Error::Xenstore(XsErrno::Acces) | Error::Xenstore(XsErrno::Perm)
        ),
        "{e:?}"
    );
    // The guest may hand read access of its node to dom0-owned backends.
    c.set_perms(
        "data/x",
        &[Perm::new(Access::None, 5), Perm::new(Access::Read, 7)],
    )
    .expect("owner sets perms");
    assert_eq!(
        dom0.get_perms("/local/domain/5/data/x").expect("perms"),
        [Perm::new(Access::None, 5), Perm::new(Access::Read, 7)]
    );

    // Watches and transactions over the ring.
    c.watch("data", "g").expect("guest watch");
    assert_eq!(c.next_event(T).expect("initial").path, "data");
    dom0.write("/local/domain/5/data/y", b"1")
        .expect("dom0 writes guest node");
    // A watch registered with a relative path fires with relative paths.
    assert_eq!(c.next_event_for("g", T).expect("event").path, "data/y");
    let mut runs = 0;
    c.transaction(8, |tx| {
        runs += 1;
        let v = tx.read("data/y")?;
        if runs == 1 {
            dom0.write("/local/domain/5/data/y", b"2")
                .expect("conflict");
        }
        let mut nv = v.clone();
        nv.push(b'+');
        tx.write("data/y", &nv)
    })
    .expect("guest transaction");
    assert_eq!(runs, 2);
    assert_eq!(dom0.read("/local/domain/5/data/y").expect("read"), b"2+");
    // Events from the conflict and the commit queued meanwhile.
    assert!(c.pending_events() >= 1);
}

/// The frontend lives in domain 5 and talks over its ring page; the backend
/// is a dom0 socket client in another thread. Permissions are set up the
/// way a toolstack does, so each side's watch only sees what it may read.
#[test]
fn guest_frontend_on_the_ring_handshakes_with_a_socket_backend() {
    let xs = Xenstored::start();
    let mut dom0 = xs.client();
    let fe_dir = "/local/domain/5/device/vbd/51712";
    let be_dir = "/local/domain/0/backend/vbd/5/51712";
    dom0.transaction(8, |tx| {
        tx.mkdir("/local/domain/5")?;
        tx.set_perms(
            "/local/domain/5",
            &[Perm::new(Access::None, 0), Perm::new(Access::Read, 5)],
        )?;
        tx.write(&format!("{fe_dir}/backend"), be_dir.as_bytes())?;
        tx.write(&format!("{fe_dir}/state"), b"1")?;
        tx.set_perms(
            fe_dir,
            &[Perm::new(Access::None, 5), Perm::new(Access::Read, 0)],
        )?;
        tx.set_perms(
            &format!("{fe_dir}/state"),
            &[Perm::new(Access::None, 5), Perm::new(Access::Read, 0)],
        )?;
        tx.set_perms(
            &format!("{fe_dir}/backend"),
            &[Perm::new(Access::None, 5), Perm::new(Access::Read, 0)],
        )?;
        tx.write(&format!("{be_dir}/frontend"), fe_dir.as_bytes())?;
        tx.write(&format!("{be_dir}/state"), b"1")?;
        tx.set_perms(
            be_dir,
            &[Perm::new(Access::None, 0), Perm::new(Access::Read, 5)],
        )?;
        tx.set_perms(
            &format!("{be_dir}/state"),
            &[Perm::new(Access::None, 0), Perm::new(Access::Read, 5)],
        )?;
        tx.set_perms(
            &format!("{be_dir}/frontend"),
            &[Perm::new(Access::None, 0), Perm::new(Access::Read, 5)],
        )
    })
    .expect("toolstack setup");
    let mut g = introduce_guest(&xs, &mut dom0, 5);

    let sock = xs.socket().to_path_buf();
    let backend = thread::spawn(move || -> Result<(), Error> {
        let mut c =
            UnixClient::connect_unix(&sock).map_err(|e| Error::Transport(TransportError::Io(e)))?;
        c.set_timeout(T);
        let me = XenbusEndpoint::new(be_dir, fe_dir, "be");
        me.watch_peer(&mut c)?;
        // Two rounds: connect, the frontend closes, it comes back, and
        // the second time the backend skips InitWait's wait for nothing.
        for round in 0..2 {
            me.publish(
                &mut c,
                &[("feature-flush-cache", b"1"), ("max-ring-page-order", b"2")],
                Some(XenbusState::InitWait),
            )?;
            me.wait_peer(&mut c, T, |s| {
                s == XenbusState::Initialised || s == XenbusState::Connected
            })?;
            let keys = me.read_peer(&mut c, &["ring-ref", "event-channel", "protocol"])?;
            let want = if round == 0 { &b"8"[..] } else { &b"9"[..] };
            assert_eq!(keys[0].as_deref(), Some(want));
            // Publish geometry and connect in one transaction.
            me.publish(
                &mut c,
                &[("sectors", b"2048"), ("sector-size", b"512")],
                Some(XenbusState::Connected),
            )?;
            me.wait_peer(&mut c, T, |s| s.is_closing())?;
            // Quiesce (nothing to do here), then Closed.
            me.set_state(&mut c, XenbusState::Closed)?;
            // Wait for the frontend to finish closing or restart.
            me.wait_peer(&mut c, T, |s| {
                s == XenbusState::Closed || s == XenbusState::Initialising
            })?;
            if round == 0 {
                me.wait_peer(&mut c, T, |s| s == XenbusState::Initialising)?;
            }
        }
        Ok(())
    });

    let c = &mut g.client;
    let me = XenbusEndpoint::new(fe_dir, be_dir, "fe");
    me.watch_peer(c).expect("watch backend");
    for round in 0..2 {
        // A restarted frontend may still see the backend's Closed from the
        // previous round until the backend republishes: wait for InitWait
        // exactly rather than "at least".
        assert_eq!(
            me.wait_peer(c, T, |s| s == XenbusState::InitWait)
                .expect("backend InitWait"),
            XenbusState::InitWait
        );
        let f = me
            .read_peer(c, &["feature-flush-cache", "feature-persistent"])
            .expect("features");
        assert_eq!(f, [Some(b"1".to_vec()), None]);
        let ring_ref: &[u8] = if round == 0 { b"8" } else { b"9" };
        me.publish(
            c,
            &[
                ("ring-ref", ring_ref),
                ("event-channel", b"3"),
                ("protocol", b"x86_64-abi"),
            ],
            Some(XenbusState::Initialised),
        )
        .expect("publish");
        assert_eq!(
            me.wait_peer_at_least(c, XenbusState::Connected, T)
                .expect("backend Connected"),
            XenbusState::Connected
        );
        let geo = me
            .read_peer(c, &["sectors", "sector-size"])
            .expect("geometry");
        assert_eq!(geo, [Some(b"2048".to_vec()), Some(b"512".to_vec())]);
        me.set_state(c, XenbusState::Connected).expect("connected");
        assert_eq!(me.close(c, T).expect("close"), XenbusState::Closed);
        if round == 0 {
            me.restart(c).expect("restart");
        }
    }
    backend.join().expect("backend thread").expect("backend");
    // The guest cannot write the backend's state.
    assert!(matches!(
        c.write(&format!("{be_dir}/state"), b"4"),
        Err(Error::Xenstore(XsErrno::Acces))
    ));
    assert_eq!(
        dom0.read(&format!("{fe_dir}/state")).expect("fe state"),
        b"6"
    );
}

#[test]
fn guest_shutdown_watcher_acknowledges_in_a_transaction() {
    let xs = Xenstored::start();
    let mut dom0 = xs.client();
    dom0.mkdir("/local/domain/5/control").expect("mkdir");
    dom0.set_perms(
        "/local/domain/5",
        &[Perm::new(Access::None, 0), Perm::new(Access::Read, 5)],
    )
    .expect("home perms");
    dom0.set_perms(
        "/local/domain/5/control",
        &[Perm::new(Access::None, 0), Perm::new(Access::Read, 5)],
    )
    .expect("control perms");
    dom0.write("/local/domain/5/control/shutdown", b"")
        .expect("shutdown node");
    dom0.set_perms(
        "/local/domain/5/control/shutdown",
        &[Perm::new(Access::None, 0), Perm::new(Access::Both, 5)],
    )
    .expect("shutdown perms");
    for f in ["poweroff", "reboot", "suspend"] {
        let p = format!("/local/domain/5/control/feature-{f}");
        dom0.write(&p, b"").expect("feature node");
        dom0.set_perms(
            &p,
            &[Perm::new(Access::None, 0), Perm::new(Access::Both, 5)],
        )
        .expect("feature perms");
    }
    let mut g = introduce_guest(&xs, &mut dom0, 5);
    let c = &mut g.client;
    let w = ShutdownWatcher::new(
        "control",
        "shutdown",
        &[
            ShutdownRequest::Poweroff,
            ShutdownRequest::Reboot,
            ShutdownRequest::Suspend,
        ],
    );
    w.start(c).expect("start");
    assert_eq!(
        dom0.read("/local/domain/5/control/feature-suspend")
            .expect("feature"),
        b"1"
    );
    // The initial fire finds nothing to do.
    assert_eq!(w.next(c, T).expect("initial"), None);

    dom0.write("/local/domain/5/control/shutdown", b"reboot")
        .expect("toolstack asks");
    let mut got = None;
    while got.is_none() {
        got = w.next(c, T).expect("fire");
    }
    assert_eq!(got, Some(ShutdownRequest::Reboot));
    assert_eq!(
        dom0.read("/local/domain/5/control/shutdown").expect("ack"),
        b""
    );

    // An unsupported command is left unacknowledged.
    dom0.write("/local/domain/5/control/shutdown", b"halt")
        .expect("toolstack asks");
    assert_eq!(w.next(c, T).expect("fire"), None);
    assert_eq!(
        dom0.read("/local/domain/5/control/shutdown")
            .expect("no ack"),
        b"halt"
    );
    // Drain the fire caused by that write (and any spurious ones) before
    // the next command, so the next check sees it.
    dom0.write("/local/domain/5/control/shutdown", b"suspend")
        .expect("toolstack asks");
    let mut got = None;
    while got.is_none() {
        got = w.next(c, T).expect("fire");
    }
    assert_eq!(got, Some(ShutdownRequest::Suspend));
    assert_eq!(
        dom0.read("/local/domain/5/control/shutdown").expect("ack"),
        b""
    );
}
