//! The end-of-run report: built from what shards measured, printed as a table, written as JSON.
//!
//! Every figure in the table is a field of [`Report`], and the JSON file (`--json`) is that struct
//! serialised, so scripts read exactly what people read. Fields that could not be measured (no server
//! process to watch) are `null`, never left out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::interact::{InteractionPlan, InteractionStats};
use crate::shard::{ViewerClass, ViewerMix};
use crate::speaker::{SpeakerPlan, SpeakerRecord};
use crate::stamp::Stream;
use crate::stats::{FanoutRecorder, ViewerRecord};

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran.
    pub scenario: Scenario,
    /// Who joined.
    pub viewers: Viewers,
    /// Join times in milliseconds.
    pub join_time_ms: JoinTimes,
    /// Speaker send -> viewer receive, microseconds.
    pub latency_us: Latency,
    /// Delivery to viewers.
    pub delivery: Delivery,
    /// How viewers carried their media: `udp` or `tcp` (`--transport`).
    pub transport: String,
    /// The outage (`--blip`) and how the cut viewers came back; `null` without one.
    pub blip: Option<Blip>,
    /// Per viewer class (`--viewer-mix`; one class with `--simulcast` alone): layers, delivery, freezes
    /// and feedback; `null` with neither.
    pub classes: Option<Vec<Class>>,
    /// Per ingress packet, speaker send -> its last and its 32nd viewer; `null` without `--fanout`.
    pub fanout_us: Option<Fanout>,
    /// The server's own in-process forwarding latency over the measured phase (its
    /// `dais_forward_latency_seconds`, see `scrape`); `null` when its `/metrics` could not be read.
    pub server_forward_us: Option<crate::scrape::ServerForward>,
    /// What speakers sent and were asked.
    pub speakers: Speakers,
    /// Reactions and chat (`--react-every`, `--chat-share`); `null` without them.
    pub interaction: Option<Interaction>,
    /// The server process; `null` when not watched (no `--spawn-server` or `--server-pid`).
    pub server: Option<ProcessUsage>,
    /// The generator's own process.
    pub generator: ProcessUsage,
}

/// The run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// Preset name.
    pub preset: String,
    /// Signaling URL.
    pub url: String,
    /// Speakers.
    pub speakers: usize,
    /// Viewers aimed for (at once).
    pub viewers: usize,
    /// Viewer joins per second while ramping.
    pub join_rate: f64,
    /// Seconds measured after the ramp.
    pub duration_s: f64,
    /// Seconds the ramp took.
    pub ramp_s: f64,
    /// Video bitrate per speaker, bits/s.
    pub video_bitrate: u64,
    /// Packets per second each viewer should receive from all speakers.
    pub packets_per_viewer_per_s: f64,
    /// Viewer shard threads in the generator.
    pub generator_threads: usize,
    /// Whether every viewer decrypted every packet.
    pub all_viewers_decrypt: bool,
    /// One viewer in this many decrypted every packet; the others counted SRTP headers after their
    /// first key frame (`--decrypt-one-in`).
    pub decrypt_one_in: usize,
    /// Speakers sent three simulcast layers (`--simulcast`).
    pub simulcast: bool,
    /// The viewer classes asked for (`--viewer-mix`), as given; `null` without.
    pub viewer_mix: Option<String>,
}

