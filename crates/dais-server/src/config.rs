//! The `dais` configuration: built-in defaults, then a TOML file, then `DAIS_*` environment variables,
//! then command-line flags, each layer overriding the one before (flags > env > file > defaults).
//!
//! [`Config`] is both the file's schema (unknown keys are errors, a missing key keeps its default)
//! and the effective result. Every value is checked in the layer it comes from, so an error names the
//! dotted key (`rooms.max_participants`) and where the bad value came from (the file and its line, the
//! variable, or the flag); a [`Config`] that exists is valid. Secrets (`auth.*`) only come from the
//! file or the environment, never from flags (argv is visible to every local user), and
//! [`Config::redacted`] hides them for `dais check-config`. docs/operations.md and
//! deploy/dais.example.toml describe every key and must change with this module.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Shown instead of a secret by [`Config::redacted`].
pub const REDACTED: &str = "<redacted>";
/// Shortest accepted `auth.token_secret`, in bytes (HS256 wants a key at least as long as its hash).
pub const MIN_TOKEN_SECRET_BYTES: usize = 32;

/// The effective configuration; also the schema of the TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[http]`: pages, signaling and probes.
    pub http: HttpConfig,
    /// `[media]`: the UDP media port.
    pub media: MediaConfig,
    /// `[rooms]`: room limits.
    pub rooms: RoomsConfig,
    /// `[drain]`: graceful shutdown.
    pub drain: DrainConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[auth]`: join tokens and the admin API.
    pub auth: AuthConfig,
    /// `[ice]`: STUN and TURN servers handed to clients.
    pub ice: IceConfig,
}

/// `[ice]`: STUN and TURN servers handed to every participant in `joined` (`ice_servers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceConfig {
    /// `ice.servers`: entries handed to clients as they are (`urls`, optional `username` and
    /// `credential`), e.g. a public STUN server or a TURN server with fixed credentials.
    pub servers: Vec<IceServerConfig>,
    /// `ice.turn_urls`: TURN servers whose credentials are minted per participant (coturn
    /// `use-auth-secret`); needs `ice.turn_secret`.
    pub turn_urls: Vec<String>,
    /// `ice.turn_secret`: the secret shared with those TURN servers (`static-auth-secret`). A secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_secret: Option<String>,
    /// `ice.turn_ttl_secs`: how long a minted TURN credential is valid.
    pub turn_ttl_secs: u64,
}

impl Default for IceConfig {
    fn default() -> Self {
        IceConfig { servers: Vec::new(), turn_urls: Vec::new(), turn_secret: None, turn_ttl_secs: 86_400 }
    }
}

/// One `ice.servers` entry, shaped as WebRTC's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerConfig {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `http.addr`: TCP address of the pages, `/ws`, `/metrics` and the probes. Port 0 picks a free port.
    pub addr: SocketAddr,
    /// `http.max_connections`: open HTTP connections (WebSockets included), at least 1; lowered at
    /// start-up to what the process's file-descriptor limit allows.
    pub max_connections: usize,
    /// `http.max_connections_per_ip`: open connections from one IP address, at least 1 (scaled down
    /// with `max_connections` when the descriptors lower it). Behind a proxy every client shares its
    /// address: raise it.
    pub max_connections_per_ip: usize,
    /// `http.header_timeout_secs`: longest wait for a whole request head, at least 1.
    pub header_timeout_secs: u64,
    /// `http.request_timeout_secs`: longest a request may take after its head (body and answer), at
    /// least 1; then 408.
    pub request_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
        }
    }
}

/// `[media]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// `media.addr`: the one UDP address carrying every participant's media.
    pub addr: SocketAddr,
    /// `media.public_ips`: addresses advertised in ICE candidates instead of the bound one.
    pub public_ips: Vec<IpAddr>,
    /// `media.workers`: media worker threads, 0 for one per CPU core, at most [`MAX_MEDIA_WORKERS`].
    pub workers: usize,
    /// `media.tcp_addr`: where ICE over TCP listens (`auto`, `off` or an address).
    pub tcp_addr: TcpAddr,
}

/// `media.tcp_addr`: the TCP media listener (ICE over TCP, for clients whose UDP is blocked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpAddr {
    /// The IP of `media.addr` with port [`DEFAULT_TCP_PORT`], or port 0 when `media.addr` has port 0.
    #[default]
    Auto,
    /// No TCP listener and no TCP candidates: UDP only.
    Off,
    /// This address (port 0 picks a free one).
    At(SocketAddr),
}

/// The TCP media port `media.tcp_addr = "auto"` takes (beside UDP 7882, as LiveKit's 7881).
pub const DEFAULT_TCP_PORT: u16 = 7881;

impl TcpAddr {
    /// The address to bind for a UDP media address `media`, or `None` for UDP only.
    pub fn resolve(self, media: SocketAddr) -> Option<SocketAddr> {
        match self {
            TcpAddr::Auto => Some(SocketAddr::new(media.ip(), if media.port() == 0 { 0 } else { DEFAULT_TCP_PORT })),
            TcpAddr::Off => None,
            TcpAddr::At(a) => Some(a),
        }
    }
}

