//! Resume: a participant outlives a lost socket for the grace period and a new socket takes it over.

use super::*;

impl Peer {
    /// Resume; returns `resumed` (or the refusal), having taken the `chat_history` that follows it.
    async fn resume(&mut self, token: &str) -> ServerMessage {
        self.send(&format!(r#"{{"type":"resume","token":"{token}","version":1}}"#));
        let m = self.msg().await;
        if matches!(m, ServerMessage::Resumed { .. }) {
            self.history().await;
        }
        m
    }

    /// The next message other than `audience`, however long it takes (paused time jumps ahead).
    async fn msg_late(&mut self) -> ServerMessage {
        loop {
            match self.from_server.recv().await.expect("socket open") {
                OutFrame::Text(t) if !t.contains(r#""type":"audience""#) => {
                    return serde_json::from_str(&t).expect("server JSON parses")
                }
                OutFrame::Close(code, reason) => panic!("closed {code} {reason}"),
                _ => {}
            }
        }
    }

    /// The socket breaks (no `leave`, no close handshake).
    fn lose(self) {
        let _ = self.to_server.send(Frame::Error("connection reset".into()));
    }
}

fn token_of(m: &ServerMessage) -> String {
    match m {
        ServerMessage::Joined { resume_token: Some(t), .. } => t.clone(),
        ServerMessage::Resumed { resume_token, .. } => resume_token.clone(),
        other => panic!("no resume token in {other:?}"),
    }
}

fn id_of(m: &ServerMessage) -> String {
    match m {
        ServerMessage::Joined { participant_id, .. } | ServerMessage::Resumed { participant_id, .. } => {
            participant_id.clone()
        }
        other => panic!("no participant id in {other:?}"),
    }
}

fn session_of(id: &str) -> u64 {
    id.trim_start_matches('p').parse().expect("numeric id")
}

/// Nothing but pings and `audience` for `for_`.
async fn quiet(p: &mut Peer, for_: Duration) {
    let until = tokio::time::Instant::now() + for_;
    loop {
        match tokio::time::timeout_at(until, p.from_server.recv()).await {
            Err(_) => return,
            Ok(None) => panic!("socket closed"),
            Ok(Some(OutFrame::Ping)) => {}
            Ok(Some(OutFrame::Text(t))) if t.contains(r#""type":"audience""#) => {}
            Ok(Some(f)) => panic!("expected nothing, got {f:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_socket_is_resumed_as_the_same_participant_and_nobody_sees_it_leave() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let mut a = connect(&sig);
    let a_joined = a.join("res", "A", "speaker").await;
    let v = {
        let mut v = connect(&sig);
        let joined = v.join("res", "V", "viewer").await;
        assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
        (v, joined)
    };
    let (v, v_joined) = v;
    let (v_id, token) = (id_of(&v_joined), token_of(&v_joined));
    assert_eq!(token.len(), 64, "32 random bytes, hex");
    v.lose();
    // 19 s later the speaker has heard nothing, and the viewer's media session is untouched.
    quiet(&mut a, Duration::from_secs(19)).await;
    assert!(!media.calls().contains(&Call::Close(session_of(&v_id))));
    assert_eq!(sig.metrics().parked, 1);
    assert_eq!(sig.metrics().viewers, 1, "still counted");

    let mut v2 = connect(&sig);
    let resumed = v2.resume(&token).await;
    let ServerMessage::Resumed { participant_id, role, participants, viewers, media_reset, resume_token, .. } =
        resumed.clone()
    else {
        panic!("expected resumed, got {resumed:?}")
    };
    assert_eq!(participant_id, v_id, "the same participant");
    assert_eq!(role, Role::Viewer);
    assert_eq!(participants.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), vec![id_of(&a_joined)]);
    assert_eq!(viewers, 1);
    assert!(!media_reset, "the media session lives on");
    assert_ne!(resume_token, token, "each token works once");
    assert_eq!(sig.metrics().parked, 0);
    assert_eq!(sig.metrics().resumed, 1);

    // The old token is spent; the new socket carries the participant (room news reaches it).
    let mut other = connect(&sig);
    assert_eq!(
        other.resume(&token).await,
        ServerMessage::error(
            ErrorCode::ResumeFailed,
            crate::participant::ResumeError::Failed.message(),
            Some("resume")
        )
    );
    a.send(r#"{"type":"mute","kind":"audio","muted":true}"#);
    let a_session = session_of(&id_of(&a_joined));
    media.emit(a_session, MediaEvent::Published { producer: 3, kind: MediaKind::Audio, codec: "opus".into() });
    assert!(matches!(v2.msg().await, ServerMessage::MediaPublished { .. }));
    quiet(&mut a, Duration::from_secs(30)).await;
    assert!(!media.calls().contains(&Call::Close(session_of(&v_id))), "never left");
}

#[tokio::test(start_paused = true)]
async fn a_participant_not_resumed_within_the_grace_period_leaves() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let mut a = connect(&sig);
    a.join("grace", "A", "speaker").await;
    let mut v = connect(&sig);
    let joined = v.join("grace", "V", "viewer").await;
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
    let lost = tokio::time::Instant::now();
    v.lose();
    assert_eq!(a.msg_late().await, ServerMessage::ParticipantLeft { participant_id: id_of(&joined) });
    let after = lost.elapsed();
    assert!(after >= Duration::from_secs(20) && after < Duration::from_millis(20_100), "left after {after:?}");
    assert!(media.calls().contains(&Call::Close(session_of(&id_of(&joined)))));
    let mut late = connect(&sig);
    assert!(matches!(
        late.resume(&token_of(&joined)).await,
        ServerMessage::Error { code: ErrorCode::ResumeFailed, .. }
    ));
    // Afterwards the socket is still usable for a fresh join.
    assert!(matches!(late.join("grace", "V", "viewer").await, ServerMessage::Joined { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_zero_grace_ends_the_participant_with_its_socket() {
    let (_media, sig) = setup_with(SignalingConfig { resume_grace: Duration::ZERO, ..SignalingConfig::default() });
    let mut a = connect(&sig);
    a.join("zero", "A", "speaker").await;
    let mut v = connect(&sig);
    let joined = v.join("zero", "V", "viewer").await;
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
    let lost = tokio::time::Instant::now();
    v.lose();
    assert_eq!(a.msg().await, ServerMessage::ParticipantLeft { participant_id: id_of(&joined) });
    assert!(lost.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_server_offer_is_sent_again_after_the_resume() {
    let grace = Duration::from_secs(60);
    let (media, sig) = setup_with(SignalingConfig { resume_grace: grace, ..SignalingConfig::default() });
    let mut v = connect(&sig);
    let joined = v.join("offer", "V", "viewer").await;
    let session = session_of(&id_of(&joined));
    media.emit(session, MediaEvent::Offer { sdp: "v=0 lost".into() });
    assert_eq!(v.msg().await, ServerMessage::Offer { sdp: "v=0 lost".into() });
    v.lose();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let mut v2 = connect(&sig);
    // 25 s after the offer (past the 20 s negotiation timeout) and within the 60 s grace period: the
    // answer clock stopped with the socket, so the participant is still there.
    let _ = v2.resume(&token_of(&joined)).await;
    assert_eq!(v2.msg().await, ServerMessage::Offer { sdp: "v=0 lost".into() }, "the same offer again");
    v2.send(r#"{"type":"answer","sdp":"v=0 good"}"#);
    tokio::time::sleep(Duration::from_secs(30)).await;
    v2.send(r#"{"type":"ping","id":1}"#);
    assert_eq!(v2.msg().await, ServerMessage::Pong { id: Some(1) }, "answered: no negotiation timeout");
}

#[tokio::test(start_paused = true)]
async fn an_offer_made_while_parked_is_delivered_on_resume() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let mut v = connect(&sig);
    let joined = v.join("parked-offer", "V", "viewer").await;
    let session = session_of(&id_of(&joined));
    v.lose();
    tokio::time::sleep(Duration::from_secs(1)).await;
    media.emit(session, MediaEvent::Offer { sdp: "v=0 while away".into() });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut v2 = connect(&sig);
    assert!(matches!(v2.resume(&token_of(&joined)).await, ServerMessage::Resumed { media_reset: false, .. }));
    assert_eq!(v2.msg().await, ServerMessage::Offer { sdp: "v=0 while away".into() });
    // Its answer clock starts now: 20 s without an answer end it as usual.
    let resumed_at = tokio::time::Instant::now();
    assert!(matches!(v2.msg_late().await, ServerMessage::Error { code: ErrorCode::NegotiationTimeout, .. }));
    assert!(resumed_at.elapsed() >= Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn a_resume_takes_over_a_socket_that_has_not_noticed_it_is_dead() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let mut a = connect(&sig);
    a.join("take", "A", "speaker").await;
    let mut v = connect(&sig);
    let joined = v.join("take", "V", "viewer").await;
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
    let mut v2 = connect(&sig);
    assert!(matches!(v2.resume(&token_of(&joined)).await, ServerMessage::Resumed { media_reset: false, .. }));
    assert_eq!(v.next().await, OutFrame::Close(crate::CLOSE_REPLACED, "resumed on another socket".into()));
    quiet(&mut a, Duration::from_secs(30)).await;
    assert!(!media.calls().contains(&Call::Close(session_of(&id_of(&joined)))));
    assert_eq!(sig.metrics().viewers, 1);
}

#[tokio::test(start_paused = true)]
async fn a_kick_ends_a_parked_participant_and_its_resume_says_kicked() {
    let (_media, sig) = setup_with(SignalingConfig::default());
    let mut a = connect(&sig);
    a.join("kick", "A", "speaker").await;
    let mut v = connect(&sig);
    let joined = v.join("kick", "V", "viewer").await;
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
    v.lose();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sig.admin_kick("kick", &id_of(&joined)).unwrap();
    assert_eq!(a.msg().await, ServerMessage::ParticipantLeft { participant_id: id_of(&joined) });
    let mut v2 = connect(&sig);
    assert!(matches!(v2.resume(&token_of(&joined)).await, ServerMessage::Error { code: ErrorCode::Kicked, .. }));

    // Kicked while its socket is open: the socket hears it, and so does a later resume.
    let mut w = connect(&sig);
    let w_joined = w.join("kick", "W", "viewer").await;
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
    sig.admin_kick("kick", &id_of(&w_joined)).unwrap();
    assert_eq!(w.error_code().await, ErrorCode::Kicked);
    let mut w2 = connect(&sig);
    assert!(matches!(w2.resume(&token_of(&w_joined)).await, ServerMessage::Error { code: ErrorCode::Kicked, .. }));
    // A closed room, likewise.
    let mut s = connect(&sig);
    let s_joined = s.join("closing", "S", "speaker").await;
    s.lose();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sig.admin_close_room("closing"), Ok(1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut s2 = connect(&sig);
    assert!(matches!(s2.resume(&token_of(&s_joined)).await, ServerMessage::Error { code: ErrorCode::RoomClosed, .. }));
}

#[tokio::test(start_paused = true)]
async fn media_lost_while_parked_unpublishes_and_the_resume_opens_a_new_session() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let mut a = connect(&sig);
    let a_joined = a.join("reset", "A", "speaker").await;
    let mut b = connect(&sig);
    let b_joined = b.join("reset", "B", "speaker").await;
    assert!(matches!(a.msg().await, ServerMessage::ParticipantJoined { .. }));
    let (a_id, b_id) = (id_of(&a_joined), id_of(&b_joined));
    media.emit(session_of(&a_id), MediaEvent::Published { producer: 7, kind: MediaKind::Video, codec: "vp8".into() });
    assert!(matches!(b.msg().await, ServerMessage::MediaPublished { .. }));
    media.emit(session_of(&b_id), MediaEvent::Published { producer: 8, kind: MediaKind::Video, codec: "vp8".into() });
    assert!(matches!(a.msg().await, ServerMessage::MediaPublished { .. }));
    b.lose();
    tokio::time::sleep(Duration::from_secs(1)).await;
    media.emit(session_of(&b_id), MediaEvent::Disconnected);
    assert_eq!(a.msg().await, ServerMessage::MediaUnpublished { participant_id: b_id.clone(), media_id: "m8".into() });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(media.calls().contains(&Call::Close(session_of(&b_id))), "the dead session is closed");

    let mut b2 = connect(&sig);
    let resumed = b2.resume(&token_of(&b_joined)).await;
    let ServerMessage::Resumed { participant_id, media_reset, participants, .. } = resumed else { panic!() };
    assert_eq!(participant_id, b_id);
    assert!(media_reset, "a new peer connection is needed");
    assert_eq!(participants[0].media.len(), 1, "A's stream is listed");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let calls = media.calls();
    let new_session = calls
        .iter()
        .rev()
        .find_map(|c| match c {
            Call::Open(s, true) => Some(*s),
            _ => None,
        })
        .expect("a new publisher session");
    assert_ne!(new_session, session_of(&b_id), "under a new id");
    assert!(calls.contains(&Call::Subscribe {
        session: new_session,
        producer: 7,
        stream_id: a_id.clone(),
        track_id: "m7".into()
    }));
    // What the new session publishes reaches the others as usual, and A never saw B leave.
    media.emit(new_session, MediaEvent::Published { producer: 9, kind: MediaKind::Video, codec: "vp8".into() });
    assert!(matches!(a.msg().await, ServerMessage::MediaPublished { participant_id, .. } if participant_id == b_id));
    b2.send(r#"{"type":"offer","sdp":"v=0 offer"}"#);
    assert_eq!(b2.msg().await, ServerMessage::Answer { sdp: "v=0 answer".into() });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(media.calls().contains(&Call::Offer(new_session)), "signaling drives the new session");
}

#[tokio::test(start_paused = true)]
async fn the_resumed_roster_is_the_room_as_it_is_now() {
    let (_media, sig) = setup_with(SignalingConfig::default());
    let mut a = connect(&sig);
    let a_joined = a.join("now", "A", "speaker").await;
    let mut v = connect(&sig);
    let v_joined = v.join("now", "V", "viewer").await;
    v.lose();
    // Meanwhile A leaves and B arrives.
    a.send(r#"{"type":"leave"}"#);
    let mut b = connect(&sig);
    let b_joined = b.join("now", "B", "speaker").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut v2 = connect(&sig);
    let ServerMessage::Resumed { participants, .. } = v2.resume(&token_of(&v_joined)).await else { panic!() };
    let ids: Vec<String> = participants.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids, vec![id_of(&b_joined)], "not {}", id_of(&a_joined));
    // And nothing of what happened while parked is replayed.
    quiet(&mut v2, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn resume_errors() {
    let (_media, sig) = setup();
    let mut p = connect(&sig);
    p.send(r#"{"type":"resume","token":"nope","version":2}"#);
    assert_eq!(p.error_code().await, ErrorCode::UnsupportedVersion);
    p.send(r#"{"type":"resume","version":1}"#);
    assert_eq!(p.error_code().await, ErrorCode::BadMessage);
    assert!(matches!(p.resume("nope").await, ServerMessage::Error { code: ErrorCode::ResumeFailed, .. }));
    assert!(matches!(p.resume(&"x".repeat(100_000)).await, ServerMessage::Error { code: ErrorCode::ResumeFailed, .. }));
    let joined = p.join("errs", "P", "viewer").await;
    assert!(matches!(p.resume(&token_of(&joined)).await, ServerMessage::Error { code: ErrorCode::AlreadyJoined, .. }));
    assert_eq!(sig.metrics().resume_failures, 3, "the version, and the two unknown tokens");
}

#[tokio::test]
async fn ended_tokens_are_remembered_within_their_bound() {
    let (_media, sig) = setup();
    for i in 0..crate::participant::MAX_ENDED + 5 {
        sig.remember_ended(&format!("t{i}"), ErrorCode::Kicked);
    }
    let mut p = connect(&sig);
    assert!(
        matches!(p.resume("t0").await, ServerMessage::Error { code: ErrorCode::ResumeFailed, .. }),
        "the oldest went"
    );
    let last = format!("t{}", crate::participant::MAX_ENDED + 4);
    assert!(matches!(p.resume(&last).await, ServerMessage::Error { code: ErrorCode::Kicked, .. }), "the newest stays");
}
