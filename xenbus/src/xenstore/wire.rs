//! The xenstore wire codec (`xen/io/xs_wire.h`, `docs/misc/xenstore.txt`).
//!
//! Every message is a 16-byte header (`type`, `req_id`, `tx_id`, `len`, each a
//! `u32` in the platform's native order, which is little-endian on every
//! architecture Xen runs on) followed by `len` bytes of payload, at most
//! [`PAYLOAD_MAX`]. Payloads are `\0`-separated strings.
//!
//! Everything decoded here comes from the other side of a trust boundary
//! (the xenstore daemon, or whoever wrote into the shared ring page): the
//! decoders never panic, never allocate more than one maximal message, and
//! report what was wrong as a [`DecodeError`] (a peer fault). Encoders refuse
//! what the daemon would refuse or punish (an over-long payload gets the
//! connection dropped) with an [`EncodeError`] (a caller fault).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Size of the message header.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`: a longer payload makes the daemon drop the
/// connection, so we never send one and never accept one.
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`: longest absolute path (excluding the `\0`).
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`: longest relative path (excluding the `\0`).
pub const REL_PATH_MAX: usize = 2048;

/// Message types (`enum xsd_sockmsg_type`). Numbers checked against Xen
/// 4.17's `xs_wire.h`; 20 (`XS_RESTRICT`) was removed and is not valid.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// `XS_CONTROL` / `XS_DEBUG`.
    Debug = 0,
    /// List the children of a node.
    Directory = 1,
    /// Read a node's value.
    Read = 2,
    /// Read a node's permissions.
    GetPerms = 3,
    /// Register a watch.
    Watch = 4,
    /// Remove a watch.
    Unwatch = 5,
    /// Start a transaction; the reply is its decimal id.
    TransactionStart = 6,
    /// End a transaction: `T` commits, `F` aborts.
    TransactionEnd = 7,
    /// Introduce a domain (privileged).
    Introduce = 8,
    /// Release a domain (privileged).
    Release = 9,
    /// Ask for `/local/domain/<domid>`.
    GetDomainPath = 10,
    /// Write a node's value.
    Write = 11,
    /// Create a node.
    Mkdir = 12,
    /// Remove a node and its children.
    Rm = 13,
    /// Set a node's permissions.
    SetPerms = 14,
    /// Asynchronous watch event (daemon to client only).
    WatchEvent = 15,
    /// Error reply carrying an errno name.
    Error = 16,
    /// Ask whether a domain was introduced (privileged).
    IsDomainIntroduced = 17,
    /// Resume a domain (privileged).
    Resume = 18,
    /// Make a domain the target of another (privileged).
    SetTarget = 19,
    /// Remove all of this connection's watches.
    ResetWatches = 21,
    /// A part of a directory listing too long for one reply.
    DirectoryPart = 22,
}

impl MsgType {
    /// Every valid type, in numeric order.
    pub const ALL: [MsgType; 22] = [
        MsgType::Debug,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
    ];

    /// The type with this wire number, if it is one.
    pub fn from_u32(v: u32) -> Option<Self> {
        MsgType::ALL.iter().copied().find(|t| *t as u32 == v)
    }

    /// The name `xs_wire.h` gives the type.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::Debug => "DEBUG",
            MsgType::Directory => "DIRECTORY",
            MsgType::Read => "READ",
            MsgType::GetPerms => "GET_PERMS",
            MsgType::Watch => "WATCH",
            MsgType::Unwatch => "UNWATCH",
            MsgType::TransactionStart => "TRANSACTION_START",
            MsgType::TransactionEnd => "TRANSACTION_END",
            MsgType::Introduce => "INTRODUCE",
            MsgType::Release => "RELEASE",
            MsgType::GetDomainPath => "GET_DOMAIN_PATH",
            MsgType::Write => "WRITE",
            MsgType::Mkdir => "MKDIR",
            MsgType::Rm => "RM",
            MsgType::SetPerms => "SET_PERMS",
            MsgType::WatchEvent => "WATCH_EVENT",
            MsgType::Error => "ERROR",
            MsgType::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            MsgType::Resume => "RESUME",
            MsgType::SetTarget => "SET_TARGET",
            MsgType::ResetWatches => "RESET_WATCHES",
            MsgType::DirectoryPart => "DIRECTORY_PART",
        }
    }
}

