//! `dais-load`: the command line of the Dais load generator. See the crate docs and `dais-load --help`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dais_load::interact::InteractionPlan;
use dais_load::run::{run, LoadConfig};
use dais_load::shard::{BlipPlan, Transport, ViewerMix};

/// Load-test a Dais server over its real protocol: synthetic speakers publish stamped VP8-like video and
/// Opus-like audio, and synthetic viewers (str0m sessions with real ICE, DTLS and SRTP decryption) measure
/// join time, latency, loss, duplicates and reordering. Prints a table at the end; --json writes the same
/// figures for machines.
///
/// Presets (every value can be overridden by its flag):
///   keynote     1 speaker, 1000 viewers joining at 100/s, 30 s measured
///   roundtable  4 speakers (who also receive each other), 200 viewers at 50/s, 30 s measured
///   churn       1 speaker, 200 viewers at once; each leaves after 5-15 s (lifetime 10 s) and is
///               replaced, joins at 50/s, 60 s measured
///   late-join   2 live speakers, 100 viewers trickling in at 5/s, 10 s measured: time to first key
///               frame while speakers are live, and keyframe requests per second at the speakers
///
/// Examples:
///   dais-load --spawn-server --preset keynote --json keynote.json
///   dais-load --url ws://10.0.0.5:8080/ws --preset roundtable --viewers 500
///   dais-load --spawn-server --preset keynote --simulcast --viewer-mix 400:30,1200:30,0:40
///   dais-load --spawn-server --viewers 2000 --react-every 5 --chat-share 0.01
#[derive(Debug, Parser)]
#[command(name = "dais-load", version, verbatim_doc_comment)]
struct Args {
    /// Scenario preset.
    #[arg(long, value_enum, default_value = "keynote")]
    preset: Preset,

    /// Signaling WebSocket URL of a running server, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long, value_name = "URL", required_unless_present = "spawn_server")]
    url: Option<String>,

    /// Start a local `dais` for the run (with --http-addr 127.0.0.1:0, --media-addr <bind-ip>:0, then the
    /// --server-arg values, and DAIS_LOG=warn), watch its CPU and memory, and stop it at the end.
    #[arg(long)]
    spawn_server: bool,

    /// The `dais` binary for --spawn-server. [default: `dais` next to this binary, else on PATH]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,

    /// Extra argument for the spawned server; repeat for several, e.g. --server-arg=--max-participants=5000.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// Watch this process's CPU and memory as the server's (when it runs on this machine).
    #[arg(long, value_name = "PID", conflicts_with = "spawn_server")]
    server_pid: Option<u32>,

    /// Room to join.
    #[arg(long, default_value = "load")]
    room: String,

    /// Number of speakers. [default: from the preset]
    #[arg(long, value_name = "N")]
    speakers: Option<usize>,

    /// Number of viewers at once. [default: from the preset]
    #[arg(long, value_name = "N")]
    viewers: Option<usize>,

    /// Viewer joins per second. [default: from the preset]
    #[arg(long, value_name = "PER_SECOND")]
    join_rate: Option<f64>,

    /// Seconds measured once every viewer has joined or failed. [default: from the preset]
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,

    /// Mean viewer lifetime in seconds: each viewer leaves after 0.5 to 1.5 times it and is replaced
    /// (the churn preset sets 10). [default: from the preset; viewers stay to the end otherwise]
    #[arg(long, value_name = "SECONDS")]
    lifetime: Option<f64>,

    /// Video bitrate per speaker, in kbit/s; frames are split into packets of at most 1200 bytes.
    #[arg(long, value_name = "KBPS", default_value_t = 1500)]
    video_kbps: u64,

    /// Video frames per second.
    #[arg(long, value_name = "FPS", default_value_t = 30)]
    fps: u32,

    /// Generator threads for viewers (speakers always get one of their own).
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,

    /// Local IP for the participants' UDP sockets (and the spawned server's media socket).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    bind_ip: IpAddr,

    /// Mint a join token for every participant with this HS256 secret (the server's auth.token_secret).
    #[arg(long, value_name = "SECRET", env = "DAIS_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,

    /// Also report, per ingress packet, the time from the speaker's send to its last viewer and to its
    /// 32nd viewer (the SFU's fan-out). Keeps a few hundred bytes per packet sent for the whole run.
    #[arg(long)]
    fanout: bool,