impl std::str::FromStr for TcpAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(TcpAddr::Auto),
            "off" => Ok(TcpAddr::Off),
            other => {
                other.parse().map(TcpAddr::At).map_err(|_| format!("`{s}` is not `auto`, `off` or an IP:PORT address"))
            }
        }
    }
}

impl fmt::Display for TcpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpAddr::Auto => f.write_str("auto"),
            TcpAddr::Off => f.write_str("off"),
            TcpAddr::At(a) => write!(f, "{a}"),
        }
    }
}

impl Serialize for TcpAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TcpAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Highest accepted `media.workers`.
pub const MAX_MEDIA_WORKERS: usize = dais_media::MAX_WORKERS;

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7882)),
            public_ips: Vec::new(),
            workers: 0,
            tcp_addr: TcpAddr::Auto,
        }
    }
}

/// `[rooms]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// `rooms.max_participants`: most participants (speakers and viewers) in one room, at least 1.
    pub max_participants: usize,
    /// `rooms.resume_grace_secs`: how long a participant whose WebSocket was lost stays in its room
    /// (its media flowing) for a `resume`; 0 ends it with the socket.
    pub resume_grace_secs: u64,
    /// `rooms.max_audio_streams`: most audio streams one publisher may send, at most [`MAX_STREAMS`].
    pub max_audio_streams: usize,
    /// `rooms.max_video_streams`: most video streams one publisher may send (camera and screen), at
    /// most [`MAX_STREAMS`].
    pub max_video_streams: usize,
    /// `[rooms.titles]`: the event title of a room, by room name (`"panel-1" = "Keynote"`), 1 to
    /// 120 bytes without control characters. A listed room shows it whatever its tokens say.
    pub titles: std::collections::BTreeMap<String, String>,
}

/// Highest accepted `rooms.max_audio_streams` and `rooms.max_video_streams`.
pub const MAX_STREAMS: usize = 16;

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            max_participants: 10_000,
            resume_grace_secs: 20,
            max_audio_streams: 1,
            max_video_streams: 2,
            titles: std::collections::BTreeMap::new(),
        }
    }
}

/// `[drain]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// `drain.timeout_secs`: longest graceful drain after SIGTERM.
    pub timeout_secs: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { timeout_secs: 30 }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `log.level`: a tracing `EnvFilter`, e.g. `info` or `dais_media=debug,info`.
    pub level: String,
    /// `log.format`: `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (room, participant).
    Json,
}

/// `[auth]`. Both keys are secrets: redacted by `check-config`, never logged, never flags.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `auth.token_secret`: HS256 key of join tokens. Unset means open development mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
    /// `auth.admin_key`: bearer key of the admin HTTP API. Unset disables the admin API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
}

/// Values from one layer above the file: the environment or the flags. `None` keeps the value below.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `http.addr`.
    pub http_addr: Option<SocketAddr>,
    /// `http.max_connections`.
    pub max_connections: Option<usize>,
    /// `http.max_connections_per_ip`.
    pub max_connections_per_ip: Option<usize>,
    /// `http.header_timeout_secs`.
    pub header_timeout_secs: Option<u64>,
    /// `http.request_timeout_secs`.
    pub request_timeout_secs: Option<u64>,
    /// `media.addr`.
    pub media_addr: Option<SocketAddr>,
    /// `media.public_ips` (replaces the whole list).
    pub public_ips: Option<Vec<IpAddr>>,
    /// `media.workers`.
    pub media_workers: Option<usize>,
    /// `media.tcp_addr`.
    pub tcp_addr: Option<TcpAddr>,
    /// `rooms.max_participants`.
    pub max_participants: Option<usize>,
    /// `rooms.resume_grace_secs`.
    pub resume_grace_secs: Option<u64>,
    /// `rooms.max_audio_streams`.
    pub max_audio_streams: Option<usize>,
    /// `rooms.max_video_streams`.
    pub max_video_streams: Option<usize>,
    /// `drain.timeout_secs`.
    pub drain_timeout_secs: Option<u64>,
    /// `log.level`.
    pub log_level: Option<String>,
    /// `log.format`.
    pub log_format: Option<LogFormat>,
    /// `auth.token_secret`.
    pub token_secret: Option<String>,
    /// `auth.admin_key`.
    pub admin_key: Option<String>,
    /// `ice.turn_urls` (replaces the whole list).
    pub turn_urls: Option<Vec<String>>,
    /// `ice.turn_secret`.
    pub turn_secret: Option<String>,
    /// `ice.turn_ttl_secs`.
    pub turn_ttl_secs: Option<u64>,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The TOML file, and the 1-based line when known.
    File(PathBuf, Option<usize>),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p, Some(line)) => write!(f, "config file {}, line {line}", p.display()),
            Source::File(p, None) => write!(f, "config file {}", p.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Why the configuration could not be loaded. Each names one key or file and its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {detail}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        detail: String,
    },
    /// The file is not valid TOML.
    #[error("{origin}: not valid TOML: {detail}")]
    Syntax {
        /// The file.
        origin: Source,
        /// The parser's message.
        detail: String,
    },
    /// A key the schema does not have.
    #[error("{origin}: unknown key `{key}`{hint}")]
    UnknownKey {
        /// Where.
        origin: Source,
        /// The dotted key.
        key: String,
        /// What was expected instead, e.g. ` (expected one of ...)`.
        hint: String,
    },
    /// A known key with a bad value.
    #[error("{origin}: invalid value for `{key}`: {detail}")]
    Invalid {
        /// Where the value came from.
        origin: Source,
        /// The dotted key.
        key: String,
        /// What is wrong, never the value of a secret.
        detail: String,
    },
}

