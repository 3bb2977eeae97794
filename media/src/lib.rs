//! The Dais media plane: every participant's WebRTC session (str0m, ICE-lite, DTLS-SRTP) on one UDP port.
//!
//! The shape follows quinn: sans-IO pieces that are told the time, and a thin driver that moves bytes.
//! - The `endpoint` decides which session a datagram belongs to (by transport and source address,
//!   learnt from authenticated STUN through each session's ICE ufrag).
//! - A `session` is one participant's `Rtc` plus its `negotiation`: push a datagram,
//!   an offer or an answer in, poll datagrams and events out.
//! - A `hub` is one worker's sessions and its [`dais_forward::Router`]: it glues sessions to the
//!   router, keeps the producers and consumers, mirrors other workers' producers and keeps the timers.
//! - The `worker` is the IO driver of a hub (and, on worker 0, of the endpoint): sockets, queues, the
//!   timer. [`MediaServer`] starts [`MediaConfig::workers`] of them (default one per core); callers talk
//!   to them through a [`MediaHandle`] and hear back through each session's [`EventSink`].
//!
//! Worker 0 reads the socket and hands each datagram to the worker that owns its session. A producer
//! lives on its publisher's worker; every other worker keeps a mirror, fed with each packet as one shared
//! message (the payload is never copied). Every worker sends its own sessions' datagrams with `sendmmsg`.
//!
//! Negotiation model: a publishing client offers its own media (one m-line per producer); the server
//! offers every consumer m-line (sendonly from the server, only the producer's codec plus RTX) and
//! stops them when the producer ends. One server offer is outstanding at a time; a client offer that
//! collides with it is refused with [`OfferError::Collision`].

mod codec;
mod endpoint;
mod framing;
mod handle;
mod hub;
mod lines;
pub mod mixer;
mod negotiation;
mod queues;
mod sdp_check;
mod send;
mod session;
mod stats;
mod tcp;
mod worker;

use std::net::{IpAddr, SocketAddr};

pub use dais_forward::{DropReason, PauseReason};

/// Entry points for the cargo-fuzz targets in `media/fuzz` (not an API).
#[doc(hidden)]
pub mod fuzzing {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use crate::endpoint::{Addr, Demux, Endpoint, Route};
    use crate::{sdp_check, SessionId};

    /// Every text check of client SDP.
    pub fn sdp_text(sdp: &str) {
        let _ = sdp_check::offers_to_send(sdp);
        let (audio, video) = sdp_check::sending_mlines(sdp);
        assert!(audio + video <= sdp.matches("m=").count(), "more sending m-lines than m-lines");
        let _ = sdp_check::has_usable_media(sdp);
        let _ = sdp_check::bundle_tag(sdp);
        let _ = sdp_check::with_version(sdp, 7);
    }

    /// Datagrams cut from `data` (a length byte, an address byte, the bytes), fed to an endpoint with
    /// two registered sessions. Panics if one of them latches an address (no input can carry a valid
    /// MESSAGE-INTEGRITY for the random passwords).
    pub fn endpoint(mut data: &[u8]) {
        let mut e = Endpoint::new();
        let mut now = Instant::now();
        for s in 0..2u64 {
            let creds = str0m::ice::IceCreds::new();
            e.register(now, Route { worker: s as usize, session: SessionId(s) }, &creds);
        }
        while let [len, who, rest @ ..] = data {
            let n = usize::from(*len).min(rest.len());
            let (datagram, tail) = rest.split_at(n);
            let from = Addr::udp(SocketAddr::from(([10, 0, 0, *who], 5000)));
            if let Demux::Session(route) = e.handle(now, from, datagram) {
                panic!("random bytes latched an address to {route:?}");
            }
            now += Duration::from_millis(u64::from(*who));
            e.handle_timeout(now);
            data = tail;
        }
    }
}
pub use handle::{worker_count, MediaHandle, MediaServer, MAX_WORKERS};
pub use negotiation::MAX_OFFER_BYTES;
pub use sdp_check::{offers_to_send, sending_mlines};
pub use stats::{Histogram, MediaStats, ESTIMATE_BOUNDS_KBPS, LATENCY_BOUNDS_US};

/// Identifies one participant's WebRTC session. Chosen by the caller, unique while the session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// What a session is for, fixed when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// It may publish (a speaker); it is sent what it subscribes to in server offers.
    Publisher,
    /// It only receives, in server offers (a viewer; it may be promoted to publish).
    Viewer,
    /// It only receives, on the m-lines its own offer asked to receive (a WHEP player): the server
    /// never offers; what it subscribes to rides those m-lines in turn.
    Player,
}

impl SessionMode {
    /// Whether it may publish.
    pub fn publisher(self) -> bool {
        self == SessionMode::Publisher
    }
}

/// A media-plane-wide id of one producer (one incoming stream). Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProducerKey(pub u64);

/// Audio or video: the forwarding core's one media kind.
pub use dais_forward::MediaKind as Kind;

