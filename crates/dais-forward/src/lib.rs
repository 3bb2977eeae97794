//! Sans-IO forwarding core of the Dais SFU.
//!
//! A [`Router`] owns producers (incoming streams, each a set of simulcast layers) and consumers (one
//! outgoing copy of a producer for one participant). The caller pushes RTP in with
//! [`Router::handle_rtp`], viewer feedback with [`Router::handle_keyframe_request`] and
//! [`Router::handle_nack`], and time with [`Router::handle_timeout`], then drains [`Router::poll_output`].
//! Each [`RtpOut`] carries everything egress needs (the caller's sink for the consumer, the rewritten
//! header, the shared payload, the media's header-extension values and capture time), so the caller
//! looks nothing up. The core never reads a clock, never touches a socket and never allocates per
//! consumer per packet once warm: payloads are shared [`Payload`]s and the output queue is reused.
//! Retransmissions come from one [packet cache](cache) per producer layer, whatever the number of
//! consumers. Bytes from the network never panic and never become an `Err`; a packet that cannot be
//! forwarded becomes a counted drop with a [`DropReason`].

pub mod alloc;
pub mod cache;
mod drop;
mod hash;
pub mod keyframe;
mod router;
mod seq;
pub mod speech;
pub mod vp8;

pub use drop::{DropCounters, DropReason};
pub use keyframe::is_keyframe_start;
pub use router::{ConsumeError, LayerCensus, Router, RouterConfig, RouterStats};
pub use vp8::Vp8Ids;

use std::sync::Arc;
use std::time::Instant;

/// An RTP payload, shared by every consumer that forwards it and by the packet cache.
pub type Payload = Arc<[u8]>;

/// Identifies one producer of a [`Router`]. Ids are never reused by the router that handed them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProducerId(pub u32);

/// Identifies one consumer of a [`Router`]. Ids are never reused by the router that handed them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId(pub u32);

/// Whether a producer carries audio or video; only video is gated on keyframes and retransmitted.
///
/// This is the one media kind of the media plane (`dais-media` uses it as it is); the wire protocol
/// has its own serializable twin, converted with `From` (see `dais-proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Audio: forwarded from the first packet, never gated, no keyframe requests.
    Audio,
    /// Video: a new consumer waits for a keyframe.
    Video,
}

/// The codecs the router understands well enough to find keyframes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus audio.
    Opus,
    /// VP8 video (RFC 7741).
    Vp8,
    /// VP9 video (RFC 9628).
    Vp9,
    /// H.264 video (RFC 6184).
    H264,
    /// AV1 video (AOM RTP payload format).
    Av1,
    /// Anything else (RTX, RED, FEC, other audio); forwarded but never a keyframe.
    Other,
}

impl Codec {
    /// Number of variants; tables indexed by codec have this length.
    pub(crate) const COUNT: usize = 6;

    /// Dense index for per-codec tables.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// How a keyframe is asked for upstream (RTCP PLI or FIR). FIR is the stronger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyframeKind {
    /// Picture Loss Indication (RFC 4585).
    Pli,
    /// Full Intra Request (RFC 5104).
    Fir,
}

/// A simulcast layer of a producer: 0 is the only layer of a producer without simulcast, and the
/// lowest quality of one with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LayerId(pub u8);

/// Most layers a producer may have.
pub const MAX_LAYERS: usize = 4;

/// What was negotiated with the publisher of a producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSpec {
    /// Audio or video.
    pub kind: MediaKind,
    /// RTP clock rate, used to keep timestamps continuous across a stream restart.
    pub clock_rate: u32,
    /// Payload type to codec, as negotiated with the publisher. PTs above 127 are ignored.
    pub payload_types: Vec<(u8, Codec)>,
    /// Number of simulcast layers, 1 to [`MAX_LAYERS`] (values outside are clamped). Each layer is its
    /// own RTP stream with its own SSRC, sequence numbers and packet cache: a packet of another layer
    /// is never taken for a restart of this one.
    pub layers: u8,
}

/// What was negotiated with the participant a consumer sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The caller's handle of where this consumer's packets go (for the media plane: its session).
    /// Opaque to the router and returned in every [`RtpOut`].
    pub sink: u64,
    /// The consumer's own outgoing SSRC.
    pub ssrc: u32,
    /// Codec to payload type, as negotiated with this participant; the first entry for a codec wins.
    pub payload_types: Vec<(Codec, u8)>,
    /// Sequence number of the first packet this consumer sends.
    pub initial_seq: u16,
}

