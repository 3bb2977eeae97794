//! Dais signaling: WebSocket sessions, rooms, participants, roles and join tokens.
//!
//! [`Signaling`] owns every room. Each WebSocket connection runs [`Signaling::serve`], which speaks the
//! JSON protocol of `dais-proto` (docs/protocol.md): it validates and answers client messages, relays
//! SDP between the client and the media plane, and fans room news out to the other participants. Rooms
//! live behind one mutex held only for short, non-blocking updates; every participant has its own task
//! and its own outbound queue, so a slow or broken client hurts nobody else. Signaling reaches the media
//! plane only through the [`MediaPlane`] trait. With a [`token::TokenVerifier`] configured, every join must
//! carry a token whose grant sets the participant's name and role.

mod admin;
mod chat;
mod connection;
pub mod http_session;
pub mod ice;
mod media_api;
mod participant;
mod questions;
pub mod rate;
mod room;
pub mod token;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use admin::{AdminError, CLOSE_KICKED, CLOSE_ROOM_CLOSED};
pub use chat::{CLOSE_TOO_SLOW, FEED_CAPACITY};
pub use connection::CLOSE_REPLACED;
pub use media_api::{AnswerRejection, MediaEvent, MediaPlane, OfferRejection, SessionMode};
pub use room::RoomSnapshot;

/// One incoming WebSocket frame, independent of the HTTP stack that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame (not part of the protocol).
    Binary,
    /// A WebSocket ping or pong: proof of life only.
    Pong,
    /// The peer closed the socket.
    Close,
    /// The frame exceeded the size limit.
    TooBig,
    /// A text frame that is not valid UTF-8.
    InvalidUtf8,
    /// The transport failed.
    Error(String),
}

/// One outgoing WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// A text frame.
    Text(String),
    /// A text frame whose UTF-8 bytes are shared with other connections (a room's chat feed):
    /// serialized once, sent many times.
    Shared(bytes::Bytes),
    /// A WebSocket ping (keep-alive).
    Ping,
    /// Close with a code and reason.
    Close(u16, String),
}

/// Signaling settings.
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    /// Most participants in one room, viewers included.
    pub max_participants: usize,
    /// Interval of WebSocket pings from the server.
    pub ping_interval: Duration,
    /// A connection that sent nothing for this long is closed with `idle_timeout`.
    pub idle_timeout: Duration,
    /// Join-token checking; `None` is open development mode (any name and role may join).
    pub tokens: Option<token::TokenVerifier>,
    /// Shortest gap between two `audience` messages to one participant: changes of the room's
    /// viewer count within it are announced together, with the latest count, when it ends.
    pub audience_interval: Duration,
    /// Longest wait for the answer to a server `offer`; then the participant is ended with
    /// `negotiation_timeout`. A client that failed to apply an offer would otherwise wait forever,
    /// because the server sends no new offer until the outstanding one is answered.
    pub negotiation_timeout: Duration,
    /// STUN and TURN servers handed to participants in `joined`.
    pub ice: ice::IceServers,
    /// How long a participant whose socket was lost stays in its room, its media flowing, for a
    /// `resume` on a new socket; zero ends it with the socket.
    pub resume_grace: Duration,
    /// Most live WHIP and WHEP sessions opened from one IP address (beyond it: `too_many_sessions`).
    pub http_sessions_per_ip: usize,
    /// Event titles by room name (checked with [`dais_proto::valid_title`]): a room listed here
    /// has this title whatever its tokens say.
    pub titles: HashMap<String, String>,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            max_participants: 10_000,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            tokens: None,
            audience_interval: Duration::from_secs(1),
            negotiation_timeout: Duration::from_secs(20),
            ice: ice::IceServers::default(),
            resume_grace: Duration::from_secs(20),
            http_sessions_per_ip: 1_000,
            titles: HashMap::new(),
        }
    }
}

/// Lifecycle of the service, watched by every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Joins accepted.
    Running,
    /// No new joins; connections were told they will be closed within this many milliseconds.
    Draining(u64),
    /// Close every connection now.
    Closing,
}

