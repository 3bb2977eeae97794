//! WHIP and WHEP HTTP semantics against the real binary (RFC 9725 and the WHEP draft): 201 with
//! Location, ETag and the answer; PATCH trickle (204), ICE restart (200 with a new ETag) and its
//! preconditions (412, 428); unsupported bodies (415, 422); DELETE (200, then 404); CORS; and the
//! token rules (401 without or with a bad token, 403 for a viewer token on WHIP). The offers are a
//! str0m client's; real media through WHIP and WHEP is proven in Chromium
//! (tests/browser/whip.test.mjs).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Server;
use dais_client::Role;
use dais_signaling::token::{mint, TokenClaims};
use str0m::media::{Direction, MediaKind};

const SECRET: &str = "secret-for-whip-tests-0123456789a";

/// An answer: status, lower-cased headers (repeated ones joined with ", "), body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The `code` of a JSON error body.
    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        v["code"].as_str().unwrap_or("").to_owned()
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(s, "{head}\r\n{body}").expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).expect("status");
    let mut headers: HashMap<String, String> = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let e = headers.entry(k.trim().to_ascii_lowercase()).or_default();
            if !e.is_empty() {
                e.push_str(", ");
            }
            e.push_str(v.trim());
        }
    }
    Reply { status, headers, body: body.to_owned() }
}

/// A str0m client's offer: sending audio and video (WHIP) or receiving them (WHEP).
fn offer(direction: Direction) -> String {
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    let addr: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    rtc.add_local_candidate(str0m::Candidate::host(addr, "udp").expect("candidate"));
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, direction, None, None, None);
    api.add_media(MediaKind::Video, direction, None, None, None);
    let (offer, _) = api.apply().expect("an offer");
    offer.to_sdp_string()
}

fn attribute<'a>(sdp: &'a str, attr: &str) -> Option<&'a str> {
    sdp.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix(&format!("a={attr}:")[..]))
}

const SDP: (&str, &str) = ("Content-Type", "application/sdp");
const FRAG: (&str, &str) = ("Content-Type", "application/trickle-ice-sdpfrag");

