//! Loopback integration: the real `dais` binary on 127.0.0.1 with ephemeral ports, driven by
//! `dais-client` participants over real WebSockets and real WebRTC.
//!
//! Every test starts its own server (killed on drop, pass or fail) and its own room. Timeouts are
//! generous because two cores are shared by the server, up to six clients and other tests; the
//! tests assert behaviour (byte-identical payloads, contiguous sequence numbers, error codes,
//! renegotiation), never speed.

mod common;

use std::time::Duration;

use common::{has_media_from, parse_ready, speaker, viewer, Server, MEDIA_TIMEOUT, REPLY_TIMEOUT};
use dais_client::{Client, ClientMessage, ErrorCode, MediaKind, Role, ServerMessage, Snapshot};

#[test]
fn ready_line_parses() {
    let (h, m) = parse_ready("dais ready http=127.0.0.1:40001 media=127.0.0.1:40002").expect("parses");
    assert_eq!((h.port(), m.port()), (40001, 40002));
    assert!(parse_ready("dais ready http=127.0.0.1:1").is_none());
}

/// Media ids `publisher` announced to this client (in `joined` or `media_published`).
fn announced_media(s: &Snapshot, publisher: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for m in &s.messages {
        match m {
            ServerMessage::Joined { participants, .. } => {
                for p in participants.iter().filter(|p| p.id == publisher) {
                    ids.extend(p.media.iter().map(|m| m.id.clone()));
                }
            }
            ServerMessage::MediaPublished { participant_id, media } if participant_id == publisher => {
                ids.push(media.id.clone())
            }
            _ => {}
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Assert every stream from `publisher` arrived intact: byte-identical payloads, contiguous
/// sequence numbers, the sender's tag, and video starting at a keyframe.
fn assert_intact(who: &str, s: &Snapshot, publisher: &str, tag: u32) {
    let streams: Vec<_> = s.streams_of(publisher).collect();
    assert_eq!(streams.len(), 2, "{who}: expected audio+video from {publisher}, got {streams:#?}");
    let announced = announced_media(s, publisher);
    for st in streams {
        assert!(announced.contains(&st.media_id), "{who}: track {} not announced ({announced:?})", st.media_id);
        assert_eq!(st.payload_mismatches, 0, "{who}: payload mismatches in {st:#?}");
        assert_eq!(st.seq_gaps, 0, "{who}: sequence gaps in {st:#?}");
        assert_eq!(st.out_of_order, 0, "{who}: reordered or duplicated packets in {st:#?}");
        assert_eq!(st.sender_tag, Some(tag), "{who}: wrong sender tag in {st:#?}");
        if st.kind == MediaKind::Video {
            assert!(st.first_is_keyframe, "{who}: video did not start at a keyframe: {st:#?}");
        }
    }
}

async fn assert_pair_uses_media_port(who: &str, c: &Client, server: &Server) {
    let pair = c.selected_pair().await;
    let Some((_, remote)) = pair else { panic!("{who}: no selected candidate pair") };
    assert_eq!(
        remote.port(),
        server.media.port(),
        "{who}: selected pair {pair:?} is not on the media port {}",
        server.media
    );
}

/// Wait until every client in `observers` has received at least `n` more packets from `publisher`.
async fn assert_flowing(observers: &[(&str, &Client)], publisher: &str, n: u64, after: &str) {
    let before: Vec<u64> = observers.iter().map(|(_, c)| c.snapshot().packets_from(publisher)).collect();
    for ((who, c), b) in observers.iter().zip(before) {
        c.wait_until(MEDIA_TIMEOUT, &format!("{who}: media from {publisher} keeps flowing after {after}"), |s| {
            s.packets_from(publisher) >= b + n
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_speakers_three_viewers_receive_everything_intact() {
    // Two workers: the speakers land on different ones, so every viewer gets one speaker through a mirror.
    let server = Server::start_with(&["--media-workers", "2"]);
    let room = "loop-fanout";
    let (s1, p1, t1) = speaker(&server, room, "s1").await;
    let (s2, p2, t2) = speaker(&server, room, "s2").await;
    let mut viewers = Vec::new();
    for i in 0..3 {
        viewers.push(viewer(&server, room, &format!("v{i}")).await.0);
    }

    for (i, v) in viewers.iter().enumerate() {
        let s = v
            .wait_until(MEDIA_TIMEOUT, &format!("viewer {i} receives both speakers"), |s| {
                has_media_from(s, &p1, 50, 30) && has_media_from(s, &p2, 50, 30)
            })
            .await
            .unwrap_or_else(|e| panic!("{e}; snapshot: {:#?}", v.snapshot().streams));
        assert_intact(&format!("viewer {i}"), &s, &p1, t1);
        assert_intact(&format!("viewer {i}"), &s, &p2, t2);
        assert!(s.offers_received >= 1 && s.answers_sent == s.offers_received, "viewer {i}: {s:#?}");
    }
    for (who, me, other, tag) in [("s1", &s1, &p2, t2), ("s2", &s2, &p1, t1)] {
        let s = me
            .wait_until(MEDIA_TIMEOUT, &format!("{who} receives the other speaker"), |s| {
                has_media_from(s, other, 50, 30)
            })
            .await
            .unwrap_or_else(|e| panic!("{e}; snapshot: {:#?}", me.snapshot().streams));
        assert_intact(who, &s, other, tag);
        assert!(
            s.streams_of(&me.participant_id().unwrap_or_default()).next().is_none(),
            "{who} got its own media back"
        );
        assert!(s.sent.audio_packets >= 50 && s.sent.video_packets >= 30, "{who} sent too little: {:?}", s.sent);
    }

    assert_pair_uses_media_port("s1", &s1, &server).await;
    assert_pair_uses_media_port("s2", &s2, &server).await;
    for (i, v) in viewers.iter().enumerate() {
        assert_pair_uses_media_port(&format!("viewer {i}"), v, &server).await;
    }
    for c in [&s1, &s2].into_iter().chain(viewers.iter()) {
        assert!(c.snapshot().failures.is_empty(), "client failures: {:?}", c.snapshot().failures);
    }
    // Everyone hears the audience count; viewers are never told about each other, speakers are.
    for (who, c) in [("s1", &s1), ("viewer 0", &viewers[0])] {
        c.wait_for_message(0, |m| matches!(m, ServerMessage::Audience { viewers: 3 }), REPLY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{who} hears 3 viewers: {e}"));
    }
    let viewer_news = |c: &Client| {
        c.snapshot()
            .messages
            .iter()
            .filter(
                |m| matches!(m, ServerMessage::ParticipantJoined { participant } if participant.role == Role::Viewer),
            )
            .count()
    };
    assert_eq!(viewer_news(&s1), 3, "a speaker sees every viewer join");
    for (i, v) in viewers.iter().enumerate() {
        assert_eq!(viewer_news(v), 0, "viewer {i} was told about another viewer");
    }
}

/// `name value` lines of `/metrics` without labels.
fn scrape_plain(server: &Server) -> std::collections::HashMap<String, f64> {
    let (status, body) = common::http_get(server.http, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_on_another_worker_starts_on_a_requested_keyframe() {
    let server = Server::start_with(&["--media-workers", "2"]);
    let room = "loop-workers";
    // No periodic keyframes: a late viewer can only start on one its own request brought.
    let s = Client::connect(&server.ws_url()).await.expect("speaker connects");
    let sp = s.join(room, "s", Role::Speaker).await.expect("speaker joins").participant_id;
    let config = dais_client::MediaConfig { keyframe_interval: Duration::from_secs(3600), ..Default::default() };
    let tag = s.publish(config).await.expect("speaker publishes").tag();
    s.wait_until(MEDIA_TIMEOUT, "the speaker sends video", |x| x.sent.video_packets >= 30)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Worker 0 holds the speaker; the least-loaded rule puts `far` on worker 1 and `near` on worker 0.
    // `far` must start before `near` joins, so only its own request (through worker 0) can have helped.
    let (far, _) = viewer(&server, room, "far").await;
    far.wait_until(MEDIA_TIMEOUT, "far receives video", |x| has_media_from(x, &sp, 1, 1))
        .await
        .unwrap_or_else(|e| panic!("{e}; snapshot: {:#?}", far.snapshot().streams));
    let (near, _) = viewer(&server, room, "near").await;
    for (who, v) in [("far", &far), ("near", &near)] {
        let snap = v
            .wait_until(MEDIA_TIMEOUT, &format!("{who} receives the speaker"), |x| has_media_from(x, &sp, 50, 30))
            .await
            .unwrap_or_else(|e| panic!("{e}; snapshot: {:#?}", v.snapshot().streams));
        assert_intact(who, &snap, &sp, tag);
        assert_pair_uses_media_port(who, v, &server).await;
    }
    let sent = s.snapshot().sent;
    assert!(sent.keyframe_requests >= 1 && sent.keyframes >= 2, "no requested keyframe reached the speaker: {sent:?}");

    let m = scrape_plain(&server);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("metric {k} missing"));
    assert_eq!(get("dais_media_workers"), 2.0);
    assert_eq!(get("dais_media_sessions"), 3.0);
    assert!(
        get("dais_rtp_packets_relayed_total") >= get("dais_rtp_packets_received_total"),
        "every packet relayed once"
    );
    assert!(get("dais_datagrams_handed_over_total") > 0.0, "worker 1's datagrams are handed over");
    assert!(get("dais_keyframe_requests_sent_total") >= 1.0);
    assert!(
        get("dais_keyframe_requests_from_other_workers_total") >= 1.0,
        "`far` sits on worker 1: its request must have come home from there"
    );
}

/// Every server offer must keep a BUNDLE group that starts with the same mid (its tag): Chromium
/// refuses an offer whose group is empty, and tears down the bundle's DTLS transport when the tag
/// leaves a group that goes on.
fn assert_bundles(who: &str, s: &Snapshot) {
    let mut tag: Option<String> = None;
    for m in &s.messages {
        if let ServerMessage::Offer { sdp } = m {
            let group = sdp.lines().find_map(|l| l.strip_prefix("a=group:BUNDLE")).unwrap_or("");
            let first = group.split_whitespace().next();
            assert!(first.is_some(), "{who} got an offer with an empty BUNDLE group:\n{sdp}");
            let first = first.map(str::to_owned);
            assert!(tag.is_none() || tag == first, "{who}: the bundle tag moved from {tag:?} to {first:?}:\n{sdp}");
            tag = first;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_receives_the_next_speaker_after_the_only_one_left() {
    let server = Server::start();
    let room = "loop-alone";
    let (v, _) = viewer(&server, room, "v").await;
    let (first, first_id, _) = speaker(&server, room, "first").await;
    v.wait_until(MEDIA_TIMEOUT, "the viewer receives the first speaker", |s| has_media_from(s, &first_id, 10, 10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let offers = v.snapshot().offers_received;
    first.leave().await.expect("leave");
    // The offer that ends the first speaker's streams is answered.
    v.wait_until(REPLY_TIMEOUT, "the viewer answers the offer that ends them", |s| {
        s.offers_received > offers && s.answers_sent == s.offers_received
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; messages: {:#?}", v.snapshot().messages));
    let (_second, second_id, tag) = speaker(&server, room, "second").await;
    let s = v
        .wait_until(MEDIA_TIMEOUT, "the viewer receives the next speaker", |s| has_media_from(s, &second_id, 30, 20))
        .await
        .unwrap_or_else(|e| panic!("{e}; messages: {:#?}", v.snapshot().messages));
    assert_intact("the viewer", &s, &second_id, tag);
    assert_bundles("the viewer", &s);
    assert!(s.failures.is_empty(), "{:?}", s.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn speaker_leaving_unpublishes_and_renegotiates() {
    // Two workers: leaver and v1 on worker 0, stayer and v2 on worker 1, so v2 loses a mirror.
    let server = Server::start_with(&["--media-workers", "2"]);
    let room = "loop-leave";
    let (leaver, gone, _) = speaker(&server, room, "leaver").await;
    let (_stayer, stays, _) = speaker(&server, room, "stayer").await;
    let (v1, _) = viewer(&server, room, "v1").await;
    let (v2, _) = viewer(&server, room, "v2").await;
    let viewers = [("v1", &v1), ("v2", &v2)];
    for (who, v) in viewers {
        v.wait_until(MEDIA_TIMEOUT, &format!("{who} receives both speakers"), |s| {
            has_media_from(s, &gone, 10, 10) && has_media_from(s, &stays, 10, 10)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let gone_media: Vec<String> = {
        let s = v1.snapshot();
        s.streams_of(&gone).map(|st| st.media_id.clone()).collect()
    };
    assert_eq!(gone_media.len(), 2);

    leaver.leave().await.expect("leave");

    for (who, v) in viewers {
        let s = v
            .wait_until(MEDIA_TIMEOUT, &format!("{who}: media_unpublished for both media, then a server offer"), |s| {
                let unpublished: Vec<usize> = gone_media
                    .iter()
                    .filter_map(|mid| {
                        s.messages.iter().position(|m| {
                            matches!(m, ServerMessage::MediaUnpublished { participant_id, media_id }
                                if *participant_id == gone && media_id == mid)
                        })
                    })
                    .collect();
                let Some(first) = unpublished.iter().min() else { return false };
                unpublished.len() == gone_media.len()
                    && s.messages.iter().skip(first + 1).any(|m| matches!(m, ServerMessage::Offer { .. }))
                    && s.answers_sent == s.offers_received
            })
            .await
            .unwrap_or_else(|e| panic!("{e}; messages: {:#?}", v.snapshot().messages));
        assert!(s.failures.is_empty(), "{who}: {:?}", s.failures);
    }
    // The renegotiation must not disturb the remaining speaker's streams, nor move the bundle tag
    // (the leaver's m-lines came first in both viewers' bundles).
    for (who, v) in viewers {
        assert_bundles(who, &v.snapshot());
    }
    assert_flowing(&viewers, &stays, 50, "the renegotiation").await;
    for (who, v) in viewers {
        let s = v.snapshot();
        for st in s.streams_of(&stays) {
            assert_eq!((st.payload_mismatches, st.seq_gaps), (0, 0), "{who}: {st:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn viewer_cannot_publish_and_stays_connected() {
    // One worker: the path without hand-overs and mirrors stays covered on any machine.
    let server = Server::start_with(&["--media-workers", "1"]);
    let room = "loop-viewer-publish";
    let (_s, sp, _) = speaker(&server, room, "s").await;
    let (v, _) = viewer(&server, room, "v").await;
    v.wait_until(MEDIA_TIMEOUT, "viewer receives the speaker", |s| has_media_from(s, &sp, 10, 10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mark = v.message_count();
    v.send_unsolicited_offer().await.expect("send the offer");
    v.wait_for_error(mark, ErrorCode::ViewerCannotPublish, REPLY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}; messages since: {:#?}", &v.snapshot().messages[mark..]));
    v.ping(7, REPLY_TIMEOUT).await.expect("ping still answered");
    assert!(v.snapshot().closed.is_none(), "socket closed after the refusal");
    assert_flowing(&[("viewer", &v)], &sp, 50, "the refused offer").await;
    let s = v.snapshot();
    for st in s.streams_of(&sp) {
        assert_eq!((st.payload_mismatches, st.seq_gaps), (0, 0), "{st:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_without_disturbing_others() {
    let server = Server::start();
    let room = "loop-bad-input";
    let (_s, sp, _) = speaker(&server, room, "s").await;
    let (o1, _) = viewer(&server, room, "o1").await;
    let (o2, _) = viewer(&server, room, "o2").await;
    let (bad, _) = viewer(&server, room, "bad").await;
    let observers = [("o1", &o1), ("o2", &o2)];
    for (who, o) in observers {
        o.wait_until(MEDIA_TIMEOUT, &format!("{who} receives the speaker"), |s| has_media_from(s, &sp, 10, 10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    let expect = async |c: &Client, text: &str, code: ErrorCode| {
        let mark = c.message_count();
        c.send_raw_text(text).expect("send");
        c.wait_for_error(mark, code, REPLY_TIMEOUT).await.unwrap_or_else(|e| {
            panic!("{e}: expected {code} for {:.80}; got {:#?}", text, &c.snapshot().messages[mark..])
        });
    };

    expect(&bad, "{not json", ErrorCode::BadJson).await;
    assert_flowing(&observers, &sp, 25, "bad_json").await;

    expect(&bad, r#"{"type":"fly"}"#, ErrorCode::UnknownType).await;
    assert_flowing(&observers, &sp, 25, "unknown_type").await;

    let sdp_speaker = Client::connect(&server.ws_url()).await.expect("connect");
    sdp_speaker.join(room, "garbage-sdp", Role::Speaker).await.expect("join as speaker");
    // Let any server offer to this socket be answered first, so the refusal is about the SDP alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sdp_speaker
        .wait_until(REPLY_TIMEOUT, "quiet negotiation", |s| s.answers_sent == s.offers_received)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let garbage = ClientMessage::Offer { sdp: "v=0\r\nthis is not an SDP\r\n".into() }.to_json();
    expect(&sdp_speaker, &garbage, ErrorCode::BadSdp).await;
    assert_flowing(&observers, &sp, 25, "bad_sdp").await;

    let join_again = ClientMessage::Join {
        room: room.into(),
        name: "again".into(),
        role: Role::Viewer,
        version: 1,
        token: None,
        moderator: false,
    }
    .to_json();
    expect(&bad, &join_again, ErrorCode::AlreadyJoined).await;
    assert_flowing(&observers, &sp, 25, "already_joined").await;

    for (label, bad_room) in [("empty", String::new()), ("10 KB", "r".repeat(10 * 1024))] {
        let fresh = Client::connect(&server.ws_url()).await.expect("connect");
        match fresh.join(&bad_room, "x", Role::Viewer).await {
            Err(dais_client::ClientError::Server { code: ErrorCode::InvalidRoom, .. }) => {}
            other => panic!("{label} room name: expected invalid_room, got {other:?}"),
        }
        assert_flowing(&observers, &sp, 25, &format!("the {label} room name")).await;
    }

    bad.send_raw_text(&"x".repeat(1024 * 1024)).expect("send 1 MiB");
    let close = bad.wait_closed(REPLY_TIMEOUT).await.expect("socket closed");
    assert_eq!(close.code, Some(1009), "close after an oversized frame: {close:?}");
    assert_flowing(&observers, &sp, 25, "the oversized frame").await;

    for (who, o) in observers {
        let s = o.snapshot();
        for st in s.streams_of(&sp) {
            assert_eq!((st.payload_mismatches, st.seq_gaps), (0, 0), "{who}: {st:#?}");
        }
        assert!(s.closed.is_none(), "{who}'s socket closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_datagrams_on_the_media_port_harm_no_one() {
    let server = Server::start();
    let room = "loop-garbage-udp";
    let (_s, sp, tag) = speaker(&server, room, "s").await;
    let (v, _) = viewer(&server, room, "v").await;
    v.wait_until(MEDIA_TIMEOUT, "viewer receives the speaker", |s| has_media_from(s, &sp, 10, 10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Junk of every shape the demux sees: empty, random, RTP-looking, RTCP-looking, DTLS-looking,
    // a STUN binding request with a USERNAME no session owns, and an oversized datagram.
    let mut stun = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
    stun.extend_from_slice(b"nobody:x");
    let mut x: u32 = 0x1234_5678;
    let mut random = |n: usize| {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    let mut junk: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0x80],
        [vec![0x80, 0x60, 0x00, 0x01, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef], random(200)].concat(),
        [vec![0x80, 0xc9, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef], random(20)].concat(),
        [vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40], random(64)].concat(),
        stun,
        random(1500),
        random(9000),
    ];
    for _ in 0..200 {
        let n = (random(1)[0] as usize) * 4;
        junk.push(random(n));
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..5 {
        for d in &junk {
            let _ = sock.send_to(d, server.media);
        }
        assert_flowing(&[("viewer", &v)], &sp, 10, "a burst of garbage datagrams").await;
    }
    let s = v.snapshot();
    assert_intact("viewer", &s, &sp, tag);
    assert!(s.closed.is_none(), "the viewer's socket stayed open");
}