/// The 16-byte message header (`struct xsd_sockmsg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// Raw message type (see [`MsgType`]); kept raw so that unknown types
    /// can be reported rather than lost.
    pub ty: u32,
    /// Request id, echoed by the daemon in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Serialises the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.ty.to_le_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Parses a header. Does not validate it (see [`Header::validate`]).
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            ty: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// Checks what the peer could get wrong in a header: the type must be
    /// known and the payload no longer than [`PAYLOAD_MAX`].
    pub fn validate(&self) -> Result<MsgType, DecodeError> {
        if self.len as usize > PAYLOAD_MAX {
            return Err(DecodeError::PayloadTooLong { len: self.len });
        }
        MsgType::from_u32(self.ty).ok_or(DecodeError::UnknownType { ty: self.ty })
    }
}

/// The errno names the daemon sends in `XS_ERROR` replies (`xsd_errors[]`
/// in `xs_wire.h`, plus `EQUOTA`, which some daemons use for quota
/// violations).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum XsErrno {
    /// `ENOENT`: no such node.
    NoEnt,
    /// `EACCES`: permission denied.
    Acces,
    /// `EAGAIN`: transaction conflict; rerun the whole transaction.
    Again,
    /// `E2BIG`: the reply (or request) would exceed the payload limit.
    TooBig,
    /// `EEXIST`: already exists (e.g. a duplicate watch).
    Exist,
    /// `EINVAL`: malformed request (bad path, bad permission string...).
    Inval,
    /// `ENOSPC`: quota exceeded (node size, node count).
    NoSpc,
    /// `EISDIR`: operation not valid on a directory.
    IsDir,
    /// `EROFS`: read-only connection or node.
    RoFs,
    /// `EBUSY`: the daemon is busy (e.g. live update).
    Busy,
    /// `ENOSYS`: unknown or unsupported request type.
    NoSys,
    /// `EQUOTA`: quota exceeded.
    Quota,
    /// `ENOMEM`: the daemon ran out of memory.
    NoMem,
    /// `EIO`: the daemon hit an internal error.
    Io,
    /// `ENOTEMPTY`: directory not empty.
    NotEmpty,
    /// `EISCONN`: domain already introduced.
    IsConn,
    /// `EPERM`: operation not permitted (privileged request).
    Perm,
    /// Any other name the daemon sent (kept, truncated to 64 bytes).
    Other(String),
}

impl XsErrno {
    const TABLE: [(&'static str, XsErrno); 17] = [
        ("ENOENT", XsErrno::NoEnt),
        ("EACCES", XsErrno::Acces),
        ("EAGAIN", XsErrno::Again),
        ("E2BIG", XsErrno::TooBig),
        ("EEXIST", XsErrno::Exist),
        ("EINVAL", XsErrno::Inval),
        ("ENOSPC", XsErrno::NoSpc),
        ("EISDIR", XsErrno::IsDir),
        ("EROFS", XsErrno::RoFs),
        ("EBUSY", XsErrno::Busy),
        ("ENOSYS", XsErrno::NoSys),
        ("EQUOTA", XsErrno::Quota),
        ("ENOMEM", XsErrno::NoMem),
        ("EIO", XsErrno::Io),
        ("ENOTEMPTY", XsErrno::NotEmpty),
        ("EISCONN", XsErrno::IsConn),
        ("EPERM", XsErrno::Perm),
    ];

    /// Maps an errno name (without the trailing `\0`) to the enum.
    pub fn from_name(name: &str) -> Self {
        for (n, e) in XsErrno::TABLE.iter() {
            if *n == name {
                return e.clone();
            }
        }
        let mut end = name.len().min(64);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        XsErrno::Other(String::from(&name[..end]))
    }

    /// Decodes an `XS_ERROR` payload (`"ENOENT\0"`). A payload that is not
    /// an ASCII name maps to [`XsErrno::Other`].
    pub fn from_payload(payload: &[u8]) -> Self {
        let name = payload.split(|b| *b == 0).next().unwrap_or(&[]);
        match core::str::from_utf8(name) {
            Ok(s) => XsErrno::from_name(s),
            Err(_) => XsErrno::Other(String::from("<non-utf8>")),
        }
    }

    /// The errno name as the daemon spells it.
    pub fn name(&self) -> &str {
        if let XsErrno::Other(s) = self {
            return s;
        }
        for (n, e) in XsErrno::TABLE.iter() {
            if e == self {
                return n;
            }
        }
        "EINVAL"
    }
}

impl fmt::Display for XsErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "xenstore error {}", self.name())
    }
}

