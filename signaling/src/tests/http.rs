//! WHIP and WHEP sessions against the fake media plane: who enters the room, what its session is
//! subscribed to, the token rules, PATCH preconditions and DELETE.

use super::*;
use crate::http_session::{HttpOffer, HttpSessionKind, OpenError, PatchError, Patched};
use crate::token::{mint, TokenClaims, TokenVerifier};

const SECRET: &str = "http-secret-0123456789abcdef01234";

fn offer(room: &str, kind: HttpSessionKind, sdp: &str) -> HttpOffer {
    HttpOffer { room: room.into(), kind, token: None, name: Some("obs".into()), sdp: sdp.into(), client: None }
}

fn play(who: &str) -> HttpSessionKind {
    HttpSessionKind::Play { participant: who.into() }
}

fn token(room: &str, role: Role) -> String {
    mint(SECRET, &TokenClaims::new(room, "encoder", role, Duration::from_secs(600))).expect("mint")
}

/// Wait until `cond` holds on the media calls (tasks run concurrently).
async fn until(media: &FakeMedia, cond: impl Fn(&[Call]) -> bool) {
    for _ in 0..200 {
        if cond(&media.calls()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never held: {:?}", media.calls());
}

#[tokio::test]
async fn a_whip_publisher_is_a_speaker_the_room_sees_and_receives_nothing() {
    let (media, sig) = setup();
    let mut viewer = connect(&sig);
    viewer.join("r", "v", "viewer").await;
    let s = sig.open_http_session(offer("r", HttpSessionKind::Publish, "v=0 whip")).await.expect("opened");
    assert_eq!(s.resource.len(), 64, "32 random bytes, hex");
    assert!(s.etag.starts_with('"') && s.etag.ends_with('"'), "a quoted entity tag: {}", s.etag);
    assert_eq!(s.answer, "v=0 answer");
    match viewer.msg_or_audience().await {
        ServerMessage::ParticipantJoined { participant } => {
            assert_eq!((participant.name.as_str(), participant.role), ("obs", Role::Speaker));
        }
        other => panic!("expected participant_joined, got {other:?}"),
    }
    let session = parse_wire(&s.participant_id);
    assert!(media.calls().contains(&Call::Open(session, true)), "a publishing session");
    // It publishes: the viewer is subscribed, the publisher to nothing of the viewer's.
    media.emit(session, MediaEvent::Published { producer: 7, kind: MediaKind::Video, codec: "vp8".into() });
    until(&media, |c| c.iter().any(|c| matches!(c, Call::Subscribe { producer: 7, .. }))).await;
    assert!(!media.calls().iter().any(|c| matches!(c, Call::Subscribe { session: s2, .. } if *s2 == session)));
    // DELETE ends it: the room hears it leave, its session closes, a second DELETE finds nothing.
    assert!(sig.delete_http_session(&s.resource));
    until(&media, |c| c.contains(&Call::Close(session))).await;
    assert!(!sig.delete_http_session(&s.resource), "gone");
    assert_eq!(sig.http_session_count(), 0);
}

fn parse_wire(id: &str) -> u64 {
    id.trim_start_matches('p').parse().expect("p<N>")
}

#[tokio::test]
async fn a_whep_player_receives_only_its_speaker_and_needs_one_to_exist() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let refused = sig.open_http_session(offer("r", play("alice"), "v=0")).await;
    assert_eq!(refused.err(), Some(OpenError::ParticipantNotFound), "no room, no speaker");
    assert!(sig.rooms().is_empty(), "the refused player made no room");
    let mut alice = connect(&sig);
    alice.join("r", "alice", "speaker").await;
    let mut bob = connect(&sig);
    bob.join("r", "bob", "speaker").await;
    let ids: Vec<u64> =
        media.calls().iter().filter_map(|c| if let Call::Open(s, _) = c { Some(*s) } else { None }).collect();
    let (alice_s, bob_s) = (ids[0], ids[1]);
    media.emit(alice_s, MediaEvent::Published { producer: 10, kind: MediaKind::Video, codec: "vp8".into() });
    media.emit(bob_s, MediaEvent::Published { producer: 20, kind: MediaKind::Video, codec: "vp8".into() });
    until(&media, |c| c.iter().filter(|c| matches!(c, Call::Subscribe { .. })).count() == 2).await;
    let s = sig.open_http_session(offer("r", play("alice"), "v=0 whep")).await.expect("opened");
    let me = parse_wire(&s.participant_id);
    assert!(media.calls().contains(&Call::Open(me, false)));
    let mine = |c: &[Call]| -> Vec<u64> {
        c.iter()
            .filter_map(|c| match c {
                Call::Subscribe { session, producer, .. } if *session == me => Some(*producer),
                _ => None,
            })
            .collect()
    };
    assert_eq!(mine(&media.calls()), [10], "alice's video only");
    // Alice publishes more; bob too: only alice's reaches the player.
    media.emit(alice_s, MediaEvent::Published { producer: 11, kind: MediaKind::Audio, codec: "opus".into() });
    media.emit(bob_s, MediaEvent::Published { producer: 21, kind: MediaKind::Audio, codec: "opus".into() });
    until(&media, |c| c.iter().any(|c| matches!(c, Call::Subscribe { producer: 21, .. }))).await;
    until(&media, |c| mine(c) == [10, 11]).await;
    // A player offer that sends media is refused, and leaves nothing behind.
    let n = sig.participant_count();
    let sends = sig.open_http_session(offer("r", play(&format!("p{alice_s}")), "sends")).await;
    assert_eq!(sends.err(), Some(OpenError::CannotPublish));
    assert_eq!(sig.participant_count(), n);
}

#[tokio::test]
async fn tokens_decide_who_may_publish_and_play() {
    let config =
        SignalingConfig { tokens: Some(TokenVerifier::new(SECRET).expect("secret")), ..SignalingConfig::default() };
    let (_, sig) = setup_with(config);
    let missing = sig.open_http_session(offer("r", HttpSessionKind::Publish, "v=0")).await.err();
    assert_eq!(missing.as_ref().map(OpenError::code), Some("token_required"));
    let forged = HttpOffer { token: Some("eyJ.forged.x".into()), ..offer("r", HttpSessionKind::Publish, "v=0") };
    assert_eq!(sig.open_http_session(forged).await.err().as_ref().map(OpenError::code), Some("token_invalid"));
    let viewer = HttpOffer { token: Some(token("r", Role::Viewer)), ..offer("r", HttpSessionKind::Publish, "v=0") };
    assert_eq!(sig.open_http_session(viewer).await.err(), Some(OpenError::NotASpeaker));
    let other_room =
        HttpOffer { token: Some(token("q", Role::Speaker)), ..offer("r", HttpSessionKind::Publish, "v=0") };
    assert_eq!(sig.open_http_session(other_room).await.err().as_ref().map(OpenError::code), Some("token_wrong_room"));
    let speaker = HttpOffer { token: Some(token("r", Role::Speaker)), ..offer("r", HttpSessionKind::Publish, "v=0") };
    let s = sig.open_http_session(speaker).await.expect("a speaker token publishes");
    let rooms = sig.rooms();
    assert_eq!(rooms[0].participants.len(), 1);
    // A viewer token plays it, by name.
    let player = HttpOffer { token: Some(token("r", Role::Viewer)), ..offer("r", play("encoder"), "v=0") };
    assert!(sig.open_http_session(player).await.is_ok(), "the token's name is the speaker's");
    assert!(sig.delete_http_session(&s.resource));
}

#[tokio::test]
async fn patch_trickles_restarts_and_checks_the_entity_tag() {
    let (media, sig) = setup();
    let sdp = "v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:pwdpwdpwdpwdpwdpwdpwdpwd\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
    let s = sig.open_http_session(offer("r", HttpSessionKind::Publish, sdp)).await.expect("opened");
    let session = parse_wire(&s.participant_id);
    let trickle =
        "a=ice-ufrag:abcd\r\na=ice-pwd:pwdpwdpwdpwdpwdpwdpwdpwd\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
                   a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\n";
    assert_eq!(sig.patch_http_session(&s.resource, Some(&s.etag), trickle).await, Ok(Patched::Trickled));
    assert_eq!(
        sig.patch_http_session(&s.resource, None, trickle).await,
        Ok(Patched::Trickled),
        "If-Match is optional for trickle"
    );
    let cand = Call::Candidate(session, "candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host".into());
    assert_eq!(media.calls().iter().filter(|c| **c == cand).count(), 2);
    assert_eq!(
        sig.patch_http_session(&s.resource, Some("\"stale\""), trickle).await,
        Err(PatchError::PreconditionFailed)
    );
    assert_eq!(sig.patch_http_session("nope", Some(&s.etag), trickle).await, Err(PatchError::NotFound));
    assert!(matches!(
        sig.patch_http_session(&s.resource, Some(&s.etag), "{}").await,
        Err(PatchError::Unprocessable(_))
    ));
    let restart = "a=ice-ufrag:efgh\r\na=ice-pwd:newnewnewnewnewnewnewnew\r\n";
    assert_eq!(sig.patch_http_session(&s.resource, None, restart).await, Err(PatchError::PreconditionRequired));
    let offers_before = media.calls().iter().filter(|c| **c == Call::Offer(session)).count();
    let Ok(Patched::Restarted { etag, .. }) = sig.patch_http_session(&s.resource, Some("*"), restart).await else {
        panic!("a restart with If-Match: *");
    };
    assert_ne!(etag, s.etag, "a new ICE session, a new entity tag");
    assert_eq!(media.calls().iter().filter(|c| **c == Call::Offer(session)).count(), offers_before + 1);
    assert_eq!(
        sig.patch_http_session(&s.resource, Some(&s.etag), trickle).await,
        Err(PatchError::PreconditionFailed),
        "the old tag names the old ICE session"
    );
    let again = "a=ice-ufrag:ijkl\r\na=ice-pwd:againagainagainagainagai\r\n";
    assert!(
        matches!(sig.patch_http_session(&s.resource, Some(&etag), again).await, Ok(Patched::Restarted { .. })),
        "the current tag restarts too"
    );
}

#[tokio::test]
async fn a_failed_media_session_or_a_kick_ends_the_http_session() {
    let (media, sig) = setup();
    let s = sig.open_http_session(offer("r", HttpSessionKind::Publish, "v=0")).await.expect("opened");
    let session = parse_wire(&s.participant_id);
    media.emit(session, MediaEvent::Disconnected);
    until(&media, |c| c.contains(&Call::Close(session))).await;
    assert_eq!(sig.http_session_count(), 0);
    assert!(sig.rooms().is_empty(), "it left, and the room with it");
    let patch = sig.patch_http_session(&s.resource, None, "a=end-of-candidates\r\n").await;
    assert_eq!(patch, Err(PatchError::NotFound), "an ended session takes no PATCH");
    assert!(sig.delete_http_session(&s.resource), "its client's DELETE after closing still succeeds");
    assert!(!sig.delete_http_session(&s.resource), "once");
    let s = sig.open_http_session(offer("r", HttpSessionKind::Publish, "v=0")).await.expect("opened");
    let session = parse_wire(&s.participant_id);
    assert_eq!(sig.admin_set_role("r", &s.participant_id, Role::Viewer), Err(crate::AdminError::FixedRole));
    sig.admin_kick("r", &s.participant_id).expect("kicked");
    until(&media, |c| c.contains(&Call::Close(session))).await;
    assert_eq!(sig.http_session_count(), 0, "a kicked session is gone");
}

#[tokio::test]
async fn draining_refuses_new_http_sessions() {
    let (_, sig) = setup();
    sig.start_drain(Duration::from_secs(30));
    let r = sig.open_http_session(offer("r", HttpSessionKind::Publish, "v=0")).await;
    assert_eq!(r.err(), Some(OpenError::Draining));
}

#[tokio::test]
async fn one_address_gets_its_share_of_http_sessions_and_no_more() {
    let (_, sig) = setup_with(SignalingConfig { http_sessions_per_ip: 2, ..SignalingConfig::default() });
    let from = |n: u8| HttpOffer {
        client: Some(std::net::IpAddr::from([10, 0, 0, n])),
        ..offer("r", HttpSessionKind::Publish, "v=0")
    };
    let a = sig.open_http_session(from(1)).await.expect("first");
    sig.open_http_session(from(1)).await.expect("second");
    assert_eq!(sig.open_http_session(from(1)).await.err(), Some(OpenError::TooMany), "the third from one address");
    sig.open_http_session(from(2)).await.expect("another address still gets one");
    assert!(sig.delete_http_session(&a.resource));
    sig.open_http_session(from(1)).await.expect("a deleted one frees its place");
}

#[tokio::test]
async fn a_name_two_speakers_hold_is_refused_and_an_id_plays() {
    let (media, sig) = setup_with(SignalingConfig::default());
    let mut a = connect(&sig);
    a.join("r", "Ann", "speaker").await;
    let mut b = connect(&sig);
    b.join("r", "Ann", "speaker").await;
    let r = sig.open_http_session(offer("r", play("Ann"), "v=0")).await;
    assert_eq!(r.err(), Some(OpenError::Ambiguous));
    let ids: Vec<u64> =
        media.calls().iter().filter_map(|c| if let Call::Open(s, _) = c { Some(*s) } else { None }).collect();
    let s = sig.open_http_session(offer("r", play(&format!("p{}", ids[1])), "v=0")).await.expect("by id");
    assert!(sig.delete_http_session(&s.resource));
}
