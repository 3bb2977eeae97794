//! The media path moves only on proof, over loopback: the real `dais`, a `dais-client` speaker, and a
//! viewer that is a raw str0m session (so the test knows both sides' ICE credentials). A second
//! socket, on 127.0.0.2, sends the server a STUN check forged with the viewer's valid credentials,
//! USE-CANDIDATE and the highest priority, over and over. It must get STUN responses and nothing else,
//! while the viewer keeps receiving its video; `/metrics` counts the refused moves.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http_get, speaker, Server};
use dais_proto::{ClientMessage, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use str0m::change::SdpOffer;
use str0m::ice::{StunMessage, TransId};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::{Event, Input, Output};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

/// What the viewer learned: the username and password a check for its session needs.
#[derive(Debug, Default, Clone)]
struct Creds {
    username: Option<String>,
    password: Option<String>,
}

fn sdp_attr(sdp: &str, name: &str) -> Option<String> {
    sdp.lines().find_map(|l| l.trim().strip_prefix(&format!("a={name}:")).map(str::to_owned))
}

/// A str0m viewer: joins, answers every server offer, counts the RTP packets it decrypts.
async fn viewer(url: String, room: &'static str, rtp: Arc<AtomicU64>, creds: Arc<Mutex<Creds>>) {
    let (socket, mut rtc, mut ws) = common::raw_viewer(&url, room).await;
    let local = socket.local_addr().expect("addr");
    let mut buf = vec![0u8; 2048];
    let mut next = Instant::now();
    loop {
        let wait = tokio::time::sleep_until(next.into());
        tokio::select! {
            m = ws.next() => {
                let Some(Ok(Message::Text(text))) = m else { return };
                let Ok(ServerMessage::Offer { sdp }) = serde_json::from_str::<ServerMessage>(&text) else { continue };
                let offer = SdpOffer::from_sdp_string(&sdp).expect("offer parses");
                let answer = rtc.sdp_api().accept_offer(offer).expect("offer accepted").to_sdp_string();
                let mine = rtc.direct_api().local_ice_credentials();
                if let (Some(ufrag), Some(pwd)) = (sdp_attr(&sdp, "ice-ufrag"), sdp_attr(&sdp, "ice-pwd")) {
                    *creds.lock().expect("lock") = Creds { username: Some(format!("{ufrag}:{}", mine.ufrag)), password: Some(pwd) };
                }
                ws.send(Message::text(ClientMessage::Answer { sdp: answer }.to_json())).await.expect("answer");
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { return };
                let Ok(contents) = DatagramRecv::try_from(&buf[..n]) else { continue };
                let r = Receive { proto: Protocol::Udp, source: from, destination: local, contents };
                let _ = rtc.handle_input(Input::Receive(Instant::now(), r));
            }
            _ = wait => { let _ = rtc.handle_input(Input::Timeout(Instant::now())); }
        }
        next = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::RtpPacket(_))) => {
                    rtp.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Output::Event(_)) => {}
                Err(_) => break Instant::now() + Duration::from_millis(50),
            }
        };
    }
}

/// A binding request with USE-CANDIDATE and the highest priority, signed with `password`.
fn forged_check(username: &str, password: &str) -> Vec<u8> {
    let msg = StunMessage::binding_request(username, TransId::new(), true, 7, u32::MAX, true);
    let mut buf = vec![0u8; 512];
    let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
    let n = msg.to_bytes(Some(password.as_bytes()), &mut buf, |k, d| hmac.sha1_hmac(k, d)).expect("serializes");
    buf.truncate(n);
    buf
}

fn counter(server: &Server, name: &str) -> u64 {
    let (_, body) = http_get(server.http, "/metrics");
    body.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_check_from_elsewhere_gets_stun_only_and_the_viewer_keeps_its_media() {
    let server = Server::start();
    let room = "latch";
    let (_speaker, _, _) = speaker(&server, room, "Ann").await;
    let rtp = Arc::new(AtomicU64::new(0));
    let creds = Arc::new(Mutex::new(Creds::default()));
    tokio::spawn(viewer(server.ws_url(), room, rtp.clone(), creds.clone()));
    let deadline = Instant::now() + Duration::from_secs(40);
    while rtp.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "media did not reach the viewer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = creds.lock().expect("lock").clone();
    let (username, password) = (c.username.expect("a username"), c.password.expect("a password"));

    let attacker = UdpSocket::bind("127.0.0.2:0").await.expect("bind 127.0.0.2");
    let check = forged_check(&username, &password);
    let mut got: Vec<u8> = Vec::new();
    let before = rtp.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 2048];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => { attacker.send_to(&check, server.media).await.expect("send the forged check"); }
            r = attacker.recv_from(&mut buf) => {
                let (n, _) = r.expect("recv");
                got.push(buf[..n].first().copied().unwrap_or(0));
            }
        }
    }
    assert!(!got.is_empty(), "the forged checks are answered");
    assert!(got.iter().all(|b| *b < 4), "the forged source got STUN only (first bytes {got:?})");
    let during = rtp.load(Ordering::Relaxed) - before;
    assert!(during > 100, "the viewer kept receiving: {during} packets in 3 s");
    assert!(counter(&server, "dais_path_moves_refused_total") >= 1, "the refused move is counted");
}