/// The peer sent bytes that do not form a valid xenstore message. Always a
/// peer fault; the connection is out of sync and must be dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The header announced a payload longer than [`PAYLOAD_MAX`].
    PayloadTooLong {
        /// The announced length.
        len: u32,
    },
    /// The header carried a type number that is not in `xs_wire.h`.
    UnknownType {
        /// The raw type.
        ty: u32,
    },
    /// A reply answered a request id we had not sent (or sent long ago).
    UnexpectedReqId {
        /// The id we were waiting for.
        expected: u32,
        /// The id the peer sent.
        got: u32,
    },
    /// A reply's type is neither the request's type nor `ERROR`.
    UnexpectedReplyType {
        /// The request type.
        expected: MsgType,
        /// The reply type.
        got: MsgType,
    },
    /// A string field was missing its `\0` terminator.
    MissingNul,
    /// A string field was not UTF-8.
    NotUtf8,
    /// A reply that must be `OK` was something else.
    NotOk,
    /// A transaction id reply was not a decimal `u32`.
    BadTransactionId,
    /// A permission string was malformed.
    BadPermission,
    /// A boolean reply was neither `T` nor `F`.
    BadBool,
    /// A watch event was not `path\0token\0`.
    BadWatchEvent,
    /// A `DIRECTORY_PART` reply was malformed.
    BadDirectoryPart,
    /// The peer sent more watch events while one reply was due than any
    /// real daemon would ([`MAX_EVENTS_PER_REPLY`]): it is keeping us busy.
    EventFlood,
}

/// Watch events accepted while waiting for a single reply before the peer
/// is declared hostile (so a flood cannot keep a caller waiting forever).
pub const MAX_EVENTS_PER_REPLY: usize = 1 << 16;

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::PayloadTooLong { len } => write!(
                f,
                "peer sent a payload of {len} bytes, over the {PAYLOAD_MAX}-byte limit"
            ),
            DecodeError::UnknownType { ty } => write!(f, "peer sent unknown message type {ty}"),
            DecodeError::UnexpectedReqId { expected, got } => write!(
                f,
                "peer answered request id {got} while request {expected} was outstanding"
            ),
            DecodeError::UnexpectedReplyType { expected, got } => write!(
                f,
                "peer answered a {} request with {}",
                expected.name(),
                got.name()
            ),
            DecodeError::MissingNul => f.write_str("peer sent a string without its NUL"),
            DecodeError::NotUtf8 => f.write_str("peer sent a string that is not UTF-8"),
            DecodeError::NotOk => f.write_str("peer sent something other than OK"),
            DecodeError::BadTransactionId => f.write_str("peer sent a malformed transaction id"),
            DecodeError::BadPermission => f.write_str("peer sent a malformed permission"),
            DecodeError::BadBool => f.write_str("peer sent a boolean other than T or F"),
            DecodeError::BadWatchEvent => f.write_str("peer sent a malformed watch event"),
            DecodeError::BadDirectoryPart => f.write_str("peer sent a malformed directory part"),
            DecodeError::EventFlood => f.write_str("peer flooded watch events instead of replying"),
        }
    }
}

/// We refused to encode a request the daemon would reject or punish.
/// Always the caller's fault; nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The payload would exceed [`PAYLOAD_MAX`] (the daemon would drop the
    /// connection).
    PayloadTooLong {
        /// The payload length that was refused.
        len: usize,
    },
    /// The path exceeds [`ABS_PATH_MAX`] or [`REL_PATH_MAX`].
    PathTooLong {
        /// The path length that was refused.
        len: usize,
    },
    /// The path is empty, has a character outside `[A-Za-z0-9_@/-]`, a `//`
    /// or a trailing `/`.
    InvalidPath,
    /// A token or value that must be a string contains a `\0`.
    EmbeddedNul,
    /// A permission list must name at least the owner.
    EmptyPermissions,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::PayloadTooLong { len } => write!(
                f,
                "request payload of {len} bytes exceeds the {PAYLOAD_MAX}-byte limit"
            ),
            EncodeError::PathTooLong { len } => write!(f, "path of {len} bytes is too long"),
            EncodeError::InvalidPath => f.write_str("invalid xenstore path"),
            EncodeError::EmbeddedNul => f.write_str("string contains a NUL byte"),
            EncodeError::EmptyPermissions => f.write_str("permission list is empty"),
        }
    }
}

/// Checks a path the way `xenstored` does before it is sent: absolute
/// (`/...`) up to [`ABS_PATH_MAX`], relative (to the domain's home) up to
/// [`REL_PATH_MAX`], special `@...` watch paths allowed; characters limited
/// to `[A-Za-z0-9_@/-]`; no `//`, no trailing `/` except for `/` itself.
pub fn validate_path(path: &str) -> Result<(), EncodeError> {
    let b = path.as_bytes();
    if b.is_empty() {
        return Err(EncodeError::InvalidPath);
    }
    let max = if b[0] == b'/' {
        ABS_PATH_MAX
    } else {
        REL_PATH_MAX
    };
    if b.len() > max {
        return Err(EncodeError::PathTooLong { len: b.len() });
    }
    if b.contains(&0) {
        return Err(EncodeError::EmbeddedNul);
    }
    let ok_char = |c: &u8| c.is_ascii_alphanumeric() || b"-/_@".contains(c);
    if !b.iter().all(ok_char) {
        return Err(EncodeError::InvalidPath);
    }
    if b.windows(2).any(|w| w == b"//") || (b.len() > 1 && b[b.len() - 1] == b'/') {
        return Err(EncodeError::InvalidPath);
    }
    Ok(())
}

