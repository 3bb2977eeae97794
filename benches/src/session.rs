//! N viewer sessions of str0m, handshaken in memory, fed by the forwarding core as the media worker feeds them.
//!
//! A [`Fanout`] owns, per viewer, a server-side `Rtc` configured as `media/src/worker.rs` configures one
//! (ICE-lite, RTP mode, the same codecs) and the viewer's own peer (a default full-ICE `Rtc`). Setup has the
//! server offer one sendonly m-line, as the worker does for a consumer, and shuttles datagrams between the
//! two in memory until ICE and DTLS are up on both sides; then it attaches one router consumer per viewer.
//!
//! [`Fanout::send`] does for one ingress packet what the media worker does: `Router::handle_rtp`, then
//! per consumer one `StreamTx::write_rtp` of the `RtpOut` (the shared `Arc<[u8]>` payload, not nackable:
//! retransmissions come from the router's packet cache, and each send stream reports NACKs instead of
//! caching), then polling each session (with the `Input::Timeout` str0m asks for) until it has handed
//! over its SRTP-protected `Transmit`. No socket is touched: transmits are counted and dropped.
//!
//! Time is simulated: it advances [`PACKET_INTERVAL`] per ingress packet. [`Fanout::maintain`], which the
//! benches call outside the timed region, lets every pair exchange its keep-alives and reports so that the
//! sessions stay connected however long a measurement lasts.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use dais_forward::{
    ConsumerId, ConsumerSpec, LayerId, MediaExt, Output as FwdOutput, ProducerId, ProducerSpec, Router, RouterConfig,
    RtpIn,
};
use str0m::crypto::dtls::SrtpProfile;
use str0m::format::Codec as SCodec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use crate::Kind;

/// Simulated time between two ingress packets.
pub const PACKET_INTERVAL: Duration = Duration::from_millis(1);

/// How often [`Fanout::maintain`] lets the pairs talk, in simulated time.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(500);

/// The SFU's one socket address; every server session advertises it.
const SERVER_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5000);

/// A datagram in flight between two in-memory peers.
struct Datagram {
    proto: Protocol,
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

impl From<Transmit> for Datagram {
    fn from(t: Transmit) -> Self {
        Datagram { proto: t.proto, source: t.source, destination: t.destination, contents: t.contents.to_vec() }
    }
}

/// One `Rtc` with what its last poll told.
struct Peer {
    rtc: Rtc,
    connected: bool,
    next: Instant,
}

impl Peer {
    fn new(rtc: Rtc, now: Instant) -> Self {
        Peer { rtc, connected: false, next: now }
    }

    /// Poll until str0m asks for time; transmits go to `out`.
    fn drain(&mut self, out: &mut VecDeque<Datagram>) -> anyhow::Result<()> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.next = t;
                    return Ok(());
                }
                Output::Transmit(t) => out.push_back(t.into()),
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(_) => {}
            }
        }
    }

    fn deliver(&mut self, now: Instant, d: &Datagram) -> anyhow::Result<()> {
        let contents = DatagramRecv::try_from(&d.contents[..]).map_err(|e| anyhow!("unparseable datagram: {e}"))?;
        let receive = Receive { proto: d.proto, source: d.source, destination: d.destination, contents };
        self.rtc.handle_input(Input::Receive(now, receive))?;
        Ok(())
    }

    fn tick(&mut self, now: Instant) -> anyhow::Result<()> {
        if self.next <= now {
            self.rtc.handle_input(Input::Timeout(now))?;
        }
        Ok(())
    }
}

/// One viewer: the SFU's session for it and the viewer's own peer.
struct Viewer {
    server: Peer,
    client: Peer,
    /// The server's sendonly m-line.
    mid: Mid,
}

