//! The admin HTTP API against the real binary with dais-client participants: authentication, listing,
//! server-side mute, promote and demote in place (same WebSocket), kick and closing a room.

mod common;

use std::time::Duration;

use common::{has_media_from, http, speaker, viewer, Server, MEDIA_TIMEOUT, REPLY_TIMEOUT};
use dais_client::{ClientMessage, ErrorCode, MediaConfig, MediaKind, Role, ServerMessage};

const KEY: &str = "test-admin-key-0123456789";

fn audio_packets(s: &dais_client::Snapshot, from: &str) -> u64 {
    s.streams_of(from).filter(|st| st.kind == MediaKind::Audio).map(|st| st.packets).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_lists_mutes_promotes_demotes_kicks_and_closes() {
    let server = Server::start_with_env(&[], &[("DAIS_ADMIN_KEY", KEY)]);
    let room = "admin-room";
    assert_eq!(http(server.http, "GET", "/admin/rooms", None, None).0, 401);
    assert_eq!(http(server.http, "GET", "/admin/rooms", Some("wrong"), None).0, 401);

    let (s, sp, _) = speaker(&server, room, "s").await;
    let (v, vp) = viewer(&server, room, "v").await;
    v.wait_until(MEDIA_TIMEOUT, "viewer receives", |x| has_media_from(x, &sp, 20, 20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // List.
    let (status, body) = http(server.http, "GET", "/admin/rooms", Some(KEY), None);
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let rooms = list["rooms"].as_array().expect("rooms");
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0]["name"], room);
    let people = rooms[0]["participants"].as_array().expect("participants");
    assert_eq!(people.len(), 2);
    let spk = people.iter().find(|p| p["id"] == sp.as_str()).expect("speaker listed");
    assert_eq!(spk["media"].as_array().map(Vec::len), Some(2));
    assert_eq!(http(server.http, "DELETE", "/admin/rooms/nope", Some(KEY), None).0, 404);
    assert_eq!(http(server.http, "DELETE", &format!("/admin/rooms/{room}/participants/p999"), Some(KEY), None).0, 404);
    assert_eq!(
        http(server.http, "POST", &format!("/admin/rooms/{room}/participants/{sp}/mute"), Some(KEY), Some("{")).0,
        400
    );

    // Server-side mute: the viewer is told, audio stops, video goes on; unmute resumes without a gap.
    let mark = v.message_count();
    let (status, body) = http(
        server.http,
        "POST",
        &format!("/admin/rooms/{room}/participants/{sp}/mute"),
        Some(KEY),
        Some(r#"{"kind":"audio","muted":true}"#),
    );
    assert_eq!((status, body.as_str()), (200, r#"{"changed":1}"#));
    v.wait_for_message(
        mark,
        |m| matches!(m, ServerMessage::MuteChanged { muted: true, kind: MediaKind::Audio, .. }),
        REPLY_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a0 = audio_packets(&v.snapshot(), &sp);
    let t0 = v.snapshot().packets_from(&sp);
    v.wait_until(MEDIA_TIMEOUT, "video keeps flowing", |x| x.packets_from(&sp) >= t0 + 30)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let a1 = audio_packets(&v.snapshot(), &sp);
    assert!(a1 <= a0 + 2, "audio kept flowing while muted: {a0} -> {a1}");
    let (status, _) = http(
        server.http,
        "POST",
        &format!("/admin/rooms/{room}/participants/{sp}/mute"),
        Some(KEY),
        Some(r#"{"kind":"audio","muted":false}"#),
    );
    assert_eq!(status, 200);
    v.wait_until(MEDIA_TIMEOUT, "audio resumes", |x| audio_packets(x, &sp) >= a1 + 25)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for st in v.snapshot().streams_of(&sp) {
        assert_eq!((st.seq_gaps, st.payload_mismatches), (0, 0), "mute/unmute left a hole: {st:#?}");
    }

    // Promote the viewer in place: same WebSocket, it publishes, the speaker receives it.
    let (status, _) = http(
        server.http,
        "POST",
        &format!("/admin/rooms/{room}/participants/{vp}/role"),
        Some(KEY),
        Some(r#"{"role":"speaker"}"#),
    );
    assert_eq!(status, 204);
    v.wait_for_message(
        0,
        |m| matches!(m, ServerMessage::RoleChanged { role: Role::Speaker, participant_id } if *participant_id == vp),
        REPLY_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    v.publish(MediaConfig::default()).await.expect("the promoted viewer publishes on its existing connection");
    s.wait_until(MEDIA_TIMEOUT, "speaker receives the promoted viewer", |x| has_media_from(x, &vp, 20, 20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(v.snapshot().closed.is_none(), "no reconnect");

    // Demote it again: its streams are unpublished.
    let mark = s.message_count();
    let (status, _) = http(
        server.http,
        "POST",
        &format!("/admin/rooms/{room}/participants/{vp}/role"),
        Some(KEY),
        Some(r#"{"role":"viewer"}"#),
    );
    assert_eq!(status, 204);
    s.wait_until(REPLY_TIMEOUT, "two media_unpublished for the demoted participant", |x| {
        x.messages[mark..]
            .iter()
            .filter(|m| matches!(m, ServerMessage::MediaUnpublished { participant_id, .. } if *participant_id == vp))
            .count()
            == 2
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Kick, then close the room.
    let (status, _) = http(server.http, "DELETE", &format!("/admin/rooms/{room}/participants/{vp}"), Some(KEY), None);
    assert_eq!(status, 204);
    let close = v.wait_closed(REPLY_TIMEOUT).await.expect("kicked socket closes");
    assert_eq!(close.code, Some(4001));
    assert!(v.snapshot().error_codes().contains(&ErrorCode::Kicked));
    let (status, body) = http(server.http, "DELETE", &format!("/admin/rooms/{room}"), Some(KEY), None);
    assert_eq!((status, body.as_str()), (200, r#"{"closed":1}"#));
    let close = s.wait_closed(REPLY_TIMEOUT).await.expect("room closed");
    assert_eq!(close.code, Some(4002));
    assert!(s.snapshot().error_codes().contains(&ErrorCode::RoomClosed));
    let (_, body) = http(server.http, "GET", "/admin/rooms", Some(KEY), None);
    assert_eq!(body, r#"{"rooms":[]}"#);
}

#[test]
fn without_an_admin_key_the_api_is_disabled() {
    let server = Server::start();
    let (status, body) = http(server.http, "GET", "/admin/rooms", Some("anything"), None);
    assert_eq!(status, 404);
    assert!(body.contains("admin_disabled"), "{body}");
}

/// The `curl` lines of docs/operations.md's admin section, in order, with `p2` and `p7` standing for
/// the ids the doc's room gets here.
fn documented_curls(p2: &str, p7: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md")).expect("doc");
    let section = doc.split("## Admin API").nth(1).expect("an Admin API section");
    section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("curl "))
        .map(|l| {
            l.replace("/participants/p2", &format!("/participants/{p2}"))
                .replace("/participants/p7", &format!("/participants/{p7}"))
        })
        .collect()
}

/// Run one documented line with `sh`, as an operator would paste it: its standard output.
fn run_curl(line: &str, dais: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", line])
        .env("KEY", KEY)
        .env("DAIS", dais)
        .output()
        .expect("run sh (and curl)");
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_examples_in_operations_md_run_as_written() {
    let server = Server::start_with_env(&[], &[("DAIS_ADMIN_KEY", KEY)]);
    let dais = format!("http://{}", server.http);
    let (s, sp, _) = speaker(&server, "panel-1", "Ann").await;
    let (v, vp) = viewer(&server, "panel-1", "Bo").await;
    v.wait_until(MEDIA_TIMEOUT, "the viewer receives", |x| has_media_from(x, &sp, 5, 5)).await.unwrap();
    let lines = documented_curls(&sp, &vp);
    assert_eq!(
        lines.len(),
        13,
        "list, mute, promote, demote, chat delete, silence, policy, hand, questions list, answer, delete, kick, close: {lines:#?}"
    );

    let list: serde_json::Value = serde_json::from_str(&run_curl(&lines[0], &dais)).expect("the list is JSON");
    assert_eq!(list["rooms"][0]["name"], "panel-1");
    assert_eq!(run_curl(&lines[1], &dais), r#"{"changed":1}"#, "{}", lines[1]);
    // A 204 has no body; an error would have one.
    assert_eq!(run_curl(&lines[2], &dais), "", "{}", lines[2]);
    v.wait_for_message(0, |m| matches!(m, ServerMessage::RoleChanged { role: Role::Speaker, .. }), REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("promoted: {e}"));
    assert_eq!(run_curl(&lines[3], &dais), "", "{}", lines[3]);
    v.wait_for_message(0, |m| matches!(m, ServerMessage::RoleChanged { role: Role::Viewer, .. }), REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("demoted: {e}"));
    // Chat: the viewer writes message 1, which the doc's line deletes; then it is silenced; then
    // viewer chat goes off for the room.
    v.send(ClientMessage::Chat { text: "first".into() }).expect("chat");
    v.wait_for_message(0, |m| matches!(m, ServerMessage::Chat(e) if e.id == 1), REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("chat: {e}"));
    assert_eq!(run_curl(&lines[4], &dais), "", "{}", lines[4]);
    v.wait_for_message(0, |m| matches!(m, ServerMessage::ChatDeleted { id: 1 }), REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("deleted: {e}"));
    assert_eq!(run_curl(&lines[5], &dais), "", "{}", lines[5]);
    v.send(ClientMessage::Chat { text: "again".into() }).expect("chat");
    v.wait_for_error(0, ErrorCode::ChatSilenced, REPLY_TIMEOUT).await.unwrap_or_else(|e| panic!("silenced: {e}"));
    assert_eq!(run_curl(&lines[6], &dais), "", "{}", lines[6]);
    s.wait_for_message(0, |m| matches!(m, ServerMessage::ChatPolicy { viewer_chat: false }), REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("policy: {e}"));
    // The viewer raises its hand; the doc's line lowers it.
    v.send(ClientMessage::RaiseHand { raised: true }).expect("raise");
    s.wait_for_message(
        0,
        |m| matches!(m, ServerMessage::Hands { participants } if participants.len() == 1),
        REPLY_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("raised: {e}"));
    let mark = v.message_count();
    assert_eq!(run_curl(&lines[7], &dais), "", "{}", lines[7]);
    v.wait_for_message(mark, |m| matches!(m, ServerMessage::Hand { raised: false }), REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("lowered: {e}"));
    // The speaker asks questions 1 and 2; the doc's lines list them, answer 1 and delete 2.
    assert_eq!(run_curl(&lines[8], &dais), "null", "no questions yet: {}", lines[8]);
    for text in ["Why?", "How?"] {
        s.send(ClientMessage::Ask { text: text.into() }).expect("ask");
    }
    let both = |m: &ServerMessage| matches!(m, ServerMessage::Questions { open, .. } if open.len() == 2);
    s.wait_for_message(0, both, REPLY_TIMEOUT).await.unwrap_or_else(|e| panic!("asked: {e}"));
    let listed: serde_json::Value = serde_json::from_str(&run_curl(&lines[8], &dais)).expect("JSON");
    let texts: Vec<_> = listed["open"].as_array().expect("open").iter().map(|q| q["text"].clone()).collect();
    assert_eq!(texts, ["Why?", "How?"], "{listed}");
    assert_eq!(run_curl(&lines[9], &dais), "", "{}", lines[9]);
    assert_eq!(run_curl(&lines[10], &dais), "", "{}", lines[10]);
    let done = |m: &ServerMessage| {
        matches!(m, ServerMessage::Questions { open, answered, .. }
            if open.is_empty() && answered.iter().map(|q| q.id).collect::<Vec<_>>() == [1])
    };
    s.wait_for_message(0, done, REPLY_TIMEOUT).await.unwrap_or_else(|e| panic!("answered and deleted: {e}"));
    assert_eq!(
        run_curl(&lines[10], &dais),
        r#"{"code":"question_not_found","message":"no such question in the room (answering needs an open one)"}"#,
        "deleted already"
    );
    assert_eq!(run_curl(&lines[11], &dais), "", "{}", lines[11]);
    assert_eq!(v.wait_closed(REPLY_TIMEOUT).await.expect("kicked").code, Some(4001));
    assert_eq!(run_curl(&lines[12], &dais), r#"{"closed":1}"#, "{}", lines[12]);
    assert_eq!(s.wait_closed(REPLY_TIMEOUT).await.expect("closed").code, Some(4002));
}

/// The token `curl` line of docs/operations.md's *Join tokens* section.
fn documented_token_curl() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md")).expect("doc");
    let section = doc.split("## Join tokens").nth(1).expect("a Join tokens section");
    let lines: Vec<_> =
        section.lines().take_while(|l| !l.starts_with("## ")).filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(lines.len(), 1, "one token line: {lines:#?}");
    lines[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_mints_a_moderator_token_that_moderates_over_its_socket() {
    const SECRET: &str = "test-token-secret-0123456789abcdef";
    let server = Server::start_with_env(&[], &[("DAIS_ADMIN_KEY", KEY), ("DAIS_TOKEN_SECRET", SECRET)]);
    let dais = format!("http://{}", server.http);
    let path = "/admin/rooms/panel-1/tokens";
    assert_eq!(http(server.http, "POST", path, None, Some(r#"{"name":"Mod","role":"viewer"}"#)).0, 401);
    let (status, body) =
        http(server.http, "POST", "/admin/rooms/bad%20room/tokens", Some(KEY), Some(r#"{"name":"M","role":"viewer"}"#));
    assert_eq!(status, 400);
    assert!(body.contains("invalid_room"), "{body}");
    let (status, body) =
        http(server.http, "POST", path, Some(KEY), Some(r#"{"name":"M","role":"viewer","ttl_secs":0}"#));
    assert_eq!((status, body.contains("bad_request")), (400, true), "{body}");

    let minted: serde_json::Value = serde_json::from_str(&run_curl(&documented_token_curl(), &dais)).expect("JSON");
    let token = minted["token"].as_str().expect("a token");
    let claims = dais_signaling::token::TokenVerifier::new(SECRET).expect("verifier").verify(Some(token), "panel-1");
    let grant = claims.expect("the minted token verifies");
    assert_eq!((grant.name.as_str(), grant.role, grant.moderator), ("Mod", Role::Viewer, true));

    // A speaker and a viewer with plain tokens; the moderator joins with the minted one.
    let plain = |name: &str, role: &str| {
        let body = format!(r#"{{"name":"{name}","role":"{role}"}}"#);
        let (status, body) = http(server.http, "POST", path, Some(KEY), Some(&body));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["token"].as_str().expect("token").to_owned()
    };
    let s = dais_client::Client::connect(&server.ws_url()).await.expect("connect");
    s.join_with_token("panel-1", "x", Role::Speaker, Some(&plain("Ann", "speaker"))).await.expect("speaker joins");
    let v = dais_client::Client::connect(&server.ws_url()).await.expect("connect");
    let vp = v
        .join_with_token("panel-1", "x", Role::Viewer, Some(&plain("Bo", "viewer")))
        .await
        .expect("joins")
        .participant_id;
    let m = dais_client::Client::connect(&server.ws_url()).await.expect("connect");
    let mark = m.message_count();
    m.join_with_token("panel-1", "x", Role::Speaker, Some(token)).await.expect("the moderator joins");
    m.wait_for_message(
        mark,
        |x| matches!(x, ServerMessage::Joined { moderator: true, role: Role::Viewer, .. }),
        REPLY_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("joined as a viewer with the moderator grant: {e}"));

    // A plain viewer may not moderate; the moderator sees the raised hand and promotes in place.
    v.send(ClientMessage::Moderate {
        action: dais_proto::ModerateAction::Kick,
        participant: Some("p1".into()),
        kind: None,
        muted: None,
        message: None,
        question: None,
    })
    .expect("send");
    v.wait_for_error(0, ErrorCode::NotModerator, REPLY_TIMEOUT).await.unwrap_or_else(|e| panic!("refused: {e}"));
    v.send(ClientMessage::RaiseHand { raised: true }).expect("raise");
    m.wait_for_message(
        0,
        |x| matches!(x, ServerMessage::Hands { participants } if participants.iter().any(|h| h.participant_id == vp)),
        REPLY_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("the moderator sees the hand: {e}"));
    m.send(ClientMessage::Moderate {
        action: dais_proto::ModerateAction::Promote,
        participant: Some(vp.clone()),
        kind: None,
        muted: None,
        message: None,
        question: None,
    })
    .expect("send");
    v.wait_for_message(0, |x| matches!(x, ServerMessage::RoleChanged { role: Role::Speaker, .. }), REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("promoted: {e}"));
    drop((s, v, m));

    // Open development mode mints nothing.
    let open = Server::start_with_env(&[], &[("DAIS_ADMIN_KEY", KEY)]);
    let (status, body) = http(open.http, "POST", path, Some(KEY), Some(r#"{"name":"Mod","role":"viewer"}"#));
    assert_eq!(status, 409);
    assert!(body.contains("tokens_disabled"), "{body}");
}
