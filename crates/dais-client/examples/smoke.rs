//! Smoke check of a running `dais`, used by deploy/smoke.sh against the container image.
//!
//! ```text
//! cargo run --example smoke -p dais-client -- ws://127.0.0.1:8080/ws [--drain] [--room NAME]
//! ```
//!
//! A speaker publishes synthetic audio and video and a viewer joins the same room; the check passes
//! once the viewer has received at least 100 intact packets (byte-exact payloads, audio and video)
//! from the speaker within 30 s. It prints `smoke: media ok` then. With `--drain` it stays connected
//! and waits up to 120 s for the server's `draining` notice (the caller sends SIGTERM after
//! `media ok`), then checks, while both participants are still connected, that `/readyz` answers
//! 503, that a new join is refused with `draining` and that media keeps flowing; then both leave,
//! which lets the server finish its drain and exit. Exit status 0 means every check passed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dais_client::{Client, ClientError, ErrorCode, MediaConfig, MediaKind, Role, ServerMessage, Snapshot};

const MIN_PACKETS: u64 = 100;
const MEDIA_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_NOTICE_TIMEOUT: Duration = Duration::from_secs(120);

struct Options {
    ws_url: String,
    room: String,
    drain: bool,
}

fn options() -> Result<Options> {
    let mut ws_url = None;
    let mut room = "smoke".to_owned();
    let mut drain = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--drain" => drain = true,
            "--room" => room = args.next().context("--room needs a value")?,
            url if url.starts_with("ws://") && ws_url.is_none() => ws_url = Some(url.to_owned()),
            other => bail!("unexpected argument {other:?}; usage: smoke WS_URL [--drain] [--room NAME]"),
        }
    }
    Ok(Options { ws_url: ws_url.context("usage: smoke WS_URL [--drain] [--room NAME]")?, room, drain })
}

/// Packets from `publisher` whose payloads all verified, as (audio, video); `None` if any did not.
fn intact(s: &Snapshot, publisher: &str) -> Option<(u64, u64)> {
    let (mut audio, mut video) = (0, 0);
    for st in s.streams_of(publisher) {
        if st.payload_mismatches > 0 {
            return None;
        }
        match st.kind {
            MediaKind::Audio => audio += st.packets,
            MediaKind::Video => video += st.packets,
        }
    }
    Some((audio, video))
}

/// Status code of `GET path` on the HTTP side of `ws://HOST:PORT/ws`.
fn http_status(ws_url: &str, path: &str) -> Result<u16> {
    let host = ws_url.trim_start_matches("ws://").split('/').next().context("host in the ws url")?;
    let mut s = TcpStream::connect(host).with_context(|| format!("connect {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).context("status line")?;
    Ok(status.parse()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let opts = options()?;
    let started = Instant::now();

    let speaker = Client::connect(&opts.ws_url).await.context("speaker connects")?;
    let sp = speaker.join(&opts.room, "smoke-speaker", Role::Speaker).await.context("speaker joins")?.participant_id;
    speaker.publish(MediaConfig::default()).await.context("speaker publishes")?;
    let viewer = Client::connect(&opts.ws_url).await.context("viewer connects")?;
    viewer.join(&opts.room, "smoke-viewer", Role::Viewer).await.context("viewer joins")?;
    println!("smoke: speaker {sp} and a viewer joined room {:?}", opts.room);

    let enough =
        |s: &Snapshot| intact(s, &sp).is_none_or(|(a, v)| a > 0 && v > 0 && a + v >= MIN_PACKETS) || s.closed.is_some();
    let snap = viewer.wait_until(MEDIA_TIMEOUT, "intact media at the viewer", enough).await?;
    let Some((audio, video)) = intact(&snap, &sp) else { bail!("corrupted payloads: {:?}", snap.streams) };
    if snap.closed.is_some() {
        bail!("viewer socket closed early: {:?}", snap.closed);
    }
    println!("smoke: media ok: {audio} audio + {video} video intact packets after {:?}", started.elapsed());

    if opts.drain {
        println!("smoke: waiting for the draining notice (send SIGTERM to the server now)");
        for (who, c) in [("viewer", &viewer), ("speaker", &speaker)] {
            let notice = c
                .wait_for_message(0, |m| matches!(m, ServerMessage::Draining { .. }), DRAIN_NOTICE_TIMEOUT)
                .await
                .with_context(|| format!("{who} gets the draining notice"))?;
            println!("smoke: {who} got {notice:?}");
        }
        let ready = http_status(&opts.ws_url, "/readyz")?;
        if ready != 503 {
            bail!("/readyz answered {ready} while draining, expected 503");
        }
        println!("smoke: /readyz is 503 while both participants are connected");
        let late = Client::connect(&opts.ws_url).await.context("late client connects")?;
        match late.join(&opts.room, "smoke-late", Role::Viewer).await {
            Err(ClientError::Server { code: ErrorCode::Draining, .. }) => {
                println!("smoke: a new join is refused with `draining`")
            }
            other => bail!("a join while draining got {other:?}, expected the `draining` error"),
        }
        let before = viewer.snapshot().packets_from(&sp);
        viewer
            .wait_until(MEDIA_TIMEOUT, "media while draining", |s| s.packets_from(&sp) >= before + MIN_PACKETS)
            .await?;
        if intact(&viewer.snapshot(), &sp).is_none() {
            bail!("corrupted payloads while draining");
        }
        println!("smoke: media keeps flowing while draining");
    }

    viewer.leave().await.context("viewer leaves")?;
    speaker.leave().await.context("speaker leaves")?;
    println!("smoke: passed in {:?}", started.elapsed());
    Ok(())
}
