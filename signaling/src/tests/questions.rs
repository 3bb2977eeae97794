//! Questions: ask, upvote and answer over the socket, the two views, refusals and moderation.

use super::*;
use dais_proto::{QuestionEntry, QUESTIONS_SHOWN};

impl Peer {
    /// The next `questions`, `asked` or error, skipping everything else.
    async fn question_news(&mut self) -> ServerMessage {
        loop {
            let m = text_message(self.next_raw().await);
            if let ServerMessage::Questions { .. } | ServerMessage::Asked { .. } | ServerMessage::Error { .. } = m {
                return m;
            }
        }
    }

    /// The next `questions`: its open ones (id, votes), its open count and its answered ids.
    async fn questions(&mut self) -> (Vec<(u64, u64)>, u64, Vec<u64>) {
        match self.question_news().await {
            ServerMessage::Questions { open, open_count, answered } => (
                open.iter().map(|q: &QuestionEntry| (q.id, q.votes)).collect(),
                open_count,
                answered.iter().map(|q| q.id).collect(),
            ),
            other => panic!("expected questions, got {other:?}"),
        }
    }

    /// Read `questions` until one shows `want` (a flush may land between two changes a test makes
    /// back to back); within 5 s per message, or the test fails.
    async fn questions_until(&mut self, want: (Vec<(u64, u64)>, u64, Vec<u64>)) {
        let mut seen = Vec::new();
        while seen.last() != Some(&want) {
            assert!(seen.len() < 10, "never saw {want:?}; saw {seen:?}");
            seen.push(self.questions().await);
        }
    }

    async fn ask(&mut self, text: &str) -> Result<u64, ErrorCode> {
        self.send(&serde_json::json!({"type": "ask", "text": text}).to_string());
        loop {
            match self.question_news().await {
                ServerMessage::Asked { question } => return Ok(question),
                ServerMessage::Error { code, .. } => return Err(code),
                _ => {}
            }
        }
    }

