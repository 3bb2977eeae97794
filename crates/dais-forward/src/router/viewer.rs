//! Viewers: the consumers that share one sink (one participant's downlink), its downlink estimate and
//! loss, the choice of each video consumer's layer, and the probes that let an estimate grow.
//!
//! Invariants kept here:
//! - Every consumer is in the viewer of its sink, and a viewer without consumers or estimate is gone.
//! - The tick runs every [`TICK`] while some viewer is active (it has an estimate, a tile size, or a
//!   video consumer of a producer with layers); other routers never tick, and cost nothing.
//! - A consumer that has not forwarded anything yet takes its viewer's choice at once; the others go
//!   through the viewer's [`Hysteresis`] (down at once, up after a hold).
//! - Probes are resends of packets the consumer sent before (the receiver drops them as duplicates,
//!   and its estimator counts them), in bursts of [`PROBE_BURST`], at most what fills the downlink to
//!   [`PROBE_FILL`] of the estimate and never more than the next layer up needs; before a viewer's
//!   first estimate ([`Router::expect_estimate`]), up to [`INITIAL_PROBE`].

use std::time::{Duration, Instant};

use super::{Consumer, Layer, Producer, Queue, Router};
use crate::alloc::{self, Demand, Hysteresis};
use crate::cache::Cached;
use crate::{ConsumerId, KeyframeKind, LayerId, Output, PauseReason, MAX_LAYERS};

/// How often layers are measured and layers chosen.
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// How often probes are sent to viewers that climb.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// A layer silent this long is not flowing (its publisher's uplink dropped it).
pub(crate) const SILENT_AFTER: Duration = Duration::from_millis(1500);
/// During a probe burst, the downlink is filled up to this share of its estimate: a receiver's
/// estimator raises its estimate only while it receives more than it estimated (Chromium's to at
/// most 1.5 times what it receives), and leaves its slow additive climb only when it receives
/// clearly more than the link capacity it last measured.
pub(crate) const PROBE_FILL: f64 = 1.15;
/// A probe burst lasts this long.
pub(crate) const PROBE_BURST: Duration = Duration::from_secs(1);
/// After a burst that did not raise the estimate by [`PROBE_GAIN`], the next one waits this long, so
/// that a link at its capacity is overfilled (by at most 15 %) half of the time at most.
pub(crate) const PROBE_BACKOFF: Duration = Duration::from_secs(1);
/// The estimate growth that counts as a successful burst (the next one starts at once).
const PROBE_GAIN: f64 = 1.05;
/// How long a viewer that will send estimates ([`Router::expect_estimate`]) waits for its first:
/// Chromium's first REMB comes about 5 s after its first packet, or at its first overuse.
pub(crate) const FIRST_ESTIMATE_WAIT: Duration = Duration::from_secs(6);
/// While a viewer waits for its first estimate, its downlink is filled up to this with probes, so
/// that the estimator starts from what the link carries rather than from the lowest layers.
pub(crate) const INITIAL_PROBE: u64 = 2_500_000;
/// Bytes a packet costs on the wire beyond its payload: RTP header and extensions, SRTP tag, UDP
/// and IP headers (an estimate counts them too).
const PACKET_OVERHEAD: u64 = 60;
/// Most probe packets one viewer gets per probe interval.
const MAX_PROBES_PER_ROUND: usize = 16;
/// Loss (NACKed per forwarded packet) below this does not lower the estimate.
const LOSS_FLOOR: f64 = 0.05;
/// Loss lowers the estimate by at most this share (an estimate already answers congestion; loss
/// only says the link is worse than it thinks).
const LOSS_CAP: f64 = 0.15;
/// Without an estimate, loss above this makes what got through the estimate.
const LOSS_WITHOUT_ESTIMATE: f64 = 0.1;
/// Growth per tick of the estimate made from loss, while loss stays low.
const FALLBACK_GROWTH: f64 = 1.1;
/// The estimate made from loss is never below this.
const FALLBACK_MIN: u64 = 100_000;
/// The estimate made from loss is dropped (unlimited again) past this.
const FALLBACK_MAX: u64 = 50_000_000;