#[test]
fn whip_answers_patches_and_deletes_as_rfc_9725_says() {
    let server = Server::start();
    let addr = server.http;
    let sdp = offer(Direction::SendOnly);
    let r = request(addr, "POST", "/whip/panel?name=OBS", &[SDP], &sdp);
    assert_eq!(r.status, 201, "{}", r.body);
    let location = r.header("location").to_owned();
    assert!(location.starts_with("/whip/panel/") && location.len() == "/whip/panel/".len() + 64, "{location}");
    let etag = r.header("etag").to_owned();
    assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'), "a quoted entity tag: {etag}");
    assert_eq!(r.header("content-type"), "application/sdp");
    assert_eq!(r.header("accept-patch"), "application/trickle-ice-sdpfrag");
    assert_eq!(r.header("access-control-allow-origin"), "*");
    assert!(r.header("access-control-expose-headers").contains("Location"));
    assert!(r.body.starts_with("v=0") && r.body.contains("a=ice-lite"), "an ICE-lite answer: {}", r.body);
    let answer_ufrag = attribute(&r.body, "ice-ufrag").expect("the answer's ufrag").to_owned();

    let ufrag = attribute(&sdp, "ice-ufrag").expect("ufrag");
    let pwd = attribute(&sdp, "ice-pwd").expect("pwd");
    let trickle = format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2122260223 127.0.0.1 40001 typ host\r\na=end-of-candidates\r\n"
    );
    let r = request(addr, "PATCH", &location, &[FRAG, ("If-Match", &etag)], &trickle);
    assert_eq!(r.status, 204, "trickle: {}", r.body);
    let r = request(addr, "PATCH", &location, &[FRAG, ("If-Match", "\"stale\"")], &trickle);
    assert_eq!((r.status, r.code().as_str()), (412, "precondition_failed"));
    let r = request(addr, "PATCH", &location, &[SDP, ("If-Match", &etag)], &trickle);
    assert_eq!((r.status, r.code().as_str()), (415, "unsupported_media_type"));
    let r = request(addr, "PATCH", &location, &[FRAG, ("If-Match", &etag)], "{\"candidate\": 1}");
    assert_eq!((r.status, r.code().as_str()), (422, "bad_fragment"));

    // ICE restart: new credentials, If-Match: * (RFC 9725 §4.3.2).
    let restart = "a=ice-ufrag:rst1\r\na=ice-pwd:restartrestartrestart123\r\n";
    let r = request(addr, "PATCH", &location, &[FRAG], restart);
    assert_eq!((r.status, r.code().as_str()), (428, "precondition_required"));
    let r = request(addr, "PATCH", &location, &[FRAG, ("If-Match", "*")], restart);
    assert_eq!(r.status, 200, "restart: {}", r.body);
    assert_eq!(r.header("content-type"), "application/trickle-ice-sdpfrag");
    let new_etag = r.header("etag").to_owned();
    assert!(!new_etag.is_empty() && new_etag != etag, "a new entity tag: {new_etag}");
    let new_ufrag = attribute(&r.body, "ice-ufrag").expect("the server's new ufrag");
    assert_ne!(new_ufrag, answer_ufrag, "the server restarted its ICE too");
    assert!(attribute(&r.body, "ice-pwd").is_some() && r.body.contains("a=candidate:"), "{}", r.body);
    let r = request(addr, "PATCH", &location, &[FRAG, ("If-Match", &etag)], &trickle);
    assert_eq!(r.status, 412, "the old tag names the old ICE session");
    let r = request(addr, "PATCH", &location, &[FRAG, ("If-Match", &new_etag)], "a=end-of-candidates\r\n");
    assert_eq!(r.status, 204, "the new tag works");

    let r = request(
        addr,
        "OPTIONS",
        &location,
        &[("Origin", "https://studio.example"), ("Access-Control-Request-Method", "PATCH")],
        "",
    );
    assert_eq!(r.status, 204);
    assert!(r.header("access-control-allow-methods").contains("PATCH"));
    assert!(r.header("access-control-allow-headers").contains("If-Match"));
    let r = request(addr, "OPTIONS", "/whip/panel", &[], "");
    assert!(r.header("access-control-allow-methods").contains("POST") && r.header("accept-post") == "application/sdp");

    assert_eq!(common::metric(&server, "dais_http_sessions"), 1.0);
    let r = request(addr, "DELETE", &location, &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(common::metric(&server, "dais_http_sessions"), 0.0);
    let r = request(addr, "DELETE", &location, &[], "");
    assert_eq!((r.status, r.code().as_str()), (404, "session_not_found"));
    let r = request(addr, "PATCH", &location, &[FRAG, ("If-Match", "*")], restart);
    assert_eq!(r.status, 404);
}

