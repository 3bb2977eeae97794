//! Join tokens against the real binary with a secret configured: every refusal has its own code,
//! the token's grant decides name and role, a viewer token can never publish, and `dais token`
//! mints tokens the server accepts.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{has_media_from, http_get, Server, MEDIA_TIMEOUT, REPLY_TIMEOUT};
use dais_client::{Client, ClientError, ErrorCode, MediaConfig, Role};
use dais_signaling::token::{mint, TokenClaims, TokenVerifier};

const SECRET: &str = "secret-for-token-tests-0123456789";

fn server() -> Server {
    Server::start_with_env(&[], &[("DAIS_TOKEN_SECRET", SECRET)])
}

fn token(room: &str, name: &str, role: Role) -> String {
    mint(SECRET, &TokenClaims::new(room, name, role, Duration::from_secs(600))).expect("mint")
}

/// `dais token ...` with the secret in the environment; returns the printed token.
fn cli_token(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dais"))
        .arg("token")
        .args(args)
        .env("DAIS_TOKEN_SECRET", SECRET)
        .env_remove("DAIS_CONFIG")
        .output()
        .expect("run dais token");
    assert!(out.status.success(), "dais token failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    text.trim().to_owned()
}

async fn join_code(server: &Server, room: &str, token: Option<&str>) -> ErrorCode {
    let c = Client::connect(&server.ws_url()).await.expect("connect");
    match c.join_with_token(room, "someone", Role::Speaker, token).await {
        Err(ClientError::Server { code, .. }) => {
            c.ping(1, REPLY_TIMEOUT).await.expect("the socket stays open after a refused join");
            code
        }
        other => panic!("join with {token:?} to {room} was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_forged_and_wrong_room_tokens_each_get_their_own_code() {
    let server = server();
    let room = "tok-refusals";
    assert_eq!(join_code(&server, room, None).await, ErrorCode::TokenRequired);

    let mut expired = TokenClaims::new(room, "late", Role::Speaker, Duration::from_secs(60));
    expired.iat -= 7200;
    expired.exp -= 3600;
    let expired = mint(SECRET, &expired).expect("mint");
    assert_eq!(join_code(&server, room, Some(&expired)).await, ErrorCode::TokenExpired);

    let forged = mint(
        "not-the-servers-secret-0123456789ab",
        &TokenClaims::new(room, "eve", Role::Speaker, Duration::from_secs(600)),
    )
    .expect("mint");
    assert_eq!(join_code(&server, room, Some(&forged)).await, ErrorCode::TokenInvalid);
    assert_eq!(join_code(&server, room, Some("not-a-jwt")).await, ErrorCode::TokenInvalid);
    // A valid signature over other claims, with a payload swapped in, is forged too.
    let viewer = token(room, "v", Role::Viewer);
    let speaker = token(room, "v", Role::Speaker);
    let parts: Vec<&str> = viewer.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], speaker.split('.').nth(1).expect("payload"), parts[2]);
    assert_eq!(join_code(&server, room, Some(&spliced)).await, ErrorCode::TokenInvalid);

    let elsewhere = token("another-room", "wanderer", Role::Speaker);
    assert_eq!(join_code(&server, room, Some(&elsewhere)).await, ErrorCode::TokenWrongRoom);

    // Each refusal is counted under its code.
    let (_, metrics) = http_get(server.http, "/metrics");
    for (code, n) in [("token_required", 1), ("token_expired", 1), ("token_invalid", 3), ("token_wrong_room", 1)] {
        let line = format!("dais_join_failures_total{{code=\"{code}\"}} {n}");
        assert!(metrics.contains(&line), "/metrics lacks {line}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_speaker_token_publishes_and_a_viewer_token_cannot_while_it_keeps_receiving() {
    let server = server();
    let room = "tok-media";

    // The speaker's token comes from `dais token`; the name in the join is ignored for the token's.
    let speaker_token = cli_token(&["--room", room, "--role", "speaker", "--name", "Ann Speaker", "--ttl", "10m"]);
    let s = Client::connect(&server.ws_url()).await.expect("connect");
    let joined = s.join_with_token(room, "ignored", Role::Viewer, Some(&speaker_token)).await.expect("speaker joins");
    assert_eq!(joined.role, Role::Speaker, "the token's role wins over the join's");
    s.publish(MediaConfig::default()).await.expect("a speaker token publishes");
    let sp = joined.participant_id;

    // A viewer token asking to be a speaker is a viewer.
    let v = Client::connect(&server.ws_url()).await.expect("connect");
    let vj = v.join_with_token(room, "sneaky", Role::Speaker, Some(&token(room, "Val Viewer", Role::Viewer))).await;
    let vj = vj.expect("viewer joins");
    assert_eq!(vj.role, Role::Viewer, "a viewer token grants a viewer, whatever the join asked");
    let me = vj.participants.iter().find(|p| p.id == sp).expect("the speaker is listed");
    assert_eq!(me.name, "Ann Speaker", "names come from tokens");
    v.wait_until(MEDIA_TIMEOUT, "the viewer receives the speaker", |st| has_media_from(st, &sp, 20, 10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mark = v.message_count();
    v.send_unsolicited_offer().await.expect("send an offer");
    v.wait_for_error(mark, ErrorCode::ViewerCannotPublish, REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}; messages since: {:#?}", &v.snapshot().messages[mark..]));
    assert!(v.snapshot().closed.is_none(), "the viewer stays connected");
    let before = v.snapshot().packets_from(&sp);
    v.wait_until(MEDIA_TIMEOUT, "media keeps flowing after the refused offer", |st| {
        st.packets_from(&sp) >= before + 50
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The server never saw the viewer as a publisher.
    let rooms = s.snapshot();
    assert!(
        !rooms.messages.iter().any(|m| matches!(m, dais_client::ServerMessage::MediaPublished { participant_id, .. } if Some(participant_id) == v.participant_id().as_ref())),
        "the viewer published something"
    );
}

#[test]
fn dais_token_output_verifies_with_its_claims() {
    let t = cli_token(&["--room", "panel", "--role", "viewer", "--name", "Bo", "--ttl", "90s"]);
    let grant = TokenVerifier::new(SECRET).expect("secret").verify(Some(&t), "panel").expect("valid token");
    assert_eq!((grant.name.as_str(), grant.role), ("Bo", Role::Viewer));
    assert!(TokenVerifier::new("another-secret-another-secret-123")
        .expect("secret")
        .verify(Some(&t), "panel")
        .is_err());

    // The lifetime is in the token.
    let payload = t.split('.').nth(1).expect("payload");
    let claims = decode_b64url(payload);
    let claims: serde_json::Value = serde_json::from_slice(&claims).expect("claims JSON");
    let (iat, exp) = (claims["iat"].as_u64().expect("iat"), claims["exp"].as_u64().expect("exp"));
    assert_eq!(exp - iat, 90);
    assert_eq!(claims["room"], "panel");

    for (ttl, secs) in [("45", 45), ("2m", 120), ("1h", 3600)] {
        let t = cli_token(&["--room", "r", "--role", "speaker", "--name", "n", "--ttl", ttl]);
        let c: serde_json::Value =
            serde_json::from_slice(&decode_b64url(t.split('.').nth(1).expect("payload"))).expect("claims");
        assert_eq!(c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat"), secs, "--ttl {ttl}");
    }

    // Without a secret, or with bad arguments, it fails clearly.
    let out = Command::new(env!("CARGO_BIN_EXE_dais"))
        .args(["token", "--room", "r", "--role", "speaker", "--name", "n"])
        .env_remove("DAIS_TOKEN_SECRET")
        .env_remove("DAIS_CONFIG")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token secret"));
    let out = Command::new(env!("CARGO_BIN_EXE_dais"))
        .args(["token", "--room", "r", "--role", "admin", "--name", "n", "--ttl", "5x"])
        .env("DAIS_TOKEN_SECRET", SECRET)
        .output()
        .expect("run");
    assert!(!out.status.success());
}

/// Base64url without padding, as JWT segments are.
fn decode_b64url(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {c}"),
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        acc = (acc << 6) | u32::from(val(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