/// The bitrate one layer carries lately.
#[derive(Debug, Clone, Default)]
pub(crate) struct RateMeter {
    bytes: u64,
    /// Start of the current window (the first packet, or the last roll).
    since: Option<Instant>,
    bps: u64,
    last_packet: Option<Instant>,
}

impl RateMeter {
    /// Count one packet of `len` payload bytes.
    pub fn count(&mut self, now: Instant, len: usize) {
        self.bytes += len as u64 + PACKET_OVERHEAD;
        self.since.get_or_insert(now);
        self.last_packet = Some(now);
    }

    /// Close the measuring window at `now`: a moving average, a quarter per window (the first window
    /// is taken as it is).
    fn roll(&mut self, now: Instant) {
        let Some(since) = self.since else { return };
        let ms = now.saturating_duration_since(since).as_millis() as u64;
        if ms < 100 {
            return;
        }
        let sample = (self.bytes * 8 * 1000) / ms;
        self.bytes = 0;
        self.since = Some(now);
        self.bps = if self.bps == 0 { sample } else { (self.bps * 3 + sample) / 4 };
    }

    /// The rate to plan with: 0 when the layer is not flowing, at least 1 when it is (a layer that
    /// just started has no measured rate yet and is taken for cheap).
    pub fn flowing_bps(&self, now: Instant) -> u64 {
        match self.last_packet {
            Some(t) if now.saturating_duration_since(t) < SILENT_AFTER => self.bps.max(1),
            _ => 0,
        }
    }
}

/// One sink's consumers and downlink.
#[derive(Debug, Default)]
pub(crate) struct Viewer {
    /// Its consumers' slots, in join order.
    slots: Vec<usize>,
    /// The latest downlink estimate, bits per second.
    estimate: Option<u64>,
    hysteresis: Hysteresis,
    /// NACKed per forwarded packet, smoothed.
    loss: f64,
    /// What got through while much was lost (the budget without an estimate, and its cap with one),
    /// growing by [`FALLBACK_GROWTH`] a tick while little is; dropped once it reaches the estimate
    /// (without one, [`FALLBACK_MAX`]).
    fallback: Option<u64>,
    /// Its audio consumers' measured rate at the last allocation, bits per second.
    audio: u64,
    /// Probe rate, bits per second (0: not probing).
    probe_bps: u64,
    probe_credit: f64,
    /// The current probe burst: when it ends, and the budget when it began.
    burst: Option<(Instant, u64)>,
    /// No burst starts before this.
    next_burst: Option<Instant>,
    /// Until then, without an estimate: lowest layers, and probes up to [`INITIAL_PROBE`].
    first_estimate_due: Option<Instant>,
    /// Counted in `Router::active_viewers`.
    active: bool,
}

/// Buffers reused by every allocation, so that a tick does not allocate once warm.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    demands: Vec<Demand>,
    slots: Vec<usize>,
    ideal: Vec<Option<LayerId>>,
    chosen: Vec<Option<LayerId>>,
    sinks: Vec<u64>,
}

/// How many video consumers forward each layer, and how many are paused or not started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerCensus {
    /// Consumers forwarding layer `i`.
    pub forwarding: [u64; MAX_LAYERS],
    /// Paused for bandwidth.
    pub paused_bandwidth: u64,
    /// Paused because the tile is hidden.
    pub paused_hidden: u64,
    /// Waiting for their first keyframe.
    pub starting: u64,
}

impl Router {
    /// The downlink estimate of the participant behind `sink` (for a browser, its REMB), bits per
    /// second, taken as what its video may have (see `Viewer::budget`; the audio always flows). Its
    /// video consumers' layers are chosen again at once (a lower estimate takes effect at
    /// once, a higher one after [`alloc::UP_HOLD`]).
    pub fn set_estimate(&mut self, now: Instant, sink: u64, bps: u64) {
        let v = self.viewers.entry(sink).or_default();
        v.estimate = Some(bps);
        self.refresh_active(Some(now), sink);
        self.allocate(now, sink);
    }

