//! Chat: a round trip, its refusals, the history on join, moderation, and a client too slow for the feed.

use super::*;
use crate::chat::{Writer, CLOSE_TOO_SLOW, FEED_CAPACITY};

impl Peer {
    /// The next message of the chat feed or a `chat_history`, skipping everything else.
    async fn chat_news(&mut self) -> ServerMessage {
        loop {
            let m = text_message(self.next_raw().await);
            if let ServerMessage::Chat(_)
            | ServerMessage::ChatHistory { .. }
            | ServerMessage::ChatDeleted { .. }
            | ServerMessage::ChatPolicy { .. }
            | ServerMessage::Error { .. } = m
            {
                return m;
            }
        }
    }

    /// The close frame, skipping whatever comes before it.
    async fn close_frame(&mut self) -> (u16, String) {
        loop {
            if let OutFrame::Close(code, reason) = self.next_raw().await {
                return (code, reason);
            }
        }
    }

    /// The next `hands`, `hand` or error, skipping everything else.
    async fn hand_news(&mut self) -> ServerMessage {
        loop {
            let m = text_message(self.next_raw().await);
            if let ServerMessage::Hands { .. } | ServerMessage::Hand { .. } | ServerMessage::Error { .. } = m {
                return m;
            }
        }
    }

    async fn hand_error(&mut self) -> ErrorCode {
        match self.hand_news().await {
            ServerMessage::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    async fn chat_error(&mut self) -> ErrorCode {
        match self.chat_news().await {
            ServerMessage::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn chat(&self, text: &str) {
        self.send(&serde_json::json!({"type": "chat", "text": text}).to_string());
    }
}

fn wire_id(m: &ServerMessage) -> String {
    match m {
        ServerMessage::Joined { participant_id, .. } => participant_id.clone(),
        other => panic!("expected joined, got {other:?}"),
    }
}

#[tokio::test]
async fn chat_goes_to_everyone_with_history_on_join_refusals_and_moderation() {
    let (_, sig) = setup_with(SignalingConfig::default());
    let mut a = connect(&sig);
    let (_, history) = a.join_with_history("c", "Ann", "speaker").await;
    assert!(
        matches!(history, Some(ServerMessage::ChatHistory { ref messages, viewer_chat: true }) if messages.is_empty())
    );
    let mut b = connect(&sig);
    let b_id = wire_id(&b.join("c", "Bo", "viewer").await);

    b.chat("hello\nall");
    for p in [&mut a, &mut b] {
        let ServerMessage::Chat(e) = p.chat_news().await else { panic!("chat") };
        assert_eq!(
            (e.id, e.participant_id.as_str(), e.name.as_str(), e.role, e.text.as_str()),
            (1, b_id.as_str(), "Bo", Role::Viewer, "hello\nall")
        );
        assert!(e.at_ms > 1_700_000_000_000, "wall-clock milliseconds");
    }
    b.chat("   ");
    assert_eq!(b.chat_error().await, ErrorCode::InvalidChat);
    b.chat(&"x".repeat(dais_proto::MAX_CHAT_BYTES + 1));
    assert_eq!(b.chat_error().await, ErrorCode::InvalidChat);
    // The burst is 3: "hello" was one, two more go, the next is refused and not sent.
    b.chat("two");
    b.chat("three");
    b.chat("four");
    // (A refusal is a direct reply, so it may overtake the writer's own messages coming back
    // through the room's feed.)
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(b.chat_news().await);
    }
    let texts: Vec<_> =
        got.iter().filter_map(|m| if let ServerMessage::Chat(e) = m { Some(e.text.as_str()) } else { None }).collect();
    assert_eq!(texts, ["two", "three"], "{got:?}");
    assert!(got.iter().any(|m| matches!(m, ServerMessage::Error { code: ErrorCode::TooManyChats, .. })), "{got:?}");

    // A newcomer gets the last messages, oldest first, and no error of anyone else's.
    let mut c = connect(&sig);
    let Some(ServerMessage::ChatHistory { messages, viewer_chat }) = c.join_with_history("c", "Cy", "viewer").await.1
    else {
        panic!("history")
    };
    assert!(viewer_chat);
    assert_eq!(
        messages.iter().map(|e| (e.id, e.text.as_str())).collect::<Vec<_>>(),
        vec![(1, "hello\nall"), (2, "two"), (3, "three")]
    );

    for text in ["two", "three"] {
        assert!(matches!(a.chat_news().await, ServerMessage::Chat(e) if e.text == text));
    }
    // Moderation: a deleted message disappears for everyone and from the history.
    sig.admin_delete_chat("c", 1).expect("delete");
    assert_eq!(sig.admin_delete_chat("c", 99), Err(crate::AdminError::MessageNotFound));
    assert_eq!(sig.admin_delete_chat("nowhere", 1), Err(crate::AdminError::RoomNotFound));
    for p in [&mut a, &mut b, &mut c] {
        assert_eq!(p.chat_news().await, ServerMessage::ChatDeleted { id: 1 });
    }
    let mut d = connect(&sig);
    let Some(ServerMessage::ChatHistory { messages, .. }) = d.join_with_history("c", "Di", "viewer").await.1 else {
        panic!("history")
    };
    assert_eq!(messages.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2, 3], "the deleted one is gone");

    // Silenced: refused whatever the allowance (Cy has all of hers, Bo gets his back in 2 s).
    sig.admin_silence_chat("c", &b_id, true).expect("silence");
    assert_eq!(sig.admin_silence_chat("c", "p999", true), Err(crate::AdminError::ParticipantNotFound));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    b.chat("let me in");
    assert_eq!(b.chat_error().await, ErrorCode::ChatSilenced);
    sig.admin_silence_chat("c", &b_id, false).expect("unsilence");
    b.chat("thanks");
    assert!(matches!(b.chat_news().await, ServerMessage::Chat(e) if e.text == "thanks"));

    // Viewer chat off: everyone hears it; viewers are refused, speakers are not.
    sig.admin_viewer_chat("c", false).expect("policy");
    for p in [&mut a, &mut c] {
        assert!(matches!(p.chat_news().await, ServerMessage::Chat(e) if e.text == "thanks"));
        assert_eq!(p.chat_news().await, ServerMessage::ChatPolicy { viewer_chat: false });
    }
    c.chat("me too");
    assert_eq!(c.chat_error().await, ErrorCode::ChatDisabled);
    a.chat("speakers still may");
    assert!(matches!(c.chat_news().await, ServerMessage::Chat(e) if e.role == Role::Speaker));
    let mut e = connect(&sig);
    let history = e.join_with_history("c", "Ed", "viewer").await.1;
    assert!(matches!(history, Some(ServerMessage::ChatHistory { viewer_chat: false, .. })));
}

#[tokio::test]
async fn a_client_that_falls_behind_the_chat_feed_is_closed_as_too_slow_and_resumes_with_the_history() {
    let (_, sig) = setup_with(SignalingConfig::default());
    // Room for 4 unread frames: the server's sends to it stall once they are taken.
    let mut slow = connect_reading(&sig, 4);
    let joined = slow.join("busy", "Slow", "viewer").await;
    let ServerMessage::Joined { resume_token: Some(token), .. } = joined else { panic!("token") };
    let mut fast = connect(&sig);
    fast.join("busy", "Fast", "viewer").await;
    // More messages than the feed holds, while the slow client reads nothing (posted as a room's many
    // writers would, each within its allowance).
    // Each post is told a time an interval after the one before, so each goes out as a batch of its
    // own: the feed holds batches. The slow connection takes a few batches at its first wake-up
    // (what was ready, up to `MAX_GATHER`) before it stalls, so 100 more than the feed holds.
    let writer = Writer { participant_id: "p0", name: "Crowd", role: Role::Viewer, silenced: false, moderator: false };
    let mut now = std::time::Instant::now();
    for batch in 0..(FEED_CAPACITY + 100) / 44 {
        {
            let mut rooms = sig.rooms.lock().expect("rooms");
            let chat = &mut rooms.by_name.get_mut("busy").expect("room").chat;
            for i in batch * 44..(batch + 1) * 44 {
                chat.post(now, &writer, format!("m{i}"));
                now += Duration::from_millis(dais_proto::CHAT_INTERVAL_MS);
            }
        }
        // The fast client's connection keeps up between batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fast client got all of them, in order.
    for i in 0..(FEED_CAPACITY + 100) / 44 * 44 {
        let ServerMessage::Chat(e) = fast.chat_news().await else { panic!("chat") };
        assert_eq!(e.text, format!("m{i}"));
    }
    // The slow one, once it reads again, is told it was too slow.
    let close = slow.close_frame().await;
    assert_eq!(close, (CLOSE_TOO_SLOW, "too_slow".into()));
    // It is parked, not gone: a resume gets the room's last messages.
    let mut again = connect(&sig);
    again.send(&format!(r#"{{"type":"resume","token":"{token}","version":1}}"#));
    assert!(matches!(again.msg_or_audience().await, ServerMessage::Resumed { .. }));
    let ServerMessage::ChatHistory { messages, .. } = again.chat_news().await else { panic!("history") };
    assert_eq!(messages.len(), dais_proto::CHAT_HISTORY);
    assert_eq!(messages.last().map(|e| e.text.clone()), Some(format!("m{}", (FEED_CAPACITY + 100) / 44 * 44 - 1)));
}

#[tokio::test]
async fn a_member_whose_notice_queue_overflows_is_closed_as_too_slow() {
    let (_, sig) = setup_with(SignalingConfig::default());
    let mut slow = connect_reading(&sig, 4);
    slow.join("crowd", "Host", "speaker").await;
    // Room news beyond its queue while it reads nothing.
    {
        let rooms = sig.rooms.lock().expect("rooms");
        let room = rooms.by_name.get("crowd").expect("room");
        let m = room.members.values().next().expect("member");
        for _ in 0..crate::room::NOTICE_QUEUE + 10 {
            m.notify(ServerMessage::Audience { viewers: 1 });
        }
    }
    let close = slow.close_frame().await;
    assert_eq!(close, (CLOSE_TOO_SLOW, "too_slow".into()));
    assert_eq!(sig.metrics().parked, 1, "parked for a resume, not ended");
}

#[tokio::test]
async fn raised_hands_reach_speakers_and_moderators_and_a_moderator_promotes_over_its_socket() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let mut host = connect(&sig);
    host.join("h", "Host", "speaker").await;
    let mut guest = connect(&sig);
    let guest_id = wire_id(&guest.join("h", "Guest", "viewer").await);
    let mut plain = connect(&sig);
    plain.join("h", "Plain", "viewer").await;
    let mut moderator = connect(&sig);
    moderator.send(r#"{"type":"join","room":"h","name":"Mod","role":"viewer","version":1,"moderator":true}"#);
    assert!(matches!(moderator.msg().await, ServerMessage::Joined { moderator: true, .. }), "open mode grants it");
    moderator.history().await;

    guest.send(r#"{"type":"raise_hand","raised":true}"#);
    assert_eq!(guest.hand_news().await, ServerMessage::Hand { raised: true });
    for p in [&mut host, &mut moderator] {
        let ServerMessage::Hands { participants } = p.hand_news().await else { panic!("hands") };
        assert_eq!(
            participants.iter().map(|h| (h.participant_id.as_str(), h.name.as_str())).collect::<Vec<_>>(),
            [(guest_id.as_str(), "Guest")]
        );
    }
    host.send(r#"{"type":"raise_hand","raised":true}"#);
    assert_eq!(host.error_code().await, ErrorCode::BadMessage, "speakers raise no hands");

    // Only a moderator moderates; a missing field and an unknown target have their codes.
    plain.send(&format!(r#"{{"type":"moderate","action":"promote","participant":"{guest_id}"}}"#));
    assert_eq!(plain.error_code().await, ErrorCode::NotModerator);
    moderator.send(r#"{"type":"moderate","action":"promote"}"#);
    assert_eq!(moderator.hand_error().await, ErrorCode::BadMessage);
    moderator.send(r#"{"type":"moderate","action":"kick","participant":"p999"}"#);
    assert_eq!(moderator.hand_error().await, ErrorCode::UnknownTarget);

    moderator.send(&format!(r#"{{"type":"moderate","action":"promote","participant":"{guest_id}"}}"#));
    // The guest becomes a speaker on its socket, its hand comes down, and everyone who saw it hears.
    let mut saw_role = false;
    let mut lowered = false;
    while !(saw_role && lowered) {
        match guest.msg().await {
            ServerMessage::RoleChanged { role: Role::Speaker, .. } => saw_role = true,
            ServerMessage::Hand { raised: false } => lowered = true,
            _ => {}
        }
    }
    let ServerMessage::Hands { participants } = moderator.hand_news().await else { panic!("hands") };
    assert!(participants.is_empty(), "the promoted guest's hand is down");
    let session = guest_id.trim_start_matches('p').parse::<u64>().expect("id");
    assert!(media.calls().contains(&Call::Publisher(session, true)), "its session may publish now");

    // Hand changes are rate-limited: four at once pass, the fifth is refused and changes nothing.
    for raised in [true, false, true, false] {
        plain.send(&format!(r#"{{"type":"raise_hand","raised":{raised}}}"#));
        assert_eq!(plain.hand_news().await, ServerMessage::Hand { raised });
    }
    plain.send(r#"{"type":"raise_hand","raised":true}"#);
    assert_eq!(plain.hand_error().await, ErrorCode::TooManyHandChanges);
    plain.send(r#"{"type":"raise_hand","raised":false}"#);
    plain.send(r#"{"type":"ping","id":5}"#);
    loop {
        match text_message(plain.next_raw().await) {
            ServerMessage::Pong { .. } => break,
            ServerMessage::Hand { .. } => panic!("lowering a hand that is down changes nothing"),
            _ => {}
        }
    }
}