#[test]
fn bad_offers_and_absent_speakers_get_their_codes() {
    let server = Server::start();
    let addr = server.http;
    let r = request(addr, "POST", "/whip/panel", &[SDP], "v=0\r\nnonsense\r\n");
    assert_eq!((r.status, r.code().as_str()), (400, "bad_sdp"), "{}", r.body);
    let r = request(addr, "POST", "/whip/panel", &[("Content-Type", "application/json")], "{}");
    assert_eq!((r.status, r.code().as_str()), (415, "unsupported_media_type"));
    let r = request(addr, "POST", "/whip/bad%20room", &[SDP], &offer(Direction::SendOnly));
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_room"));
    let big = "a".repeat(dais_proto::MAX_SDP_BYTES + 1);
    let r = request(addr, "POST", "/whip/panel", &[SDP], &big);
    assert_eq!((r.status, r.code().as_str()), (413, "too_large"));
    let r = request(addr, "POST", "/whep/panel/nobody", &[SDP], &offer(Direction::RecvOnly));
    assert_eq!((r.status, r.code().as_str()), (404, "participant_not_found"));
    // A WHEP offer that sends is refused; a recvonly one for a WHIP publisher is answered.
    let r = request(addr, "POST", "/whip/panel?name=Encoder", &[SDP], &offer(Direction::SendOnly));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = request(addr, "POST", "/whep/panel/Encoder", &[SDP], &offer(Direction::SendOnly));
    assert_eq!((r.status, r.code().as_str()), (422, "viewer_cannot_publish"), "{}", r.body);
    let r = request(addr, "POST", "/whep/panel/Encoder", &[SDP], &offer(Direction::RecvOnly));
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.header("location").starts_with("/whep/panel/Encoder/"), "{}", r.header("location"));
    assert_eq!(r.body.matches("a=sendonly").count(), 2, "both lines are sent to the player: {}", r.body);
    let r = request(addr, "DELETE", r.header("location"), &[], "");
    assert_eq!(r.status, 200);
    // Two speakers named alike: a name is refused, the participant id plays.
    let r = request(addr, "POST", "/whip/panel?name=Encoder", &[SDP], &offer(Direction::SendOnly));
    assert_eq!(r.status, 201);
    let r = request(addr, "POST", "/whep/panel/Encoder", &[SDP], &offer(Direction::RecvOnly));
    assert_eq!((r.status, r.code().as_str()), (409, "participant_ambiguous"), "{}", r.body);
}

#[test]
fn tokens_decide_who_publishes_and_plays() {
    let server = Server::start_with_env(&[], &[("DAIS_TOKEN_SECRET", SECRET)]);
    let addr = server.http;
    let token = |room: &str, role| {
        mint(SECRET, &TokenClaims::new(room, "Studio", role, Duration::from_secs(600))).expect("mint")
    };
    let sdp = offer(Direction::SendOnly);
    let r = request(addr, "POST", "/whip/keynote", &[SDP], &sdp);
    assert_eq!((r.status, r.code().as_str()), (401, "token_required"));
    assert_eq!(r.header("www-authenticate"), "Bearer");
    let r = request(addr, "POST", "/whip/keynote", &[SDP, ("Authorization", "Bearer not.a.token")], &sdp);
    assert_eq!((r.status, r.code().as_str()), (401, "token_invalid"));
    let other = format!("Bearer {}", token("elsewhere", Role::Speaker));
    let r = request(addr, "POST", "/whip/keynote", &[SDP, ("Authorization", &other)], &sdp);
    assert_eq!((r.status, r.code().as_str()), (401, "token_wrong_room"));
    let viewer = format!("Bearer {}", token("keynote", Role::Viewer));
    let r = request(addr, "POST", "/whip/keynote", &[SDP, ("Authorization", &viewer)], &sdp);
    assert_eq!((r.status, r.code().as_str()), (403, "not_a_speaker"));
    let speaker = format!("Bearer {}", token("keynote", Role::Speaker));
    let r = request(addr, "POST", "/whip/keynote?name=ignored", &[SDP, ("Authorization", &speaker)], &sdp);
    assert_eq!(r.status, 201, "{}", r.body);
    // The token's name wins: a player finds the publisher as "Studio", with a viewer token only.
    let play = offer(Direction::RecvOnly);
    let r = request(addr, "POST", "/whep/keynote/Studio", &[SDP], &play);
    assert_eq!(r.status, 401);
    let r = request(addr, "POST", "/whep/keynote/Studio", &[SDP, ("Authorization", &viewer)], &play);
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn one_address_cannot_hold_every_session() {
    // http.max_connections_per_ip also caps the live WHIP and WHEP sessions of one address.
    let server = Server::start_with_env(&[], &[("DAIS_MAX_CONNECTIONS_PER_IP", "2")]);
    let sdp = offer(Direction::SendOnly);
    for i in 0..2 {
        let r = request(server.http, "POST", &format!("/whip/cap{i}"), &[SDP], &sdp);
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = request(server.http, "POST", "/whip/cap9", &[SDP], &sdp);
    assert_eq!((r.status, r.code().as_str()), (503, "too_many_sessions"));
    assert_eq!(r.header("retry-after"), "5");
}