/// Counters and gauges for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalingMetrics {
    /// Rooms with at least one participant.
    pub rooms: u64,
    /// Joined speakers.
    pub speakers: u64,
    /// Joined viewers.
    pub viewers: u64,
    /// Open WebSocket connections, joined or not.
    pub connections: u64,
    /// Refused joins by error code, since start.
    pub join_failures: Vec<(&'static str, u64)>,
    /// Participants whose socket was lost, waiting for a resume.
    pub parked: u64,
    /// Resumes that took a participant over, since start.
    pub resumed: u64,
    /// Resumes refused (unknown, used or expired token; participant ended by an operator), since start.
    pub resume_failures: u64,
}

/// The signaling service: all rooms, shared by every connection.
pub struct Signaling {
    media: Arc<dyn MediaPlane>,
    rooms: Arc<Mutex<room::Rooms>>,
    next_id: AtomicU64,
    config: SignalingConfig,
    phase: tokio::sync::watch::Sender<Phase>,
    connections: AtomicU64,
    controls: Mutex<std::collections::HashMap<u64, tokio::sync::mpsc::UnboundedSender<admin::Control>>>,
    join_failures: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    resumable: Mutex<participant::Resumable>,
    parked: AtomicU64,
    resumes: [AtomicU64; 2],
    resources: Mutex<http_session::Resources>,
}

impl std::fmt::Debug for Signaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signaling").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Signaling {
    /// Create the service on top of a media plane.
    pub fn new(media: Arc<dyn MediaPlane>, config: SignalingConfig) -> Arc<Self> {
        let (phase, _) = tokio::sync::watch::channel(Phase::Running);
        Arc::new(Signaling {
            media,
            rooms: Arc::new(Mutex::new(room::Rooms::default())),
            next_id: AtomicU64::new(1),
            config,
            phase,
            connections: AtomicU64::new(0),
            controls: Mutex::new(Default::default()),
            join_failures: Mutex::new(Default::default()),
            resumable: Mutex::new(Default::default()),
            parked: AtomicU64::new(0),
            resumes: [AtomicU64::new(0), AtomicU64::new(0)],
            resources: Mutex::new(Default::default()),
        })
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A snapshot of every room, for operators and tests.
    pub fn rooms(&self) -> Vec<RoomSnapshot> {
        self.rooms.lock().map(|r| r.snapshot()).unwrap_or_default()
    }

    /// Ask every connection to close (with a `1001 going away` close frame).
    pub fn shutdown(&self) {
        let _ = self.phase.send(Phase::Closing);
    }

    /// Stop taking joins (they get `draining`) and tell every connection it will be closed within
    /// `within`. Media keeps flowing; call [`Signaling::shutdown`] when the drain ends.
    pub fn start_drain(&self, within: Duration) {
        self.phase.send_if_modified(|p| {
            if *p == Phase::Running {
                *p = Phase::Draining(within.as_millis() as u64);
                true
            } else {
                false
            }
        });
    }

    /// Whether joins are accepted (not draining, not shutting down).
    pub fn is_ready(&self) -> bool {
        *self.phase.borrow() == Phase::Running
    }

    /// Joined participants in every room.
    pub fn participant_count(&self) -> usize {
        self.rooms.lock().map(|r| r.by_name.values().map(|room| room.members.len()).sum()).unwrap_or(0)
    }

    /// A consistent reading of the gauges and counters.
    pub fn metrics(&self) -> SignalingMetrics {
        let mut m = SignalingMetrics {
            connections: self.connections.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            resumed: self.resumes[0].load(Ordering::Relaxed),
            resume_failures: self.resumes[1].load(Ordering::Relaxed),
            ..Default::default()
        };
        if let Ok(rooms) = self.rooms.lock() {
            m.rooms = rooms.by_name.len() as u64;
            for member in rooms.by_name.values().flat_map(|r| r.members.values()) {
                match member.info.role {
                    dais_proto::Role::Speaker => m.speakers += 1,
                    dais_proto::Role::Viewer => m.viewers += 1,
                }
            }
        }
        if let Ok(f) = self.join_failures.lock() {
            m.join_failures = f.iter().map(|(k, v)| (*k, *v)).collect();
        }
        m
    }

    fn count_resume(&self, ok: bool) {
        self.resumes[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    fn count_join_failure(&self, code: dais_proto::ErrorCode) {
        if let Ok(mut f) = self.join_failures.lock() {
            *f.entry(code.as_str()).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests;
