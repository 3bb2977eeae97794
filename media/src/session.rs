//! One participant's WebRTC session, sans-IO: a str0m `Rtc` (ICE-lite, RTP mode), its negotiation, its
//! liveness deadlines, and the tables from mids and SSRCs to the router's producers and consumers.
//!
//! Push in, poll out, told the time, like the `Rtc` it wraps. Input: [`Session::handle_receive`] (a
//! datagram the endpoint routed here), [`Session::handle_timeout`], the client's offers, answers and
//! candidates, consumers to offer or stop, RTP to send ([`Session::send_rtp`]) and keyframe requests for
//! the publisher. Output: [`Session::poll_output`] until `None`, then [`Session::poll_timeout`]. The
//! session never reads a clock and owns no socket, so the tests drive it in memory against a client
//! `Rtc`.
//!
//! Invariants kept here:
//! - In RTP mode str0m holds only one received packet until the next poll. A datagram fed before the
//!   outputs of the previous one were polled first has those outputs set aside, so nothing is lost
//!   whatever the caller does (the worker polls after every datagram, so this never happens there).
//! - A mid maps to a consumer only once its m-line was accepted, ICE and DTLS are up and the router
//!   holds the consumer: accepted consumer m-lines wait for the connection, so the keyframe that opens
//!   a consumer is never spent on a session that cannot send it yet.
//! - The connect timeout runs [`CONNECT_TIMEOUT`] from the first completed SDP exchange, whatever the
//!   answer carries. ICE's own "disconnected" before the first connection is no failure: an ICE-lite
//!   agent prunes the answer's candidates after 15 s without a check, and a later check still connects.
//! - A connected session fails only once it has heard nothing from its client for [`CLIENT_SILENCE`],
//!   whatever str0m's ICE-lite agent says meanwhile (it calls the connection "disconnected" 15 s after
//!   the last check, and "checking" during an ICE restart): checks that come back, or an ICE restart
//!   (a client offer with new credentials), carry on with the same DTLS, producers and consumers.
//! - The media path moves only on proof: the vendored str0m follows a new ICE nomination only once
//!   media from that address decrypts (`set_latch_on_authenticated`), so a check forged with the
//!   session's credentials from another address gets its STUN response and nothing else.
//! - New local ICE credentials (answering a client's ICE restart) are reported as
//!   [`SessionOutput::Credentials`] before anything else, so the endpoint's route follows them.
//! - A failed session reports [`SessionEvent::Disconnected`] once, then stays inert; [`FAILED_GRACE`]
//!   later it reports [`SessionOutput::Expired`], so an owner that never closes it cannot leak it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dais_forward::{Codec, ConsumerId, KeyframeKind, LayerId, ProducerId, RtpIn, RtpOut};
use str0m::bwe::BweKind;
use str0m::change::SdpOffer;
use str0m::format::{CodecSpec, PayloadParams};
use str0m::ice::IceCreds;
use str0m::media::{Direction, KeyframeRequestKind, Mid, Pt, Rid, Simulcast};

use str0m::net::{DatagramRecv, Receive, TcpType, Transmit};
use str0m::rtp::{Extension, ExtensionMap, RtpPacket, RtpWrite, SeqNo, Ssrc, Vp8Descriptor};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tracing::{debug, info, warn};

use crate::endpoint::{Addr, Transport};
use crate::lines::PlayerLines;
use crate::negotiation::{Negotiation, PendingConsumer};
use crate::{codec, AnswerError, Kind, OfferError, ProducerKey, SessionEvent, SessionId, SessionMode, CONNECT_TIMEOUT};

/// How long a failed session waits for its owner's close before it reports [`SessionOutput::Expired`].
pub(crate) const FAILED_GRACE: Duration = Duration::from_secs(10);

/// How long a connected session waits for a datagram from its client (checks come every few seconds,
/// RTCP every second or so) before it fails. Past the signaling grace period, so a viewer whose
/// network is gone for longer comes back as a new participant; long enough that an ICE restart after
/// a blip of 20 s finds its session still there.
pub(crate) const CLIENT_SILENCE: Duration = Duration::from_secs(25);

/// Trickled remote candidates kept per session; more are ignored.
const MAX_REMOTE_CANDIDATES: usize = 32;

