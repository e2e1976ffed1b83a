//! The NBD request decoder on an arbitrary byte stream, delivered in
//! arbitrary pieces: it must never panic, never hand out a payload of
//! another length than the header announced, never buffer more than one
//! request's worth, and every header it accepts must re-encode to the same
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pv_blk_linux::nbd::wire::{check_range, parse_request, Command, Decoder, REQUEST_LEN};

const MAX_PAYLOAD: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut d = Decoder::new(MAX_PAYLOAD);
    'outer: for chunk in stream.chunks(piece) {
        let room = d.spare(chunk.len());
        assert!(room.len() >= chunk.len());
        room[..chunk.len()].copy_from_slice(chunk);
        d.commit(chunk.len());
        loop {
            match d.next_request() {
                Ok(Some((req, payload))) => {
                    let expect = if req.command == Command::Write {
                        req.len as usize
                    } else {
                        0
                    };
                    assert_eq!(payload.len(), expect);
                    let bytes = req.encode();
                    let again = parse_request(&bytes).expect("re-encoded header parses");
                    assert_eq!(again, req);
                    let _ = check_range(&req, 1 << 30, 512);
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
        assert!(d.buffered() <= REQUEST_LEN + MAX_PAYLOAD as usize + piece);
    }
});