    /// The size the participant shows a video consumer at, in device pixels: it gets at most the
    /// lowest layer at least that large (the top layer when none is). 0 in either dimension hides
    /// the tile, which pauses the consumer ([`PauseReason::Hidden`]) whatever the estimate. Ignored for
    /// audio and unknown consumers.
    pub fn set_video_size(&mut self, now: Instant, consumer: ConsumerId, width: u16, height: u16) {
        let Some(&slot) = self.consumer_slots.get(&consumer) else { return };
        let Some(c) = self.consumers.get_mut(slot).and_then(Option::as_mut) else { return };
        if !c.video {
            return;
        }
        let was_hidden = c.tile.is_some_and(hidden);
        c.tile = Some((width, height));
        let sink = c.sink;
        if was_hidden && !hidden((width, height)) {
            // Showing a tile again is no climb: skip the hold.
            if let Some(v) = self.viewers.get_mut(&sink) {
                v.hysteresis.reset();
            }
            self.refresh_active(Some(now), sink);
            self.allocate_with(now, sink, Some(slot));
            return;
        }
        self.refresh_active(Some(now), sink);
        self.allocate(now, sink);
    }

    /// The participant behind `sink` will send downlink estimates (a browser viewer negotiated REMB):
    /// until its first one (at most [`FIRST_ESTIMATE_WAIT`]), its video consumers of producers with
    /// layers take their lowest layers and its downlink is probed up to [`INITIAL_PROBE`], so that its
    /// estimator starts from what the link carries. Without this call, a sink without an estimate gets
    /// the top layers.
    pub fn expect_estimate(&mut self, now: Instant, sink: u64) {
        let v = self.viewers.entry(sink).or_default();
        if v.estimate.is_none() {
            v.first_estimate_due = Some(now + FIRST_ESTIMATE_WAIT);
        }
        self.refresh_active(Some(now), sink);
        self.allocate(now, sink);
    }

    /// The fraction of a consumer's packets its receiver reports lost (RTCP receiver reports, 0 to
    /// 1). It counts towards its viewer's loss with the NACKs: a receiver on a collapsed link stops
    /// NACKing what it has given up on, but its reports still say how much is lost.
    pub fn handle_receiver_loss(&mut self, consumer: ConsumerId, fraction: f32) {
        let Some(&slot) = self.consumer_slots.get(&consumer) else { return };
        if let Some(c) = self.consumers.get_mut(slot).and_then(Option::as_mut) {
            c.reported_loss = c.reported_loss.max(f64::from(fraction).clamp(0.0, 1.0));
        }
    }

    /// Forget what is known about `sink`'s downlink (its participant left). Its consumers, if any
    /// remain, are unaffected until they are removed.
    pub fn forget_sink(&mut self, sink: u64) {
        if let Some(v) = self.viewers.get_mut(&sink) {
            v.estimate = None;
        }
        self.refresh_active(None, sink);
        self.drop_if_empty(sink);
    }

    /// How many video consumers forward each layer, and how many are paused.
    pub fn layer_census(&self) -> LayerCensus {
        let mut census = LayerCensus::default();
        for c in self.consumers.iter().flatten().filter(|c| c.video) {
            match (c.forwarding, c.pause) {
                (true, _) => census.forwarding[usize::from(c.layer.0).min(MAX_LAYERS - 1)] += 1,
                (false, Some(PauseReason::Bandwidth)) => census.paused_bandwidth += 1,
                (false, Some(PauseReason::Hidden)) => census.paused_hidden += 1,
                (false, None) => census.starting += 1,
            }
        }
        census
    }

    /// The measured rate of each layer of `producer`, bits per second (0: not flowing).
    pub fn layer_rates(&self, now: Instant, producer: crate::ProducerId) -> [u64; MAX_LAYERS] {
        let mut rates = [0; MAX_LAYERS];
        if let Some(p) = self.producers.get(&producer) {
            for (r, l) in rates.iter_mut().zip(&p.layers) {
                *r = l.rate.flowing_bps(now);
            }
        }
        rates
    }

    /// What a viewer's video may take, after loss, as its allocation uses it (`None`: unlimited).
    pub fn effective_estimate(&self, sink: u64) -> Option<u64> {
        self.viewers.get(&sink).and_then(Viewer::budget)
    }

    pub(super) fn attach_to_viewer(&mut self, now: Instant, sink: u64, slot: usize) {
        self.viewers.entry(sink).or_default().slots.push(slot);
        self.refresh_active(Some(now), sink);
        self.allocate(now, sink);
    }