/// Environment variables and the keys they set. Other `DAIS_*` variables are ignored, because
/// platforms inject their own (Kubernetes adds `DAIS_PORT`, `DAIS_SERVICE_HOST`... for a Service
/// named `dais`).
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("DAIS_HTTP_ADDR", "http.addr"),
    ("DAIS_MAX_CONNECTIONS", "http.max_connections"),
    ("DAIS_MAX_CONNECTIONS_PER_IP", "http.max_connections_per_ip"),
    ("DAIS_HEADER_TIMEOUT", "http.header_timeout_secs"),
    ("DAIS_REQUEST_TIMEOUT", "http.request_timeout_secs"),
    ("DAIS_MEDIA_ADDR", "media.addr"),
    ("DAIS_PUBLIC_IP", "media.public_ips"),
    ("DAIS_MEDIA_WORKERS", "media.workers"),
    ("DAIS_MEDIA_TCP_ADDR", "media.tcp_addr"),
    ("DAIS_MAX_PARTICIPANTS", "rooms.max_participants"),
    ("DAIS_RESUME_GRACE", "rooms.resume_grace_secs"),
    ("DAIS_MAX_AUDIO_STREAMS", "rooms.max_audio_streams"),
    ("DAIS_MAX_VIDEO_STREAMS", "rooms.max_video_streams"),
    ("DAIS_DRAIN_TIMEOUT", "drain.timeout_secs"),
    ("DAIS_LOG", "log.level"),
    ("DAIS_LOG_FORMAT", "log.format"),
    ("DAIS_TOKEN_SECRET", "auth.token_secret"),
    ("DAIS_ADMIN_KEY", "auth.admin_key"),
    ("DAIS_TURN_URLS", "ice.turn_urls"),
    ("DAIS_TURN_SECRET", "ice.turn_secret"),
    ("DAIS_TURN_TTL", "ice.turn_ttl_secs"),
];

/// The variable naming the config file when `--config` is absent.
pub const ENV_CONFIG: &str = "DAIS_CONFIG";