/// Who a permission entry applies to and what it grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

/// One permission entry (`n0`, `r1`, `b2`, `w3`). The first entry of a
/// list names the owner and the access everybody not listed gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The access granted.
    pub access: Access,
    /// The domain it applies to.
    pub domid: u32,
}

impl Perm {
    /// A permission entry.
    pub const fn new(access: Access, domid: u32) -> Self {
        Perm { access, domid }
    }

    /// Parses `n0`, `r1`, `b2`, `w3`...
    pub fn parse(s: &[u8]) -> Result<Self, DecodeError> {
        let (first, digits) = s.split_first().ok_or(DecodeError::BadPermission)?;
        let access = match first {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return Err(DecodeError::BadPermission),
        };
        let domid = parse_u32(digits).ok_or(DecodeError::BadPermission)?;
        Ok(Perm { access, domid })
    }

    fn letter(&self) -> u8 {
        match self.access {
            Access::None => b'n',
            Access::Read => b'r',
            Access::Write => b'w',
            Access::Both => b'b',
        }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.letter() as char, self.domid)
    }
}

/// Parses a decimal `u32` (no sign, no spaces, no empty string).
pub fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    let mut v: u32 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
    }
    Some(v)
}

/// A complete message as framed off the wire. The header has been
/// validated: the type is known and the payload within limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The message type.
    pub ty: MsgType,
    /// The request id.
    pub req_id: u32,
    /// The transaction id.
    pub tx_id: u32,
    /// The payload (`len` bytes).
    pub payload: Vec<u8>,
}

impl Message {
    /// Serialises header and payload into one frame.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        frame(self.ty, self.req_id, self.tx_id, &[&self.payload])
    }
}

/// Builds a frame from payload pieces, refusing payloads over the limit.
pub fn frame(
    ty: MsgType,
    req_id: u32,
    tx_id: u32,
    parts: &[&[u8]],
) -> Result<Vec<u8>, EncodeError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > PAYLOAD_MAX {
        return Err(EncodeError::PayloadTooLong { len });
    }
    let header = Header {
        ty: ty as u32,
        req_id,
        tx_id,
        // len <= PAYLOAD_MAX, so it fits.
        len: len as u32,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&header.to_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(out)
}

/// Incremental framing of an untrusted byte stream: feed whatever arrived,
/// take out complete messages. Holds at most one header plus one maximal
/// payload; a bad header is reported as soon as its 16 bytes are in, and the
/// decoder then stays failed (the stream cannot be resynchronised).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many more bytes the decoder wants before the next message can be
    /// complete (at least 1). Feeding more than this is allowed; the excess
    /// is kept for the following messages.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        let len = self.header().map_or(0, |h| h.len as usize).min(PAYLOAD_MAX);
        (HEADER_LEN + len).saturating_sub(self.buf.len()).max(1)
    }

    /// Bytes fed but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn header(&self) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header::from_bytes(h))
    }

    /// Appends received bytes. Call [`FrameDecoder::next_message`] until it
    /// returns `Ok(None)` before feeding a lot more: the buffer is bounded by
    /// what the caller feeds between calls.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(header) = self.header() else {
            return Ok(None);
        };
        let ty = match header.validate() {
            Ok(ty) => ty,
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                return Err(e);
            }
        };
        let total = HEADER_LEN + header.len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Message {
            ty,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        }))
    }
}

/// Request encoders. Each returns a whole frame (header and payload); paths
/// are validated with [`validate_path`] and the payload limit is enforced.
pub mod request {
    use super::*;
    use alloc::format;

    fn path_op(ty: MsgType, req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
        validate_path(path)?;
        frame(ty, req_id, tx_id, &[path.as_bytes(), b"\0"])
    }

    fn no_nul(s: &[u8]) -> Result<(), EncodeError> {
        if s.contains(&0) {
            Err(EncodeError::EmbeddedNul)
        } else {
            Ok(())
        }
    }

    /// `READ path\0`.
    pub fn read(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
        path_op(MsgType::Read, req_id, tx_id, path)
    }

    /// `WRITE path\0value` (the value is raw bytes, no terminator).
    pub fn write(
        req_id: u32,
        tx_id: u32,
        path: &str,
        value: &[u8],
    ) -> Result<Vec<u8>, EncodeError> {
        validate_path(path)?;
        frame(
            MsgType::Write,
            req_id,
            tx_id,
            &[path.as_bytes(), b"\0", value],
        )
    }

