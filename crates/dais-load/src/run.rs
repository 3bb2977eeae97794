//! One load run: start (or find) the server, bring speakers up, ramp viewers, measure, stop, report.
//!
//! The run loop lives on the main thread. It owns no participant: it sends [`Cmd`]s to the shards, reads
//! their [`Progress`] counters and samples /proc once a second. Phases:
//! 1. speakers join and publish; the run waits until every speaker's session is connected;
//! 2. viewers start at `join_rate` per second until `viewers` are running (with `lifetime`, each leaves
//!    after a random time around it and is replaced, which is the churn scenario);
//! 3. once every viewer has received media or failed, the measured phase lasts `duration`;
//! 4. speakers stop sending, one second passes so that packets in flight arrive, every participant leaves
//!    and the shards report.

use std::io::{BufRead, BufReader, IsTerminal};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::interact::{InteractionPlan, InteractionStats};
use crate::procfs::Sampler;
use crate::report::{self, ProcessUsage, Report, Scenario, Viewers};
use crate::sendlog::SendLog;
use crate::shard::{BlipPlan, Cmd, Progress, Shard, Target, Transport, ViewerMix};
use crate::speaker::SpeakerPlan;
use crate::stamp::Clock;
use crate::stats::{latency_histogram, FanoutRecorder};

/// Everything a run needs; see `dais-load --help` for each field's flag.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Preset name, for the report.
    pub preset: String,
    /// Signaling URL of a running server (ignored with `spawn_server`).
    pub url: Option<String>,
    /// Start a local `dais` for the run.
    pub spawn_server: bool,
    /// The `dais` binary to spawn.
    pub server_bin: Option<PathBuf>,
    /// Extra arguments for the spawned server.
    pub server_args: Vec<String>,
    /// Watch this process as the server.
    pub server_pid: Option<u32>,
    /// Room to join.
    pub room: String,
    /// Speakers.
    pub speakers: usize,
    /// Viewers at once.
    pub viewers: usize,
    /// Viewer joins per second.
    pub join_rate: f64,
    /// Measured phase after the ramp.
    pub duration: Duration,
    /// Churn: mean viewer lifetime; each viewer leaves after 0.5x to 1.5x of it and is replaced.
    pub lifetime: Option<Duration>,
    /// Video bitrate per speaker, bits/s.
    pub video_bitrate: u64,
    /// Video frames per second.
    pub fps: u32,
    /// Viewer shard threads.
    pub threads: usize,
    /// Local IP for participant sockets (and the spawned server).
    pub bind_ip: IpAddr,
    /// Mint join tokens with this secret.
    pub token_secret: Option<String>,
    /// Show progress.
    pub progress: bool,
    /// Keep per-packet fan-out spreads and report them.
    pub fanout: bool,
    /// One viewer in this many decrypts every packet; the others count SRTP headers (1: all decrypt).
    pub decrypt_one_in: usize,
    /// How viewers carry their media.
    pub transport: Transport,
    /// An outage for a share of the viewers in the middle of the measured phase.
    pub blip: Option<BlipPlan>,
    /// Speakers send three simulcast layers.
    pub simulcast: bool,
    /// Viewer classes by downlink cap, and the flag's text for the report.
    pub viewer_mix: Option<(ViewerMix, String)>,
    /// Viewers react and chat.
    pub interaction: Option<InteractionPlan>,
}

/// Longest wait for all speakers to connect.
const SPEAKER_TIMEOUT: Duration = Duration::from_secs(20);
/// After the last viewer started, longest wait for every viewer to receive media or fail.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for packets in flight to arrive after speakers stop.
const DRAIN: Duration = Duration::from_secs(1);

/// A `dais` process started for the run; killed when dropped.
#[derive(Debug)]
struct SpawnedServer {
    child: Child,
    url: String,
}