/// What a session asks of its driver.
#[derive(Debug)]
pub(crate) enum SessionOutput {
    /// Send this datagram.
    Transmit(Transmit),
    /// Tell the owner.
    Event(SessionEvent),
    /// The client started sending a stream on `mid`: create its producer, then
    /// [`Session::bind_producer`].
    Publish(Published),
    /// The client stopped sending this producer's stream.
    Unpublish(ProducerId),
    /// An RTP packet of one of this session's producers.
    Rtp(ProducerId, RtpIn),
    /// An RTP packet no producer of this session owns (dropped).
    UnroutedRtp,
    /// A consumer m-line was accepted and the session is connected: create its router consumer, then
    /// [`Session::bind_consumer`] (or [`Session::refuse_consumer`]).
    ConsumerReady(ReadyConsumer),
    /// The viewer asked for a keyframe on this consumer.
    KeyframeRequest(ConsumerId, KeyframeKind),
    /// The viewer reported these packets of this consumer missing (its own extended sequence numbers).
    Nack(ConsumerId, Vec<u64>),
    /// The client's estimate of its downlink (REMB), bits per second.
    Estimate(u64),
    /// The fraction of a consumer's packets the client's receiver reports said were lost.
    ReceiverLoss(ConsumerId, f32),
    /// The session failed [`FAILED_GRACE`] ago and was not closed: close it now.
    Expired,
    /// The session's local ICE credentials changed (it answered an ICE restart): route the new ufrag
    /// here; the old one stops working.
    Credentials(IceCreds),
}

/// A stream the client publishes, as its m-line negotiated it.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub mid: Mid,
    pub kind: Kind,
    /// Every negotiated codec, in the session's preference order.
    pub specs: Vec<CodecSpec>,
    /// Payload type to core codec.
    pub payload_types: Vec<(u8, Codec)>,
    pub clock_rate: u32,
    /// Lower-case name of the first codec (the one a browser sends with).
    pub codec_name: String,
    /// The simulcast layers' rids, lowest first; empty without simulcast.
    pub rids: Vec<Rid>,
}

/// A consumer m-line ready for its router consumer.
#[derive(Debug, Clone)]
pub(crate) struct ReadyConsumer {
    pub mid: Mid,
    pub consumer: PendingConsumer,
    /// The m-line's send SSRC.
    pub ssrc: u32,
    /// Core codec to payload type, in the producer's codec order, compatible codecs only.
    pub payload_types: Vec<(Codec, u8)>,
}

/// What every session of a media plane is built with.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    /// UDP host candidates advertised in every SDP.
    pub candidates: Arc<[SocketAddr]>,
    /// TCP passive host candidates (RFC 6544), empty when ICE over TCP is off. Their type preference
    /// is below UDP's, so clients use TCP only where UDP does not get through.
    pub tcp_candidates: Arc<[SocketAddr]>,
    /// One reading of both clocks, taken by the driver: the session maps publishers' NTP capture times
    /// onto its monotonic time through it, and reads no clock itself.
    pub wall_anchor: (Instant, SystemTime),
    /// Most streams a publisher may send.
    pub stream_limits: crate::StreamLimits,
}

/// One step of str0m's output.
enum Step {
    /// Something for the driver.
    Out(SessionOutput),
    /// Handled inside; poll again.
    Again,
    /// str0m waits for time (or is dead).
    Idle,
}

struct ProducerEntry {
    id: ProducerId,
    clock_rate: u32,
    /// Layer `i` is `rids[i]`; empty without simulcast.
    rids: Vec<Rid>,
}

/// One participant's session. See the module docs.
pub(crate) struct Session {
    id: SessionId,
    rtc: Rtc,
    config: SessionConfig,
    creds: IceCreds,
    negotiation: Negotiation,
    connected: bool,
    /// When the client was last heard from (any datagram routed here).
    last_heard: Instant,
    /// `Rtc::refused_path_moves` at the last `take_refused_moves`.
    refused_moves_seen: u64,
    failed_at: Option<Instant>,
    expired: bool,
    /// str0m's next timeout, from the last poll.
    rtc_timeout: Option<Instant>,
    /// The last poll fed str0m the timeout it asked for (it stamps written RTP only when time moves).
    fed_timeout: bool,
    /// Outputs set aside when an input arrived before the previous one's were polled.
    backlog: VecDeque<SessionOutput>,
    producers: HashMap<Mid, ProducerEntry>,
    producers_by_ssrc: HashMap<Ssrc, (Mid, LayerId)>,
    consumers: HashMap<Mid, ConsumerId>,
    awaiting_connect: Vec<(Mid, PendingConsumer)>,
    /// A player's m-lines (`None` for other sessions, whose consumers come in server offers).
    player: Option<PlayerLines>,
    remote_candidates: usize,
    last_source: Option<SocketAddr>,
    unpolled: bool,
}