/// What a session tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A server-initiated offer to forward to the client; its answer goes to [`MediaHandle::client_answer`].
    Offer {
        /// SDP text.
        sdp: String,
    },
    /// The client started sending a stream.
    ProducerAdded {
        /// Its id.
        producer: ProducerKey,
        /// Audio or video.
        kind: Kind,
        /// Lower-case codec name of the first negotiated codec, e.g. `"vp8"`.
        codec: String,
    },
    /// The client stopped sending a stream (its own renegotiation made the m-line inactive).
    ProducerRemoved {
        /// Its id.
        producer: ProducerKey,
    },
    /// ICE and DTLS completed.
    Connected {
        /// The client's address as seen by the server.
        remote: SocketAddr,
    },
    /// The session lost its connection (ICE consent expired, DTLS closed, or ICE and DTLS did not
    /// complete within [`CONNECT_TIMEOUT`] of the first completed negotiation). The owner must close it.
    Disconnected,
    /// The session stopped receiving one video producer: its downlink estimate cannot carry the
    /// lowest layer, or its client hid the tile ([`MediaHandle::video_size`] 0x0).
    VideoPaused {
        /// The producer.
        producer: ProducerKey,
        /// Why.
        reason: PauseReason,
    },
    /// It receives that producer again, from a keyframe.
    VideoResumed {
        /// The producer.
        producer: ProducerKey,
    },
    /// One of this session's audio producers finished a window of
    /// [`dais_forward::speech::METER_WINDOW`]: `activity` is the percentage of its packets whose
    /// RFC 6464 audio level was voice ([`dais_forward::speech::LevelMeter`]). Only for packets that
    /// carry the extension.
    AudioActivity {
        /// The producer.
        producer: ProducerKey,
        /// 0 to 100.
        activity: u8,
    },
}

/// How long a session may take from its first completed SDP exchange to a connected DTLS transport.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a session's events go. Called on the media thread: it must not block.
pub type EventSink = Box<dyn FnMut(SessionEvent) + Send>;

/// Why a client offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// The SDP did not parse or could not be negotiated.
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// The session may not publish but the offer sends media.
    #[error("this session may not publish media")]
    NotAPublisher,
    /// A server offer is outstanding; answer it first.
    #[error("a server offer is outstanding")]
    Collision,
    /// The offer sends more streams of a kind than a publisher may have ([`StreamLimits`]).
    #[error("too many streams: {audio} audio and {video} video, at most {limits:?}")]
    TooManyStreams {
        /// Audio m-lines that send.
        audio: usize,
        /// Video m-lines that send.
        video: usize,
        /// The limits.
        limits: StreamLimits,
    },
    /// No such session.
    #[error("no such session")]
    NoSession,
}

/// Why a client answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// The SDP did not parse or did not match the offer.
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// No server offer was outstanding.
    #[error("no offer outstanding")]
    Unexpected,
    /// No such session.
    #[error("no such session")]
    NoSession,
}

/// Why the media plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Binding the UDP socket failed.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Binding the TCP media listener failed.
    #[error("cannot bind TCP {addr}: {source}")]
    BindTcp {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another socket or thread operation failed.
    #[error("media plane start-up failed: {0}")]
    Io(#[from] std::io::Error),
    /// No address to advertise could be found.
    #[error("no address to advertise for {0}; pass a public IP")]
    NoCandidate(SocketAddr),
}

/// Settings of the media plane.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// UDP address to bind; port 0 picks a free one.
    pub bind: SocketAddr,
    /// Addresses to advertise as host candidates instead of the bound one (e.g. a public IP behind 1:1 NAT).
    /// Empty: the bound IP, or every local interface address when bound to an unspecified IP.
    pub advertise: Vec<IpAddr>,
    /// Media worker threads; 0 means one per available CPU core.
    pub workers: usize,
    /// TCP address for ICE over TCP (passive candidates, RFC 4571 framing); `None` offers UDP only.
    /// Port 0 picks a free one. Its candidates advertise the same IPs as the UDP ones.
    pub tcp_bind: Option<SocketAddr>,
    /// Most streams one publisher may send.
    pub stream_limits: StreamLimits,
}

/// Most streams of each kind one publisher may send (an m-line with simulcast layers is one stream).
/// An offer beyond them is refused whole ([`OfferError::TooManyStreams`]): a publisher of hundreds of
/// m-lines would otherwise grow every receiver's SDP past the size the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Audio streams (default 1: the microphone).
    pub audio: usize,
    /// Video streams (default 2: the camera and a screen).
    pub video: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits { audio: 1, video: 2 }
    }
}

/// Host candidate addresses for a socket bound to `local`: the advertised IPs with the bound port; else
/// the bound address; else, bound to an unspecified IP, every local interface address of the same family
/// except IPv6 link-local.
pub(crate) fn candidate_addrs(local: SocketAddr, advertise: &[IpAddr]) -> Vec<SocketAddr> {
    if !advertise.is_empty() {
        return advertise.iter().map(|ip| SocketAddr::new(*ip, local.port())).collect();
    }
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == local.is_ipv4())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect();
    out.sort();
    out.dedup();
    out
}
