//! The [`Router`]: producers, their consumers, the per-consumer header rewrite and keyframe requests.
//!
//! Invariants kept here:
//! - Each consumer's extended sequence numbers start at its `initial_seq`, never go below it, keep the
//!   producer's gaps (so loss stays visible to NACK) and stay continuous across a publisher stream restart
//!   (SSRC change), as do its timestamps. Late packets of the replaced stream do not count as another
//!   restart: for [`STALE_SSRC_WINDOW`] after a restart they are dropped as [`DropReason::StaleSsrc`].
//! - A video consumer forwards nothing before the first packet that starts a keyframe.
//! - At most one keyframe request per producer per [`RouterConfig::keyframe_request_interval`]; requests
//!   inside the window are merged (FIR beats PLI) and sent when it ends.
//! - `handle_rtp` allocates nothing once the output queue has grown to the fan-out size.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::hash::IdMap;
use crate::seq::SeqExtender;
use crate::{
    is_keyframe_start, Codec, ConsumerId, ConsumerSpec, DropCounters, DropReason, KeyframeKind, MediaKind, Output,
    ProducerId, ProducerSpec, RtpIn, RtpOut,
};

/// Tunables of a [`Router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// At most one upstream keyframe request per producer per interval. Default 500 ms.
    pub keyframe_request_interval: Duration,
    /// While a video consumer still waits for its first keyframe, ask again this often. Default 1 s.
    pub keyframe_retry_interval: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            keyframe_request_interval: Duration::from_millis(500),
            keyframe_retry_interval: Duration::from_secs(1),
        }
    }
}

/// Totals since the router was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Packets handed to [`Router::handle_rtp`] for a known producer.
    pub packets_in: u64,
    /// Payload bytes of those packets.
    pub bytes_in: u64,
    /// [`Output::Rtp`] queued.
    pub packets_out: u64,
    /// Payload bytes of those.
    pub bytes_out: u64,
    /// [`Output::KeyframeRequest`] queued.
    pub keyframe_requests_sent: u64,
}

/// Why [`Router::add_consumer`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The producer id is not known to the router.
    UnknownProducer,
    /// None of the producer's codecs was negotiated with the consumer.
    NoCommonCodec,
}

impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsumeError::UnknownProducer => "unknown producer",
            ConsumeError::NoCommonCodec => "no codec in common with the producer",
        })
    }
}

impl std::error::Error for ConsumeError {}

/// How long after a publisher stream restart packets with the previous SSRC are taken for late packets of
/// the old stream (and dropped) rather than for a restart back to it. Reordering on real paths is far
/// shorter; a publisher that really returns to its previous SSRC loses at most this much.
pub(crate) const STALE_SSRC_WINDOW: Duration = Duration::from_secs(1);

/// Highest RTP payload type plus one.
const PT_COUNT: usize = 128;

#[derive(Debug)]
struct Producer {
    kind: MediaKind,
    clock_rate: u32,
    codec_by_pt: [Option<Codec>; PT_COUNT],
    /// Slots in `Router::consumers`, in join order.
    consumers: Vec<usize>,
    /// SSRC of the current stream; a different one is a restart.
    ssrc: Option<u32>,
    /// SSRC of the stream the latest restart replaced, and when.
    replaced: Option<(u32, Instant)>,
    /// Bumped on every restart; consumers rebase when theirs differs.
    epoch: u32,
    seq: SeqExtender,
    /// Video consumers still waiting for their first keyframe.
    waiting: usize,
    last_request: Option<Instant>,
    pending: Option<KeyframeKind>,
    /// Packets are dropped ([`DropReason::Paused`]) until resumed.
    paused: bool,
}

#[derive(Debug)]
struct Consumer {
    id: ConsumerId,
    producer: ProducerId,
    ssrc: u32,
    pt_by_codec: [Option<u8>; Codec::COUNT],
    initial_seq: u16,
    waiting: bool,
    epoch: u32,
    started: Option<Started>,
}

