//! Helpers shared by the integration tests: a real `dais` process on ephemeral loopback ports, and
//! joined `dais-client` participants.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use dais_client::{Client, MediaConfig, MediaKind, Role, Snapshot};

pub const MEDIA_TIMEOUT: Duration = Duration::from_secs(40);
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `dais`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub http: SocketAddr,
    pub media: SocketAddr,
    /// The TCP media address (ICE over TCP), when on.
    pub tcp: Option<SocketAddr>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Start with extra flags.
    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    /// Start with extra flags and extra environment variables (e.g. `DAIS_TOKEN_SECRET`, which has no flag).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = vec!["--http-addr", "127.0.0.1:0", "--media-addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Server::spawn(&args, env)
    }

    /// Start with exactly these arguments and extra environment variables.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dais"));
        command.args(args);
        Server::spawn_command(command, env)
    }

    /// Start with the usual loopback arguments under `ulimit -n nofile` (soft and hard).
    pub fn start_with_nofile(nofile: u32, env: &[(&str, &str)]) -> Server {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_dais"))
            .args(["--http-addr", "127.0.0.1:0", "--media-addr", "127.0.0.1:0"]);
        Server::spawn_command(command, env)
    }

    fn spawn_command(mut command: Command, env: &[(&str, &str)]) -> Server {
        let mut child = command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the dais binary");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Keep draining stdout for the server's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((http, media)) = parse_ready(&line) {
                    let _ = tx.send((http, media, parse_ready_tcp(&line)));
                } else {
                    println!("dais: {line}");
                }
            }
        });
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut server = Server { child, http: unset, media: unset, tcp: None };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((http, media, tcp)) => {
                server.http = http;
                server.media = media;
                server.tcp = tcp;
                server
            }
            Err(_) => panic!("dais did not print `dais ready http=... media=...` within 60 s"),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parse `dais ready http=127.0.0.1:PORT media=127.0.0.1:PORT` (and whatever follows, e.g. ` tcp=...`).
pub fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("dais ready http=")?;
    let (http, rest) = rest.split_once(" media=")?;
    let media = rest.split_whitespace().next()?;
    Some((http.parse().ok()?, media.parse().ok()?))
}

/// The `tcp=` address of a ready line, when TCP is on.
pub fn parse_ready_tcp(line: &str) -> Option<SocketAddr> {
    line.split_whitespace().find_map(|w| w.strip_prefix("tcp="))?.parse().ok()
}

/// A joined speaker that publishes synthetic audio and video; returns the client, its participant
/// id and its payload tag.
pub async fn speaker(server: &Server, room: &str, name: &str) -> (Client, String, u32) {
    let c = Client::connect(&server.ws_url()).await.expect("speaker connects");
    let joined = c.join(room, name, Role::Speaker).await.expect("speaker joins");
    let handle = c.publish(MediaConfig::default()).await.expect("speaker publishes");
    (c, joined.participant_id, handle.tag())
}

pub async fn viewer(server: &Server, room: &str, name: &str) -> (Client, String) {
    let c = Client::connect(&server.ws_url()).await.expect("viewer connects");
    let joined = c.join(room, name, Role::Viewer).await.expect("viewer joins");
    (c, joined.participant_id)
}

/// Whether `s` holds an audio stream with at least `audio` packets and a video stream with at
/// least `video` packets from `publisher`.
pub fn has_media_from(s: &Snapshot, publisher: &str, audio: u64, video: u64) -> bool {
    let enough = |kind, n| s.streams_of(publisher).any(|st| st.kind == kind && st.packets >= n);
    enough(MediaKind::Audio, audio) && enough(MediaKind::Video, video)
}

/// A raw str0m viewer's start: a UDP socket on 127.0.0.1, an RTP-mode `Rtc` with its host
/// candidate, and a WebSocket that has sent `join` as a viewer of `room`.
pub async fn raw_viewer(
    url: &str,
    room: &str,
) -> (
    tokio::net::UdpSocket,
    str0m::Rtc,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) {
    use futures_util::SinkExt;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = socket.local_addr().expect("addr");
    let mut rtc = str0m::RtcConfig::new().set_rtp_mode(true).build(std::time::Instant::now());
    rtc.add_local_candidate(str0m::Candidate::host(local, "udp").expect("candidate"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket");
    let join = dais_proto::ClientMessage::Join {
        room: room.into(),
        name: "raw".into(),
        role: Role::Viewer,
        version: dais_proto::PROTOCOL_VERSION,
        token: None,
        moderator: false,
    };
    ws.send(tokio_tungstenite::tungstenite::Message::text(join.to_json())).await.expect("join");
    (socket, rtc, ws)
}

/// One sample of `/metrics`, by its name and labels exactly as rendered (`name{label="v"}`).
pub fn metric(server: &Server, key: &str) -> f64 {
    let (_, body) = http_get(server.http, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /metrics"))
}

/// A plain HTTP/1.1 GET: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None, None)
}

/// A plain HTTP/1.1 request with an optional bearer token and JSON body: status and body.
pub fn http(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>, body: Option<&str>) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, bearer, body);
    (status, body)
}

/// Like [`http`], also returning the lower-cased Content-Type.
pub fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let auth = bearer.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status");
    let ctype = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}
