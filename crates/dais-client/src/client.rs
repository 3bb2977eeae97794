//! The participant: one signaling WebSocket and at most one peer connection.
//!
//! Four kinds of background task serve a [`Client`]: a writer owning the socket's sink, a reader
//! that records every [`ServerMessage`] and routes SDP to the negotiator, the negotiator that owns
//! every SDP operation in order (so a server offer, an answer to our offer and a publish never
//! interleave), and one reader per received track that verifies payloads into [`StreamStats`].
//! All observable state lives in one [`Snapshot`] behind a mutex; tests read it with
//! [`Client::snapshot`] or wait on it with [`Client::wait_until`].
//!
//! The socket can be replaced: [`Client::drop_connection`] loses it (no `leave`, no close frame) and
//! [`Client::resume`] opens a new one and takes the participant over with its resume token; the
//! writer keeps one outgoing queue across sockets and the snapshot keeps accumulating.
//!
//! Negotiation rules (docs/protocol.md): a server `offer` is always answered. If our own offer is
//! outstanding when a server offer arrives, the server has refused ours with `offer_collision`:
//! we roll ours back, answer, then offer again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dais_proto::{ClientMessage, ErrorCode, MediaKind, ParticipantInfo, Role, ServerMessage, PROTOCOL_VERSION};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

use crate::error::ClientError;
use crate::media::verify_payload;
use crate::peer::{build_peer, opus_codec, selected_pair, vp8_codec, Peer, PeerEvent, OPUS_PT, VP8_PT};
use crate::sender::{self, MediaConfig, Outlet, SendCounters, SenderStats};
use crate::stats::StreamStats;

/// How the client behaves; [`ClientOptions::default`] suits tests.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Emit a [`ClientEvent::Received`] per RTP packet on the event channel (off by default;
    /// [`StreamStats`] are always kept).
    pub packet_events: bool,
    /// Longest wait for ICE gathering before an offer or answer is sent anyway.
    pub gather_timeout: Duration,
    /// Timeout of [`Client::join`].
    pub join_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { packet_events: false, gather_timeout: Duration::from_secs(5), join_timeout: Duration::from_secs(10) }
    }
}

/// The server's `joined` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The room joined.
    pub room: String,
    /// This participant's id.
    pub participant_id: String,
    /// The role granted.
    pub role: Role,
    /// The others already in the room that this participant sees: every speaker, and to a speaker
    /// every viewer too.
    pub participants: Vec<ParticipantInfo>,
    /// Viewers in the room, this participant included if it is one (`audience` messages update it).
    pub viewers: u64,
}

/// The server's `resumed` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// This participant's id (unchanged).
    pub participant_id: String,
    /// Its role now.
    pub role: Role,
    /// The others in the room it sees, now.
    pub participants: Vec<ParticipantInfo>,
    /// Viewers in the room now.
    pub viewers: u64,
    /// The media session ended meanwhile: the client's peer connection was closed, the server offers
    /// anew, and a speaker must [`Client::publish`] again.
    pub media_reset: bool,
}

type WsStream = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;
type WsSink = SplitSink<WsStream, Message>;

/// What the writer task does with its socket.
enum SinkCmd {
    /// Write to this socket from now on.
    Install(WsSink),
    /// Drop the socket without a close frame (the connection is lost).
    Drop,
}

/// How the signaling socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code of the server's close frame, if one arrived.
    pub code: Option<u16>,
    /// The close reason, or the transport error that ended the socket.
    pub reason: String,
}

/// One RTP packet as received (emitted only with [`ClientOptions::packet_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPacket {
    /// Publisher's participant id (msid stream id).
    pub participant_id: String,
    /// Media id (msid track id).
    pub media_id: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// RTP sequence number (rewritten by the server).
    pub seq: u16,
    /// RTP timestamp (rewritten by the server).
    pub timestamp: u32,
    /// RTP SSRC (rewritten by the server).
    pub ssrc: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// Whether the payload is byte-identical to what the sender produced.
    pub payload_ok: bool,
    /// Sender tag read from the payload.
    pub sender_tag: Option<u32>,
    /// Packet counter read from the payload.
    pub counter: Option<u64>,
    /// Whether the packet starts a keyframe.
    pub keyframe_start: bool,
}

