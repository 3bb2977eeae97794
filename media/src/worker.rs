//! One media worker: a thread that owns its sessions and its router, and sends on the shared UDP socket.
//! Worker 0 also reads the socket (see the crate docs for how workers share sessions' datagrams and
//! producers' packets).
//!
//! The loop waits for the first of: a command (from a handle or another worker), a datagram, or the
//! earliest timeout of any session or of the router. Handlers only feed input and mark sessions dirty; `flush` then polls each dirty
//! session until str0m reports its next timeout, sending what it transmits and acting on its events.
//! Forwarding happens inside that polling: an incoming RTP packet goes through the router, and each
//! output is written to the consumer's str0m send stream with the same shared payload (`Arc<[u8]>`),
//! which marks the consumer's session dirty in turn. Network bytes never make this loop fail: they
//! are dropped and counted.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use dais_forward::{
    ConsumeError, ConsumerId, ConsumerSpec, KeyframeKind, Output as FwdOutput, ProducerId, ProducerSpec, Router,
    RouterConfig, RtpIn,
};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::CodecSpec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap, ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::codec;
use crate::send::SendBatch;
use crate::session::{Negotiation, PendingConsumer, Session};
use crate::{AnswerError, Command, Kind, MediaStats, OfferError, ProducerKey, SessionEvent, SessionId};

/// Host candidate addresses for a socket bound to `local`.
pub(crate) fn candidate_addrs(local: SocketAddr, advertise: &[IpAddr]) -> Vec<SocketAddr> {
    if !advertise.is_empty() {
        return advertise.iter().map(|ip| SocketAddr::new(*ip, local.port())).collect();
    }
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == local.is_ipv4())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A publisher normally offers first (so its first offer never collides with ours); one that has
/// not offered this long after joining (no camera, denied permission) gets server offers anyway.
const PUBLISHER_OFFER_GRACE: Duration = Duration::from_secs(5);

/// Trickled remote candidates kept per session; more are ignored.
const MAX_REMOTE_CANDIDATES: usize = 32;

/// How long a failed session keeps its producers while waiting for its owner's close.
const FAILED_GRACE: Duration = Duration::from_secs(10);

/// Most queued commands handled in one loop pass before the worker flushes its output.
const COMMAND_BATCH: usize = 256;

/// How often every session is checked for the coarse deadlines (seconds-long timeouts).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);

/// At most one keyframe request per publisher stream per this interval. A little over 500 ms, so that a
/// publisher sees at most 2 requests in any one second even when the worker's passes delay one request
/// and not the next by up to 50 ms.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(550);

/// Most packets of one video consumer kept for resends (NACK -> RTX).
const RTX_CACHE_PACKETS: usize = 1024;
/// Oldest packet of one video consumer kept for resends.
const RTX_CACHE_AGE: Duration = Duration::from_secs(1);
/// str0m's default cap on resends: once they exceed this share of a stream's traffic, queued resends
/// are dropped, so one very lossy viewer cannot turn the worker into a resend loop.
const RTX_RATIO_CAP: f32 = 0.15;

/// What every worker shares.
pub(crate) struct Shared {
    /// Each worker's command channel, by index.
    peers: Vec<mpsc::UnboundedSender<Command>>,
    stats: Arc<MediaStats>,
    /// Host candidates advertised in every SDP.
    candidates: Vec<SocketAddr>,
    /// Which worker's session accepted each remote address. Worker 0 reads it for datagrams its own
    /// sessions do not know; a worker writes it before it answers the STUN request that introduced the
    /// address, so the peer's next datagram always finds it.
    claims: Mutex<HashMap<SocketAddr, usize>>,
    /// The next [`ProducerKey`], unique across workers.
    next_key: AtomicU64,
    /// Per worker: media messages (relayed packets, handed-over datagrams) sent to it and not yet
    /// handled. A worker that falls behind gets no more than [`MAX_BACKLOG`]; the rest are dropped and
    /// counted, as a full socket buffer drops datagrams, instead of queueing without bound.
    backlog: Vec<AtomicUsize>,
}

/// Most media messages queued for one worker.
const MAX_BACKLOG: usize = 8192;

impl Shared {
    pub(crate) fn new(
        peers: Vec<mpsc::UnboundedSender<Command>>,
        stats: Arc<MediaStats>,
        candidates: Vec<SocketAddr>,
    ) -> Shared {
        let backlog = peers.iter().map(|_| AtomicUsize::new(0)).collect();
        Shared { peers, stats, candidates, claims: Mutex::new(HashMap::new()), next_key: AtomicU64::new(1), backlog }
    }

