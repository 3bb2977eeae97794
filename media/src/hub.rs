//! One media worker's sessions and router, sans-IO: the glue between them, the registry of producers
//! and consumers, the mirrors of other workers' producers, and the sessions' timers.
//!
//! A hub is driven like a session: inputs ([`Hub::handle_datagram`], the command methods,
//! [`Hub::handle_peer`] for other workers' messages, [`Hub::handle_timeout`]), then [`Hub::flush`], then
//! [`Hub::poll_output`] until `None`, and [`Hub::poll_timeout`]. It reads no clock and owns no socket or
//! channel: datagrams to send, events for the sessions' owners and messages for other workers all come
//! out of `poll_output`, and the worker moves them.
//!
//! Invariants kept here:
//! - A packet goes through the router once per worker. Its copies are written to the consumers'
//!   sessions as the router's outputs say (each [`dais_forward::RtpOut`] names its session as the
//!   sink), and each session that got one is polled once per flush, so a burst of packets costs one
//!   poll per session, not one per packet.
//! - A producer lives on its publisher's worker (its home); every other worker holds a mirror. The
//!   mirrors exist before the owner hears of the producer, so no subscription can arrive first. Only
//!   packets the home router admits are relayed, so packet-level drops are counted once, at home.
//! - A mirror's keyframe requests go home, through the producer layer's one throttle.
//! - Finding the sessions that want time costs O(log n): a heap of `(deadline, session)` entries, where
//!   an entry is live while it equals its session's `scheduled` time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dais_forward::speech::LevelMeter;
use dais_forward::{
    ConsumerId, ConsumerSpec, DropReason, KeyframeKind, LayerCensus, LayerId, Output, ProducerId, ProducerSpec, Router,
    RouterConfig, RtpIn,
};
use str0m::format::CodecSpec;
use str0m::ice::IceCreds;
use str0m::net::Transmit;
use tracing::{debug, info, warn};

use crate::endpoint::Addr;
use crate::negotiation::PendingConsumer;
use crate::session::{Published, ReadyConsumer, Session, SessionConfig, SessionOutput};
use crate::{AnswerError, Kind, MediaStats, OfferError, ProducerKey, SessionEvent, SessionId, SessionMode};

/// At most one keyframe request per publisher stream per this interval. A little over 500 ms, so that a
/// publisher sees at most 2 requests in any one second even when the worker's passes delay one request
/// and not the next by up to 50 ms.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(550);

/// How often the router's counters are added to the shared [`MediaStats`].
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Most tile sizes a session remembers for producers it does not receive yet.
const MAX_TILES: usize = 64;

/// What every worker's hub shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub stats: Arc<MediaStats>,
    /// The next [`ProducerKey`], unique across workers.
    pub next_key: AtomicU64,
    pub session: SessionConfig,
}

/// A producer announced by its home worker to the others.
#[derive(Debug, Clone)]
pub(crate) struct Mirror {
    producer: ProducerKey,
    home: usize,
    spec: ProducerSpec,
    specs: Vec<CodecSpec>,
}

/// One RTP packet of a producer, as its home worker relays it to the others: the same shared payload.
#[derive(Debug)]
pub(crate) struct Relayed {
    producer: ProducerKey,
    packet: RtpIn,
    /// When the datagram carrying it reached the server.
    arrival: Instant,
}

/// A message between the hubs of two workers.
#[derive(Debug)]
pub(crate) enum PeerMessage {
    /// Keep a mirror of this producer.
    MirrorAdd(Mirror),
    /// The producer ended.
    MirrorEnd(ProducerKey),
    /// One packet of a producer (media: the bounded queue).
    Relay(Arc<Relayed>),
    /// A mirror's consumers want a keyframe of this producer layer.
    KeyframeWanted { producer: ProducerKey, layer: LayerId, kind: KeyframeKind },
}

/// What a hub asks of its worker.
#[derive(Debug)]
pub(crate) enum HubOutput {
    /// Send this datagram.
    Transmit(Transmit),
    /// Tell a session's owner.
    Event(SessionId, SessionEvent),
    /// Send this to worker `.0`'s hub.
    Peer(usize, PeerMessage),
    /// The session's ICE credentials changed (an ICE restart): the endpoint routes the new ufrag to
    /// this worker.
    Route(SessionId, IceCreds),
}