impl Config {
    /// Parse and check a TOML document; missing keys keep their defaults.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| text[..s.start.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1)
        };
        let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
            origin: Source::File(path.to_owned(), line_of(e.span())),
            detail: e.message().to_owned(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let parent = e.path().to_string();
            let inner = e.into_inner();
            let source = Source::File(path.to_owned(), line_of(inner.span()));
            let msg = inner.message();
            if let Some(rest) = msg.strip_prefix("unknown field `") {
                let (field, after) = rest.split_once('`').unwrap_or((rest, ""));
                // The path already ends with the unknown field; keep it robust if it does not.
                let key = if parent == field || parent.ends_with(&format!(".{field}")) {
                    parent
                } else if parent == "." || parent.is_empty() {
                    field.to_owned()
                } else {
                    format!("{parent}.{field}")
                };
                let hint = after.trim_start_matches(',').trim();
                let hint = if hint.is_empty() { String::new() } else { format!(" ({hint})") };
                ConfigError::UnknownKey { origin: source, key, hint }
            } else {
                ConfigError::Invalid { origin: source, key: parent, detail: msg.to_owned() }
            }
        })?;
        let source = Source::File(path.to_owned(), None);
        check_max_participants(config.rooms.max_participants, &source)?;
        check_at_least_one("http.max_connections", config.http.max_connections as u64, &source)?;
        check_at_least_one("http.max_connections_per_ip", config.http.max_connections_per_ip as u64, &source)?;
        check_at_least_one("http.header_timeout_secs", config.http.header_timeout_secs, &source)?;
        check_at_least_one("http.request_timeout_secs", config.http.request_timeout_secs, &source)?;
        check_streams("rooms.max_audio_streams", config.rooms.max_audio_streams, &source)?;
        check_streams("rooms.max_video_streams", config.rooms.max_video_streams, &source)?;
        check_media_workers(config.media.workers, &source)?;
        check_titles(&config.rooms.titles, &source)?;
        check_log_level(&config.log.level, &source)?;
        check_secret("auth.token_secret", config.auth.token_secret.as_deref(), &source)?;
        check_secret("auth.admin_key", config.auth.admin_key.as_deref(), &source)?;
        check_secret("ice.turn_secret", config.ice.turn_secret.as_deref(), &source)?;
        for s in &config.ice.servers {
            check_ice_urls("ice.servers", &s.urls, &source)?;
        }
        check_ice_urls("ice.turn_urls", &config.ice.turn_urls, &source)?;
        Ok(config)
    }

    /// Read and parse a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.to_owned(), detail: e.to_string() })?;
        Config::from_toml(&text, path)
    }

    /// Apply one layer of overrides (already checked when it was built).
    pub fn apply(&mut self, o: &Overrides) {
        let o = o.clone();
        if let Some(v) = o.http_addr {
            self.http.addr = v;
        }
        if let Some(v) = o.max_connections {
            self.http.max_connections = v;
        }
        if let Some(v) = o.max_connections_per_ip {
            self.http.max_connections_per_ip = v;
        }
        if let Some(v) = o.header_timeout_secs {
            self.http.header_timeout_secs = v;
        }
        if let Some(v) = o.request_timeout_secs {
            self.http.request_timeout_secs = v;
        }
        if let Some(v) = o.media_addr {
            self.media.addr = v;
        }
        if let Some(v) = o.public_ips {
            self.media.public_ips = v;
        }
        if let Some(v) = o.media_workers {
            self.media.workers = v;
        }
        if let Some(v) = o.tcp_addr {
            self.media.tcp_addr = v;
        }
        if let Some(v) = o.max_participants {
            self.rooms.max_participants = v;
        }
        if let Some(v) = o.resume_grace_secs {
            self.rooms.resume_grace_secs = v;
        }
        if let Some(v) = o.max_audio_streams {
            self.rooms.max_audio_streams = v;
        }
        if let Some(v) = o.max_video_streams {
            self.rooms.max_video_streams = v;
        }
        if let Some(v) = o.drain_timeout_secs {
            self.drain.timeout_secs = v;
        }
        if let Some(v) = o.log_level {
            self.log.level = v;
        }
        if let Some(v) = o.log_format {
            self.log.format = v;
        }
        if let Some(v) = o.token_secret {
            self.auth.token_secret = Some(v);
        }
        if let Some(v) = o.admin_key {
            self.auth.admin_key = Some(v);
        }
        if let Some(v) = o.turn_urls {
            self.ice.turn_urls = v;
        }
        if let Some(v) = o.turn_secret {
            self.ice.turn_secret = Some(v);
        }
        if let Some(v) = o.turn_ttl_secs {
            self.ice.turn_ttl_secs = v;
        }
    }

    /// The precedence rule in one place: defaults (or the file) < env < flags.
    pub fn merge(file: Option<Config>, env: &Overrides, flags: &Overrides) -> Config {
        let mut c = file.unwrap_or_default();
        c.apply(env);
        c.apply(flags);
        c
    }

    /// Load the effective configuration: `config_path` (the `--config` flag, else `DAIS_CONFIG`),
    /// the environment `vars`, then `flags`.
    pub fn load<I>(config_path: Option<&Path>, vars: I, flags: &Overrides) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let path = config_path
            .map(Path::to_owned)
            .or_else(|| vars.iter().find(|(k, v)| k == ENV_CONFIG && !v.is_empty()).map(|(_, v)| PathBuf::from(v)));
        let file = path.as_deref().map(Config::from_file).transpose()?;
        let env = Overrides::from_env(vars)?;
        let config = Config::merge(file, &env, flags);
        config.check_whole()?;
        Ok(config)
    }

    /// A copy with every secret replaced by [`REDACTED`].
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let secrets = [&mut c.auth.token_secret, &mut c.auth.admin_key, &mut c.ice.turn_secret];
        for s in secrets.into_iter().flatten() {
            *s = REDACTED.to_owned();
        }
        c
    }

    /// The redacted configuration as a TOML document.
    pub fn to_redacted_toml(&self) -> String {
        // Plain structs of strings, numbers and lists always serialize.
        toml::to_string(&self.redacted()).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl Overrides {
    /// Read the `DAIS_*` variables of [`ENV_KEYS`] from `vars`; an empty value counts as unset.
    /// `RUST_LOG` sets `log.level` when `DAIS_LOG` does not.
    pub fn from_env<I>(vars: I) -> Result<Overrides, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut o = Overrides::default();
        let mut rust_log = None;
        for (var, value) in vars {
            if var == "RUST_LOG" && !value.is_empty() {
                rust_log = Some(value);
                continue;
            }
            let Some((_, key)) = ENV_KEYS.iter().find(|(v, _)| *v == var) else { continue };
            if value.is_empty() {
                continue;
            }
            let source = Source::Env(var.clone());
            let bad = |detail: String| ConfigError::Invalid { origin: source.clone(), key: (*key).to_owned(), detail };
            match var.as_str() {
                "DAIS_HTTP_ADDR" => o.http_addr = Some(parse_addr(&value).map_err(bad)?),
                "DAIS_MAX_CONNECTIONS"
                | "DAIS_MAX_CONNECTIONS_PER_IP"
                | "DAIS_HEADER_TIMEOUT"
                | "DAIS_REQUEST_TIMEOUT" => {
                    let n = value.trim().parse::<u64>().map_err(|_| bad(format!("`{value}` is not a number")))?;
                    check_at_least_one(key, n, &source)?;
                    match var.as_str() {
                        "DAIS_MAX_CONNECTIONS" => o.max_connections = Some(n as usize),
                        "DAIS_MAX_CONNECTIONS_PER_IP" => o.max_connections_per_ip = Some(n as usize),
                        "DAIS_HEADER_TIMEOUT" => o.header_timeout_secs = Some(n),
                        _ => o.request_timeout_secs = Some(n),
                    }
                }
                "DAIS_MEDIA_ADDR" => o.media_addr = Some(parse_addr(&value).map_err(bad)?),
                "DAIS_MEDIA_TCP_ADDR" => o.tcp_addr = Some(value.parse().map_err(bad)?),
                "DAIS_PUBLIC_IP" => {
                    let ips = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse::<IpAddr>().map_err(|_| format!("`{s}` is not an IP address")))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(bad)?;
                    o.public_ips = Some(ips);
                }
                "DAIS_MEDIA_WORKERS" => {
                    let n = value.trim().parse::<usize>().map_err(|_| bad(format!("`{value}` is not a number")))?;
                    check_media_workers(n, &source)?;
                    o.media_workers = Some(n);
                }
                "DAIS_MAX_PARTICIPANTS" => {
                    let n = value.trim().parse::<usize>().map_err(|_| bad(format!("`{value}` is not a number")))?;
                    check_max_participants(n, &source)?;
                    o.max_participants = Some(n);
                }
                "DAIS_DRAIN_TIMEOUT" => {
                    let n = value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| bad(format!("`{value}` is not a whole number of seconds")))?;
                    o.drain_timeout_secs = Some(n);
                }
                "DAIS_LOG" => {
                    check_log_level(&value, &source)?;
                    o.log_level = Some(value);
                }
                "DAIS_LOG_FORMAT" => {
                    let f = match value.trim() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        other => return Err(bad(format!("`{other}` is neither `text` nor `json`"))),
                    };
                    o.log_format = Some(f);
                }
                "DAIS_TOKEN_SECRET" => {
                    check_secret(key, Some(&value), &source)?;
                    o.token_secret = Some(value);
                }
                "DAIS_ADMIN_KEY" => {
                    check_secret(key, Some(&value), &source)?;
                    o.admin_key = Some(value);
                }
                "DAIS_TURN_URLS" => {
                    let urls: Vec<String> =
                        value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
                    check_ice_urls(key, &urls, &source)?;
                    o.turn_urls = Some(urls);
                }
                "DAIS_TURN_SECRET" => {
                    check_secret(key, Some(&value), &source)?;
                    o.turn_secret = Some(value);
                }
                "DAIS_MAX_AUDIO_STREAMS" | "DAIS_MAX_VIDEO_STREAMS" => {
                    let n = value.trim().parse::<usize>().map_err(|_| bad(format!("`{value}` is not a number")))?;
                    check_streams(key, n, &source)?;
                    if var == "DAIS_MAX_AUDIO_STREAMS" {
                        o.max_audio_streams = Some(n);
                    } else {
                        o.max_video_streams = Some(n);
                    }
                }
                "DAIS_RESUME_GRACE" => {
                    let n = value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| bad(format!("`{value}` is not a whole number of seconds")))?;
                    o.resume_grace_secs = Some(n);
                }
                "DAIS_TURN_TTL" => {
                    let n = value.trim().parse::<u64>().map_err(|_| bad(format!("`{value}` is not a number")))?;
                    o.turn_ttl_secs = Some(n);
                }
                _ => {}
            }
        }
        if o.log_level.is_none() {
            if let Some(level) = rust_log {
                check_log_level(&level, &Source::Env("RUST_LOG".into()))?;
                o.log_level = Some(level);
            }
        }
        Ok(o)
    }

    /// Check the values that flags carry beyond their types (clap already parsed those).
    pub fn check_flags(&self) -> Result<(), ConfigError> {
        if let Some(n) = self.max_participants {
            check_max_participants(n, &Source::Flag("--max-participants".into()))?;
        }
        if let Some(n) = self.media_workers {
            check_media_workers(n, &Source::Flag("--media-workers".into()))?;
        }
        if let Some(level) = &self.log_level {
            check_log_level(level, &Source::Flag("--log".into()))?;
        }
        if let Some(urls) = &self.turn_urls {
            check_ice_urls("ice.turn_urls", urls, &Source::Flag("--turn-url".into()))?;
        }
        Ok(())
    }
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value.trim().parse().map_err(|_| format!("`{value}` is not an IP:PORT address"))
}