/// Something that happened to the client, in order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A message from the server.
    Server(ServerMessage),
    /// An RTP packet (only with [`ClientOptions::packet_events`]).
    Received(ReceivedPacket),
    /// A remote track opened.
    TrackOpened {
        /// Publisher's participant id.
        participant_id: String,
        /// Media id.
        media_id: String,
        /// Audio or video.
        kind: MediaKind,
    },
    /// A remote track ended.
    TrackEnded {
        /// Publisher's participant id.
        participant_id: String,
        /// Media id.
        media_id: String,
    },
    /// The signaling socket closed.
    Closed(CloseInfo),
    /// A negotiation step failed; the text says which.
    NegotiationFailed(String),
}

/// Everything observable about a client at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// This participant's id, once joined.
    pub participant_id: Option<String>,
    /// The role granted, once joined.
    pub role: Option<Role>,
    /// The token of the last `joined` or `resumed`, for [`Client::resume`].
    pub resume_token: Option<String>,
    /// Every message received from the server, in order.
    pub messages: Vec<ServerMessage>,
    /// Receive statistics per (publisher participant id, media id).
    pub streams: BTreeMap<(String, String), StreamStats>,
    /// Server `offer`s received (renegotiations, including the first).
    pub offers_received: u64,
    /// `answer`s sent to server offers.
    pub answers_sent: u64,
    /// `offer`s this client sent (publish, re-offer after a collision, and deliberate ones).
    pub offers_sent: u64,
    /// Server `answer`s applied to our offers.
    pub answers_received: u64,
    /// What the media sender did.
    pub sent: SenderStats,
    /// The peer connection's state, as its `Display` spells it (`"new"` before one exists).
    pub peer_state: String,
    /// Set once the signaling socket is closed.
    pub closed: Option<CloseInfo>,
    /// Negotiation or protocol failures seen by the background tasks.
    pub failures: Vec<String>,
}

impl Snapshot {
    /// The statistics of one received stream.
    pub fn stream(&self, participant_id: &str, media_id: &str) -> Option<&StreamStats> {
        self.streams.get(&(participant_id.to_owned(), media_id.to_owned()))
    }

    /// The received streams published by one participant.
    pub fn streams_of<'a>(&'a self, participant_id: &'a str) -> impl Iterator<Item = &'a StreamStats> + 'a {
        self.streams.values().filter(move |s| s.participant_id == participant_id)
    }

    /// Packets received from one publisher, all its streams together.
    pub fn packets_from(&self, participant_id: &str) -> u64 {
        self.streams_of(participant_id).map(|s| s.packets).sum()
    }

    /// Packets received on every stream together.
    pub fn total_packets(&self) -> u64 {
        self.streams.values().map(|s| s.packets).sum()
    }

    /// The error codes received, in order.
    pub fn error_codes(&self) -> Vec<ErrorCode> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Error { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// Whether the peer connection is connected.
    pub fn connected(&self) -> bool {
        self.peer_state == RTCPeerConnectionState::Connected.to_string()
    }
}

struct Shared {
    state: Mutex<Snapshot>,
    changed: Notify,
    events: Mutex<Option<mpsc::UnboundedSender<ClientEvent>>>,
    options: ClientOptions,
    pc: Mutex<Option<Arc<dyn PeerConnection>>>,
    stop_media: watch::Sender<bool>,
    counters: Arc<SendCounters>,
    tag: Mutex<u32>,
    /// The reader of the current socket.
    reader: Mutex<Option<JoinHandle<()>>>,
    sinks: mpsc::UnboundedSender<SinkCmd>,
    neg: mpsc::UnboundedSender<NegCmd>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A poisoned lock means a background task panicked mid-update; the counters are still
        // the best information there is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        let r = f(&mut self.lock());
        self.changed.notify_waiters();
        r
    }

    fn emit(&self, event: ClientEvent) {
        let guard = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(event);
        }
    }

    fn fail(&self, what: String) {
        tracing::warn!(%what, "client failure");
        self.update(|s| s.failures.push(what.clone()));
        self.emit(ClientEvent::NegotiationFailed(what));
    }

    fn pc(&self) -> Option<Arc<dyn PeerConnection>> {
        self.pc.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn snapshot(&self) -> Snapshot {
        self.check(|_| true).unwrap_or_default()
    }

    /// Evaluate `pred` under the lock (no copy per check) and copy the state only if it holds.
    fn check(&self, pred: impl FnOnce(&Snapshot) -> bool) -> Option<Snapshot> {
        let tag = *self.tag.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = self.lock();
        s.sent = self.counters.snapshot(tag);
        pred(&s).then(|| s.clone())
    }
}

