//! The NBD transmission-phase wire format (the kernel client speaks it with
//! no handshake: `nbd.ko` is configured by ioctls and starts sending
//! requests at once).
//!
//! Request (28 bytes, big-endian): magic `0x25609513` u32, command flags
//! u16, command type u16, handle 8 bytes (opaque, echoed back), offset u64,
//! length u32; a write's payload follows. Simple reply (16 bytes): magic
//! `0x67446698` u32, error u32 (an errno value, 0 = ok), handle; a read's
//! data follows a successful reply.
//!
//! The peer (the kernel) is trusted more than a device, but the parser
//! still never panics or over-allocates on any input: a bad magic or an
//! oversized payload is a [`WireError`] that ends the connection (the stream
//! cannot be resynchronised), and [`check_range`] turns requests outside the
//! export into an errno reply.

use std::fmt;

/// Request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Simple reply magic.
pub const REPLY_MAGIC: u32 = 0x6744_6698;
/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const REPLY_LEN: usize = 16;

/// `NBD_CMD_FLAG_FUA`.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// `NBD_CMD_FLAG_NO_HOLE` (write-zeroes must not deallocate).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Transmission flags (`NBD_SET_FLAGS`).
pub mod flags {
    /// `NBD_FLAG_HAS_FLAGS`.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
}

/// Error numbers NBD replies carry (Linux values, as the protocol defines).
pub mod errno {
    /// Operation not permitted (write to a read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// Past the end of the export.
    pub const ENOSPC: u32 = 28;
    /// Command not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// A command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ` (0).
    Read,
    /// `NBD_CMD_WRITE` (1); payload follows.
    Write,
    /// `NBD_CMD_DISC` (2): the client disconnects; no reply.
    Disconnect,
    /// `NBD_CMD_FLUSH` (3).
    Flush,
    /// `NBD_CMD_TRIM` (4).
    Trim,
    /// `NBD_CMD_WRITE_ZEROES` (6).
    WriteZeroes,
    /// Any other type: answered with `ENOTSUP`.
    Unknown(u16),
}

impl Command {
    fn from_wire(t: u16) -> Self {
        match t {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            t => Command::Unknown(t),
        }
    }

    fn to_wire(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disconnect => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::WriteZeroes => 6,
            Command::Unknown(t) => t,
        }
    }
}

/// A decoded request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// Opaque handle to echo in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (payload length for writes).
    pub len: u32,
}

impl Request {
    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> usize {
        if self.command == Command::Write {
            self.len as usize
        } else {
            0
        }
    }

