//! The Dais media plane: every participant's WebRTC session (str0m, ICE-lite, DTLS-SRTP) on ONE UDP socket.
//!
//! A single worker thread owns the socket, every [`str0m::Rtc`] session and the [`dais_forward::Router`]
//! that decides where each packet goes. Nothing else touches them: callers talk to the worker through
//! [`MediaHandle`] commands and hear back through each session's [`SessionEvent`] sink. Datagrams from a
//! known address go to the session that owns that address; the first datagram from a new address must be
//! a STUN request whose USERNAME one session accepts ([`str0m::Rtc::accepts`]). Anything else is dropped
//! and counted in [`MediaStats`], never an error.
//!
//! Negotiation model: a publishing client offers its own media (one m-line per producer); the server
//! offers every consumer m-line (sendonly from the server) and removes them with port 0 when the
//! producer ends. Only one server offer is outstanding per session; a client offer that collides with it
//! is refused with [`OfferError::Collision`].

mod codec;
mod sdp_check;
mod send;
mod session;
mod worker;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

pub use dais_forward::DropReason;
pub use sdp_check::offers_to_send;

/// Kernel receive and send buffer asked for on the media socket, bytes.
const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Identifies one participant's WebRTC session. Chosen by the caller, unique while the session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A media-plane-wide id of one producer (one incoming stream). Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProducerKey(pub u64);

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Audio (Opus).
    Audio,
    /// Video (VP8, VP9, H.264, AV1).
    Video,
}

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
}

/// Counters of the media plane, shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Datagrams received on the socket.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Datagrams that were not STUN, DTLS, RTP or RTCP.
    pub dropped_unparseable: AtomicU64,
    /// Datagrams from an address no session knows, that were not an acceptable STUN request.
    pub dropped_unknown_source: AtomicU64,
    /// Datagrams the kernel refused to send (buffer full).
    pub send_errors: AtomicU64,
    /// RTP packets the router dropped, all reasons together (see `drops_by_reason`), plus packets of
    /// streams that no producer owns.
    pub rtp_dropped: AtomicU64,
    /// RTP packets forwarded to consumers.
    pub rtp_forwarded: AtomicU64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: AtomicU64,
    /// Sessions alive now.
    pub sessions: AtomicU64,
    /// Bytes received on the socket.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// RTP packets received from publishers and handed to the router.
    pub rtp_in: AtomicU64,
    /// NACKs received from viewers (answered from the per-consumer send buffers, never forwarded).
    pub nacks_received: AtomicU64,
    /// Router drops by reason, in the order of [`dais_forward::DropReason::ALL`]; refreshed about once a second.
    pub drops_by_reason: [AtomicU64; dais_forward::DropReason::ALL.len()],
    /// Forwarding latency: ingress datagram received -> last egress copy handed to the kernel.
    pub latency: Histogram,
}

/// A fixed-bucket latency histogram with atomic counters (Prometheus style: cumulative on read).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
}

/// Upper bounds of the latency buckets, in microseconds; a last bucket catches the rest.
pub const LATENCY_BOUNDS_US: [u64; 11] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

impl Histogram {
    /// Record one observation.
    pub fn record(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let i = LATENCY_BOUNDS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BOUNDS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last one is +Inf), the total count and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(Option<u64>, u64)>, u64, f64) {
        let mut acc = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            out.push((LATENCY_BOUNDS_US.get(i).copied(), acc));
        }
        (out, acc, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

impl MediaStats {
    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

enum Command {
    Open { session: SessionId, publisher: bool, events: EventSink },
    ClientOffer { session: SessionId, sdp: String, reply: oneshot::Sender<Result<String, OfferError>> },
    ClientAnswer { session: SessionId, sdp: String, reply: oneshot::Sender<Result<(), AnswerError>> },
    Candidate { session: SessionId, candidate: String },
    Subscribe { session: SessionId, producer: ProducerKey, stream_id: String, track_id: String },
    Close { session: SessionId },
    SetPublisher { session: SessionId, publisher: bool },
    SetPaused { producer: ProducerKey, paused: bool },
    Shutdown,
}

/// A cheap, cloneable handle to the media worker.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    tx: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    candidates: Arc<Vec<SocketAddr>>,
    stats: Arc<MediaStats>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Open { .. } => "Open",
            Command::ClientOffer { .. } => "ClientOffer",
            Command::ClientAnswer { .. } => "ClientAnswer",
            Command::Candidate { .. } => "Candidate",
            Command::Subscribe { .. } => "Subscribe",
            Command::Close { .. } => "Close",
            Command::SetPublisher { .. } => "SetPublisher",
            Command::SetPaused { .. } => "SetPaused",
            Command::Shutdown => "Shutdown",
        })
    }
}

