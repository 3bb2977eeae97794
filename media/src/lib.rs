//! The Dais media plane: every participant's WebRTC session (str0m, ICE-lite, DTLS-SRTP) on ONE UDP socket.
//!
//! Media work runs on [`MediaConfig::workers`] threads (default: one per CPU core). Each worker owns the
//! [`str0m::Rtc`] sessions placed on it (a new session goes to the worker with the fewest) and its own
//! [`dais_forward::Router`]. Nothing else touches them: callers talk to a session's worker through
//! [`MediaHandle`] commands and hear back through each session's [`SessionEvent`] sink. Workers talk to
//! each other only through messages:
//! - Worker 0 reads the socket. A datagram for a session on another worker is handed to that worker.
//!   Datagrams from a known address go to the session that owns that address; the first datagram from a
//!   new address must be a STUN request whose USERNAME one session accepts ([`str0m::Rtc::accepts`]).
//!   Anything else is dropped and counted in [`MediaStats`], never an error.
//! - A producer lives on its publisher's worker (its home); every other worker keeps a mirror of it in
//!   its own router. Each RTP packet is relayed to the mirrors as one shared message (the payload is
//!   never copied), and a mirror's keyframe requests go back home, where one throttle serves them all.
//! - Every worker sends its own sessions' datagrams on the shared socket.
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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};
use tracing::info;

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
    /// Media worker threads; 0 means one per available CPU core.
    pub workers: usize,
}

/// Most media workers [`MediaServer::start`] runs.
pub const MAX_WORKERS: usize = 64;

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
    /// Forwarding latency: ingress datagram received -> last egress copy handed to the kernel, per worker
    /// that forwards the packet.
    pub latency: Histogram,
    /// Datagrams the receiving worker handed to the worker that owns their session.
    pub datagrams_handed_over: AtomicU64,
    /// RTP packets relayed from a producer's worker to the other workers' mirrors (one per packet per
    /// other worker).
    pub packets_relayed: AtomicU64,
    /// Media workers running.
    pub workers: AtomicU64,
    /// Keyframe requests a producer's home worker took from its mirrors on other workers (each then
    /// passes the producer's one throttle).
    pub keyframes_wanted_elsewhere: AtomicU64,
    /// Relayed packets and handed-over datagrams dropped because the receiving worker already had
    /// that many queued (it is overloaded).
    pub backlog_drops: AtomicU64,
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

/// What a worker is told, by a [`MediaHandle`] or by another worker.
pub(crate) enum Command {
    Open {
        session: SessionId,
        publisher: bool,
        events: EventSink,
    },
    ClientOffer {
        session: SessionId,
        sdp: String,
        reply: oneshot::Sender<Result<String, OfferError>>,
    },
    ClientAnswer {
        session: SessionId,
        sdp: String,
        reply: oneshot::Sender<Result<(), AnswerError>>,
    },
    Candidate {
        session: SessionId,
        candidate: String,
    },
    Subscribe {
        session: SessionId,
        producer: ProducerKey,
        stream_id: String,
        track_id: String,
    },
    Close {
        session: SessionId,
    },
    SetPublisher {
        session: SessionId,
        publisher: bool,
    },
    SetPaused {
        producer: ProducerKey,
        paused: bool,
    },
    Shutdown,
    /// From a producer's home worker: keep a mirror of it.
    MirrorAdd(worker::Mirror),
    /// From a producer's home worker: the producer ended.
    MirrorEnd {
        producer: ProducerKey,
    },
    /// From a producer's home worker: one of its RTP packets, shared by every other worker.
    Relay(Arc<worker::Relayed>),
    /// From a mirror's worker: its consumers want a keyframe.
    KeyframeWanted {
        producer: ProducerKey,
        kind: dais_forward::KeyframeKind,
    },
    /// From the receiving worker: a datagram for a session this worker may own. `tried` counts the
    /// workers that already looked for a session accepting it.
    Datagram {
        src: SocketAddr,
        data: Vec<u8>,
        at: std::time::Instant,
        tried: usize,
    },
}