    pub(super) fn detach_from_viewer(&mut self, sink: u64, slot: usize) {
        if let Some(v) = self.viewers.get_mut(&sink) {
            v.slots.retain(|&s| s != slot);
            v.hysteresis.reset();
        }
        self.refresh_active(None, sink);
        self.drop_if_empty(sink);
    }

    fn drop_if_empty(&mut self, sink: u64) {
        if self.viewers.get(&sink).is_some_and(|v| v.slots.is_empty() && v.estimate.is_none()) {
            if let Some(v) = self.viewers.remove(&sink) {
                self.probing -= usize::from(v.probe_bps > 0);
            }
        }
    }

    /// Recount whether `sink` needs the tick. The tick's window starts when the first viewer becomes
    /// active (only calls with a `now` can make one active) and stops when the last one stops.
    fn refresh_active(&mut self, now: Option<Instant>, sink: u64) {
        let Router { viewers, consumers, producers, active_viewers, last_tick, .. } = self;
        let Some(v) = viewers.get_mut(&sink) else { return };
        let layered =
            v.slots.iter().filter_map(|&s| consumers.get(s)?.as_ref()).any(|c| {
                c.video && (c.tile.is_some() || producers.get(&c.producer).is_some_and(|p| p.layers.len() > 1))
            });
        let active = !v.slots.is_empty() && (v.estimate.is_some() || v.first_estimate_due.is_some() || layered);
        if active != v.active {
            v.active = active;
            if active {
                *active_viewers += 1;
                *last_tick = last_tick.or(now);
            } else {
                *active_viewers -= 1;
                if *active_viewers == 0 {
                    *last_tick = None;
                }
            }
        }
    }

    /// When the next tick is due, if any viewer needs it.
    pub(super) fn tick_due(&self) -> Option<Instant> {
        if self.active_viewers == 0 {
            return None;
        }
        self.last_tick.map(|t| t + TICK)
    }

    /// Measure the layers, update each viewer's loss, choose layers again.
    pub(super) fn tick(&mut self, now: Instant) {
        let dt = self.last_tick.map_or(TICK, |t| now.saturating_duration_since(t));
        self.last_tick = Some(now);
        if dt.is_zero() {
            return;
        }
        for p in self.producers.values_mut() {
            for l in &mut p.layers {
                l.rate.roll(now);
            }
        }
        let mut sinks = std::mem::take(&mut self.scratch.sinks);
        sinks.clear();
        sinks.extend(self.viewers.iter().filter(|(_, v)| v.active).map(|(s, _)| *s));
        for &sink in &sinks {
            let Router { viewers, consumers, .. } = self;
            let Some(v) = viewers.get_mut(&sink) else { continue };
            let (mut packets, mut nacked, mut bytes, mut reported) = (0u64, 0u64, 0u64, 0f64);
            for &slot in &v.slots {
                let Some(c) = consumers.get_mut(slot).and_then(Option::as_mut) else { continue };
                packets += std::mem::take(&mut c.sent_packets);
                nacked += std::mem::take(&mut c.nacked);
                bytes += std::mem::take(&mut c.sent_bytes);
                reported = reported.max(std::mem::take(&mut c.reported_loss));
            }
            let nack_loss = if packets > 0 { (nacked as f64 / packets as f64).min(1.0) } else { 0.0 };
            let window = nack_loss.max(reported);
            v.loss = (v.loss + window) / 2.0;

            let sent_bps = ((bytes + packets * PACKET_OVERHEAD) * 8 * 1000) / (dt.as_millis().max(1) as u64);
            if window > LOSS_WITHOUT_ESTIMATE && sent_bps > 0 {
                // What got through in this window; smoothed like the loss.
                let delivered = ((sent_bps as f64 * (1.0 - window)) as u64).max(FALLBACK_MIN);
                v.fallback = Some(v.fallback.map_or(delivered, |f| (f + delivered) / 2));
            } else if v.loss < LOSS_FLOOR {
                // It grows back while little is lost, and goes once it reaches the estimate (or, without
                // one, FALLBACK_MAX): an estimate that stayed high through the loss is trusted again
                // only then, so a viewer whose link collapsed does not flap between pause and resume.
                let ceiling = v.estimate.unwrap_or(FALLBACK_MAX);
                v.fallback = v.fallback.map(|f| (f as f64 * FALLBACK_GROWTH) as u64).filter(|&f| f < ceiling);
            }
            self.allocate(now, sink);
        }
        self.scratch.sinks = sinks;
    }

