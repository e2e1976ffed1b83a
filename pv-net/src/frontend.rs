//! The transport-neutral API: frames, offload flags, device information,
//! counters, and the [`NetFrontend`] trait both transports implement.

use crate::NetError;

/// Bytes of an Ethernet header (destination, source, ethertype).
pub const ETH_HLEN: usize = 14;
/// Extra bytes a frame may carry beyond `ETH_HLEN + mtu` (one VLAN tag).
pub const VLAN_HLEN: usize = 4;
/// Smallest MTU accepted from a device (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// Largest MTU used (jumbo frames); a device offering more is clamped.
pub const MAX_MTU: u16 = 9216;
/// MTU when the device does not say.
pub const DEFAULT_MTU: u16 = 1500;

/// Most bytes of a frame for `mtu` (headers included, FCS excluded).
pub const fn max_frame(mtu: u16) -> usize {
    mtu as usize + ETH_HLEN + VLAN_HLEN
}

/// A transmit checksum-offload request (Linux `CHECKSUM_PARTIAL`): the
/// 16-bit field at `start + offset` holds the pseudo-header sum, and the
/// checksum covers the frame from `start` to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxCsum {
    /// Where checksumming starts (the L4 header).
    pub start: u16,
    /// Offset of the checksum field from `start` (TCP 16, UDP 6).
    pub offset: u16,
}

/// What the device says about a received frame's checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxCsum {
    /// Nothing: the stack verifies it.
    None,
    /// The device validated it (virtio `DATA_VALID`, Xen `data_validated`).
    Valid,
    /// Not computed (virtio `NEEDS_CSUM`): as [`TxCsum`], the field at
    /// `start + offset` holds the pseudo-header sum. Only from a local peer.
    Partial {
        /// Where checksumming starts.
        start: u16,
        /// Offset of the field from `start`.
        offset: u16,
    },
    /// Xen `csum_blank`: not computed and no offsets given; the stack must
    /// find the L4 header itself (Linux netfront parses the headers) or
    /// trust the local peer.
    Blank,
}

/// A GSO annotation from a Xen extra-info slot (reported, not acted on:
/// this frontend does not ask for GSO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    /// `XEN_NETIF_GSO_TYPE_*`.
    pub kind: u8,
    /// Segment size.
    pub size: u16,
}

/// A received frame, lent to the callback of [`NetFrontend::poll_rx`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxFrame<'a> {
    /// The Ethernet frame (no virtio-net header).
    pub data: &'a [u8],
    /// Checksum state.
    pub csum: RxCsum,
    /// GSO annotation (Xen only).
    pub gso: Option<Gso>,
}

/// RX buffer refill policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxRefill {
    /// Refill (to every free buffer, one kick for the batch) once the
    /// buffers posted to the device fall to this many or fewer. 0 means
    /// "only when the device has none"; the queue size means "after every
    /// poll" (lowest latency under bursts, most kicks).
    pub low_water: u16,
}

impl Default for RxRefill {
    fn default() -> Self {
        // Half the ring: the device never runs dry between polls under
        // normal load, and refills come in batches of at least half a ring.
        Self { low_water: 128 }
    }
}

/// What the device offers, fixed between resets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetInfo {
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU (clamped to [`MIN_MTU`]..=[`MAX_MTU`]).
    pub mtu: u16,
    /// The device computes transmit checksums ([`TxCsum`] is not done in
    /// software).
    pub tx_csum: bool,
    /// The device may hand over frames with [`RxCsum::Partial`] or
    /// [`RxCsum::Blank`].
    pub rx_csum: bool,
    /// Link state is reported (otherwise the link is always up).
    pub link_status: bool,
    /// RX buffers (one frame each, or parts of one with mergeable buffers).
    pub rx_slots: u16,
    /// Frames that can be queued for transmit at once.
    pub tx_slots: u16,
    /// Notification suppression by event index (virtio EVENT_IDX; Xen rings
    /// always).
    pub event_idx: bool,
}