/// A cheap, cloneable handle to the media workers.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    workers: Arc<[mpsc::UnboundedSender<Command>]>,
    placement: Arc<Mutex<Placement>>,
    local_addr: SocketAddr,
    candidates: Arc<Vec<SocketAddr>>,
    stats: Arc<MediaStats>,
}

/// Which worker owns each session, and how many each owns.
#[derive(Debug, Default)]
struct Placement {
    by_session: HashMap<SessionId, usize>,
    load: Vec<usize>,
}

impl Placement {
    /// The worker of a new session: the one with the fewest, the lowest index on a tie. A session id
    /// opened again stays where it was.
    fn place(&mut self, session: SessionId) -> usize {
        if let Some(w) = self.by_session.get(&session) {
            return *w;
        }
        let w = self.load.iter().enumerate().min_by_key(|(i, n)| (**n, *i)).map(|(i, _)| i).unwrap_or(0);
        if let Some(n) = self.load.get_mut(w) {
            *n += 1;
        }
        self.by_session.insert(session, w);
        w
    }

    fn remove(&mut self, session: SessionId) -> Option<usize> {
        let w = self.by_session.remove(&session)?;
        if let Some(n) = self.load.get_mut(w) {
            *n = n.saturating_sub(1);
        }
        Some(w)
    }
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
            Command::MirrorAdd(_) => "MirrorAdd",
            Command::MirrorEnd { .. } => "MirrorEnd",
            Command::Relay(_) => "Relay",
            Command::KeyframeWanted { .. } => "KeyframeWanted",
            Command::Datagram { .. } => "Datagram",
        })
    }
}

/// The running media plane: a handle plus the worker threads to join at shutdown.
#[derive(Debug)]
pub struct MediaServer {
    handle: MediaHandle,
    threads: Vec<JoinHandle<()>>,
}

/// How many workers `configured` asks for: 0 is one per available core; at most [`MAX_WORKERS`].
pub fn worker_count(configured: usize) -> usize {
    let n =
        if configured == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { configured };
    n.clamp(1, MAX_WORKERS)
}

