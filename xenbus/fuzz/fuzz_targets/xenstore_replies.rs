//! Hostile xenstore daemon output: framing, every reply decoder, and the
//! client's reply matching / event queueing over a scripted transport.
//! Nothing may panic or hang; every failure must be a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenbus::xenstore::client::{Client, Error};
use xenbus::xenstore::testing::{decode_all, ScriptedTransport};

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    // Framing and decoders, fed in chunks of 1..=32 bytes.
    decode_all(rest, usize::from(shape % 32) + 1);

    // The client against the same bytes as the daemon's replies.
    let chunks = [usize::from(shape % 7) + 1, usize::from(shape / 7 % 64) + 1];
    let mut c = Client::new(ScriptedTransport::new(rest, &chunks));
    for step in 0u32.. {
        let r: Result<(), Error> = match step % 9 {
            0 => c.read("/a").map(drop),
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
        if matches!(r, Err(ref e) if e.should_reconnect()) {
            break;
        }
        if step > 10_000 {
            break;
        }
    }
});
