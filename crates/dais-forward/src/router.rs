//! The [`Router`]: producers and their layers, consumers, the per-consumer header rewrite, keyframe
//! requests and retransmissions from the producers' packet caches.
//!
//! Invariants kept here:
//! - Each consumer's extended sequence numbers start at its `initial_seq`, never go below it, keep the
//!   gaps of the layer it forwards (so loss stays visible to NACK) and stay continuous across a
//!   publisher stream restart (SSRC change within a layer), as do its timestamps. Late packets of the
//!   replaced stream do not count as another restart: for [`STALE_SSRC_WINDOW`] after a restart they are
//!   dropped as [`DropReason::StaleSsrc`].
//! - The layers of a producer are independent streams: a packet of one layer never restarts another,
//!   and a consumer forwards the packets of one layer only.
//! - A video consumer forwards nothing before the first packet that starts a keyframe of its layer.
//! - At most one keyframe request per producer layer per [`RouterConfig::keyframe_request_interval`];
//!   requests inside the window are merged (FIR beats PLI) and sent when it ends.
//! - A NACKed packet is resent only if the consumer sent it under its current mapping (same layer, same
//!   stream epoch) and the layer's cache still holds it; it goes out with the sequence number and
//!   timestamp the consumer first gave it. Anything else is a counted miss.
//! - `handle_rtp` allocates nothing once the output queue has grown to the fan-out size and each video
//!   layer's cache ring exists.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::cache::{Cached, PacketCache};
use crate::hash::IdMap;
use crate::seq::SeqExtender;
use crate::{
    is_keyframe_start, Codec, ConsumerId, ConsumerSpec, DropCounters, DropReason, KeyframeKind, LayerId, MediaKind,
    Output, ProducerId, ProducerSpec, RtpIn, RtpOut, MAX_LAYERS,
};

/// Tunables of a [`Router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// At most one upstream keyframe request per producer layer per interval. Default 500 ms.
    pub keyframe_request_interval: Duration,
    /// While a video consumer still waits for its first keyframe, ask again this often. Default 1 s.
    pub keyframe_retry_interval: Duration,
    /// Packets each video layer keeps for retransmissions. Default 1,024.
    pub cache_packets: usize,
    /// Oldest packet a retransmission may come from. Default 1 s: a NACK round trip plus a receiver's
    /// jitter buffer; Janus sizes its window at RTT + 100 ms within 200 ms to 1 s.
    pub cache_age: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            keyframe_request_interval: Duration::from_millis(500),
            keyframe_retry_interval: Duration::from_secs(1),
            cache_packets: 1024,
            cache_age: Duration::from_secs(1),
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
    /// [`Output::Rtp`] queued, retransmissions included.
    pub packets_out: u64,
    /// Payload bytes of those.
    pub bytes_out: u64,
    /// [`Output::KeyframeRequest`] queued.
    pub keyframe_requests_sent: u64,
    /// Sequence numbers consumers NACKed ([`Router::handle_nack`]).
    pub resend_requests: u64,
    /// Retransmissions queued from a packet cache.
    pub resends: u64,
    /// NACKed packets that could not be resent: never sent to that consumer under its current
    /// mapping, already gone from the cache, or the producer is audio.
    pub resend_misses: u64,
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
    /// At least one; indexed by [`LayerId`].
    layers: Vec<Layer>,
    /// Packets are dropped ([`DropReason::Paused`]) until resumed.
    paused: bool,
}

/// One simulcast layer of a producer: its own RTP stream.
#[derive(Debug)]
struct Layer {
    /// SSRC of the current stream; a different one is a restart.
    ssrc: Option<u32>,
    /// SSRC of the stream the latest restart replaced, and when.
    replaced: Option<(u32, Instant)>,
    /// Bumped on every restart (and resume); consumers rebase when theirs differs.
    epoch: u32,
    seq: SeqExtender,
    /// Video consumers of this layer still waiting for their first keyframe.
    waiting: usize,
    last_request: Option<Instant>,
    pending: Option<KeyframeKind>,
    /// Recent packets, for retransmissions (video only; empty for audio).
    cache: PacketCache,
}

