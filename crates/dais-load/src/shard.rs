//! Shards: OS threads that each run a single-threaded tokio runtime full of participant tasks.
//!
//! A shard owns its participants outright (their sockets, str0m sessions and measurements live in
//! thread-local tasks), so nothing is locked per packet. The run loop sends it [`Cmd`]s; progress goes back
//! through shared atomics ([`Progress`]); everything measured comes back once, as a [`ShardResult`], when the
//! shard is told to finish. Speakers get a shard of their own so that their pacing does not wait behind
//! viewer packets.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::interact::{InteractionPlan, InteractionStats};
use crate::sendlog::SendLog;
use crate::speaker::{self, SpeakerPlan, SpeakerRecord};
use crate::stamp::Clock;
use crate::stats::{latency_histogram, FanoutRecorder, ViewerRecord};
use crate::viewer;

/// Where and how participants connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Signaling WebSocket URL, `ws://HOST:PORT/ws`.
    pub url: String,
    /// Room every participant joins.
    pub room: String,
    /// Local IP the participants' UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// When set, every join carries a token minted with this secret.
    pub token_secret: Option<String>,
    /// What speakers send.
    pub speaker: SpeakerPlan,
    /// Keep per-packet fan-out spreads (`--fanout`).
    pub fanout: bool,
    /// One viewer in this many decrypts every packet; the others count headers (1: all decrypt).
    pub decrypt_one_in: usize,
    /// What the speakers sent, for viewers that count headers.
    pub send_log: Arc<SendLog>,
    /// How viewers carry their media.
    pub transport: Transport,
    /// The outage some viewers go through mid-run (`--blip`).
    pub blip: Option<BlipPlan>,
    /// Viewer classes by downlink cap (`--viewer-mix`).
    pub viewer_mix: Option<ViewerMix>,
    /// Reactions and chat (`--react-every`, `--chat-share`).
    pub interaction: Option<InteractionPlan>,
}

impl Target {
    /// Whether viewers estimate their downlink and send REMB, as browsers do: with simulcast or a mix.
    pub fn viewers_estimate(&self) -> bool {
        self.speaker.simulcast || self.viewer_mix.is_some()
    }
}

/// One class of `--viewer-mix`: a downlink cap and its share of the viewers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewerClass {
    /// The cap in kbit/s; 0: none.
    pub cap_kbps: u64,
    /// Percent of the viewers.
    pub percent: f64,
}

/// Viewer classes by downlink cap (`--viewer-mix 400:30,1200:30,0:40`).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewerMix {
    /// The classes in the order given.
    pub classes: Vec<ViewerClass>,
}

impl ViewerMix {
    /// Parse `KBPS:PERCENT,...`: the percents must add up to 100, caps are 0 (none) or 16 to 10,000,000.
    pub fn parse(s: &str) -> Result<ViewerMix, String> {
        let mut classes = Vec::new();
        for part in s.split(',') {
            let (cap, pct) = part
                .split_once(':')
                .ok_or_else(|| format!("--viewer-mix: `{part}` is not KBPS:PERCENT (e.g. 400:30)"))?;
            let cap_kbps: u64 =
                cap.trim().parse().map_err(|_| format!("--viewer-mix: `{cap}` is not a whole number of kbit/s"))?;
            if cap_kbps != 0 && !(16..=10_000_000).contains(&cap_kbps) {
                return Err(format!("--viewer-mix: a cap is 0 (none) or 16 to 10000000 kbit/s, not {cap_kbps}"));
            }
            let percent: f64 = pct.trim().parse().map_err(|_| format!("--viewer-mix: `{pct}` is not a percentage"))?;
            if !(percent > 0.0 && percent <= 100.0) {
                return Err(format!("--viewer-mix: a share is above 0 and at most 100 percent, not {percent}"));
            }
            classes.push(ViewerClass { cap_kbps, percent });
        }
        let total: f64 = classes.iter().map(|c| c.percent).sum();
        if (total - 100.0).abs() > 0.01 {
            return Err(format!("--viewer-mix: the shares add up to {total} percent, not 100"));
        }
        if classes.len() > 16 {
            return Err("--viewer-mix: at most 16 classes".into());
        }
        Ok(ViewerMix { classes })
    }

    /// The class of viewer `index`: viewers are spread over the classes by a low-discrepancy sequence,
    /// so that any run of consecutive viewers matches the shares closely (20 viewers of 30/30/40 are
    /// 6, 6 and 8).
    pub fn class_of(&self, index: usize) -> usize {
        // The fractional part of index times the golden ratio, in [0, 100).
        let x = ((index as f64 + 0.5) * 0.618_033_988_749_895).fract() * 100.0;
        let mut upto = 0.0;
        for (i, c) in self.classes.iter().enumerate() {
            upto += c.percent;
            if x < upto {
                return i;
            }
        }
        self.classes.len().saturating_sub(1)
    }
}