    /// Choose the layers of `sink`'s video consumers again.
    fn allocate(&mut self, now: Instant, sink: u64) {
        self.allocate_with(now, sink, None);
    }

    /// [`Router::allocate`], where the consumer in slot `direct` (if any) takes its choice at once.
    fn allocate_with(&mut self, now: Instant, sink: u64, direct: Option<usize>) {
        let Router { config, viewers, consumers, producers, outputs, stats, scratch, probing, next_probe, .. } = self;
        let Some(v) = viewers.get_mut(&sink) else { return };
        let Scratch { demands, slots, ideal, chosen, .. } = scratch;
        demands.clear();
        slots.clear();
        let mut audio = 0u64;
        for &slot in &v.slots {
            let Some(c) = consumers.get(slot).and_then(Option::as_ref) else { continue };
            let Some(p) = producers.get(&c.producer) else { continue };
            if !c.video {
                audio += p.layers.first().map_or(0, |l| l.rate.flowing_bps(now));
                continue;
            }
            let mut rates = [0; MAX_LAYERS];
            for (r, l) in rates.iter_mut().zip(&p.layers) {
                *r = l.rate.flowing_bps(now);
            }
            demands.push(Demand { rates, max_layer: tile_cap(c.tile, &p.layers), current: c.target });
            slots.push(slot);
        }
        if v.first_estimate_due.is_some_and(|t| v.estimate.is_some() || now >= t) {
            v.first_estimate_due = None;
        }
        // Only layers make the wait worth it: with single-layer producers there is nothing to start
        // low on, and nothing to probe for before the first estimate.
        let layered = demands.iter().any(|d| d.rates.iter().filter(|&&r| r > 0).count() > 1);
        let waiting = v.first_estimate_due.is_some() && layered;
        v.audio = audio;
        let budget = if waiting { 0 } else { v.budget().unwrap_or(u64::MAX) };
        ideal.clear();
        ideal.resize(demands.len(), None);
        alloc::allocate(budget, demands, ideal);
        let congested = v.congested();
        chosen.clear();
        for ((d, i), &slot) in demands.iter().zip(ideal.iter_mut()).zip(slots.iter()) {
            let fresh = consumers.get(slot).and_then(Option::as_ref).is_some_and(|c| c.started.is_none());
            // Loss alone moves layers down but never pauses: only an estimate can say that even the
            // lowest layer does not fit. Nor is a video with one layer flowing (VP9, AV1, or simulcast
            // whose other layers stopped) paused for bandwidth: there is nothing lower to fall back to,
            // and a receiver's estimate can grow only from what it receives. Nor is a video that
            // forwards (or has not started) paused while the downlink shows no congestion (see
            // `Viewer::congested`): paused, a viewer receives too little for its estimate to grow.
            let flowing = d.rates.iter().filter(|&&r| r > 0).count();
            let unproven = !congested && (d.current.is_some() || fresh);
            if i.is_none() && d.max_layer.is_some() && (v.estimate.is_none() || flowing == 1 || unproven) {
                *i = d.rates.iter().position(|&r| r > 0).map(super::layer_id);
            }
            if flowing == 0 && d.max_layer.is_some() {
                // Nothing flows yet (or any more): keep what it has, no pause for what nobody sends.
                *i = d.current;
            }
            chosen.push(if fresh || direct == Some(slot) { *i } else { d.current });
        }
        v.hysteresis.apply(now, ideal, chosen);
        let mut q = Queue { config, outputs, stats };
        for ((d, &choice), &slot) in demands.iter().zip(chosen.iter()).zip(slots.iter()) {
            let Some(c) = consumers.get_mut(slot).and_then(Option::as_mut) else { continue };
            let Some(p) = producers.get_mut(&c.producer) else { continue };
            let reason = if d.max_layer.is_none() { PauseReason::Hidden } else { PauseReason::Bandwidth };
            c.set_target(now, &mut q, p, choice, reason);
        }
        // Probe towards the next step up, in bursts, while an estimate holds the viewer below what it
        // wants.
        let was_probing = v.probe_bps > 0;
        let climb = v.estimate.zip(alloc::next_step(demands, chosen));
        if let Some((_, start)) = v.burst.filter(|(end, _)| now >= *end) {
            v.burst = None;
            let gained = v.budget().unwrap_or(0) as f64 >= start as f64 * PROBE_GAIN;
            v.next_burst = Some(if gained { now } else { now + PROBE_BACKOFF });
        }
        if climb.is_none() {
            v.burst = None;
        } else if v.burst.is_none() && v.next_burst.is_none_or(|t| now >= t) {
            v.burst = Some((now + PROBE_BURST, v.budget().unwrap_or(0)));
        }
        let initial = waiting.then(|| {
            let cost: u64 =
                demands.iter().zip(chosen.iter()).map(|(d, c)| c.map_or(0, |l| d.rates[usize::from(l.0)])).sum::<u64>()
                    + audio;
            INITIAL_PROBE.saturating_sub(cost)
        });
        v.probe_bps = match (initial, climb, v.burst) {
            (Some(initial), ..) => initial,
            (None, Some((_, step)), Some(_)) => {
                // In the estimate's terms: video only.
                let cost: u64 =
                    demands.iter().zip(chosen.iter()).map(|(d, c)| c.map_or(0, |l| d.rates[usize::from(l.0)])).sum();
                let fill = (v.budget().unwrap_or(0) as f64 * PROBE_FILL) as u64;
                fill.min(cost + step).saturating_sub(cost)
            }
            _ => 0,
        };
        let is_probing = v.probe_bps > 0;
        if is_probing != was_probing {
            if is_probing {
                *probing += 1;
                next_probe.get_or_insert(now + PROBE_INTERVAL);
            } else {
                *probing -= 1;
                v.probe_credit = 0.0;
            }
        }
        if *probing == 0 {
            *next_probe = None;
        }
    }