/// Rewrite state of a consumer that has forwarded at least one packet.
#[derive(Debug, Clone, Copy)]
struct Started {
    /// Producer extended seq (in the consumer's epoch) of the first packet forwarded in that epoch.
    start_in: u64,
    /// Consumer extended seq given to that packet.
    start_out: u64,
    ts_offset: u32,
    max_out: u64,
    max_out_ts: u32,
    last_out_at: Instant,
}

/// The forwarding core: fans each producer's packets out to its consumers. See the crate docs.
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    producers: IdMap<ProducerId, Producer>,
    consumers: Vec<Option<Consumer>>,
    free_slots: Vec<usize>,
    consumer_slots: IdMap<ConsumerId, usize>,
    next_producer: u32,
    next_consumer: u32,
    outputs: VecDeque<Output>,
    drops: DropCounters,
    stats: RouterStats,
}

impl Router {
    /// An empty router.
    pub fn new(config: RouterConfig) -> Self {
        Router {
            config,
            producers: IdMap::default(),
            consumers: Vec::new(),
            free_slots: Vec::new(),
            consumer_slots: IdMap::default(),
            next_producer: 0,
            next_consumer: 0,
            outputs: VecDeque::new(),
            drops: DropCounters::default(),
            stats: RouterStats::default(),
        }
    }

    /// Register an incoming stream. Its first packet defines the stream's SSRC.
    pub fn add_producer(&mut self, now: Instant, spec: ProducerSpec) -> ProducerId {
        let _ = now;
        let mut codec_by_pt = [None; PT_COUNT];
        for &(pt, codec) in &spec.payload_types {
            if let Some(slot) = codec_by_pt.get_mut(usize::from(pt)) {
                *slot = Some(codec);
            }
        }
        let id = loop {
            let id = ProducerId(self.next_producer);
            self.next_producer = self.next_producer.wrapping_add(1);
            if !self.producers.contains_key(&id) {
                break id;
            }
        };
        self.producers.insert(
            id,
            Producer {
                kind: spec.kind,
                clock_rate: spec.clock_rate,
                codec_by_pt,
                consumers: Vec::new(),
                ssrc: None,
                replaced: None,
                epoch: 0,
                seq: SeqExtender::default(),
                waiting: 0,
                paused: false,
                last_request: None,
                pending: None,
            },
        );
        id
    }

    /// Remove a producer and all its consumers; returns the removed consumers. Queued outputs that name
    /// them are discarded.
    pub fn remove_producer(&mut self, producer: ProducerId) -> Vec<ConsumerId> {
        let Some(p) = self.producers.remove(&producer) else {
            return Vec::new();
        };
        let mut removed = Vec::with_capacity(p.consumers.len());
        for slot in p.consumers {
            if let Some(c) = self.consumers.get_mut(slot).and_then(Option::take) {
                self.consumer_slots.remove(&c.id);
                self.free_slots.push(slot);
                removed.push(c.id);
            }
        }
        self.outputs.retain(|o| match o {
            Output::Rtp(r) => !removed.contains(&r.consumer),
            Output::KeyframeRequest { producer: p, .. } => *p != producer,
        });
        removed
    }