/// Where a producer's packets come from on this worker.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// A session of this worker publishes it.
    Local(SessionId),
    /// A mirror of a producer on worker `home`.
    Mirror { home: usize },
}

#[derive(Debug)]
struct ProducerRec {
    origin: Origin,
    key: ProducerKey,
    kind: Kind,
    specs: Vec<CodecSpec>,
    /// A local audio producer's audio levels, summarised for the active-speaker detector.
    meter: Option<LevelMeter>,
}

struct Slot {
    session: Session,
    dirty: bool,
    scheduled: Option<Instant>,
    /// The sizes its client shows producers at (`video_size`), applied to their consumers when they
    /// are created.
    tiles: HashMap<ProducerKey, (u16, u16)>,
}

/// One worker's sessions and router. See the module docs.
pub(crate) struct Hub {
    index: usize,
    workers: usize,
    shared: Arc<Shared>,
    sessions: HashMap<SessionId, Slot>,
    router: Router,
    producers: HashMap<ProducerId, ProducerRec>,
    keys: HashMap<ProducerKey, ProducerId>,
    consumers: HashMap<ConsumerId, SessionId>,
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    dirty: Vec<SessionId>,
    out: VecDeque<HubOutput>,
    /// Arrival times of ingress packets forwarded since the driver last took them.
    arrivals: Vec<Instant>,
    seq_seed: u64,
    next_stats: Instant,
    reported: Reported,
}

/// Router counters already added to the shared stats.
#[derive(Default)]
struct Reported {
    drops: [u64; DropReason::ALL.len()],
    resends: u64,
    resend_misses: u64,
    layer_switches: u64,
    probe_packets: u64,
    probe_bytes: u64,
    census: LayerCensus,
    /// REMB reports since the last report, and what was last added to the shared per-second gauge.
    remb_window: u64,
    remb_rate: u64,
    viewer_sessions: u64,
}

impl Hub {
    /// Worker `index` of `workers`; `seed` varies each consumer's first sequence number.
    pub fn new(now: Instant, index: usize, workers: usize, shared: Arc<Shared>, seed: u64) -> Self {
        let config = RouterConfig { keyframe_request_interval: KEYFRAME_REQUEST_INTERVAL, ..RouterConfig::default() };
        Hub {
            index,
            workers,
            shared,
            sessions: HashMap::new(),
            router: Router::new(config),
            producers: HashMap::new(),
            keys: HashMap::new(),
            consumers: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            out: VecDeque::new(),
            arrivals: Vec::with_capacity(256),
            seq_seed: seed | 1,
            next_stats: now + STATS_INTERVAL,
            reported: Reported::default(),
        }
    }

    fn stats(&self) -> &MediaStats {
        &self.shared.stats
    }

    /// Open a session (a session id opened again replaces the old one).
    pub fn open(&mut self, now: Instant, id: SessionId, mode: SessionMode, creds: IceCreds) {
        if self.sessions.contains_key(&id) {
            self.close(now, id);
        }
        let session = Session::new(now, id, mode, creds, self.shared.session.clone());
        self.sessions.insert(id, Slot { session, dirty: false, scheduled: None, tiles: HashMap::new() });
        if !mode.publisher() {
            // A viewer's session negotiates REMB (no transport-wide feedback): its browser estimates
            // the downlink, so its layers start low and its estimator is probed until then.
            self.router.expect_estimate(now, id.0);
        }
        self.stats().sessions.fetch_add(1, Ordering::Relaxed);
        self.mark(id);
    }

    /// Close a session, ending its producers (their consumers are stopped by renegotiation).
    pub fn close(&mut self, now: Instant, id: SessionId) {
        let Some(mut slot) = self.sessions.remove(&id) else { return };
        slot.session.close(now);
        self.stats().sessions.fetch_sub(1, Ordering::Relaxed);
        for cid in slot.session.consumers().collect::<Vec<_>>() {
            self.router.remove_consumer(cid);
            self.consumers.remove(&cid);
        }
        for pid in slot.session.producers().collect::<Vec<_>>() {
            self.end_producer(pid);
        }
        self.router.forget_sink(id.0);
        info!(?id, "session closed");
    }

    /// Close every session (shutdown).
    pub fn close_all(&mut self, now: Instant) {
        for id in self.sessions.keys().copied().collect::<Vec<_>>() {
            self.close(now, id);
        }
    }