/// A stop handle for the media a speaker publishes.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl MediaHandle {
    /// Stop sending audio and video (the tracks stay negotiated).
    pub fn stop(&self) {
        self.shared.stop_media.send_replace(true);
    }

    /// The tag carried by every payload of this publication.
    pub fn tag(&self) -> u32 {
        *self.shared.tag.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum NegCmd {
    ServerOffer(String),
    ServerAnswer(String),
    Collision,
    Publish(MediaConfig, oneshot::Sender<Result<(), ClientError>>),
    Close(oneshot::Sender<()>),
    /// The media session is gone: close the peer connection and forget the publication.
    Reset,
}

/// A headless Dais participant: signaling over WebSocket, media over webrtc-rs.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Message>,
    neg: mpsc::UnboundedSender<NegCmd>,
    tasks: Vec<JoinHandle<()>>,
}

impl Client {
    /// Open the signaling socket at `ws_url` (e.g. `ws://127.0.0.1:8080/ws`).
    pub async fn connect(ws_url: &str) -> Result<Client, ClientError> {
        Self::connect_with(ws_url, ClientOptions::default()).await
    }

    /// [`Client::connect`] with options.
    pub async fn connect_with(ws_url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let (ws, _response) = tokio_tungstenite::connect_async(ws_url).await?;
        let (sink, stream) = ws.split();
        let (out, out_rx) = mpsc::unbounded_channel::<Message>();
        let (neg, neg_rx) = mpsc::unbounded_channel::<NegCmd>();
        let (sinks, sink_rx) = mpsc::unbounded_channel::<SinkCmd>();
        let shared = Arc::new(Shared {
            state: Mutex::new(Snapshot { peer_state: RTCPeerConnectionState::New.to_string(), ..Default::default() }),
            changed: Notify::new(),
            events: Mutex::new(None),
            options,
            pc: Mutex::new(None),
            stop_media: watch::channel(false).0,
            counters: Arc::new(SendCounters::default()),
            tag: Mutex::new(0),
            reader: Mutex::new(None),
            sinks,
            neg: neg.clone(),
        });
        let writer = tokio::spawn(write_frames(shared.clone(), sink, sink_rx, out_rx));
        shared.set_reader(tokio::spawn(read_frames(shared.clone(), stream)));
        let negotiator = {
            let n = Negotiator::new(shared.clone(), out.clone());
            tokio::spawn(n.run(neg_rx))
        };
        Ok(Client { shared, out, neg, tasks: vec![writer, negotiator] })
    }

    /// Lose the signaling socket as a network would: no `leave`, no close frame. The server keeps the
    /// participant for its grace period; [`Client::resume`] takes it over again.
    pub fn drop_connection(&self) {
        if let Some(reader) = self.shared.take_reader() {
            reader.abort();
        }
        let _ = self.shared.sinks.send(SinkCmd::Drop);
        let close = CloseInfo { code: None, reason: "connection dropped by the client".into() };
        self.shared.update(|s| {
            s.closed.get_or_insert(close);
        });
    }

    /// Open a new socket at `ws_url` and take this participant over with its resume token (the old
    /// socket, if still open, is dropped first). On `resume_failed` the participant is gone: the peer
    /// connection is closed and [`Client::join`] on this socket starts over.
    pub async fn resume(&self, ws_url: &str) -> Result<Resumed, ClientError> {
        let token = self
            .shared
            .lock()
            .resume_token
            .clone()
            .ok_or_else(|| ClientError::InvalidState("no resume token: join first".into()))?;
        self.drop_connection();
        let (ws, _response) = tokio_tungstenite::connect_async(ws_url).await?;
        let (sink, stream) = ws.split();
        let mark = self.message_count();
        self.shared.update(|s| s.closed = None);
        let _ = self.shared.sinks.send(SinkCmd::Install(sink));
        self.shared.set_reader(tokio::spawn(read_frames(self.shared.clone(), stream)));
        self.send(ClientMessage::Resume { token, version: PROTOCOL_VERSION })?;
        let reply = self
            .wait_for_message(
                mark,
                |m| {
                    matches!(m, ServerMessage::Resumed { .. })
                        || matches!(m, ServerMessage::Error { request: Some(r), .. } if r == "resume")
                },
                self.shared.options.join_timeout,
            )
            .await?;
        match reply {
            ServerMessage::Resumed { participant_id, role, participants, viewers, media_reset, .. } => {
                Ok(Resumed { participant_id, role, participants, viewers, media_reset })
            }
            ServerMessage::Error { code, message, .. } => {
                if code == ErrorCode::ResumeFailed {
                    let _ = self.neg.send(NegCmd::Reset);
                    self.shared.update(|s| {
                        s.participant_id = None;
                        s.role = None;
                        s.resume_token = None;
                    });
                }
                Err(ClientError::Server { code, message })
            }
            _ => Err(ClientError::InvalidState("unexpected reply to resume".into())),
        }
    }

