//! Signaling unit tests: a fake media plane records commands, in-memory channels stand in for the
//! WebSocket, and assertions read the JSON a client would see.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dais_proto::{ErrorCode, MediaKind, Reaction, Role, ServerMessage, CLOSE_MESSAGE_TOO_BIG};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Sink, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::{
    AnswerRejection, Frame, MediaEvent, MediaPlane, OfferRejection, OutFrame, SessionMode, Signaling, SignalingConfig,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Open(u64, bool),
    Offer(u64),
    Answer(u64),
    Candidate(u64, String),
    Subscribe { session: u64, producer: u64, stream_id: String, track_id: String },
    Close(u64),
    Publisher(u64, bool),
    Paused(u64, bool),
    VideoSize(u64, u64, u16, u16),
}

#[derive(Default)]
struct FakeMedia {
    calls: Mutex<Vec<Call>>,
    events: Mutex<Vec<(u64, mpsc::UnboundedSender<MediaEvent>)>>,
}

impl FakeMedia {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn emit(&self, session: u64, ev: MediaEvent) {
        let events = self.events.lock().unwrap();
        let (_, tx) = events.iter().find(|(s, _)| *s == session).expect("session was opened");
        tx.send(ev).unwrap();
    }
}

impl MediaPlane for FakeMedia {
    fn open_session(&self, session: u64, mode: SessionMode, events: mpsc::UnboundedSender<MediaEvent>) {
        self.calls.lock().unwrap().push(Call::Open(session, mode == SessionMode::Speaker));
        self.events.lock().unwrap().push((session, events));
    }
    fn client_offer(&self, session: u64, sdp: String) -> BoxFuture<'static, Result<String, OfferRejection>> {
        self.calls.lock().unwrap().push(Call::Offer(session));
        let r = match sdp.as_str() {
            "garbage" => Err(OfferRejection::BadSdp("parse".into())),
            "sends" => Err(OfferRejection::NotAPublisher),
            "collide" => Err(OfferRejection::Collision),
            _ => Ok("v=0 answer".to_owned()),
        };
        async move { r }.boxed()
    }
    fn client_answer(&self, session: u64, sdp: String) -> BoxFuture<'static, Result<(), AnswerRejection>> {
        self.calls.lock().unwrap().push(Call::Answer(session));
        let r = if sdp == "v=0 good" { Ok(()) } else { Err(AnswerRejection::Unexpected) };
        async move { r }.boxed()
    }
    fn add_candidate(&self, session: u64, candidate: String) {
        self.calls.lock().unwrap().push(Call::Candidate(session, candidate));
    }
    fn subscribe(&self, session: u64, producer: u64, stream_id: String, track_id: String) {
        self.calls.lock().unwrap().push(Call::Subscribe { session, producer, stream_id, track_id });
    }
    fn close_session(&self, session: u64) {
        self.calls.lock().unwrap().push(Call::Close(session));
    }
    fn set_publisher(&self, session: u64, publisher: bool) {
        self.calls.lock().unwrap().push(Call::Publisher(session, publisher));
    }
    fn set_paused(&self, producer: u64, paused: bool) {
        self.calls.lock().unwrap().push(Call::Paused(producer, paused));
    }
    fn video_size(&self, session: u64, producer: u64, width: u16, height: u16) {
        self.calls.lock().unwrap().push(Call::VideoSize(session, producer, width, height));
    }
}

type In = Pin<Box<dyn Stream<Item = Frame> + Send>>;
type Out = Pin<Box<dyn Sink<OutFrame, Error = ()> + Send>>;

/// One fake WebSocket: what the test sends in, and what the server sent out.
struct Peer {
    to_server: mpsc::UnboundedSender<Frame>,
    from_server: mpsc::Receiver<OutFrame>,
}

impl Peer {
    fn send(&self, text: &str) {
        self.to_server.send(Frame::Text(text.to_owned())).unwrap();
    }

    /// The next frame other than a ping or an `audience` message (whose timing most tests leave
    /// alone), within 5 s.
    async fn next(&mut self) -> OutFrame {
        loop {
            let f = self.next_raw().await;
            let audience = matches!(&f, OutFrame::Text(t) if matches!(serde_json::from_str(t), Ok(ServerMessage::Audience { .. })));
            if !audience {
                return f;
            }
        }
    }

    /// The next frame other than a ping, within 5 s.
    async fn next_raw(&mut self) -> OutFrame {
        loop {
            let f = tokio::time::timeout(Duration::from_secs(5), self.from_server.recv())
                .await
                .expect("a frame within 5 s")
                .expect("socket open");
            if f != OutFrame::Ping {
                return f;
            }
        }
    }

    /// The next message other than `audience`.
    async fn msg(&mut self) -> ServerMessage {
        text_message(self.next().await)
    }

    async fn msg_or_audience(&mut self) -> ServerMessage {
        text_message(self.next_raw().await)
    }