/// What one viewer class got. "Pairs" are (viewer, speaker) pairs: each viewer receives every speaker.
#[derive(Debug, Clone, Serialize)]
pub struct Class {
    /// The class's downlink cap, kbit/s; 0: none.
    pub cap_kbps: u64,
    /// Its share of the viewers, percent.
    pub share_pct: f64,
    /// Its viewers that received media.
    pub viewers: usize,
    /// The highest layer the cap carries (`q`, `h`, `f`): the layer whose bitrate with audio, plus 10 %
    /// headroom, fits in 85 % of the cap (what a congestion controller's back-off leaves); `null` without
    /// simulcast.
    pub expected_layer: Option<String>,
    /// Pairs per layer at the end of the run.
    pub at_end: BTreeMap<String, usize>,
    /// Pairs on the expected layer at the end.
    pub on_expected_at_end: usize,
    /// Pairs.
    pub pairs: usize,
    /// Viewer start -> onto the layer it ended on, for pairs that ended on the expected layer,
    /// milliseconds.
    pub settle_ms: Percentiles,
    /// Share of the pairs' received time spent on each layer, percent.
    pub time_on_layer_pct: BTreeMap<String, f64>,
    /// Pairs on each layer at each whole second after their viewer started, from 0 (the layer received
    /// over time).
    pub timeline: Vec<BTreeMap<String, usize>>,
    /// Per layer, unique packets received / packets sent while the pair was on it, percent.
    pub layer_delivered_pct: BTreeMap<String, f64>,
    /// The same over all the class's video and audio.
    pub delivered_pct: f64,
    /// Layer changes per pair.
    pub switches_per_pair: f64,
    /// Freezes (gaps of more than 500 ms between new video packets) per viewer per minute received.
    pub freezes_per_minute: WorstMean,
    /// Datagrams a viewer sent per second (RTCP feedback: REMB, NACK, receiver reports; STUN).
    pub feedback_per_s: WorstMean,
    /// REMBs a viewer sent per second.
    pub rembs_per_s: f64,
    /// Datagrams the class's emulated downlinks dropped (queue full).
    pub downlink_drops: u64,
    /// Mean of the viewers' last downlink estimates (what their REMBs said), kbit/s.
    pub estimate_kbps: f64,
}

/// Viewer counts.
#[derive(Debug, Clone, Serialize)]
pub struct Viewers {
    /// Viewer sessions started (more than `scenario.viewers` with churn).
    pub started: usize,
    /// Viewers that received media.
    pub joined: usize,
    /// Viewers that failed.
    pub failed: usize,
    /// Of those, viewers that had received media before they failed (they count as joined too).
    pub failed_after_media: usize,
    /// Failures by code.
    pub failures: BTreeMap<String, usize>,
    /// Viewers that left on purpose before the end (churn).
    pub left_early: usize,
}

/// What viewers measured of reactions and chat (see `interact`).
#[derive(Debug, Clone, Serialize)]
pub struct Interaction {
    /// Each viewer reacted once per this many seconds; `null`: no reactions.
    pub react_every_s: Option<f64>,
    /// Viewers that chatted at the rate limit.
    pub chatters: usize,
    /// `react` messages sent over the whole run.
    pub reactions_sent: u64,
    /// `chat` messages sent over the whole run.
    pub chats_sent: u64,
    /// Refusals of either, by error code.
    pub refused: BTreeMap<String, u64>,
    /// Chat send -> receipt at a viewer, over every delivery in the measured phase, milliseconds.
    pub chat_latency_ms: Percentiles,
    /// `react` -> the first `reactions` that counts it, in the measured phase, milliseconds.
    pub reaction_latency_ms: Percentiles,
    /// `chat` messages each viewer that joined received per second of the measured phase (mean).
    pub chats_received_per_viewer_per_s: f64,
    /// `reactions` messages each viewer that joined received per second of the measured phase (mean).
    pub reactions_messages_per_viewer_per_s: f64,
}

/// Percentiles of a join time.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Values measured.
    pub count: u64,
}

/// Join times.
#[derive(Debug, Clone, Serialize)]
pub struct JoinTimes {
    /// WebSocket connect -> `joined` received.
    pub joined: Percentiles,
    /// WebSocket connect -> ICE and DTLS connected.
    pub media_connected: Percentiles,
    /// WebSocket connect -> first media packet.
    pub first_media: Percentiles,
    /// WebSocket connect -> first packet of a key frame.
    pub first_keyframe: Percentiles,
}

/// Latency percentiles.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Packets measured.
    pub samples: u64,
}

/// Worst and mean of a per-viewer figure.
#[derive(Debug, Clone, Serialize)]
pub struct WorstMean {
    /// Worst viewer.
    pub worst: f64,
    /// Mean over viewers.
    pub mean: f64,
}

/// Delivery figures over every viewer that joined.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Unique packets received / packets expected, percent.
    pub delivered_pct: f64,
    /// Packets expected: for each stream a viewer received, from its first packet to the speaker's last.
    pub expected: u64,
    /// Unique packets received.
    pub received: u64,
    /// Per viewer delivered percent.
    pub viewer_delivered_pct: WorstMean,
    /// Per viewer lost packets.
    pub lost: WorstMean,
    /// Per viewer duplicate packets.
    pub duplicates: WorstMean,
    /// Per viewer out-of-order packets.
    pub out_of_order: WorstMean,
    /// Speaker streams a joined viewer never received a packet of.
    pub missing_streams: u64,
    /// Packets counted from their SRTP headers without decryption (`--decrypt-one-in`); 0 when every
    /// viewer decrypts.
    pub counted_from_headers: u64,
}