    /// Send `join` and wait for `joined`; a server `error` becomes [`ClientError::Server`].
    pub async fn join(&self, room: &str, name: &str, role: Role) -> Result<Joined, ClientError> {
        self.join_with_token(room, name, role, None).await
    }

    /// [`Client::join`] carrying a join token; the server's grant (in [`Joined::role`]) wins over `role`.
    pub async fn join_with_token(
        &self,
        room: &str,
        name: &str,
        role: Role,
        token: Option<&str>,
    ) -> Result<Joined, ClientError> {
        let mark = self.message_count();
        let token = token.map(str::to_owned);
        self.send(ClientMessage::Join {
            room: room.into(),
            name: name.into(),
            role,
            version: PROTOCOL_VERSION,
            token,
            moderator: false,
        })?;
        let reply = self
            .wait_for_message(
                mark,
                |m| matches!(m, ServerMessage::Joined { .. } | ServerMessage::Error { .. }),
                self.shared.options.join_timeout,
            )
            .await?;
        match reply {
            ServerMessage::Joined { room, participant_id, role, participants, viewers, .. } => {
                Ok(Joined { room, participant_id, role, participants, viewers })
            }
            ServerMessage::Error { code, message, .. } => Err(ClientError::Server { code, message }),
            _ => Err(ClientError::InvalidState("unexpected reply to join".into())),
        }
    }