    /// Send `msg`, then a ping: the error `msg` got before the pong came, if any.
    async fn refusal(&mut self, msg: &str) -> Option<ErrorCode> {
        self.send(msg);
        self.send(r#"{"type":"ping","id":77}"#);
        let mut refused = None;
        loop {
            match text_message(self.next_raw().await) {
                ServerMessage::Error { code, .. } => refused = refused.or(Some(code)),
                ServerMessage::Pong { .. } => return refused,
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn questions_are_asked_voted_ranked_answered_and_moderated() {
    let (_, sig) = setup_with(SignalingConfig::default());
    let mut host = connect(&sig);
    host.join("q", "Host", "speaker").await;
    let mut ada = connect(&sig);
    let ServerMessage::Joined { participant_id: ada_id, .. } = ada.join("q", "Ada", "viewer").await else {
        panic!("joined")
    };
    let mut bo = connect(&sig);
    bo.join("q", "Bo", "viewer").await;
    let mut cy = connect(&sig);
    cy.join("q", "Cy", "viewer").await;

    assert_eq!(ada.ask("").await, Err(ErrorCode::InvalidQuestion));
    assert_eq!(ada.ask(&"x".repeat(dais_proto::MAX_QUESTION_BYTES + 1)).await, Err(ErrorCode::InvalidQuestion));
    let first = ada.ask("Will the slides be shared?").await.expect("asked");
    let second = ada.ask("What about pricing?").await.expect("asked");
    assert_eq!(ada.ask("A third at once?").await, Err(ErrorCode::TooManyQuestions), "one every 10 s, bursts of 2");

    // Both reach everyone in one `questions`, oldest first while the votes are equal.
    for p in [&mut host, &mut bo] {
        p.questions_until((vec![(first, 0), (second, 0)], 2, vec![])).await;
    }
    // Two votes for the second (one of them cast twice) put it first.
    let vote = format!(r#"{{"type":"upvote","question":{second}}}"#);
    assert_eq!(bo.refusal(&vote).await, None);
    assert_eq!(cy.refusal(&vote).await, None);
    assert_eq!(cy.refusal(&vote).await, None, "voting again is no error, and counts once");
    host.questions_until((vec![(second, 2), (first, 0)], 2, vec![])).await;
    bo.questions_until((vec![(second, 2), (first, 0)], 2, vec![])).await;
    // Cy takes its vote back.
    assert_eq!(cy.refusal(&format!(r#"{{"type":"upvote","question":{second},"undo":true}}"#)).await, None);
    host.questions_until((vec![(second, 1), (first, 0)], 2, vec![])).await;
    assert_eq!(bo.refusal(r#"{"type":"upvote","question":999}"#).await, Some(ErrorCode::UnknownQuestion));

    // Only speakers and moderators answer.
    let answer = format!(r#"{{"type":"answer_question","question":{second}}}"#);
    assert_eq!(bo.refusal(&answer).await, Some(ErrorCode::NotModerator));
    assert_eq!(host.refusal(&answer).await, None);
    bo.questions_until((vec![(first, 0)], 1, vec![second])).await;
    host.questions_until((vec![(first, 0)], 1, vec![second])).await;
    assert_eq!(host.refusal(&answer).await, Some(ErrorCode::UnknownQuestion), "no longer open");
    assert_eq!(
        cy.refusal(&format!(r#"{{"type":"upvote","question":{second}}}"#)).await,
        Some(ErrorCode::UnknownQuestion),
        "no votes for answered questions"
    );

    // A moderator deletes one.
    let mut moderator = connect(&sig);
    moderator.send(r#"{"type":"join","room":"q","name":"Mod","role":"viewer","version":1,"moderator":true}"#);
    assert!(matches!(moderator.msg().await, ServerMessage::Joined { moderator: true, .. }));
    moderator.history().await;
    moderator.questions_until((vec![(first, 0)], 1, vec![second])).await;
    let delete = format!(r#"{{"type":"moderate","action":"delete_question","question":{first}}}"#);
    assert_eq!(bo.refusal(&delete).await, Some(ErrorCode::NotModerator));
    assert_eq!(moderator.refusal(&delete).await, None);
    moderator.questions_until((vec![], 0, vec![second])).await;
    assert_eq!(moderator.refusal(&delete).await, Some(ErrorCode::UnknownTarget), "already gone");
    assert_eq!(
        moderator.refusal(r#"{"type":"moderate","action":"delete_question"}"#).await,
        Some(ErrorCode::BadMessage)
    );

    // Silenced participants ask nothing.
    sig.admin_silence_chat("q", &ada_id, true).expect("silence");
    assert_eq!(ada.ask("still here?").await, Err(ErrorCode::ChatSilenced));
}

#[tokio::test]
async fn viewers_see_the_top_questions_and_speakers_all_of_them_until_a_promotion() {
    let (_, sig) = setup_with(SignalingConfig::default());
    let mut host = connect(&sig);
    host.join("t", "Host", "speaker").await;
    let mut watcher = connect(&sig);
    let watcher_id = match watcher.join("t", "Watcher", "viewer").await {
        ServerMessage::Joined { participant_id, .. } => participant_id,
        other => panic!("joined: {other:?}"),
    };
    let total = QUESTIONS_SHOWN + 2;
    let mut askers = Vec::new();
    for i in 0..total.div_ceil(2) {
        let mut p = connect(&sig);
        p.join("t", &format!("A{i}"), "viewer").await;
        for _ in 0..2 {
            if askers.len() < total {
                askers.push(p.ask(&format!("question {}", askers.len())).await.expect("asked"));
            }
        }
    }
    // The views settle within a flush or two; read until everything asked is in.
    let mut speaker_view = host.questions().await;
    while speaker_view.1 < total as u64 {
        speaker_view = host.questions().await;
    }
    assert_eq!(speaker_view.0.len(), total, "speakers see every open question");
    let mut viewer_view = watcher.questions().await;
    while viewer_view.1 < total as u64 {
        viewer_view = watcher.questions().await;
    }
    assert_eq!(viewer_view.0.len(), QUESTIONS_SHOWN, "viewers see the top ones");
    assert_eq!(viewer_view.0.iter().map(|q| q.0).collect::<Vec<_>>(), askers[..QUESTIONS_SHOWN].to_vec());

    // Promoted, the watcher sees them all at once.
    sig.admin_set_role("t", &watcher_id, Role::Speaker).expect("promote");
    let all = loop {
        let v = watcher.questions().await;
        if v.0.len() == total {
            break v;
        }
    };
    assert_eq!(all.1, total as u64);
}
