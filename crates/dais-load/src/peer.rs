//! One str0m client session (full ICE, DTLS client, RTP mode) on its own UDP socket, driven by its task.
//!
//! The SFU tells sessions apart by their source address, so every synthetic participant binds its own
//! socket. [`Peer::drive`] polls str0m until it asks for time, sending transmits with `send_to` on the
//! non-blocking socket (a datagram the kernel refuses is counted, never waited for), and hands every event
//! to the caller. [`Peer::read`] drains the socket after a readiness wake-up, up to 8 datagrams per
//! `recvmmsg` (a short batch tells tokio the socket is drained, so no call is spent on `EAGAIN`), and polls
//! the session after every datagram: in RTP mode str0m keeps one received packet until the next
//! `poll_output`.
//!
//! Sockets ask the kernel for receive timestamps (`SO_TIMESTAMPNS`). Events caused by a datagram come with
//! the time the kernel queued that datagram on the socket, so latency measured from them excludes the time
//! the generator itself took to get to the packet: it is the SFU's latency plus loopback delivery.
//!
//! A peer can also count SRTP packets from their headers instead of decrypting them ([`Peer::count_headers`],
//! see [`crate::sendlog`]).
//!
//! ICE over TCP ([`Peer::connect_tcp`]): the peer connects to the server's passive TCP candidate and
//! announces an active one; str0m's TCP transmits go out RFC 4571-framed on that connection, and frames
//! read from it go to str0m (no kernel timestamps there: receive time is read time). A frame the
//! connection cannot take at once waits in a bounded outgoing buffer.
//!
//! A *cut* ([`Peer::cut`]) plays a network outage: until it ends nothing is sent, UDP datagrams that
//! arrive are read and thrown away, and a TCP connection is left unread (its data waits in the kernel,
//! as TCP would keep it).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use nix::sys::socket::{
    recvmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders, RecvMsg, SockaddrStorage,
};
use nix::sys::time::TimeSpec;
use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::Ssrc;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig, RtcError};
use tokio::io::Interest;
use tokio::net::{TcpStream, UdpSocket};

use crate::link::{Bottleneck, Estimator};
use crate::sendlog::{HeaderCounter, SendLog};
use crate::stamp::{Clock, Stamp};
use crate::Failure;

/// What [`Peer::read`] hands over.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // handed by value to a callback, never stored
pub enum Got {
    /// An event of the session.
    Event(Event),
    /// A packet counted from its header alone ([`Peer::count_headers`]).
    Counted(Stamp),
}

/// The header-only path of a peer that does not decrypt (see [`crate::sendlog`]).
#[derive(Debug)]
struct Counting {
    counter: HeaderCounter,
    log: Arc<SendLog>,
    /// Learning and counting have begun.
    armed: bool,
}

/// Largest datagram read; anything WebRTC sends fits.
const RECV_BUF: usize = 2048;

/// Most datagrams read per readiness wake-up before other work gets a turn.
const READ_BATCH: usize = 64;

/// Datagrams one `recvmmsg` call can take.
const RECV_BATCH: usize = 8;

/// Once a peer counts headers, str0m gets time at most this often. Its timers then serve only ICE
/// consent, RTCP reports and DTLS (the counted packets never reach it, so there is nothing to NACK), and
/// at 1,000 viewers waking each session every few milliseconds cost the generator more than the packets.
const COUNTING_TICK: Duration = Duration::from_millis(200);

/// Largest outgoing TCP backlog of one peer; frames beyond it are dropped (and counted as send errors).
const TCP_OUT_LIMIT: usize = 256 * 1024;

/// Most bytes one read of a TCP connection takes before the peer handles them.
const TCP_READ_LIMIT: usize = 64 * 1024;

/// ICE over TCP: one connection to the server's passive candidate.
#[derive(Debug)]
struct TcpLink {
    stream: TcpStream,
    server: SocketAddr,
    local: SocketAddr,
    /// Bytes read; those before `consumed` are framed already.
    inbuf: Vec<u8>,
    consumed: usize,
    /// The server closed the connection: nothing more to read.
    eof: bool,
    /// Framed bytes not yet written.
    outbuf: Vec<u8>,
}

