//! The `dais` binary: HTTP pages, WebSocket signaling at `/ws` and the media plane on one UDP port.
//!
//! Wiring only: flags become a [`dais_media::MediaConfig`] and a [`dais_signaling::SignalingConfig`],
//! the media plane is adapted to signaling's [`dais_signaling::MediaPlane`] trait, and axum serves the
//! embedded pages and upgrades `/ws`. When both listeners are bound it prints one line,
//! `dais ready http=ADDR media=ADDR`, which scripts and tests wait for. SIGTERM drains: `/readyz`
//! turns 503, new joins get `draining`, connected clients get a `draining` notice, media keeps
//! flowing until everyone has left or `--drain-timeout` passes; then every WebSocket is closed
//! (`1001 going away`), the media worker stops and the process exits 0. Ctrl-C (SIGINT), or a second
//! signal during a drain, skips the wait.

mod adapter;
mod assets;
mod metrics;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use dais_signaling::{Frame, OutFrame, Signaling, SignalingConfig};
use futures_util::{SinkExt, StreamExt};
use tracing::info;

/// Dais: a real-time video SFU for live panels.
///
/// Speakers open /speak?room=R&name=N, viewers open /watch?room=R, the landing page is /.
/// Every media session shares the single UDP port given by --media-addr.
#[derive(Debug, Parser)]
#[command(name = "dais", version)]
struct Args {
    /// Address for HTTP and WebSocket signaling (pages at /, signaling at /ws). Port 0 picks a free port.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,

    /// UDP address that carries all media (ICE-lite, DTLS-SRTP) for every participant. Port 0 picks a
    /// free port. Bound to 0.0.0.0, every local interface address is advertised as a candidate.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:7882")]
    media_addr: SocketAddr,

    /// IP to advertise in ICE candidates instead of the bound one, e.g. the public IP of a host behind
    /// 1:1 NAT. Repeat for several addresses.
    #[arg(long = "public-ip", value_name = "IP")]
    public_ip: Vec<IpAddr>,

    /// Most participants (speakers and viewers) in one room.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_participants: usize,

    /// Longest graceful drain after SIGTERM, in seconds: media keeps flowing until every participant
    /// has left or this passes.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    drain_timeout: u64,

    /// Log filter in tracing's EnvFilter syntax, e.g. "info" or "dais_media=debug,info". RUST_LOG wins if set.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .context("--log is not a valid filter")?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let media = dais_media::MediaServer::start(dais_media::MediaConfig {
        bind: args.media_addr,
        advertise: args.public_ip.clone(),
    })
    .context("starting the media plane")?;
    let handle = media.handle();
    let signaling = Signaling::new(
        Arc::new(adapter::MediaAdapter::new(handle.clone())),
        SignalingConfig { max_participants: args.max_participants, ..SignalingConfig::default() },
    );

    let app = axum::Router::new()
        .route("/", get(|| async { assets::page("index.html") }))
        .route("/speak", get(|| async { assets::page("speak.html") }))
        .route("/watch", get(|| async { assets::page("watch.html") }))
        .route("/assets/{name}", get(|Path(name): Path<String>| async move { assets::page(&name) }))
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(AppState { signaling: signaling.clone(), media: handle.stats().clone() });

    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding HTTP {}", args.http_addr))?;
    let http_local = listener.local_addr()?;
    info!(http = %http_local, media = %handle.local_addr(), candidates = ?handle.candidates(), "dais started");
    println!("dais ready http={} media={}", http_local, handle.local_addr());

    let sig = signaling.clone();
    let drain_timeout = Duration::from_secs(args.drain_timeout);
    let mut signals = Signals::new()?;
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        if signals.next().await == Sig::Term {
            drain(&sig, &mut signals, drain_timeout).await;
        }
        info!("shutting down");
        sig.shutdown();
    });
    serve.await.context("HTTP server failed")?;
    // Connections were told to close; give the media worker a moment to send its goodbyes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::spawn_blocking(move || media.shutdown()).await.ok();
    info!("stopped");
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Int,
    Term,
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?,
        })
    }

    async fn next(&mut self) -> Sig {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Sig::Int,
                _ = self.term.recv() => Sig::Term,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Sig::Int
        }
    }
}

/// Graceful drain: no new joins, a notice to everyone, media flowing until the last participant
/// leaves, the timeout passes, or another signal arrives.
async fn drain(sig: &Signaling, signals: &mut Signals, timeout: Duration) {
    info!(timeout_s = timeout.as_secs(), participants = sig.participant_count(), "draining");
    sig.start_drain(timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if sig.participant_count() == 0 {
            info!("drain complete: no participants left");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                info!(participants = sig.participant_count(), "drain timeout reached");
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = signals.next() => {
                info!("second signal: ending the drain now");
                return;
            }
        }
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
struct AppState {
    signaling: Arc<Signaling>,
    media: Arc<dais_media::MediaStats>,
}

async fn readyz(State(st): State<AppState>) -> Response {
    if st.signaling.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    }
}

async fn metrics_page(State(st): State<AppState>) -> Response {
    let body = metrics::render(&st.signaling, &st.media);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn ws_upgrade(ws: WebSocketUpgrade, State(st): State<AppState>) -> Response {
    let sig = st.signaling;
    ws.max_message_size(dais_proto::MAX_MESSAGE_BYTES)
        .max_frame_size(dais_proto::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| serve_socket(sig, socket))
        .into_response()
}

async fn serve_socket(sig: Arc<Signaling>, socket: WebSocket) {
    let (sink, stream) = socket.split();
    let incoming = stream.map(|m| match m {
        Ok(Message::Text(t)) => Frame::Text(t.to_string()),
        Ok(Message::Binary(_)) => Frame::Binary,
        Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => Frame::Pong,
        Ok(Message::Close(_)) => Frame::Close,
        Err(e) => {
            let text = e.to_string();
            if text.contains("Message too long") || text.contains("Space limit exceeded") || text.contains("too big") {
                Frame::TooBig
            } else {
                Frame::Error(text)
            }
        }
    });
    let outgoing = sink.with(|f: OutFrame| {
        futures_util::future::ready(Ok::<_, axum::Error>(match f {
            OutFrame::Text(t) => Message::Text(t.into()),
            OutFrame::Ping => Message::Ping(Default::default()),
            OutFrame::Close(code, reason) => Message::Close(Some(CloseFrame { code, reason: reason.into() })),
        }))
    });
    sig.serve(incoming, outgoing).await;
}