    /// As a speaker: add a sendonly Opus and a sendonly VP8 track, offer, and once answered and
    /// connected, send synthetic media in the background. Returns when the offer is sent.
    pub async fn publish(&self, config: MediaConfig) -> Result<MediaHandle, ClientError> {
        match self.shared.lock().role {
            Some(Role::Speaker) => {}
            other => {
                return Err(ClientError::InvalidState(format!("publish needs a joined speaker, role is {other:?}")))
            }
        }
        *self.shared.tag.lock().unwrap_or_else(|e| e.into_inner()) = config.tag;
        // A publication after a media reset starts its senders afresh.
        self.shared.stop_media.send_replace(false);
        let (tx, rx) = oneshot::channel();
        self.neg.send(NegCmd::Publish(config, tx)).map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)??;
        Ok(MediaHandle { shared: self.shared.clone() })
    }

    /// Send a genuine sendonly audio+video offer from a throwaway peer connection, whatever this
    /// client's role, without touching the client's own negotiation. For testing that the server
    /// refuses a viewer's offer (`viewer_cannot_publish`).
    pub async fn send_unsolicited_offer(&self) -> Result<(), ClientError> {
        let (tx, _rx) = mpsc::unbounded_channel();
        let peer = build_peer(tx).await?;
        let tag = sender::next_tag();
        for (kind, ssrc) in [(RtpCodecKind::Audio, tag), (RtpCodecKind::Video, tag.wrapping_add(1))] {
            let track = Arc::new(local_track(kind, "scratch", ssrc));
            peer.pc.add_transceiver_from_track(track as Arc<dyn TrackLocal>, Some(sendonly("scratch"))).await?;
        }
        let offer = peer.pc.create_offer(None).await?;
        peer.pc.set_local_description(offer).await?;
        let sdp = gathered_sdp(&peer, self.shared.options.gather_timeout).await?;
        let _ = peer.pc.close().await;
        self.send(ClientMessage::Offer { sdp })?;
        self.shared.update(|s| s.offers_sent += 1);
        Ok(())
    }

    /// Send one protocol message.
    pub fn send(&self, msg: ClientMessage) -> Result<(), ClientError> {
        self.send_raw_text(&msg.to_json())
    }

    /// Send any text frame, valid or not.
    pub fn send_raw_text(&self, text: &str) -> Result<(), ClientError> {
        if self.shared.lock().closed.is_some() {
            return Err(ClientError::Closed);
        }
        self.out.send(Message::text(text)).map_err(|_| ClientError::Closed)
    }

    /// Send a `ping` and wait for its `pong`.
    pub async fn ping(&self, id: u64, timeout: Duration) -> Result<(), ClientError> {
        let mark = self.message_count();
        self.send(ClientMessage::Ping { id: Some(id) })?;
        self.wait_for_message(mark, |m| matches!(m, ServerMessage::Pong { id: Some(i) } if *i == id), timeout)
            .await
            .map(|_| ())
    }

    /// Send `leave`, stop media and close the peer connection. The server closes the socket.
    pub async fn leave(&self) -> Result<(), ClientError> {
        let sent = self.send(ClientMessage::Leave);
        self.shared.stop_media.send_replace(true);
        let (tx, rx) = oneshot::channel();
        if self.neg.send(NegCmd::Close(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        sent
    }

    /// Stop the media sender, if publishing.
    pub fn stop_media(&self) {
        self.shared.stop_media.send_replace(true);
    }

    /// The event channel. Events are queued only once it has been taken, and it can be taken once.
    pub fn events(&self) -> Option<mpsc::UnboundedReceiver<ClientEvent>> {
        let mut guard = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_some() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *guard = Some(tx);
        Some(rx)
    }

    /// A copy of everything observable now.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// How many server messages have arrived so far; a mark for [`Client::wait_for_message`].
    pub fn message_count(&self) -> usize {
        self.shared.lock().messages.len()
    }

    /// This participant's id, once joined.
    pub fn participant_id(&self) -> Option<String> {
        self.shared.lock().participant_id.clone()
    }

    /// The selected ICE candidate pair as (local, remote) address, once ICE has chosen one.
    pub async fn selected_pair(&self) -> Option<(SocketAddr, SocketAddr)> {
        let pc = self.shared.pc()?;
        selected_pair(&pc).await
    }

    /// Wait until `pred` holds on the state, checking on every change and at least every 50 ms.
    /// Returns the snapshot that satisfied it.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Snapshot, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if let Some(snap) = self.shared.check(&mut pred) {
                return Ok(snap);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(timeout, what.to_owned()));
            }
            let step = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(step, notified).await;
        }
    }

    /// Wait for the first server message at index `mark` or later that satisfies `pred`.
    pub async fn wait_for_message(
        &self,
        mark: usize,
        mut pred: impl FnMut(&ServerMessage) -> bool,
        timeout: Duration,
    ) -> Result<ServerMessage, ClientError> {
        let mut found = None;
        self.wait_until(timeout, "a matching server message", |s| {
            found = s.messages.iter().skip(mark).find(|m| pred(m)).cloned();
            found.is_some()
        })
        .await?;
        found.ok_or_else(|| ClientError::InvalidState("message vanished".into()))
    }

    /// Wait for an `error` with `code` at index `mark` or later.
    pub async fn wait_for_error(
        &self,
        mark: usize,
        code: ErrorCode,
        timeout: Duration,
    ) -> Result<ServerMessage, ClientError> {
        self.wait_for_message(mark, |m| matches!(m, ServerMessage::Error { code: c, .. } if *c == code), timeout).await
    }

    /// Wait until the peer connection is connected.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        self.wait_until(timeout, "peer connection connected", Snapshot::connected).await.map(|_| ())
    }

    /// Wait until the signaling socket is closed; returns how.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<CloseInfo, ClientError> {
        let s = self.wait_until(timeout, "socket closed", |s| s.closed.is_some()).await?;
        s.closed.ok_or(ClientError::Closed)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.stop_media.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
        if let Some(reader) = self.shared.take_reader() {
            reader.abort();
        }
        if let (Some(pc), Ok(rt)) = (self.shared.pc(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

/// Write queued frames to the current socket; frames queued while there is none are dropped (a resumed
/// server sends what matters again).
async fn write_frames(
    shared: Arc<Shared>,
    first: WsSink,
    mut sinks: mpsc::UnboundedReceiver<SinkCmd>,
    mut out: mpsc::UnboundedReceiver<Message>,
) {
    let mut sink = Some(first);
    loop {
        tokio::select! {
            biased;
            cmd = sinks.recv() => match cmd {
                Some(SinkCmd::Install(s)) => sink = Some(s),
                Some(SinkCmd::Drop) => sink = None,
                None => break,
            },
            msg = out.recv() => {
                let Some(msg) = msg else { break };
                let Some(s) = sink.as_mut() else { continue };
                if let Err(e) = s.send(msg).await {
                    shared.fail(format!("websocket write: {e}"));
                    sink = None;
                }
            }
        }
    }
}

/// Read one socket's frames into the snapshot until it closes.
async fn read_frames(shared: Arc<Shared>, mut stream: SplitStream<WsStream>) {
    let close = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => on_server_text(&shared, text.as_str()),
            Some(Ok(Message::Close(frame))) => {
                break CloseInfo {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break CloseInfo { code: None, reason: e.to_string() },
            None => break CloseInfo { code: None, reason: "end of stream".into() },
        }
    };
    shared.update(|s| s.closed = Some(close.clone()));
    shared.emit(ClientEvent::Closed(close));
}

impl Shared {
    fn set_reader(&self, reader: JoinHandle<()>) {
        *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
    }

    fn take_reader(&self) -> Option<JoinHandle<()>> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

fn on_server_text(shared: &Arc<Shared>, text: &str) {
    let neg = &shared.neg;
    let msg: ServerMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            shared.fail(format!("unparseable server message ({e}): {}", text.chars().take(200).collect::<String>()));
            return;
        }
    };
    tracing::debug!(msg = %text.chars().take(120).collect::<String>(), "server message");
    let cmd = match &msg {
        ServerMessage::Offer { sdp } => Some(NegCmd::ServerOffer(sdp.clone())),
        ServerMessage::Answer { sdp } => Some(NegCmd::ServerAnswer(sdp.clone())),
        ServerMessage::Error { code: ErrorCode::OfferCollision, .. } => Some(NegCmd::Collision),
        ServerMessage::Resumed { media_reset: true, .. } => Some(NegCmd::Reset),
        _ => None,
    };
    shared.update(|s| {
        match &msg {
            ServerMessage::Joined { participant_id, role, resume_token, .. } => {
                s.participant_id = Some(participant_id.clone());
                s.role = Some(*role);
                s.resume_token = resume_token.clone();
            }
            ServerMessage::Resumed { participant_id, role, resume_token, .. } => {
                s.participant_id = Some(participant_id.clone());
                s.role = Some(*role);
                s.resume_token = Some(resume_token.clone());
            }
            ServerMessage::RoleChanged { participant_id, role }
                if s.participant_id.as_ref() == Some(participant_id) =>
            {
                // Promoted or demoted in place by an operator: `publish` follows the new role.
                s.role = Some(*role);
            }
            ServerMessage::Offer { .. } => s.offers_received += 1,
            _ => {}
        }
        s.messages.push(msg.clone());
    });
    shared.emit(ClientEvent::Server(msg));
    if let Some(cmd) = cmd {
        let _ = neg.send(cmd);
    }
}

fn local_track(kind: RtpCodecKind, stream_id: &str, ssrc: u32) -> TrackLocalStaticRTP {
    let (codec, label) = match kind {
        RtpCodecKind::Audio => (opus_codec(), "audio"),
        _ => (vp8_codec(), "video"),
    };
    TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_owned(),
        format!("{stream_id}-{label}"),
        label.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            active: true,
            codec,
            ..Default::default()
        }],
    ))
}