    /// `MKDIR path\0`.
    pub fn mkdir(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
        path_op(MsgType::Mkdir, req_id, tx_id, path)
    }

    /// `RM path\0`.
    pub fn rm(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
        path_op(MsgType::Rm, req_id, tx_id, path)
    }

    /// `DIRECTORY path\0`.
    pub fn directory(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
        path_op(MsgType::Directory, req_id, tx_id, path)
    }

    /// `DIRECTORY_PART path\0offset\0`.
    pub fn directory_part(
        req_id: u32,
        tx_id: u32,
        path: &str,
        offset: u32,
    ) -> Result<Vec<u8>, EncodeError> {
        validate_path(path)?;
        let off = format!("{offset}");
        frame(
            MsgType::DirectoryPart,
            req_id,
            tx_id,
            &[path.as_bytes(), b"\0", off.as_bytes(), b"\0"],
        )
    }

    /// `GET_PERMS path\0`.
    pub fn get_perms(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
        path_op(MsgType::GetPerms, req_id, tx_id, path)
    }

    /// `SET_PERMS path\0perm\0perm\0...`.
    pub fn set_perms(
        req_id: u32,
        tx_id: u32,
        path: &str,
        perms: &[Perm],
    ) -> Result<Vec<u8>, EncodeError> {
        validate_path(path)?;
        if perms.is_empty() {
            return Err(EncodeError::EmptyPermissions);
        }
        let mut payload = Vec::new();
        payload.extend_from_slice(path.as_bytes());
        payload.push(0);
        for p in perms {
            payload.extend_from_slice(format!("{p}").as_bytes());
            payload.push(0);
        }
        frame(MsgType::SetPerms, req_id, tx_id, &[&payload])
    }

    /// `WATCH path\0token\0`.
    pub fn watch(req_id: u32, path: &str, token: &str) -> Result<Vec<u8>, EncodeError> {
        validate_path(path)?;
        no_nul(token.as_bytes())?;
        frame(
            MsgType::Watch,
            req_id,
            0,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        )
    }

    /// `UNWATCH path\0token\0`.
    pub fn unwatch(req_id: u32, path: &str, token: &str) -> Result<Vec<u8>, EncodeError> {
        validate_path(path)?;
        no_nul(token.as_bytes())?;
        frame(
            MsgType::Unwatch,
            req_id,
            0,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        )
    }

    /// `TRANSACTION_START \0`.
    pub fn transaction_start(req_id: u32) -> Result<Vec<u8>, EncodeError> {
        frame(MsgType::TransactionStart, req_id, 0, &[b"\0"])
    }

    /// `TRANSACTION_END T\0` (commit) or `F\0` (abort).
    pub fn transaction_end(req_id: u32, tx_id: u32, commit: bool) -> Result<Vec<u8>, EncodeError> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        frame(MsgType::TransactionEnd, req_id, tx_id, &[arg])
    }

    /// `GET_DOMAIN_PATH domid\0`.
    pub fn get_domain_path(req_id: u32, domid: u32) -> Result<Vec<u8>, EncodeError> {
        let d = format!("{domid}\0");
        frame(MsgType::GetDomainPath, req_id, 0, &[d.as_bytes()])
    }

    /// `INTRODUCE domid\0mfn\0port\0`.
    pub fn introduce(req_id: u32, domid: u32, mfn: u64, port: u32) -> Result<Vec<u8>, EncodeError> {
        let p = format!("{domid}\0{mfn}\0{port}\0");
        frame(MsgType::Introduce, req_id, 0, &[p.as_bytes()])
    }

    /// `RELEASE domid\0`.
    pub fn release(req_id: u32, domid: u32) -> Result<Vec<u8>, EncodeError> {
        let d = format!("{domid}\0");
        frame(MsgType::Release, req_id, 0, &[d.as_bytes()])
    }

    /// `IS_DOMAIN_INTRODUCED domid\0`.
    pub fn is_domain_introduced(req_id: u32, domid: u32) -> Result<Vec<u8>, EncodeError> {
        let d = format!("{domid}\0");
        frame(MsgType::IsDomainIntroduced, req_id, 0, &[d.as_bytes()])
    }

    /// `RESUME domid\0`.
    pub fn resume(req_id: u32, domid: u32) -> Result<Vec<u8>, EncodeError> {
        let d = format!("{domid}\0");
        frame(MsgType::Resume, req_id, 0, &[d.as_bytes()])
    }

    /// `SET_TARGET domid\0target\0`.
    pub fn set_target(req_id: u32, domid: u32, target: u32) -> Result<Vec<u8>, EncodeError> {
        let d = format!("{domid}\0{target}\0");
        frame(MsgType::SetTarget, req_id, 0, &[d.as_bytes()])
    }

    /// `RESET_WATCHES \0`.
    pub fn reset_watches(req_id: u32) -> Result<Vec<u8>, EncodeError> {
        frame(MsgType::ResetWatches, req_id, 0, &[b"\0"])
    }

    /// `DEBUG arg\0arg\0...` (e.g. `print\0text\0`).
    pub fn debug(req_id: u32, args: &[&str]) -> Result<Vec<u8>, EncodeError> {
        let mut payload = Vec::new();
        for a in args {
            no_nul(a.as_bytes())?;
            payload.extend_from_slice(a.as_bytes());
            payload.push(0);
        }
        frame(MsgType::Debug, req_id, 0, &[&payload])
    }
}

