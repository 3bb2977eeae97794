//! The `dais` binary: HTTP pages, WebSocket signaling at `/ws` and the media plane on one UDP port.
//!
//! Wiring only: the configuration (defaults < `--config` file < `DAIS_*` environment < flags, see
//! [`config`]) becomes a [`dais_media::MediaConfig`] and a [`dais_signaling::SignalingConfig`],
//! the media plane is adapted to signaling's [`dais_signaling::MediaPlane`] trait, and axum serves the
//! embedded pages and upgrades `/ws`. When both listeners are bound it prints one line,
//! `dais ready http=ADDR media=ADDR tcp=ADDR|off`, which scripts and tests wait for. SIGTERM drains: `/readyz`
//! turns 503, new joins get `draining`, connected clients get a `draining` notice, media keeps
//! flowing until everyone has left or `--drain-timeout` passes; then every WebSocket is closed
//! (`1001 going away`), the media worker stops and the process exits 0. Ctrl-C (SIGINT), or a second
//! signal during a drain, skips the wait. `dais check-config` prints the effective configuration with
//! secrets redacted, and `dais token` mints a join token; both exit without serving.

mod adapter;
mod admin;
mod assets;
mod config;
mod http;
mod metrics;
mod whip;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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
use tracing::{info, warn};

use crate::config::{Config, LogFormat, Overrides, TcpAddr};

/// Dais: a real-time video SFU for live panels.
///
/// Speakers open /speak?room=R&name=N, viewers open /watch?room=R, the landing page is /.
/// Every media session shares the single UDP port given by --media-addr.
///
/// Settings come from flags, then DAIS_* environment variables, then the --config file, then defaults
/// (flags win). Secrets (auth.token_secret, auth.admin_key) come only from the file or the environment.
#[derive(Debug, Parser)]
#[command(name = "dais", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,

    /// TOML config file; every key is described in deploy/dais.example.toml. [env: DAIS_CONFIG]
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,

    /// Address for HTTP and WebSocket signaling (pages at /, signaling at /ws). Port 0 picks a free port.
    /// [default: 127.0.0.1:8080] [env: DAIS_HTTP_ADDR] [file: http.addr]
    #[arg(long, value_name = "IP:PORT")]
    http_addr: Option<SocketAddr>,

    /// UDP address that carries all media (ICE-lite, DTLS-SRTP) for every participant. Port 0 picks a
    /// free port. Bound to 0.0.0.0, every local interface address is advertised as a candidate.
    /// [default: 127.0.0.1:7882] [env: DAIS_MEDIA_ADDR] [file: media.addr]
    #[arg(long, value_name = "IP:PORT")]
    media_addr: Option<SocketAddr>,

    /// TCP address for ICE over TCP, for clients whose UDP is blocked: `auto` (the --media-addr IP with
    /// port 7881, or a free port when --media-addr has port 0), `off` (UDP only), or IP:PORT.
    /// [default: auto] [env: DAIS_MEDIA_TCP_ADDR] [file: media.tcp_addr]
    #[arg(long, value_name = "auto|off|IP:PORT")]
    media_tcp_addr: Option<TcpAddr>,

    /// IP to advertise in ICE candidates instead of the bound one, e.g. the public IP of a host behind
    /// 1:1 NAT. Repeat for several addresses. [env: DAIS_PUBLIC_IP, comma-separated] [file: media.public_ips]
    #[arg(long = "public-ip", value_name = "IP")]
    public_ip: Vec<IpAddr>,

    /// A TURN server whose credentials dais mints for each participant (coturn use-auth-secret, with
    /// the shared secret from DAIS_TURN_SECRET or ice.turn_secret), e.g.
    /// turn:turn.example.org:3478?transport=tcp. Repeat for several.
    /// [env: DAIS_TURN_URLS, comma-separated] [file: ice.turn_urls]
    #[arg(long = "turn-url", value_name = "URL")]
    turn_url: Vec<String>,

    /// Media worker threads; each owns the sessions placed on it. 0 means one per CPU core.
    /// [default: 0] [env: DAIS_MEDIA_WORKERS] [file: media.workers]
    #[arg(long, value_name = "N")]
    media_workers: Option<usize>,

    /// Most participants (speakers and viewers) in one room.
    /// [default: 10000] [env: DAIS_MAX_PARTICIPANTS] [file: rooms.max_participants]
    #[arg(long, value_name = "N")]
    max_participants: Option<usize>,

    /// How long a participant whose WebSocket was lost stays in its room, its media flowing, for its
    /// client to resume it on a new socket; 0 ends it with the socket.
    /// [default: 20] [env: DAIS_RESUME_GRACE] [file: rooms.resume_grace_secs]
    #[arg(long, value_name = "SECONDS")]
    resume_grace: Option<u64>,

    /// Longest graceful drain after SIGTERM, in seconds: media keeps flowing until every participant
    /// has left or this passes. [default: 30] [env: DAIS_DRAIN_TIMEOUT] [file: drain.timeout_secs]
    #[arg(long, value_name = "SECONDS")]
    drain_timeout: Option<u64>,

    /// Log filter in tracing's EnvFilter syntax, e.g. "info" or "dais_media=debug,info".
    /// [default: info] [env: DAIS_LOG, else RUST_LOG] [file: log.level]
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,

    /// Log line format on stderr: human-readable text, or one JSON object per line carrying the
    /// room and participant span fields. [default: text] [env: DAIS_LOG_FORMAT] [file: log.format]
    #[arg(long, value_name = "FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

