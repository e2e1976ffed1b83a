//! Xenstore client over the guest ring page against the in-process fake
//! daemon (wraparound included), and against scripted hostile replies.

use std::time::Duration;

use xenbus::xenstore::client::{Client, Error, TransportError};
use xenbus::xenstore::state::{XenbusEndpoint, XenbusState};
use xenbus::xenstore::testing::{decode_all, ring_pair, ScriptedTransport};
use xenbus::xenstore::wire::{self, DecodeError, MsgType, XsErrno};

const T: Option<Duration> = Some(Duration::from_secs(30));

#[test]
fn ring_client_round_trips_across_the_index_wrap() {
    // Start 600 bytes before 2^32 so the first messages straddle both the
    // buffer end and the u32 wrap.
    let (guest, fake) = ring_pair(u32::MAX - 600);
    let mut c = Client::new(guest);
    c.set_timeout(T);
    for i in 0..200u32 {
        let path = format!("/local/domain/1/data/k{}", i % 7);
        // Values of varying length up to ~3.5 KiB force many wraps and frames
        // larger than the 1 KiB ring (written in several pieces).
        let value: Vec<u8> = (0..(i * 17 % 3500)).map(|j| (j ^ i) as u8).collect();
        c.write(&path, &value).expect("write");
        assert_eq!(c.read(&path).expect("read"), value);
    }
    let ring_prod = c.transport_mut().ring().prod();
    assert!(
        ring_prod < u32::MAX - 600,
        "producer index wrapped: {ring_prod:#x}"
    );
    let mut names = c.directory("/local/domain/1/data").expect("directory");
    names.sort();
    assert_eq!(names.len(), 7);
    assert!(c.read("/nope").expect_err("must fail").is_not_found());
    drop(fake);
}

#[test]
fn ring_client_watches_and_transactions() {
    let (guest, fake) = ring_pair(0xFFFF_FC00);
    let mut c = Client::new(guest);
    c.set_timeout(T);
    c.watch("/w", "tok").expect("watch");
    let ev = c.next_event(T).expect("initial fire");
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("/w", "tok"));
    fake.poke("/w/x", b"1");
    let ev = c.next_event(T).expect("poke fires");
    assert_eq!(ev.path, "/w/x");

    fake.fail_next_commits(3);
    let mut runs = 0;
    let v = c
        .transaction(10, |tx| {
            runs += 1;
            tx.write("/t/a", b"1")?;
            Ok(runs)
        })
        .expect("transaction");
    assert_eq!(v, 4);
    assert_eq!(runs, 4, "whole body reran once per EAGAIN");

    fake.fail_next_commits(100);
    let err = c
        .transaction(5, |tx| tx.write("/t/a", b"2"))
        .expect_err("must fail");
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 5 }),
        "{err}"
    );
}

#[test]
fn xenbus_handshake_over_fake_ring() {
    let (guest, fake) = ring_pair(0);
    let mut c = Client::new(guest);
    c.set_timeout(T);
    let fe = XenbusEndpoint::new("/fe", "/be", "fe-state");
    fe.watch_peer(&mut c).expect("watch");
    fe.publish(
        &mut c,
        &[("ring-ref", b"8")],
        Some(XenbusState::Initialising),
    )
    .expect("publish");
    // The "backend" skips InitWait and goes straight to Connected.
    fake.poke("/be/state", b"4");
    let s = fe
        .wait_peer_at_least(&mut c, XenbusState::InitWait, T)
        .expect("wait");
    assert_eq!(s, XenbusState::Connected);
    fake.poke("/be/state", b"garbage");
    let err = fe
        .wait_peer_at_least(&mut c, XenbusState::Closing, T)
        .expect_err("must fail");
    assert!(err.is_peer_fault() && !err.should_reconnect(), "{err}");
}

fn reply(ty: MsgType, req_id: u32, payload: &[u8]) -> Vec<u8> {
    wire::frame(ty, req_id, 0, &[payload]).expect("frame")
}