/// Reply decoders: each takes the payload of a reply whose type matched the
/// request and returns the typed content, or a [`DecodeError`].
pub mod reply {
    use super::*;

    /// Splits a `\0`-terminated list; the last element must be terminated.
    fn nul_list(payload: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
        if payload.is_empty() {
            return Ok(Vec::new());
        }
        let body = payload.strip_suffix(b"\0").ok_or(DecodeError::MissingNul)?;
        Ok(body.split(|b| *b == 0).collect())
    }

    fn utf8(b: &[u8]) -> Result<String, DecodeError> {
        core::str::from_utf8(b)
            .map(String::from)
            .map_err(|_| DecodeError::NotUtf8)
    }

    /// `OK\0` (some daemons omit the NUL).
    pub fn ok(payload: &[u8]) -> Result<(), DecodeError> {
        match payload {
            b"OK\0" | b"OK" => Ok(()),
            _ => Err(DecodeError::NotOk),
        }
    }

    /// A `READ` value: raw bytes, no terminator.
    pub fn read(payload: &[u8]) -> Vec<u8> {
        payload.to_vec()
    }

    /// A `DIRECTORY` listing: child names, each `\0`-terminated.
    pub fn directory(payload: &[u8]) -> Result<Vec<String>, DecodeError> {
        nul_list(payload)?.into_iter().map(utf8).collect()
    }

    /// A `DIRECTORY_PART` reply: `generation\0` then names each
    /// `\0`-terminated; an extra empty name (`\0`) marks the last part.
    /// Returns the generation, the names and whether this was the last part.
    pub fn directory_part(payload: &[u8]) -> Result<(u64, Vec<String>, bool), DecodeError> {
        let gen_end = payload
            .iter()
            .position(|b| *b == 0)
            .ok_or(DecodeError::BadDirectoryPart)?;
        let gen = core::str::from_utf8(&payload[..gen_end])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(DecodeError::BadDirectoryPart)?;
        let rest = &payload[gen_end + 1..];
        let mut names = nul_list(rest)?;
        let last = rest.is_empty() || names.last().is_some_and(|n| n.is_empty());
        if last && !names.is_empty() {
            names.pop();
        }
        let names = names.into_iter().map(utf8).collect::<Result<Vec<_>, _>>()?;
        Ok((gen, names, last))
    }

    /// A `GET_PERMS` reply: `perm\0perm\0...`, at least one entry.
    pub fn perms(payload: &[u8]) -> Result<Vec<Perm>, DecodeError> {
        let list = nul_list(payload)?;
        if list.is_empty() {
            return Err(DecodeError::BadPermission);
        }
        list.into_iter().map(Perm::parse).collect()
    }

    /// A `TRANSACTION_START` reply: a decimal id, `\0`-terminated.
    pub fn transaction_id(payload: &[u8]) -> Result<u32, DecodeError> {
        let digits = payload.strip_suffix(b"\0").unwrap_or(payload);
        match parse_u32(digits) {
            Some(0) | None => Err(DecodeError::BadTransactionId),
            Some(id) => Ok(id),
        }
    }

    /// A `\0`-terminated string (`GET_DOMAIN_PATH`).
    pub fn string(payload: &[u8]) -> Result<String, DecodeError> {
        let s = payload.strip_suffix(b"\0").ok_or(DecodeError::MissingNul)?;
        if s.contains(&0) {
            return Err(DecodeError::MissingNul);
        }
        utf8(s)
    }

    /// `T\0` / `F\0` (`IS_DOMAIN_INTRODUCED`).
    pub fn boolean(payload: &[u8]) -> Result<bool, DecodeError> {
        match payload {
            b"T\0" | b"T" => Ok(true),
            b"F\0" | b"F" => Ok(false),
            _ => Err(DecodeError::BadBool),
        }
    }