impl Args {
    /// The flags as the top configuration layer.
    fn overrides(&self) -> Overrides {
        Overrides {
            http_addr: self.http_addr,
            max_connections: None,
            max_connections_per_ip: None,
            header_timeout_secs: None,
            request_timeout_secs: None,
            media_addr: self.media_addr,
            public_ips: (!self.public_ip.is_empty()).then(|| self.public_ip.clone()),
            media_workers: self.media_workers,
            tcp_addr: self.media_tcp_addr,
            max_participants: self.max_participants,
            resume_grace_secs: self.resume_grace,
            max_audio_streams: None,
            max_video_streams: None,
            drain_timeout_secs: self.drain_timeout,
            log_level: self.log.clone(),
            log_format: self.log_format,
            token_secret: None,
            admin_key: None,
            turn_urls: (!self.turn_url.is_empty()).then(|| self.turn_url.clone()),
            turn_secret: None,
            turn_ttl_secs: None,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Validate the configuration (file, environment and flags) and print the effective one as TOML,
    /// secrets redacted. Exits non-zero, naming the bad key, when it is invalid.
    CheckConfig,
    /// Print a join token (HS256 JWT) signed with auth.token_secret (or --secret).
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Room the token admits to.
    #[arg(long, value_name = "ROOM")]
    room: String,
    /// Role granted: speaker or viewer. A viewer token can never publish.
    #[arg(long, value_name = "ROLE", value_parser = parse_role)]
    role: dais_proto::Role,
    /// Display name (identity) of the participant; it replaces the name sent in `join`.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Lifetime: a number with an optional s, m, h or d suffix, e.g. 90s, 30m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Grant moderation: the holder may promote, demote, mute and kick participants, lower raised
    /// hands and delete chat messages over its WebSocket (the /moderate page), and sees raised hands.
    #[arg(long)]
    moderator: bool,
    /// The event's title, shown on every page of the room (1-120 bytes). A title configured for
    /// the room (`[rooms.titles]`) wins; otherwise the first token with one names the room.
    #[arg(long, value_name = "TITLE", value_parser = parse_title)]
    title: Option<String>,
    /// Signing secret instead of the configured auth.token_secret. Other local users can read it in
    /// the process list; prefer DAIS_TOKEN_SECRET.
    #[arg(long, value_name = "SECRET")]
    secret: Option<String>,
}

fn parse_title(s: &str) -> Result<String, String> {
    if dais_proto::valid_title(s) {
        Ok(s.to_owned())
    } else {
        Err("a title is 1-120 bytes without control characters".into())
    }
}

fn parse_role(s: &str) -> Result<dais_proto::Role, String> {
    match s {
        "speaker" => Ok(dais_proto::Role::Speaker),
        "viewer" => Ok(dais_proto::Role::Viewer),
        _ => Err("expected `speaker` or `viewer`".into()),
    }
}

/// `90`, `90s`, `30m`, `1h`, `2d`.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 90s, 30m or 1h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    match n.checked_mul(mult) {
        Some(0) => Err("the lifetime must be positive".into()),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("`{s}` is too long")),
    }
}

/// The STUN and TURN servers every `joined` carries.
fn ice_servers(ice: &config::IceConfig) -> dais_signaling::ice::IceServers {
    let servers = ice
        .servers
        .iter()
        .map(|s| dais_proto::IceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        })
        .collect();
    let turn = match (&ice.turn_secret, ice.turn_urls.is_empty()) {
        (Some(secret), false) => Some(dais_signaling::ice::TurnRest::new(
            ice.turn_urls.clone(),
            secret.clone(),
            Duration::from_secs(ice.turn_ttl_secs),
        )),
        _ => None,
    };
    dais_signaling::ice::IceServers { servers, turn }
}

/// The effective configuration, or one line on stderr naming the bad key and exit status 2.
fn load_config(args: &Args) -> Config {
    let flags = args.overrides();
    let vars = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    match flags.check_flags().and_then(|()| Config::load(args.config.as_deref(), vars, &flags)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dais: invalid configuration: {e}");
            std::process::exit(2);
        }
    }
}