#[derive(Debug)]
struct Consumer {
    id: ConsumerId,
    producer: ProducerId,
    sink: u64,
    ssrc: u32,
    pt_by_codec: [Option<u8>; Codec::COUNT],
    initial_seq: u16,
    layer: LayerId,
    waiting: bool,
    /// The epoch of its layer that `started` maps.
    epoch: u32,
    started: Option<Started>,
}

/// Rewrite state of a consumer that has forwarded at least one packet.
#[derive(Debug, Clone, Copy)]
struct Started {
    /// Layer extended seq (in the consumer's epoch) of the first packet forwarded in that epoch.
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

    /// Register an incoming stream. The first packet of each layer defines that layer's SSRC.
    pub fn add_producer(&mut self, now: Instant, spec: ProducerSpec) -> ProducerId {
        let _ = now;
        let mut codec_by_pt = [None; PT_COUNT];
        for &(pt, codec) in &spec.payload_types {
            if let Some(slot) = codec_by_pt.get_mut(usize::from(pt)) {
                *slot = Some(codec);
            }
        }
        let (packets, age) = match spec.kind {
            MediaKind::Video => (self.config.cache_packets, self.config.cache_age),
            MediaKind::Audio => (0, Duration::ZERO),
        };
        let layers = (0..usize::from(spec.layers).clamp(1, MAX_LAYERS))
            .map(|_| Layer {
                ssrc: None,
                replaced: None,
                epoch: 0,
                seq: SeqExtender::default(),
                waiting: 0,
                last_request: None,
                pending: None,
                cache: PacketCache::new(packets, age),
            })
            .collect();
        let id = loop {
            let id = ProducerId(self.next_producer);
            self.next_producer = self.next_producer.wrapping_add(1);
            if !self.producers.contains_key(&id) {
                break id;
            }
        };
        let producer = Producer {
            kind: spec.kind,
            clock_rate: spec.clock_rate,
            codec_by_pt,
            consumers: Vec::new(),
            layers,
            paused: false,
        };
        self.producers.insert(id, producer);
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

    /// Attach a new consumer to `producer`, forwarding its first layer. A video consumer waits for a
    /// keyframe and queues a (throttled) keyframe request; an audio consumer forwards from the next packet.
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
        let layer = LayerId(0);
        let epoch = p.layers.first().map_or(0, |l| l.epoch);
        let consumer = Consumer {
            id,
            producer,
            sink: spec.sink,
            ssrc: spec.ssrc,
            pt_by_codec,
            initial_seq: spec.initial_seq,
            layer,
            waiting,
            epoch,
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
        let paused = p.paused;
        if let (true, Some(l)) = (waiting, p.layers.first_mut()) {
            l.waiting += 1;
            if !paused {
                let mut q = Queue { config: &self.config, outputs: &mut self.outputs, stats: &mut self.stats };
                q.request_keyframe(producer, layer, l, now, KeyframeKind::Pli);
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
            if let (true, Some(l)) = (c.waiting, p.layers.get_mut(usize::from(c.layer.0))) {
                l.waiting = l.waiting.saturating_sub(1);
            }
        }
        self.outputs.retain(|o| !matches!(o, Output::Rtp(r) if r.consumer == consumer));
    }

    /// The producer a consumer is attached to.
    pub fn consumer_producer(&self, consumer: ConsumerId) -> Option<ProducerId> {
        Some(self.consumer(consumer)?.producer)
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

    /// Fan one packet of `producer` out to the consumers of its layer: queues one [`Output::Rtp`] per
    /// consumer that forwards it, and counts a [`DropReason`] for every one that does not. A video packet
    /// is also kept in its layer's cache while the producer has consumers.
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
        let Producer { layers, consumers: slots, clock_rate, .. } = p;
        let Some(l) = layers.get_mut(usize::from(packet.layer.0)) else {
            drops.count(DropReason::UnknownLayer);
            return;
        };
        let mut q = Queue { config, outputs, stats };
        match l.ssrc {
            Some(ssrc) if ssrc == packet.ssrc => {}
            Some(old) => {
                l.replaced = Some((old, now));
                l.ssrc = Some(packet.ssrc);
                l.epoch = l.epoch.wrapping_add(1);
                l.seq.reset();
                l.cache.clear();
                if video {
                    q.request_keyframe(producer, packet.layer, l, now, KeyframeKind::Pli);
                }
            }
            None => l.ssrc = Some(packet.ssrc),
        }
        let ext = l.seq.extend(packet.seq);
        let keyframe = video && is_keyframe_start(codec, &packet.payload);
        if keyframe {
            // The keyframe a pending request asks for is on its way.
            l.pending = None;
        }
        if video && !slots.is_empty() {
            l.cache.insert(Cached {
                ext_seq: ext,
                timestamp: packet.timestamp,
                payload_type: packet.payload_type,
                marker: packet.marker,
                keyframe,
                arrival: now,
                payload: packet.payload.clone(),
                ext: packet.ext,
                wallclock: packet.wallclock,
            });
        }

        let mut started_now = 0;
        for &slot in slots.iter() {
            let Some(c) = consumers.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if c.layer != packet.layer {
                continue;
            }
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
            let Some((seq, timestamp)) = c.rewrite(now, ext, packet.timestamp, l.epoch, *clock_rate) else {
                drops.count(DropReason::BeforeStart);
                continue;
            };
            q.stats.packets_out += 1;
            q.stats.bytes_out += packet.payload.len() as u64;
            q.outputs.push_back(Output::Rtp(RtpOut {
                consumer: c.id,
                sink: c.sink,
                ssrc: c.ssrc,
                seq,
                timestamp,
                payload_type: pt,
                marker: packet.marker,
                keyframe,
                resend: false,
                payload: packet.payload.clone(),
                ext: packet.ext,
                wallclock: packet.wallclock,
            }));
        }
        l.waiting = l.waiting.saturating_sub(started_now);
    }

    /// A consumer's receiver reported packets missing (RTCP NACK). `seqs` are the consumer's own
    /// extended sequence numbers, as its [`RtpOut::seq`]s gave them. Each one it was sent under its
    /// current mapping, and that its layer's cache still holds, is queued again as an [`Output::Rtp`]
    /// with `resend` set and the same `seq` and timestamp; the rest count as
    /// [`RouterStats::resend_misses`]. An unknown consumer is counted as [`DropReason::UnknownConsumer`].
    pub fn handle_nack(&mut self, now: Instant, consumer: ConsumerId, seqs: &[u64]) {
        let Router { producers, consumers, consumer_slots, outputs, drops, stats, .. } = self;
        let Some(c) = consumer_slots.get(&consumer).and_then(|&s| consumers.get(s)?.as_ref()) else {
            drops.count(DropReason::UnknownConsumer);
            return;
        };
        stats.resend_requests += seqs.len() as u64;
        let Some(p) = producers.get(&c.producer) else {
            stats.resend_misses += seqs.len() as u64;
            return;
        };
        let Some(l) = p.layers.get(usize::from(c.layer.0)) else {
            stats.resend_misses += seqs.len() as u64;
            return;
        };
        for &seq in seqs {
            let cached = c.source_of(seq, l.epoch).and_then(|ext| l.cache.get(now, ext));
            let out = cached.and_then(|k| {
                let codec = p.codec_by_pt.get(usize::from(k.payload_type)).copied().flatten()?;
                let payload_type = c.pt_by_codec[codec.index()]?;
                let timestamp = k.timestamp.wrapping_add(c.started?.ts_offset);
                Some(RtpOut {
                    consumer: c.id,
                    sink: c.sink,
                    ssrc: c.ssrc,
                    seq,
                    timestamp,
                    payload_type,
                    marker: k.marker,
                    keyframe: k.keyframe,
                    resend: true,
                    payload: k.payload.clone(),
                    ext: k.ext,
                    wallclock: k.wallclock,
                })
            });
            match out {
                Some(out) => {
                    stats.resends += 1;
                    stats.packets_out += 1;
                    stats.bytes_out += out.payload.len() as u64;
                    outputs.push_back(Output::Rtp(out));
                }
                None => stats.resend_misses += 1,
            }
        }
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
        for l in &mut p.layers {
            l.epoch = l.epoch.wrapping_add(1);
        }
        if p.kind != MediaKind::Video {
            return true;
        }
        for &slot in &p.consumers {
            let Some(c) = consumers.get_mut(slot).and_then(Option::as_mut) else { continue };
            if let (false, Some(l)) = (c.waiting, p.layers.get_mut(usize::from(c.layer.0))) {
                c.waiting = true;
                l.waiting += 1;
            }
        }
        let mut q = Queue { config, outputs, stats };
        for (i, l) in p.layers.iter_mut().enumerate() {
            if l.waiting > 0 {
                q.request_keyframe(producer, layer_id(i), l, now, KeyframeKind::Pli);
            }
        }
        true
    }

    /// Why [`Router::handle_rtp`] would drop `packet` before looking at any consumer (unknown producer,
    /// layer or payload type, paused, malformed, late packet of a replaced stream), or `Ok` if it would
    /// fan it out. Changes and counts nothing. A media worker asks this before it relays a packet to other
    /// workers, so that their routers never count the same packet-level drop again.
    pub fn admits(&self, now: Instant, producer: ProducerId, packet: &RtpIn) -> Result<(), DropReason> {
        let p = self.producers.get(&producer).ok_or(DropReason::UnknownProducer)?;
        p.admit(now, packet).map(|_| ())
    }

    /// A viewer asked for a keyframe (PLI or FIR). Requests are aggregated per producer layer and
    /// throttled; requests for audio producers are ignored, unknown consumers are counted as
    /// [`DropReason::UnknownConsumer`].
    pub fn handle_keyframe_request(&mut self, now: Instant, consumer: ConsumerId, kind: KeyframeKind) {
        let Some((producer, layer)) = self.consumer(consumer).map(|c| (c.producer, c.layer)) else {
            self.drops.count(DropReason::UnknownConsumer);
            return;
        };
        self.request_keyframe(now, producer, layer, kind);
    }

    /// Consumers this router does not hold (a mirror of the producer on another media worker) want a
    /// keyframe of `layer`. The request shares the layer's throttle with local ones, so the publisher
    /// sees at most one request per interval however many workers ask. Ignored for audio, paused and
    /// unknown producers and layers.
    pub fn request_keyframe(&mut self, now: Instant, producer: ProducerId, layer: LayerId, kind: KeyframeKind) {
        let Some(p) = self.producers.get_mut(&producer) else {
            return;
        };
        // A paused producer is asked for a keyframe when it resumes, not before.
        if p.kind != MediaKind::Video || p.paused {
            return;
        }
        if let Some(l) = p.layers.get_mut(usize::from(layer.0)) {
            let mut q = Queue { config: &self.config, outputs: &mut self.outputs, stats: &mut self.stats };
            q.request_keyframe(producer, layer, l, now, kind);
        }
    }

    /// Send keyframe requests whose throttle window ended and retry for consumers still waiting.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Router { config, producers, outputs, stats, .. } = self;
        let mut q = Queue { config, outputs, stats };
        for (&id, p) in producers.iter_mut().filter(|(_, p)| !p.paused) {
            for (i, l) in p.layers.iter_mut().enumerate() {
                if let Some(kind) = l.pending {
                    if l.request_due(q.config).is_some_and(|due| now >= due) {
                        q.request_keyframe(id, layer_id(i), l, now, kind);
                    }
                } else if l.waiting > 0 && l.retry_due(q.config).is_some_and(|due| now >= due) {
                    q.request_keyframe(id, layer_id(i), l, now, KeyframeKind::Pli);
                }
            }
        }
    }

    /// The next instant at which [`Router::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.producers
            .values()
            .filter(|p| !p.paused)
            .flat_map(|p| p.layers.iter())
            .filter_map(|l| {
                if l.pending.is_some() {
                    l.request_due(&self.config)
                } else if l.waiting > 0 {
                    l.retry_due(&self.config)
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

    fn consumer(&self, consumer: ConsumerId) -> Option<&Consumer> {
        let slot = *self.consumer_slots.get(&consumer)?;
        self.consumers.get(slot)?.as_ref()
    }
}

/// The layer id of index `i` (below [`MAX_LAYERS`], so it fits).
fn layer_id(i: usize) -> LayerId {
    LayerId(u8::try_from(i).unwrap_or(u8::MAX))
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
        let l = self.layers.get(usize::from(packet.layer.0)).ok_or(DropReason::UnknownLayer)?;
        let restarted = l.ssrc.is_some_and(|s| s != packet.ssrc);
        let stale = l
            .replaced
            .is_some_and(|(old, at)| old == packet.ssrc && now.saturating_duration_since(at) < STALE_SSRC_WINDOW);
        if restarted && stale {
            return Err(DropReason::StaleSsrc);
        }
        Ok(codec)
    }
}

impl Layer {
    /// When the throttle window after the last request ends (`None`: no request yet, or never).
    fn request_due(&self, config: &RouterConfig) -> Option<Instant> {
        self.last_request?.checked_add(config.keyframe_request_interval)
    }

    /// When waiting consumers should be asked for again.
    fn retry_due(&self, config: &RouterConfig) -> Option<Instant> {
        self.last_request?.checked_add(config.keyframe_retry_interval)
    }
}

impl Consumer {
    /// The outgoing sequence number and timestamp of the layer packet `ext` (in `epoch`), starting or
    /// rebasing the mapping as needed; `None` for a packet older than the consumer's first one.
    fn rewrite(&mut self, now: Instant, ext: u64, timestamp: u32, epoch: u32, clock_rate: u32) -> Option<(u64, u32)> {
        let s = match &mut self.started {
            Some(s) if self.epoch == epoch => s,
            Some(s) => {
                // The stream restarted (or resumed): continue right after the last packet this consumer sent.
                let elapsed = now.saturating_duration_since(s.last_out_at);
                let ticks = u128::from(clock_rate).saturating_mul(elapsed.as_nanos()) / 1_000_000_000;
                let ticks = u32::try_from(ticks).unwrap_or(u32::MAX).max(1);
                let next_ts = s.max_out_ts.wrapping_add(ticks);
                s.start_in = ext;
                s.start_out = s.max_out + 1;
                s.ts_offset = next_ts.wrapping_sub(timestamp);
                self.epoch = epoch;
                s
            }
            None => {
                self.epoch = epoch;
                let out = u64::from(self.initial_seq);
                self.started.insert(Started {
                    start_in: ext,
                    start_out: out,
                    ts_offset: 0,
                    max_out: out,
                    max_out_ts: timestamp,
                    last_out_at: now,
                })
            }
        };
        if ext < s.start_in {
            return None;
        }
        let seq = s.start_out + (ext - s.start_in);
        let timestamp = timestamp.wrapping_add(s.ts_offset);
        if seq >= s.max_out {
            s.max_out = seq;
            s.max_out_ts = timestamp;
        }
        s.last_out_at = now;
        Some((seq, timestamp))
    }

    /// The layer sequence number the consumer's packet `seq` was made from, if `seq` lies in the
    /// mapping of `epoch` that the consumer uses now and was already sent.
    fn source_of(&self, seq: u64, epoch: u32) -> Option<u64> {
        let s = self.started.as_ref()?;
        let current = self.epoch == epoch && !self.waiting;
        (current && seq >= s.start_out && seq <= s.max_out).then(|| s.start_in + (seq - s.start_out))
    }
}

/// The parts of the router a keyframe request touches, borrowed apart from its producers.
struct Queue<'a> {
    config: &'a RouterConfig,
    outputs: &'a mut VecDeque<Output>,
    stats: &'a mut RouterStats,
}

impl Queue<'_> {
    /// Send a keyframe request for layer `l` now if its throttle window allows, else remember it
    /// (merged, FIR wins).
    fn request_keyframe(&mut self, id: ProducerId, layer: LayerId, l: &mut Layer, now: Instant, kind: KeyframeKind) {
        let kind = l.pending.map_or(kind, |pending| pending.max(kind));
        let open = match l.last_request {
            None => true,
            Some(_) => l.request_due(self.config).is_some_and(|due| now >= due),
        };
        if open {
            l.pending = None;
            l.last_request = Some(now);
            self.stats.keyframe_requests_sent += 1;
            self.outputs.push_back(Output::KeyframeRequest { producer: id, layer, kind });
        } else {
            l.pending = Some(kind);
        }
    }
}

#[cfg(test)]
mod tests;