#[test]
fn events_interleaved_with_replies_are_queued() {
    let mut script = Vec::new();
    script.extend(reply(MsgType::WatchEvent, 0, b"/a\0t1\0"));
    script.extend(reply(MsgType::WatchEvent, 0, b"/b\0t2\0"));
    script.extend(reply(MsgType::Read, 1, b"value"));
    script.extend(reply(MsgType::WatchEvent, 0, b"/c\0t1\0"));
    script.extend(reply(MsgType::Error, 2, b"EACCES\0"));
    for chunks in [&[1usize][..], &[3, 5, 7], &[4096]] {
        let mut c = Client::new(ScriptedTransport::new(&script, chunks));
        assert_eq!(c.read("/x").expect("read"), b"value");
        assert_eq!(c.pending_events(), 2);
        assert!(matches!(
            c.write("/x", b"v"),
            Err(Error::Xenstore(XsErrno::Acces))
        ));
        assert_eq!(c.next_event_for("t1", T).expect("t1").path, "/a");
        assert_eq!(c.next_event_for("t1", T).expect("t1").path, "/c");
        assert_eq!(c.next_event(T).expect("t2").path, "/b");
        // Script exhausted: the "daemon" hung up.
        assert!(matches!(
            c.next_event(T),
            Err(Error::Transport(TransportError::Closed))
        ));
        assert!(matches!(c.read("/x"), Err(Error::Poisoned)));
        assert_eq!(c.transport_mut().sent_req_ids(), vec![1, 2]);
    }
}

type ErrorCheck = fn(&Error) -> bool;

#[test]
fn hostile_replies_give_typed_errors_and_poison() {
    let cases: Vec<(Vec<u8>, ErrorCheck)> = vec![
        (reply(MsgType::Read, 9, b"x"), |e| {
            matches!(
                e,
                Error::Protocol(DecodeError::UnexpectedReqId {
                    expected: 1,
                    got: 9
                })
            )
        }),
        (reply(MsgType::Write, 1, b"OK\0"), |e| {
            matches!(e, Error::Protocol(DecodeError::UnexpectedReplyType { .. }))
        }),
        (
            {
                let mut h = wire::Header {
                    ty: 2,
                    req_id: 1,
                    tx_id: 0,
                    len: 5000,
                }
                .to_bytes()
                .to_vec();
                h.extend([0u8; 64]);
                h
            },
            |e| {
                matches!(
                    e,
                    Error::Protocol(DecodeError::PayloadTooLong { len: 5000 })
                )
            },
        ),
        (
            wire::Header {
                ty: 20,
                req_id: 1,
                tx_id: 0,
                len: 0,
            }
            .to_bytes()
            .to_vec(),
            |e| matches!(e, Error::Protocol(DecodeError::UnknownType { ty: 20 })),
        ),
        (reply(MsgType::WatchEvent, 0, b"no-nul"), |e| {
            matches!(e, Error::Protocol(DecodeError::BadWatchEvent))
        }),
        // Truncated reply then EOF.
        (reply(MsgType::Read, 1, b"abcdef")[..18].to_vec(), |e| {
            matches!(e, Error::Transport(TransportError::Closed))
        }),
    ];
    for (i, (script, check)) in cases.into_iter().enumerate() {
        let mut c = Client::new(ScriptedTransport::new(&script, &[2]));
        let e = c.read("/x").expect_err("must fail");
        assert!(check(&e), "case {i}: {e:?}");
        assert!(e.should_reconnect(), "case {i}");
        assert!(matches!(c.read("/x"), Err(Error::Poisoned)), "case {i}");
    }
    // A non-OK reply to WRITE and a malformed perms reply.
    let mut c = Client::new(ScriptedTransport::new(
        &reply(MsgType::Write, 1, b"NO\0"),
        &[64],
    ));
    assert!(matches!(
        c.write("/x", b""),
        Err(Error::Protocol(DecodeError::NotOk))
    ));
    let mut c = Client::new(ScriptedTransport::new(
        &reply(MsgType::GetPerms, 1, b"z0\0"),
        &[64],
    ));
    assert!(matches!(
        c.get_perms("/x"),
        Err(Error::Protocol(DecodeError::BadPermission))
    ));
}

#[test]
fn oversized_requests_are_refused_before_sending() {
    let mut c = Client::new(ScriptedTransport::default());
    let e = c.write("/a", &vec![0u8; 4094]).expect_err("must fail");
    assert!(
        matches!(
            e,
            Error::Encode(wire::EncodeError::PayloadTooLong { len: 4097 })
        ),
        "{e}"
    );
    let long = format!("/{}", "a".repeat(3072));
    assert!(matches!(
        c.read(&long),
        Err(Error::Encode(wire::EncodeError::PathTooLong { .. }))
    ));
    assert!(matches!(
        c.read("/a b"),
        Err(Error::Encode(wire::EncodeError::InvalidPath))
    ));
    assert!(c.transport_mut().sent.is_empty());
}