fn sendonly(stream_id: &str) -> RTCRtpTransceiverInit {
    RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        streams: vec![stream_id.to_owned()],
        send_encodings: vec![],
    }
}

/// Wait (bounded) for ICE gathering to complete, then return the local description's SDP, which
/// then carries the gathered candidates.
async fn gathered_sdp(peer: &Peer, timeout: Duration) -> Result<String, ClientError> {
    let mut g = peer.gathering.clone();
    let _ = tokio::time::timeout(timeout, g.wait_for(|s| *s == RTCIceGatheringState::Complete)).await;
    peer.pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| ClientError::InvalidState("no local description after set_local_description".into()))
}

/// A stream this client publishes.
struct Local {
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    default_pt: u8,
}

struct Publication {
    config: MediaConfig,
    audio: Option<Local>,
    video: Option<Local>,
    started: bool,
}

/// Owns the peer connection and performs every SDP step, one command at a time.
struct Negotiator {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Message>,
    peer: Option<Peer>,
    /// Our offer was sent and not yet answered.
    offer_outstanding: bool,
    /// Offer again once the current server offer is answered.
    reoffer: bool,
    /// `offer_collision` errors still due for offers we already rolled back.
    expected_collisions: u32,
    publication: Option<Publication>,
}

impl Negotiator {
    fn new(shared: Arc<Shared>, out: mpsc::UnboundedSender<Message>) -> Self {
        Self {
            shared,
            out,
            peer: None,
            offer_outstanding: false,
            reoffer: false,
            expected_collisions: 0,
            publication: None,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<NegCmd>) {
        while let Some(cmd) = rx.recv().await {
            let result = match cmd {
                NegCmd::ServerOffer(sdp) => self.on_server_offer(sdp).await,
                NegCmd::ServerAnswer(sdp) => self.on_server_answer(sdp).await,
                NegCmd::Collision => self.on_collision().await,
                NegCmd::Publish(config, reply) => {
                    let r = self.publish(config).await;
                    let failed = r.as_ref().err().map(|e| e.to_string());
                    let _ = reply.send(r);
                    match failed {
                        Some(e) => Err(ClientError::InvalidState(format!("publish: {e}"))),
                        None => Ok(()),
                    }
                }
                NegCmd::Close(done) => {
                    if let Some(peer) = self.peer.take() {
                        let _ = peer.pc.close().await;
                    }
                    let _ = done.send(());
                    Ok(())
                }
                NegCmd::Reset => {
                    self.shared.stop_media.send_replace(true);
                    if let Some(peer) = self.peer.take() {
                        let _ = peer.pc.close().await;
                    }
                    *self.shared.pc.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    self.publication = None;
                    self.offer_outstanding = false;
                    self.reoffer = false;
                    self.expected_collisions = 0;
                    Ok(())
                }
            };
            if let Err(e) = result {
                self.shared.fail(e.to_string());
            }
        }
    }

    fn send(&self, msg: ClientMessage) -> Result<(), ClientError> {
        self.out.send(Message::text(msg.to_json())).map_err(|_| ClientError::Closed)
    }

    async fn peer(&mut self) -> Result<&Peer, ClientError> {
        if self.peer.is_none() {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let peer = build_peer(tx).await?;
            *self.shared.pc.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer.pc.clone());
            let shared = self.shared.clone();
            tokio::spawn(async move {
                while let Some(PeerEvent::Track(track)) = rx.recv().await {
                    tokio::spawn(read_track(shared.clone(), track));
                }
            });
            let shared = self.shared.clone();
            let mut state = peer.state.clone();
            tokio::spawn(async move {
                loop {
                    let s = state.borrow_and_update().to_string();
                    shared.update(|snap| snap.peer_state = s);
                    if state.changed().await.is_err() {
                        break;
                    }
                }
            });
            self.peer = Some(peer);
        }
        self.peer.as_ref().ok_or_else(|| ClientError::InvalidState("no peer connection".into()))
    }