    /// A client offer; returns the answer.
    pub fn client_offer(&mut self, now: Instant, id: SessionId, sdp: &str) -> Result<String, OfferError> {
        let slot = self.sessions.get_mut(&id).ok_or(OfferError::NoSession)?;
        let answer = slot.session.client_offer(now, sdp);
        self.mark(id);
        answer
    }

    /// A client answer to the outstanding server offer.
    pub fn client_answer(&mut self, now: Instant, id: SessionId, sdp: &str) -> Result<(), AnswerError> {
        let slot = self.sessions.get_mut(&id).ok_or(AnswerError::NoSession)?;
        let result = slot.session.client_answer(now, sdp);
        self.mark(id);
        result
    }

    /// A trickled remote candidate.
    pub fn add_candidate(&mut self, id: SessionId, candidate: &str) {
        if let Some(slot) = self.sessions.get_mut(&id) {
            slot.session.add_candidate(candidate);
            self.mark(id);
        }
    }

    /// Offer `producer` to `session` with msid `stream_id track_id`.
    pub fn subscribe(&mut self, id: SessionId, producer: ProducerKey, stream_id: String, track_id: String) {
        let Some(rec) = self.keys.get(&producer).and_then(|p| self.producers.get(p)) else {
            debug!(?id, ?producer, "subscribe to a producer that is gone");
            return;
        };
        // The m-line offers the codec the publisher sends with (the first it negotiated, as browsers
        // send with the answer's first codec), not every codec it could switch to.
        let specs = rec.specs.iter().take(1).cloned().collect();
        let pending = PendingConsumer { producer, kind: rec.kind, stream_id, track_id, specs };
        if let Some(slot) = self.sessions.get_mut(&id) {
            slot.session.subscribe(pending);
            self.mark(id);
        }
    }

    /// Allow or forbid a session to publish; forbidding ends its producers.
    pub fn set_publisher(&mut self, id: SessionId, publisher: bool) {
        let Some(slot) = self.sessions.get_mut(&id) else { return };
        for pid in slot.session.set_publisher(publisher) {
            if let Some(key) = self.producers.get(&pid).map(|p| p.key) {
                self.out.push_back(HubOutput::Event(id, SessionEvent::ProducerRemoved { producer: key }));
            }
            self.end_producer(pid);
        }
        info!(?id, publisher, "session may publish changed");
        self.mark(id);
    }

    /// Pause or resume forwarding one producer (server-side mute).
    pub fn set_paused(&mut self, now: Instant, producer: ProducerKey, paused: bool) {
        let Some(pid) = self.keys.get(&producer).copied() else { return };
        self.router.set_paused(now, pid, paused);
        self.drain_router();
        if self.is_local(pid) {
            info!(?producer, paused, "producer pause changed");
        }
    }

    /// The client of session `id` shows `producer` at `width` x `height` (0x0: hidden): remembered
    /// for the consumer to come, and applied to the one that exists.
    pub fn video_size(&mut self, now: Instant, id: SessionId, producer: ProducerKey, width: u16, height: u16) {
        let Some(slot) = self.sessions.get_mut(&id) else { return };
        if slot.tiles.len() < MAX_TILES || slot.tiles.contains_key(&producer) {
            slot.tiles.insert(producer, (width, height));
        }
        let Some(pid) = self.keys.get(&producer).copied() else { return };
        let consumer = self.router.consumers(pid).find(|c| self.consumers.get(c) == Some(&id));
        if let Some(cid) = consumer {
            self.router.set_video_size(now, cid, width, height);
            self.drain_router();
        }
    }