/// The running media plane: a handle plus the worker thread to join at shutdown.
#[derive(Debug)]
pub struct MediaServer {
    handle: MediaHandle,
    thread: Option<JoinHandle<()>>,
}

impl MediaServer {
    /// Bind the socket and start the worker thread.
    pub fn start(config: MediaConfig) -> Result<MediaServer, StartError> {
        let socket = UdpSocket::bind(config.bind).map_err(|source| StartError::Bind { addr: config.bind, source })?;
        socket.set_nonblocking(true)?;
        // One socket carries every participant: at 1,000 viewers the default buffers (about 200 KB) hold
        // well under a millisecond of traffic. Linux caps the request at net.core.rmem_max / wmem_max.
        let (rcv, snd) = send::size_buffers(&socket, SOCKET_BUFFER_BYTES);
        tracing::info!(receive = rcv, send = snd, "media socket buffers");
        let local_addr = socket.local_addr()?;
        let candidates = worker::candidate_addrs(local_addr, &config.advertise);
        if candidates.is_empty() {
            return Err(StartError::NoCandidate(local_addr));
        }
        let stats = Arc::new(MediaStats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let worker_stats = stats.clone();
        let worker_candidates = candidates.clone();
        let thread = std::thread::Builder::new().name("dais-media".into()).spawn(move || {
            worker::run(socket, local_addr, worker_candidates, rx, worker_stats);
        })?;
        Ok(MediaServer {
            handle: MediaHandle { tx, local_addr, candidates: Arc::new(candidates), stats },
            thread: Some(thread),
        })
    }

    /// A handle for sending commands.
    pub fn handle(&self) -> MediaHandle {
        self.handle.clone()
    }

    /// Stop the worker (closing every session) and wait for its thread.
    pub fn shutdown(mut self) {
        let _ = self.handle.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl MediaHandle {
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The host candidates advertised in every SDP.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<MediaStats> {
        &self.stats
    }

    /// Create a session. A publisher may offer media; others only receive.
    pub fn open_session(&self, session: SessionId, publisher: bool, events: EventSink) {
        let _ = self.tx.send(Command::Open { session, publisher, events });
    }

    /// Apply a client offer and return the answer SDP.
    pub async fn client_offer(&self, session: SessionId, sdp: String) -> Result<String, OfferError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::ClientOffer { session, sdp, reply }).is_err() {
            return Err(OfferError::NoSession);
        }
        rx.await.unwrap_or(Err(OfferError::NoSession))
    }

    /// Apply the client's answer to the outstanding server offer.
    pub async fn client_answer(&self, session: SessionId, sdp: String) -> Result<(), AnswerError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::ClientAnswer { session, sdp, reply }).is_err() {
            return Err(AnswerError::NoSession);
        }
        rx.await.unwrap_or(Err(AnswerError::NoSession))
    }

    /// Add a trickled remote candidate (`candidate:...` text). Unparseable ones are ignored and logged.
    pub fn add_candidate(&self, session: SessionId, candidate: String) {
        let _ = self.tx.send(Command::Candidate { session, candidate });
    }

    /// Send `producer` to `session`: a consumer m-line with msid `stream_id track_id` is offered to it.
    pub fn subscribe(&self, session: SessionId, producer: ProducerKey, stream_id: String, track_id: String) {
        let _ = self.tx.send(Command::Subscribe { session, producer, stream_id, track_id });
    }

    /// Close a session, ending its producers (their consumers are removed by renegotiation).
    pub fn close_session(&self, session: SessionId) {
        let _ = self.tx.send(Command::Close { session });
    }

    /// Allow or forbid a session to publish (promote/demote in place). Forbidding ends its producers,
    /// each reported as [`SessionEvent::ProducerRemoved`], and stops their m-lines with a server offer.
    pub fn set_publisher(&self, session: SessionId, publisher: bool) {
        let _ = self.tx.send(Command::SetPublisher { session, publisher });
    }

    /// Pause or resume forwarding one producer (server-side mute); see `Router::set_paused`.
    pub fn set_paused(&self, producer: ProducerKey, paused: bool) {
        let _ = self.tx.send(Command::SetPaused { producer, paused });
    }
}