/// Fan-out figures, microseconds, over ingress packets.
#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    /// Speaker send -> the copy of the last viewer, over packets every joined viewer received.
    pub last_viewer: Latency,
    /// Speaker send -> the 32nd copy to arrive, over packets at least 32 viewers received.
    pub first_32_viewers: Latency,
}

/// Fan-out percentiles from the merged per-packet spreads; `viewers` is the number of viewers held at
/// once (only packets that many of them received count for the last viewer).
pub fn fanout(rec: &FanoutRecorder, viewers: usize) -> Fanout {
    let mut last = crate::stats::latency_histogram();
    let mut first = crate::stats::latency_histogram();
    for s in rec.packets.values() {
        if s.count as usize >= viewers {
            last.saturating_record(s.last_us.max(1));
        }
        if let Some(us) = s.first_viewers_us() {
            first.saturating_record(us.max(1));
        }
    }
    Fanout { last_viewer: latency(&last), first_32_viewers: latency(&first) }
}

/// The outage and the way back, timed from its end, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Blip {
    /// How long nothing got through, seconds.
    pub length_s: f64,
    /// Share of the viewers cut.
    pub share: f64,
    /// Whether their signaling socket was lost too (and resumed).
    pub signaling_dropped: bool,
    /// Viewers cut.
    pub viewers_cut: usize,
    /// Of those, viewers that received media again.
    pub media_again: usize,
    /// Of those, viewers that received a key frame again (could decode again).
    pub keyframe_again: usize,
    /// Of those, viewers that resumed their participant on a new socket.
    pub resumed: usize,
    /// Outage end -> first media packet.
    pub media_after_ms: Percentiles,
    /// Outage end -> first packet of a key frame.
    pub keyframe_after_ms: Percentiles,
}

/// How the cut viewers came back.
pub fn blip(viewers: &[ViewerRecord], plan: crate::shard::BlipPlan) -> Blip {
    let cut: Vec<_> = viewers.iter().filter_map(|v| v.blip.as_ref()).collect();
    Blip {
        length_s: plan.length.as_secs_f64(),
        share: plan.share,
        signaling_dropped: plan.drop_signaling,
        viewers_cut: cut.len(),
        media_again: cut.iter().filter(|b| b.media_after.is_some()).count(),
        keyframe_again: cut.iter().filter(|b| b.keyframe_after.is_some()).count(),
        resumed: cut.iter().filter(|b| b.resumed).count(),
        media_after_ms: percentiles(cut.iter().filter_map(|b| b.media_after)),
        keyframe_after_ms: percentiles(cut.iter().filter_map(|b| b.keyframe_after)),
    }
}

/// Speaker figures.
#[derive(Debug, Clone, Serialize)]
pub struct Speakers {
    /// Speakers that failed.
    pub failed: usize,
    /// Media packets written by all speakers.
    pub packets_sent: u64,
    /// Keyframe requests (PLI/FIR) the SFU sent to all speakers.
    pub keyframe_requests: u64,
    /// Most keyframe requests one speaker got within any one second.
    pub max_keyframe_requests_per_s: u64,
}

/// CPU and memory of one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessUsage {
    /// Process id.
    pub pid: u32,
    /// Mean CPU during the measured phase, percent of one core.
    pub cpu_pct_steady: f64,
    /// The part of it in threads named `dais-media*` (the server's media workers and TCP media
    /// thread; 0 for the generator).
    pub cpu_pct_media_threads: f64,
    /// The rest: for the server, its tokio runtime (signaling, HTTP, admin, metrics).
    pub cpu_pct_other_threads: f64,
    /// Highest CPU over any one-second step, percent of one core.
    pub cpu_pct_peak: f64,
    /// `cpu_pct_steady` per 100 viewers held at once (joined, at most `scenario.viewers`).
    pub cpu_pct_per_100_viewers: f64,
    /// Resident memory before viewers joined, MiB.
    pub rss_baseline_mib: f64,
    /// Mean resident memory during the measured phase, MiB.
    pub rss_steady_mib: f64,
    /// Highest resident memory, MiB.
    pub rss_peak_mib: f64,
    /// (steady - baseline) / viewers held at once, KiB.
    pub memory_per_viewer_kib: f64,
}