impl Session {
    /// A new session; `creds` are its local ICE credentials (the endpoint routes by their ufrag).
    pub fn new(now: Instant, id: SessionId, mode: SessionMode, creds: IceCreds, config: SessionConfig) -> Self {
        let publisher = mode.publisher();
        let rtc = build_rtc(now, &creds, &config, None, publisher);
        Session {
            id,
            rtc,
            config,
            creds,
            negotiation: Negotiation::new(now, publisher),
            connected: false,
            last_heard: now,
            refused_moves_seen: 0,
            failed_at: None,
            expired: false,
            rtc_timeout: None,
            fed_timeout: false,
            backlog: VecDeque::new(),
            producers: HashMap::new(),
            producers_by_ssrc: HashMap::new(),
            consumers: HashMap::new(),
            awaiting_connect: Vec::new(),
            player: (mode == SessionMode::Player).then(PlayerLines::default),
            remote_candidates: 0,
            last_source: None,
            unpolled: true,
        }
    }

    /// ICE nominations that did not move the media path since the last call.
    pub fn take_refused_moves(&mut self) -> u64 {
        let now = self.rtc.refused_path_moves();
        let new = now.saturating_sub(self.refused_moves_seen);
        self.refused_moves_seen = now;
        new
    }

    /// Whether the session failed (and now only waits to be closed).
    pub fn failed(&self) -> bool {
        self.failed_at.is_some()
    }