    /// Only one viewer in K decrypts every packet; the others decrypt until their first key frame, then
    /// count each packet from its plaintext SRTP header (SSRC, sequence number) against the speakers' send
    /// log, which costs the generator far less. Loss, duplicates, reordering and latency are counted for
    /// every viewer; payloads and SRTP tags are checked only by the decrypting ones, and the report says
    /// how many packets were counted without decryption. 1: every viewer decrypts.
    #[arg(long, value_name = "K", default_value_t = 1)]
    decrypt_one_in: usize,

    /// How viewers carry their media: `udp`, or `tcp` (ICE over TCP to the server's passive TCP
    /// candidate, one connection per viewer; speakers stay on UDP).
    #[arg(long, value_enum, default_value = "udp")]
    transport: TransportArg,

    /// Cut a share of the viewers (--blip-share) off the network for this many seconds in the middle of
    /// the measured phase: nothing sent, nothing received. The report says how long each took to receive
    /// media, and a key frame, again after the cut ended (they ask for a key frame as a decoder would).
    #[arg(long, value_name = "SECONDS")]
    blip: Option<f64>,

    /// Share of viewers --blip cuts, 0 to 1.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
    blip_share: f64,

    /// With --blip, the cut viewers also lose their signaling socket when the cut starts, and resume
    /// their participant on a new one when it ends.
    #[arg(long)]
    blip_drop_signaling: bool,

    /// Speakers send their video as three simulcast layers, rids q, h and f, at a tenth, a third and all
    /// of --video-kbps (150 k / 500 k / 1.5 Mbit/s by default), and viewers send REMB estimates of their
    /// downlink as browsers do. The report then has a section per viewer class. Every viewer decrypts
    /// (no --decrypt-one-in).
    #[arg(long)]
    simulcast: bool,

    /// Viewer classes by downlink cap, KBPS:PERCENT,... with 0 for no cap, e.g. 400:30,1200:30,0:40.
    /// Each capped viewer receives through a token bucket at that rate with a drop-tail queue (200 ms
    /// at the cap) inside the generator, and every viewer sends REMB from what gets through. The report
    /// gives per class the layer received over time, delivery on each layer, freezes (video gaps over
    /// 500 ms), time to settle on the expected layer and feedback per second. UDP only.
    #[arg(long, value_name = "MIX")]
    viewer_mix: Option<String>,

    /// Every viewer sends one reaction (`react`) every this many seconds once joined, spread evenly
    /// over the period, and the report times each to the first `reactions` totals that count it.
    #[arg(long, value_name = "SECONDS")]
    react_every: Option<f64>,

    /// Share of viewers (0 to 1) that chat at the rate limit (0.5 messages a second) once joined;
    /// every viewer times each message from its send (in its text) to its receipt. E.g. 0.01.
    #[arg(long, value_name = "FRACTION")]
    chat_share: Option<f64>,

    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// No progress output while running.
    #[arg(long, short)]
    quiet: bool,
}

/// Named scenarios.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Preset {
    /// 1 speaker, N viewers.
    Keynote,
    /// 4 speakers, 200 viewers.
    Roundtable,
    /// Viewers join and leave continuously.
    Churn,
    /// Viewers join while speakers are live; measures time to first frame.
    LateJoin,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Preset::Keynote => "keynote",
            Preset::Roundtable => "roundtable",
            Preset::Churn => "churn",
            Preset::LateJoin => "late-join",
        }
    }

    /// Speakers, viewers, join rate, duration in seconds, lifetime in seconds.
    fn defaults(self) -> (usize, usize, f64, f64, Option<f64>) {
        match self {
            Preset::Keynote => (1, 1000, 100.0, 30.0, None),
            Preset::Roundtable => (4, 200, 50.0, 30.0, None),
            Preset::Churn => (1, 200, 50.0, 60.0, Some(10.0)),
            Preset::LateJoin => (2, 100, 5.0, 10.0, None),
        }
    }
}

/// Longest `--duration` and `--lifetime`: one day.
const MAX_SECONDS: f64 = 86_400.0;