impl Viewer {
    /// Move time to `now` on both sides, then shuttle datagrams until both are quiet. The receiver is
    /// polled after every datagram: in RTP mode str0m holds one received packet until the next poll.
    fn advance(&mut self, now: Instant) -> anyhow::Result<()> {
        self.server.tick(now)?;
        self.client.tick(now)?;
        let mut to_client = VecDeque::new();
        let mut to_server = VecDeque::new();
        for _ in 0..100_000 {
            self.server.drain(&mut to_client)?;
            self.client.drain(&mut to_server)?;
            if let Some(d) = to_server.pop_front() {
                self.server.deliver(now, &d)?;
            } else if let Some(d) = to_client.pop_front() {
                self.client.deliver(now, &d)?;
            } else {
                return Ok(());
            }
        }
        bail!("the peers never went quiet")
    }
}

/// Where a router consumer's packets go.
struct Egress {
    viewer: usize,
    ssrc: Ssrc,
}

/// One speaker's stream fanned out to N str0m viewer sessions. See the module docs.
pub struct Fanout {
    kind: Kind,
    viewers: Vec<Viewer>,
    router: Router,
    producer: ProducerId,
    /// As the worker keeps it: router consumer to session and send stream.
    consumers: HashMap<ConsumerId, Egress>,
    dirty: Vec<usize>,
    /// The shared payload of every ingress packet after the first.
    payload: Arc<[u8]>,
    /// Ingress packets so far.
    sent: u64,
    now: Instant,
    last_maintenance: Instant,
    /// Transmits handed over by the server sessions.
    transmits: u64,
    errors: u64,
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout")
            .field("kind", &self.kind)
            .field("viewers", &self.viewers.len())
            .field("sent", &self.sent)
            .field("transmits", &self.transmits)
            .finish_non_exhaustive()
    }
}

impl Fanout {
    /// Connect `viewers` sessions and start every consumer with a keyframe (video), so that every later
    /// [`Fanout::send`] yields one transmit per viewer.
    ///
    /// With `force`, both sides of every pair are re-keyed with that SRTP profile after the handshake; that
    /// needs this crate's `srtp-profiles` feature. Without it the sessions keep what DTLS negotiated, which
    /// between two str0m peers is always AEAD_AES_256_GCM (the DTLS server's first choice).
    pub fn new(kind: Kind, viewers: usize, force: Option<SrtpProfile>) -> anyhow::Result<Self> {
        let start = Instant::now();
        let mut now = start;
        let mut pairs = Vec::with_capacity(viewers);
        for i in 0..viewers {
            let (viewer, done) = connect(i, kind, now)?;
            pairs.push(viewer);
            now = done;
        }
        // Every session sees the same clock from here on.
        for v in &mut pairs {
            v.advance(now)?;
        }
        if let Some(profile) = force {
            for v in &mut pairs {
                rekey(v, profile)?;
            }
        }

        let mut router = Router::new(RouterConfig::default());
        let codec = kind.codec();
        let producer = router.add_producer(
            now,
            ProducerSpec {
                kind: kind.into(),
                clock_rate: kind.clock_rate(),
                payload_types: vec![(kind.publisher_pt(), codec)],
                layers: 1,
            },
        );
        let mut consumers = HashMap::new();
        for (i, v) in pairs.iter_mut().enumerate() {
            let (ssrc, pt) = send_stream(&mut v.server.rtc, v.mid, kind)?;
            let spec = ConsumerSpec {
                sink: i as u64,
                ssrc: *ssrc,
                payload_types: vec![(codec, *pt)],
                initial_seq: (i as u16) * 7,
            };
            let id = router.add_consumer(now, producer, spec).map_err(|e| anyhow!("consumer {i}: {e}"))?;
            consumers.insert(id, Egress { viewer: i, ssrc });
        }
        while router.poll_output().is_some() {}

        let mut fanout = Fanout {
            kind,
            viewers: pairs,
            router,
            producer,
            consumers,
            dirty: Vec::with_capacity(viewers),
            payload: kind.payload(false).into(),
            sent: 0,
            now,
            last_maintenance: now,
            transmits: 0,
            errors: 0,
        };
        let keyframe: Arc<[u8]> = kind.payload(true).into();
        let before = fanout.transmits;
        fanout.send_payload(keyframe);
        if fanout.transmits - before < viewers as u64 {
            bail!("the first packet reached {} of {viewers} viewers", fanout.transmits - before);
        }
        Ok(fanout)
    }