fn check_max_participants(n: usize, source: &Source) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(ConfigError::Invalid {
            origin: source.clone(),
            key: "rooms.max_participants".into(),
            detail: "must be at least 1".into(),
        });
    }
    Ok(())
}

fn check_titles(titles: &std::collections::BTreeMap<String, String>, source: &Source) -> Result<(), ConfigError> {
    for (room, title) in titles {
        let bad = |detail: &str| ConfigError::Invalid {
            origin: source.clone(),
            key: format!("rooms.titles.{room}"),
            detail: detail.into(),
        };
        if !dais_proto::valid_room(room) {
            return Err(bad("not a room name (1-64 letters, digits, '-', '_' or '.')"));
        }
        if !dais_proto::valid_title(title) {
            return Err(bad("a title is 1-120 bytes without control characters"));
        }
    }
    Ok(())
}

fn check_at_least_one(key: &str, n: u64, source: &Source) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(ConfigError::Invalid {
            origin: source.clone(),
            key: key.into(),
            detail: "must be at least 1".into(),
        });
    }
    Ok(())
}

fn check_streams(key: &str, n: usize, source: &Source) -> Result<(), ConfigError> {
    if n > MAX_STREAMS {
        return Err(ConfigError::Invalid {
            origin: source.clone(),
            key: key.into(),
            detail: format!("must be at most {MAX_STREAMS}"),
        });
    }
    Ok(())
}