fn seconds(flag: &str, s: f64, min: f64) -> Result<Duration, String> {
    if !(min..=MAX_SECONDS).contains(&s) {
        return Err(format!("--{flag} must be between {min} and {MAX_SECONDS} seconds, not {s}"));
    }
    Duration::try_from_secs_f64(s).map_err(|_| format!("--{flag} must be a number of seconds, not {s}"))
}

fn config(a: &Args) -> Result<LoadConfig, String> {
    let (speakers, viewers, join_rate, duration, lifetime) = a.preset.defaults();
    let join_rate = a.join_rate.unwrap_or(join_rate);
    if !(join_rate > 0.0 && join_rate <= 10_000.0) {
        return Err(format!("--join-rate must be above 0 and at most 10000 per second, not {join_rate}"));
    }
    if !(1..=240).contains(&a.fps) {
        return Err(format!("--fps must be between 1 and 240, not {}", a.fps));
    }
    if !(1..=1_000_000).contains(&a.video_kbps) {
        return Err(format!("--video-kbps must be between 1 and 1000000, not {}", a.video_kbps));
    }
    let speakers = a.speakers.unwrap_or(speakers);
    if speakers == 0 {
        return Err("--speakers must be at least 1: viewers measure what speakers send".into());
    }
    if a.decrypt_one_in == 0 {
        return Err("--decrypt-one-in must be at least 1 (1: every viewer decrypts)".into());
    }
    if !(0.0..=1.0).contains(&a.blip_share) {
        return Err(format!("--blip-share must be between 0 and 1, not {}", a.blip_share));
    }
    if a.simulcast && a.decrypt_one_in > 1 {
        return Err("--simulcast counts every layer from decrypted packets: leave out --decrypt-one-in".into());
    }
    let viewer_mix = a.viewer_mix.as_ref().map(|m| ViewerMix::parse(m).map(|mix| (mix, m.clone()))).transpose()?;
    if viewer_mix.is_some() && matches!(a.transport, TransportArg::Tcp) {
        return Err("--viewer-mix emulates UDP downlinks (a TCP link never drops): use --transport udp".into());
    }
    let interaction = match (a.react_every, a.chat_share) {
        (None, None) => None,
        (react_every, chat_share) => {
            let chat_share = chat_share.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&chat_share) {
                return Err(format!("--chat-share must be between 0 and 1, not {chat_share}"));
            }
            let react_every = react_every.map(|s| seconds("react-every", s, 0.5)).transpose()?;
            Some(InteractionPlan { react_every, chat_share })
        }
    };
    let duration = seconds("duration", a.duration.unwrap_or(duration), 1.0)?;
    let blip = match a.blip {
        None => None,
        Some(b) => {
            let length = seconds("blip", b, 0.1)?;
            if length >= duration {
                return Err(format!("--blip ({b} s) must be shorter than --duration ({} s)", duration.as_secs_f64()));
            }
            Some(BlipPlan { length, share: a.blip_share, drop_signaling: a.blip_drop_signaling })
        }
    };
    Ok(LoadConfig {
        preset: a.preset.name().into(),
        url: a.url.clone(),
        spawn_server: a.spawn_server,
        server_bin: a.server_bin.clone(),
        server_args: a.server_args.clone(),
        server_pid: a.server_pid,
        room: a.room.clone(),
        speakers,
        viewers: a.viewers.unwrap_or(viewers),
        join_rate,
        duration,
        lifetime: a.lifetime.or(lifetime).map(|l| seconds("lifetime", l, 0.1)).transpose()?,
        video_bitrate: a.video_kbps.saturating_mul(1000),
        fps: a.fps,
        threads: a.threads.max(1),
        bind_ip: a.bind_ip,
        token_secret: a.token_secret.clone(),
        progress: !a.quiet,
        fanout: a.fanout,
        decrypt_one_in: a.decrypt_one_in,
        transport: match a.transport {
            TransportArg::Udp => Transport::Udp,
            TransportArg::Tcp => Transport::Tcp,
        },
        blip,
        simulcast: a.simulcast,
        viewer_mix,
        interaction,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Diagnostics of the generator's own WebRTC stack (str0m, ICE, DTLS), e.g. DAIS_LOAD_LOG=is=trace.
    if let Ok(filter) = std::env::var("DAIS_LOAD_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dais-load: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dais-load: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match rt.block_on(run(cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dais-load: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = match serde_json::to_string_pretty(&report) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("dais-load: cannot serialise the report: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("dais-load: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
