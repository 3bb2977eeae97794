//! Connection exhaustion over loopback, without credentials: half-open HTTP requests from one
//! address (127.0.0.2) against a server under `ulimit -n 256` leave `/healthz` answering and room for
//! a participant from 127.0.0.1, and are closed after the header timeout; a body that never ends gets
//! 408 after the request timeout; past the connection cap the probes are still served; a WebSocket
//! client that stops reading is let go with its descriptor; an oversized frame's 1009 close arrives
//! instead of a reset.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{has_media_from, http_get, metric, speaker, viewer, Server, MEDIA_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from `from` (port chosen by the kernel), with a small receive buffer when
/// `rcvbuf` is set.
async fn connect_from(from: [u8; 4], to: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    sock.bind(SocketAddr::from((from, 0))).expect("bind");
    sock.connect(to).await.expect("connect")
}

/// Whether the server has closed `s` (EOF or reset) within `within`; what it sent is discarded.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The WebSocket handshake on `s`; panics unless the server switches protocols.
async fn ws_handshake(s: &mut TcpStream) {
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write the upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.expect("read the upgrade reply"), 1, "closed during the handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
}

/// The head of a masked client text frame of `len` bytes (mask 0, so the payload goes as it is).
fn text_frame_head(len: usize) -> Vec<u8> {
    let mut h = vec![0x81];
    match len {
        0..=125 => h.push(0x80 | len as u8),
        126..=0xffff => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(0x80 | 127);
            h.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

fn text_frame(payload: &str) -> Vec<u8> {
    let mut f = text_frame_head(payload.len());
    f.extend_from_slice(payload.as_bytes());
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_requests_from_one_address_cannot_lock_others_out() {
    let server = Server::start_with_nofile(256, &[("DAIS_HEADER_TIMEOUT", "3")]);
    // 300 connections from 127.0.0.2: half send part of a request head, half send nothing.
    let mut held = Vec::new();
    for i in 0..300 {
        let mut s = connect_from([127, 0, 0, 2], server.http, None).await;
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("write part of a head");
        }
        held.push(s);
    }
    let opened = Instant::now();

    let (status, body) = http_get(server.http, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"), "/healthz answers from another address");
    let (_s, s_id, _) = speaker(&server, "exhaust", "S").await;
    let (v, _) = viewer(&server, "exhaust", "V").await;
    v.wait_until(MEDIA_TIMEOUT, "a participant from 127.0.0.1 receives", |snap| has_media_from(snap, &s_id, 10, 10))
        .await
        .unwrap();
    assert!(metric(&server, "dais_http_refused_total{reason=\"per_ip\"}") > 200.0, "most were refused per address");

    // Every half-open connection is closed: the refused ones at once, the admitted ones after the
    // header timeout (3 s) and the linger (at most 2 s).
    let mut late = 0;
    for s in &mut held {
        assert!(closed_within(s, Duration::from_secs(15)).await, "a half-open connection was still open after 15 s");
        if opened.elapsed() >= Duration::from_millis(2500) {
            late += 1;
        }
    }
    assert!(late > 0, "some were admitted and held until the header timeout");
    assert!(opened.elapsed() < Duration::from_secs(15));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Only the viewer's and the speaker's sockets remain.
    while metric(&server, "dais_http_connections") > 3.0 {
        assert!(Instant::now() < deadline, "connections were not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_the_probes_still_answer() {
    let env = [("DAIS_MAX_CONNECTIONS", "8"), ("DAIS_MAX_CONNECTIONS_PER_IP", "8"), ("DAIS_HEADER_TIMEOUT", "3")];
    let server = Server::start_with_env(&[], &env);
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(connect_from([127, 0, 0, 2], server.http, None).await);
    }
    // Let the server accept them all before the probes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http_get(server.http, "/healthz").0, 200, "/healthz past the cap");
    assert_eq!(http_get(server.http, "/readyz").0, 200, "/readyz past the cap");
    let (status, body) = http_get(server.http, "/");
    assert_eq!(status, 503, "everything else is refused while full: {body}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(server.http, "/").0 != 200 {
        assert!(Instant::now() < deadline, "the page did not come back once the connections closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&server, "dais_http_probe_lane_total") >= 3.0);
    assert!(metric(&server, "dais_http_refused_total{reason=\"per_ip\"}") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stops_reading_is_let_go() {
    let server = Server::start();
    let mut s = connect_from([127, 0, 0, 1], server.http, Some(1024)).await;
    ws_handshake(&mut s).await;
    // The socket's task starts just after the 101 is written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "dais_connections") != 1.0 {
        assert!(Instant::now() < deadline, "the WebSocket is not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Messages that each get a ~200-byte error reply, then a flood that gets the socket closed; the
    // client never reads, so the replies fill its window and the close frame cannot be sent.
    let bad = r#"{"type":"join","room":"r","name":"n","role":"viewer","version":1,"an_unknown_field_to_make_the_error_long":1}"#;
    let flood: Vec<u8> = (0..1500).flat_map(|_| text_frame(bad)).collect();
    let started = Instant::now();
    s.write_all(&flood).await.expect("write the flood");
    // Let go within the send timeout (10 s), the close timeout (5 s) and the linger (2 s).
    let deadline = started + Duration::from_secs(22);
    // The scrape itself is one HTTP connection.
    while metric(&server, "dais_connections") > 0.0 || metric(&server, "dais_http_connections") > 1.0 {
        assert!(Instant::now() < deadline, "the non-reading socket is still held after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("non-reading socket released after {:?}", started.elapsed());
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "its TCP connection is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_gets_its_1009_not_a_reset() {
    let server = Server::start();
    for attempt in 0..5 {
        let mut s = connect_from([127, 0, 0, 1], server.http, None).await;
        ws_handshake(&mut s).await;
        // A 4 MiB frame, written whole before reading, as a client whose send must finish first
        // (tungstenite's) does: the server closes after the frame's head, and without lingering its
        // reset fails the write, so the client never reads the close frame.
        let len = 4 << 20;
        s.write_all(&text_frame_head(len)).await.expect("write the head");
        let chunk = vec![b'x'; 64 * 1024];
        for i in 0..len / chunk.len() {
            if let Err(e) = s.write_all(&chunk).await {
                panic!("attempt {attempt}: the write failed after {} KiB: {e}", i * 64);
            }
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let result = loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0)) => break Ok(()),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => break Err(e),
                Err(_) => panic!("attempt {attempt}: no close within 10 s"),
            }
        };
        // The server sends nothing before the close frame: 0x88, its length, then the code.
        assert!(
            got.len() >= 4 && got[0] == 0x88 && u16::from_be_bytes([got[2], got[3]]) == 1009,
            "attempt {attempt}: expected a 1009 close frame, got {:02x?} then {result:?}",
            &got[..got.len().min(8)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_never_ends_gets_408() {
    let env = [("DAIS_ADMIN_KEY", "test-admin-key-0123456789"), ("DAIS_REQUEST_TIMEOUT", "2")];
    let server = Server::start_with_env(&[], &env);
    let mut s = connect_from([127, 0, 0, 1], server.http, None).await;
    // A whole head promising 100 bytes of body, then 10 of them.
    s.write_all(
        b"POST /admin/rooms/r/participants/p1/mute HTTP/1.1\r\nHost: x\r\n\
          Authorization: Bearer test-admin-key-0123456789\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"kind\":\"",
    )
    .await
    .expect("write");
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer and no close within 10 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(1500), "answered after the timeout, not before");
}
