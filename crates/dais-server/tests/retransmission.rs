//! Retransmissions from the producer's packet cache, over loopback: the real `dais`, a `dais-client`
//! speaker (webrtc-rs), and two viewers that are raw str0m sessions on their own UDP sockets, so that
//! each can drop one chosen video datagram before decrypting it.
//!
//! Two viewers drop the SRTP datagram that carries the same speaker packet (the first of the frame with
//! a chosen RTP timestamp, which is in the clear and the same for every viewer); a third drops nothing.
//! Each dropping viewer then NACKs the packet under its own sequence number, and the server resends it
//! from the one cache of the speaker's video as RTX. The test asserts that each got its own missing
//! sequence number back, as an RTX datagram, byte-identical to what the third viewer received for that
//! packet, and that `/metrics` counted the retransmissions.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http_get, speaker, Server};
use dais_proto::{ClientMessage, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

/// What one viewer saw of the dropped packet.
#[derive(Debug, Default)]
struct Seen {
    video_packets: u64,
    max_timestamp: u32,
    /// The viewer's own sequence number of the datagram it dropped.
    dropped_seq: Option<u16>,
    /// The payload str0m delivered for that sequence number afterwards.
    repaired: Option<Vec<u8>>,
    /// The first packet with the target timestamp that str0m delivered (a viewer that drops nothing).
    first_at_target: Option<Vec<u8>>,
    rtx_datagrams: u64,
}

/// The viewer's negotiated VP8 and RTX payload types.
fn video_pts(rtc: &Rtc) -> Option<(u8, u8)> {
    let video = rtc.codec_config().params().iter().find(|p| p.spec().codec == Codec::Vp8)?;
    Some((*video.pt(), *video.resend()?))
}

/// One str0m viewer: joins, answers every server offer, drops the first video datagram whose RTP
/// timestamp equals `target` once the test sets it, and reports what it saw.
async fn viewer(
    url: String,
    room: &'static str,
    drops: bool,
    target: Arc<AtomicU32>,
    seen: Arc<std::sync::Mutex<Seen>>,
) {
    let (socket, mut rtc, mut ws) = common::raw_viewer(&url, room).await;
    let local = socket.local_addr().expect("addr");
    let mut buf = vec![0u8; 2048];
    let mut pts: Option<(u8, u8)> = None;
    let mut next = Instant::now();
    loop {
        let wait = tokio::time::sleep_until(next.into());
        tokio::select! {
            m = ws.next() => {
                let Some(Ok(Message::Text(text))) = m else { return };
                let Ok(ServerMessage::Offer { sdp }) = serde_json::from_str::<ServerMessage>(&text) else { continue };
                let offer = SdpOffer::from_sdp_string(&sdp).expect("offer parses");
                let answer = rtc.sdp_api().accept_offer(offer).expect("offer accepted").to_sdp_string();
                pts = video_pts(&rtc).or(pts);
                let reply = ClientMessage::Answer { sdp: answer };
                ws.send(Message::text(serde_json::to_string(&reply).expect("json"))).await.expect("answer");
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { return };
                let data = &buf[..n];
                if inspect(data, pts, drops, &target, &seen) {
                    continue; // dropped on purpose
                }
                let Ok(contents) = DatagramRecv::try_from(data) else { continue };
                let r = Receive { proto: Protocol::Udp, source: from, destination: local, contents };
                let _ = rtc.handle_input(Input::Receive(Instant::now(), r));
            }
            _ = wait => { let _ = rtc.handle_input(Input::Timeout(Instant::now())); }
        }
        next = drive(&mut rtc, &socket, pts, target.load(Ordering::Relaxed), &seen).await;
    }
}

/// Look at an incoming datagram's SRTP header (in the clear): count video and RTX packets, and say
/// whether to drop it (the first video packet with the target timestamp).
fn inspect(data: &[u8], pts: Option<(u8, u8)>, drops: bool, target: &AtomicU32, seen: &std::sync::Mutex<Seen>) -> bool {
    let (Some((video, rtx)), true) = (pts, data.len() >= 12 && (128..192).contains(&data[0])) else { return false };
    let pt = data[1] & 0x7f;
    let mut s = seen.lock().expect("lock");
    if pt == rtx {
        s.rtx_datagrams += 1;
        return false;
    }
    if pt != video {
        return false;
    }
    let seq = u16::from_be_bytes([data[2], data[3]]);
    let ts = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    s.video_packets += 1;
    s.max_timestamp = s.max_timestamp.max(ts);
    let t = target.load(Ordering::Relaxed);
    if drops && t != 0 && ts == t && s.dropped_seq.is_none() {
        s.dropped_seq = Some(seq);
        return true;
    }
    false
}

/// Poll str0m until it asks for time: send its datagrams, record the repaired packet.
async fn drive(
    rtc: &mut Rtc,
    socket: &UdpSocket,
    pts: Option<(u8, u8)>,
    target: u32,
    seen: &std::sync::Mutex<Seen>,
) -> Instant {
    loop {
        match rtc.poll_output() {
            Ok(Output::Timeout(t)) => return t,
            Ok(Output::Transmit(t)) => {
                let _ = socket.send_to(&t.contents, t.destination).await;
            }
            Ok(Output::Event(Event::RtpPacket(p))) => {
                let mut s = seen.lock().expect("lock");
                let video = pts.is_some_and(|(v, _)| *p.header.payload_type == v);
                if video && s.dropped_seq == Some(p.header.sequence_number) {
                    s.repaired.get_or_insert_with(|| p.payload.to_vec());
                }
                if video && target != 0 && p.header.timestamp == target {
                    s.first_at_target.get_or_insert_with(|| p.payload.to_vec());
                }
            }
            Ok(Output::Event(_)) => {}
            Err(_) => return Instant::now() + Duration::from_millis(50),
        }
    }
}

fn counter(server: &Server, name: &str) -> u64 {
    let (_, body) = http_get(server.http, "/metrics");
    body.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_packet_is_resent_from_the_producers_cache_to_two_viewers_in_their_own_numbering() {
    let server = Server::start();
    let room = "rtx";
    let (_speaker, _, _) = speaker(&server, room, "Ann").await;
    let target = Arc::new(AtomicU32::new(0));
    let seen: Vec<Arc<std::sync::Mutex<Seen>>> = (0..3).map(|_| Arc::default()).collect();
    for (i, s) in seen.iter().enumerate() {
        tokio::spawn(viewer(server.ws_url(), room, i < 2, target.clone(), s.clone()));
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let flowing = |s: &[Arc<std::sync::Mutex<Seen>>]| s.iter().all(|s| s.lock().expect("lock").video_packets >= 60);
    while !flowing(&seen) {
        assert!(Instant::now() < deadline, "video did not reach both viewers: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ten frames (3,000 ticks each) ahead of what either has seen: both will drop that frame's first packet.
    let ahead = seen.iter().map(|s| s.lock().expect("lock").max_timestamp).max().unwrap_or(0);
    target.store(ahead.wrapping_add(10 * 3000), Ordering::Relaxed);
    let done = |s: &[Arc<std::sync::Mutex<Seen>>]| {
        s[..2].iter().all(|s| s.lock().expect("lock").repaired.is_some())
            && s[2].lock().expect("lock").first_at_target.is_some()
    };
    while !done(&seen) {
        assert!(Instant::now() < deadline, "the dropped packet was not resent to both: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let (a, b, c) = (seen[0].lock().expect("lock"), seen[1].lock().expect("lock"), seen[2].lock().expect("lock"));
        assert!(a.rtx_datagrams >= 1 && b.rtx_datagrams >= 1, "each repair came as RTX: {a:?} {b:?}");
        assert_eq!(c.rtx_datagrams, 0, "the viewer that lost nothing got no retransmission");
        let original = c.first_at_target.as_ref();
        assert_eq!(a.repaired.as_ref(), original, "viewer 1 got the dropped packet back, byte for byte");
        assert_eq!(b.repaired.as_ref(), original, "viewer 2 got the dropped packet back, byte for byte");
        let (sa, sb) = (a.dropped_seq.expect("a dropped"), b.dropped_seq.expect("b dropped"));
        println!("viewer sequence numbers of the one speaker packet: {sa} and {sb}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut resent = counter(&server, "dais_retransmissions_total");
    while resent < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        resent = counter(&server, "dais_retransmissions_total");
    }
    assert!(resent >= 2, "/metrics counts both retransmissions: {resent}");
}
