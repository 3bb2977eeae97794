//! The two queues of every media worker and the messages on them.
//!
//! The **control** queue carries commands from [`crate::MediaHandle`]s, the endpoint's routes (to worker
//! 0), and other workers' control messages (mirrors, keyframe requests). It is unbounded: handles send at
//! the pace of their participants' signaling (offers and answers wait for their reply, so each
//! participant has at most one of those in flight; subscriptions and candidates are a few per participant
//! and stream), and workers send a few messages per producer and at most one keyframe request per producer
//! layer per throttle interval. The **media** queue carries relayed packets and handed-over datagrams and
//! holds at most [`MEDIA_QUEUE`]; past that a message is dropped and counted (`backlog_drops`). A worker
//! drains control first, so control never waits behind media.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::ice::IceCreds;
use tokio::sync::{mpsc, oneshot};

use crate::endpoint::Addr;
use crate::hub::{PeerMessage, Relayed};
use crate::tcp::TcpConns;
use crate::{AnswerError, EventSink, OfferError, ProducerKey, SessionId, SessionMode};

/// Most messages in one worker's media queue.
pub(crate) const MEDIA_QUEUE: usize = 8192;

/// A message on a worker's control queue.
pub(crate) enum Control {
    Open {
        session: SessionId,
        mode: SessionMode,
        creds: IceCreds,
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
    VideoSize {
        session: SessionId,
        producer: ProducerKey,
        width: u16,
        height: u16,
    },
    /// To worker 0: datagrams for `session`, whose ICE credentials are `creds`, go to `worker`.
    Route {
        session: SessionId,
        worker: usize,
        creds: IceCreds,
    },
    /// To worker 0: the session is gone.
    Unroute {
        session: SessionId,
    },
    /// From another worker's hub.
    Peer(PeerMessage),
    Shutdown,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Open { .. } => "Open",
            Control::ClientOffer { .. } => "ClientOffer",
            Control::ClientAnswer { .. } => "ClientAnswer",
            Control::Candidate { .. } => "Candidate",
            Control::Subscribe { .. } => "Subscribe",
            Control::Close { .. } => "Close",
            Control::SetPublisher { .. } => "SetPublisher",
            Control::SetPaused { .. } => "SetPaused",
            Control::VideoSize { .. } => "VideoSize",
            Control::Route { .. } => "Route",
            Control::Unroute { .. } => "Unroute",
            Control::Peer(_) => "Peer",
            Control::Shutdown => "Shutdown",
        })
    }
}

/// A message on a worker's media queue.
#[derive(Debug)]
pub(crate) enum Media {
    /// One packet of a producer homed on another worker.
    Relay(Arc<Relayed>),
    /// A datagram worker 0 read for a session of this worker, at `at`.
    Datagram { session: SessionId, from: Addr, to: SocketAddr, data: Vec<u8>, at: Instant },
    /// To worker 0: a frame read from a TCP media connection, not yet demultiplexed.
    Received { from: Addr, to: SocketAddr, data: Vec<u8>, at: Instant },
}

/// How a worker reaches every worker (itself included).
#[derive(Debug)]
pub(crate) struct Links {
    pub control: Vec<mpsc::UnboundedSender<Control>>,
    pub media: Vec<mpsc::Sender<Media>>,
    /// The outgoing queues of the TCP media connections.
    pub tcp: Arc<TcpConns>,
}