impl TcpLink {
    /// Queue one frame and write what the connection takes now.
    fn send(&mut self, data: &[u8]) -> bool {
        let Ok(len) = u16::try_from(data.len()) else { return false };
        if self.outbuf.len() + data.len() + 2 > TCP_OUT_LIMIT {
            return false;
        }
        self.outbuf.extend_from_slice(&len.to_be_bytes());
        self.outbuf.extend_from_slice(data);
        self.flush();
        true
    }

    fn flush(&mut self) {
        while !self.outbuf.is_empty() {
            match self.stream.try_write(&self.outbuf) {
                Ok(0) => break,
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(_) => break,
            }
        }
    }

    /// Read up to [`TCP_READ_LIMIT`] of what the connection holds (the rest waits for the next wake-up);
    /// a closed or failed connection is marked `eof`.
    fn fill(&mut self) {
        // Drop what was framed, once per fill, so framing costs no front-of-buffer moves per frame.
        self.inbuf.drain(..self.consumed);
        self.consumed = 0;
        let mut buf = [0u8; 16 * 1024];
        let mut read = 0;
        while read < TCP_READ_LIMIT {
            match self.stream.try_read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    read += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.eof = true;
                    return;
                }
            }
        }
    }

    /// The next whole frame read, if any.
    fn frame(&mut self) -> Option<Vec<u8>> {
        let rest = self.inbuf.get(self.consumed..)?;
        let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let frame = rest.get(2..2 + len)?.to_vec();
        self.consumed += 2 + len;
        Some(frame)
    }
}

/// A str0m session and its socket.
#[derive(Debug)]
pub struct Peer {
    /// The session. Public so that callers can negotiate and write RTP.
    pub rtc: Rtc,
    socket: UdpSocket,
    recv: RecvBatch,
    /// The same socket, for sends: tokio's `try_send_to` refuses to send until its reactor has seen the
    /// socket writable, which drops a fresh socket's first datagram (the first ICE check).
    sender: std::net::UdpSocket,
    local: SocketAddr,
    clock: Clock,
    /// When str0m next wants time.
    pub next: Instant,
    /// Datagrams the kernel refused to take.
    pub send_errors: u64,
    counting: Option<Counting>,
    /// When str0m was last given the time by [`Peer::tick`].
    last_tick: Instant,
    /// ICE over TCP instead of UDP.
    tcp: Option<TcpLink>,
    /// A network outage until then ([`Peer::cut`]).
    cut_until: Option<Instant>,
    /// SSRCs of the video streams received, for keyframe requests.
    video_ssrcs: Vec<Ssrc>,
    /// SSRCs of the audio streams received: the estimator leaves them out, as libwebrtc's
    /// receive-side estimator does ("for audio, we only support send side BWE").
    audio_ssrcs: Vec<u32>,
    /// The emulated downlink and its estimator (`--viewer-mix`, `--simulcast`).
    downlink: Option<Downlink>,
    /// Datagrams sent (feedback, once media flows).
    pub sent: u64,
    /// REMBs sent.
    pub rembs: u64,
}

/// A viewer's emulated downlink: a bottleneck when it has a cap, and always an estimator that reports
/// what arrives as REMB.
#[derive(Debug)]
struct Downlink {
    bottleneck: Option<Bottleneck>,
    estimator: Estimator,
}