    /// Attach a new consumer to `producer`. A video consumer waits for a keyframe and queues a (throttled)
    /// keyframe request; an audio consumer forwards from the next packet.
    ///
    /// [`Codec::Other`] only counts as a common codec when the producer has nothing but `Other` codecs, so
    /// a shared RTX or RED entry does not hide a missing media codec.
    pub fn add_consumer(
        &mut self,
        now: Instant,
        producer: ProducerId,
        spec: ConsumerSpec,
    ) -> Result<ConsumerId, ConsumeError> {
        let p = self.producers.get_mut(&producer).ok_or(ConsumeError::UnknownProducer)?;
        let mut pt_by_codec = [None; Codec::COUNT];
        for &(codec, pt) in &spec.payload_types {
            let slot = &mut pt_by_codec[codec.index()];
            if slot.is_none() {
                *slot = Some(pt);
            }
        }
        let media_only = p.codec_by_pt.iter().flatten().any(|&c| c != Codec::Other);
        let common = p
            .codec_by_pt
            .iter()
            .flatten()
            .any(|&c| pt_by_codec[c.index()].is_some() && (c != Codec::Other || !media_only));
        if !common {
            return Err(ConsumeError::NoCommonCodec);
        }
        let id = loop {
            let id = ConsumerId(self.next_consumer);
            self.next_consumer = self.next_consumer.wrapping_add(1);
            if !self.consumer_slots.contains_key(&id) {
                break id;
            }
        };
        let waiting = p.kind == MediaKind::Video;
        let consumer = Consumer {
            id,
            producer,
            ssrc: spec.ssrc,
            pt_by_codec,
            initial_seq: spec.initial_seq,
            waiting,
            epoch: p.epoch,
            started: None,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.consumers[slot] = Some(consumer);
                slot
            }
            None => {
                self.consumers.push(Some(consumer));
                self.consumers.len() - 1
            }
        };
        self.consumer_slots.insert(id, slot);
        p.consumers.push(slot);
        if waiting {
            p.waiting += 1;
            if !p.paused {
                request_keyframe(producer, p, now, KeyframeKind::Pli, &self.config, &mut self.outputs, &mut self.stats);
            }
        }
        Ok(id)
    }

    /// Detach a consumer. Queued outputs for it are discarded. Unknown ids are ignored.
    pub fn remove_consumer(&mut self, consumer: ConsumerId) {
        let Some(slot) = self.consumer_slots.remove(&consumer) else {
            return;
        };
        let Some(c) = self.consumers.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free_slots.push(slot);
        if let Some(p) = self.producers.get_mut(&c.producer) {
            p.consumers.retain(|&s| s != slot);
            if c.waiting {
                p.waiting = p.waiting.saturating_sub(1);
            }
        }
        self.outputs.retain(|o| !matches!(o, Output::Rtp(r) if r.consumer == consumer));
    }

    /// The producer a consumer is attached to.
    pub fn consumer_producer(&self, consumer: ConsumerId) -> Option<ProducerId> {
        let slot = *self.consumer_slots.get(&consumer)?;
        self.consumers.get(slot)?.as_ref().map(|c| c.producer)
    }

    /// The consumers of a producer, in join order (empty for an unknown producer).
    pub fn consumers(&self, producer: ProducerId) -> impl Iterator<Item = ConsumerId> + '_ {
        self.producers
            .get(&producer)
            .map(|p| p.consumers.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|&slot| self.consumers.get(slot)?.as_ref().map(|c| c.id))
    }

    /// Fan one packet of `producer` out to its consumers: queues one [`Output::Rtp`] per consumer that
    /// forwards it, and counts a [`DropReason`] for every one that does not.
    pub fn handle_rtp(&mut self, now: Instant, producer: ProducerId, packet: RtpIn) {
        let Router { config, producers, consumers, outputs, drops, stats, .. } = self;
        let Some(p) = producers.get_mut(&producer) else {
            drops.count(DropReason::UnknownProducer);
            return;
        };
        stats.packets_in += 1;
        stats.bytes_in += packet.payload.len() as u64;

        let codec = match p.admit(now, &packet) {
            Ok(codec) => codec,
            Err(reason) => {
                drops.count(reason);
                return;
            }
        };
        let video = p.kind == MediaKind::Video;
        match p.ssrc {
            Some(ssrc) if ssrc == packet.ssrc => {}
            Some(old) => {
                p.replaced = Some((old, now));
                p.ssrc = Some(packet.ssrc);
                p.epoch = p.epoch.wrapping_add(1);
                p.seq.reset();
                if video {
                    request_keyframe(producer, p, now, KeyframeKind::Pli, config, outputs, stats);
                }
            }
            None => p.ssrc = Some(packet.ssrc),
        }
        let ext = p.seq.extend(packet.seq);
        let keyframe = video && is_keyframe_start(codec, &packet.payload);
        if keyframe {
            // The keyframe a pending request asks for is on its way.
            p.pending = None;
        }

        let mut started_now = 0;
        for &slot in &p.consumers {
            let Some(c) = consumers.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let Some(pt) = c.pt_by_codec[codec.index()] else {
                drops.count(DropReason::CodecNotNegotiated);
                continue;
            };
            if c.waiting {
                if !keyframe {
                    drops.count(DropReason::WaitingForKeyframe);
                    continue;
                }
                c.waiting = false;
                started_now += 1;
            }
            let s = match &mut c.started {
                Some(s) if c.epoch == p.epoch => s,
                Some(s) => {
                    // The publisher restarted: continue right after the last packet this consumer sent.
                    let elapsed = now.saturating_duration_since(s.last_out_at);
                    let ticks = u128::from(p.clock_rate).saturating_mul(elapsed.as_nanos()) / 1_000_000_000;
                    let ticks = u32::try_from(ticks).unwrap_or(u32::MAX).max(1);
                    let next_ts = s.max_out_ts.wrapping_add(ticks);
                    s.start_in = ext;
                    s.start_out = s.max_out + 1;
                    s.ts_offset = next_ts.wrapping_sub(packet.timestamp);
                    c.epoch = p.epoch;
                    s
                }
                None => {
                    c.epoch = p.epoch;
                    let out = u64::from(c.initial_seq);
                    c.started.insert(Started {
                        start_in: ext,
                        start_out: out,
                        ts_offset: 0,
                        max_out: out,
                        max_out_ts: packet.timestamp,
                        last_out_at: now,
                    })
                }
            };
            if ext < s.start_in {
                drops.count(DropReason::BeforeStart);
                continue;
            }
            let seq = s.start_out + (ext - s.start_in);
            let timestamp = packet.timestamp.wrapping_add(s.ts_offset);
            if seq >= s.max_out {
                s.max_out = seq;
                s.max_out_ts = timestamp;
            }
            s.last_out_at = now;
            stats.packets_out += 1;
            stats.bytes_out += packet.payload.len() as u64;
            outputs.push_back(Output::Rtp(RtpOut {
                consumer: c.id,
                ssrc: c.ssrc,
                seq,
                timestamp,
                payload_type: pt,
                marker: packet.marker,
                keyframe,
                payload: Bytes::clone(&packet.payload),
            }));
        }
        p.waiting = p.waiting.saturating_sub(started_now);
    }

    /// Pause or resume forwarding a producer (an operator's server-side mute). While paused, its packets
    /// are dropped as [`DropReason::Paused`]. On resume every consumer continues right after its last
    /// packet (no sequence gap for receivers to NACK), and video consumers wait for a fresh keyframe,
    /// which is requested at once. Returns false for an unknown producer.
    pub fn set_paused(&mut self, now: Instant, producer: ProducerId, paused: bool) -> bool {
        let Router { config, producers, consumers, outputs, stats, .. } = self;
        let Some(p) = producers.get_mut(&producer) else {
            return false;
        };
        if p.paused == paused {
            return true;
        }
        p.paused = paused;
        if paused {
            return true;
        }
        // Resume: rebase like a restart, and gate video on a keyframe again.
        p.epoch = p.epoch.wrapping_add(1);
        if p.kind == MediaKind::Video {
            for &slot in &p.consumers {
                if let Some(c) = consumers.get_mut(slot).and_then(Option::as_mut) {
                    if !c.waiting {
                        c.waiting = true;
                        p.waiting += 1;
                    }
                }
            }
            request_keyframe(producer, p, now, KeyframeKind::Pli, config, outputs, stats);
        }
        true
    }

    /// Why [`Router::handle_rtp`] would drop `packet` before looking at any consumer (unknown producer
    /// or payload type, paused, malformed, late packet of a replaced stream), or `Ok` if it would fan it
    /// out. Changes and counts nothing. A media worker asks this before it relays a packet to other
    /// workers, so that their routers never count the same packet-level drop again.
    pub fn admits(&self, now: Instant, producer: ProducerId, packet: &RtpIn) -> Result<(), DropReason> {
        let p = self.producers.get(&producer).ok_or(DropReason::UnknownProducer)?;
        p.admit(now, packet).map(|_| ())
    }

    /// A viewer asked for a keyframe (PLI or FIR). Requests are aggregated per producer and throttled;
    /// requests for audio producers are ignored, unknown consumers are counted as
    /// [`DropReason::UnknownConsumer`].
    pub fn handle_keyframe_request(&mut self, now: Instant, consumer: ConsumerId, kind: KeyframeKind) {
        let Some(producer) = self.consumer_producer(consumer) else {
            self.drops.count(DropReason::UnknownConsumer);
            return;
        };
        self.request_keyframe(now, producer, kind);
    }

    /// Consumers this router does not hold (a mirror of the producer on another media worker) want a
    /// keyframe. The request shares the producer's throttle with local ones, so the publisher sees at
    /// most one request per interval however many workers ask. Ignored for audio, paused and unknown
    /// producers.
    pub fn request_keyframe(&mut self, now: Instant, producer: ProducerId, kind: KeyframeKind) {
        let Some(p) = self.producers.get_mut(&producer) else {
            return;
        };
        // A paused producer is asked for a keyframe when it resumes, not before.
        if p.kind == MediaKind::Video && !p.paused {
            request_keyframe(producer, p, now, kind, &self.config, &mut self.outputs, &mut self.stats);
        }
    }

    /// Send keyframe requests whose throttle window ended and retry for consumers still waiting.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Router { config, producers, outputs, stats, .. } = self;
        for (&id, p) in producers.iter_mut() {
            if p.paused {
                continue;
            }
            if let Some(kind) = p.pending {
                if p.request_due(config).is_some_and(|due| now >= due) {
                    request_keyframe(id, p, now, kind, config, outputs, stats);
                }
            } else if p.waiting > 0 && p.retry_due(config).is_some_and(|due| now >= due) {
                request_keyframe(id, p, now, KeyframeKind::Pli, config, outputs, stats);
            }
        }
    }

    /// The next instant at which [`Router::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.producers
            .values()
            .filter(|p| !p.paused)
            .filter_map(|p| {
                if p.pending.is_some() {
                    p.request_due(&self.config)
                } else if p.waiting > 0 {
                    p.retry_due(&self.config)
                } else {
                    None
                }
            })
            .min()
    }

    /// Next queued output, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Drop counters since the router was created.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Totals since the router was created.
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }
}