fn check_media_workers(n: usize, source: &Source) -> Result<(), ConfigError> {
    if n > MAX_MEDIA_WORKERS {
        return Err(ConfigError::Invalid {
            origin: source.clone(),
            key: "media.workers".into(),
            detail: format!("must be at most {MAX_MEDIA_WORKERS} (0 means one per CPU core)"),
        });
    }
    Ok(())
}

fn check_log_level(level: &str, source: &Source) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::try_new(level).map(|_| ()).map_err(|e| ConfigError::Invalid {
        origin: source.clone(),
        key: "log.level".into(),
        detail: format!("`{level}` is not a tracing filter: {e}"),
    })
}

/// Secrets are checked for shape only; their values never appear in an error.
/// Every URL of an ICE server list must be `stun:`, `turn:` or `turns:`.
fn check_ice_urls(key: &str, urls: &[String], source: &Source) -> Result<(), ConfigError> {
    match urls.iter().find(|u| !["stun:", "turn:", "turns:"].iter().any(|s| u.starts_with(s))) {
        Some(u) => Err(ConfigError::Invalid {
            origin: source.clone(),
            key: key.to_owned(),
            detail: format!("`{u}` is not a stun:, turn: or turns: URL"),
        }),
        None => Ok(()),
    }
}

impl Config {
    /// The checks that span keys, on the configuration that all layers made.
    pub fn check_whole(&self) -> Result<(), ConfigError> {
        if !self.ice.turn_urls.is_empty() && self.ice.turn_secret.is_none() {
            return Err(ConfigError::Invalid {
                origin: Source::Env("DAIS_TURN_SECRET".into()),
                key: "ice.turn_secret".into(),
                detail: "ice.turn_urls are set, so the TURN servers' shared secret is needed too".into(),
            });
        }
        Ok(())
    }
}