impl Peer {
    /// Bind a socket on `ip` (port chosen by the kernel) and make a session that offers or accepts only VP8
    /// and Opus, announcing that socket as its one host candidate.
    pub fn bind(ip: IpAddr, clock: Clock) -> anyhow::Result<Peer> {
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).context("bind a client UDP socket")?;
        std_socket.set_nonblocking(true)?;
        // Without kernel timestamps (not Linux, or refused) receive times fall back to the time of reading.
        let _ = setsockopt(&std_socket, sockopt::ReceiveTimestampns, &true);
        let sender = std_socket.try_clone()?;
        let socket = UdpSocket::from_std(std_socket)?;
        let local = socket.local_addr()?;
        let now = Instant::now();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(None)
            .build(now);
        let candidate = Candidate::host(local, "udp").map_err(|e| anyhow!("host candidate {local}: {e}"))?;
        rtc.add_local_candidate(candidate);
        Ok(Peer {
            rtc,
            socket,
            sender,
            local,
            recv: RecvBatch::new(),
            clock,
            next: now,
            send_errors: 0,
            counting: None,
            last_tick: now,
            tcp: None,
            cut_until: None,
            video_ssrcs: Vec::new(),
            audio_ssrcs: Vec::new(),
            downlink: None,
            sent: 0,
            rembs: 0,
        })
    }

    /// A peer that uses ICE over TCP: connect to the passive TCP candidate of the server's offer `sdp`
    /// and announce an active candidate on that connection's local address (and no UDP one).
    pub async fn connect_tcp(ip: IpAddr, clock: Clock, sdp: &str) -> anyhow::Result<Peer> {
        let server = passive_tcp_candidate(sdp).context("the server's offer has no passive TCP candidate")?;
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(server))
            .await
            .map_err(|_| anyhow!("TCP connect to {server} timed out"))?
            .with_context(|| format!("TCP connect to {server}"))?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let mut peer = Peer::bind(ip, clock)?;
        peer.rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(None)
            .build(Instant::now());
        let candidate = Candidate::builder()
            .tcp()
            .host(local)
            .tcptype(TcpType::Active)
            .build()
            .map_err(|e| anyhow!("TCP candidate {local}: {e}"))?;
        peer.rtc.add_local_candidate(candidate);
        peer.tcp =
            Some(TcpLink { stream, server, local, inbuf: Vec::new(), consumed: 0, eof: false, outbuf: Vec::new() });
        Ok(peer)
    }

    /// Receive through an emulated downlink of `cap` bits per second (`None`: no cap) and send REMBs of
    /// what arrives ([`crate::link`]). UDP only: a TCP peer ignores the cap.
    pub fn set_downlink(&mut self, cap: Option<u64>, now: Instant) {
        let bottleneck = cap.filter(|_| self.tcp.is_none()).map(|c| Bottleneck::new(c, now));
        self.downlink = Some(Downlink { bottleneck, estimator: Estimator::new(now) });
    }

    /// Datagrams the downlink's queue dropped.
    pub fn downlink_drops(&self) -> u64 {
        self.downlink.as_ref().and_then(|d| d.bottleneck.as_ref()).map_or(0, |b| b.dropped)
    }

    /// The downlink estimate last computed, bits per second.
    pub fn estimate(&self) -> Option<u64> {
        self.downlink.as_ref().and_then(|d| d.estimator.estimate())
    }

    /// Play a network outage until `until` (see the module docs).
    pub fn cut(&mut self, until: Instant) {
        self.cut_until = Some(until);
    }

    fn is_cut(&mut self, now: Instant) -> bool {
        match self.cut_until {
            Some(t) if now < t => true,
            Some(_) => {
                self.cut_until = None;
                false
            }
            None => false,
        }
    }

    /// Ask the server for a keyframe on every video stream received so far (as a decoder does after a
    /// gap); how many were asked.
    pub fn request_keyframes(&mut self) -> usize {
        let mut asked = 0;
        let mut api = self.rtc.direct_api();
        for ssrc in &self.video_ssrcs {
            if let Some(rx) = api.stream_rx(ssrc) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                asked += 1;
            }
        }
        asked
    }

    /// Poll the session until it asks for time; send its transmits and pass its events to `on_event`
    /// with `at`, the receive time of the datagram that caused them (or now).
    ///
    /// A timeout that is already due is fed back at once (str0m hands over written RTP only when time
    /// moves), at most a few times per call so that a session can never spin.
    pub fn drive(&mut self, at: Instant, on_event: &mut impl FnMut(Event, Instant)) -> Result<(), RtcError> {
        let mut fed = 0;
        loop {
            match self.rtc.poll_output()? {
                Output::Event(Event::RtpPacket(pkt)) => {
                    let stamp = Stamp::read(&pkt.payload);
                    if let Some(stamp) = &stamp {
                        if stamp.stream.is_video() && !self.video_ssrcs.contains(&pkt.header.ssrc) {
                            self.video_ssrcs.push(pkt.header.ssrc);
                        }
                        if !stamp.stream.is_video() && !self.audio_ssrcs.contains(&*pkt.header.ssrc) {
                            self.audio_ssrcs.push(*pkt.header.ssrc);
                        }
                    }
                    if let (Some(c), Some(stamp)) = (self.counting.as_mut().filter(|c| c.armed), &stamp) {
                        c.counter.learn(*pkt.header.ssrc, *pkt.seq_no, stamp);
                    }
                    on_event(Event::RtpPacket(pkt), at);
                }
                Output::Transmit(t) => {
                    let sent = if self.is_cut(Instant::now()) {
                        true
                    } else if let (Protocol::Tcp, Some(tcp)) = (t.proto, self.tcp.as_mut()) {
                        tcp.send(&t.contents)
                    } else {
                        self.sender.send_to(&t.contents, t.destination).is_ok()
                    };
                    if !sent {
                        self.send_errors += 1;
                    }
                    self.sent += 1;
                }
                Output::Timeout(t) => {
                    let now = Instant::now();
                    if t <= now && fed < 4 && self.may_tick(now) {
                        fed += 1;
                        self.last_tick = now;
                        self.rtc.handle_input(Input::Timeout(now))?;
                        continue;
                    }
                    self.next = t;
                    return Ok(());
                }
                Output::Event(e) => on_event(e, at),
            }
        }
    }

    /// Give str0m the time if it asked for it by now, let through what the downlink releases by now,
    /// then drive.
    pub fn tick(&mut self, on: &mut impl FnMut(Got, Instant)) -> Result<(), RtcError> {
        let now = Instant::now();
        if self.next <= now && self.may_tick(now) {
            self.last_tick = now;
            self.rtc.handle_input(Input::Timeout(now))?;
        }
        self.release(now, on)?;
        self.drive(now, &mut |e, t| on(Got::Event(e), t))
    }

    /// Hand one datagram that arrived at `at` (after `delay` in the downlink's queue) to str0m, or count
    /// it from its header; true if str0m got it.
    fn feed(
        &mut self,
        (data, source): (&[u8], SocketAddr),
        at: Instant,
        delay: Duration,
        now: Instant,
        on: &mut impl FnMut(Got, Instant),
    ) -> Result<bool, RtcError> {
        let fed = self.feed_inner((data, source), at, now, on);
        // The estimator runs on the RTP that arrives once video flows, audio left out, as a browser's
        // runs on received video (its retransmissions and probes included).
        if let (Some(d), false) = (self.downlink.as_mut(), self.video_ssrcs.is_empty()) {
            if rtp_ssrc(data).is_some_and(|ssrc| !self.audio_ssrcs.contains(&ssrc)) {
                d.estimator.on_packet(at, data.len(), delay);
            }
        }
        fed
    }

    fn feed_inner(
        &mut self,
        (data, source): (&[u8], SocketAddr),
        at: Instant,
        now: Instant,
        on: &mut impl FnMut(Got, Instant),
    ) -> Result<bool, RtcError> {
        if let Some(c) = self.counting.as_mut().filter(|c| c.armed && c.counter.ready()) {
            if let Some(stamp) = c.counter.count(data, &c.log) {
                on(Got::Counted(stamp), at);
                return Ok(false);
            }
        }
        let (proto, local) = match &self.tcp {
            Some(t) => (Protocol::Tcp, t.local),
            None => (Protocol::Udp, self.local),
        };
        let Ok(receive) = Receive::new(proto, source, local, data) else { return Ok(false) };
        self.rtc.handle_input(Input::Receive(now, receive))?;
        self.drive(at, &mut |e, t| on(Got::Event(e), t))?;
        Ok(true)
    }

    /// Feed what the downlink lets through by `now`, then send a REMB if the estimator wants one; true if
    /// str0m got anything.
    fn release(&mut self, now: Instant, on: &mut impl FnMut(Got, Instant)) -> Result<bool, RtcError> {
        let mut fed = false;
        while let Some(r) = self.downlink.as_mut().and_then(|d| d.bottleneck.as_mut()).and_then(|b| b.pop(now)) {
            let got = self.feed((&r.data, r.source), r.at, r.delay, now, on);
            if let Some(b) = self.downlink.as_mut().and_then(|d| d.bottleneck.as_mut()) {
                b.recycle(r.data);
            }
            fed |= got?;
        }
        let remb = self.downlink.as_mut().and_then(|d| d.estimator.poll(now));
        if let (Some(bps), Some(ssrc)) = (remb, self.video_ssrcs.first().copied()) {
            if let Some(rx) = self.rtc.direct_api().stream_rx(&ssrc) {
                rx.request_remb(Bitrate::bps(bps));
                self.rembs += 1;
                self.drive(now, &mut |e, t| on(Got::Event(e), t))?;
            }
        }
        Ok(fed)
    }

    /// Give str0m the time now, whether or not it asked: after a description was applied, so that ICE
    /// starts its checks at once instead of at the next timer (up to 250 ms later).
    pub fn nudge(&mut self) -> Result<(), RtcError> {
        self.rtc.handle_input(Input::Timeout(Instant::now()))
    }

    /// Answer a server offer: apply it, start ICE at once ([`Peer::nudge`]) and return the answer's SDP.
    pub fn answer_offer(&mut self, sdp: &str) -> Result<String, Failure> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(Failure::with("bad_sdp"))?;
        let answer = self.rtc.sdp_api().accept_offer(offer).map_err(Failure::with("bad_sdp"))?;
        self.nudge().map_err(Failure::with("media_failed"))?;
        Ok(answer.to_sdp_string())
    }

    /// Wait until the socket (or the TCP connection) is readable.
    pub async fn readable(&self) -> io::Result<()> {
        match &self.tcp {
            // A closed connection stays readable: never wake for it again (str0m's timers notice).
            Some(t) if t.eof => std::future::pending().await,
            Some(t) => t.stream.readable().await,
            None => self.socket.readable().await,
        }
    }

    /// From now on, once [`Peer::arm_counting`] was called, count SRTP packets of the speaker streams this
    /// peer has decrypted at least once from their headers and `log`, instead of decrypting them.
    pub fn count_headers(&mut self, log: Arc<SendLog>) {
        self.counting = Some(Counting { counter: HeaderCounter::default(), log, armed: false });
    }

    /// Start learning SSRCs from decrypted packets, and counting packets of learned ones. Does nothing
    /// unless [`Peer::count_headers`] was called.
    pub fn arm_counting(&mut self) {
        if let Some(c) = self.counting.as_mut() {
            c.armed = true;
        }
    }

    /// Packets counted from their headers alone.
    pub fn counted(&self) -> u64 {
        self.counting.as_ref().map_or(0, |c| c.counter.counted)
    }

    /// Read what the socket holds (up to a batch), handing each datagram to str0m and driving after each,
    /// or, for a counting peer, counting it from its header. Datagrams str0m cannot parse are skipped.
    /// True if str0m got any of them.
    pub fn read(&mut self, on: &mut impl FnMut(Got, Instant)) -> Result<bool, RtcError> {
        if self.tcp.is_some() {
            return self.read_tcp(on);
        }
        let cut = self.is_cut(Instant::now());
        let mut fed = false;
        for _ in 0..READ_BATCH / RECV_BATCH {
            let n = match self.receive() {
                Ok(n) => n,
                // Other errors (ICMP port unreachable) leave nothing to read.
                Err(_) => break,
            };
            let now = Instant::now();
            if cut {
                // The outage ate them.
                if n < RECV_BATCH {
                    break;
                }
                continue;
            }
            // Out of `self` for the loop (a pointer swap), so that `feed` may borrow the rest of it.
            let bufs = std::mem::take(&mut self.recv.bufs);
            let got = self.recv.got;
            let mut result = Ok(());
            for (i, &(len, source, wall)) in got.iter().take(n).enumerate() {
                let Some(source) = source else { continue };
                let at = wall.map(|w| self.clock.from_wall(w).min(now)).unwrap_or(now);
                let Some(data) = bufs.get(i * RECV_BUF..i * RECV_BUF + len.min(RECV_BUF)) else { continue };
                if let Some(b) = self.downlink.as_mut().and_then(|d| d.bottleneck.as_mut()) {
                    // Through the bottleneck: str0m gets it when it leaves (`release`).
                    b.push(at, source, data);
                    continue;
                }
                match self.feed((data, source), at, Duration::ZERO, now, on) {
                    Ok(f) => fed |= f,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            self.recv.bufs = bufs;
            result?;
            if n < RECV_BATCH {
                break;
            }
        }
        fed |= self.release(Instant::now(), on)?;
        Ok(fed)
    }

    /// The TCP side of [`Peer::read`]: every whole frame the connection holds, unless cut.
    fn read_tcp(&mut self, on: &mut impl FnMut(Got, Instant)) -> Result<bool, RtcError> {
        let now = Instant::now();
        if self.is_cut(now) {
            return Ok(false);
        }
        let Some(tcp) = self.tcp.as_mut() else { return Ok(false) };
        tcp.flush();
        tcp.fill();
        let mut fed = false;
        while let Some(frame) = self.tcp.as_mut().and_then(TcpLink::frame) {
            let Some(server) = self.tcp.as_ref().map(|t| t.server) else { break };
            fed |= self.feed((&frame, server), now, Duration::ZERO, now, on)?;
        }
        fed |= self.release(now, on)?;
        Ok(fed)
    }

    /// Up to [`RECV_BATCH`] datagrams in one `recvmmsg`, into `self.recv`; how many. Fewer than a batch
    /// means the socket is drained, and tokio is told so (its readiness is cleared) without a second
    /// system call that would only return `EAGAIN`.
    fn receive(&mut self) -> io::Result<usize> {
        let (socket, rb) = (&self.socket, &mut self.recv);
        // try_io skips the closure when tokio already knows the socket is drained.
        rb.len = 0;
        let r = socket.try_io(Interest::READABLE, || {
            let RecvBatch { bufs, headers, got, len } = &mut *rb;
            *len = 0;
            let mut chunks = bufs.chunks_mut(RECV_BUF);
            let mut iovs: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
            let msgs = recvmmsg(socket.as_raw_fd(), headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                .map_err(io::Error::from)?;
            for (slot, m) in got.iter_mut().zip(msgs) {
                *slot = (m.bytes, m.address.as_ref().and_then(socket_addr), kernel_time(&m));
                *len += 1;
            }
            if *len < RECV_BATCH {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(*len)
        });
        match r {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(rb.len),
            Err(e) => Err(e),
        }
    }

    /// Whether str0m may be given the time at `now`: always, except for an armed counting peer within
    /// `COUNTING_TICK` of its last tick.
    fn may_tick(&self, now: Instant) -> bool {
        !self.counting.as_ref().is_some_and(|c| c.armed) || now >= self.last_tick + COUNTING_TICK
    }

    /// When str0m wants time next; for an armed counting peer, no sooner than `COUNTING_TICK` after
    /// the last tick.
    pub fn next_tick(&self) -> Instant {
        let mut next = self.next;
        if self.counting.as_ref().is_some_and(|c| c.armed) {
            next = next.max(self.last_tick + COUNTING_TICK);
        }
        if let Some(d) = &self.downlink {
            let release = d.bottleneck.as_ref().and_then(Bottleneck::next_release);
            for t in [release, d.estimator.next_poll()].into_iter().flatten() {
                next = next.min(t);
            }
        }
        next
    }

    /// The payload type negotiated on `mid` for `codec`, as this side numbers it.
    pub fn negotiated_pt(&self, mid: Mid, codec: Codec) -> Option<Pt> {
        let remote = self.rtc.media(mid)?.remote_pts().to_vec();
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
            .map(|p| p.pt())
    }
}

/// Receive buffers for one `recvmmsg`: [`RECV_BATCH`] datagrams of up to [`RECV_BUF`] bytes, each with room
/// for a kernel receive timestamp.
struct RecvBatch {
    bufs: Vec<u8>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Per datagram received: length, source and kernel receive time (wall clock).
    got: [(usize, Option<SocketAddr>, Option<Duration>); RECV_BATCH],
    /// Datagrams in `got` from the last call.
    len: usize,
}

impl RecvBatch {
    fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![0; RECV_BATCH * RECV_BUF],
            headers: MultiHeaders::preallocate(RECV_BATCH, Some(nix::cmsg_space!(TimeSpec))),
            got: [(0, None, None); RECV_BATCH],
            len: 0,
        }
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("len", &self.len).finish()
    }
}

/// The kernel's receive timestamp of a datagram (`SO_TIMESTAMPNS`), as wall-clock time.
fn kernel_time(m: &RecvMsg<'_, '_, SockaddrStorage>) -> Option<Duration> {
    let mut wall = None;
    for c in m.cmsgs().ok()? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            let (secs, nanos) = (u64::try_from(ts.tv_sec()).unwrap_or(0), ts.tv_nsec());
            wall = Some(Duration::new(secs, u32::try_from(nanos).unwrap_or(0)));
        }
    }
    wall
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// The address of the first passive TCP host candidate in an SDP (`a=candidate:... tcp ... typ host
/// tcptype passive`).
fn passive_tcp_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines().find_map(|l| {
        let c = l.trim().strip_prefix("a=candidate:")?;
        let f: Vec<&str> = c.split_whitespace().collect();
        let passive = f.windows(2).any(|w| w[0] == "tcptype" && w[1] == "passive");
        if f.get(2)?.eq_ignore_ascii_case("tcp") && passive {
            let ip: IpAddr = f.get(4)?.parse().ok()?;
            let port: u16 = f.get(5)?.parse().ok()?;
            return Some(SocketAddr::new(ip, port));
        }
        None
    })
}