/// Header-extension values that describe the media itself, and so travel with each packet to every
/// consumer (transport extensions such as abs-send-time belong to each leg and are not here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaExt {
    /// RFC 6464 audio level, -127 to 0 dBov.
    pub audio_level: Option<i8>,
    /// RFC 6464 voice activity flag.
    pub voice_activity: Option<bool>,
    /// Coordination of video orientation (the CVO byte's rotation bits).
    pub video_orientation: Option<u8>,
    /// Video content type (0 unspecified, 1 screenshare).
    pub video_content_type: Option<u8>,
}

/// One RTP packet from a publisher, already parsed and decrypted by the media layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpIn {
    /// The simulcast layer it belongs to ([`LayerId(0)`](LayerId) without simulcast).
    pub layer: LayerId,
    /// SSRC the publisher sent it with; a change within a layer means the publisher restarted it.
    pub ssrc: u32,
    /// Wire sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Payload type as negotiated with the publisher.
    pub payload_type: u8,
    /// RTP marker bit.
    pub marker: bool,
    /// RTP payload (without header and padding).
    pub payload: Payload,
    /// Header-extension values that travel with the media.
    pub ext: MediaExt,
    /// The publisher's capture time of the packet on the caller's clock (for sender reports).
    pub wallclock: Instant,
}

/// One RTP packet for one consumer, with the header fields rewritten for that consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpOut {
    /// The consumer that sends it.
    pub consumer: ConsumerId,
    /// The consumer's [`ConsumerSpec::sink`].
    pub sink: u64,
    /// The consumer's SSRC.
    pub ssrc: u32,
    /// Extended sequence number, monotonic per consumer; the wire value is `seq as u16`.
    pub seq: u64,
    /// Rewritten RTP timestamp.
    pub timestamp: u32,
    /// Payload type as negotiated with the consumer.
    pub payload_type: u8,
    /// RTP marker bit, copied.
    pub marker: bool,
    /// The packet starts a keyframe.
    pub keyframe: bool,
    /// A retransmission, answering the consumer's NACK (or probing its downlink), of a packet it was
    /// sent before with the same `seq`; send it as RTX where that was negotiated.
    pub resend: bool,
    /// A resend that only probes the downlink ([`RouterStats::probe_bytes`]): the receiver already has it.
    pub probe: bool,
    /// VP8 ids to patch into the payload descriptor (same width, same length), for a consumer of a
    /// simulcast VP8 producer; `None` leaves the payload as it is.
    pub vp8: Option<Vp8Ids>,
    /// Shared clone of the input payload, never copied.
    pub payload: Payload,
    /// Copied from the input.
    pub ext: MediaExt,
    /// Copied from the input.
    pub wallclock: Instant,
}

/// Why a video consumer forwards nothing for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PauseReason {
    /// Its viewer's downlink estimate cannot carry even the lowest layer next to the audio.
    Bandwidth,
    /// Its viewer said the tile is hidden (a video size of 0x0).
    Hidden,
}

impl PauseReason {
    /// Stable snake_case name, for the wire and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            PauseReason::Bandwidth => "bandwidth",
            PauseReason::Hidden => "hidden",
        }
    }
}

/// Work for the media layer, drained with [`Router::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this packet on the consumer's session.
    Rtp(RtpOut),
    /// Send a PLI or FIR to the publisher of this producer layer.
    KeyframeRequest {
        /// The producer whose publisher should send a keyframe.
        producer: ProducerId,
        /// The layer that needs it.
        layer: LayerId,
        /// PLI or FIR.
        kind: KeyframeKind,
    },
    /// A video consumer stopped forwarding ([`Router::set_estimate`], [`Router::set_video_size`]).
    Paused {
        /// The consumer.
        consumer: ConsumerId,
        /// Its [`ConsumerSpec::sink`].
        sink: u64,
        /// Why.
        reason: PauseReason,
    },
    /// A paused video consumer forwards again, from a keyframe of `layer`.
    Resumed {
        /// The consumer.
        consumer: ConsumerId,
        /// Its [`ConsumerSpec::sink`].
        sink: u64,
        /// The layer it forwards.
        layer: LayerId,
    },
    /// Consumer `to` took over from `from` ([`Router::hand_over`]): `from` is gone, and `to` sends
    /// on the same SSRC, continuing its sequence numbers and timestamps.
    HandedOver {
        /// The consumer that was removed.
        from: ConsumerId,
        /// The one that sends now.
        to: ConsumerId,
        /// Their [`ConsumerSpec::sink`].
        sink: u64,
    },
}