#[test]
fn decode_all_survives_garbage() {
    let mut x: u32 = 12345;
    for _ in 0..2000 {
        let len = (x % 200) as usize;
        let mut buf = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf.push((x % 24) as u8 * (x & 1) as u8);
        }
        decode_all(&buf, (x % 17) as usize);
    }
}

#[test]
fn daemon_reported_ring_error_is_surfaced() {
    let (guest, fake) = ring_pair(7);
    let mut c = Client::new(guest);
    c.set_timeout(T);
    c.write("/a", b"1").expect("write");
    fake.fail_ring(3);
    let e = c.read("/a").expect_err("daemon stopped serving");
    assert!(
        matches!(e, Error::Transport(TransportError::ServerError { code: 3 })),
        "{e:?}"
    );
    assert!(e.should_reconnect());
}

#[test]
fn event_flood_while_waiting_for_a_reply_is_a_peer_fault() {
    let ev = reply(MsgType::WatchEvent, 0, b"/a\0t\0");
    let mut script = Vec::with_capacity(ev.len() * (wire::MAX_EVENTS_PER_REPLY + 2));
    for _ in 0..wire::MAX_EVENTS_PER_REPLY + 2 {
        script.extend_from_slice(&ev);
    }
    script.extend(reply(MsgType::Read, 1, b"late"));
    let mut c = Client::new(ScriptedTransport::new(&script, &[4096]));
    let e = c.read("/x").expect_err("flood");
    assert!(
        matches!(e, Error::Protocol(DecodeError::EventFlood)),
        "{e:?}"
    );
    // The queue stayed bounded, duplicates coalesced.
    assert!(c.pending_events() <= xenbus::xenstore::client::EVENT_QUEUE_MAX);
    assert!(c.events_coalesced() > 0);
}

#[test]
fn ring_reconnect_resets_the_connection() {
    let (guest, fake) = ring_pair(u32::MAX - 10);
    let mut c = Client::new(guest);
    c.set_timeout(T);
    c.write("/keep", b"1").expect("write");
    c.watch("/w", "t").expect("watch");
    assert!(c.transport_mut().reconnect(T).expect("reconnect"));
    c.reset();
    assert_eq!(c.transport_mut().ring().prod(), 0);
    assert!(
        fake.with_state(|s| s.watches.is_empty()),
        "daemon forgot the watches"
    );
    // The store survives, the connection works from index 0.
    assert_eq!(c.read("/keep").expect("read after reconnect"), b"1");
    c.watch("/w", "t").expect("watch again");
    assert_eq!(c.next_event(T).expect("initial fire").path, "/w");
}

#[test]
fn unix_transport_timeouts_and_hangups_are_typed() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use xenbus::xenstore::unix::UnixClient;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("socket");
    let listener = UnixListener::bind(&path).expect("bind");
    let server = std::thread::spawn(move || {
        // First connection: read the request, never answer, wait for the
        // client to give up and hang up.
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.read(&mut buf);
        // Second connection: half a reply, then hang up.
        let (mut s, _) = listener.accept().expect("accept");
        let _ = s.read(&mut buf);
        let frame = wire::frame(MsgType::Read, 1, 0, &[b"abcdef"]).expect("frame");
        s.write_all(&frame[..10]).expect("half");
    });

    let mut c = UnixClient::connect_unix(&path).expect("connect");
    c.set_timeout(Some(Duration::from_millis(200)));
    let e = c.read("/x").expect_err("no reply");
    assert!(
        matches!(e, Error::Transport(TransportError::TimedOut)),
        "{e:?}"
    );
    assert!(
        matches!(c.read("/x"), Err(Error::Poisoned)),
        "a late reply must not be matched"
    );
    drop(c);

    let mut c = UnixClient::connect_unix(&path).expect("connect");
    c.set_timeout(T);
    let e = c.read("/x").expect_err("hung up");
    assert!(
        matches!(e, Error::Transport(TransportError::Closed)),
        "{e:?}"
    );
    server.join().expect("server");
}