    async fn send_offer(&mut self) -> Result<(), ClientError> {
        let timeout = self.shared.options.gather_timeout;
        let peer = self.peer().await?;
        let offer = peer.pc.create_offer(None).await?;
        peer.pc.set_local_description(offer).await?;
        let sdp = gathered_sdp(peer, timeout).await?;
        self.send(ClientMessage::Offer { sdp })?;
        self.offer_outstanding = true;
        self.shared.update(|s| s.offers_sent += 1);
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), ClientError> {
        self.offer_outstanding = false;
        self.reoffer = true;
        let peer = self.peer().await?;
        peer.pc.set_local_description(RTCSessionDescription::rollback(None)?).await?;
        Ok(())
    }

    async fn on_server_offer(&mut self, sdp: String) -> Result<(), ClientError> {
        if self.offer_outstanding {
            // The server refused (or will refuse) our offer with offer_collision.
            self.expected_collisions += 1;
            self.rollback().await?;
        }
        let timeout = self.shared.options.gather_timeout;
        let peer = self.peer().await?;
        peer.pc.set_remote_description(RTCSessionDescription::offer(sdp)?).await?;
        let answer = peer.pc.create_answer(None).await?;
        peer.pc.set_local_description(answer).await?;
        let sdp = gathered_sdp(peer, timeout).await?;
        self.send(ClientMessage::Answer { sdp })?;
        self.shared.update(|s| s.answers_sent += 1);
        if std::mem::take(&mut self.reoffer) {
            self.send_offer().await?;
        }
        Ok(())
    }

    async fn on_server_answer(&mut self, sdp: String) -> Result<(), ClientError> {
        if !self.offer_outstanding {
            return Err(ClientError::InvalidState("server answer without an outstanding offer".into()));
        }
        let peer = self.peer().await?;
        peer.pc.set_remote_description(RTCSessionDescription::answer(sdp)?).await?;
        self.offer_outstanding = false;
        self.shared.update(|s| s.answers_received += 1);
        self.start_media().await
    }

    async fn on_collision(&mut self) -> Result<(), ClientError> {
        if self.expected_collisions > 0 {
            self.expected_collisions -= 1;
            return Ok(());
        }
        if self.offer_outstanding {
            // The error overtook the server's offer; roll back now and offer again after answering.
            self.rollback().await?;
        }
        Ok(())
    }