/// Join-time percentiles in milliseconds from durations.
pub fn percentiles(values: impl Iterator<Item = Duration>) -> Percentiles {
    let mut h = crate::stats::latency_histogram();
    for v in values {
        h.saturating_record(u64::try_from(v.as_micros()).unwrap_or(u64::MAX).max(1));
    }
    percentiles_ms(&h)
}

/// Percentiles in milliseconds of a histogram of microseconds.
pub fn percentiles_ms(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| (us as f64 / 1000.0 * 10.0).round() / 10.0;
    if h.is_empty() {
        return Percentiles { p50: 0.0, p95: 0.0, p99: 0.0, max: 0.0, count: 0 };
    }
    Percentiles {
        p50: ms(h.value_at_quantile(0.5)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        count: h.len(),
    }
}

/// The interaction section from every shard's figures: of a run that started `started` viewers, of
/// which `viewers` received media, measured over `measured`.
pub fn interaction(
    plan: &InteractionPlan,
    s: &InteractionStats,
    started: usize,
    viewers: usize,
    measured: Duration,
) -> Interaction {
    let per_viewer_s = |n: u64| {
        let d = viewers as f64 * measured.as_secs_f64();
        if d > 0.0 {
            (n as f64 / d * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    Interaction {
        react_every_s: plan.react_every.map(|d| d.as_secs_f64()),
        chatters: plan.chatters(started),
        reactions_sent: s.reactions_sent,
        chats_sent: s.chats_sent,
        refused: s.refused.clone(),
        chat_latency_ms: percentiles_ms(&s.chat_latency),
        reaction_latency_ms: percentiles_ms(&s.reaction_latency),
        chats_received_per_viewer_per_s: per_viewer_s(s.chats_received),
        reactions_messages_per_viewer_per_s: per_viewer_s(s.reactions_received),
    }
}

/// Latency percentiles from the merged histogram.
pub fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency { p50: 0, p99: 0, p999: 0, max: 0, samples: 0 };
    }
    Latency {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        samples: h.len(),
    }
}

/// Delivery over every viewer that received media, against each speaker's last sequence number (viewers that
/// left early are measured up to the highest packet they saw).
pub fn delivery(viewers: &[ViewerRecord], speakers: &[SpeakerRecord]) -> Delivery {
    let last: BTreeMap<(u16, Stream), u64> =
        speakers.iter().flat_map(|s| s.last_seq.iter().map(move |(k, v)| ((s.index, *k), *v))).collect();
    let streams = || last.keys().filter(|(_, s)| s.layer().is_none());
    let layer_streams: std::collections::BTreeSet<u16> =
        last.keys().filter(|(_, s)| s.layer().is_some()).map(|(sp, _)| *sp).collect();
    let mut expected = 0;
    let mut received = 0;
    let mut per_viewer = Vec::new();
    let mut missing_streams = 0;
    for v in viewers.iter().filter(|v| v.first_media.is_some()) {
        let (mut e, mut r, mut lost, mut dups, mut ooo) = (0, 0, 0, 0, 0);
        for (key, s) in &v.streams {
            let end = if v.left_early { None } else { last.get(key).copied() };
            let (ex, l) = s.expected_and_lost(end);
            e += ex;
            lost += l;
            r += ex - l;
            dups += s.duplicates;
            ooo += s.reordered;
        }
        for (speaker, track) in &v.layers {
            let end = |l| if v.left_early { None } else { last.get(&(*speaker, Stream::Layer(l))).copied() };
            for t in track.tallies(end).values() {
                e += t.expected;
                r += t.received;
                lost += t.expected - t.received;
            }
        }
        if !v.left_early {
            missing_streams += streams().filter(|k| !v.streams.contains_key(k)).count() as u64;
            missing_streams += layer_streams.iter().filter(|sp| !v.layers.contains_key(sp)).count() as u64;
        }
        expected += e;
        received += r;
        let pct = if e == 0 { 100.0 } else { 100.0 * r as f64 / e as f64 };
        per_viewer.push((pct, lost as f64, dups as f64, ooo as f64));
    }
    let n = per_viewer.len().max(1) as f64;
    let worst_mean = |f: fn(&(f64, f64, f64, f64)) -> f64, worst_is_min: bool| {
        let vals = per_viewer.iter().map(f);
        let worst =
            if worst_is_min { vals.clone().fold(f64::INFINITY, f64::min) } else { vals.clone().fold(0.0, f64::max) };
        WorstMean { worst: if worst.is_finite() { worst } else { 0.0 }, mean: vals.sum::<f64>() / n }
    };
    Delivery {
        delivered_pct: if expected == 0 { 0.0 } else { 100.0 * received as f64 / expected as f64 },
        expected,
        received,
        viewer_delivered_pct: worst_mean(|v| v.0, true),
        lost: worst_mean(|v| v.1, false),
        duplicates: worst_mean(|v| v.2, false),
        out_of_order: worst_mean(|v| v.3, false),
        counted_from_headers: viewers.iter().map(|v| v.counted).sum(),
        missing_streams,
    }
}

/// The rid of layer `l`.
fn rid(l: u8) -> String {
    crate::speaker::RIDS.get(usize::from(l)).map_or_else(|| l.to_string(), |r| (*r).to_owned())
}

/// The highest layer a downlink of `cap_kbps` carries (see [`Class::expected_layer`]); the top one
/// without a cap.
pub fn expected_layer(plan: &SpeakerPlan, cap_kbps: u64) -> Option<u8> {
    let streams = plan.video_streams();
    let layers = streams.iter().filter_map(|(s, b)| s.layer().map(|l| (l, *b)));
    let fits = |b: u64| cap_kbps == 0 || (b + plan.audio_bitrate()) as f64 * 1.1 <= 0.85 * (cap_kbps * 1000) as f64;
    let mut best = None;
    for (l, b) in layers {
        if best.is_none() || fits(b) {
            best = Some(l);
        }
    }
    best
}

/// Most seconds a class's timeline covers.
const TIMELINE_SECONDS: usize = 120;

/// Per class: layers, delivery, freezes and feedback (see [`Class`]). Without a mix, one class of every
/// viewer, without a cap.
pub fn classes(
    viewers: &[ViewerRecord],
    speakers: &[SpeakerRecord],
    plan: &SpeakerPlan,
    mix: Option<&ViewerMix>,
) -> Vec<Class> {
    let one = [ViewerClass { cap_kbps: 0, percent: 100.0 }];
    let list = mix.map_or(&one[..], |m| &m.classes[..]);
    let last: BTreeMap<(u16, Stream), u64> =
        speakers.iter().flat_map(|s| s.last_seq.iter().map(move |(k, v)| ((s.index, *k), *v))).collect();
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let members: Vec<&ViewerRecord> =
            viewers.iter().filter(|v| v.first_media.is_some() && v.class.unwrap_or(0) == i).collect();
        let expected = plan.simulcast.then(|| expected_layer(plan, c.cap_kbps)).flatten();
        let (mut at_end, mut on_expected, mut pairs, mut switches) = (BTreeMap::new(), 0, 0, 0usize);
        let mut settle = Vec::new();
        let mut time_on: BTreeMap<String, f64> = BTreeMap::new();
        let mut timeline: Vec<BTreeMap<String, usize>> = Vec::new();
        let mut tallies: BTreeMap<String, crate::stats::Tally> = BTreeMap::new();
        let (mut expected_all, mut received_all) = (0u64, 0u64);
        let mut freezes = Vec::new();
        let mut feedback = Vec::new();
        let mut rembs = 0.0;
        for v in &members {
            let end_at = v.first_media.unwrap_or_default() + v.watched;
            for (speaker, track) in &v.layers {
                pairs += 1;
                switches += track.changes.len().saturating_sub(1);
                if let Some(l) = track.on {
                    *at_end.entry(rid(l)).or_insert(0) += 1;
                    if Some(l) == expected {
                        on_expected += 1;
                        settle.extend(track.settled_at());
                    }
                }
                for (k, &(t, l)) in track.changes.iter().enumerate() {
                    let until = track.changes.get(k + 1).map_or(end_at, |&(n, _)| n);
                    *time_on.entry(rid(l)).or_insert(0.0) += until.saturating_sub(t).as_secs_f64();
                }
                let seconds = (end_at.as_secs() as usize).min(TIMELINE_SECONDS);
                if timeline.len() <= seconds {
                    timeline.resize(seconds + 1, BTreeMap::new());
                }
                for (sec, slot) in timeline.iter_mut().enumerate().take(seconds + 1) {
                    if let Some(l) = track.layer_at(Duration::from_secs(sec as u64)) {
                        *slot.entry(rid(l)).or_insert(0) += 1;
                    }
                }
                let end = |l| if v.left_early { None } else { last.get(&(*speaker, Stream::Layer(l))).copied() };
                for (l, t) in track.tallies(end) {
                    let sum = tallies.entry(rid(l)).or_default();
                    sum.expected += t.expected;
                    sum.received += t.received;
                }
            }
            for (key, rx) in &v.streams {
                let end = if v.left_early { None } else { last.get(key).copied() };
                let (e, l) = rx.expected_and_lost(end);
                expected_all += e;
                received_all += e - l;
            }
            let minutes = v.watched.as_secs_f64() / 60.0;
            let secs = v.watched.as_secs_f64().max(1.0);
            freezes.push(if minutes > 0.0 { f64::from(v.freezes()) / minutes } else { 0.0 });
            feedback.push(v.feedback_sent as f64 / secs);
            rembs += v.rembs as f64 / secs;
        }
        for t in tallies.values() {
            expected_all += t.expected;
            received_all += t.received;
        }
        let total_time: f64 = time_on.values().sum();
        let pct = |r: u64, e: u64| if e == 0 { 100.0 } else { 100.0 * r as f64 / e as f64 };
        let n = members.len().max(1) as f64;
        let worst_mean = |vals: &[f64]| WorstMean {
            worst: vals.iter().copied().fold(0.0, f64::max),
            mean: vals.iter().sum::<f64>() / n,
        };
        out.push(Class {
            cap_kbps: c.cap_kbps,
            share_pct: c.percent,
            viewers: members.len(),
            expected_layer: expected.map(rid),
            at_end,
            on_expected_at_end: on_expected,
            pairs,
            settle_ms: percentiles(settle.into_iter()),
            time_on_layer_pct: time_on
                .into_iter()
                .map(|(k, t)| (k, if total_time > 0.0 { 100.0 * t / total_time } else { 0.0 }))
                .collect(),
            timeline,
            layer_delivered_pct: tallies.iter().map(|(k, t)| (k.clone(), pct(t.received, t.expected))).collect(),
            delivered_pct: pct(received_all, expected_all),
            switches_per_pair: if pairs == 0 { 0.0 } else { switches as f64 / pairs as f64 },
            freezes_per_minute: worst_mean(&freezes),
            feedback_per_s: worst_mean(&feedback),
            rembs_per_s: rembs / n,
            downlink_drops: members.iter().map(|v| v.downlink_drops).sum(),
            estimate_kbps: members.iter().filter_map(|v| v.estimate).sum::<u64>() as f64 / 1000.0 / n,
        });
    }
    out
}

/// Speaker totals; the per-second keyframe request peak slides a one-second window over each speaker's
/// request times.
pub fn speakers(records: &[SpeakerRecord]) -> Speakers {
    let mut max_per_s = 0;
    for r in records {
        let t = &r.keyframe_requests;
        let mut lo = 0;
        for hi in 0..t.len() {
            while t[hi].duration_since(t[lo]) >= Duration::from_secs(1) {
                lo += 1;
            }
            max_per_s = max_per_s.max((hi - lo + 1) as u64);
        }
    }
    Speakers {
        failed: records.iter().filter(|r| r.failure.is_some()).count(),
        packets_sent: records.iter().map(|r| r.packets_sent).sum(),
        keyframe_requests: records.iter().map(|r| r.keyframe_requests.len() as u64).sum(),
        max_keyframe_requests_per_s: max_per_s,
    }
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let s = &self.scenario;
        let _ = writeln!(
            o,
            "dais-load report: {} ({} speakers, {} viewers, {} s after a {:.1} s ramp)",
            s.preset, s.speakers, s.viewers, s.duration_s, s.ramp_s
        );
        let decryption = if s.all_viewers_decrypt {
            "every viewer decrypts".to_owned()
        } else {
            format!(
                "1 viewer in {} decrypts, the others count SRTP headers after their first key frame \
                 ({:.1} % of packets counted so)",
                s.decrypt_one_in,
                if self.delivery.received == 0 {
                    0.0
                } else {
                    100.0 * self.delivery.counted_from_headers as f64 / self.delivery.received as f64
                }
            )
        };
        let _ = writeln!(
            o,
            "  server {}; {:.0} packets/s per viewer over {}; {} generator thread(s); {decryption}",
            s.url, s.packets_per_viewer_per_s, self.transport, s.generator_threads
        );
        let v = &self.viewers;
        let failures = if v.failures.is_empty() {
            String::new()
        } else {
            format!(" ({})", v.failures.iter().map(|(c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", "))
        };
        let _ = writeln!(
            o,
            "{:<34} {} started, {} joined, {} failed{} ({} after receiving media), {} left early",
            "viewers", v.started, v.joined, v.failed, failures, v.failed_after_media, v.left_early
        );
        let j = &self.join_time_ms;
        for (label, p) in [
            ("join -> joined", &j.joined),
            ("join -> ICE+DTLS connected", &j.media_connected),
            ("join -> first media", &j.first_media),
            ("join -> first key frame", &j.first_keyframe),
        ] {
            let _ = writeln!(o, "{label:<34} p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms", p.p50, p.p99, p.max);
        }
        latency_line(&mut o, "latency speaker -> viewer", &self.latency_us);
        if let Some(f) = &self.fanout_us {
            latency_line(&mut o, "fan-out: send -> last viewer", &f.last_viewer);
            latency_line(&mut o, "fan-out: send -> 32nd viewer", &f.first_32_viewers);
        }
        if let Some(f) = &self.server_forward_us {
            let _ = writeln!(o, "{:<34} {f}; the server's own histogram", "server: ingress -> last egress");
        }
        let d = &self.delivery;
        let _ = writeln!(
            o,
            "{:<34} {:.3} % ({} of {}); worst viewer {:.3} %, mean {:.3} %",
            "delivered",
            d.delivered_pct,
            d.received,
            d.expected,
            d.viewer_delivered_pct.worst,
            d.viewer_delivered_pct.mean
        );
        let _ = writeln!(
            o,
            "{:<34} lost {:.0}/{:.2}  duplicates {:.0}/{:.2}  out of order {:.0}/{:.2}  missing streams {}",
            "per viewer (worst/mean)",
            d.lost.worst,
            d.lost.mean,
            d.duplicates.worst,
            d.duplicates.mean,
            d.out_of_order.worst,
            d.out_of_order.mean,
            d.missing_streams
        );
        if let Some(b) = &self.blip {
            let _ = writeln!(
                o,
                "{:<34} {} viewers cut for {} s{}: {} got media again, {} a key frame, {} resumed",
                "blip",
                b.viewers_cut,
                b.length_s,
                if b.signaling_dropped { " (signaling socket lost too)" } else { "" },
                b.media_again,
                b.keyframe_again,
                b.resumed
            );
            for (label, p) in
                [("blip end -> media again", &b.media_after_ms), ("blip end -> key frame again", &b.keyframe_after_ms)]
            {
                let _ = writeln!(
                    o,
                    "{label:<34} p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                    p.p50, p.p95, p.p99, p.max
                );
            }
        }
        for c in self.classes.iter().flatten() {
            class_lines(&mut o, c);
        }
        let sp = &self.speakers;
        let _ = writeln!(
            o,
            "{:<34} {} packets sent, {} failed, {} keyframe requests (at most {} in one second)",
            "speakers", sp.packets_sent, sp.failed, sp.keyframe_requests, sp.max_keyframe_requests_per_s
        );
        if let Some(i) = &self.interaction {
            let refused = if i.refused.is_empty() {
                "none refused".to_owned()
            } else {
                let list = i.refused.iter().map(|(c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", ");
                format!("refused {list}")
            };
            let every = i
                .react_every_s
                .map_or_else(|| "no reactions".to_owned(), |s| format!("a reaction per viewer every {s} s"));
            let _ = writeln!(
                o,
                "{:<34} {every}, {} chatters; sent {} reactions, {} chats; {refused}",
                "interaction", i.chatters, i.reactions_sent, i.chats_sent
            );
            for (label, p) in [
                ("chat: send -> each viewer", &i.chat_latency_ms),
                ("react -> totals counting it", &i.reaction_latency_ms),
            ] {
                let _ = writeln!(
                    o,
                    "{label:<34} p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({})",
                    p.p50, p.p95, p.p99, p.max, p.count
                );
            }
            let _ = writeln!(
                o,
                "{:<34} {:.2} chat and {:.2} reactions messages a second",
                "received per viewer", i.chats_received_per_viewer_per_s, i.reactions_messages_per_viewer_per_s
            );
        }
        match &self.server {
            Some(p) => {
                let _ = writeln!(
                    o,
                    "{:<34} {}; media threads {:.0} %, the rest (signaling, HTTP) {:.0} %",
                    "server",
                    usage_line(p),
                    p.cpu_pct_media_threads,
                    p.cpu_pct_other_threads
                );
            }
            None => {
                let _ = writeln!(o, "{:<34} not watched (use --spawn-server or --server-pid)", "server");
            }
        }
        let _ = writeln!(o, "{:<34} {}", "generator (this process)", usage_line(&self.generator));
        o
    }
}

/// A class's lines of the table.
fn class_lines(o: &mut String, c: &Class) {
    let cap = if c.cap_kbps == 0 { "no cap".to_owned() } else { format!("{} kbit/s", c.cap_kbps) };
    let list = |m: &BTreeMap<String, usize>| m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        o,
        "{:<34} {} viewers ({} %); layer at the end: {} (expected {}: {} of {} pairs)",
        format!("class {cap}"),
        c.viewers,
        c.share_pct,
        if c.at_end.is_empty() { "-".to_owned() } else { list(&c.at_end) },
        c.expected_layer.as_deref().unwrap_or("-"),
        c.on_expected_at_end,
        c.pairs
    );
    let layers = c.layer_delivered_pct.iter().map(|(k, p)| format!("{k} {p:.3} %")).collect::<Vec<_>>().join(", ");
    let time = c.time_on_layer_pct.iter().map(|(k, p)| format!("{k} {p:.0} %")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        o,
        "{:<34} delivered {:.3} % (on each layer: {}); time on layers: {}",
        "",
        c.delivered_pct,
        if layers.is_empty() { "-".to_owned() } else { layers },
        if time.is_empty() { "-".to_owned() } else { time }
    );
    let at = |s: usize| c.timeline.get(s).map_or_else(|| "-".to_owned(), list);
    let _ = writeln!(
        o,
        "{:<34} settled p50 {:.0} ms, max {:.0} ms; at 2 s: {}; at 5 s: {}; at 10 s: {}",
        "",
        c.settle_ms.p50,
        c.settle_ms.max,
        at(2),
        at(5),
        at(10)
    );
    let _ = writeln!(
        o,
        "{:<34} freezes/min worst {:.2} mean {:.2}; feedback {:.1}/s (REMB {:.1}/s, last {:.0} kbit/s); {:.1} switches per pair; {} dropped by the cap",
        "",
        c.freezes_per_minute.worst,
        c.freezes_per_minute.mean,
        c.feedback_per_s.mean,
        c.rembs_per_s,
        c.estimate_kbps,
        c.switches_per_pair,
        c.downlink_drops
    );
}

/// One table line of microsecond percentiles, printed in milliseconds.
fn latency_line(o: &mut String, label: &str, l: &Latency) {
    let ms = |us: u64| us as f64 / 1e3;
    let _ = writeln!(
        o,
        "{label:<34} p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  ({} packets)",
        ms(l.p50),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        l.samples
    );
}

fn usage_line(p: &ProcessUsage) -> String {
    format!(
        "pid {}: CPU {:.0} % steady ({:.1} % per 100 viewers), {:.0} % peak; RSS {:.1} MiB steady, {:.1} peak, {:.1} before viewers; {:.1} KiB per viewer",
        p.pid, p.cpu_pct_steady, p.cpu_pct_per_100_viewers, p.cpu_pct_peak, p.rss_steady_mib, p.rss_peak_mib, p.rss_baseline_mib, p.memory_per_viewer_kib
    )
}