/// How viewers carry their media (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// ICE over UDP, one socket per viewer.
    #[default]
    Udp,
    /// ICE over TCP to the server's passive candidate, one connection per viewer.
    Tcp,
}

/// A network outage for a share of the viewers (`--blip`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlipPlan {
    /// How long nothing gets through.
    pub length: std::time::Duration,
    /// Share of viewers cut, 0 to 1.
    pub share: f64,
    /// Also lose the signaling socket at the start, and resume on a new one at the end.
    pub drop_signaling: bool,
}

impl BlipPlan {
    /// Whether viewer `index` is among the cut ones (the same viewers every run).
    pub fn cuts(&self, index: usize) -> bool {
        picked(index, self.share)
    }
}

/// Whether viewer `index` is in a `share` (0 to 1) of the viewers: the same viewers every run, spread
/// over the indices (Knuth's multiplicative hash).
pub fn picked(index: usize, share: f64) -> bool {
    let spread = (index as u64).wrapping_mul(2_654_435_761) % 10_000;
    (spread as f64) < share * 10_000.0
}

/// A number in [0, 1) from `i`, the same every run (splitmix64).
pub fn unit(i: u64) -> f64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Counters the run loop reads for progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Speakers whose session is connected.
    pub speakers_live: AtomicUsize,
    /// Speakers that failed.
    pub speakers_failed: AtomicUsize,
    /// Viewer tasks started.
    pub viewers_started: AtomicUsize,
    /// Viewers that received their first media packet.
    pub viewers_joined: AtomicUsize,
    /// Viewers that failed (some after receiving media).
    pub viewers_failed: AtomicUsize,
    /// Viewers that received media or ended without it: counted once per viewer, so the ramp ends
    /// when every viewer has one or the other.
    pub viewers_settled: AtomicUsize,
    /// Viewers that ended (failed, left early, or finished).
    pub viewers_ended: AtomicUsize,
    /// Media packets received by all viewers.
    pub packets: AtomicU64,
    /// p99 latency of the last progress interval in microseconds, the highest of the shards.
    pub recent_p99_us: AtomicU64,
    /// The run is in its measured phase (interaction latencies are recorded only then).
    pub measuring: AtomicBool,
}

/// What a shard is asked to do.
#[derive(Debug)]
pub enum Cmd {
    /// Start speaker number `index`.
    Speaker(u16),
    /// Start viewer number `index`; it leaves on its own at `leave_at`, if set.
    Viewer(usize, Option<Instant>),
    /// Everyone leaves; report.
    Finish,
}

/// Shared by every task of one shard.
#[derive(Debug)]
pub struct Ctx {
    /// Where to connect.
    pub target: Arc<Target>,
    /// The process clock stamps are read against.
    pub clock: Clock,
    /// Shared counters.
    pub progress: Arc<Progress>,
    /// Becomes true when the run ends: every task leaves.
    pub stop: watch::Receiver<bool>,
    /// Speakers send while this is true.
    pub sending: watch::Receiver<bool>,
    /// Set when the blip starts: when it ends.
    pub blip: watch::Receiver<Option<Instant>>,
    /// Latency of every packet this shard's viewers received, in microseconds.
    pub latency: RefCell<Histogram<u64>>,
    /// The same since the last progress report.
    pub recent: RefCell<Histogram<u64>>,
    /// Per-packet spreads over this shard's viewers, with `--fanout`.
    pub fanout: Option<RefCell<FanoutRecorder>>,
    /// What this shard's viewers measured of reactions and chat.
    pub interaction: RefCell<InteractionStats>,
}

/// What a shard measured.
#[derive(Debug)]
pub struct ShardResult {
    /// One per viewer the shard ran.
    pub viewers: Vec<ViewerRecord>,
    /// One per speaker the shard ran.
    pub speakers: Vec<SpeakerRecord>,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    /// Per-packet spreads, with `--fanout`.
    pub fanout: Option<FanoutRecorder>,
    /// Reactions and chat.
    pub interaction: InteractionStats,
}

/// A running shard thread.
#[derive(Debug)]
pub struct Shard {
    /// Commands in.
    pub tx: mpsc::UnboundedSender<Cmd>,
    handle: JoinHandle<anyhow::Result<ShardResult>>,
}

enum Done {
    Viewer(ViewerRecord),
    Speaker(SpeakerRecord),
}