impl SpawnedServer {
    fn start(cfg: &LoadConfig) -> anyhow::Result<SpawnedServer> {
        let bin = match &cfg.server_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("dais")))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("dais")),
        };
        let media = SocketAddr::new(cfg.bind_ip, 0).to_string();
        let child = Command::new(&bin)
            .args(["--http-addr", "127.0.0.1:0", "--media-addr", &media])
            .args(&cfg.server_args)
            // Quiet by default; `--server-arg=--log=...` (a flag beats the environment) overrides it.
            .env("DAIS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn the server {}", bin.display()))?;
        // Owned from here on, so that the process is killed on every way out of this function.
        let mut server = SpawnedServer { child, url: String::new() };
        let stdout = server.child.stdout.take().context("server stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read the ready line, then keep draining so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(http) = line.strip_prefix("dais ready http=").and_then(|r| r.split_whitespace().next()) {
                    let _ = tx.send(http.to_owned());
                }
            }
        });
        let http = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("{} did not print its ready line within 30 s", bin.display()))?;
        server.url = format!("ws://{http}/ws");
        Ok(server)
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the load test and build its report.
pub async fn run(cfg: LoadConfig) -> anyhow::Result<Report> {
    if cfg.viewers == 0 && cfg.speakers == 0 {
        bail!("nothing to run: no speakers and no viewers");
    }
    let server = if cfg.spawn_server { Some(SpawnedServer::start(&cfg)?) } else { None };
    let url = match (&server, &cfg.url) {
        (Some(s), _) => s.url.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) => bail!("give the server's signaling URL (--url) or --spawn-server"),
    };
    let server_pid = server.as_ref().map(|s| s.child.id()).or(cfg.server_pid);
    let pid_text = server_pid.map(|p| p.to_string());

    let clock = Clock::new();
    let plan = SpeakerPlan { video_bitrate: cfg.video_bitrate, fps: cfg.fps, simulcast: cfg.simulcast };
    let target = Arc::new(Target {
        url: url.clone(),
        room: cfg.room.clone(),
        bind_ip: cfg.bind_ip,
        token_secret: cfg.token_secret.clone(),
        speaker: plan,
        fanout: cfg.fanout,
        decrypt_one_in: cfg.decrypt_one_in.max(1),
        send_log: Arc::new(SendLog::new(cfg.speakers)),
        transport: cfg.transport,
        blip: cfg.blip,
        viewer_mix: cfg.viewer_mix.as_ref().map(|(m, _)| m.clone()),
        interaction: cfg.interaction,
    });
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (send_tx, send_rx) = watch::channel(true);
    let (blip_tx, blip_rx) = watch::channel(None);
    let spawn = |name: String| {
        Shard::spawn(name, target.clone(), clock, progress.clone(), stop_rx.clone(), send_rx.clone(), blip_rx.clone())
    };
    let speaker_shard = spawn("load-speakers".into())?;
    let threads = cfg.threads.max(1);
    let viewer_shards = (0..threads).map(|i| spawn(format!("load-viewers-{i}"))).collect::<anyhow::Result<Vec<_>>>()?;

    let mut server_samples = Sampler::default();
    let mut self_samples = Sampler::default();
    let sample = |server: &mut Sampler, me: &mut Sampler| {
        if let Some(pid) = &pid_text {
            server.take(pid);
        }
        me.take("self");
    };
    let bar = Bar::new(cfg.progress, cfg.viewers);

    // 1. Speakers.
    for i in 0..cfg.speakers {
        let _ = speaker_shard.tx.send(Cmd::Speaker(u16::try_from(i).unwrap_or(u16::MAX)));
    }
    let deadline = Instant::now() + SPEAKER_TIMEOUT;
    while progress.speakers_live.load(Ordering::Relaxed) < cfg.speakers {
        if progress.speakers_failed.load(Ordering::Relaxed) > 0 || Instant::now() > deadline {
            bail!(
                "{} of {} speakers connected ({} failed) within {} s; see the messages above",
                progress.speakers_live.load(Ordering::Relaxed),
                cfg.speakers,
                progress.speakers_failed.load(Ordering::Relaxed),
                SPEAKER_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let media flow and the server settle before the baseline reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sample(&mut server_samples, &mut self_samples);
    let baseline_rss = server_samples.last().map(|s| s.rss_bytes);

    // 2 and 3. Viewers, then the measured phase.
    let ramp_start = Instant::now();
    let join_interval = Duration::from_secs_f64(1.0 / cfg.join_rate.max(0.001));
    let mut join_tick = tokio::time::interval(join_interval);
    join_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sample_tick = tokio::time::interval(Duration::from_secs(1));
    let mut started = 0usize;
    let mut ramp_end: Option<Instant> = None;
    let mut last_started_at = ramp_start;
    let mut last_packets = 0u64;
    let mut last_progress = Instant::now();
    let mut forward_start = None;
    let mut blip_started: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if let Some(end) = ramp_end {
            if now >= end + cfg.duration {
                break;
            }
            // The outage is centred in the measured phase.
            if let (Some(b), None) = (cfg.blip, blip_started) {
                if now >= end + cfg.duration.saturating_sub(b.length) / 2 {
                    blip_started = Some(now);
                    let _ = blip_tx.send(Some(now + b.length));
                }
            }
        } else {
            let settled = progress.viewers_settled.load(Ordering::Relaxed);
            if started >= cfg.viewers && (settled >= cfg.viewers || now > last_started_at + SETTLE_TIMEOUT) {
                ramp_end = Some(now);
                progress.measuring.store(true, Ordering::Relaxed);
                // A sample at the start of the measured phase, however short the phase is.
                sample(&mut server_samples, &mut self_samples);
                forward_start = crate::scrape::read(&url).await;
            }
        }
        tokio::select! {
            _ = join_tick.tick() => {
                let active = started - progress.viewers_ended.load(Ordering::Relaxed);
                let wanted = if cfg.lifetime.is_some() { active < cfg.viewers } else { started < cfg.viewers };
                if wanted && (ramp_end.is_none() || cfg.lifetime.is_some()) {
                    let leave_at = cfg.lifetime.map(|l| Instant::now() + l.mul_f64(0.5 + crate::shard::unit(started as u64)));
                    let shard = &viewer_shards[started % threads];
                    let _ = shard.tx.send(Cmd::Viewer(started, leave_at));
                    started += 1;
                    last_started_at = Instant::now();
                }
            }
            _ = sample_tick.tick() => {
                sample(&mut server_samples, &mut self_samples);
                let packets = progress.packets.load(Ordering::Relaxed);
                let secs = last_progress.elapsed().as_secs_f64().max(0.001);
                let rate = (packets - last_packets) as f64 / secs;
                last_packets = packets;
                last_progress = Instant::now();
                let p99 = progress.recent_p99_us.swap(0, Ordering::Relaxed);
                let phase = if ramp_end.is_some() { "measuring" } else { "ramping" };
                bar.update(phase, &progress, rate, p99, server_samples.recent_cpu_pct());
            }
        }
    }
    progress.measuring.store(false, Ordering::Relaxed);
    let measure_start = ramp_end.unwrap_or(ramp_start);
    let measure_end = Instant::now();
    sample(&mut server_samples, &mut self_samples);
    let forward_end = crate::scrape::read(&url).await;
    let server_forward_us = match (&forward_start, &forward_end) {
        (Some(a), Some(b)) => crate::scrape::between(a, b),
        _ => None,
    };

    // 4. Stop.
    let _ = send_tx.send(false);
    tokio::time::sleep(DRAIN).await;
    let _ = stop_tx.send(true);
    bar.finish();
    let mut all = vec![speaker_shard];
    all.extend(viewer_shards);
    for s in &all {
        let _ = s.tx.send(Cmd::Finish);
    }
    let results = tokio::task::spawn_blocking(move || all.into_iter().map(Shard::join).collect::<Vec<_>>())
        .await
        .map_err(|_| anyhow!("the shard collector panicked"))?;
    drop(server);

    let mut viewers = Vec::new();
    let mut speakers = Vec::new();
    let mut latency = latency_histogram();
    let mut spreads = FanoutRecorder::default();
    let mut interaction = InteractionStats::default();
    for r in results {
        let r = r?;
        interaction.merge(&r.interaction);
        if let Some(f) = r.fanout {
            spreads.merge(f);
        }
        viewers.extend(r.viewers);
        speakers.extend(r.speakers);
        latency.add(&r.latency).map_err(|e| anyhow!("merge histograms: {e}"))?;
    }
    speakers.sort_by_key(|s| s.index);

    let joined = viewers.iter().filter(|v| v.first_media.is_some()).count();
    let mut failures = std::collections::BTreeMap::new();
    for v in &viewers {
        if let Some(code) = &v.failure {
            *failures.entry(code.clone()).or_insert(0) += 1;
        }
    }
    // Viewer sessions the run held at once: with churn, more joined over the run.
    let present = viewers.len().min(cfg.viewers);
    let usage = |s: &Sampler, pid: u32, baseline: Option<u64>| -> Option<ProcessUsage> {
        let u = s.usage(measure_start, measure_end)?;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let base = baseline.unwrap_or(u.rss_mean);
        Some(ProcessUsage {
            pid,
            cpu_pct_steady: round1(u.cpu_pct_mean),
            cpu_pct_media_threads: round1(u.media_cpu_pct_mean),
            cpu_pct_other_threads: round1((u.cpu_pct_mean - u.media_cpu_pct_mean).max(0.0)),
            cpu_pct_peak: round1(u.cpu_pct_peak),
            cpu_pct_per_100_viewers: round1(if present == 0 { 0.0 } else { u.cpu_pct_mean * 100.0 / present as f64 }),
            rss_baseline_mib: round1(mib(base)),
            rss_steady_mib: round1(mib(u.rss_mean)),
            rss_peak_mib: round1(mib(u.rss_peak)),
            memory_per_viewer_kib: round1(if present == 0 {
                0.0
            } else {
                u.rss_mean.saturating_sub(base) as f64 / 1024.0 / present as f64
            }),
        })
    };
    let generator = usage(&self_samples, std::process::id(), self_samples.rss_at(ramp_start))
        .context("could not read this process's CPU and memory from /proc")?;
    let server_usage = server_pid.and_then(|pid| usage(&server_samples, pid, baseline_rss));

    Ok(Report {
        scenario: Scenario {
            preset: cfg.preset.clone(),
            url,
            speakers: cfg.speakers,
            viewers: cfg.viewers,
            join_rate: cfg.join_rate,
            duration_s: cfg.duration.as_secs_f64(),
            ramp_s: round1(measure_start.duration_since(ramp_start).as_secs_f64()),
            video_bitrate: cfg.video_bitrate,
            packets_per_viewer_per_s: round1(plan.packets_per_second() * cfg.speakers as f64),
            generator_threads: threads,
            all_viewers_decrypt: cfg.decrypt_one_in <= 1,
            decrypt_one_in: cfg.decrypt_one_in.max(1),
            simulcast: cfg.simulcast,
            viewer_mix: cfg.viewer_mix.as_ref().map(|(_, text)| text.clone()),
        },
        viewers: Viewers {
            started: viewers.len(),
            joined,
            failed: viewers.iter().filter(|v| v.failure.is_some()).count(),
            failed_after_media: viewers.iter().filter(|v| v.failure.is_some() && v.first_media.is_some()).count(),
            failures,
            left_early: viewers.iter().filter(|v| v.left_early).count(),
        },
        join_time_ms: report::JoinTimes {
            joined: report::percentiles(viewers.iter().filter_map(|v| v.joined_after)),
            media_connected: report::percentiles(viewers.iter().filter_map(|v| v.connected_after)),
            first_media: report::percentiles(viewers.iter().filter_map(|v| v.first_media)),
            first_keyframe: report::percentiles(viewers.iter().filter_map(|v| v.first_keyframe)),
        },
        latency_us: report::latency(&latency),
        fanout_us: cfg.fanout.then(|| report::fanout(&spreads, present)),
        server_forward_us,
        delivery: report::delivery(&viewers, &speakers),
        blip: cfg.blip.map(|b| report::blip(&viewers, b)),
        classes: target
            .viewers_estimate()
            .then(|| report::classes(&viewers, &speakers, &plan, target.viewer_mix.as_ref())),
        transport: match cfg.transport {
            Transport::Udp => "udp".into(),
            Transport::Tcp => "tcp".into(),
        },
        speakers: report::speakers(&speakers),
        interaction: cfg.interaction.map(|plan| {
            let measured = measure_end.duration_since(measure_start);
            report::interaction(&plan, &interaction, viewers.len(), joined, measured)
        }),
        server: server_usage,
        generator,
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Progress: an indicatif bar on a terminal, a line every five seconds otherwise, nothing when quiet.
struct Bar {
    bar: Option<ProgressBar>,
    plain: bool,
    last_line: std::cell::Cell<Option<Instant>>,
}

impl Bar {
    fn new(enabled: bool, viewers: usize) -> Bar {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let b = ProgressBar::new(viewers as u64);
            if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} joined  {msg}") {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        Bar { bar, plain: enabled && !terminal, last_line: std::cell::Cell::new(None) }
    }

    fn update(&self, phase: &str, p: &Progress, rate: f64, p99_us: u64, server_cpu: Option<f64>) {
        let joined = p.viewers_joined.load(Ordering::Relaxed);
        let cpu = server_cpu.map(|c| format!(", server CPU {c:.0} %")).unwrap_or_default();
        let msg = format!(
            "{phase}: {} failed, {:.0} packets/s, p99 {:.1} ms{cpu}",
            p.viewers_failed.load(Ordering::Relaxed),
            rate,
            p99_us as f64 / 1000.0
        );
        if let Some(b) = &self.bar {
            b.set_position(joined as u64);
            b.set_message(msg);
        } else if self.plain {
            let due = self.last_line.get().is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
            if due {
                eprintln!("dais-load: {joined} joined; {msg}");
                self.last_line.set(Some(Instant::now()));
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