    /// A datagram the endpoint routed to session `id`, which reached the server at `arrival`. The
    /// session is polled at once (str0m holds one received RTP packet until the next poll).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        id: SessionId,
        from: Addr,
        to: SocketAddr,
        bytes: &[u8],
        arrival: Instant,
    ) {
        let Some(slot) = self.sessions.get_mut(&id) else {
            self.stats().dropped_unknown_source.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if slot.session.failed() {
            self.stats().dropped_unknown_source.fetch_add(1, Ordering::Relaxed);
            return;
        }
        slot.session.handle_receive(now, from, to, bytes);
        self.poll_session(now, id, Some(arrival));
    }

    /// A message from another worker's hub.
    pub fn handle_peer(&mut self, now: Instant, message: PeerMessage) {
        match message {
            PeerMessage::MirrorAdd(m) => {
                let kind = m.spec.kind;
                let pid = self.router.add_producer(now, m.spec);
                let rec = ProducerRec {
                    origin: Origin::Mirror { home: m.home },
                    key: m.producer,
                    kind,
                    specs: m.specs,
                    meter: None,
                };
                self.producers.insert(pid, rec);
                self.keys.insert(m.producer, pid);
            }
            PeerMessage::MirrorEnd(key) => {
                if let Some(pid) = self.keys.get(&key).copied() {
                    self.end_producer(pid);
                }
            }
            PeerMessage::Relay(r) => {
                if let Some(pid) = self.keys.get(&r.producer).copied() {
                    self.route(now, pid, r.packet.clone(), r.arrival);
                }
            }
            PeerMessage::KeyframeWanted { producer, layer, kind } => {
                let Some(pid) = self.keys.get(&producer).copied().filter(|p| self.is_local(*p)) else { return };
                self.stats().keyframes_wanted_elsewhere.fetch_add(1, Ordering::Relaxed);
                self.router.request_keyframe(now, pid, layer, kind);
                self.drain_router();
            }
        }
    }

    /// Move time to `now`: due sessions, the router's keyframe requests, the shared counters.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.sessions.get_mut(&id) else { continue };
            if slot.scheduled != Some(at) {
                continue; // stale entry
            }
            slot.scheduled = None;
            slot.session.handle_timeout(now);
            self.mark(id);
        }
        if self.router.poll_timeout().is_some_and(|t| t <= now) {
            self.router.handle_timeout(now);
            self.drain_router();
        }
        if now >= self.next_stats {
            self.next_stats = now + STATS_INTERVAL;
            self.report();
            for (&pid, rec) in &self.producers {
                if matches!(rec.origin, Origin::Local(_)) {
                    let st = self.router.stats();
                    debug!(producer = ?rec.key, rates = ?self.router.layer_rates(now, pid), probes = st.probe_packets, probe_bytes = st.probe_bytes, "layer rates");
                }
            }
        }
    }

    /// The next instant [`Hub::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_stats;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            t = t.min(*at);
        }
        self.router.poll_timeout().map_or(t, |r| t.min(r))
    }

    /// Poll every session an input touched until each is quiet. Call after a batch of inputs.
    pub fn flush(&mut self, now: Instant) {
        while let Some(id) = self.dirty.pop() {
            self.poll_session(now, id, None);
        }
    }

    /// The next thing for the worker to do.
    pub fn poll_output(&mut self) -> Option<HubOutput> {
        self.out.pop_front()
    }

    /// Arrival times of the ingress packets forwarded since the last call (for the latency histogram,
    /// once their copies are sent).
    pub fn take_arrivals(&mut self) -> impl Iterator<Item = Instant> + '_ {
        self.arrivals.drain(..)
    }

    fn is_local(&self, pid: ProducerId) -> bool {
        self.producers.get(&pid).is_some_and(|p| matches!(p.origin, Origin::Local(_)))
    }

    fn mark(&mut self, id: SessionId) {
        if let Some(slot) = self.sessions.get_mut(&id) {
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Poll one session until it is quiet, acting on what it says, then schedule its next deadline.
    fn poll_session(&mut self, now: Instant, id: SessionId, arrival: Option<Instant>) {
        loop {
            let Hub { sessions, keys, .. } = self;
            let Some(slot) = sessions.get_mut(&id) else { return };
            let live = |k: ProducerKey| keys.contains_key(&k);
            let Some(output) = slot.session.poll_output(now, &live) else {
                slot.dirty = false;
                let refused = slot.session.take_refused_moves();
                if refused > 0 {
                    self.shared.stats.path_moves_refused.fetch_add(refused, Ordering::Relaxed);
                }
                if let Some(t) = slot.session.poll_timeout() {
                    if slot.scheduled.is_none_or(|at| t < at) {
                        slot.scheduled = Some(t);
                        self.timers.push(Reverse((t, id)));
                    }
                }
                return;
            };
            self.act(now, id, output, arrival);
        }
    }

    fn act(&mut self, now: Instant, id: SessionId, output: SessionOutput, arrival: Option<Instant>) {
        match output {
            SessionOutput::Transmit(t) => self.out.push_back(HubOutput::Transmit(t)),
            SessionOutput::Event(e) => self.out.push_back(HubOutput::Event(id, e)),
            SessionOutput::Publish(p) => self.add_producer(now, id, p),
            SessionOutput::Unpublish(pid) => {
                if let Some(key) = self.producers.get(&pid).map(|p| p.key) {
                    self.out.push_back(HubOutput::Event(id, SessionEvent::ProducerRemoved { producer: key }));
                }
                self.end_producer(pid);
            }
            SessionOutput::Rtp(pid, packet) => self.forward(now, pid, packet, arrival.unwrap_or(now)),
            SessionOutput::UnroutedRtp => {
                self.stats().rtp_dropped.fetch_add(1, Ordering::Relaxed);
            }
            SessionOutput::ConsumerReady(r) => self.create_consumer(now, id, r),
            SessionOutput::KeyframeRequest(cid, kind) => {
                self.router.handle_keyframe_request(now, cid, kind);
                self.drain_router();
            }
            SessionOutput::Nack(cid, seqs) => {
                self.stats().nacks_received.fetch_add(seqs.len() as u64, Ordering::Relaxed);
                self.router.handle_nack(now, cid, &seqs);
                self.drain_router();
            }
            SessionOutput::Estimate(bps) => {
                self.stats().remb_received.fetch_add(1, Ordering::Relaxed);
                self.stats().record_estimate(bps);
                self.reported.remb_window += 1;
                self.router.set_estimate(now, id.0, bps);
                debug!(?id, bps, budget = ?self.router.effective_estimate(id.0), "downlink estimate");
                self.drain_router();
            }
            SessionOutput::ReceiverLoss(cid, fraction) => self.router.handle_receiver_loss(cid, fraction),
            SessionOutput::Expired => self.close(now, id),
            SessionOutput::Credentials(creds) => self.out.push_back(HubOutput::Route(id, creds)),
        }
    }

    fn add_producer(&mut self, now: Instant, id: SessionId, p: Published) {
        let layers = u8::try_from(p.rids.len().max(1)).unwrap_or(1);
        let spec = ProducerSpec { kind: p.kind, clock_rate: p.clock_rate, payload_types: p.payload_types, layers };
        let pid = self.router.add_producer(now, spec.clone());
        let key = ProducerKey(self.shared.next_key.fetch_add(1, Ordering::Relaxed));
        if let Some(slot) = self.sessions.get_mut(&id) {
            slot.session.bind_producer(p.mid, pid, p.clock_rate, p.rids.clone());
        }
        // Mirrors exist before anyone hears of the producer, so no subscription can arrive first.
        let mirror = Mirror { producer: key, home: self.index, spec, specs: p.specs.clone() };
        self.tell_others(|| PeerMessage::MirrorAdd(mirror.clone()));
        let meter = (p.kind == Kind::Audio).then(LevelMeter::default);
        self.producers.insert(pid, ProducerRec { origin: Origin::Local(id), key, kind: p.kind, specs: p.specs, meter });
        self.keys.insert(key, pid);
        info!(?id, mid = %p.mid, ?key, codec = %p.codec_name, layers, "producer added");
        let event = SessionEvent::ProducerAdded { producer: key, kind: p.kind, codec: p.codec_name };
        self.out.push_back(HubOutput::Event(id, event));
    }

    fn end_producer(&mut self, pid: ProducerId) {
        let Some(rec) = self.producers.remove(&pid) else { return };
        self.keys.remove(&rec.key);
        if let Origin::Local(_) = rec.origin {
            let key = rec.key;
            self.tell_others(|| PeerMessage::MirrorEnd(key));
        }
        for cid in self.router.remove_producer(pid) {
            let Some(session) = self.consumers.remove(&cid) else { continue };
            if let Some(slot) = self.sessions.get_mut(&session) {
                slot.session.end_consumer(cid);
            }
            self.mark(session);
        }
    }

    fn create_consumer(&mut self, now: Instant, id: SessionId, r: ReadyConsumer) {
        let Some(slot) = self.sessions.get_mut(&id) else { return };
        let Some(pid) = self.keys.get(&r.consumer.producer).copied() else {
            // The producer ended while the offer was in flight.
            slot.session.refuse_consumer(r.mid);
            self.mark(id);
            return;
        };
        self.seq_seed = self.seq_seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let initial_seq = ((self.seq_seed >> 33) as u16) & 0x3fff;
        let spec = ConsumerSpec { sink: id.0, ssrc: r.ssrc, payload_types: r.payload_types, initial_seq };
        match self.router.add_consumer(now, pid, spec) {
            Ok(cid) => {
                self.consumers.insert(cid, id);
                slot.session.bind_consumer(r.mid, cid);
                if let Some(&(w, h)) = slot.tiles.get(&r.consumer.producer) {
                    self.router.set_video_size(now, cid, w, h);
                }
                debug!(?id, mid = %r.mid, producer = ?r.consumer.producer, "consumer added");
            }
            Err(e) => {
                warn!(?id, mid = %r.mid, "consumer not added: {e}; stopping the m-line");
                slot.session.refuse_consumer(r.mid);
            }
        }
        self.mark(id);
        self.drain_router();
    }

    /// A packet of a local producer: relay it to the other workers, then fan it out here.
    fn forward(&mut self, now: Instant, pid: ProducerId, packet: RtpIn, arrival: Instant) {
        self.stats().rtp_in.fetch_add(1, Ordering::Relaxed);
        // Packets the home router drops for what they are (paused, unknown payload type, ...) are not
        // relayed: each such drop is counted once, here.
        let key = self.producers.get(&pid).map(|p| p.key);
        self.meter_audio(now, pid, &packet);
        if let (true, Some(key), Ok(())) = (self.workers > 1, key, self.router.admits(now, pid, &packet)) {
            // The other workers start on their viewers while this one serves its own.
            let relayed = Arc::new(Relayed { producer: key, packet: packet.clone(), arrival });
            let me = self.index;
            for to in (0..self.workers).filter(|w| *w != me) {
                self.out.push_back(HubOutput::Peer(to, PeerMessage::Relay(relayed.clone())));
            }
        }
        self.route(now, pid, packet, arrival);
    }

    /// A local audio packet's level (RFC 6464) into its producer's meter; each finished window goes to
    /// the publisher's session owner as [`SessionEvent::AudioActivity`] (about 5 a second).
    fn meter_audio(&mut self, now: Instant, pid: ProducerId, packet: &RtpIn) {
        let Some(level) = packet.ext.audio_level else { return };
        let Some(rec) = self.producers.get_mut(&pid) else { return };
        let (Origin::Local(session), Some(meter)) = (&rec.origin, rec.meter.as_mut()) else { return };
        if let Some(activity) = meter.count(now, level.unsigned_abs()) {
            let event = SessionEvent::AudioActivity { producer: rec.key, activity };
            self.out.push_back(HubOutput::Event(*session, event));
        }
    }

    /// One packet through this worker's router, its copies written to the consumers' sessions.
    fn route(&mut self, now: Instant, pid: ProducerId, packet: RtpIn, arrival: Instant) {
        let dropped_before = self.router.drops().total();
        let out_before = self.router.stats().packets_out;
        self.router.handle_rtp(now, pid, packet);
        self.drain_router();
        if self.router.stats().packets_out > out_before {
            self.arrivals.push(arrival);
        }
        let dropped = self.router.drops().total() - dropped_before;
        if dropped > 0 {
            self.stats().rtp_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    fn drain_router(&mut self) {
        while let Some(out) = self.router.poll_output() {
            match out {
                Output::Rtp(o) => {
                    let id = SessionId(o.sink);
                    let Some(slot) = self.sessions.get_mut(&id) else { continue };
                    if slot.session.send_rtp(o) {
                        self.shared.stats.rtp_forwarded.fetch_add(1, Ordering::Relaxed);
                        self.mark(id);
                    }
                }
                Output::KeyframeRequest { producer, layer, kind } => self.keyframe_request(producer, layer, kind),
                Output::Paused { consumer, sink, reason } => {
                    debug!(session = sink, ?consumer, ?reason, "video paused");
                    if let Some(producer) = self.consumer_key(consumer) {
                        let event = SessionEvent::VideoPaused { producer, reason };
                        self.out.push_back(HubOutput::Event(SessionId(sink), event));
                    }
                }
                Output::Resumed { consumer, sink, layer } => {
                    debug!(session = sink, ?consumer, ?layer, "video resumed");
                    if let Some(producer) = self.consumer_key(consumer) {
                        self.out.push_back(HubOutput::Event(SessionId(sink), SessionEvent::VideoResumed { producer }));
                    }
                }
                Output::HandedOver { from, to, sink } => {
                    let id = SessionId(sink);
                    self.consumers.remove(&from);
                    self.consumers.insert(to, id);
                    if let Some(slot) = self.sessions.get_mut(&id) {
                        slot.session.replace_consumer(from, to);
                    }
                }
            }
        }
    }

    /// The producer key of a consumer's producer.
    fn consumer_key(&self, consumer: ConsumerId) -> Option<ProducerKey> {
        let pid = self.router.consumer_producer(consumer)?;
        Some(self.producers.get(&pid)?.key)
    }

    /// The router asks a producer's publisher for a keyframe: send it, or pass it home for a mirror.
    fn keyframe_request(&mut self, pid: ProducerId, layer: LayerId, kind: KeyframeKind) {
        let Some(rec) = self.producers.get(&pid) else { return };
        match rec.origin {
            Origin::Mirror { home } => {
                let m = PeerMessage::KeyframeWanted { producer: rec.key, layer, kind };
                self.out.push_back(HubOutput::Peer(home, m));
            }
            Origin::Local(session) => {
                let Some(slot) = self.sessions.get_mut(&session) else { return };
                if slot.session.request_keyframe(pid, layer, kind) {
                    self.shared.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    debug!(?session, ?kind, "keyframe requested from publisher");
                }
                self.mark(session);
            }
        }
    }

    /// Queue `make()` for every other worker.
    fn tell_others(&mut self, make: impl Fn() -> PeerMessage) {
        for to in (0..self.workers).filter(|w| *w != self.index) {
            self.out.push_back(HubOutput::Peer(to, make()));
        }
    }

    /// Add what the router counted since the last report to the shared counters.
    fn report(&mut self) {
        let stats = &self.shared.stats;
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            let total = self.router.drops().get(*reason);
            let delta = total.saturating_sub(self.reported.drops[i]);
            if delta > 0 {
                self.reported.drops[i] = total;
                stats.drops_by_reason[i].fetch_add(delta, Ordering::Relaxed);
            }
        }
        let st = self.router.stats();
        stats.retransmissions.fetch_add(st.resends - self.reported.resends, Ordering::Relaxed);
        stats.retransmission_misses.fetch_add(st.resend_misses - self.reported.resend_misses, Ordering::Relaxed);
        self.reported.resends = st.resends;
        self.reported.resend_misses = st.resend_misses;
        stats.layer_switches.fetch_add(st.layer_switches - self.reported.layer_switches, Ordering::Relaxed);
        stats.probe_packets.fetch_add(st.probe_packets - self.reported.probe_packets, Ordering::Relaxed);
        stats.probe_bytes.fetch_add(st.probe_bytes - self.reported.probe_bytes, Ordering::Relaxed);
        self.reported.layer_switches = st.layer_switches;
        self.reported.probe_packets = st.probe_packets;
        self.reported.probe_bytes = st.probe_bytes;
        // Gauges: add this worker's change since its last report.
        let census = self.router.layer_census();
        let old = self.reported.census;
        for (i, gauge) in stats.consumers_per_layer.iter().enumerate() {
            move_gauge(gauge, old.forwarding[i], census.forwarding[i]);
        }
        move_gauge(&stats.consumers_paused_bandwidth, old.paused_bandwidth, census.paused_bandwidth);
        move_gauge(&stats.consumers_paused_hidden, old.paused_hidden, census.paused_hidden);
        move_gauge(&stats.consumers_starting, old.starting, census.starting);
        self.reported.census = census;
        let rate = std::mem::take(&mut self.reported.remb_window);
        move_gauge(&stats.remb_last_second, self.reported.remb_rate, rate);
        self.reported.remb_rate = rate;
        let viewers = self.sessions.values().filter(|s| s.session.consumers().next().is_some()).count() as u64;
        move_gauge(&stats.receiving_sessions, self.reported.viewer_sessions, viewers);
        self.reported.viewer_sessions = viewers;
    }
}

/// Move a gauge shared by every worker from this worker's `old` share to its `new` one.
fn move_gauge(gauge: &AtomicU64, old: u64, new: u64) {
    if new >= old {
        gauge.fetch_add(new - old, Ordering::Relaxed);
    } else {
        gauge.fetch_sub(old - new, Ordering::Relaxed);
    }
}
