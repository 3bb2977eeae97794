//! The small command/event interface through which signaling drives the media plane.
//!
//! Signaling never imports the media crate: the binary implements [`MediaPlane`] over it. Sessions and
//! producers are plain integers here; the binary maps them to the media plane's own ids.

use dais_proto::MediaKind;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

/// What the media plane reports about one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A server-initiated offer for the client.
    Offer {
        /// SDP text.
        sdp: String,
    },
    /// The client started publishing a stream.
    Published {
        /// Media-plane producer id.
        producer: u64,
        /// Audio or video.
        kind: MediaKind,
        /// Codec name, e.g. `"vp8"`.
        codec: String,
    },
    /// The client stopped publishing a stream on its own (renegotiation).
    Unpublished {
        /// Media-plane producer id.
        producer: u64,
    },
    /// The media plane stopped sending the client one video stream (`reason`: `"bandwidth"` or
    /// `"hidden"`).
    VideoPaused {
        /// Media-plane producer id.
        producer: u64,
        /// Why.
        reason: String,
    },
    /// That video stream is sent again.
    VideoResumed {
        /// Media-plane producer id.
        producer: u64,
    },
    /// One of the client's audio streams finished a window of its level meter: `activity` is the
    /// percentage of voiced packets (0 to 100), for the room's active-speaker detector.
    AudioActivity {
        /// Media-plane producer id.
        producer: u64,
        /// 0 to 100.
        activity: u8,
    },
    /// ICE and DTLS completed.
    Connected,
    /// The media connection was lost; the session is gone.
    Disconnected,
}

/// Why the media plane refused a client offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferRejection {
    /// Unparseable or unacceptable SDP (detail for the log only).
    BadSdp(String),
    /// The session may not publish.
    NotAPublisher,
    /// A server offer is outstanding.
    Collision,
    /// The offer sends more streams than a publisher may (the detail is safe to show).
    TooManyStreams {
        /// What was offered, against the limits.
        detail: String,
    },
    /// The session no longer exists.
    Gone,
}

/// Why the media plane refused a client answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerRejection {
    /// Unparseable or mismatched SDP (detail for the log only).
    BadSdp(String),
    /// No server offer was outstanding.
    Unexpected,
    /// The session no longer exists.
    Gone,
}

/// What a media session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// A speaker: it may publish, and is sent what it subscribes to in server offers.
    Speaker,
    /// A viewer: it only receives, in server offers.
    Viewer,
    /// A WHEP player: it only receives, on the m-lines of its own offer, and is never sent an offer.
    Player,
}

/// Commands signaling sends to the media plane.
pub trait MediaPlane: Send + Sync + 'static {
    /// Create a session; its events go to `events`.
    fn open_session(&self, session: u64, mode: SessionMode, events: mpsc::UnboundedSender<MediaEvent>);
    /// Apply a client offer; resolves to the answer SDP.
    fn client_offer(&self, session: u64, sdp: String) -> BoxFuture<'static, Result<String, OfferRejection>>;
    /// Apply a client answer to the outstanding server offer.
    fn client_answer(&self, session: u64, sdp: String) -> BoxFuture<'static, Result<(), AnswerRejection>>;
    /// A trickled client candidate.
    fn add_candidate(&self, session: u64, candidate: String);
    /// Send `producer` to `session`, labelled with msid `stream_id track_id`.
    fn subscribe(&self, session: u64, producer: u64, stream_id: String, track_id: String);
    /// End a session and its producers.
    fn close_session(&self, session: u64);
    /// Allow or forbid a session to publish. Forbidding ends its producers (reported as
    /// [`MediaEvent::Unpublished`]) and stops their m-lines with a server offer.
    fn set_publisher(&self, session: u64, publisher: bool);
    /// Pause or resume forwarding one producer (server-side mute).
    fn set_paused(&self, producer: u64, paused: bool);
    /// The client shows `producer` at `width` x `height` device pixels (0x0: hidden).
    fn video_size(&self, session: u64, producer: u64, width: u16, height: u16);
}