/// The SSRC of an RTP datagram, from its plaintext header (SRTP encrypts only the payload); `None`
/// for anything else: RTCP (second byte 192 to 223, RFC 5761), STUN, DTLS, or too short.
fn rtp_ssrc(data: &[u8]) -> Option<u32> {
    let (&first, &second) = (data.first()?, data.get(1)?);
    if first >> 6 != 2 || (192..=223).contains(&second) {
        return None;
    }
    Some(u32::from_be_bytes(data.get(8..12)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_is_told_from_rtcp_and_the_rest_by_its_header() {
        let mut rtp = vec![0x80, 96, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0xaa];
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        rtp[1] = 0x80 | 111; // marker bit set, Opus
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        let rtcp = [0x81, 200, 0, 6, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0];
        assert_eq!(rtp_ssrc(&rtcp), None, "a sender report");
        assert_eq!(rtp_ssrc(&[0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0]), None, "STUN");
        assert_eq!(rtp_ssrc(&[22, 0xfe, 0xfd]), None, "DTLS");
        assert_eq!(rtp_ssrc(&rtp[..10]), None, "too short");
    }

    #[tokio::test]
    async fn tcp_frames_are_rebuilt_across_reads_and_a_close_is_noticed() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        let local = stream.local_addr().expect("local");
        let mut link =
            TcpLink { stream, server: addr, local, inbuf: Vec::new(), consumed: 0, eof: false, outbuf: Vec::new() };
        // One frame split in two writes, then two frames in one write.
        server.write_all(&[0, 3, b'a']).await.expect("write");
        link.stream.readable().await.expect("readable");
        link.fill();
        assert_eq!(link.frame(), None, "half a frame");
        server.write_all(&[b'b', b'c', 0, 1, b'x', 0, 0]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        link.fill();
        assert_eq!(link.frame().as_deref(), Some(&b"abc"[..]));
        assert_eq!(link.frame().as_deref(), Some(&b"x"[..]));
        assert_eq!(link.frame().as_deref(), Some(&b""[..]), "a zero-length frame");
        assert_eq!(link.frame(), None);
        assert!(!link.eof);
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        link.fill();
        assert!(link.eof, "the close is noticed");
        assert!(link.inbuf.is_empty(), "framed bytes were dropped");
    }

    #[test]
    fn the_passive_tcp_candidate_is_found() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
                   a=candidate:2 1 tcp 1010828031 127.0.0.1 7881 typ host tcptype passive\r\n";
        assert_eq!(passive_tcp_candidate(sdp), Some("127.0.0.1:7881".parse().unwrap()));
        assert_eq!(passive_tcp_candidate("a=candidate:1 1 udp 1 127.0.0.1 7882 typ host"), None);
    }
}