    /// Encode (for tests and fuzzing: the kernel is the encoder in use).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_wire().to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// The stream is broken; the connection must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// A header did not start with the request magic.
    BadMagic(u32),
    /// A write announced more payload than the server accepts.
    PayloadTooLarge {
        /// Announced.
        len: u32,
        /// Accepted.
        max: u32,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadMagic(m) => write!(f, "client sent bad request magic {m:#010x}"),
            WireError::PayloadTooLarge { len, max } => {
                write!(f, "client sent a {len}-byte write (limit {max})")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// Decode one header.
pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, WireError> {
    let be32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let be64 = |o: usize| (u64::from(be32(o)) << 32) | u64::from(be32(o + 4));
    let magic = be32(0);
    if magic != REQUEST_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    Ok(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        command: Command::from_wire(u16::from_be_bytes([b[6], b[7]])),
        handle: be64(8),
        offset: be64(16),
        len: be32(24),
    })
}

/// Encode a simple reply header.
pub fn encode_reply(handle: u64, error: u32) -> [u8; REPLY_LEN] {
    let mut b = [0u8; REPLY_LEN];
    b[0..4].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// Check a data or range request against an export of `size` bytes with
/// `align`-byte sectors: `Err(errno)` to reply with.
pub fn check_range(r: &Request, size: u64, align: u32) -> Result<(), u32> {
    let align = u64::from(align.max(1));
    let end = r.offset.checked_add(u64::from(r.len));
    match end {
        None => Err(errno::EINVAL),
        Some(e) if e > size => Err(errno::ENOSPC),
        Some(_) if !r.offset.is_multiple_of(align) || !u64::from(r.len).is_multiple_of(align) => {
            Err(errno::EINVAL)
        }
        Some(_) if r.len == 0 => Err(errno::EINVAL),
        Some(_) => Ok(()),
    }
}

/// Incremental request decoder over a byte stream: read into
/// [`Decoder::spare`], [`Decoder::commit`] what arrived, then take whole
/// requests (header + payload) with [`Decoder::next_request`].
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_payload: u32,
}

impl Decoder {
    /// A decoder that refuses writes larger than `max_payload` bytes.
    pub fn new(max_payload: u32) -> Self {
        Self {
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            max_payload,
        }
    }

    /// Bytes received and not yet taken.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Room to read at least `min` more bytes into (the buffer is compacted
    /// and, up to one header plus `max_payload`, grown as needed).
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < min) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let cap = REQUEST_LEN + self.max_payload as usize;
        if self.buf.len() - self.end < min && self.buf.len() < cap {
            let want = (self.end + min).min(cap).max(self.buf.len());
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were written into the last [`Decoder::spare`] slice.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next whole request and its payload, `Ok(None)` if more bytes are
    /// needed (then [`Decoder::spare`] has room for them).
    pub fn next_request(&mut self) -> Result<Option<(Request, &[u8])>, WireError> {
        let avail = self.end - self.start;
        if avail < REQUEST_LEN {
            return Ok(None);
        }
        let Some(h) = self.buf.get(self.start..self.start + REQUEST_LEN) else {
            return Ok(None);
        };
        let mut hdr = [0u8; REQUEST_LEN];
        hdr.copy_from_slice(h);
        let req = parse_request(&hdr)?;
        if req.command == Command::Write && req.len > self.max_payload {
            return Err(WireError::PayloadTooLarge {
                len: req.len,
                max: self.max_payload,
            });
        }
        let total = REQUEST_LEN + req.payload_len();
        if avail < total {
            return Ok(None);
        }
        let p = self.start + REQUEST_LEN;
        self.start += total;
        Ok(Some((req, &self.buf[p..p + req.payload_len()])))
    }

    /// Bytes still needed to complete the request at the head (0 if none
    /// is started or it is complete), so a reader can ask for enough room.
    pub fn wanted(&self) -> usize {
        let avail = self.end - self.start;
        if avail < REQUEST_LEN {
            return REQUEST_LEN - avail;
        }
        let mut hdr = [0u8; REQUEST_LEN];
        hdr.copy_from_slice(&self.buf[self.start..self.start + REQUEST_LEN]);
        match parse_request(&hdr) {
            Ok(r) if r.len <= self.max_payload => {
                (REQUEST_LEN + r.payload_len()).saturating_sub(avail)
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: Command, offset: u64, len: u32) -> Request {
        Request {
            command,
            flags: 0,
            handle: 0x0102_0304_0506_0708,
            offset,
            len,
        }
    }

    #[test]
    fn exact_request_bytes() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            ..req(Command::Write, 0x1000, 0x200)
        };
        let b = r.encode();
        assert_eq!(
            b,
            [
                0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10,
                0, 0, 0, 2, 0
            ]
        );
        assert_eq!(parse_request(&b), Ok(r));
        let mut bad = b;
        bad[0] = 0;
        assert_eq!(parse_request(&bad), Err(WireError::BadMagic(0x0060_9513)));
    }

    #[test]
    fn exact_reply_bytes() {
        assert_eq!(
            encode_reply(0x0102_0304_0506_0708, errno::EIO),
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn command_types() {
        for (t, c) in [
            (0, Command::Read),
            (1, Command::Write),
            (2, Command::Disconnect),
            (3, Command::Flush),
            (4, Command::Trim),
            (6, Command::WriteZeroes),
            (5, Command::Unknown(5)),
        ] {
            assert_eq!(Command::from_wire(t), c);
            assert_eq!(c.to_wire(), t);
        }
    }

    #[test]
    fn decoder_splits_stream_at_any_boundary() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&req(Command::Read, 0, 4096).encode());
        stream.extend_from_slice(&req(Command::Write, 512, 1024).encode());
        stream.extend((0..1024).map(|i| i as u8));
        stream.extend_from_slice(&req(Command::Flush, 0, 0).encode());
        for chunk in [1, 3, 27, 28, 29, 1000, 5000] {
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                let room = d.spare(piece.len());
                room[..piece.len()].copy_from_slice(piece);
                d.commit(piece.len());
                while let Some((r, p)) = d.next_request().expect("valid stream") {
                    got.push((r.command, p.to_vec()));
                }
            }
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!(got[1].1, (0..1024).map(|i| i as u8).collect::<Vec<_>>());
            assert_eq!(got[2].0, Command::Flush);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn decoder_refuses_oversized_writes_and_grows_for_big_ones() {
        let mut d = Decoder::new(1 << 20);
        let big = req(Command::Write, 0, 1 << 20).encode();
        d.spare(REQUEST_LEN)[..REQUEST_LEN].copy_from_slice(&big);
        d.commit(REQUEST_LEN);
        assert_eq!(d.next_request(), Ok(None));
        assert_eq!(d.wanted(), 1 << 20);
        assert!(d.spare(d.wanted()).len() >= 1 << 20);

        let mut d = Decoder::new(4096);
        let huge = req(Command::Write, 0, 8192).encode();
        d.spare(REQUEST_LEN)[..REQUEST_LEN].copy_from_slice(&huge);
        d.commit(REQUEST_LEN);
        assert_eq!(
            d.next_request(),
            Err(WireError::PayloadTooLarge {
                len: 8192,
                max: 4096
            })
        );
    }

    #[test]
    fn ranges() {
        let size = 1 << 20;
        assert_eq!(check_range(&req(Command::Read, 0, 4096), size, 512), Ok(()));
        assert_eq!(
            check_range(&req(Command::Read, size - 512, 1024), size, 512),
            Err(errno::ENOSPC)
        );
        assert_eq!(
            check_range(&req(Command::Read, u64::MAX - 10, 512), size, 512),
            Err(errno::EINVAL)
        );
        assert_eq!(
            check_range(&req(Command::Read, 100, 512), size, 512),
            Err(errno::EINVAL)
        );
        assert_eq!(
            check_range(&req(Command::Trim, 0, 0), size, 512),
            Err(errno::EINVAL)
        );
    }
}