impl Shard {
    /// Start a shard thread named `name`.
    pub fn spawn(
        name: String,
        target: Arc<Target>,
        clock: Clock,
        progress: Arc<Progress>,
        stop: watch::Receiver<bool>,
        sending: watch::Receiver<bool>,
        blip: watch::Receiver<Option<Instant>>,
    ) -> anyhow::Result<Shard> {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let local = tokio::task::LocalSet::new();
                let fanout = target.fanout.then(|| RefCell::new(FanoutRecorder::default()));
                let ctx = Rc::new(Ctx {
                    target,
                    clock,
                    progress,
                    stop,
                    sending,
                    blip,
                    latency: RefCell::new(latency_histogram()),
                    recent: RefCell::new(latency_histogram()),
                    fanout,
                    interaction: RefCell::new(InteractionStats::default()),
                });
                local.block_on(&rt, run(ctx, rx))
            })
            .context("spawn a shard thread")?;
        Ok(Shard { tx, handle })
    }

    /// Wait for the shard to report (after [`Cmd::Finish`]).
    pub fn join(self) -> anyhow::Result<ShardResult> {
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => anyhow::bail!("a shard thread panicked"),
        }
    }
}

async fn run(ctx: Rc<Ctx>, mut rx: mpsc::UnboundedReceiver<Cmd>) -> anyhow::Result<ShardResult> {
    let mut tasks = JoinSet::new();
    let mut viewers = Vec::new();
    let mut speakers = Vec::new();
    let mut recent_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Speaker(i)) => {
                    tasks.spawn_local(speaker::run(ctx.clone(), i).await_into(Done::Speaker));
                }
                Some(Cmd::Viewer(i, leave_at)) => {
                    tasks.spawn_local(viewer::run(ctx.clone(), i, leave_at).await_into(Done::Viewer));
                }
                Some(Cmd::Finish) | None => break,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => collect(done, &mut viewers, &mut speakers),
            _ = recent_tick.tick() => {
                let mut recent = ctx.recent.borrow_mut();
                ctx.progress.recent_p99_us.fetch_max(recent.value_at_quantile(0.99), Ordering::Relaxed);
                recent.reset();
            }
        }
    }
    // Every task sees `stop` (set by the run loop before Finish) and leaves; give them a bounded time.
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => collect(done, &mut viewers, &mut speakers),
                None => break,
            },
            _ = &mut deadline => {
                tasks.abort_all();
                break;
            }
        }
    }
    let latency = ctx.latency.borrow().clone();
    let fanout = ctx.fanout.as_ref().map(|f| f.take());
    let interaction = ctx.interaction.take();
    Ok(ShardResult { viewers, speakers, latency, fanout, interaction })
}

fn collect(
    done: Result<Done, tokio::task::JoinError>,
    viewers: &mut Vec<ViewerRecord>,
    speakers: &mut Vec<SpeakerRecord>,
) {
    match done {
        Ok(Done::Viewer(v)) => viewers.push(v),
        Ok(Done::Speaker(s)) => speakers.push(s),
        // A task can only end this way when aborted at the deadline; what it measured is lost and the
        // run loop reports the shortfall in viewer counts.
        Err(_) => {}
    }
}

/// `fut.await_into(f)`: a future that maps its output with `f`.
trait AwaitInto: std::future::Future + Sized {
    fn await_into<T>(self, f: fn(Self::Output) -> T) -> impl std::future::Future<Output = T> {
        async move { f(self.await) }
    }
}

impl<F: std::future::Future> AwaitInto for F {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_viewer_mix_parses_and_spreads_viewers_by_share() {
        let mix = ViewerMix::parse("400:30,1200:30,0:40").expect("valid");
        assert_eq!(mix.classes.len(), 3);
        assert_eq!(mix.classes[0], ViewerClass { cap_kbps: 400, percent: 30.0 });
        assert_eq!(mix.classes[2].cap_kbps, 0);
        for n in [20usize, 100, 1000] {
            let mut counts = [0usize; 3];
            for i in 0..n {
                counts[mix.class_of(i)] += 1;
            }
            let want = [n * 30 / 100, n * 30 / 100, n * 40 / 100];
            for (c, w) in counts.iter().zip(want) {
                assert!(c.abs_diff(w) <= 1 + n / 100, "{n} viewers: {counts:?}, want about {want:?}");
            }
        }
    }

    #[test]
    fn a_bad_viewer_mix_is_a_clear_error() {
        for (bad, says) in [
            ("400:30,1200:30", "add up to 60"),
            ("400", "not KBPS:PERCENT"),
            ("fast:100", "not a whole number"),
            ("400:lots", "not a percentage"),
            ("8:100", "16 to 10000000"),
            ("400:0,0:100", "above 0"),
        ] {
            let e = ViewerMix::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
