//! Resume over real sockets: a `dais-client` viewer loses its WebSocket (no `leave`, no close frame),
//! keeps receiving media meanwhile, and resumes on a new socket as the same participant; one that
//! comes back after the grace period gets `resume_failed` and joins afresh.

mod common;

use common::{has_media_from, metric, speaker, viewer, Server, MEDIA_TIMEOUT, REPLY_TIMEOUT};
use dais_client::{ClientError, ErrorCode, ServerMessage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_loses_its_socket_resumes_as_the_same_participant() {
    let server = Server::start();
    let (s, s_id, _) = speaker(&server, "resume", "S").await;
    let (v, v_id) = viewer(&server, "resume", "V").await;
    v.wait_until(MEDIA_TIMEOUT, "the viewer receives", |snap| has_media_from(snap, &s_id, 20, 20)).await.unwrap();

    v.drop_connection();
    v.wait_until(REPLY_TIMEOUT, "the socket is gone", |snap| snap.closed.is_some()).await.unwrap();
    // Without a socket the media keeps coming: the participant is parked, not gone.
    let before = v.snapshot().packets_from(&s_id);
    v.wait_until(MEDIA_TIMEOUT, "media while parked", |snap| snap.packets_from(&s_id) > before + 50).await.unwrap();
    assert_eq!(metric(&server, "dais_parked_participants"), 1.0);

    let resumed = v.resume(&server.ws_url()).await.expect("the resume is accepted");
    assert_eq!(resumed.participant_id, v_id, "the same participant");
    assert!(!resumed.media_reset, "its media session lived on");
    assert_eq!(resumed.participants.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec![s_id.as_str()]);
    let after = v.snapshot().packets_from(&s_id);
    v.wait_until(MEDIA_TIMEOUT, "media after the resume", |snap| snap.packets_from(&s_id) > after + 50).await.unwrap();
    v.ping(7, REPLY_TIMEOUT).await.expect("the new socket carries the participant");
    assert_eq!(metric(&server, "dais_resumes_total"), 1.0);
    assert_eq!(metric(&server, "dais_parked_participants"), 0.0);
    let left = s.snapshot().messages.iter().any(|m| matches!(m, ServerMessage::ParticipantLeft { .. }));
    assert!(!left, "the speaker never heard the viewer leave");
    // Every stream it received is still intact: no packet was replayed or reordered by the swap.
    let snap = v.snapshot();
    for st in snap.streams_of(&s_id) {
        assert_eq!(st.payload_mismatches, 0, "{st:#?}");
        assert_eq!(st.out_of_order, 0, "{st:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_the_resume_fails_and_a_fresh_join_works() {
    let server = Server::start_with(&["--resume-grace", "1"]);
    let (s, s_id, _) = speaker(&server, "late", "S").await;
    let (v, v_id) = viewer(&server, "late", "V").await;
    v.wait_until(MEDIA_TIMEOUT, "the viewer receives", |snap| has_media_from(snap, &s_id, 10, 10)).await.unwrap();
    v.drop_connection();
    s.wait_until(REPLY_TIMEOUT, "the speaker hears the viewer leave after 1 s", |snap| {
        snap.messages
            .iter()
            .any(|m| matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == v_id))
    })
    .await
    .unwrap();
    match v.resume(&server.ws_url()).await {
        Err(ClientError::Server { code: ErrorCode::ResumeFailed, .. }) => {}
        other => panic!("expected resume_failed, got {other:?}"),
    }
    let joined = v.join("late", "V", dais_client::Role::Viewer).await.expect("a fresh join on the same socket");
    assert_ne!(joined.participant_id, v_id, "a new participant");
    let before = v.snapshot().packets_from(&s_id);
    v.wait_until(MEDIA_TIMEOUT, "the new participant receives", |snap| snap.packets_from(&s_id) > before + 50)
        .await
        .unwrap();
    assert_eq!(metric(&server, "dais_resume_failures_total"), 1.0);
}