pub fn check_secret(key: &str, value: Option<&str>, source: &Source) -> Result<(), ConfigError> {
    let Some(value) = value else { return Ok(()) };
    let bad = |detail: String| ConfigError::Invalid { origin: source.clone(), key: key.to_owned(), detail };
    if value.trim().is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if key == "auth.token_secret" && value.len() < MIN_TOKEN_SECRET_BYTES {
        return Err(bad(format!(
            "must be at least {MIN_TOKEN_SECRET_BYTES} bytes (it is {}); e.g. `openssl rand -hex 32`",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn file(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("dais.toml"))
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = Config::merge(None, &Overrides::default(), &Overrides::default());
        assert_eq!(c, Config::default());
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.media.addr.to_string(), "127.0.0.1:7882");
        assert_eq!((c.rooms.max_participants, c.drain.timeout_secs), (10_000, 30));
        assert_eq!((c.log.level.as_str(), c.log.format), ("info", LogFormat::Text));
        assert_eq!(c.auth, AuthConfig::default());
    }

    #[test]
    fn room_titles_are_read_and_checked() {
        let f = file("[rooms.titles]\n\"panel-1\" = \"Opening keynote\"\n").expect("valid");
        assert_eq!(f.rooms.titles.get("panel-1").map(String::as_str), Some("Opening keynote"));
        let bad_room = file("[rooms.titles]\n\"no spaces\" = \"x\"\n").expect_err("a bad room name");
        assert!(bad_room.to_string().contains("rooms.titles.no spaces"), "{bad_room}");
        let long = format!("[rooms.titles]\nr = \"{}\"\n", "x".repeat(dais_proto::MAX_TITLE_BYTES + 1));
        let too_long = file(&long).expect_err("too long");
        assert!(too_long.to_string().contains("1-120 bytes"), "{too_long}");
    }

    #[test]
    fn file_beats_defaults_and_keeps_the_rest() {
        let f = file("[rooms]\nmax_participants = 7\n[log]\nformat = \"json\"\n").expect("valid");
        let c = Config::merge(Some(f), &Overrides::default(), &Overrides::default());
        assert_eq!(c.rooms.max_participants, 7);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.http, HttpConfig::default());
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn env_beats_file_and_flag_beats_env() {
        let f = file("[rooms]\nmax_participants = 7\n[drain]\ntimeout_secs = 5\n[http]\naddr = \"0.0.0.0:1\"\n")
            .expect("valid");
        let e = Overrides::from_env(env(&[("DAIS_MAX_PARTICIPANTS", "8"), ("DAIS_DRAIN_TIMEOUT", "6")]))
            .expect("valid env");
        let flags = Overrides { max_participants: Some(9), ..Default::default() };
        let c = Config::merge(Some(f), &e, &flags);
        assert_eq!(c.rooms.max_participants, 9, "flag > env > file");
        assert_eq!(c.drain.timeout_secs, 6, "env > file");
        assert_eq!(c.http.addr.to_string(), "0.0.0.0:1", "file > default");
        assert_eq!(c.media.addr, MediaConfig::default().addr, "default");
    }

    #[test]
    fn env_parses_every_key() {
        let e = Overrides::from_env(env(&[
            ("DAIS_HTTP_ADDR", "0.0.0.0:80"),
            ("DAIS_MEDIA_ADDR", "0.0.0.0:7882"),
            ("DAIS_PUBLIC_IP", "203.0.113.7, 2001:db8::1"),
            ("DAIS_MEDIA_WORKERS", "3"),
            ("DAIS_MAX_PARTICIPANTS", "50"),
            ("DAIS_DRAIN_TIMEOUT", "120"),
            ("DAIS_LOG", "debug"),
            ("DAIS_LOG_FORMAT", "json"),
            ("DAIS_TOKEN_SECRET", SECRET),
            ("DAIS_ADMIN_KEY", "adm"),
            ("DAIS_SERVICE_HOST", "10.0.0.1"),
            ("PATH", "/bin"),
        ]))
        .expect("valid env");
        let c = Config::merge(None, &e, &Overrides::default());
        assert_eq!(c.http.addr.to_string(), "0.0.0.0:80");
        assert_eq!(c.media.public_ips.len(), 2);
        assert_eq!(c.media.workers, 3);
        assert_eq!((c.rooms.max_participants, c.drain.timeout_secs), (50, 120));
        assert_eq!((c.log.level.as_str(), c.log.format), ("debug", LogFormat::Json));
        assert_eq!(c.auth.token_secret.as_deref(), Some(SECRET));
        assert_eq!(c.auth.admin_key.as_deref(), Some("adm"));
    }

    #[test]
    fn rust_log_is_a_fallback_for_dais_log() {
        let e = Overrides::from_env(env(&[("RUST_LOG", "warn")])).expect("valid");
        assert_eq!(e.log_level.as_deref(), Some("warn"));
        let e = Overrides::from_env(env(&[("RUST_LOG", "warn"), ("DAIS_LOG", "debug")])).expect("valid");
        assert_eq!(e.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn errors_name_the_key_and_the_source() {
        let msg = |r: Result<Config, ConfigError>| r.expect_err("must fail").to_string();
        let m = msg(file("[rooms]\nmax_participant = 3\n"));
        assert!(m.contains("unknown key `rooms.max_participant`") && m.contains("dais.toml, line 2"), "{m}");
        let m = msg(file("colour = 1\n"));
        assert!(m.contains("unknown key `colour`"), "{m}");
        let m = msg(file("[rooms]\nmax_participants = \"many\"\n"));
        assert!(m.contains("`rooms.max_participants`") && m.contains("dais.toml"), "{m}");
        let m = msg(file("[http]\naddr = \"nowhere\"\n"));
        assert!(m.contains("`http.addr`"), "{m}");
        let m = msg(file("[rooms]\nmax_participants = 0\n"));
        assert!(m.contains("`rooms.max_participants`") && m.contains("at least 1"), "{m}");
        let m = msg(file("[media]\nworkers = 65\n"));
        assert!(m.contains("`media.workers`") && m.contains("at most 64"), "{m}");
        let m = msg(file("[media]\nworkers = -1\n"));
        assert!(m.contains("`media.workers`"), "{m}");
        let m = msg(file("[log]\nformat = \"xml\"\n"));
        assert!(m.contains("`log.format`"), "{m}");
        let m = msg(file("[auth]\ntoken_secret = \"short\"\n"));
        assert!(m.contains("`auth.token_secret`") && !m.contains("short\""), "{m}");
        let m = msg(file("[rooms\n"));
        assert!(m.contains("not valid TOML"), "{m}");

        let env_err = |pairs: &[(&str, &str)]| Overrides::from_env(env(pairs)).expect_err("must fail").to_string();
        let m = env_err(&[("DAIS_MAX_PARTICIPANTS", "lots")]);
        assert!(m.contains("environment variable DAIS_MAX_PARTICIPANTS") && m.contains("rooms.max_participants"));
        let m = env_err(&[("DAIS_MEDIA_WORKERS", "1000")]);
        assert!(m.contains("environment variable DAIS_MEDIA_WORKERS") && m.contains("media.workers"), "{m}");
        let m = env_err(&[("DAIS_PUBLIC_IP", "1.2.3.4,nope")]);
        assert!(m.contains("DAIS_PUBLIC_IP") && m.contains("`nope`"), "{m}");
        let m = env_err(&[("DAIS_LOG_FORMAT", "xml")]);
        assert!(m.contains("DAIS_LOG_FORMAT") && m.contains("log.format"), "{m}");
        let m = env_err(&[("DAIS_TOKEN_SECRET", "tiny-secret")]);
        assert!(m.contains("auth.token_secret") && !m.contains("tiny-secret"), "{m}");

        let flags = Overrides { max_participants: Some(0), ..Default::default() };
        let m = flags.check_flags().expect_err("must fail").to_string();
        assert!(m.contains("flag --max-participants") && m.contains("rooms.max_participants"), "{m}");
        let flags = Overrides { media_workers: Some(65), ..Default::default() };
        let m = flags.check_flags().expect_err("must fail").to_string();
        assert!(m.contains("flag --media-workers") && m.contains("media.workers"), "{m}");
    }

    #[test]
    fn redaction_hides_secrets_only() {
        let mut c = Config::default();
        c.auth.token_secret = Some(SECRET.into());
        c.auth.admin_key = Some("admin-key-value".into());
        let text = c.to_redacted_toml();
        assert!(!text.contains(SECRET) && !text.contains("admin-key-value"), "{text}");
        assert_eq!(text.matches(REDACTED).count(), 2, "{text}");
        assert!(text.contains("max_participants = 10000"), "{text}");
        // What check-config prints is itself a valid config file (secrets aside).
        let back = file(&text.replace(REDACTED, SECRET)).expect("printed config parses");
        assert_eq!(back.rooms, c.rooms);
    }

    #[test]
    fn ice_servers_and_turn_secrets() {
        let msg = |r: Result<Config, ConfigError>| r.expect_err("must fail").to_string();
        let c = file(
            "[ice]\nservers = [{ urls = [\"stun:stun.example.org:3478\"] }]\n\
             turn_urls = [\"turn:t.example.org:3478?transport=tcp\"]\nturn_secret = \"shh\"\n",
        )
        .expect("parses");
        assert_eq!(c.ice.servers[0].urls, vec!["stun:stun.example.org:3478".to_owned()]);
        assert_eq!(c.ice.turn_ttl_secs, 86_400, "the default TTL");
        assert!(!c.to_redacted_toml().contains("shh"), "the TURN secret is redacted");
        let m = msg(file("[ice]\nturn_urls = [\"http://nope\"]\n"));
        assert!(m.contains("`ice.turn_urls`") && m.contains("http://nope"), "{m}");
        // TURN URLs without the shared secret cannot mint credentials: a whole-config error.
        let flags = Overrides { turn_urls: Some(vec!["turn:t:3478".into()]), ..Default::default() };
        let m = Config::load(None, env(&[]), &flags).expect_err("must fail").to_string();
        assert!(m.contains("ice.turn_secret"), "{m}");
        let ok = Config::load(None, env(&[("DAIS_TURN_SECRET", "shh")]), &flags).expect("secret from the environment");
        assert_eq!(ok.ice.turn_urls, vec!["turn:t:3478".to_owned()]);
        let m = Overrides::from_env(env(&[("DAIS_TURN_URLS", "turn:a,ftp:b")])).expect_err("must fail").to_string();
        assert!(m.contains("DAIS_TURN_URLS") && m.contains("ftp:b"), "{m}");
    }

    #[test]
    fn tcp_addr_resolves_from_the_media_address() {
        let msg = |r: Result<Config, ConfigError>| r.expect_err("must fail").to_string();
        let media: SocketAddr = "0.0.0.0:7882".parse().expect("addr");
        assert_eq!(TcpAddr::Auto.resolve(media), Some("0.0.0.0:7881".parse().expect("addr")));
        assert_eq!(
            TcpAddr::Auto.resolve("127.0.0.1:0".parse().expect("addr")),
            Some("127.0.0.1:0".parse().expect("addr"))
        );
        assert_eq!(TcpAddr::Off.resolve(media), None);
        assert_eq!("off".parse::<TcpAddr>(), Ok(TcpAddr::Off));
        assert_eq!("10.0.0.1:443".parse::<TcpAddr>(), Ok(TcpAddr::At("10.0.0.1:443".parse().expect("addr"))));
        assert!("nope".parse::<TcpAddr>().is_err());
        let c = file("[media]\ntcp_addr = \"off\"\n").expect("parses");
        assert_eq!(c.media.tcp_addr, TcpAddr::Off);
        let m = msg(file("[media]\ntcp_addr = \"sometimes\"\n"));
        assert!(m.contains("`media.tcp_addr`"), "{m}");
    }
}