impl MediaServer {
    /// Bind the socket and start the worker threads.
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
        let count = worker_count(config.workers);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let shared = Arc::new(worker::Shared::new(senders.clone(), stats.clone(), candidates.clone()));
        // Worker 0 reads the socket; every worker sends on its own handle to it.
        let sends = (0..count).map(|_| socket.try_clone()).collect::<Result<Vec<_>, _>>()?;
        let mut receive = Some(socket);
        let mut threads = Vec::with_capacity(count);
        for (index, (rx, send)) in receivers.into_iter().zip(sends).enumerate() {
            let recv = receive.take();
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("dais-media-{index}"))
                .spawn(move || worker::run(index, recv, send, local_addr, rx, shared));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    for tx in &senders {
                        let _ = tx.send(Command::Shutdown);
                    }
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(StartError::Io(e));
                }
            }
        }
        stats.workers.store(count as u64, Ordering::Relaxed);
        info!(workers = count, "media workers started");
        let placement = Placement { by_session: HashMap::new(), load: vec![0; count] };
        Ok(MediaServer {
            handle: MediaHandle {
                workers: senders.into(),
                placement: Arc::new(Mutex::new(placement)),
                local_addr,
                candidates: Arc::new(candidates),
                stats,
            },
            threads,
        })
    }

    /// A handle for sending commands.
    pub fn handle(&self) -> MediaHandle {
        self.handle.clone()
    }

    /// Stop the workers (closing every session) and wait for their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for tx in self.handle.workers.iter() {
            let _ = tx.send(Command::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for MediaServer {
    /// Workers hold each other's senders, so they stop only when told to.
    fn drop(&mut self) {
        self.stop();
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

    fn placement(&self) -> MutexGuard<'_, Placement> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.placement.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker that owns `session`, if it is open.
    fn worker_of(&self, session: SessionId) -> Option<&mpsc::UnboundedSender<Command>> {
        let w = self.placement().by_session.get(&session).copied()?;
        self.workers.get(w)
    }

    fn send_to(&self, session: SessionId, cmd: Command) -> bool {
        self.worker_of(session).is_some_and(|tx| tx.send(cmd).is_ok())
    }

    /// Create a session on the least loaded worker. A publisher may offer media; others only receive.
    pub fn open_session(&self, session: SessionId, publisher: bool, events: EventSink) {
        let w = self.placement().place(session);
        if let Some(tx) = self.workers.get(w) {
            let _ = tx.send(Command::Open { session, publisher, events });
        }
    }

    /// Apply a client offer and return the answer SDP.
    pub async fn client_offer(&self, session: SessionId, sdp: String) -> Result<String, OfferError> {
        let (reply, rx) = oneshot::channel();
        if !self.send_to(session, Command::ClientOffer { session, sdp, reply }) {
            return Err(OfferError::NoSession);
        }
        rx.await.unwrap_or(Err(OfferError::NoSession))
    }

    /// Apply the client's answer to the outstanding server offer.
    pub async fn client_answer(&self, session: SessionId, sdp: String) -> Result<(), AnswerError> {
        let (reply, rx) = oneshot::channel();
        if !self.send_to(session, Command::ClientAnswer { session, sdp, reply }) {
            return Err(AnswerError::NoSession);
        }
        rx.await.unwrap_or(Err(AnswerError::NoSession))
    }

    /// Add a trickled remote candidate (`candidate:...` text). Unparseable ones are ignored and logged.
    pub fn add_candidate(&self, session: SessionId, candidate: String) {
        self.send_to(session, Command::Candidate { session, candidate });
    }

    /// Send `producer` to `session`: a consumer m-line with msid `stream_id track_id` is offered to it.
    pub fn subscribe(&self, session: SessionId, producer: ProducerKey, stream_id: String, track_id: String) {
        self.send_to(session, Command::Subscribe { session, producer, stream_id, track_id });
    }

    /// Close a session, ending its producers (their consumers are removed by renegotiation).
    pub fn close_session(&self, session: SessionId) {
        let w = self.placement().remove(session);
        if let Some(tx) = w.and_then(|w| self.workers.get(w)) {
            let _ = tx.send(Command::Close { session });
        }
    }

    /// Allow or forbid a session to publish (promote/demote in place). Forbidding ends its producers,
    /// each reported as [`SessionEvent::ProducerRemoved`], and stops their m-lines with a server offer.
    pub fn set_publisher(&self, session: SessionId, publisher: bool) {
        self.send_to(session, Command::SetPublisher { session, publisher });
    }

    /// Pause or resume forwarding one producer (server-side mute); see `Router::set_paused`. Every
    /// worker applies it to its own consumers of the producer.
    pub fn set_paused(&self, producer: ProducerKey, paused: bool) {
        for tx in self.workers.iter() {
            let _ = tx.send(Command::SetPaused { producer, paused });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_to_the_least_loaded_worker_and_stay_there() {
        let mut p = Placement { by_session: HashMap::new(), load: vec![0; 2] };
        assert_eq!(p.place(SessionId(1)), 0);
        assert_eq!(p.place(SessionId(2)), 1);
        assert_eq!(p.place(SessionId(3)), 0);
        assert_eq!(p.place(SessionId(1)), 0, "reopening keeps the worker and the count");
        assert_eq!(p.load, vec![2, 1]);
        assert_eq!(p.remove(SessionId(1)), Some(0));
        assert_eq!(p.remove(SessionId(1)), None);
        assert_eq!(p.place(SessionId(4)), 0, "ties go to the lowest index");
        assert_eq!(p.place(SessionId(5)), 1);
        assert_eq!(p.load, vec![2, 2]);
    }

    #[test]
    fn worker_count_is_clamped() {
        assert!(worker_count(0) >= 1);
        assert_eq!(worker_count(3), 3);
        assert_eq!(worker_count(10_000), MAX_WORKERS);
    }
}
