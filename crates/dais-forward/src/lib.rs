//! Sans-IO forwarding core of the Dais SFU.
//!
//! A [`Router`] owns producers (incoming streams) and consumers (one outgoing copy of a producer for one
//! participant). The caller pushes RTP in with [`Router::handle_rtp`], viewer feedback with
//! [`Router::handle_keyframe_request`] and time with [`Router::handle_timeout`], then drains
//! [`Router::poll_output`]. The core never reads a clock, never touches a socket and never allocates per
//! consumer per packet once warm: payloads are shared [`bytes::Bytes`] and the output queue is reused.
//! Bytes from the network never panic and never become an `Err`; a packet that cannot be forwarded becomes a
//! counted drop with a [`DropReason`].

mod drop;
mod hash;
pub mod keyframe;
mod router;
mod seq;

pub use drop::{DropCounters, DropReason};
pub use keyframe::is_keyframe_start;
pub use router::{ConsumeError, Router, RouterConfig, RouterStats};

use bytes::Bytes;

/// Identifies one producer of a [`Router`]. Ids are never reused by the router that handed them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProducerId(pub u32);

/// Identifies one consumer of a [`Router`]. Ids are never reused by the router that handed them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId(pub u32);

/// Whether a producer carries audio or video; only video is gated on keyframes.
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

/// What was negotiated with the publisher of a producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSpec {
    /// Audio or video.
    pub kind: MediaKind,
    /// RTP clock rate, used to keep timestamps continuous across a stream restart.
    pub clock_rate: u32,
    /// Payload type to codec, as negotiated with the publisher. PTs above 127 are ignored.
    pub payload_types: Vec<(u8, Codec)>,
}

/// What was negotiated with the participant a consumer sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The consumer's own outgoing SSRC.
    pub ssrc: u32,
    /// Codec to payload type, as negotiated with this participant; the first entry for a codec wins.
    pub payload_types: Vec<(Codec, u8)>,
    /// Sequence number of the first packet this consumer sends.
    pub initial_seq: u16,
}

/// One RTP packet from a publisher, already parsed and decrypted by the media layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpIn {
    /// SSRC the publisher sent it with; a change means the publisher restarted the stream.
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
    pub payload: Bytes,
}

/// One RTP packet for one consumer, with the header fields rewritten for that consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpOut {
    /// The consumer that sends it.
    pub consumer: ConsumerId,
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
    /// Shared clone of the input payload, never copied.
    pub payload: Bytes,
}

/// Work for the media layer, drained with [`Router::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this packet on the consumer's session.
    Rtp(RtpOut),
    /// Send a PLI or FIR to the publisher of this producer.
    KeyframeRequest {
        /// The producer whose publisher should send a keyframe.
        producer: ProducerId,
        /// PLI or FIR.
        kind: KeyframeKind,
    },
}