impl Producer {
    /// The packet-level checks of [`Router::handle_rtp`]: the packet's codec, or why it is dropped.
    fn admit(&self, now: Instant, packet: &RtpIn) -> Result<Codec, DropReason> {
        let codec = self
            .codec_by_pt
            .get(usize::from(packet.payload_type))
            .copied()
            .flatten()
            .ok_or(DropReason::UnknownPayloadType)?;
        if self.paused {
            return Err(DropReason::Paused);
        }
        if self.kind == MediaKind::Video && packet.payload.is_empty() {
            return Err(DropReason::Malformed);
        }
        let restarted = self.ssrc.is_some_and(|s| s != packet.ssrc);
        let stale = self
            .replaced
            .is_some_and(|(old, at)| old == packet.ssrc && now.saturating_duration_since(at) < STALE_SSRC_WINDOW);
        if restarted && stale {
            return Err(DropReason::StaleSsrc);
        }
        Ok(codec)
    }

    /// When the throttle window after the last request ends (`None`: no request yet, or never).
    fn request_due(&self, config: &RouterConfig) -> Option<Instant> {
        self.last_request?.checked_add(config.keyframe_request_interval)
    }

    /// When waiting consumers should be asked for again.
    fn retry_due(&self, config: &RouterConfig) -> Option<Instant> {
        self.last_request?.checked_add(config.keyframe_retry_interval)
    }
}

/// Send a keyframe request for `p` now if its throttle window allows, else remember it (merged, FIR wins).
fn request_keyframe(
    id: ProducerId,
    p: &mut Producer,
    now: Instant,
    kind: KeyframeKind,
    config: &RouterConfig,
    outputs: &mut VecDeque<Output>,
    stats: &mut RouterStats,
) {
    let kind = p.pending.map_or(kind, |pending| pending.max(kind));
    let open = match p.last_request {
        None => true,
        Some(_) => p.request_due(config).is_some_and(|due| now >= due),
    };
    if open {
        p.pending = None;
        p.last_request = Some(now);
        stats.keyframe_requests_sent += 1;
        outputs.push_back(Output::KeyframeRequest { producer: id, kind });
    } else {
        p.pending = Some(kind);
    }
}

#[cfg(test)]
mod tests;