    /// Send each probing viewer its share of probe packets.
    pub(super) fn probe(&mut self, now: Instant) {
        self.next_probe = (self.probing > 0).then(|| now + PROBE_INTERVAL);
        let Router { viewers, consumers, producers, outputs, stats, .. } = self;
        for v in viewers.values_mut().filter(|v| v.probe_bps > 0) {
            let interval = PROBE_INTERVAL.as_secs_f64();
            v.probe_credit = (v.probe_credit + v.probe_bps as f64 / 8.0 * interval).min(v.probe_bps as f64 / 8.0 * 0.2);
            let mut sent = 0;
            for c in v.slots.iter().filter_map(|&s| consumers.get(s)?.as_ref()).filter(|c| c.video) {
                let Some(p) = producers.get(&c.producer) else { continue };
                let Some(l) = p.layers.get(usize::from(c.layer.0)) else { continue };
                let Some(s) = c.started else { continue };
                let mut seq = s.max_out;
                while v.probe_credit > 0.0 && sent < MAX_PROBES_PER_ROUND {
                    let cached = match &c.probe_seed {
                        Some((seed_seq, k)) => Some((*seed_seq, k)),
                        None => c.source_of(seq, l.epoch).and_then(|ext| l.cache.get(now, ext)).map(|k| (seq, k)),
                    };
                    let Some(out) = cached.and_then(|(seq, k)| c.resend(p, seq, k, true)) else { break };
                    let len = out.payload.len() as u64;
                    v.probe_credit -= (len + PACKET_OVERHEAD) as f64;
                    stats.probe_packets += 1;
                    stats.probe_bytes += len;
                    stats.packets_out += 1;
                    stats.bytes_out += len;
                    outputs.push_back(Output::Rtp(out));
                    sent += 1;
                    if seq == 0 || seq <= s.start_out {
                        break;
                    }
                    seq -= 1;
                }
            }
        }
    }
}

impl Viewer {
    /// Whether its downlink shows congestion: loss, or what got through after heavy loss still
    /// capping the plan. Only then may a video that forwards be paused for bandwidth: an estimate
    /// alone can be stale (Chromium's first REMB is what arrived at that moment, which between two
    /// speakers is almost nothing, and it then rises at most to 1.5 times what arrives), and a link
    /// that carries what it is sent without loss is not too small for it.
    fn congested(&self) -> bool {
        self.loss >= LOSS_FLOOR || self.fallback.is_some()
    }