    async fn error_code(&mut self) -> ErrorCode {
        match self.msg().await {
            ServerMessage::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Join; returns `joined` (or the refusal), having taken the `chat_history` that follows it.
    async fn join(&mut self, room: &str, name: &str, role: &str) -> ServerMessage {
        self.join_with_history(room, name, role).await.0
    }

    /// Join; returns `joined` and the `chat_history` that follows it (`None` after a refusal).
    async fn join_with_history(
        &mut self,
        room: &str,
        name: &str,
        role: &str,
    ) -> (ServerMessage, Option<ServerMessage>) {
        self.send(&format!(r#"{{"type":"join","room":"{room}","name":"{name}","role":"{role}","version":1}}"#));
        let joined = self.msg().await;
        let history = match joined {
            ServerMessage::Joined { .. } => Some(self.history().await),
            _ => None,
        };
        (joined, history)
    }

    /// The `chat_history` that comes right after `joined` and `resumed`.
    async fn history(&mut self) -> ServerMessage {
        let m = self.msg_or_audience().await;
        assert!(matches!(m, ServerMessage::ChatHistory { .. }), "expected chat_history, got {m:?}");
        m
    }
}

/// A text frame's message, shared (the chat feed) or not.
fn text_message(f: OutFrame) -> ServerMessage {
    match f {
        OutFrame::Text(t) => serde_json::from_str(&t).expect("server JSON parses"),
        OutFrame::Shared(b) => serde_json::from_slice(&b).expect("server JSON parses"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

fn connect(sig: &Arc<Signaling>) -> Peer {
    connect_reading(sig, 100_000)
}

/// A fake WebSocket whose client has room for only `window` frames it has not read: the server's
/// sends wait while it is full, as on a socket whose TCP window is.
fn connect_reading(sig: &Arc<Signaling>, window: usize) -> Peer {
    let (to_server, rx_in) = mpsc::unbounded_channel::<Frame>();
    let (tx_out, from_server) = mpsc::channel::<OutFrame>(window);
    let incoming: In =
        Box::pin(futures_util::stream::unfold(rx_in, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) }));
    let outgoing: Out = Box::pin(futures_util::sink::unfold(tx_out, |tx, f: OutFrame| async move {
        tx.send(f).await.map_err(|_| ())?;
        Ok::<_, ()>(tx)
    }));
    tokio::spawn(sig.clone().serve(incoming, outgoing));
    Peer { to_server, from_server }
}

fn setup() -> (Arc<FakeMedia>, Arc<Signaling>) {
    setup_with(SignalingConfig { max_participants: 3, ..SignalingConfig::default() })
}

fn setup_with(config: SignalingConfig) -> (Arc<FakeMedia>, Arc<Signaling>) {
    let media = Arc::new(FakeMedia::default());
    let sig = Signaling::new(media.clone(), config);
    (media, sig)
}

#[tokio::test]
async fn join_validation_codes() {
    let (_, sig) = setup();
    let mut p = connect(&sig);
    p.send("{oops");
    assert_eq!(p.error_code().await, ErrorCode::BadJson);
    p.send(r#"{"type":"teleport"}"#);
    assert_eq!(p.error_code().await, ErrorCode::UnknownType);
    p.send(r#"{"type":"offer","sdp":"v=0"}"#);
    assert_eq!(p.error_code().await, ErrorCode::NotJoined);
    p.send(r#"{"type":"join","room":"r","name":"a","role":"speaker","version":2}"#);
    assert_eq!(p.error_code().await, ErrorCode::UnsupportedVersion);
    p.send(r#"{"type":"join","room":"","name":"a","role":"speaker","version":1}"#);
    assert_eq!(p.error_code().await, ErrorCode::InvalidRoom);
    let long = "r".repeat(10 * 1024);
    p.send(&format!(r#"{{"type":"join","room":"{long}","name":"a","role":"speaker","version":1}}"#));
    assert_eq!(p.error_code().await, ErrorCode::InvalidRoom);
    p.send(r#"{"type":"join","room":"r","name":"\n","role":"speaker","version":1}"#);
    assert_eq!(p.error_code().await, ErrorCode::InvalidName);
    p.send(r#"{"type":"join","room":"r","name":"a","role":"king","version":1}"#);
    assert_eq!(p.error_code().await, ErrorCode::BadMessage);
    assert!(matches!(p.join("r", "a", "speaker").await, ServerMessage::Joined { role: Role::Speaker, .. }));
    assert!(matches!(p.join("r", "a", "speaker").await, ServerMessage::Error { code: ErrorCode::AlreadyJoined, .. }));
    p.send(r#"{"type":"ping","id":7}"#);
    assert_eq!(p.msg().await, ServerMessage::Pong { id: Some(7) });
}

#[tokio::test]
async fn publishing_fans_out_and_subscribes_everyone_else() {
    let (media, sig) = setup();
    let mut a = connect(&sig);
    let ServerMessage::Joined { participant_id: a_id, .. } = a.join("room", "A", "speaker").await else { panic!() };
    let mut v = connect(&sig);
    let ServerMessage::Joined { participant_id: v_id, participants, .. } = v.join("room", "V", "viewer").await else {
        panic!()
    };
    assert_eq!(participants.len(), 1);
    assert_eq!(participants[0].id, a_id);
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { participant } if participant.id == v_id));

    let a_session: u64 = a_id.trim_start_matches('p').parse().unwrap();
    a.send(r#"{"type":"offer","sdp":"v=0 offer"}"#);
    assert_eq!(a.msg().await, ServerMessage::Answer { sdp: "v=0 answer".into() });
    media.emit(a_session, MediaEvent::Published { producer: 9, kind: MediaKind::Video, codec: "vp8".into() });
    match v.msg().await {
        ServerMessage::MediaPublished { participant_id, media } => {
            assert_eq!(participant_id, a_id);
            assert_eq!((media.id.as_str(), media.kind, media.codec.as_str()), ("m9", MediaKind::Video, "vp8"));
        }
        other => panic!("expected media_published, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let v_session: u64 = v_id.trim_start_matches('p').parse().unwrap();
    assert!(media.calls().contains(&Call::Subscribe {
        session: v_session,
        producer: 9,
        stream_id: a_id.clone(),
        track_id: "m9".into()
    }));

    // A late joiner is subscribed to what is already published.
    let mut late = connect(&sig);
    let ServerMessage::Joined { participant_id: late_id, participants, .. } = late.join("room", "L", "viewer").await
    else {
        panic!()
    };
    let a_info = participants.iter().find(|p| p.id == a_id).expect("speaker listed");
    assert_eq!(a_info.media.len(), 1);
    assert_eq!(participants.len(), 1, "a viewer is not shown the other viewer: {participants:?}");
    let late_session: u64 = late_id.trim_start_matches('p').parse().unwrap();
    assert!(media.calls().contains(&Call::Subscribe {
        session: late_session,
        producer: 9,
        stream_id: a_id.clone(),
        track_id: "m9".into()
    }));

    // Server offers are relayed (the viewer heard nothing of the other viewer); mute reaches the others.
    media.emit(v_session, MediaEvent::Offer { sdp: "v=0 server".into() });
    assert_eq!(v.msg().await, ServerMessage::Offer { sdp: "v=0 server".into() });
    a.send(r#"{"type":"mute","kind":"video","muted":true}"#);
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
    assert_eq!(
        v.msg().await,
        ServerMessage::MuteChanged {
            participant_id: a_id.clone(),
            media_id: "m9".into(),
            kind: MediaKind::Video,
            muted: true
        }
    );

    // The speaker leaves: media_unpublished, participant_left, session closed.
    a.send(r#"{"type":"leave"}"#);
    assert!(matches!(a.next().await, OutFrame::Close(1000, _)));
    assert_eq!(v.msg().await, ServerMessage::MediaUnpublished { participant_id: a_id.clone(), media_id: "m9".into() });
    assert_eq!(v.msg().await, ServerMessage::ParticipantLeft { participant_id: a_id.clone() });
    assert!(media.calls().contains(&Call::Close(a_session)));
}

#[tokio::test]
async fn media_rejections_map_to_codes_and_keep_the_socket() {
    let (_, sig) = setup();
    let mut v = connect(&sig);
    v.join("r", "V", "viewer").await;
    v.send(r#"{"type":"offer","sdp":"sends"}"#);
    assert_eq!(v.error_code().await, ErrorCode::ViewerCannotPublish);
    v.send(r#"{"type":"mute","kind":"audio","muted":true}"#);
    assert_eq!(v.error_code().await, ErrorCode::ViewerCannotPublish);
    v.send(r#"{"type":"offer","sdp":"garbage"}"#);
    assert_eq!(v.error_code().await, ErrorCode::BadSdp);
    v.send(r#"{"type":"offer","sdp":"collide"}"#);
    assert_eq!(v.error_code().await, ErrorCode::OfferCollision);
    v.send(r#"{"type":"answer","sdp":"v=0"}"#);
    assert_eq!(v.error_code().await, ErrorCode::UnexpectedAnswer);
    let big = "a".repeat(dais_proto::MAX_SDP_BYTES + 1);
    v.send(&format!(r#"{{"type":"offer","sdp":"{big}"}}"#));
    assert_eq!(v.error_code().await, ErrorCode::BadSdp);
    v.to_server.send(Frame::Binary).unwrap();
    assert_eq!(v.error_code().await, ErrorCode::BinaryNotSupported);
    v.send(r#"{"type":"ping"}"#);
    assert_eq!(v.msg().await, ServerMessage::Pong { id: None });
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_room_full_is_refused() {
    let (media, sig) = setup();
    let mut a = connect(&sig);
    a.join("r", "A", "viewer").await;
    a.to_server.send(Frame::TooBig).unwrap();
    assert_eq!(a.next().await, OutFrame::Close(CLOSE_MESSAGE_TOO_BIG, "message too big".into()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(media.calls().iter().any(|c| matches!(c, Call::Close(_))), "the participant left");
    assert!(sig.rooms().is_empty(), "an empty room is removed");

    let mut peers = Vec::new();
    for i in 0..3 {
        let mut p = connect(&sig);
        assert!(matches!(p.join("full", &format!("v{i}"), "viewer").await, ServerMessage::Joined { .. }));
        peers.push(p);
    }
    let mut extra = connect(&sig);
    assert!(matches!(extra.join("full", "x", "viewer").await, ServerMessage::Error { code: ErrorCode::RoomFull, .. }));
}

#[tokio::test]
async fn media_failure_ends_the_participant() {
    let (media, sig) = setup();
    let mut a = connect(&sig);
    let ServerMessage::Joined { participant_id, .. } = a.join("r", "A", "speaker").await else { panic!() };
    let session: u64 = participant_id.trim_start_matches('p').parse().unwrap();
    media.emit(session, MediaEvent::Disconnected);
    assert_eq!(a.error_code().await, ErrorCode::MediaFailed);
    assert!(matches!(a.next().await, OutFrame::Close(1011, _)));
    a.to_server
        .send(Frame::Text(r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}"#.into()))
        .ok();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(sig.rooms().is_empty());
}

#[tokio::test]
async fn mute_before_publishing_applies_and_own_unpublish_is_announced() {
    let (media, sig) = setup();
    let mut a = connect(&sig);
    let ServerMessage::Joined { participant_id: a_id, .. } = a.join("r", "A", "speaker").await else { panic!() };
    let a_session: u64 = a_id.trim_start_matches('p').parse().unwrap();
    let mut v = connect(&sig);
    v.join("r", "V", "viewer").await;
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
    a.send(r#"{"type":"mute","kind":"audio","muted":true}"#);
    a.send(r#"{"type":"ping","id":1}"#);
    assert_eq!(a.msg().await, ServerMessage::Pong { id: Some(1) });
    media.emit(a_session, MediaEvent::Published { producer: 4, kind: MediaKind::Audio, codec: "opus".into() });
    match v.msg().await {
        ServerMessage::MediaPublished { media, .. } => assert!(media.muted, "the early mute applies"),
        other => panic!("expected media_published, got {other:?}"),
    }
    media.emit(a_session, MediaEvent::Unpublished { producer: 4 });
    assert_eq!(v.msg().await, ServerMessage::MediaUnpublished { participant_id: a_id.clone(), media_id: "m4".into() });
    let rooms = sig.rooms();
    let a_info = rooms[0].participants.iter().find(|p| p.id == a_id).unwrap();
    assert!(a_info.media.is_empty(), "the room forgets the stream");
}

#[tokio::test]
async fn video_sizes_reach_the_media_plane_and_pauses_reach_the_client() {
    let (media, sig) = setup();
    let mut v = connect(&sig);
    let ServerMessage::Joined { participant_id: v_id, .. } = v.join("vs", "V", "viewer").await else { panic!() };
    let session: u64 = v_id.trim_start_matches('p').parse().unwrap();
    v.send(r#"{"type":"video_size","media":"m7","width":640,"height":360}"#);
    v.send(r#"{"type":"video_size","media":"m7","width":100000,"height":0}"#);
    v.send(r#"{"type":"video_size","media":"camera","width":1,"height":1}"#);
    match v.msg().await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::BadMessage),
        other => panic!("expected bad_message, got {other:?}"),
    }
    let sizes: Vec<Call> = media.calls().into_iter().filter(|c| matches!(c, Call::VideoSize(..))).collect();
    assert_eq!(sizes, [Call::VideoSize(session, 7, 640, 360), Call::VideoSize(session, 7, u16::MAX, 0)]);
    media.emit(session, MediaEvent::VideoPaused { producer: 7, reason: "bandwidth".into() });
    assert_eq!(v.msg().await, ServerMessage::VideoPaused { media_id: "m7".into(), reason: "bandwidth".into() });
    media.emit(session, MediaEvent::VideoResumed { producer: 7 });
    assert_eq!(v.msg().await, ServerMessage::VideoResumed { media_id: "m7".into() });
}

#[tokio::test]
async fn admin_actions_reach_the_room_and_the_media_plane() {
    let (media, sig) = setup();
    let mut a = connect(&sig);
    let ServerMessage::Joined { participant_id: a_id, .. } = a.join("adm", "A", "speaker").await else { panic!() };
    let a_session: u64 = a_id.trim_start_matches('p').parse().unwrap();
    let mut v = connect(&sig);
    let ServerMessage::Joined { participant_id: v_id, .. } = v.join("adm", "V", "viewer").await else { panic!() };
    let v_session: u64 = v_id.trim_start_matches('p').parse().unwrap();
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
    media.emit(a_session, MediaEvent::Published { producer: 5, kind: MediaKind::Audio, codec: "opus".into() });
    assert!(matches!(v.msg().await, ServerMessage::MediaPublished { .. }));

    assert_eq!(sig.admin_mute("nope", &a_id, MediaKind::Audio, true), Err(crate::AdminError::RoomNotFound));
    assert_eq!(sig.admin_mute("adm", "p999", MediaKind::Audio, true), Err(crate::AdminError::ParticipantNotFound));
    assert_eq!(sig.admin_mute("adm", &a_id, MediaKind::Audio, true), Ok(1));
    let muted = ServerMessage::MuteChanged {
        participant_id: a_id.clone(),
        media_id: "m5".into(),
        kind: MediaKind::Audio,
        muted: true,
    };
    assert_eq!(a.msg().await, muted, "the muted speaker is told too");
    assert_eq!(v.msg().await, muted);
    assert!(media.calls().contains(&Call::Paused(5, true)));
    // The speaker cannot undo an operator's mute, and a stream it publishes later stays paused.
    a.send(r#"{"type":"mute","kind":"audio","muted":false}"#);
    assert_eq!(a.error_code().await, ErrorCode::MutedByOperator);
    media.emit(a_session, MediaEvent::Published { producer: 6, kind: MediaKind::Audio, codec: "opus".into() });
    match v.msg().await {
        ServerMessage::MediaPublished { media: m, .. } => assert!(m.muted, "published muted"),
        other => panic!("expected media_published, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(media.calls().contains(&Call::Paused(6, true)), "a later stream is paused too");

    sig.admin_set_role("adm", &v_id, Role::Speaker).unwrap();
    let promoted = ServerMessage::RoleChanged { participant_id: v_id.clone(), role: Role::Speaker };
    assert_eq!(a.msg().await, promoted);
    assert_eq!(v.msg().await, promoted);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(media.calls().contains(&Call::Publisher(v_session, true)));
    // The promoted viewer may now mute its own media like a speaker.
    v.send(r#"{"type":"mute","kind":"video","muted":true}"#);
    v.send(r#"{"type":"ping","id":3}"#);
    assert_eq!(v.msg().await, ServerMessage::Pong { id: Some(3) });

    sig.admin_kick("adm", &v_id).unwrap();
    assert_eq!(v.error_code().await, ErrorCode::Kicked);
    assert_eq!(v.next().await, OutFrame::Close(crate::CLOSE_KICKED, "kicked".into()));
    assert_eq!(a.msg().await, ServerMessage::ParticipantLeft { participant_id: v_id.clone() });

    assert_eq!(sig.admin_close_room("adm"), Ok(1));
    assert_eq!(a.error_code().await, ErrorCode::RoomClosed);
    assert_eq!(a.next().await, OutFrame::Close(crate::CLOSE_ROOM_CLOSED, "room_closed".into()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(sig.rooms().is_empty());
}

/// The participant's next `audience` count, skipping other messages.
async fn audience(p: &mut Peer) -> u64 {
    loop {
        if let ServerMessage::Audience { viewers } = p.msg_or_audience().await {
            return viewers;
        }
    }
}

// Paused time: the joins below take no time at all, so they always fall inside the speaker's 1 s hold,
// and the runtime jumps to the hold's end whenever every task waits.
#[tokio::test(start_paused = true)]
async fn viewers_see_only_speakers_and_hear_a_coalesced_audience_count() {
    let (_, sig) = setup_with(SignalingConfig::default());
    let mut a = connect(&sig);
    let ServerMessage::Joined { participant_id: a_id, viewers, .. } = a.join("aud", "A", "speaker").await else {
        panic!()
    };
    assert_eq!(viewers, 0);
    let mut v1 = connect(&sig);
    let ServerMessage::Joined { participant_id: v1_id, participants, viewers, .. } =
        v1.join("aud", "V1", "viewer").await
    else {
        panic!()
    };
    assert_eq!((participants.len(), participants[0].id.as_str(), viewers), (1, a_id.as_str(), 1));
    // The speaker sees the viewer, then the count.
    assert!(
        matches!(a.msg_or_audience().await, ServerMessage::ParticipantJoined { participant } if participant.id == v1_id)
    );
    assert_eq!(a.msg_or_audience().await, ServerMessage::Audience { viewers: 1 });

    // Two more viewers within the speaker's hold: one `audience` with the latest count, not two.
    let mut v2 = connect(&sig);
    let ServerMessage::Joined { participant_id: v2_id, participants, viewers, .. } =
        v2.join("aud", "V2", "viewer").await
    else {
        panic!()
    };
    assert_eq!(
        participants.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [a_id.as_str()],
        "no other viewer listed"
    );
    assert_eq!(viewers, 2);
    let mut v3 = connect(&sig);
    let ServerMessage::Joined { participant_id: v3_id, .. } = v3.join("aud", "V3", "viewer").await else { panic!() };
    assert!(
        matches!(a.msg_or_audience().await, ServerMessage::ParticipantJoined { participant } if participant.id == v2_id)
    );
    assert!(
        matches!(a.msg_or_audience().await, ServerMessage::ParticipantJoined { participant } if participant.id == v3_id)
    );
    assert_eq!(a.msg_or_audience().await, ServerMessage::Audience { viewers: 3 }, "changes in the hold are coalesced");
    // Viewer 1 hears no `participant_joined` for viewers 2 and 3 (room news come before the count).
    match v1.msg_or_audience().await {
        ServerMessage::Audience { viewers: 2 } => assert_eq!(audience(&mut v1).await, 3),
        other => assert_eq!(other, ServerMessage::Audience { viewers: 3 }),
    }
    assert_eq!(v2.msg_or_audience().await, ServerMessage::Audience { viewers: 3 });

    // A viewer leaves: the speaker gets `participant_left`, the other viewers only the count.
    v3.send(r#"{"type":"leave"}"#);
    assert_eq!(a.msg().await, ServerMessage::ParticipantLeft { participant_id: v3_id.clone() });
    assert_eq!(audience(&mut a).await, 2);
    assert_eq!(v2.msg_or_audience().await, ServerMessage::Audience { viewers: 2 }, "no participant_left for a viewer");

    // Promoted, viewer 1 becomes visible to viewer 2 and sees viewer 2 itself.
    sig.admin_set_role("aud", &v1_id, Role::Speaker).unwrap();
    assert_eq!(a.msg().await, ServerMessage::RoleChanged { participant_id: v1_id.clone(), role: Role::Speaker });
    match v2.msg().await {
        ServerMessage::ParticipantJoined { participant } => {
            assert_eq!((participant.id.as_str(), participant.role), (v1_id.as_str(), Role::Speaker));
        }
        other => panic!("expected participant_joined for the promoted viewer, got {other:?}"),
    }
    let mut seen = [v1.msg().await, v1.msg().await];
    seen.sort_by_key(|m| m.to_json());
    assert!(
        matches!(&seen[0], ServerMessage::ParticipantJoined { participant } if participant.id == v2_id),
        "{seen:?}"
    );
    assert_eq!(seen[1], ServerMessage::RoleChanged { participant_id: v1_id.clone(), role: Role::Speaker });
    assert_eq!(audience(&mut v2).await, 1);

    // Demoted again, it disappears for viewer 2 and stops seeing it.
    sig.admin_set_role("aud", &v1_id, Role::Viewer).unwrap();
    assert_eq!(a.msg().await, ServerMessage::RoleChanged { participant_id: v1_id.clone(), role: Role::Viewer });
    assert_eq!(v2.msg().await, ServerMessage::ParticipantLeft { participant_id: v1_id.clone() });
    let mut seen = [v1.msg().await, v1.msg().await];
    seen.sort_by_key(|m| m.to_json());
    assert_eq!(seen[0], ServerMessage::ParticipantLeft { participant_id: v2_id.clone() });
    assert_eq!(seen[1], ServerMessage::RoleChanged { participant_id: v1_id.clone(), role: Role::Viewer });
    assert_eq!(sig.metrics().viewers, 2);
}

// Paused time: the runtime jumps to the next timer whenever every task waits.
#[tokio::test(start_paused = true)]
async fn an_unanswered_server_offer_ends_the_participant() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let mut v = connect(&sig);
    let ServerMessage::Joined { participant_id, .. } = v.join("neg", "V", "viewer").await else { panic!() };
    let session: u64 = participant_id.trim_start_matches('p').parse().unwrap();

    // Answered within the 20 s: nothing happens, however long the client then stays.
    media.emit(session, MediaEvent::Offer { sdp: "v=0 first".into() });
    assert_eq!(v.msg().await, ServerMessage::Offer { sdp: "v=0 first".into() });
    tokio::time::sleep(Duration::from_secs(15)).await;
    v.send(r#"{"type":"answer","sdp":"v=0 good"}"#);
    tokio::time::sleep(Duration::from_secs(30)).await;
    v.send(r#"{"type":"ping","id":1}"#);
    assert_eq!(v.msg().await, ServerMessage::Pong { id: Some(1) });

    // The next offer is never answered (a refused answer does not count): error and close 1008.
    media.emit(session, MediaEvent::Offer { sdp: "v=0 second".into() });
    assert_eq!(v.msg().await, ServerMessage::Offer { sdp: "v=0 second".into() });
    let sent = tokio::time::Instant::now();
    v.send(r#"{"type":"answer","sdp":"v=0 refused"}"#);
    assert_eq!(v.error_code().await, ErrorCode::UnexpectedAnswer);
    tokio::time::sleep(Duration::from_secs(19)).await;
    v.send(r#"{"type":"ping","id":2}"#);
    assert_eq!(v.msg().await, ServerMessage::Pong { id: Some(2) }, "still open after 19 s");
    assert_eq!(v.error_code().await, ErrorCode::NegotiationTimeout);
    assert!(sent.elapsed() >= Duration::from_secs(20), "not before the timeout: {:?}", sent.elapsed());
    assert_eq!(v.next().await, OutFrame::Close(1008, "negotiation_timeout".into()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(media.calls().contains(&Call::Close(session)), "the participant left");
}

/// The media plane sends a refused offer again: that does not restart the 20 s.
#[tokio::test(start_paused = true)]
async fn an_offer_sent_again_after_a_refused_answer_keeps_its_deadline() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let mut v = connect(&sig);
    let ServerMessage::Joined { participant_id, .. } = v.join("neg2", "V", "viewer").await else { panic!() };
    let session: u64 = participant_id.trim_start_matches('p').parse().unwrap();
    media.emit(session, MediaEvent::Offer { sdp: "v=0 first".into() });
    assert_eq!(v.msg().await, ServerMessage::Offer { sdp: "v=0 first".into() });
    let sent = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    v.send(r#"{"type":"answer","sdp":"v=0 refused"}"#);
    assert_eq!(v.error_code().await, ErrorCode::UnexpectedAnswer);
    media.emit(session, MediaEvent::Offer { sdp: "v=0 first again".into() });
    assert_eq!(v.msg().await, ServerMessage::Offer { sdp: "v=0 first again".into() });
    tokio::time::sleep(Duration::from_secs(7)).await;
    v.send(r#"{"type":"ping","id":3}"#);
    assert_eq!(v.msg().await, ServerMessage::Pong { id: Some(3) }, "still open 19 s after the first offer");
    assert_eq!(v.error_code().await, ErrorCode::NegotiationTimeout);
    let after = sent.elapsed();
    assert!(
        after >= Duration::from_secs(20) && after < Duration::from_secs(21),
        "20 s after the first offer: {after:?}"
    );
    assert_eq!(v.next().await, OutFrame::Close(1008, "negotiation_timeout".into()));
}

#[tokio::test]
async fn joined_carries_the_ice_servers_with_credentials_minted_for_the_participant() {
    let turn =
        crate::ice::TurnRest::new(vec!["turn:t:3478?transport=tcp".into()], "shh".into(), Duration::from_secs(60));
    let stun = dais_proto::IceServer { urls: vec!["stun:s:3478".into()], username: None, credential: None };
    let ice = crate::ice::IceServers { servers: vec![stun.clone()], turn: Some(turn) };
    let (_media, sig) = setup_with(SignalingConfig { ice, ..SignalingConfig::default() });
    let mut v = connect(&sig);
    let ServerMessage::Joined { participant_id, ice_servers, .. } = v.join("ice", "V", "viewer").await else {
        panic!()
    };
    assert_eq!(ice_servers.len(), 2);
    assert_eq!(ice_servers[0], stun);
    let user = ice_servers[1].username.clone().expect("a user name");
    assert!(user.ends_with(&format!(":{participant_id}")), "{user}");
    let expiry: u64 = user.split(':').next().and_then(|e| e.parse().ok()).expect("an expiry");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    assert!(expiry > now && expiry <= now + 61, "valid for the TTL: {expiry} vs {now}");
    assert!(ice_servers[1].credential.as_ref().is_some_and(|c| !c.is_empty()));
    // Without ICE servers, `joined` has no such field at all.
    let (_media, sig) = setup_with(SignalingConfig::default());
    let mut w = connect(&sig);
    w.send(r#"{"type":"join","room":"ice","name":"W","role":"viewer","version":1}"#);
    let OutFrame::Text(text) = w.next().await else { panic!("a text frame") };
    assert!(text.contains(r#""type":"joined""#) && !text.contains("ice_servers"), "{text}");
}

mod chat;
mod http;
mod questions;
mod resume;
mod title;

#[tokio::test]
async fn a_message_flood_gets_rate_limited_then_closed_and_a_bystander_is_unaffected() {
    let (_, sig) = setup();
    let mut bystander = connect(&sig);
    bystander.join("flood", "B", "viewer").await;
    let mut flood = connect(&sig);
    flood.join("flood", "F", "viewer").await;
    for i in 0..50_000u64 {
        if flood.to_server.send(Frame::Text(format!(r#"{{"type":"ping","id":{i}}}"#))).is_err() {
            break;
        }
    }
    let (mut pongs, mut limited) = (0, 0);
    let close = loop {
        match flood.next().await {
            OutFrame::Close(code, reason) => break (code, reason),
            OutFrame::Text(t) => match serde_json::from_str::<ServerMessage>(&t).expect("json") {
                ServerMessage::Pong { .. } => pongs += 1,
                ServerMessage::Error { code: ErrorCode::RateLimited, .. } => limited += 1,
                other => panic!("unexpected {other:?}"),
            },
            OutFrame::Ping | OutFrame::Shared(_) => {}
        }
    };
    assert_eq!(close, (1008, "rate_limited".into()), "the flood is closed");
    assert!((190..=260).contains(&pongs), "the burst was served, then the rate: {pongs} pongs");
    assert!((10..=12).contains(&limited), "refusals reported about once per 100: {limited}");
    for id in 0..5 {
        bystander.send(&format!(r#"{{"type":"ping","id":{id}}}"#));
        assert_eq!(bystander.msg().await, ServerMessage::Pong { id: Some(id) }, "the bystander is answered");
    }
}

/// A WebSocket whose client stopped reading: its sink never takes a frame.
struct Stuck;

impl Sink<OutFrame> for Stuck {
    type Error = ();
    fn poll_ready(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ()>> {
        std::task::Poll::Pending
    }
    fn start_send(self: Pin<&mut Self>, _: OutFrame) -> Result<(), ()> {
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ()>> {
        std::task::Poll::Pending
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ()>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_takes_nothing_is_let_go_within_the_send_and_close_timeouts() {
    let (_, sig) = setup();
    // Messages that each want an error reply, then a flood that asks for a close: neither can be sent.
    let frames = (0..2000).map(|_| Frame::Text(r#"{"type":"teleport"}"#.into()));
    let incoming: In = Box::pin(futures_util::stream::iter(frames).chain(futures_util::stream::pending()));
    let started = tokio::time::Instant::now();
    let serving = tokio::spawn(sig.clone().serve(incoming, Box::pin(Stuck) as Out));
    tokio::time::timeout(Duration::from_secs(60), serving).await.expect("serve returns").unwrap();
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(15), "let go after {took:?}: at most the send (10 s) and close (5 s) timeouts");
    assert!(took >= Duration::from_secs(10), "the first reply had its send timeout: {took:?}");
    assert_eq!(sig.metrics().connections, 0, "the connection is no longer counted");
}

/// The next `speaking` message, skipping everything else (feeding `feed` every 200 ms meanwhile).
async fn next_speaking(p: &mut Peer, mut feed: impl FnMut()) -> (Vec<String>, Option<String>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        feed();
        tokio::select! {
            m = p.msg() => if let ServerMessage::Speaking { participants, dominant } = m { return (participants, dominant) },
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "no speaking message");
    }
}

#[tokio::test]
async fn audio_activity_makes_a_dominant_speaker_that_everyone_hears_and_mute_hands_over() {
    let (media, sig) = setup_with(SignalingConfig { max_participants: 5, ..SignalingConfig::default() });
    let mut a = connect(&sig);
    let ServerMessage::Joined { participant_id: a_id, .. } = a.join("talk", "A", "speaker").await else { panic!() };
    let mut b = connect(&sig);
    let ServerMessage::Joined { participant_id: b_id, .. } = b.join("talk", "B", "speaker").await else { panic!() };
    let mut v = connect(&sig);
    let ServerMessage::Joined { participant_id: v_id, .. } = v.join("talk", "V", "viewer").await else { panic!() };
    let session = |id: &str| id.trim_start_matches('p').parse::<u64>().unwrap();
    let (sa, sb, sv) = (session(&a_id), session(&b_id), session(&v_id));
    let feed = |a: u8, b: u8, v: u8| {
        let media = media.clone();
        move || {
            media.emit(sa, MediaEvent::AudioActivity { producer: 1, activity: a });
            media.emit(sb, MediaEvent::AudioActivity { producer: 2, activity: b });
            // A viewer's activity (it publishes nothing, so this is forged) is never counted.
            media.emit(sv, MediaEvent::AudioActivity { producer: 3, activity: v });
        }
    };
    let started = std::time::Instant::now();
    let mut heard = next_speaking(&mut v, feed(90, 0, 100)).await;
    while heard.1.is_none() {
        heard = next_speaking(&mut v, feed(90, 0, 100)).await;
    }
    assert_eq!(heard, (vec![a_id.clone()], Some(a_id.clone())));
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());
    // Speakers hear it too.
    loop {
        if next_speaking(&mut b, || {}).await.1 == Some(a_id.clone()) {
            break;
        }
    }
    // A mutes and keeps sending loud packets; B speaks: the floor changes hands.
    a.send(r#"{"type":"mute","kind":"audio","muted":true}"#);
    let swap = std::time::Instant::now();
    loop {
        let (speaking, dominant) = next_speaking(&mut v, feed(90, 90, 0)).await;
        if dominant == Some(b_id.clone()) {
            assert_eq!(speaking, vec![b_id.clone()]);
            break;
        }
    }
    assert!(swap.elapsed() < std::time::Duration::from_secs(3), "{:?}", swap.elapsed());
    // B leaves: it is no longer dominant, nor speaking.
    b.send(r#"{"type":"leave"}"#);
    loop {
        let (speaking, dominant) = next_speaking(&mut v, || {}).await;
        if dominant.is_none() {
            assert!(speaking.is_empty(), "{speaking:?}");
            break;
        }
    }
    // A late joiner hears the current state at once.
    let mut late = connect(&sig);
    late.join("talk", "L", "viewer").await;
    assert_eq!(next_speaking(&mut late, || {}).await, (vec![], None));
}

/// The next `reactions` message, skipping everything else.
async fn next_reactions(p: &mut Peer) -> (BTreeMap<Reaction, u64>, BTreeMap<Reaction, u64>) {
    loop {
        if let ServerMessage::Reactions { counts, totals } = p.msg().await {
            return (counts, totals);
        }
    }
}

#[tokio::test]
async fn reactions_are_counted_per_room_and_sent_as_one_total_per_interval() {
    let (_media, sig) = setup_with(SignalingConfig { max_participants: 50, ..SignalingConfig::default() });
    let mut watcher = connect(&sig);
    watcher.join("cheer", "W", "viewer").await;
    let mut crowd = Vec::new();
    for i in 0..20 {
        let mut p = connect(&sig);
        p.join("cheer", &format!("V{i}"), "viewer").await;
        crowd.push(p);
    }
    let started = std::time::Instant::now();
    for (i, p) in crowd.iter().enumerate() {
        p.send(r#"{"type":"react","reaction":"applause"}"#);
        if i % 4 == 0 {
            p.send(r#"{"type":"react","reaction":"heart"}"#);
        }
    }
    // The first interval may close before the last reactions arrive: add up until all 25 are in.
    let (mut applause, mut hearts, mut messages) = (0, 0, 0);
    let mut last = (BTreeMap::new(), BTreeMap::new());
    while applause + hearts < 25 {
        last = next_reactions(&mut watcher).await;
        applause += last.0.get(&Reaction::Applause).copied().unwrap_or(0);
        hearts += last.0.get(&Reaction::Heart).copied().unwrap_or(0);
        messages += 1;
    }
    assert_eq!((applause, hearts), (20, 5));
    assert!(messages <= 2, "{messages} messages for one burst");
    assert!(started.elapsed() >= std::time::Duration::from_millis(dais_proto::REACTIONS_INTERVAL_MS));
    let totals: BTreeMap<Reaction, u64> = [(Reaction::Applause, 20), (Reaction::Heart, 5)].into_iter().collect();
    assert_eq!(last.1, totals);
    // A reactor hears the same totals.
    let mut heard = next_reactions(&mut crowd[0]).await;
    while heard.1 != totals {
        heard = next_reactions(&mut crowd[0]).await;
    }
    // Past its burst, a participant's reactions are refused and not counted.
    let fast = &mut crowd[1];
    for _ in 0..8 {
        fast.send(r#"{"type":"react","reaction":"wow"}"#);
    }
    // A reaction outside the set is a bad message.
    fast.send(r#"{"type":"react","reaction":"boo"}"#);
    let mut refused = 0;
    loop {
        match fast.msg().await {
            ServerMessage::Error { code: ErrorCode::TooManyReactions, .. } => refused += 1,
            ServerMessage::Error { code, .. } => {
                assert_eq!(code, ErrorCode::BadMessage);
                break;
            }
            _ => {}
        }
    }
    assert!((3..=4).contains(&refused), "{refused} of 8 refused");
    let (_, totals) = next_reactions(&mut watcher).await;
    let wow = totals.get(&Reaction::Wow).copied().unwrap_or(0);
    // Its burst (5) less the applause it spent, plus what refilled meanwhile: never 8.
    assert_eq!(wow, 8 - refused, "{wow} wows counted of 8 sent, {refused} refused");
}
