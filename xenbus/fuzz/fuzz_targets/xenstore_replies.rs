//! Hostile xenstore daemon output: framing, every reply decoder, and the
//! client's reply matching / event queueing over a scripted transport.
//! Nothing may panic or hang; every failure must be a typed error. Besides
//! that, the target checks what the codec promises:
//! - framing: each decoded message re-encodes to exactly the bytes it was
//!   cut from, however the stream was chunked; the stream stops only at a
//!   header [`Header::validate`] rejects, with that error;
//! - each reply decoder: a decoded reply round-trips (re-encoding the value
//!   gives the payload, or a canonical payload that decodes to the same
//!   value), or it is rejected with the error variant its docs name;
//! - the client: what it sends is well-formed requests with fresh ids, what
//!   a read returns is the payload of the daemon's reply to it, and once it
//!   says the connection is unusable every later call is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenbus::xenstore::client::{Client, Error};
use xenbus::xenstore::state::XenbusState;
use xenbus::xenstore::testing::ScriptedTransport;
use xenbus::xenstore::wire::{
    reply, DecodeError, FrameDecoder, Header, Message, MsgType, XsErrno, HEADER_LEN,
};

/// Frames `bytes` fed in pieces of `chunk`: the messages and how the stream
/// ended (`Ok(n)`: `n` trailing bytes of an incomplete frame).
fn frames(bytes: &[u8], chunk: usize) -> (Vec<Message>, Result<usize, DecodeError>) {
    let mut d = FrameDecoder::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        d.feed(piece);
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => {
                    // A failed decoder stays failed.
                    assert_eq!(d.next_message(), Err(e.clone()));
                    return (out, Err(e));
                }
            }
        }
    }
    (out, Ok(d.buffered()))
}

fn framing(bytes: &[u8], chunk: usize) -> Vec<Message> {
    let (msgs, end) = frames(bytes, chunk);
    let mut off = 0;
    for m in &msgs {
        let b = m.to_bytes().expect("a decoded payload is within the limit");
        assert_eq!(
            bytes.get(off..off + b.len()),
            Some(b.as_slice()),
            "message does not re-encode to its bytes"
        );
        off += b.len();
    }
    let rest = &bytes[off..];
    match end {
        Ok(n) => {
            assert_eq!(n, rest.len(), "bytes lost or invented");
            // What is left is a frame still incomplete, never a bad header.
            if let Some(h) = rest.get(..HEADER_LEN) {
                let h = Header::from_bytes(h.try_into().expect("16 bytes"));
                h.validate().expect("a bad header went unreported");
                assert!(rest.len() < HEADER_LEN + h.len as usize);
            }
        }
        Err(e) => {
            let h = rest
                .get(..HEADER_LEN)
                .expect("an error before a whole header");
            let h = Header::from_bytes(h.try_into().expect("16 bytes"));
            assert_eq!(h.validate(), Err(e), "the wrong header was blamed");
        }
    }
    // Whole-stream framing gives the same messages.
    assert_eq!(frames(bytes, bytes.len()).0, msgs);
    msgs
}

fn nul_terminated<S: AsRef<[u8]>>(items: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in items {
        out.extend_from_slice(s.as_ref());
        out.push(0);
    }
    out
}