    /// Whether ICE and DTLS are up.
    #[cfg(test)]
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// The producers this session publishes.
    pub fn producers(&self) -> impl Iterator<Item = ProducerId> + '_ {
        self.producers.values().map(|p| p.id)
    }

    /// The consumers this session sends.
    pub fn consumers(&self) -> impl Iterator<Item = ConsumerId> + '_ {
        self.consumers.values().copied()
    }

    /// Feed one datagram. Poll before the next.
    pub fn handle_receive(&mut self, now: Instant, from: Addr, destination: SocketAddr, bytes: &[u8]) {
        if self.failed() {
            return;
        }
        if self.unpolled {
            self.set_aside(now);
        }
        let Ok(contents) = DatagramRecv::try_from(bytes) else { return };
        let proto = match from.transport {
            Transport::Udp => str0m::net::Protocol::Udp,
            Transport::Tcp => str0m::net::Protocol::Tcp,
        };
        self.last_source = Some(from.addr);
        self.last_heard = now;
        let input = Input::Receive(now, Receive { proto, source: from.addr, destination, contents });
        if let Err(e) = self.rtc.handle_input(input) {
            debug!(id = ?self.id, "session input error: {e}");
        }
        self.unpolled = true;
    }

    /// Move time to `now`: str0m's own timers, and the session's deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.failed_at {
            self.expired |= now.saturating_duration_since(t) >= FAILED_GRACE;
            return;
        }
        let stuck =
            self.negotiation.negotiated_at().is_some_and(|t| now.saturating_duration_since(t) >= CONNECT_TIMEOUT);
        if stuck && !self.connected {
            info!(id = ?self.id, "session did not connect in time");
            self.fail(now);
            self.unpolled = true;
            return;
        }
        if self.connected && now.saturating_duration_since(self.last_heard) >= CLIENT_SILENCE {
            info!(id = ?self.id, "nothing from the client for too long");
            self.fail(now);
            self.unpolled = true;
            return;
        }
        if self.rtc_timeout.is_some_and(|t| t <= now) {
            self.rtc_timeout = None;
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                debug!(id = ?self.id, "session timeout error: {e}");
            }
        }
        self.unpolled = true;
    }

    /// The next instant [`Session::handle_timeout`] has work, once the outputs are polled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(t) = self.failed_at {
            return (!self.expired).then_some(t + FAILED_GRACE);
        }
        let connect =
            (!self.connected).then(|| self.negotiation.negotiated_at().map(|t| t + CONNECT_TIMEOUT)).flatten();
        let recovery = self.connected.then_some(self.last_heard + CLIENT_SILENCE);
        [self.rtc_timeout, connect, recovery, self.negotiation.grace_deadline()].into_iter().flatten().min()
    }

    /// The next output; `live` tells whether a producer still exists (queued consumers of ended
    /// producers are dropped before an offer).
    pub fn poll_output(&mut self, now: Instant, live: &dyn Fn(ProducerKey) -> bool) -> Option<SessionOutput> {
        if let Some(o) = self.backlog.pop_front() {
            return Some(o);
        }
        if self.expired {
            self.expired = false;
            return Some(SessionOutput::Expired);
        }
        if self.failed() {
            self.unpolled = false;
            return None;
        }
        loop {
            if let Some(o) = self.backlog.pop_front() {
                return Some(o);
            }
            match self.poll_rtc(now) {
                Step::Out(o) => return Some(o),
                Step::Again => {}
                Step::Idle => break,
            }
        }
        self.unpolled = false;
        self.fed_timeout = false;
        let sdp = self.negotiation.poll_offer(&mut self.rtc, now, live)?;
        self.unpolled = true;
        Some(SessionOutput::Event(SessionEvent::Offer { sdp }))
    }

    /// One step of str0m's output.
    fn poll_rtc(&mut self, now: Instant) -> Step {
        if !self.rtc.is_alive() {
            return Step::Idle;
        }
        let out = match self.rtc.poll_output() {
            Ok(o) => o,
            Err(e) => {
                warn!(id = ?self.id, "session failed: {e}");
                self.fail(now);
                return Step::Idle;
            }
        };
        match out {
            Output::Timeout(t) if t <= now && !self.fed_timeout => {
                // str0m hands over written RTP only once time has moved: feed the timeout it asks for
                // once per poll, so the packet leaves in this pass.
                self.fed_timeout = true;
                if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                    debug!(id = ?self.id, "session timeout error: {e}");
                }
                Step::Again
            }
            Output::Timeout(t) => {
                self.rtc_timeout = Some(t);
                Step::Idle
            }
            Output::Transmit(t) => Step::Out(SessionOutput::Transmit(t)),
            Output::Event(e) => self.handle_event(now, e).map_or(Step::Again, Step::Out),
        }
    }

    /// Poll everything an earlier input produced into the backlog.
    fn set_aside(&mut self, now: Instant) {
        loop {
            match self.poll_rtc(now) {
                Step::Out(o) => self.backlog.push_back(o),
                Step::Again => {}
                Step::Idle => break,
            }
        }
        self.fed_timeout = false;
        self.unpolled = false;
    }

    fn handle_event(&mut self, now: Instant, e: Event) -> Option<SessionOutput> {
        match e {
            Event::Connected => {
                self.connected = true;
                let remote = self.last_source.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                info!(id = ?self.id, %remote, "session connected");
                for (mid, add) in std::mem::take(&mut self.awaiting_connect) {
                    let ready = self.ready(mid, add);
                    self.backlog.extend(ready);
                }
                Some(SessionOutput::Event(SessionEvent::Connected { remote }))
            }
            Event::IceConnectionStateChange(state) if self.connected => {
                info!(id = ?self.id, ?state, "session ICE state");
                None
            }
            Event::MediaAdded(m) if self.player.is_some() => {
                let sends = matches!(m.direction, Direction::SendOnly | Direction::SendRecv);
                let carried = self.player.as_mut().filter(|_| sends)?.offered(m.mid, codec::kind_of(m.kind));
                if let Some((mid, consumer)) = carried {
                    self.carry(mid, consumer);
                }
                None
            }
            Event::MediaAdded(m) => {
                let receives = matches!(m.direction, Direction::RecvOnly | Direction::SendRecv);
                let rids = layer_rids(m.simulcast.as_ref());
                (receives && self.negotiation.publisher()).then(|| self.published(m.mid, m.kind, rids)).flatten()
            }
            Event::MediaChanged(m) => {
                let receives = matches!(m.direction, Direction::RecvOnly | Direction::SendRecv);
                if receives {
                    return None;
                }
                let p = self.producers.remove(&m.mid)?;
                self.producers_by_ssrc.retain(|_, (mid, _)| *mid != m.mid);
                Some(SessionOutput::Unpublish(p.id))
            }
            Event::RtpPacket(p) => Some(self.rtp(now, p)),
            Event::KeyframeRequest(r) => {
                let kind = match r.kind {
                    KeyframeRequestKind::Fir => KeyframeKind::Fir,
                    _ => KeyframeKind::Pli,
                };
                Some(SessionOutput::KeyframeRequest(*self.consumers.get(&r.mid)?, kind))
            }
            Event::NackRequest(r) => {
                let seqs = r.seq_nos.iter().map(|s| **s).collect();
                Some(SessionOutput::Nack(*self.consumers.get(&r.mid)?, seqs))
            }
            Event::EgressBitrateEstimate(BweKind::Remb { estimate, .. }) => {
                Some(SessionOutput::Estimate(estimate.as_u64()))
            }
            Event::MediaEgressStats(s) => {
                let loss = s.loss?;
                Some(SessionOutput::ReceiverLoss(*self.consumers.get(&s.mid)?, loss))
            }
            Event::Closed => {
                self.fail(now);
                None
            }
            _ => None,
        }
    }

    /// The session lost its connection on its own: tell the owner once (next in the output), and go
    /// inert.
    fn fail(&mut self, now: Instant) {
        if self.failed_at.is_some() {
            return;
        }
        self.failed_at = Some(now);
        self.rtc.disconnect();
        self.backlog.clear();
        self.backlog.push_back(SessionOutput::Event(SessionEvent::Disconnected));
        info!(id = ?self.id, "session failed; waiting for its owner to close it");
    }

    /// A receiving m-line of a publisher: what its producer needs.
    fn published(&mut self, mid: Mid, kind: str0m::media::MediaKind, rids: Vec<Rid>) -> Option<SessionOutput> {
        if self.producers.contains_key(&mid) {
            return None;
        }
        let remote_pts: Vec<Pt> = self.rtc.media(mid).map(|m| m.remote_pts().to_vec()).unwrap_or_default();
        let params = codec::params_for(self.rtc.codec_config().params(), &remote_pts);
        let Some(first) = params.first() else {
            warn!(id = ?self.id, %mid, "publisher m-line without a codec we forward");
            return None;
        };
        let published = Published {
            mid,
            kind: codec::kind_of(kind),
            specs: params.iter().map(|p| p.spec()).collect(),
            payload_types: params.iter().map(|p| (*p.pt(), codec::core_codec(p.spec().codec))).collect(),
            clock_rate: first.spec().clock_rate.get(),
            codec_name: codec::codec_name(first.spec().codec),
            rids: if kind.is_video() { rids } else { Vec::new() },
        };
        Some(SessionOutput::Publish(published))
    }

    /// The router produced `id` for the stream published on `mid`.
    pub fn bind_producer(&mut self, mid: Mid, id: ProducerId, clock_rate: u32, rids: Vec<Rid>) {
        self.producers.insert(mid, ProducerEntry { id, clock_rate, rids });
    }

    /// An RTP packet from the client, with the producer it belongs to.
    fn rtp(&mut self, now: Instant, p: RtpPacket) -> SessionOutput {
        let ssrc = p.header.ssrc;
        let route = match self.producers_by_ssrc.get(&ssrc) {
            Some(route) => Some(*route),
            None => {
                let rx = self.rtc.direct_api().stream_rx(&ssrc).map(|rx| (rx.mid(), rx.rid()));
                let route = rx.and_then(|(mid, rid)| {
                    let entry = self.producers.get(&mid)?;
                    // A layer is found by the rid its stream was mapped with; a stream whose rid the
                    // offer did not list (or any stream without simulcast) is layer 0.
                    let layer = rid.and_then(|r| entry.rids.iter().position(|x| *x == r)).unwrap_or(0);
                    Some((mid, LayerId(u8::try_from(layer).unwrap_or(0))))
                });
                if let Some(route) = route {
                    self.producers_by_ssrc.insert(ssrc, route);
                }
                route
            }
        };
        let Some((entry, layer)) = route.and_then(|(m, l)| Some((self.producers.get(&m)?, l))) else {
            return SessionOutput::UnroutedRtp;
        };
        let packet = RtpIn {
            layer,
            ssrc: *ssrc,
            seq: p.header.sequence_number,
            timestamp: p.header.timestamp,
            payload_type: *p.header.payload_type,
            marker: p.header.marker,
            ext: codec::media_ext(&p.header.ext_vals),
            wallclock: capture_wallclock(now, self.config.wall_anchor, &p, entry.clock_rate),
            payload: p.payload,
        };
        SessionOutput::Rtp(entry.id, packet)
    }

    /// Ask the publisher of `producer` for a keyframe of `layer`.
    pub fn request_keyframe(&mut self, producer: ProducerId, layer: LayerId, kind: KeyframeKind) -> bool {
        let Some((mid, rid)) = self
            .producers
            .iter()
            .find(|(_, p)| p.id == producer)
            .map(|(m, p)| (*m, p.rids.get(usize::from(layer.0)).copied()))
        else {
            return false;
        };
        let kind = match kind {
            KeyframeKind::Fir => KeyframeRequestKind::Fir,
            KeyframeKind::Pli => KeyframeRequestKind::Pli,
        };
        let mut api = self.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, rid) else {
            debug!(id = ?self.id, %mid, ?rid, "no receive stream yet for keyframe request");
            return false;
        };
        rx.request_keyframe(kind);
        self.unpolled = true;
        true
    }

    /// Queue a consumer m-line for the next server offer; a player's consumer takes one of its
    /// m-lines instead, when one of its kind is free.
    pub fn subscribe(&mut self, consumer: PendingConsumer) {
        match &mut self.player {
            Some(lines) => {
                if let Some((mid, consumer)) = lines.subscribe(consumer) {
                    self.carry(mid, consumer);
                }
            }
            None => self.negotiation.add(consumer),
        }
        self.unpolled = true;
    }

    /// `mid` (accepted, or a player's line) will carry `consumer`: ready once the session connects.
    fn carry(&mut self, mid: Mid, consumer: PendingConsumer) {
        if self.connected {
            let ready = self.ready(mid, consumer);
            self.backlog.extend(ready);
        } else {
            self.awaiting_connect.push((mid, consumer));
        }
    }

    /// Apply a client offer; returns the answer.
    pub fn client_offer(&mut self, now: Instant, sdp: &str) -> Result<String, OfferError> {
        if self.failed() {
            return Err(OfferError::NoSession);
        }
        self.negotiation.check_client_offer(sdp, self.config.stream_limits)?;
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| OfferError::BadSdp(e.to_string()))?;
        if self.negotiation.fresh() {
            // Nothing was negotiated yet, so the session can be rebuilt around the publisher's codec
            // preference: str0m answers in its own configured order, and browsers send with the
            // answer's first codec. The ICE credentials stay, so the endpoint's route holds.
            let preferred = codec::preferred_video_codec(sdp);
            if preferred.is_some_and(|c| Some(&c) != codec::VIDEO_CODECS.first()) {
                let publisher = self.negotiation.publisher();
                self.rtc = build_rtc(now, &self.creds, &self.config, preferred, publisher);
            }
        }
        let answer = self.negotiation.accept_client_offer(&mut self.rtc, now, offer)?;
        let creds = self.rtc.direct_api().local_ice_credentials();
        if creds != self.creds {
            info!(id = ?self.id, "ICE restart: new local credentials");
            self.creds = creds.clone();
            self.backlog.push_front(SessionOutput::Credentials(creds));
        }
        self.unpolled = true;
        Ok(answer)
    }

    /// Apply the client's answer to the outstanding server offer.
    pub fn client_answer(&mut self, now: Instant, sdp: &str) -> Result<(), AnswerError> {
        if self.failed() {
            return Err(AnswerError::NoSession);
        }
        let result = self.negotiation.client_answer(&mut self.rtc, now, sdp);
        self.unpolled = true;
        let adds = result?;
        // A client starts its checks as soon as it has sent its answer, so its first ones usually
        // arrive before the answer does. str0m queues them until it knows the remote credentials and
        // answers them on its next timeout: give it that now rather than up to 250 ms later.
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            debug!(id = ?self.id, "session timeout error: {e}");
        }
        for (mid, add) in adds {
            self.carry(mid, add);
        }
        Ok(())
    }

    /// What an accepted consumer m-line needs for its router consumer, or a queued stop when it
    /// cannot carry the producer.
    fn ready(&mut self, mid: Mid, consumer: PendingConsumer) -> Option<SessionOutput> {
        let ssrc = self.rtc.direct_api().stream_tx_by_mid(mid, None).map(|tx| {
            if consumer.kind == Kind::Video {
                // Retransmissions come from the producer's packet cache; str0m reports the NACKs.
                tx.set_nack_events(true);
                // The router bounds resends (NACKed packets it holds, and probes within the viewer's
                // estimate): str0m's own cap on the resend ratio would drop the probes.
                tx.set_rtx_cache(1, Duration::from_secs(1), None);
            }
            *tx.ssrc()
        });
        let Some(ssrc) = ssrc else {
            warn!(id = ?self.id, %mid, "no send stream for an accepted consumer m-line; stopping it");
            self.refuse_consumer(mid);
            return None;
        };
        let remote_pts: Vec<Pt> = self.rtc.media(mid).map(|m| m.remote_pts().to_vec()).unwrap_or_default();
        let params = codec::params_for(self.rtc.codec_config().params(), &remote_pts);
        let payload_types = consumer_payload_types(&consumer.specs, &params);
        Some(SessionOutput::ConsumerReady(ReadyConsumer { mid, consumer, ssrc, payload_types }))
    }

    /// The router holds consumer `id` for the m-line `mid`.
    pub fn bind_consumer(&mut self, mid: Mid, id: ConsumerId) {
        self.consumers.insert(mid, id);
    }

    /// The router's consumer `to` took over the m-line of `from` (a hand-over: same SSRC, one
    /// stream for the client).
    pub fn replace_consumer(&mut self, from: ConsumerId, to: ConsumerId) {
        for c in self.consumers.values_mut().filter(|c| **c == from) {
            *c = to;
        }
    }

    /// The m-line `mid` cannot carry its producer (or the producer ended): stop it in the next offer.
    /// A player's line is kept, and carries the next consumer waiting for one of its kind.
    pub fn refuse_consumer(&mut self, mid: Mid) {
        self.consumers.remove(&mid);
        self.unpolled = true;
        let Some(lines) = self.player.as_mut().filter(|l| l.has(mid)) else {
            self.negotiation.stop(mid);
            return;
        };
        if let Some((mid, consumer)) = lines.release(mid) {
            self.carry(mid, consumer);
        }
    }

    /// The consumer `id` ended with its producer: stop its m-line in the next offer.
    pub fn end_consumer(&mut self, id: ConsumerId) {
        if let Some(mid) = self.consumers.iter().find(|(_, c)| **c == id).map(|(m, _)| *m) {
            self.refuse_consumer(mid);
        }
    }

    /// Allow or forbid publishing. Forbidding returns the producers that end; their m-lines are stopped
    /// in the next offer.
    pub fn set_publisher(&mut self, publisher: bool) -> Vec<ProducerId> {
        self.negotiation.set_publisher(publisher);
        if publisher {
            return Vec::new();
        }
        self.producers_by_ssrc.clear();
        let ended: Vec<(Mid, ProducerId)> = self.producers.drain().map(|(m, p)| (m, p.id)).collect();
        for (mid, _) in &ended {
            self.negotiation.stop(*mid);
        }
        self.unpolled = true;
        ended.into_iter().map(|(_, p)| p).collect()
    }

    /// Write one of the router's packets to its consumer's send stream (a retransmission when it is
    /// one). Returns false when the stream is gone.
    pub fn send_rtp(&mut self, out: RtpOut) -> bool {
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx(&Ssrc::from(out.ssrc)) else { return false };
        let patch = out.vp8.and_then(|ids| {
            let mut b = Vp8Descriptor::parse(&out.payload).ok()?.patch().picture_id(ids.picture_id);
            if let Some(t) = ids.tl0_pic_idx {
                b = b.tl0_pic_idx(t);
            }
            b.build().ok()
        });
        let mut write =
            RtpWrite::new(Pt::from(out.payload_type), SeqNo::from(out.seq), out.timestamp, out.wallclock, out.payload)
                .marker(out.marker)
                .ext_vals(codec::ext_values(out.ext));
        if let Some(patch) = patch {
            write = write.vp8_patch(patch);
        }
        if out.resend {
            tx.write_resend(write);
        } else {
            tx.write_rtp(write);
        }
        self.unpolled = true;
        true
    }

    /// A trickled remote candidate (`candidate:...`, a leading `a=` allowed). Unparseable ones and those
    /// past [`MAX_REMOTE_CANDIDATES`] are ignored: ICE-lite learns peers from their checks.
    pub fn add_candidate(&mut self, text: &str) {
        let text = text.trim();
        let text = text.strip_prefix("a=").unwrap_or(text);
        if self.remote_candidates >= MAX_REMOTE_CANDIDATES {
            return;
        }
        match Candidate::from_sdp_string(text) {
            Ok(c) => {
                self.remote_candidates += 1;
                self.rtc.add_remote_candidate(c);
                self.unpolled = true;
            }
            Err(e) => debug!(id = ?self.id, "ignoring remote candidate: {e}"),
        }
    }

    /// End the session (closed by its owner, or at shutdown). It produces nothing afterwards.
    pub fn close(&mut self, now: Instant) {
        self.rtc.disconnect();
        self.failed_at.get_or_insert(now);
        self.expired = false;
        self.backlog.clear();
    }
}