    async fn publish(&mut self, config: MediaConfig) -> Result<(), ClientError> {
        if self.publication.is_some() {
            return Err(ClientError::InvalidState("already publishing".into()));
        }
        let stream_id = self.shared.lock().participant_id.clone().unwrap_or_else(|| "dais-client".into());
        let peer = self.peer().await?;
        let add = async |kind: RtpCodecKind, ssrc: u32, default_pt: u8| -> Result<Local, ClientError> {
            let track = Arc::new(local_track(kind, &stream_id, ssrc));
            let t = peer
                .pc
                .add_transceiver_from_track(track.clone() as Arc<dyn TrackLocal>, Some(sendonly(&stream_id)))
                .await?;
            let sender =
                t.sender().await?.ok_or_else(|| ClientError::InvalidState("transceiver without sender".into()))?;
            Ok(Local { track, sender, ssrc, default_pt })
        };
        let ssrc = config.tag.wrapping_mul(2).wrapping_add(0x1000_0001);
        let audio = if config.audio { Some(add(RtpCodecKind::Audio, ssrc, OPUS_PT).await?) } else { None };
        let video =
            if config.video { Some(add(RtpCodecKind::Video, ssrc.wrapping_add(1), VP8_PT).await?) } else { None };
        if let Some(v) = &video {
            tokio::spawn(sender::watch_keyframe_requests(v.track.clone(), self.shared.counters.clone()));
        }
        self.publication = Some(Publication { config, audio, video, started: false });
        if self.offer_outstanding {
            // Cannot happen (only publish offers first), but never stack two offers.
            self.reoffer = true;
            return Ok(());
        }
        self.send_offer().await
    }

    /// Start the sender tasks after the first answer to our publish offer.
    async fn start_media(&mut self) -> Result<(), ClientError> {
        let Some(state) = self.peer.as_ref().map(|p| p.state.clone()) else {
            return Ok(());
        };
        let Some(publication) = self.publication.as_mut() else {
            return Ok(());
        };
        if publication.started {
            return Ok(());
        }
        publication.started = true;
        let tag = publication.config.tag;
        let counters = self.shared.counters.clone();
        if let Some(a) = &publication.audio {
            let outlet = outlet(a).await;
            tokio::spawn(sender::run_audio(
                outlet,
                tag,
                counters.clone(),
                state.clone(),
                self.shared.stop_media.subscribe(),
            ));
        }
        if let Some(v) = &publication.video {
            let outlet = outlet(v).await;
            let interval = publication.config.keyframe_interval;
            tokio::spawn(sender::run_video(outlet, tag, interval, counters, state, self.shared.stop_media.subscribe()));
        }
        Ok(())
    }
}

/// The negotiated payload type of a local stream (the first codec the sender settled on).
async fn outlet(local: &Local) -> Outlet {
    let payload_type = match local.sender.get_parameters().await {
        Ok(p) => p.rtp_parameters.codecs.first().map(|c| c.payload_type).unwrap_or(local.default_pt),
        Err(_) => local.default_pt,
    };
    Outlet { track: local.track.clone(), ssrc: local.ssrc, payload_type }
}

/// Read one remote track to its end, verifying every payload into the stream's statistics.
async fn read_track(shared: Arc<Shared>, track: Arc<dyn TrackRemote>) {
    let participant_id = track.stream_id().await;
    let media_id = track.track_id().await;
    let kind = match track.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        _ => MediaKind::Video,
    };
    let key = (participant_id.clone(), media_id.clone());
    shared.update(|s| {
        let entry = s
            .streams
            .entry(key.clone())
            .or_insert_with(|| StreamStats::new(participant_id.clone(), media_id.clone(), kind));
        entry.ended = false;
    });
    shared.emit(ClientEvent::TrackOpened { participant_id: participant_id.clone(), media_id: media_id.clone(), kind });
    let packet_events = shared.options.packet_events;
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                let v = verify_payload(kind, &pkt.payload);
                let h = &pkt.header;
                shared.update(|s| {
                    if let Some(st) = s.streams.get_mut(&key) {
                        st.record(h.sequence_number, h.ssrc, h.marker, pkt.payload.len(), v);
                    }
                });
                if packet_events {
                    shared.emit(ClientEvent::Received(ReceivedPacket {
                        participant_id: participant_id.clone(),
                        media_id: media_id.clone(),
                        kind,
                        seq: h.sequence_number,
                        timestamp: h.timestamp,
                        ssrc: h.ssrc,
                        marker: h.marker,
                        payload_ok: v.is_some_and(|v| v.ok),
                        sender_tag: v.map(|v| v.tag),
                        counter: v.map(|v| v.counter),
                        keyframe_start: v.is_some_and(|v| v.keyframe_start()),
                    }));
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    shared.update(|s| {
        if let Some(st) = s.streams.get_mut(&key) {
            st.ended = true;
        }
    });
    shared.emit(ClientEvent::TrackEnded { participant_id, media_id });
}