/// Every decoder over one payload.
fn decoders(p: &[u8]) {
    assert_eq!(reply::read(p), p);

    match reply::ok(p) {
        Ok(()) => assert!(p == b"OK\0" || p == b"OK"),
        Err(e) => assert_eq!(e, DecodeError::NotOk),
    }

    match reply::directory(p) {
        Ok(names) => assert_eq!(nul_terminated(&names), p),
        Err(e) => assert!(matches!(e, DecodeError::MissingNul | DecodeError::NotUtf8)),
    }

    match reply::directory_part(p) {
        Ok((generation, names, last)) => {
            // A part that is not the last must carry names (else a caller
            // paging through it would never end).
            assert!(last || !names.is_empty());
            let mut again = format!("{generation}\0").into_bytes();
            again.extend(nul_terminated(&names));
            if last {
                again.push(0);
            }
            assert_eq!(reply::directory_part(&again), Ok((generation, names, last)));
        }
        Err(e) => assert!(matches!(
            e,
            DecodeError::BadDirectoryPart | DecodeError::MissingNul | DecodeError::NotUtf8
        )),
    }

    match reply::perms(p) {
        Ok(perms) => {
            assert!(!perms.is_empty());
            let texts: Vec<String> = perms.iter().map(ToString::to_string).collect();
            assert_eq!(reply::perms(&nul_terminated(&texts)), Ok(perms));
        }
        Err(e) => assert!(matches!(
            e,
            DecodeError::MissingNul | DecodeError::BadPermission
        )),
    }

    match reply::transaction_id(p) {
        Ok(id) => {
            assert_ne!(id, 0, "0 means no transaction");
            assert_eq!(reply::transaction_id(format!("{id}\0").as_bytes()), Ok(id));
        }
        Err(e) => assert_eq!(e, DecodeError::BadTransactionId),
    }

    match reply::string(p) {
        Ok(s) => assert_eq!(nul_terminated(&[s]), p),
        Err(e) => assert!(matches!(e, DecodeError::MissingNul | DecodeError::NotUtf8)),
    }

    match reply::boolean(p) {
        Ok(b) => {
            let letter: &[u8] = if b { b"T" } else { b"F" };
            assert!(p == letter || p.strip_suffix(b"\0") == Some(letter));
        }
        Err(e) => assert_eq!(e, DecodeError::BadBool),
    }

    match reply::watch_event(p) {
        Ok(ev) => {
            assert!(!ev.path.is_empty());
            assert_eq!(nul_terminated(&[&ev.path, &ev.token]), p);
        }
        Err(e) => assert!(matches!(
            e,
            DecodeError::BadWatchEvent | DecodeError::NotUtf8
        )),
    }

    // An errno name maps back to itself; an unknown one is kept, bounded.
    let errno = XsErrno::from_payload(p);
    match &errno {
        XsErrno::Other(name) => assert!(name.len() <= 64),
        known => {
            let field = p.split(|b| *b == 0).next().unwrap_or(&[]);
            assert_eq!(known.name().as_bytes(), field);
        }
    }
    assert_eq!(XsErrno::from_name(errno.name()), errno);

    if let Some(s) = XenbusState::parse(p) {
        assert_eq!(
            XenbusState::parse((s as u32).to_string().as_bytes()),
            Some(s)
        );
    }
}

/// The payloads of the replies of type `ty` to request `req_id` among
/// `msgs` (a successful call must have returned one of them).
fn reply_to(msgs: &[Message], req_id: u32, ty: MsgType) -> Vec<Vec<u8>> {
    msgs.iter()
        .filter(|m| m.req_id == req_id && m.ty == ty)
        .map(|m| m.payload.clone())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    // Framing and decoders, fed in chunks of 1..=32 bytes.
    let msgs = framing(rest, usize::from(shape % 32) + 1);
    for m in &msgs {
        decoders(&m.payload);
    }
    // The decoders also see the raw input as one payload.
    decoders(rest);

    // The client against the same bytes as the daemon's replies.
    let chunks = [usize::from(shape % 7) + 1, usize::from(shape / 7 % 64) + 1];
    let mut c = Client::new(ScriptedTransport::new(rest, &chunks));
    for step in 0u32.. {
        let r: Result<(), Error> = match step % 9 {
            0 => match c.read("/a") {
                Ok(v) => {
                    // The value is the payload of the reply to this read.
                    let ids = c.transport_mut().sent_req_ids();
                    let id = *ids.last().expect("a read was sent");
                    assert!(reply_to(&msgs, id, MsgType::Read).contains(&v));
                    Ok(())
                }
                Err(e) => Err(e),
            },
            1 => c.directory("/a").map(drop),
            2 => c.get_perms("/a").map(drop),
            3 => c.write("/a", b"v"),
            4 => c.watch("/a", "t"),
            5 => c.next_event(None).map(drop),
            6 => c.transaction(3, |tx| tx.read("/b").map(drop)),
            7 => c.transaction_start().map(drop),
            _ => c.get_domain_path(1).map(drop),
        };
        // A poisoned or closed client ends the run; daemon errnos do not.
        if let Err(e) = r {
            if e.should_reconnect() {
                // From now on every request is refused and nothing is sent.
                let sent = c.transport_mut().sent.len();
                let again = c.read("/a");
                assert!(
                    matches!(again, Err(Error::Poisoned)),
                    "{again:?} after {e:?}"
                );
                assert_eq!(c.transport_mut().sent.len(), sent);
                break;
            }
        }
        if step > 10_000 {
            break;
        }
    }
    // Everything the client sent is whole requests with fresh, non-zero ids.
    let t = c.transport_mut();
    let (sent, end) = frames(&t.sent, t.sent.len());
    assert_eq!(end, Ok(0), "the client sent a broken frame");
    for w in sent.windows(2) {
        assert!(w[0].req_id < w[1].req_id, "request id reused");
    }
    assert!(sent.iter().all(|m| m.req_id != 0));
});