/// The rids of a publisher's simulcast layers, lowest first: by name when they are the usual
/// `q`/`h`/`f` (quarter, half, full) or `l`/`m`/`h` (low, medium, high), else in the order the offer
/// lists them (RFC 8853 leaves the order to the sender; browsers list their `sendEncodings`, which
/// by convention go from low to high). Empty without simulcast.
fn layer_rids(simulcast: Option<&Simulcast>) -> Vec<Rid> {
    let Some(s) = simulcast else { return Vec::new() };
    let mut rids: Vec<Rid> = s.recv.iter().map(|l| l.rid).take(dais_forward::MAX_LAYERS).collect();
    for names in [["q", "h", "f"], ["l", "m", "h"]] {
        let rank = |r: &Rid| names.iter().position(|n| Rid::from(*n) == *r);
        if rids.iter().all(|r| rank(r).is_some()) {
            rids.sort_by_key(|r| rank(r));
            break;
        }
    }
    if rids.len() < 2 {
        rids.clear();
    }
    rids
}

/// For each of a producer's codecs (in its order), the first payload type of the consumer's m-line that
/// is compatible with it; one entry per core codec.
fn consumer_payload_types(specs: &[CodecSpec], params: &[&PayloadParams]) -> Vec<(Codec, u8)> {
    let mut out: Vec<(Codec, u8)> = Vec::new();
    for spec in specs {
        if let Some(p) = params.iter().find(|p| codec::compatible(spec, &p.spec())) {
            let c = codec::core_codec(spec.codec);
            if !out.iter().any(|(known, _)| *known == c) {
                out.push((c, *p.pt()));
            }
        }
    }
    out
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

/// A fresh ICE-lite, RTP-mode `Rtc` with the given local credentials, preferring `first` among the video
/// codecs, so that an answer lists the offerer's favourite first.
///
/// A viewer's session (`publisher` false) does not negotiate transport-wide congestion control: the
/// SFU runs no bandwidth estimation towards viewers, and the feedback a browser sends for it (10 to 20
/// RTCP packets per second per viewer) would cost the worker about a quarter of its time at 1,000
/// viewers. A viewer promoted in place publishes on this session, so its browser estimates its
/// upstream bandwidth from RTCP receiver reports (loss) alone.
pub(crate) fn build_rtc(
    now: Instant,
    creds: &IceCreds,
    config: &SessionConfig,
    first: Option<str0m::format::Codec>,
    publisher: bool,
) -> Rtc {
    let mut cfg = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_latch_on_authenticated(true)
        .set_local_ice_credentials(creds.clone())
        .clear_codecs()
        .enable_opus(true, false);
    if !publisher {
        // Receiver reports' loss feeds the layer choice (Router::handle_receiver_loss).
        cfg = cfg.set_extension_map(viewer_extensions()).set_stats_interval(Some(Duration::from_secs(1)));
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
    let udp = config.candidates.iter().map(|a| (*a, Candidate::host(*a, "udp")));
    let tcp = config
        .tcp_candidates
        .iter()
        .map(|a| (*a, Candidate::builder().tcp().host(*a).tcptype(TcpType::Passive).build()));
    for (addr, candidate) in udp.chain(tcp) {
        match candidate {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => warn!(%addr, "cannot use candidate: {e}"),
        }
    }
    rtc
}

/// The publisher's capture time of a packet, mapped onto our clock through its latest sender report,
/// so that sender reports to viewers keep its audio and video in sync. Falls back to arrival time.
/// `anchor` is one reading of the monotonic and the wall clock, so no clock is read here.
fn capture_wallclock(now: Instant, anchor: (Instant, SystemTime), p: &RtpPacket, clock_rate: u32) -> Instant {
    let Some(si) = &p.last_sender_info else { return p.timestamp };
    if clock_rate == 0 {
        return p.timestamp;
    }
    let sr_rtp = si.rtp_time.numer() as u32;
    let delta_ticks = p.header.timestamp.wrapping_sub(sr_rtp) as i32 as i64;
    let delta = Duration::from_micros((delta_ticks.unsigned_abs() * 1_000_000) / clock_rate as u64);
    let capture = if delta_ticks >= 0 { si.ntp_time.checked_add(delta) } else { si.ntp_time.checked_sub(delta) };
    let Some(capture) = capture else { return p.timestamp };
    let sys_now = anchor.1 + now.saturating_duration_since(anchor.0);
    let limit = Duration::from_secs(10);
    match sys_now.duration_since(capture) {
        Ok(ago) if ago <= limit => now.checked_sub(ago).unwrap_or(p.timestamp),
        Err(ahead) if ahead.duration() <= limit => now + ahead.duration(),
        _ => p.timestamp,
    }
}

#[cfg(test)]
mod tests;