    /// Number of viewer sessions.
    pub fn viewers(&self) -> usize {
        self.viewers.len()
    }

    /// Transmits handed over so far (media plus any RTCP the sessions sent while polled).
    pub fn transmits(&self) -> u64 {
        self.transmits
    }

    /// Forward one ingress packet to every viewer; returns the number of transmits it produced.
    pub fn send(&mut self) -> u64 {
        let payload = self.payload.clone();
        self.send_payload(payload)
    }

    fn send_payload(&mut self, payload: Arc<[u8]>) -> u64 {
        let before = self.transmits;
        self.now += PACKET_INTERVAL;
        let now = self.now;
        let i = self.sent;
        self.sent += 1;
        let ext = match self.kind {
            Kind::Video => MediaExt::default(),
            Kind::Audio => MediaExt { audio_level: Some(-30), voice_activity: Some(true), ..MediaExt::default() },
        };
        let input = RtpIn {
            layer: LayerId(0),
            ssrc: 0x5eed,
            seq: i as u16,
            timestamp: self.kind.timestamp(i),
            payload_type: self.kind.publisher_pt(),
            marker: self.kind.marker(i),
            payload,
            ext,
            wallclock: now,
        };
        self.router.handle_rtp(now, self.producer, input);
        while let Some(out) = self.router.poll_output() {
            let FwdOutput::Rtp(o) = out else { continue };
            let Some(c) = self.consumers.get(&o.consumer) else { continue };
            let Some(v) = self.viewers.get_mut(c.viewer) else { continue };
            let mut api = v.server.rtc.direct_api();
            let Some(tx) = api.stream_tx(&c.ssrc) else {
                self.errors += 1;
                continue;
            };
            let ext_vals = ExtensionValues {
                audio_level: o.ext.audio_level,
                voice_activity: o.ext.voice_activity,
                ..ExtensionValues::default()
            };
            let write =
                RtpWrite::new(Pt::from(o.payload_type), SeqNo::from(o.seq), o.timestamp, o.wallclock, o.payload)
                    .marker(o.marker)
                    .ext_vals(ext_vals);
            tx.write_rtp(write);
            self.dirty.push(c.viewer);
        }
        for i in self.dirty.drain(..) {
            let Some(v) = self.viewers.get_mut(i) else { continue };
            match poll_server(&mut v.server.rtc, now) {
                Ok(n) => self.transmits += n,
                Err(_) => self.errors += 1,
            }
        }
        self.transmits - before
    }

    /// Untimed housekeeping: when enough simulated time has passed, every pair exchanges what it has to
    /// (ICE consent, RTCP reports). Fails if a session lost its connection or a send failed.
    pub fn maintain(&mut self) -> anyhow::Result<()> {
        if self.errors > 0 {
            bail!("{} session errors while sending", self.errors);
        }
        if self.now.duration_since(self.last_maintenance) < MAINTENANCE_INTERVAL {
            return Ok(());
        }
        self.last_maintenance = self.now;
        for (i, v) in self.viewers.iter_mut().enumerate() {
            v.advance(self.now).with_context(|| format!("viewer {i}"))?;
            if !v.server.rtc.is_connected() || !v.client.rtc.is_connected() {
                bail!("viewer {i} lost its connection");
            }
        }
        Ok(())
    }
}