    /// What its video may take: REMB lowered by loss, capped by what got through since much was
    /// lost (until that grows back to the REMB) less its audio; without REMB, what got through when
    /// much was lost, less its audio. `None` is unlimited.
    ///
    /// A REMB is the video's share already: libwebrtc's receive-side estimator counts video packets
    /// only ("for audio, we only support send side BWE"), their payload and padding, and raises its
    /// estimate to at most 1.5 times that plus 10 kbit/s. Taking audio from it as well left a
    /// viewer of one small lowest layer nothing: Chromium's REMB sat at 22 kbit/s for 30 s with
    /// 42 kbit/s of audio flowing. What got through, on the other hand, counts everything sent.
    fn budget(&self) -> Option<u64> {
        let attenuation = (self.loss - LOSS_FLOOR).clamp(0.0, LOSS_CAP);
        let got_through = self.fallback.map(|f| f.saturating_sub(self.audio));
        match (self.estimate, got_through) {
            // After heavy loss: what got through, whatever the estimate says (a receiver's estimator
            // hears too few packets on a link that drops most of them to lower its estimate).
            (Some(e), Some(f)) => Some(f.min((e as f64 * (1.0 - attenuation)) as u64)),
            (Some(e), _) => Some((e as f64 * (1.0 - attenuation)) as u64),
            (None, f) => f,
        }
    }
}

impl Consumer {
    /// Take the allocation's choice: wait for a keyframe of a new layer (asked for at once, through
    /// the layer's throttle), or pause for `reason`.
    fn set_target(
        &mut self,
        now: Instant,
        q: &mut Queue<'_>,
        p: &mut Producer,
        target: Option<LayerId>,
        reason: PauseReason,
    ) {
        if target == self.target && (target.is_some() || self.pause == Some(reason)) {
            return;
        }
        self.target = target;
        let Some(t) = target else {
            self.set_want(&mut p.layers, None);
            if self.forwarding {
                self.forwarding = false;
                self.src = None;
                self.probe_seed = self.last_sent(now, &p.layers);
            }
            if self.pause.is_none() {
                q.outputs.push_back(Output::Paused { consumer: self.id, sink: self.sink, reason });
            }
            self.pause = Some(reason);
            return;
        };
        self.pause = None;
        if self.forwarding && self.layer == t {
            self.set_want(&mut p.layers, None);
            return;
        }
        self.set_want(&mut p.layers, Some(t));
        if let (false, Some(l)) = (p.paused, p.layers.get_mut(usize::from(t.0))) {
            let id = self.producer;
            q.request_keyframe(id, t, l, now, KeyframeKind::Pli);
        }
    }

    /// Its last forwarded packet, while its layer's cache still holds it.
    fn last_sent(&self, now: Instant, layers: &[Layer]) -> Option<(u64, Cached)> {
        let s = self.started?;
        let l = layers.get(usize::from(self.layer.0))?;
        let ext = self.source_of(s.max_out, l.epoch)?;
        Some((s.max_out, l.cache.get(now, ext)?.clone()))
    }
}

fn hidden(tile: (u16, u16)) -> bool {
    tile.0 == 0 || tile.1 == 0
}

/// The highest layer a tile needs: the lowest layer at least as wide and as tall as the tile, else the
/// top; `None` for a hidden tile. Layers without known dimensions are taken at the top layer's (or
/// 1280x720) halved once per step down, as simulcast encodings usually are.
fn tile_cap(tile: Option<(u16, u16)>, layers: &[Layer]) -> Option<LayerId> {
    let top = layers.len().saturating_sub(1);
    let Some(tile) = tile else { return Some(super::layer_id(top)) };
    if hidden(tile) {
        return None;
    }
    let (tw, th) = layers.get(top).and_then(|l| l.dims).unwrap_or((1280, 720));
    for (i, l) in layers.iter().enumerate() {
        let shift = top - i;
        let (w, h) = l.dims.unwrap_or((tw >> shift, th >> shift));
        if w >= tile.0 && h >= tile.1 {
            return Some(super::layer_id(i));
        }
    }
    Some(super::layer_id(top))
}