/// Data-path counters. Every packet dropped or error logged on the data
/// path is counted here; monotonic from construction (a reset keeps them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames accepted for transmit.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Transmit checksums computed in software.
    pub tx_csum_sw: u64,
    /// Transmits the device reported failed or dropped (Xen status), or
    /// completed with an impossible length (virtio). Logged at `warn`.
    pub tx_errors: u64,
    /// Frames delivered to the caller.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames dropped because the device wrote an impossible length (more
    /// than the buffer, less than the header, beyond the MTU, past a page).
    pub rx_bad_len: u64,
    /// Frames dropped for a header out of spec (flags, GSO type, checksum
    /// offsets, Xen flags or extra-info).
    pub rx_bad_header: u64,
    /// Frames dropped for an implausible or incomplete buffer count
    /// (virtio `num_buffers`, Xen `more_data` chains).
    pub rx_bad_chain: u64,
    /// Frames the backend reported as errors (Xen negative status).
    pub rx_errors: u64,
    /// RX buffers posted.
    pub rx_posted: u64,
    /// Notifications sent to the device (kicks / event-channel sends).
    pub kicks: u64,
    /// Kick decisions where the device had asked not to be notified.
    pub kicks_suppressed: u64,
    /// Times the frontend stopped on a device fault. Logged at `error`.
    pub stops: u64,
    /// Successful resets.
    pub resets: u64,
    /// Control commands the device accepted.
    pub ctrl_ok: u64,
    /// Control commands refused or unanswered.
    pub ctrl_err: u64,
}

impl Stats {
    /// Frames dropped for any device fault.
    pub fn rx_dropped(&self) -> u64 {
        self.rx_bad_len + self.rx_bad_header + self.rx_bad_chain + self.rx_errors
    }
}

/// A network frontend over some transport.
///
/// # Failure model
///
/// A completion that fails validation drops its packet (counted). When the
/// device can no longer be trusted to keep the rings straight, the frontend
/// *stops*: data-path calls return the fault (then [`NetError::Stopped`]),
/// and [`NetFrontend::reset`] brings it back with fresh queues. Nothing the
/// device writes makes this code panic or loop.
pub trait NetFrontend {
    /// MAC, MTU and offloads.
    fn info(&self) -> NetInfo;

    /// Current link state (always up if the device does not report it).
    fn link_up(&mut self) -> bool;

    /// Copy `frame` into a transmit slot and make it available to the
    /// device, without notifying it (see [`NetFrontend::flush_tx`]). With
    /// `csum`, the checksum is left to the device if it offers that, else
    /// computed here.
    fn queue_tx(&mut self, frame: &[u8], csum: Option<TxCsum>) -> Result<(), NetError>;

    /// Notify the device of frames queued since the last flush, if it asked
    /// to be (one kick at most). Returns whether it was notified.
    fn flush_tx(&mut self) -> Result<bool, NetError>;

    /// [`NetFrontend::queue_tx`] then [`NetFrontend::flush_tx`].
    fn send(&mut self, frame: &[u8], csum: Option<TxCsum>) -> Result<(), NetError> {
        self.queue_tx(frame, csum)?;
        self.flush_tx().map(|_| ())
    }

    /// Frames that can be queued now.
    fn tx_space(&self) -> usize;

    /// Reclaim transmit slots the device is done with. Returns how many.
    fn poll_tx(&mut self) -> Result<usize, NetError>;

    /// Deliver up to `budget` received frames to `f`, then refill RX buffers
    /// per the [`RxRefill`] policy. Returns frames delivered.
    fn poll_rx(&mut self, budget: usize, f: &mut dyn FnMut(RxFrame<'_>))
        -> Result<usize, NetError>;

    /// Before sleeping: ask for an interrupt on the next RX or TX completion,
    /// then re-check. Returns true if work is already pending (poll again
    /// instead of sleeping).
    fn enable_interrupts(&mut self) -> Result<bool, NetError>;

    /// While polling: ask the device not to interrupt.
    fn disable_interrupts(&mut self);

    /// The fault that stopped the frontend, if any.
    fn fault(&self) -> Option<NetError>;

    /// Counters.
    fn stats(&self) -> Stats;

    /// Take everything back from the device and start afresh: frames in
    /// flight are lost (network semantics), counters are kept.
    fn reset(&mut self) -> Result<(), NetError>;
}