/// Poll a server session as the worker does: it asks for a timeout first (str0m stamps queued packets
/// only when time moves), gets it, then hands over what is queued. Returns the transmits.
fn poll_server(rtc: &mut Rtc, now: Instant) -> Result<u64, str0m::RtcError> {
    let mut transmits = 0;
    let mut timed = false;
    loop {
        match rtc.poll_output()? {
            Output::Transmit(t) => {
                black_box(&t.contents);
                transmits += 1;
            }
            Output::Timeout(t) if t <= now && !timed => {
                rtc.handle_input(Input::Timeout(now))?;
                timed = true;
            }
            Output::Timeout(_) => return Ok(transmits),
            Output::Event(e) => {
                black_box(e);
            }
        }
    }
}

/// Create viewer `index`'s pair, negotiate one sendonly m-line of `kind` from the server, and shuttle
/// datagrams until both sides are connected. Returns the pair and the simulated time it took until.
fn connect(index: usize, kind: Kind, start: Instant) -> anyhow::Result<(Viewer, Instant)> {
    let mut server = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        .enable_vp9(true)
        .enable_av1(true)
        .build(start);
    server.add_local_candidate(Candidate::host(SERVER_ADDR, "udp")?);
    let client_ip = Ipv4Addr::new(10, 1, (index >> 8) as u8, index as u8);
    let mut client = RtcConfig::new().build(start);
    client.add_local_candidate(Candidate::host(SocketAddr::from((client_ip, 40_000)), "udp")?);

    let media = match kind {
        Kind::Video => MediaKind::Video,
        Kind::Audio => MediaKind::Audio,
    };
    let mut api = server.sdp_api();
    let mid = api.add_media(media, Direction::SendOnly, Some("speaker".into()), Some(kind.name().into()), None);
    let (offer, pending) = api.apply().context("the server had nothing to offer")?;
    let answer = client.sdp_api().accept_offer(offer)?;
    server.sdp_api().accept_answer(pending, answer)?;

    let mut v = Viewer { server: Peer::new(server, start), client: Peer::new(client, start), mid };
    let mut now = start;
    loop {
        v.advance(now)?;
        if v.server.connected && v.client.connected {
            return Ok((v, now));
        }
        if now.duration_since(start) > Duration::from_secs(10) {
            bail!("viewer {index} did not connect within 10 s of simulated time");
        }
        let next = v.server.next.min(v.client.next);
        now = if next > now { next.min(now + Duration::from_millis(100)) } else { now + Duration::from_millis(1) };
    }
}

/// The server's send stream for `mid`, and the payload type it negotiated for `kind`.
fn send_stream(rtc: &mut Rtc, mid: Mid, kind: Kind) -> anyhow::Result<(Ssrc, Pt)> {
    let want = match kind {
        Kind::Video => SCodec::Vp8,
        Kind::Audio => SCodec::Opus,
    };
    let ssrc = rtc
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .map(|tx| {
            // As the media worker sets up a consumer: NACKs are answered from the router's cache.
            tx.set_nack_events(true);
            tx.ssrc()
        })
        .context("no send stream")?;
    let remote = rtc.media(mid).map(|m| m.remote_pts().to_vec()).unwrap_or_default();
    let pt = rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == want && remote.contains(&p.pt()))
        .map(|p| p.pt())
        .context("codec not negotiated")?;
    Ok((ssrc, pt))
}

#[cfg(feature = "srtp-profiles")]
fn rekey(v: &mut Viewer, profile: SrtpProfile) -> anyhow::Result<()> {
    use str0m::crypto::dtls::KeyingMaterial;
    let material = vec![0x5a; profile.keying_material_len()];
    // The server's transmit keys must be the client's receive keys: opposite `active` flags.
    v.server.rtc._set_srtp_keys(KeyingMaterial::new(&material), profile, true);
    v.client.rtc._set_srtp_keys(KeyingMaterial::new(&material), profile, false);
    Ok(())
}

#[cfg(not(feature = "srtp-profiles"))]
fn rekey(_: &mut Viewer, profile: SrtpProfile) -> anyhow::Result<()> {
    bail!("forcing {profile} needs the srtp-profiles feature of dais-benches")
}
