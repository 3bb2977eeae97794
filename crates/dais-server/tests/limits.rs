//! Limits that keep one participant from hurting the others, over loopback: a speaker whose offer
//! carries 301 sending video m-lines (about 80 KiB) (a "stream bomb") is refused with `too_many_streams`, and the
//! room's viewer keeps receiving the other speaker and stays connected.

mod common;

use std::time::Instant;

use common::{speaker, viewer, Server, MEDIA_TIMEOUT, REPLY_TIMEOUT};
use dais_client::{Client, ClientMessage, ErrorCode, Role, ServerMessage};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, RtcConfig};

/// The 2-video offer with its second video m-line copied until there are `videos`, each copy with
/// its own mid and without the optional attributes: about 300 bytes per m-line, as an attacker would
/// pack it.
fn bomb(videos: usize) -> String {
    let sdp = offer_with(2);
    let start = sdp.rfind("m=video").expect("a video m-line");
    let (head, section) = sdp.split_at(start);
    let lean: Vec<&str> = section
        .lines()
        .filter(|l| !(l.starts_with("a=extmap") || l.starts_with("a=rtcp-fb") || l.starts_with("a=ssrc")))
        .collect();
    let mut out = head.to_owned();
    for i in 0..videos - 1 {
        for l in &lean {
            let l = if l.starts_with("a=mid:") { format!("a=mid:b{i}") } else { (*l).to_owned() };
            out.push_str(&l);
            out.push_str("\r\n");
        }
    }
    out
}

/// A genuine str0m offer (Opus and VP8 only) with one audio and `videos` sendonly video m-lines.
fn offer_with(videos: usize) -> String {
    let mut rtc = RtcConfig::new().clear_codecs().enable_opus(true, false).enable_vp8(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:9".parse().expect("addr"), "udp").expect("candidate"));
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    for _ in 0..videos {
        api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    }
    let (offer, _) = api.apply().expect("an offer");
    offer.to_sdp_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_bomb_is_refused_and_the_room_keeps_its_media() {
    let server = Server::start();
    let (_s, s_id, _) = speaker(&server, "bomb", "S").await;
    let (v, _) = viewer(&server, "bomb", "V").await;
    v.wait_until(MEDIA_TIMEOUT, "the viewer receives", |snap| snap.packets_from(&s_id) > 50).await.unwrap();

    let bomber = Client::connect(&server.ws_url()).await.expect("connect");
    bomber.join("bomb", "B", Role::Speaker).await.expect("join");
    let sdp = bomb(301);
    assert!(sdp.matches("m=video").count() == 301 && sdp.len() < dais_proto::MAX_SDP_BYTES, "{} bytes", sdp.len());
    let mark = bomber.message_count();
    bomber.send(ClientMessage::Offer { sdp }).expect("send");
    let err = bomber.wait_for_error(mark, ErrorCode::TooManyStreams, REPLY_TIMEOUT).await.expect("too_many_streams");
    let ServerMessage::Error { message, request, .. } = err else { unreachable!() };
    assert_eq!(request.as_deref(), Some("offer"));
    assert!(message.contains("301 video"), "the message says what was refused: {message}");
    // The bomber's socket stays usable, and an offer within the limits is accepted.
    let mark = bomber.message_count();
    bomber.send(ClientMessage::Offer { sdp: offer_with(2) }).expect("send");
    bomber
        .wait_for_message(mark, |m| matches!(m, ServerMessage::Answer { .. }), REPLY_TIMEOUT)
        .await
        .expect("a camera and a screen are fine");

    // The viewer never got an offer with the bomber's streams, and keeps receiving the speaker.
    let before = v.snapshot().packets_from(&s_id);
    v.wait_until(MEDIA_TIMEOUT, "media keeps flowing", |snap| snap.packets_from(&s_id) > before + 100).await.unwrap();
    let snap = v.snapshot();
    assert!(snap.closed.is_none(), "the viewer stays connected: {:?}", snap.closed);
    let biggest = snap
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Offer { sdp } => Some(sdp.matches("m=").count()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    assert!(biggest <= 8, "no offer to the viewer carries the bomb: at most {biggest} m-lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;

    let server = Server::start();
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.expect("connect");
    let join = ClientMessage::Join {
        room: "utf".into(),
        name: "U".into(),
        role: Role::Viewer,
        version: 1,
        token: None,
        moderator: false,
    };
    ws.send(Message::text(join.to_json())).await.expect("join");
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(bad)).await.expect("send");
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    let code = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("an answer within 10 s") {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 1007);
}
