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
//! - A video consumer forwards one layer at a time. It moves to another layer (or back from a pause)
//!   only at a keyframe of that layer, asked for through the layer's throttle, and keeps forwarding
//!   its current layer meanwhile; its sequence numbers and timestamps continue across the move
//!   without a gap, and so do the PictureID and TL0PICIDX of a simulcast VP8 producer.
//! - Which layer each video consumer of a viewer (a sink) gets is decided per viewer, from its
//!   downlink estimate, its tiles and the layers' measured rates (see [`crate::alloc`] and
//!   `viewer.rs`).
//! - `handle_rtp` allocates nothing once the output queue has grown to the fan-out size and each video
//!   layer's cache ring exists.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::cache::{Cached, PacketCache};
use crate::hash::IdMap;
use crate::seq::SeqExtender;
use crate::vp8::{self, Vp8Munger};
use crate::{
    is_keyframe_start, Codec, ConsumerId, ConsumerSpec, DropCounters, DropReason, KeyframeKind, LayerId, MediaKind,
    Output, PauseReason, ProducerId, ProducerSpec, RtpIn, RtpOut, MAX_LAYERS,
};

mod viewer;

pub use viewer::LayerCensus;
use viewer::{RateMeter, Viewer};

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
    /// Video consumers that moved to another layer (not counting pauses and resumes).
    pub layer_switches: u64,
    /// Resends queued only to probe a viewer's downlink.
    pub probe_packets: u64,
    /// Payload bytes of those.
    pub probe_bytes: u64,
}

/// Why [`Router::add_consumer`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The producer id is not known to the router.
    UnknownProducer,
    /// None of the producer's codecs was negotiated with the consumer.
    NoCommonCodec,
    /// The consumer id is not known to the router.
    UnknownConsumer,
    /// A hand-over to a producer of the other kind.
    KindMismatch,
}

impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsumeError::UnknownProducer => "unknown producer",
            ConsumeError::NoCommonCodec => "no codec in common with the producer",
            ConsumeError::UnknownConsumer => "unknown consumer",
            ConsumeError::KindMismatch => "a hand-over between audio and video",
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
    /// The consumers' VP8 ids are rewritten (a VP8 producer with more than one layer).
    munge_vp8: bool,
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
    /// What the layer carries lately.
    rate: RateMeter,
    /// Width and height, from its latest VP8 keyframe.
    dims: Option<(u16, u16)>,
}