    /// Send a media message (relay or datagram) to worker `to`, unless its backlog is full.
    fn send_media(&self, to: usize, cmd: Command) -> bool {
        let (Some(tx), Some(backlog)) = (self.peers.get(to), self.backlog.get(to)) else { return false };
        if backlog.load(Ordering::Relaxed) >= MAX_BACKLOG {
            self.stats.backlog_drops.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        backlog.fetch_add(1, Ordering::Relaxed);
        if tx.send(cmd).is_err() {
            backlog.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Worker `index` took one media message off its queue.
    fn media_handled(&self, index: usize) {
        if let Some(b) = self.backlog.get(index) {
            b.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, usize>> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send `make()` to every worker but `from`.
    fn broadcast(&self, from: usize, make: impl Fn() -> Command) {
        for (i, tx) in self.peers.iter().enumerate() {
            if i != from {
                let _ = tx.send(make());
            }
        }
    }
}

/// A producer announced by its home worker to the others.
pub(crate) struct Mirror {
    producer: ProducerKey,
    home: usize,
    spec: ProducerSpec,
    specs: Vec<CodecSpec>,
    clock_rate: u32,
}

/// One RTP packet of a producer, as its home worker relays it to the other workers. The payload is
/// shared, never copied: `rtp.payload` and `ingress.payload` own the same bytes.
pub(crate) struct Relayed {
    producer: ProducerKey,
    rtp: RtpIn,
    ingress: Ingress,
    /// When the datagram carrying it reached the server.
    arrival: Instant,
}

/// Where a producer's packets come from on this worker.
#[derive(Clone, Copy)]
enum Origin {
    /// A session of this worker publishes it.
    Local { session: SessionId, mid: Mid },
    /// A mirror of a producer on worker `home`, fed by [`Command::Relay`].
    Mirror { home: usize },
}

struct ProducerRec {
    origin: Origin,
    key: ProducerKey,
    specs: Vec<CodecSpec>,
    clock_rate: u32,
}

/// How a datagram reached this worker.
#[derive(Clone, Copy)]
enum Via {
    /// Read from the socket now.
    Socket,
    /// Handed over by the worker that read it at `at`; `tried` workers already looked for a session.
    Worker { at: Instant, tried: usize },
}

struct ConsumerRec {
    session: SessionId,
    mid: Mid,
    ssrc: Ssrc,
    kind: Kind,
}

/// What one ingress packet lends to every egress copy of it.
#[derive(Clone)]
struct Ingress {
    payload: Arc<[u8]>,
    ext: ExtensionValues,
    wallclock: Instant,
}

struct Worker {
    index: usize,
    shared: Arc<Shared>,
    /// This worker's handle to the shared socket, for sending.
    send: std::net::UdpSocket,
    sessions: HashMap<SessionId, Session>,
    addr_map: HashMap<SocketAddr, SessionId>,
    router: Router,
    producers: HashMap<ProducerId, ProducerRec>,
    keys: HashMap<ProducerKey, ProducerId>,
    consumers: HashMap<ConsumerId, ConsumerRec>,
    stats: Arc<MediaStats>,
    dirty: Vec<SessionId>,
    seq_seed: u64,
    next_report: Instant,
    next_drop_refresh: Instant,
    /// Arrival times of ingress packets forwarded since the last flush; their latency is recorded
    /// once the flush has handed every egress copy to the kernel.
    forwarded_arrivals: Vec<Instant>,
    /// When each session wants time, earliest first. An entry is live while it equals its session's
    /// `scheduled`; others are stale and skipped. Keeps finding due sessions O(log n) instead of a
    /// scan of every session per loop pass.
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Sessions polled since the last flush: only they can have changed their negotiation or liveness.
    polled: Vec<SessionId>,
    /// Next pass over all sessions for the coarse deadlines (failed grace, connect timeout, publisher
    /// offer grace), every [`HOUSEKEEPING_INTERVAL`].
    next_housekeeping: Instant,
    /// Egress datagrams waiting for the next `sendmmsg`.
    batch: SendBatch,
    /// Router drops already added to the shared per-reason counters.
    drops_reported: [u64; dais_forward::DropReason::ALL.len()],
    /// Arrival time of the datagram being handled, when another worker read it.
    handed_arrival: Option<Instant>,
}

pub(crate) fn run(
    index: usize,
    recv: Option<std::net::UdpSocket>,
    send: std::net::UdpSocket,
    local: SocketAddr,
    rx: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            warn!("media runtime failed to start: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let recv = match recv.map(UdpSocket::from_std).transpose() {
            Ok(s) => s,
            Err(e) => {
                warn!("media socket could not be registered: {e}");
                return;
            }
        };
        info!(worker = index, %local, candidates = ?shared.candidates, receives = recv.is_some(), "media worker started");
        let seq_seed =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        let mut w = Worker {
            index,
            stats: shared.stats.clone(),
            shared,
            send,
            sessions: HashMap::new(),
            addr_map: HashMap::new(),
            router: Router::new(RouterConfig {
                keyframe_request_interval: KEYFRAME_REQUEST_INTERVAL,
                ..RouterConfig::default()
            }),
            producers: HashMap::new(),
            keys: HashMap::new(),
            consumers: HashMap::new(),
            dirty: Vec::new(),
            seq_seed,
            next_report: Instant::now(),
            next_drop_refresh: Instant::now(),
            forwarded_arrivals: Vec::with_capacity(256),
            timers: BinaryHeap::new(),
            polled: Vec::new(),
            next_housekeeping: Instant::now(),
            batch: SendBatch::new(),
            drops_reported: [0; dais_forward::DropReason::ALL.len()],
            handed_arrival: None,
        };
        w.run(recv.as_ref(), rx).await;
    });
}

impl Worker {
    async fn run(&mut self, recv: Option<&UdpSocket>, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = self.next_deadline();
            // Timers first when due: under a socket that is always readable, the select below would
            // otherwise never pick its timer branch.
            if deadline <= Instant::now() {
                self.handle_timeout(Instant::now());
                self.flush();
                continue;
            }
            tokio::select! {
                biased;
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if !self.handle_command(cmd) { break; }
                    // Batch what else is queued so one offer carries many subscriptions, but flush at
                    // least every COMMAND_BATCH commands: relayed packets arrive here too.
                    let mut stop = false;
                    for _ in 0..COMMAND_BATCH {
                        let Ok(cmd) = rx.try_recv() else { break };
                        if !self.handle_command(cmd) { stop = true; break; }
                    }
                    if stop { break; }
                }
                r = recv_from(recv, &mut buf) => match r {
                    Ok((n, src)) => {
                        self.handle_datagram(Instant::now(), src, &buf[..n], Via::Socket);
                        // Drain what else is readable without waiting.
                        if let Some(socket) = recv {
                            for _ in 0..64 {
                                match socket.try_recv_from(&mut buf) {
                                    Ok((n, src)) => self.handle_datagram(Instant::now(), src, &buf[..n], Via::Socket),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                    // ICMP errors (port unreachable) surface here on Linux; they concern one peer only.
                    Err(e) => debug!("udp recv error: {e}"),
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.handle_timeout(Instant::now()),
            }
            self.flush();
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.rtc.disconnect();
            }
            self.poll_session(id);
        }
        self.batch.send(&self.send, &self.stats);
        info!(worker = self.index, "media worker stopped");
    }

    fn next_deadline(&self) -> Instant {
        let mut t = self.next_housekeeping;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            t = t.min(*at);
        }
        if let Some(r) = self.router.poll_timeout() {
            t = t.min(r);
        }
        t
    }

    /// Whether a session of this worker publishes `pid` (not a mirror).
    fn is_local(&self, pid: ProducerId) -> bool {
        self.producers.get(&pid).is_some_and(|p| matches!(p.origin, Origin::Local { .. }))
    }

    fn mark(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Returns false on shutdown.
    fn handle_command(&mut self, cmd: Command) -> bool {
        let now = Instant::now();
        match cmd {
            Command::Shutdown => return false,
            Command::Open { session, publisher, events } => self.open(now, session, publisher, events),
            Command::ClientOffer { session, sdp, reply } => {
                let r = self.client_offer(now, session, &sdp);
                let _ = reply.send(r);
            }
            Command::ClientAnswer { session, sdp, reply } => {
                let r = self.client_answer(now, session, &sdp);
                let _ = reply.send(r);
            }
            Command::Candidate { session, candidate } => {
                let text = candidate.trim();
                let text = text.strip_prefix("a=").unwrap_or(text);
                match Candidate::from_sdp_string(text) {
                    Ok(c) => {
                        if let Some(s) = self.sessions.get_mut(&session) {
                            // ICE-lite learns peers from their checks; trickled candidates only help,
                            // and each one costs a pass over the pairs, so a session keeps a few.
                            if s.remote_candidates < MAX_REMOTE_CANDIDATES {
                                s.remote_candidates += 1;
                                s.rtc.add_remote_candidate(c);
                                self.mark(session);
                            }
                        }
                    }
                    Err(e) => debug!(?session, "ignoring remote candidate: {e}"),
                }
            }
            Command::Subscribe { session, producer, stream_id, track_id } => {
                let Some(pid) = self.keys.get(&producer).copied() else {
                    debug!(?session, ?producer, "subscribe to a producer that is gone");
                    return true;
                };
                let kind = match self.producers.get(&pid) {
                    Some(p) if p.specs.first().map(|s| s.codec.is_audio()).unwrap_or(false) => Kind::Audio,
                    Some(_) => Kind::Video,
                    None => return true,
                };
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.queued_adds.push(PendingConsumer { producer, kind, stream_id, track_id });
                    s.wants_negotiation = true;
                    self.mark(session);
                }
            }
            Command::Close { session } => self.close_session(session, false),
            Command::SetPaused { producer, paused } => {
                if let Some(pid) = self.keys.get(&producer).copied() {
                    self.router.set_paused(now, pid, paused);
                    self.drain_router(None);
                    if self.is_local(pid) {
                        info!(?producer, paused, "producer pause changed");
                    }
                }
            }
            Command::SetPublisher { session, publisher } => self.set_publisher(session, publisher),
            Command::MirrorAdd(m) => {
                let pid = self.router.add_producer(now, m.spec);
                let origin = Origin::Mirror { home: m.home };
                self.producers
                    .insert(pid, ProducerRec { origin, key: m.producer, specs: m.specs, clock_rate: m.clock_rate });
                self.keys.insert(m.producer, pid);
            }
            Command::MirrorEnd { producer } => {
                if let Some(pid) = self.keys.get(&producer).copied() {
                    self.end_producer(pid);
                }
            }
            Command::Relay(r) => {
                self.shared.media_handled(self.index);
                self.relayed(now, &r);
            }
            Command::KeyframeWanted { producer, kind } => {
                let Some(pid) = self.keys.get(&producer).copied() else { return true };
                if self.is_local(pid) {
                    self.stats.keyframes_wanted_elsewhere.fetch_add(1, Ordering::Relaxed);
                    self.router.request_keyframe(now, pid, kind);
                    self.drain_router(None);
                }
            }
            Command::Datagram { src, data, at, tried } => {
                self.shared.media_handled(self.index);
                self.handle_datagram(now, src, &data, Via::Worker { at, tried });
            }
        }
        true
    }

    /// A fresh ICE-lite, RTP-mode session preferring `first` among the video codecs, so that an
    /// answer lists the offerer's favourite first (browsers send with the answer's first codec).
    ///
    /// A viewer's session (`publisher` false) does not negotiate transport-wide congestion control:
    /// the SFU runs no bandwidth estimation towards viewers, and the feedback a browser sends for it
    /// (10 to 20 RTCP packets per second per viewer) would cost the worker about a quarter of its time
    /// at 1,000 viewers. A viewer promoted in place publishes on this session, so its browser estimates
    /// its upstream bandwidth from RTCP receiver reports (loss) alone.
    fn build_rtc(&self, now: Instant, first: Option<str0m::format::Codec>, publisher: bool) -> str0m::Rtc {
        let mut cfg = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .set_stats_interval(Some(Duration::from_secs(5)));
        if !publisher {
            cfg = cfg.set_extension_map(viewer_extensions());
        }
        let order = first.into_iter().chain(codec::VIDEO_CODECS.into_iter().filter(|c| Some(*c) != first));
        for c in order {
            cfg = match c {
                str0m::format::Codec::Vp8 => cfg.enable_vp8(true),
                str0m::format::Codec::H264 => cfg.enable_h264(true),
                str0m::format::Codec::Vp9 => cfg.enable_vp9(true),
                _ => cfg.enable_av1(true),
            };
        }
        let mut rtc = cfg.build(now);
        for addr in &self.shared.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!(%addr, "cannot use candidate: {e}"),
            }
        }
        rtc
    }

    fn open(&mut self, now: Instant, id: SessionId, publisher: bool, events: crate::EventSink) {
        let rtc = self.build_rtc(now, None, publisher);
        if self.sessions.contains_key(&id) {
            self.close_session(id, false);
        }
        self.sessions.insert(id, Session::new(rtc, publisher, events));
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.dirty.push(id);
    }

    fn client_offer(&mut self, now: Instant, id: SessionId, sdp: &str) -> Result<String, OfferError> {
        let s = self.sessions.get_mut(&id).ok_or(OfferError::NoSession)?;
        if !s.publisher && crate::offers_to_send(sdp) {
            return Err(OfferError::NotAPublisher);
        }
        if s.negotiation.is_some() {
            return Err(OfferError::Collision);
        }
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| OfferError::BadSdp(e.to_string()))?;
        if !s.client_offered {
            // Nothing was negotiated yet, so the session can be rebuilt around the publisher's codec
            // preference: str0m answers in its own configured order.
            let preferred = codec::preferred_video_codec(sdp);
            if preferred.is_some_and(|c| Some(&c) != codec::VIDEO_CODECS.first()) {
                let publisher = s.publisher;
                let rtc = self.build_rtc(now, preferred, publisher);
                let Some(s) = self.sessions.get_mut(&id) else { return Err(OfferError::NoSession) };
                s.rtc = rtc;
            }
        }
        let Some(s) = self.sessions.get_mut(&id) else { return Err(OfferError::NoSession) };
        let answer = s.rtc.sdp_api().accept_offer(offer).map_err(|e| OfferError::BadSdp(e.to_string()))?;
        s.client_offered = true;
        s.wants_negotiation = true;
        s.negotiated_at.get_or_insert(now);
        let answer = answer.to_sdp_string();
        s.produced(&answer);
        self.mark(id);
        Ok(answer)
    }

    fn client_answer(&mut self, now: Instant, id: SessionId, sdp: &str) -> Result<(), AnswerError> {
        let s = self.sessions.get_mut(&id).ok_or(AnswerError::NoSession)?;
        if s.negotiation.is_none() {
            return Err(AnswerError::Unexpected);
        }
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| AnswerError::BadSdp(e.to_string()))?;
        let Some(neg) = s.negotiation.take() else {
            return Err(AnswerError::Unexpected);
        };
        let Negotiation { offer, adds } = neg;
        if let Err(e) = s.rtc.sdp_api().accept_answer(offer, answer) {
            // The change set is gone; put its consumers back so the next offer retries them.
            s.queued_adds.extend(adds.into_iter().map(|(_, a)| a));
            s.wants_negotiation = true;
            self.mark(id);
            return Err(AnswerError::BadSdp(e.to_string()));
        }
        s.negotiated_at.get_or_insert(now);
        // A client starts its connectivity checks as soon as it has sent its answer, so its first checks
        // usually arrive before the answer does. str0m queues them until it knows the remote credentials
        // and answers them on its next timeout: give it that now rather than up to 250 ms later.
        if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
            debug!(?id, "session timeout error: {e}");
        }
        if s.connected {
            for (mid, add) in adds {
                self.create_consumer(now, id, mid, add);
            }
        } else {
            s.awaiting_connect.extend(adds);
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.wants_negotiation = true;
        }
        self.mark(id);
        self.drain_router(None);
        Ok(())
    }

    fn create_consumer(&mut self, now: Instant, id: SessionId, mid: Mid, add: PendingConsumer) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Some(pid) = self.keys.get(&add.producer).copied() else {
            // The producer ended while the offer was in flight: stop the m-line in the next offer.
            s.queued_stops.push(mid);
            s.wants_negotiation = true;
            return;
        };
        let Some(prec) = self.producers.get(&pid) else { return };
        let video = add.kind == Kind::Video;
        let Some(ssrc) = s.rtc.direct_api().stream_tx_by_mid(mid, None).map(|tx| {
            if video {
                // Resends only help within about a second (a NACK round trip plus the receiver's jitter
                // buffer); str0m's default keeps 3 s of every viewer's copy of the stream.
                tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
            }
            tx.ssrc()
        }) else {
            warn!(?id, %mid, "no send stream for accepted consumer m-line; stopping it");
            s.queued_stops.push(mid);
            s.wants_negotiation = true;
            return;
        };
        let remote_pts: Vec<Pt> = s.rtc.media(mid).map(|m| m.remote_pts().to_vec()).unwrap_or_default();
        let cparams = codec::params_for(s.rtc.codec_config().params(), &remote_pts);
        let mut payload_types = Vec::new();
        for pspec in &prec.specs {
            if let Some(p) = cparams.iter().find(|p| codec::compatible(pspec, &p.spec())) {
                let c = codec::core_codec(pspec.codec);
                if !payload_types.iter().any(|(pc, _)| *pc == c) {
                    payload_types.push((c, *p.pt()));
                }
            }
        }
        self.seq_seed = self.seq_seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let initial_seq = ((self.seq_seed >> 33) as u16) & 0x3fff;
        let spec = ConsumerSpec { ssrc: *ssrc, payload_types, initial_seq };
        match self.router.add_consumer(now, pid, spec) {
            Ok(cid) => {
                self.consumers.insert(cid, ConsumerRec { session: id, mid, ssrc, kind: add.kind });
                s.consumers_by_mid.insert(mid, cid);
                debug!(?id, %mid, producer = ?add.producer, "consumer added");
            }
            Err(ConsumeError::NoCommonCodec) => {
                warn!(?id, %mid, producer = ?add.producer, "viewer accepted none of the producer's codecs; stopping the m-line");
                s.queued_stops.push(mid);
                s.wants_negotiation = true;
            }
            Err(e) => {
                warn!(?id, %mid, "consumer not added: {e}; stopping the m-line");
                s.queued_stops.push(mid);
                s.wants_negotiation = true;
            }
        }
    }

    fn negotiate(&mut self, id: SessionId) {
        let keys = &self.keys;
        let Some(s) = self.sessions.get_mut(&id) else { return };
        s.wants_negotiation = false;
        let gated = s.publisher && !s.client_offered && s.opened_at.elapsed() < PUBLISHER_OFFER_GRACE;
        if s.negotiation.is_some() || gated {
            return;
        }
        s.queued_adds.retain(|a| keys.contains_key(&a.producer));
        if s.queued_adds.is_empty() && s.queued_stops.is_empty() {
            return;
        }
        let adds = std::mem::take(&mut s.queued_adds);
        let mut stops = std::mem::take(&mut s.queued_stops);
        // The bundle's first m-line (its tag) is never stopped, only made inactive. A stopped m-line
        // leaves the BUNDLE group, and Chromium both refuses an offer whose group is empty ("max-bundle
        // configured but session description has no BUNDLE group": the only speaker left) and, when the
        // tag leaves a group that goes on, tears down the bundle's DTLS transport (close_notify: the
        // first speaker left). So the tag stays, inactive, for the rest of the session.
        let keep = s.bundle_tag.filter(|t| stops.contains(t));
        stops.retain(|m| Some(*m) != s.bundle_tag);
        let mut api = s.rtc.sdp_api();
        let mut planned = Vec::with_capacity(adds.len());
        for a in adds {
            let kind = match a.kind {
                Kind::Audio => MediaKind::Audio,
                Kind::Video => MediaKind::Video,
            };
            let mid =
                api.add_media(kind, Direction::SendOnly, Some(a.stream_id.clone()), Some(a.track_id.clone()), None);
            planned.push((mid, a));
        }
        for mid in stops {
            api.stop_media(mid);
        }
        if let Some(mid) = keep {
            api.set_direction(mid, Direction::Inactive);
        }
        if let Some((offer, pending)) = api.apply() {
            let sdp = offer.to_sdp_string();
            s.produced(&sdp);
            s.negotiation = Some(Negotiation { offer: pending, adds: planned });
            (s.events)(SessionEvent::Offer { sdp });
        }
    }

    /// Feed one datagram to its session and poll that session at once: in RTP mode str0m holds only
    /// one received packet until the next poll, so two inputs without a poll in between lose one.
    /// A datagram for a session on another worker is handed to that worker.
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8], via: Via) {
        if matches!(via, Via::Socket) {
            self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let Ok(contents) = DatagramRecv::try_from(data) else {
            self.stats.dropped_unparseable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let destination = self.destination_for(src);
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source: src, destination, contents });
        let known = self
            .addr_map
            .get(&src)
            .copied()
            .filter(|id| self.sessions.get(id).map(|s| s.rtc.accepts(&input)).unwrap_or(false));
        let workers = self.shared.peers.len();
        let id = match known {
            Some(id) => id,
            None => {
                if matches!(via, Via::Socket) && workers > 1 {
                    let owner = self.shared.claims().get(&src).copied();
                    if let Some(w) = owner.filter(|w| *w != self.index) {
                        self.hand_over(w, src, data, now, 0);
                        return;
                    }
                }
                // Only a STUN request (RFC 7983: first byte 0-3, magic cookie) can introduce a new
                // address: every address that passed a connectivity check is in `addr_map` (or claimed
                // by another worker). Anything else from an unknown address is dropped without scanning
                // the sessions.
                let stun = data.len() >= 20 && data[0] < 4 && data[4..8] == [0x21, 0x12, 0xa4, 0x42];
                if !stun {
                    self.stats.dropped_unknown_source.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let Some(id) = self.sessions.iter().find(|(_, s)| s.rtc.accepts(&input)).map(|(k, _)| *k) else {
                    // Ask the next worker, until every worker has looked once.
                    let (at, tried) = match via {
                        Via::Socket => (now, 1),
                        Via::Worker { at, tried } => (at, tried + 1),
                    };
                    if tried < workers {
                        self.hand_over((self.index + 1) % workers, src, data, at, tried);
                    } else {
                        self.stats.dropped_unknown_source.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                };
                self.addr_map.insert(src, id);
                if workers > 1 {
                    self.shared.claims().insert(src, self.index);
                }
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.addrs.push(src);
                }
                id
            }
        };
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.failed_at.is_some() {
            self.stats.dropped_unknown_source.fetch_add(1, Ordering::Relaxed);
            return;
        }
        s.last_source = Some(src);
        if let Err(e) = s.rtc.handle_input(input) {
            debug!(?id, "session input error: {e}");
        }
        self.handed_arrival = match via {
            Via::Worker { at, .. } => Some(at),
            Via::Socket => None,
        };
        self.poll_session(id);
        self.handed_arrival = None;
    }

    /// Give a datagram read at `at` to worker `to`.
    fn hand_over(&self, to: usize, src: SocketAddr, data: &[u8], at: Instant, tried: usize) {
        if self.shared.send_media(to, Command::Datagram { src, data: data.to_vec(), at, tried }) {
            self.stats.datagrams_handed_over.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The local address a datagram from `src` was sent to. The socket does not report it, so it is
    /// chosen among the advertised candidates: loopback for loopback peers, else the first of the
    /// same family.
    fn destination_for(&self, src: SocketAddr) -> SocketAddr {
        let candidates = &self.shared.candidates;
        if candidates.len() == 1 {
            return candidates[0];
        }
        let same_family = |c: &&SocketAddr| c.is_ipv4() == src.is_ipv4();
        if src.ip().is_loopback() {
            if let Some(c) = candidates.iter().filter(same_family).find(|c| c.ip().is_loopback()) {
                return *c;
            }
        }
        candidates
            .iter()
            .filter(same_family)
            .find(|c| !c.ip().is_loopback())
            .or_else(|| candidates.first())
            .copied()
            .unwrap_or(src)
    }

    /// The coarse per-session deadlines, and a safety net for negotiation and liveness checks.
    fn housekeeping(&mut self, now: Instant) {
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.failed_at.is_some_and(|t| now.duration_since(t) >= FAILED_GRACE))
            .map(|(k, _)| *k)
            .collect();
        for id in expired {
            self.close_session(id, false);
        }
        let stuck: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                !s.connected
                    && s.failed_at.is_none()
                    && s.negotiated_at.is_some_and(|t| now.duration_since(t) >= crate::CONNECT_TIMEOUT)
            })
            .map(|(k, _)| *k)
            .collect();
        for id in stuck {
            info!(?id, "session did not connect in time");
            self.fail_session(id);
        }
        for s in self.sessions.values_mut() {
            let waiting = s.publisher && !s.client_offered && !s.queued_adds.is_empty();
            if waiting && now.duration_since(s.opened_at) >= PUBLISHER_OFFER_GRACE {
                s.wants_negotiation = true;
            }
        }
        let pending: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.wants_negotiation || (s.failed_at.is_none() && !s.rtc.is_alive()))
            .map(|(k, _)| *k)
            .collect();
        for id in pending {
            self.mark(id);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            self.housekeeping(now);
        }
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            if s.scheduled != Some(at) {
                continue; // stale entry
            }
            s.scheduled = None;
            if s.failed_at.is_some() {
                continue;
            }
            match s.next_timeout {
                Some(t) if t > now => {
                    // The session moved its deadline later since this entry was made.
                    s.scheduled = Some(t);
                    self.timers.push(Reverse((t, id)));
                }
                _ => {
                    if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                        debug!(?id, "session timeout error: {e}");
                    }
                    self.mark(id);
                }
            }
        }
        if now >= self.next_drop_refresh {
            self.next_drop_refresh = now + Duration::from_secs(1);
            // Each worker adds what its router dropped since its last report.
            for (i, reason) in dais_forward::DropReason::ALL.iter().enumerate() {
                let total = self.router.drops().get(*reason);
                let delta = total.saturating_sub(self.drops_reported[i]);
                if delta > 0 {
                    self.drops_reported[i] = total;
                    self.stats.drops_by_reason[i].fetch_add(delta, Ordering::Relaxed);
                }
            }
        }
        if now >= self.next_report {
            self.next_report = now + Duration::from_secs(10);
            let drops: Vec<String> = self
                .router
                .drops()
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{}={n}", r.as_str()))
                .collect();
            let st = self.router.stats();
            debug!(
                worker = self.index,
                sessions = self.sessions.len(),
                packets_in = st.packets_in,
                packets_out = st.packets_out,
                keyframe_requests = st.keyframe_requests_sent,
                drops = %drops.join(","),
                "router stats"
            );
        }
        if self.router.poll_timeout().is_some_and(|t| t <= now) {
            self.router.handle_timeout(now);
            self.drain_router(None);
        }
    }

    fn flush(&mut self) {
        loop {
            while let Some(id) = self.dirty.pop() {
                self.poll_session(id);
            }
            // The pass's last datagrams go to the kernel before their latency is taken.
            self.batch.send(&self.send, &self.stats);
            if !self.forwarded_arrivals.is_empty() {
                let done = Instant::now();
                for a in self.forwarded_arrivals.drain(..) {
                    self.stats.latency.record(done.saturating_duration_since(a));
                }
            }
            self.polled.sort_unstable();
            self.polled.dedup();
            let wanting: Vec<SessionId> = self
                .polled
                .iter()
                .copied()
                .filter(|id| self.sessions.get(id).is_some_and(|s| s.wants_negotiation))
                .collect();
            if wanting.is_empty() {
                break;
            }
            for id in wanting {
                self.negotiate(id);
                self.mark(id);
            }
        }
        let dead: Vec<SessionId> = self
            .polled
            .iter()
            .copied()
            .filter(|id| self.sessions.get(id).is_some_and(|s| s.failed_at.is_none() && !s.rtc.is_alive()))
            .collect();
        self.polled.clear();
        for id in dead {
            self.fail_session(id);
        }
        // Failing a session may have queued datagrams (none today, but cheap to be sure).
        self.batch.send(&self.send, &self.stats);
    }

    fn poll_session(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.dirty = false;
            if s.failed_at.is_some() {
                return;
            }
        }
        // str0m hands over RTP written with `write_rtp` only once time has moved: its first poll after a
        // write asks for a timeout that is already due. Feeding that timeout here, once per poll, sends
        // the packet in this pass instead of a timer-heap round trip and another pass later.
        let now = Instant::now();
        let mut timed = false;
        loop {
            let Some(s) = self.sessions.get_mut(&id) else { return };
            let out = match s.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    warn!(?id, "session failed: {e}");
                    self.fail_session(id);
                    return;
                }
            };
            match out {
                Output::Timeout(t) if t <= now && !timed => {
                    timed = true;
                    if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                        debug!(?id, "session timeout error: {e}");
                    }
                }
                Output::Timeout(t) => {
                    s.next_timeout = Some(t);
                    if s.scheduled.is_none_or(|at| t < at) {
                        s.scheduled = Some(t);
                        self.timers.push(Reverse((t, id)));
                    }
                    self.polled.push(id);
                    return;
                }
                Output::Transmit(t) => self.batch.push(t, &self.send, &self.stats),
                Output::Event(e) => self.handle_event(id, e),
            }
        }
    }

    fn handle_event(&mut self, id: SessionId, e: Event) {
        let now = Instant::now();
        match e {
            Event::Connected => {
                let Some(s) = self.sessions.get_mut(&id) else { return };
                let remote = s.last_source.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                info!(?id, %remote, "session connected");
                s.connected = true;
                (s.events)(SessionEvent::Connected { remote });
                for (mid, add) in std::mem::take(&mut s.awaiting_connect) {
                    self.create_consumer(now, id, mid, add);
                }
                self.drain_router(None);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                info!(?id, "session ICE disconnected");
                self.fail_session(id);
            }
            Event::MediaAdded(m) => {
                let receives = matches!(m.direction, Direction::RecvOnly | Direction::SendRecv);
                let publisher = self.sessions.get(&id).map(|s| s.publisher).unwrap_or(false);
                if receives && publisher {
                    self.add_producer(now, id, m.mid, m.kind);
                }
            }
            Event::MediaChanged(m) => {
                // A publisher that stops sending on a mid ends that producer.
                let receives = matches!(m.direction, Direction::RecvOnly | Direction::SendRecv);
                if !receives {
                    if let Some(pid) = self.sessions.get_mut(&id).and_then(|s| s.producers_by_mid.get(&m.mid).copied())
                    {
                        if let Some(key) = self.producers.get(&pid).map(|p| p.key) {
                            if let Some(s) = self.sessions.get_mut(&id) {
                                (s.events)(SessionEvent::ProducerRemoved { producer: key });
                            }
                        }
                        self.end_producer(pid);
                    }
                }
            }
            Event::RtpPacket(p) => self.forward(now, id, p),
            Event::MediaEgressStats(e) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    let last = s.egress_nacks.entry(e.mid).or_insert(0);
                    let delta = e.nacks.saturating_sub(*last);
                    *last = e.nacks;
                    self.stats.nacks_received.fetch_add(delta, Ordering::Relaxed);
                }
            }
            Event::KeyframeRequest(r) => {
                let cid = self.sessions.get(&id).and_then(|s| s.consumers_by_mid.get(&r.mid)).copied();
                if let Some(cid) = cid {
                    let kind = match r.kind {
                        KeyframeRequestKind::Fir => KeyframeKind::Fir,
                        _ => KeyframeKind::Pli,
                    };
                    self.router.handle_keyframe_request(now, cid, kind);
                    self.drain_router(None);
                }
            }
            Event::Closed => self.fail_session(id),
            _ => {}
        }
    }

    fn add_producer(&mut self, now: Instant, id: SessionId, mid: Mid, kind: MediaKind) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.producers_by_mid.contains_key(&mid) {
            return;
        }
        let remote_pts: Vec<Pt> = s.rtc.media(mid).map(|m| m.remote_pts().to_vec()).unwrap_or_default();
        let params = codec::params_for(s.rtc.codec_config().params(), &remote_pts);
        let Some(first) = params.first() else {
            warn!(?id, %mid, "publisher m-line without a codec we forward");
            return;
        };
        let specs: Vec<CodecSpec> = params.iter().map(|p| p.spec()).collect();
        let clock_rate = first.spec().clock_rate.get();
        let codec_name = codec::codec_name(first.spec().codec);
        let payload_types = params.iter().map(|p| (*p.pt(), codec::core_codec(p.spec().codec))).collect();
        let fkind =
            if kind == MediaKind::Audio { dais_forward::MediaKind::Audio } else { dais_forward::MediaKind::Video };
        let spec = ProducerSpec { kind: fkind, clock_rate, payload_types };
        let pid = self.router.add_producer(now, spec.clone());
        let key = ProducerKey(self.shared.next_key.fetch_add(1, Ordering::Relaxed));
        s.producers_by_mid.insert(mid, pid);
        // Mirrors exist before anyone hears of the producer, so no subscription can arrive first.
        let home = self.index;
        self.shared.broadcast(home, || {
            Command::MirrorAdd(Mirror { producer: key, home, spec: spec.clone(), specs: specs.clone(), clock_rate })
        });
        self.producers.insert(pid, ProducerRec { origin: Origin::Local { session: id, mid }, key, specs, clock_rate });
        self.keys.insert(key, pid);
        let kind = if kind == MediaKind::Audio { Kind::Audio } else { Kind::Video };
        info!(?id, %mid, ?key, codec = %codec_name, "producer added");
        (s.events)(SessionEvent::ProducerAdded { producer: key, kind, codec: codec_name });
    }

    fn end_producer(&mut self, pid: ProducerId) {
        let Some(rec) = self.producers.remove(&pid) else { return };
        self.keys.remove(&rec.key);
        if let Origin::Local { session, mid } = rec.origin {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.producers_by_mid.remove(&mid);
                s.producers_by_ssrc.retain(|_, p| *p != pid);
            }
            let key = rec.key;
            self.shared.broadcast(self.index, || Command::MirrorEnd { producer: key });
        }
        for cid in self.router.remove_producer(pid) {
            let Some(c) = self.consumers.remove(&cid) else { continue };
            if let Some(cs) = self.sessions.get_mut(&c.session) {
                cs.consumers_by_mid.remove(&c.mid);
                cs.queued_stops.push(c.mid);
                cs.wants_negotiation = true;
            }
            self.mark(c.session);
        }
    }

    /// The session lost its connection on its own. Tell the owner and stop feeding it, but keep its
    /// producers until the owner's [`Command::Close`]: the owner announces the unpublish first, so
    /// other participants never see the renegotiation before the news that explains it. A failed
    /// session that is not closed within [`FAILED_GRACE`] is closed anyway.
    fn fail_session(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.failed_at.is_some() {
            return;
        }
        s.failed_at = Some(Instant::now());
        s.next_timeout = None;
        s.rtc.disconnect();
        (s.events)(SessionEvent::Disconnected);
        info!(?id, "session failed; waiting for its owner to close it");
    }

    fn set_publisher(&mut self, id: SessionId, publisher: bool) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.publisher == publisher {
            return;
        }
        s.publisher = publisher;
        if publisher {
            // A promoted session already negotiated; server offers need not wait for its next offer
            // (a collision is resolved by the offer_collision rule).
            s.client_offered = true;
            info!(?id, "session may publish now");
            return;
        }
        let owned: Vec<(Mid, ProducerId)> = s.producers_by_mid.iter().map(|(m, p)| (*m, *p)).collect();
        for (mid, pid) in owned {
            if let Some(key) = self.producers.get(&pid).map(|p| p.key) {
                if let Some(s) = self.sessions.get_mut(&id) {
                    (s.events)(SessionEvent::ProducerRemoved { producer: key });
                }
            }
            self.end_producer(pid);
            if let Some(s) = self.sessions.get_mut(&id) {
                s.queued_stops.push(mid);
                s.wants_negotiation = true;
            }
        }
        info!(?id, "session may no longer publish; its producers ended");
        self.mark(id);
    }

    fn close_session(&mut self, id: SessionId, notify: bool) {
        let Some(mut s) = self.sessions.remove(&id) else { return };
        s.rtc.disconnect();
        self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        for a in &s.addrs {
            if self.addr_map.get(a) == Some(&id) {
                self.addr_map.remove(a);
            }
        }
        if self.shared.peers.len() > 1 {
            let mut claims = self.shared.claims();
            for a in &s.addrs {
                if claims.get(a) == Some(&self.index) {
                    claims.remove(a);
                }
            }
        }
        for (_, cid) in s.consumers_by_mid.drain() {
            self.router.remove_consumer(cid);
            self.consumers.remove(&cid);
        }
        let pids: Vec<ProducerId> = s.producers_by_mid.values().copied().collect();
        for pid in pids {
            self.end_producer(pid);
        }
        if notify {
            (s.events)(SessionEvent::Disconnected);
        }
        info!(?id, "session closed");
    }

    fn forward(&mut self, now: Instant, id: SessionId, p: RtpPacket) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let ssrc = p.header.ssrc;
        let pid = match s.producers_by_ssrc.get(&ssrc) {
            Some(pid) => *pid,
            None => {
                let mid = s.rtc.direct_api().stream_rx(&ssrc).map(|rx| rx.mid());
                let Some(pid) = mid.and_then(|m| s.producers_by_mid.get(&m)).copied() else {
                    self.stats.rtp_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                s.producers_by_ssrc.insert(ssrc, pid);
                pid
            }
        };
        let Some(rec) = self.producers.get(&pid) else { return };
        let (key, clock_rate) = (rec.key, rec.clock_rate);
        let wallclock = capture_wallclock(now, &p, clock_rate);
        let ext = egress_extensions(&p.header.ext_vals);
        let arrival = self.handed_arrival.unwrap_or(p.timestamp);
        self.stats.rtp_in.fetch_add(1, Ordering::Relaxed);
        let input = RtpIn {
            ssrc: *ssrc,
            seq: p.header.sequence_number,
            timestamp: p.header.timestamp,
            payload_type: *p.header.payload_type,
            marker: p.header.marker,
            payload: Bytes::from_owner(p.payload.clone()),
        };
        let ingress = Ingress { payload: p.payload, ext, wallclock };
        let others = self.shared.peers.len() - 1;
        // Packets the home router drops for what they are (paused producer, unknown payload type, ...)
        // are not relayed: each such drop is counted once, here.
        if others > 0 && self.router.admits(now, pid, &input).is_ok() {
            // The other workers start on their viewers while this one serves its own.
            let relayed = Arc::new(Relayed { producer: key, rtp: input.clone(), ingress: ingress.clone(), arrival });
            for to in (0..=others).filter(|w| *w != self.index) {
                if self.shared.send_media(to, Command::Relay(relayed.clone())) {
                    self.stats.packets_relayed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.route(now, pid, input, ingress, arrival);
    }

    /// A packet another worker relayed: fan it out to this worker's consumers of the mirror.
    fn relayed(&mut self, now: Instant, r: &Relayed) {
        let Some(pid) = self.keys.get(&r.producer).copied() else { return };
        self.route(now, pid, r.rtp.clone(), r.ingress.clone(), r.arrival);
    }

    /// Run one packet through this worker's router and write its copies to the consumers' sessions.
    fn route(&mut self, now: Instant, pid: ProducerId, input: RtpIn, ingress: Ingress, arrival: Instant) {
        let dropped_before = self.router.drops().total();
        let out_before = self.router.stats().packets_out;
        self.router.handle_rtp(now, pid, input);
        self.drain_router(Some(&ingress));
        if self.router.stats().packets_out > out_before {
            self.forwarded_arrivals.push(arrival);
        }
        let dropped = self.router.drops().total() - dropped_before;
        if dropped > 0 {
            self.stats.rtp_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    fn drain_router(&mut self, ingress: Option<&Ingress>) {
        while let Some(out) = self.router.poll_output() {
            match out {
                FwdOutput::Rtp(o) => {
                    let Some(c) = self.consumers.get(&o.consumer) else { continue };
                    let (session, ssrc, nackable) = (c.session, c.ssrc, c.kind == Kind::Video);
                    let Some(s) = self.sessions.get_mut(&session) else { continue };
                    let mut api = s.rtc.direct_api();
                    let Some(tx) = api.stream_tx(&ssrc) else { continue };
                    let (payload, ext, wallclock) = match ingress {
                        Some(i) => (i.payload.clone(), i.ext.clone(), i.wallclock),
                        None => (Arc::from(&o.payload[..]), ExtensionValues::default(), Instant::now()),
                    };
                    let write =
                        RtpWrite::new(Pt::from(o.payload_type), SeqNo::from(o.seq), o.timestamp, wallclock, payload)
                            .marker(o.marker)
                            .ext_vals(ext)
                            .nackable(nackable);
                    tx.write_rtp(write);
                    self.stats.rtp_forwarded.fetch_add(1, Ordering::Relaxed);
                    self.mark(session);
                }
                FwdOutput::KeyframeRequest { producer, kind } => {
                    let Some(rec) = self.producers.get(&producer) else { continue };
                    let (session, mid) = match rec.origin {
                        Origin::Local { session, mid } => (session, mid),
                        Origin::Mirror { home } => {
                            // The home worker's router throttles requests from every worker together.
                            if let Some(tx) = self.shared.peers.get(home) {
                                let _ = tx.send(Command::KeyframeWanted { producer: rec.key, kind });
                            }
                            continue;
                        }
                    };
                    let Some(s) = self.sessions.get_mut(&session) else { continue };
                    let kind = match kind {
                        KeyframeKind::Fir => KeyframeRequestKind::Fir,
                        _ => KeyframeRequestKind::Pli,
                    };
                    if let Some(rx) = s.rtc.direct_api().stream_rx_by_mid(mid, None) {
                        rx.request_keyframe(kind);
                        self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                        debug!(?session, %mid, ?kind, "keyframe requested from publisher");
                    } else {
                        debug!(?session, %mid, "no receive stream yet for keyframe request");
                    }
                    self.mark(session);
                }
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
    }
}

/// Receive on worker 0's socket; other workers have none and wait forever here.
async fn recv_from(socket: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// str0m's standard extension map (Chrome's ids), without transport-wide sequence numbers (id 3).
fn viewer_extensions() -> ExtensionMap {
    let mut exts = ExtensionMap::empty();
    exts.set(1, Extension::AudioLevel);
    exts.set(2, Extension::AbsoluteSendTime);
    exts.set(4, Extension::RtpMid);
    exts.set(10, Extension::RtpStreamId);
    exts.set(11, Extension::RepairedRtpStreamId);
    exts.set(13, Extension::VideoOrientation);
    exts
}

/// Header extensions that describe the media itself and so travel with it. Transport extensions
/// (mid, rid, transport-cc, abs-send-time) belong to each leg and are written by str0m.
fn egress_extensions(ext: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: ext.audio_level,
        voice_activity: ext.voice_activity,
        video_orientation: ext.video_orientation,
        video_content_type: ext.video_content_type,
        ..Default::default()
    }
}

/// The publisher's capture time of a packet, mapped onto our clock through its latest sender report,
/// so that sender reports to viewers keep its audio and video in sync. Falls back to arrival time.
fn capture_wallclock(now: Instant, p: &RtpPacket, clock_rate: u32) -> Instant {
    let Some(si) = &p.last_sender_info else { return p.timestamp };
    if clock_rate == 0 {
        return p.timestamp;
    }
    let sr_rtp = si.rtp_time.numer() as u32;
    let delta_ticks = p.header.timestamp.wrapping_sub(sr_rtp) as i32 as i64;
    let delta = Duration::from_micros((delta_ticks.unsigned_abs() * 1_000_000) / clock_rate as u64);
    let capture = if delta_ticks >= 0 { si.ntp_time.checked_add(delta) } else { si.ntp_time.checked_sub(delta) };
    let Some(capture) = capture else { return p.timestamp };
    let sys_now = SystemTime::now();
    let limit = Duration::from_secs(10);
    match sys_now.duration_since(capture) {
        Ok(ago) if ago <= limit => now.checked_sub(ago).unwrap_or(p.timestamp),
        Err(ahead) if ahead.duration() <= limit => now + ahead.duration(),
        _ => p.timestamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_backlog_drops_and_counts_media_messages() {
        let (tx0, _rx0) = mpsc::unbounded_channel();
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let stats = Arc::new(MediaStats::default());
        let shared = Shared::new(vec![tx0, tx1], stats.clone(), Vec::new());
        let datagram = || Command::Datagram {
            src: SocketAddr::from(([127, 0, 0, 1], 9)),
            data: vec![0; 4],
            at: Instant::now(),
            tried: 0,
        };
        for _ in 0..MAX_BACKLOG {
            assert!(shared.send_media(1, datagram()));
        }
        assert!(!shared.send_media(1, datagram()), "the 8,193rd message is refused");
        assert_eq!(MediaStats::get(&stats.backlog_drops), 1);
        assert!(shared.send_media(0, datagram()), "another worker's backlog is its own");
        assert!(rx1.try_recv().is_ok());
        shared.media_handled(1);
        assert!(shared.send_media(1, datagram()), "room again once one was handled");
        assert!(!shared.send_media(7, datagram()), "no such worker");
        assert_eq!(MediaStats::get(&stats.backlog_drops), 1);
    }
}