    /// A `WATCH_EVENT` payload: `path\0token\0`.
    pub fn watch_event(payload: &[u8]) -> Result<WatchEvent, DecodeError> {
        let list = nul_list(payload).map_err(|_| DecodeError::BadWatchEvent)?;
        match list.as_slice() {
            [path, token] if !path.is_empty() => Ok(WatchEvent {
                path: utf8(path)?,
                token: utf8(token)?,
            }),
            _ => Err(DecodeError::BadWatchEvent),
        }
    }
}

/// A fired watch: the path that changed (or the watched path itself for the
/// initial fire) and the token given when registering.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The node that changed.
    pub path: String,
    /// The registration token.
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn type_numbers_match_xs_wire_h() {
        let expect: [(MsgType, u32); 22] = [
            (MsgType::Debug, 0),
            (MsgType::Directory, 1),
            (MsgType::Read, 2),
            (MsgType::GetPerms, 3),
            (MsgType::Watch, 4),
            (MsgType::Unwatch, 5),
            (MsgType::TransactionStart, 6),
            (MsgType::TransactionEnd, 7),
            (MsgType::Introduce, 8),
            (MsgType::Release, 9),
            (MsgType::GetDomainPath, 10),
            (MsgType::Write, 11),
            (MsgType::Mkdir, 12),
            (MsgType::Rm, 13),
            (MsgType::SetPerms, 14),
            (MsgType::WatchEvent, 15),
            (MsgType::Error, 16),
            (MsgType::IsDomainIntroduced, 17),
            (MsgType::Resume, 18),
            (MsgType::SetTarget, 19),
            (MsgType::ResetWatches, 21),
            (MsgType::DirectoryPart, 22),
        ];
        for (t, n) in expect {
            assert_eq!(t as u32, n);
            assert_eq!(MsgType::from_u32(n), Some(t));
        }
        assert_eq!(MsgType::from_u32(20), None);
        assert_eq!(MsgType::from_u32(23), None);
        assert_eq!(MsgType::from_u32(0xffff), None);
    }

    #[test]
    fn header_round_trip_and_layout() {
        let h = Header {
            ty: 2,
            req_id: 0x0102_0304,
            tx_id: 7,
            len: 9,
        };
        let b = h.to_bytes();
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn encoders_produce_exact_bytes() {
        let f = request::write(5, 3, "/a/b", b"xy").expect("must succeed");
        let mut want = vec![11, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0];
        want.extend_from_slice(b"/a/b\0xy");
        assert_eq!(f, want);
        let f = request::set_perms(
            1,
            0,
            "/a",
            &[Perm::new(Access::None, 0), Perm::new(Access::Read, 1)],
        )
        .expect("must succeed");
        assert_eq!(&f[HEADER_LEN..], b"/a\0n0\0r1\0");
        let f = request::transaction_end(1, 9, false).expect("must succeed");
        assert_eq!(&f[HEADER_LEN..], b"F\0");
        let f = request::watch(1, "@releaseDomain", "tok").expect("must succeed");
        assert_eq!(&f[HEADER_LEN..], b"@releaseDomain\0tok\0");
        let f = request::introduce(1, 3, 0x1234, 5).expect("must succeed");
        assert_eq!(&f[HEADER_LEN..], b"3\x004660\x005\0");
    }

    #[test]
    fn limits_are_enforced() {
        let big = vec![b'x'; PAYLOAD_MAX];
        assert!(matches!(
            request::write(1, 0, "/a", &big),
            Err(EncodeError::PayloadTooLong { len }) if len == PAYLOAD_MAX + 3
        ));
        let fits = vec![b'x'; PAYLOAD_MAX - 3];
        assert!(request::write(1, 0, "/a", &fits).is_ok());
        let mut abs = String::from("/");
        abs.push_str(&"a".repeat(ABS_PATH_MAX - 1));
        assert!(validate_path(&abs).is_ok());
        abs.push('a');
        assert_eq!(
            validate_path(&abs),
            Err(EncodeError::PathTooLong {
                len: ABS_PATH_MAX + 1
            })
        );
        let rel = "a".repeat(REL_PATH_MAX);
        assert!(validate_path(&rel).is_ok());
        assert!(validate_path(&(rel + "a")).is_err());
        for bad in ["", "/a//b", "/a/", "/a b", "/a\0b", "/é"] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        for good in [
            "/",
            "/local/domain/0",
            "device/vbd/51712",
            "@introduceDomain",
        ] {
            assert!(validate_path(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn error_names_map_to_enum() {
        for (name, e) in [
            ("ENOENT", XsErrno::NoEnt),
            ("EACCES", XsErrno::Acces),
            ("EAGAIN", XsErrno::Again),
            ("E2BIG", XsErrno::TooBig),
            ("EEXIST", XsErrno::Exist),
            ("EINVAL", XsErrno::Inval),
            ("ENOSPC", XsErrno::NoSpc),
            ("EISDIR", XsErrno::IsDir),
            ("EROFS", XsErrno::RoFs),
            ("EBUSY", XsErrno::Busy),
            ("ENOSYS", XsErrno::NoSys),
            ("EQUOTA", XsErrno::Quota),
            ("ENOMEM", XsErrno::NoMem),
            ("EIO", XsErrno::Io),
            ("EPERM", XsErrno::Perm),
        ] {
            let mut p = Vec::from(name.as_bytes());
            p.push(0);
            assert_eq!(XsErrno::from_payload(&p), e);
            assert_eq!(e.name(), name);
        }
        assert_eq!(
            XsErrno::from_payload(b"EWHAT\0"),
            XsErrno::Other("EWHAT".into())
        );
        assert_eq!(
            XsErrno::from_payload(b"\xff\xfe"),
            XsErrno::Other("<non-utf8>".into())
        );
        assert_eq!(XsErrno::from_payload(b""), XsErrno::Other("".into()));
    }

    #[test]
    fn reply_decoders() {
        assert_eq!(
            reply::directory(b"a\0bb\0").expect("must succeed"),
            vec!["a", "bb"]
        );
        assert_eq!(
            reply::directory(b"").expect("must succeed"),
            Vec::<String>::new()
        );
        assert_eq!(reply::directory(b"a\0b"), Err(DecodeError::MissingNul));
        assert_eq!(
            reply::perms(b"n0\0r1\0b2\0w3\0").expect("must succeed"),
            vec![
                Perm::new(Access::None, 0),
                Perm::new(Access::Read, 1),
                Perm::new(Access::Both, 2),
                Perm::new(Access::Write, 3)
            ]
        );
        for bad in [&b"x0\0"[..], b"r\0", b"r-1\0", b"r99999999999\0", b""] {
            assert!(reply::perms(bad).is_err(), "{bad:?}");
        }
        assert_eq!(reply::transaction_id(b"17\0"), Ok(17));
        assert!(reply::transaction_id(b"0\0").is_err());
        assert!(reply::transaction_id(b"x\0").is_err());
        assert_eq!(
            reply::watch_event(b"/a/b\0tok\0"),
            Ok(WatchEvent {
                path: "/a/b".into(),
                token: "tok".into()
            })
        );
        assert!(reply::watch_event(b"/a/b\0tok").is_err());
        assert!(reply::watch_event(b"/a/b\0").is_err());
        assert!(reply::watch_event(b"/a\0t\0x\0").is_err());
        assert_eq!(reply::ok(b"OK\0"), Ok(()));
        assert!(reply::ok(b"NO\0").is_err());
        assert_eq!(reply::boolean(b"T\0"), Ok(true));
        assert_eq!(
            reply::string(b"/local/domain/3\0").expect("must succeed"),
            "/local/domain/3"
        );
        assert_eq!(
            reply::directory_part(b"12\0a\0b\0\0").expect("must succeed"),
            (12, vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            reply::directory_part(b"12\0a\0").expect("must succeed"),
            (12, vec!["a".into()], false)
        );
    }

    #[test]
    fn framing_byte_by_byte_and_bad_headers() {
        let mut stream = Vec::new();
        stream.extend(request::read(1, 0, "/a").expect("must succeed"));
        stream.extend(frame(MsgType::WatchEvent, 0, 0, &[b"/a\0t\0"]).expect("must succeed"));
        stream.extend(frame(MsgType::Error, 2, 0, &[b"ENOENT\0"]).expect("must succeed"));
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &stream {
            assert!(d.wanted() >= 1);
            d.feed(core::slice::from_ref(b));
            while let Some(m) = d.next_message().expect("must succeed") {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].ty, MsgType::WatchEvent);
        assert_eq!(got[2].payload, b"ENOENT\0");
        assert_eq!(d.buffered(), 0);

        let mut d = FrameDecoder::new();
        let h = Header {
            ty: 2,
            req_id: 1,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        };
        d.feed(&h.to_bytes());
        assert_eq!(
            d.next_message(),
            Err(DecodeError::PayloadTooLong { len: 4097 })
        );
        // Stays failed.
        d.feed(&[0; 32]);
        assert!(d.next_message().is_err());

        let mut d = FrameDecoder::new();
        let h = Header {
            ty: 20,
            req_id: 1,
            tx_id: 0,
            len: 0,
        };
        d.feed(&h.to_bytes());
        assert_eq!(d.next_message(), Err(DecodeError::UnknownType { ty: 20 }));
    }
}