#[derive(Debug)]
struct Consumer {
    id: ConsumerId,
    producer: ProducerId,
    sink: u64,
    ssrc: u32,
    pt_by_codec: [Option<u8>; Codec::COUNT],
    initial_seq: u16,
    video: bool,
    /// The layer it forwards while `forwarding`.
    layer: LayerId,
    forwarding: bool,
    /// The layer whose keyframe it waits for; counted in that layer's `waiting`. Change it only
    /// through [`Consumer::set_want`].
    want: Option<LayerId>,
    /// The layer its viewer's allocation chose; `None`: paused (for `pause`).
    target: Option<LayerId>,
    pause: Option<PauseReason>,
    /// The size its viewer shows it at, if told; (0, 0) is hidden.
    tile: Option<(u16, u16)>,
    /// The layer and epoch that `started` maps; `None` forces a rebase on the next packet.
    src: Option<(LayerId, u32)>,
    started: Option<Started>,
    vp8: Vp8Munger,
    /// Media packets and bytes forwarded, and sequence numbers NACKed, since its viewer's last tick.
    sent_packets: u64,
    sent_bytes: u64,
    nacked: u64,
    /// The highest sequence number NACKed so far.
    nack_high: Option<u64>,
    /// The highest fraction lost its receiver reported (RTCP receiver reports) since the last tick.
    reported_loss: f64,
    /// What a paused consumer resends to probe its downlink: its last packet, as its seq and the cached source.
    probe_seed: Option<(u64, Cached)>,
    /// The consumer it takes over from ([`Router::hand_over`]), until its first packet.
    succeeds: Option<ConsumerId>,
    /// It just took over: its first packet starts a stream, it does not resume one.
    took_over: bool,
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
    viewers: IdMap<u64, Viewer>,
    /// Viewers that need the periodic tick (see `Viewer::active`).
    active_viewers: usize,
    /// Viewers whose downlink is being probed.
    probing: usize,
    last_tick: Option<Instant>,
    next_probe: Option<Instant>,
    scratch: viewer::Scratch,
    /// Pending hand-overs: the consumer that forwards now, to the one that takes over.
    handoffs: IdMap<ConsumerId, ConsumerId>,
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
            viewers: IdMap::default(),
            active_viewers: 0,
            probing: 0,
            last_tick: None,
            next_probe: None,
            scratch: viewer::Scratch::default(),
            handoffs: IdMap::default(),
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
                rate: RateMeter::default(),
                dims: None,
            })
            .collect::<Vec<_>>();
        let munge_vp8 = layers.len() > 1 && spec.payload_types.iter().any(|(_, c)| *c == Codec::Vp8);
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
            munge_vp8,
        };
        self.producers.insert(id, producer);
        id
    }

    /// Remove a producer and all its consumers; returns the removed consumers, but for those with a
    /// pending hand-over, whose successors take over at once ([`Output::HandedOver`]). Queued outputs that name
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
                // One handed over to its successor did not end: its stream goes on (HandedOver).
                if !self.handoffs.contains_key(&c.id) {
                    removed.push(c.id);
                }
                self.detach_from_viewer(c.sink, slot);
                self.settle_handoff(&c);
            }
        }
        self.outputs.retain(|o| match o {
            Output::Rtp(r) => !removed.contains(&r.consumer),
            Output::KeyframeRequest { producer: p, .. } => *p != producer,
            Output::Paused { consumer, .. } | Output::Resumed { consumer, .. } => !removed.contains(consumer),
            Output::HandedOver { to, .. } => !removed.contains(to),
        });
        removed
    }

    /// Attach a new consumer to `producer`. A video consumer waits for a keyframe of the layer its
    /// viewer's allocation gives it (the first layer while no layer has been seen, else the highest
    /// its viewer can take) and queues a (throttled) keyframe request; an audio consumer forwards from
    /// the next packet.
    ///
    /// [`Codec::Other`] only counts as a common codec when the producer has nothing but `Other` codecs, so
    /// a shared RTX or RED entry does not hide a missing media codec.
    pub fn add_consumer(
        &mut self,
        now: Instant,
        producer: ProducerId,
        spec: ConsumerSpec,
    ) -> Result<ConsumerId, ConsumeError> {
        let mut pt_by_codec = [None; Codec::COUNT];
        for &(codec, pt) in &spec.payload_types {
            let slot = &mut pt_by_codec[codec.index()];
            if slot.is_none() {
                *slot = Some(pt);
            }
        }
        self.attach(now, producer, spec.sink, spec.ssrc, pt_by_codec, spec.initial_seq)
    }

    /// Let `producer` take over what consumer `from` sends (the program's video following the active
    /// speaker): a new consumer on `producer` with `from`'s sink, SSRC and payload types waits for a
    /// keyframe of `producer` (audio: for its next packet), while `from` goes on forwarding. With
    /// that packet `from` is removed and the new consumer continues its sequence numbers, timestamps
    /// and VP8 picture ids, so the receiver sees one stream; [`Output::HandedOver`] says so. A second
    /// hand-over of `from` before the first one happened replaces it. Returns the new consumer.
    pub fn hand_over(
        &mut self,
        now: Instant,
        from: ConsumerId,
        producer: ProducerId,
    ) -> Result<ConsumerId, ConsumeError> {
        let mut old = self.consumer(from).ok_or(ConsumeError::UnknownConsumer)?;
        // A successor still waiting stands for the consumer that forwards: hand that one over.
        let from = match old.succeeds {
            Some(forwarding) => {
                old = self.consumer(forwarding).ok_or(ConsumeError::UnknownConsumer)?;
                forwarding
            }
            None => from,
        };
        let p = self.producers.get(&producer).ok_or(ConsumeError::UnknownProducer)?;
        if (p.kind == MediaKind::Video) != old.video {
            return Err(ConsumeError::KindMismatch);
        }
        let (sink, ssrc, pts, seq, tile) = (old.sink, old.ssrc, old.pt_by_codec, old.initial_seq, old.tile);
        let same = old.producer == producer;
        if let Some(pending) = self.handoffs.remove(&from) {
            self.remove_consumer(pending);
        }
        if same {
            // Back to what it forwards: the pending hand-over (if any) is called off.
            return Ok(from);
        }
        let id = self.attach(now, producer, sink, ssrc, pts, seq)?;
        let slot = self.consumer_slots.get(&id).copied();
        if let Some(c) = slot.and_then(|s| self.consumers.get_mut(s)?.as_mut()) {
            c.succeeds = Some(from);
            c.tile = tile;
        }
        self.handoffs.insert(from, id);
        Ok(id)
    }

    fn attach(
        &mut self,
        now: Instant,
        producer: ProducerId,
        sink: u64,
        ssrc: u32,
        pt_by_codec: [Option<u8>; Codec::COUNT],
        initial_seq: u16,
    ) -> Result<ConsumerId, ConsumeError> {
        let p = self.producers.get_mut(&producer).ok_or(ConsumeError::UnknownProducer)?;
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
        let video = p.kind == MediaKind::Video;
        let layer = LayerId(0);
        let consumer = Consumer {
            id,
            producer,
            sink,
            ssrc,
            pt_by_codec,
            initial_seq,
            video,
            layer,
            forwarding: !video,
            want: None,
            target: Some(layer),
            pause: None,
            tile: None,
            src: None,
            started: None,
            vp8: Vp8Munger::default(),
            sent_packets: 0,
            sent_bytes: 0,
            nacked: 0,
            nack_high: None,
            reported_loss: 0.0,
            probe_seed: None,
            succeeds: None,
            took_over: false,
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
        if let (true, Some(c)) = (video, self.consumers.get_mut(slot).and_then(Option::as_mut)) {
            c.set_want(&mut p.layers, Some(layer));
            if let (false, Some(l)) = (paused, p.layers.first_mut()) {
                let mut q = Queue { config: &self.config, outputs: &mut self.outputs, stats: &mut self.stats };
                q.request_keyframe(producer, layer, l, now, KeyframeKind::Pli);
            }
        }
        self.attach_to_viewer(now, sink, slot);
        Ok(id)
    }

    /// Detach a consumer. Queued outputs for it are discarded. Unknown ids are ignored.
    pub fn remove_consumer(&mut self, consumer: ConsumerId) {
        self.detach(consumer, true);
    }

    /// Detach a consumer, discarding its queued outputs (`discard`) or keeping its queued packets
    /// (a hand-over: they precede its successor's).
    fn detach(&mut self, consumer: ConsumerId, discard: bool) {
        let Some(slot) = self.consumer_slots.remove(&consumer) else {
            return;
        };
        let Some(c) = self.consumers.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.settle_handoff(&c);
        self.free_slots.push(slot);
        if let Some(p) = self.producers.get_mut(&c.producer) {
            p.consumers.retain(|&s| s != slot);
            if let Some(l) = c.want.and_then(|w| p.layers.get_mut(usize::from(w.0))) {
                l.waiting = l.waiting.saturating_sub(1);
            }
        }
        self.detach_from_viewer(c.sink, slot);
        self.outputs.retain(|o| match o {
            Output::Rtp(r) => !discard || r.consumer != consumer,
            Output::Paused { consumer: c, .. } | Output::Resumed { consumer: c, .. } => *c != consumer,
            Output::KeyframeRequest { .. } | Output::HandedOver { .. } => true,
        });
    }

    /// A removed consumer `c` leaves no hand-over dangling: a successor of it takes over its rewrite
    /// state now (so it continues where `c` stopped), and a pending successor that is itself removed
    /// is forgotten (its predecessor goes on).
    fn settle_handoff(&mut self, c: &Consumer) {
        if let Some(old) = c.succeeds {
            self.handoffs.remove(&old);
        }
        let Some(next) = self.handoffs.remove(&c.id) else { return };
        let slot = self.consumer_slots.get(&next).copied();
        if let Some(n) = slot.and_then(|s| self.consumers.get_mut(s)?.as_mut()) {
            n.succeeds = None;
            n.took_over = true;
            n.started = c.started;
            n.vp8 = c.vp8;
            self.outputs.push_back(Output::HandedOver { from: c.id, to: next, sink: c.sink });
        }
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
        let retired = self.fan_out(now, producer, packet);
        for (from, to, sink) in retired.into_iter().flatten() {
            self.detach(from, false);
            self.outputs.push_back(Output::HandedOver { from, to, sink });
        }
    }

    /// [`Router::handle_rtp`] but for the hand-overs its packet completes: the consumers to remove
    /// (with their successor and sink); `None`, without allocating, when there are none.
    fn fan_out(
        &mut self,
        now: Instant,
        producer: ProducerId,
        packet: RtpIn,
    ) -> Option<Vec<(ConsumerId, ConsumerId, u64)>> {
        let Router { config, producers, consumers, consumer_slots, handoffs, outputs, drops, stats, .. } = self;
        let Some(p) = producers.get_mut(&producer) else {
            drops.count(DropReason::UnknownProducer);
            return None;
        };
        stats.packets_in += 1;
        stats.bytes_in += packet.payload.len() as u64;

        let codec = match p.admit(now, &packet) {
            Ok(codec) => codec,
            Err(reason) => {
                drops.count(reason);
                return None;
            }
        };
        let video = p.kind == MediaKind::Video;
        let munge_vp8 = p.munge_vp8 && codec == Codec::Vp8;
        let Producer { layers, consumers: slots, clock_rate, .. } = p;
        let Some(l) = layers.get_mut(usize::from(packet.layer.0)) else {
            drops.count(DropReason::UnknownLayer);
            return None;
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
        l.rate.count(now, packet.payload.len());
        let keyframe = video && is_keyframe_start(codec, &packet.payload);
        if keyframe {
            // The keyframe a pending request asks for is on its way.
            l.pending = None;
            if codec == Codec::Vp8 {
                l.dims = vp8::dimensions(&packet.payload).or(l.dims);
            }
        }
        let ids = if munge_vp8 { vp8::parse(&packet.payload) } else { None };
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

        // Successors that start with this packet take over their predecessor's rewrite state first.
        let mut retired = None;
        if !handoffs.is_empty() && (keyframe || !video) {
            for &slot in slots.iter() {
                let Some((id, old)) = consumers.get(slot).and_then(Option::as_ref).and_then(|c| {
                    let starts = !c.video || c.want == Some(packet.layer);
                    Some((c.id, c.succeeds.filter(|_| starts)?))
                }) else {
                    continue;
                };
                let from = consumer_slots.get(&old).and_then(|&s| consumers.get(s)?.as_ref());
                let from = from.map(|o| (o.started, o.vp8, o.sink));
                if let Some(c) = consumers.get_mut(slot).and_then(Option::as_mut) {
                    c.succeeds = None;
                    c.took_over = true;
                    if let Some((started, vp8, _)) = from {
                        c.started = started;
                        c.vp8 = vp8;
                    }
                }
                handoffs.remove(&old);
                if let Some((_, _, sink)) = from {
                    retired.get_or_insert_with(Vec::new).push((old, id, sink));
                }
            }
        }

        let mut started_now = 0;
        for &slot in slots.iter() {
            let Some(c) = consumers.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let wanted = c.want == Some(packet.layer);
            let current = c.forwarding && c.layer == packet.layer;
            if !wanted && !current {
                continue;
            }
            let Some(pt) = c.pt_by_codec[codec.index()] else {
                drops.count(DropReason::CodecNotNegotiated);
                continue;
            };
            if wanted {
                if keyframe {
                    // The move to this layer (or the start, or the resume) happens here.
                    c.want = None;
                    started_now += 1;
                    let resumed = !c.forwarding && c.started.is_some() && !std::mem::take(&mut c.took_over);
                    if c.forwarding && c.layer != packet.layer {
                        q.stats.layer_switches += 1;
                    }
                    c.layer = packet.layer;
                    c.forwarding = true;
                    c.src = None;
                    c.vp8.rebase();
                    c.probe_seed = None;
                    if resumed {
                        q.outputs.push_back(Output::Resumed { consumer: c.id, sink: c.sink, layer: packet.layer });
                    }
                } else if !current {
                    drops.count(DropReason::WaitingForKeyframe);
                    continue;
                }
            }
            let Some((seq, timestamp)) = c.rewrite(now, ext, packet.timestamp, (packet.layer, l.epoch), *clock_rate)
            else {
                drops.count(DropReason::BeforeStart);
                continue;
            };
            c.sent_packets += 1;
            c.sent_bytes += packet.payload.len() as u64;
            let vp8 = ids.map(|i| c.vp8.rewrite(i));
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
                probe: false,
                vp8,
                payload: packet.payload.clone(),
                ext: packet.ext,
                wallclock: packet.wallclock,
            }));
        }
        l.waiting = l.waiting.saturating_sub(started_now);
        retired
    }

    /// A consumer's receiver reported packets missing (RTCP NACK). `seqs` are the consumer's own
    /// extended sequence numbers, as its [`RtpOut::seq`]s gave them. Each one it was sent under its
    /// current mapping, and that its layer's cache still holds, is queued again as an [`Output::Rtp`]
    /// with `resend` set and the same `seq` and timestamp; the rest count as
    /// [`RouterStats::resend_misses`]. An unknown consumer is counted as [`DropReason::UnknownConsumer`].
    pub fn handle_nack(&mut self, now: Instant, consumer: ConsumerId, seqs: &[u64]) {
        let Router { producers, consumers, consumer_slots, outputs, drops, stats, .. } = self;
        let Some(c) = consumer_slots.get(&consumer).and_then(|&s| consumers.get_mut(s)?.as_mut()) else {
            drops.count(DropReason::UnknownConsumer);
            return;
        };
        stats.resend_requests += seqs.len() as u64;
        // Loss counts each sequence number once: receivers ask again for what is still missing.
        for &seq in seqs {
            if c.nack_high.is_none_or(|h| seq > h) {
                c.nacked += 1;
                c.nack_high = Some(seq);
            }
        }
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
            let out = cached.and_then(|k| c.resend(p, seq, k, false));
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
            if c.forwarding {
                // It starts again on the layer its viewer chose (a switch may have been pending).
                c.forwarding = false;
                let layer = c.target.unwrap_or(c.layer);
                c.set_want(&mut p.layers, Some(layer));
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
        let Some((producer, layer)) = self.consumer(consumer).map(|c| (c.producer, c.want.unwrap_or(c.layer))) else {
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

    /// Send keyframe requests whose throttle window ended and retry for consumers still waiting; measure
    /// the layers and choose the viewers' layers on every tick; send probes when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.tick_due().is_some_and(|t| now >= t) {
            self.tick(now);
        }
        if self.next_probe.is_some_and(|t| now >= t) {
            self.probe(now);
        }
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
        let keyframes = self
            .producers
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
            .min();
        [keyframes, self.tick_due(), self.next_probe].into_iter().flatten().min()
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
    /// Wait for a keyframe of `want` (or for nothing), keeping the layers' `waiting` counts right.
    fn set_want(&mut self, layers: &mut [Layer], want: Option<LayerId>) {
        if self.want == want {
            return;
        }
        if let Some(l) = self.want.and_then(|w| layers.get_mut(usize::from(w.0))) {
            l.waiting = l.waiting.saturating_sub(1);
        }
        self.want = want.filter(|w| usize::from(w.0) < layers.len());
        if let Some(l) = self.want.and_then(|w| layers.get_mut(usize::from(w.0))) {
            l.waiting += 1;
        }
    }

    /// The consumer's copy of the cached packet `k`, sent before as its `seq`, to send again.
    fn resend(&self, p: &Producer, seq: u64, k: &Cached, probe: bool) -> Option<RtpOut> {
        let codec = p.codec_by_pt.get(usize::from(k.payload_type)).copied().flatten()?;
        let payload_type = self.pt_by_codec[codec.index()]?;
        let timestamp = k.timestamp.wrapping_add(self.started?.ts_offset);
        let vp8 =
            if p.munge_vp8 && codec == Codec::Vp8 { vp8::parse(&k.payload).map(|i| self.vp8.resend(i)) } else { None };
        Some(RtpOut {
            consumer: self.id,
            sink: self.sink,
            ssrc: self.ssrc,
            seq,
            timestamp,
            payload_type,
            marker: k.marker,
            keyframe: k.keyframe,
            resend: true,
            probe,
            vp8,
            payload: k.payload.clone(),
            ext: k.ext,
            wallclock: k.wallclock,
        })
    }

    /// The outgoing sequence number and timestamp of the packet `ext` of stream `src` (a layer and its
    /// epoch), starting or rebasing the mapping as needed; `None` for a packet older than the
    /// consumer's first one in that stream.
    fn rewrite(
        &mut self,
        now: Instant,
        ext: u64,
        timestamp: u32,
        src: (LayerId, u32),
        clock_rate: u32,
    ) -> Option<(u64, u32)> {
        let s = match &mut self.started {
            Some(s) if self.src == Some(src) => s,
            Some(s) => {
                // The stream restarted (or resumed): continue right after the last packet this consumer sent.
                let elapsed = now.saturating_duration_since(s.last_out_at);
                let ticks = u128::from(clock_rate).saturating_mul(elapsed.as_nanos()) / 1_000_000_000;
                let ticks = u32::try_from(ticks).unwrap_or(u32::MAX).max(1);
                let next_ts = s.max_out_ts.wrapping_add(ticks);
                s.start_in = ext;
                s.start_out = s.max_out + 1;
                s.ts_offset = next_ts.wrapping_sub(timestamp);
                self.src = Some(src);
                s
            }
            None => {
                self.src = Some(src);
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

    /// The sequence number in its current layer that the consumer's packet `seq` was made from, if
    /// `seq` lies in the mapping of that layer's `epoch` that the consumer uses now and was already sent.
    fn source_of(&self, seq: u64, epoch: u32) -> Option<u64> {
        let s = self.started.as_ref()?;
        let current = self.src == Some((self.layer, epoch)) && self.forwarding;
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
mod handoff_tests;
#[cfg(test)]
mod simulcast_tests;
#[cfg(test)]
mod tests;