/// `dais token`: print one token on stdout.
fn print_token(t: &TokenArgs, config: &Config) -> anyhow::Result<()> {
    let secret = match (&t.secret, &config.auth.token_secret) {
        (Some(s), _) => {
            config::check_secret("auth.token_secret", Some(s), &config::Source::Flag("--secret".into()))?;
            s
        }
        (None, Some(s)) => s,
        (None, None) => {
            anyhow::bail!("no token secret: set DAIS_TOKEN_SECRET, auth.token_secret in --config, or --secret")
        }
    };
    let mut claims = dais_signaling::token::TokenClaims::new(&t.room, &t.name, t.role, t.ttl);
    claims.moderator = t.moderator;
    claims.title = t.title.clone();
    let token = dais_signaling::token::mint(secret, &claims)?;
    println!("{token}");
    Ok(())
}

fn init_logging(log: &config::LogConfig) -> anyhow::Result<()> {
    // Already checked while loading the configuration.
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level).context("log.level is not a valid filter")?;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().with_current_span(true).with_span_list(true).init(),
    }
    Ok(())
}

/// How much nicer than the process the runtime's worker threads run (signaling, HTTP, admin,
/// metrics; the media workers keep the process's nice value). When the CPU is full, the scheduler
/// then runs a media worker first: a chat batch to 2,000 sockets is a few milliseconds of signaling
/// work, and at the same nice value it delayed media packets by as much (docs/benchmarks.md,
/// *Audience interaction*).
const RUNTIME_NICE: i32 = 5;

fn main() -> anyhow::Result<()> {
    // The media workers are started from this thread, inside `block_on`, so they keep its nice value.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().on_thread_start(lower_priority).build()?;
    rt.block_on(run())
}

/// Make the calling thread [`RUNTIME_NICE`] nicer than it is (at most 19); a refusal leaves it as
/// it is.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: nice takes no pointers and touches no memory; on Linux it changes the nice value of the
    // calling thread only (glibc's nice is setpriority(PRIO_PROCESS, 0, ...), and Linux keeps a nice
    // value per thread).
    let _ = unsafe { libc::nice(RUNTIME_NICE) };
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = load_config(&args);
    match &args.command {
        Some(Cmd::CheckConfig) => {
            println!("# dais check-config: valid. Effective configuration (flags > env > file > defaults).");
            print!("{}", config.to_redacted_toml());
            return Ok(());
        }
        Some(Cmd::Token(t)) => return print_token(t, &config),
        None => {}
    }
    init_logging(&config.log)?;
    if config.auth.token_secret.is_none() {
        warn!(
            "open development mode: no auth.token_secret (DAIS_TOKEN_SECRET) is set, so anyone can join any \
             room with any name and role. Set a secret and hand out `dais token` tokens in production."
        );
    }

    let media = dais_media::MediaServer::start(dais_media::MediaConfig {
        bind: config.media.addr,
        advertise: config.media.public_ips.clone(),
        workers: config.media.workers,
        tcp_bind: config.media.tcp_addr.resolve(config.media.addr),
        stream_limits: dais_media::StreamLimits {
            audio: config.rooms.max_audio_streams,
            video: config.rooms.max_video_streams,
        },
    })
    .context("starting the media plane")?;
    let tokens = match config.auth.token_secret.as_deref() {
        Some(secret) => Some(dais_signaling::token::TokenVerifier::new(secret).context("auth.token_secret")?),
        None => None,
    };
    let handle = media.handle();
    let signaling = Signaling::new(
        Arc::new(adapter::MediaAdapter::new(handle.clone())),
        SignalingConfig {
            max_participants: config.rooms.max_participants,
            tokens,
            ice: ice_servers(&config.ice),
            resume_grace: Duration::from_secs(config.rooms.resume_grace_secs),
            titles: config.rooms.titles.clone().into_iter().collect(),
            http_sessions_per_ip: config.http.max_connections_per_ip,
            ..SignalingConfig::default()
        },
    );

    let http_limits = connection_limits(&config.http);
    let http_stats = Arc::new(http::HttpStats::default());
    let app = axum::Router::new()
        .route("/", get(|| async { assets::page("index.html") }))
        .route("/speak", get(|| async { assets::page("speak.html") }))
        .route("/watch", get(|| async { assets::page("watch.html") }))
        .route("/moderate", get(|| async { assets::page("moderate.html") }))
        .route("/assets/{name}", get(|Path(name): Path<String>| async move { assets::page(&name) }))
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .merge(whip::routes())
        .merge(admin::routes(config.auth.admin_key.clone(), config.auth.token_secret.clone()))
        .with_state(AppState { signaling: signaling.clone(), media: handle.stats().clone(), http: http_stats.clone() });

    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("binding HTTP {}", config.http.addr))?;
    let http_local = listener.local_addr()?;
    info!(http = %http_local, media = %handle.local_addr(), candidates = ?handle.candidates(), "dais started");
    let tcp = handle.tcp_addr().map_or_else(|| "off".to_owned(), |a| a.to_string());
    println!("dais ready http={} media={} tcp={tcp}", http_local, handle.local_addr());

    let sig = signaling.clone();
    let drain_timeout = Duration::from_secs(config.drain.timeout_secs);
    let mut signals = Signals::new()?;
    let shutdown = async move {
        if signals.next().await == Sig::Term {
            drain(&sig, &mut signals, drain_timeout).await;
        }
        info!("shutting down");
        sig.shutdown();
    };
    http::serve(listener, app, http_limits, http_stats, shutdown).await.context("HTTP server failed")?;
    // Upgraded WebSockets outlive the HTTP server: wait until each has sent its close frame (a
    // connection counts until then), at most 2 s, so that exiting never cuts a goodbye short.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while signaling.metrics().connections > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the media worker a moment to send its goodbyes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::spawn_blocking(move || media.shutdown()).await.ok();
    info!("stopped");
    Ok(())
}

/// File descriptors kept back from HTTP connections: the probe lane, the media sockets, logs, and
/// TCP media connections' first few.
const RESERVED_FDS: u64 = http::PROBE_LANE as u64 + 64;

/// The HTTP connection limits, after raising the file-descriptor limit as far as it goes: at most
/// what the descriptors allow.
fn connection_limits(c: &config::HttpConfig) -> http::Limits {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let nofile = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => u64::MAX,
    };
    let by_fds = usize::try_from(nofile.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
    let total = c.max_connections.min(by_fds);
    // When the descriptors lower the total, the per-address cap shrinks by the same ratio, so one
    // address still cannot take every place (and a proxy configured with per_ip == total keeps it).
    let per_ip = if total < c.max_connections {
        let scaled = (c.max_connections_per_ip as u128 * total as u128 / c.max_connections as u128) as usize;
        scaled.clamp(1, total)
    } else {
        c.max_connections_per_ip.min(total)
    };
    info!(
        file_descriptors = nofile,
        max_connections = total,
        max_connections_per_ip = per_ip,
        "HTTP connection limits"
    );
    if total < c.max_connections {
        warn!(
            configured = c.max_connections,
            effective = total,
            "http.max_connections lowered to what the file-descriptor limit allows"
        );
    }
    http::Limits {
        total,
        per_ip,
        header_timeout: Duration::from_secs(c.header_timeout_secs),
        request_timeout: Duration::from_secs(c.request_timeout_secs),
    }
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
    // A huge configured timeout must not overflow the clock: cap it at a year.
    let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(365 * 24 * 3600));
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
    http: Arc<http::HttpStats>,
}

async fn readyz(State(st): State<AppState>) -> Response {
    if st.signaling.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    }
}

async fn metrics_page(State(st): State<AppState>) -> Response {
    let body = metrics::render(&st.signaling, &st.media, &st.http);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Read buffer of one signaling WebSocket, bytes.
const WS_READ_BUFFER: usize = 8 * 1024;

async fn ws_upgrade(ws: WebSocketUpgrade, State(st): State<AppState>) -> Response {
    let sig = st.signaling;
    // Signaling frames are small: an 8 KiB read buffer (tungstenite's default is 128 KiB, allocated and
    // zeroed per connection) keeps thousands of viewers cheap; larger frames still arrive, in more reads.
    ws.max_message_size(dais_proto::MAX_MESSAGE_BYTES)
        .max_frame_size(dais_proto::MAX_MESSAGE_BYTES)
        .read_buffer_size(WS_READ_BUFFER)
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
            } else if text.contains("UTF-8") || text.contains("utf-8") {
                Frame::InvalidUtf8
            } else {
                Frame::Error(text)
            }
        }
    });
    let outgoing = sink.with(|f: OutFrame| {
        futures_util::future::ready(Ok::<_, axum::Error>(match f {
            OutFrame::Text(t) => Message::Text(t.into()),
            // The room's chat feed: the same buffer for every connection (checked as UTF-8, not copied).
            OutFrame::Shared(b) => Message::Text(b.try_into().unwrap_or_default()),
            OutFrame::Ping => Message::Ping(Default::default()),
            OutFrame::Close(code, reason) => Message::Close(Some(CloseFrame { code, reason: reason.into() })),
        }))
    });
    sig.serve(incoming, outgoing).await;
}
