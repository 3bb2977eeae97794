//! A synthetic viewer: joins over WebSocket, answers the server's offers with a str0m session on its own
//! socket, and measures every packet it decrypts.
//!
//! Join time is counted from the start of the WebSocket connect, to the first media packet and to the first
//! packet that starts a key frame (from which a real decoder could show a picture). Every received payload's
//! [`Stamp`] feeds the viewer's [`ViewerRecord`] (loss, duplicates, reordering) and the shard's latency
//! histogram. A viewer that gets no `joined` within 10 s, or no media within 15 s of `joined`, fails with
//! `join_timeout` or `no_media`; a server `error` fails it with the server's code.
//!
//! A viewer whose signaling socket closes without a final code resumes on a new one (`resume` with the
//! token of its last `joined`/`resumed`). With `--blip`, the cut viewers go through an outage mid-run
//! ([`Peer::cut`]; with `drop_signaling` their socket is lost too and resumed when it ends); the first
//! media packet after it asks for a key frame, as a decoder would, every second until one comes, and
//! both times are recorded from the end of the outage.
//!
//! With `--simulcast` or `--viewer-mix` a viewer estimates its downlink and sends REMB as a browser does,
//! behind its class's emulated cap if it has one ([`crate::link`]); its record then says which layer it
//! received when, its freezes and the feedback it sent.
//!
//! With `--react-every` or `--chat-share` it also reacts and chats once joined ([`Interactor`]); the
//! server's refusals of those are counted, not failures.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dais_proto::{ClientMessage, Role, ServerMessage, PROTOCOL_VERSION};
use str0m::Event;

use crate::interact::Interactor;
use crate::peer::{Got, Peer};
use crate::shard::Ctx;
use crate::shard::{Target, Transport};
use crate::signal::{Incoming, Signal, SignalHandle};
use crate::stamp::Stamp;
use crate::stats::{BlipRecord, ViewerRecord};
use crate::Failure;

/// Viewer failures described on stderr; the rest are only counted.
const FAILURES_SHOWN: usize = 5;

/// Longest wait for `joined`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait from `joined` to the first media packet.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(15);

/// A viewer that counts headers reads its socket at most this often, taking what queued meanwhile in
/// one `recvmmsg`: a few packets per wake-up instead of one. Latency comes from kernel receive
/// timestamps, so the pause does not show in it; the socket's buffer holds far more than this.
const COUNTING_READ_PAUSE: Duration = Duration::from_millis(20);

/// Run viewer `index` until the run stops or `leave_at`; never fails, the failure is in the record.
pub async fn run(ctx: Rc<Ctx>, index: usize, leave_at: Option<Instant>) -> ViewerRecord {
    ctx.progress.viewers_started.fetch_add(1, Ordering::Relaxed);
    let mut v = Viewer {
        rec: ViewerRecord::default(),
        start: Instant::now(),
        ctx: ctx.clone(),
        cut_end: None,
        want_keyframe: false,
        media_since: None,
    };
    if let Err(f) = v.watch(index, leave_at).await {
        let failed = ctx.progress.viewers_failed.fetch_add(1, Ordering::Relaxed);
        if failed < FAILURES_SHOWN {
            eprintln!("dais-load: viewer {index} failed: {f}");
        } else if failed == FAILURES_SHOWN {
            eprintln!("dais-load: more viewers failed; the report counts them by code");
        }
        v.rec.failure = Some(f.code);
    }
    if v.rec.first_media.is_none() {
        ctx.progress.viewers_settled.fetch_add(1, Ordering::Relaxed);
    }
    ctx.progress.viewers_ended.fetch_add(1, Ordering::Relaxed);
    v.rec
}

struct Viewer {
    rec: ViewerRecord,
    start: Instant,
    ctx: Rc<Ctx>,
    /// The end of the outage this viewer went through.
    cut_end: Option<Instant>,
    /// Ask for a key frame: media came back after the outage and none arrived yet.
    want_keyframe: bool,
    /// When the peer's counters were first read after media arrived, and its datagrams sent then.
    media_since: Option<(Instant, u64)>,
}

/// Close codes after which a viewer does not resume: its own leave, not UTF-8, too big, kicked, room
/// closed, resumed elsewhere.
const FINAL_CLOSES: [u16; 6] = [1000, 1007, 1009, 4001, 4002, 4003];

/// A new socket that resumes the participant holding `token`.
async fn resume(target: &Target, token: &str) -> Result<SignalHandle, Failure> {
    let mut sig = Signal::connect(&target.url).await.map_err(Failure::with("connect_failed"))?;
    let msg = ClientMessage::Resume { token: token.to_owned(), version: PROTOCOL_VERSION };
    sig.send(&msg).await.map_err(Failure::with("ws_closed"))?;
    Ok(sig.spawn())
}

/// The next message of the socket, or never while there is none.
async fn next_message(sig: &mut Option<SignalHandle>) -> anyhow::Result<Incoming> {
    match sig {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl Viewer {
    async fn watch(&mut self, index: usize, leave_at: Option<Instant>) -> Result<(), Failure> {
        let ctx = self.ctx.clone();
        let target = &ctx.target;
        let name = format!("viewer-{index}");
        self.rec.class = target.viewer_mix.as_ref().map(|m| m.class_of(index));
        let mut sig = Signal::connect(&target.url).await.map_err(Failure::with("connect_failed"))?;
        let token = crate::token(target, &name, Role::Viewer)?;
        sig.join(&target.room, &name, Role::Viewer, token).await.map_err(Failure::with("ws_closed"))?;
        let mut sig = Some(sig.spawn());
        let mut resume_token: Option<String> = None;
        let blip = target.blip.filter(|b| b.cuts(index));
        let mut blip_rx = ctx.blip.clone();
        let cut_timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(cut_timer);
        let mut cutting = false;

        let mut peer: Option<Peer> = None;
        // Viewers 0, K, 2K... decrypt every packet; the others count headers after their first key frame.
        let counting = target.decrypt_one_in > 1 && !index.is_multiple_of(target.decrypt_one_in);
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let leave = tokio::time::sleep_until(leave_at.unwrap_or(self.start + Duration::from_secs(1 << 30)).into());
        tokio::pin!(leave);
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut stop = ctx.stop.clone();
        let mut joined_at: Option<Instant> = None;
        // str0m may have output: something other than counted packets happened since the last drive.
        let mut dirty = true;
        // While set, a counting viewer leaves its socket alone until then.
        let mut resume_reads: Option<Instant> = None;
        // The first key frame request after the blip went out.
        let mut asked_once = false;
        // Reactions and chat, once joined.
        let mut interactor: Option<Interactor> = None;
        let interact_timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(interact_timer);

        loop {
            if let Some(p) = peer.as_mut() {
                if dirty {
                    if counting && self.rec.first_keyframe.is_some() {
                        p.arm_counting();
                    }
                    p.drive(Instant::now(), &mut |e, at| self.on_event(e, at))
                        .map_err(Failure::with("media_failed"))?;
                }
                let mut next = p.next_tick();
                match resume_reads {
                    Some(r) if r <= Instant::now() => resume_reads = None,
                    Some(r) => next = next.min(r),
                    None => {}
                }
                let next = tokio::time::Instant::from_std(next);
                if sleep.deadline() != next {
                    sleep.as_mut().reset(next);
                }
            }
            dirty = true;
            // The socket and str0m's timer first: they are what wakes a viewer hundreds of times a second.
            // The rest (stop, leave, signaling, the watchdog) cost a poll each, so they are polled only on
            // a wake-up that is neither, which is also the wake-up their own events cause.
            tokio::select! {
                biased;
                // A TCP connection under a cut is left unread (its readiness would spin the loop).
                r = readable(&peer), if resume_reads.is_none() && !(cutting && target.transport == Transport::Tcp) => {
                    r.map_err(Failure::with("socket"))?;
                    if let Some(p) = peer.as_mut() {
                        dirty = p.read(&mut |g, at| match g {
                            Got::Event(e) => self.on_event(e, at),
                            Got::Counted(stamp) => self.on_stamp(stamp, at),
                        })
                        .map_err(Failure::with("media_failed"))?;
                        self.rec.counted = p.counted();
                        self.note_peer(p);
                        if self.want_keyframe && !std::mem::replace(&mut asked_once, true) {
                            p.request_keyframes();
                        }
                        if p.counted() > 0 {
                            resume_reads = Some(Instant::now() + COUNTING_READ_PAUSE);
                        }
                    }
                }
                _ = &mut interact_timer, if interactor.as_ref().is_some_and(|i| i.next_due().is_some()) => {
                    let Some(i) = interactor.as_mut() else { continue };
                    let now = Instant::now();
                    let mut stats = ctx.interaction.borrow_mut();
                    while let Some(m) = i.poll(now, &mut stats) {
                        if let Some(s) = sig.as_ref() {
                            s.send(m).map_err(Failure::with("ws_closed"))?;
                        }
                    }
                    if let Some(due) = i.next_due() {
                        interact_timer.as_mut().reset(due.into());
                    }
                }
                _ = &mut sleep, if peer.is_some() => {
                    if let Some(p) = peer.as_mut() {
                        p.tick(&mut |g, at| match g {
                            Got::Event(e) => self.on_event(e, at),
                            Got::Counted(stamp) => self.on_stamp(stamp, at),
                        })
                        .map_err(Failure::with("media_failed"))?;
                        self.note_peer(p);
                    }
                }
                _ = stop.changed() => {
                    if let Some(s) = sig.take() {
                        s.leave().await;
                    }
                    return Ok(());
                }
                _ = &mut leave => {
                    if let Some(s) = sig.take() {
                        s.leave().await;
                    }
                    self.rec.left_early = true;
                    return Ok(());
                }
                _ = blip_rx.changed(), if blip.is_some() && self.rec.blip.is_none() => {
                    let (Some(until), Some(p), Some(plan)) = (*blip_rx.borrow(), peer.as_mut(), blip) else { continue };
                    p.cut(until);
                    cutting = true;
                    cut_timer.as_mut().reset(until.into());
                    self.cut_end = Some(until);
                    self.rec.blip = Some(BlipRecord::default());
                    if plan.drop_signaling {
                        if let Some(s) = sig.take() {
                            s.abandon();
                        }
                    }
                }
                _ = &mut cut_timer, if cutting => {
                    cutting = false;
                    if sig.is_none() {
                        let token = resume_token.clone().ok_or_else(|| Failure::new("resume_failed", "no resume token"))?;
                        sig = Some(resume(target, &token).await?);
                        if let Some(b) = self.rec.blip.as_mut() {
                            b.resumed = true;
                        }
                    }
                }
                r = next_message(&mut sig) => {
                    let incoming = r.map_err(Failure::with("ws_closed"))?;
                    if let (Incoming::Closed(code), Some(token)) = (&incoming, &resume_token) {
                        if !code.is_some_and(|c| FINAL_CLOSES.contains(&c)) {
                            // Lost, not ended: take the participant over on a new socket.
                            sig = Some(resume(target, token).await?);
                            continue;
                        }
                    }
                    if let Incoming::Message(ServerMessage::Error { code, request, .. }) = &incoming {
                        if ctx.interaction.borrow_mut().refusal(code.as_str(), request.as_deref()) {
                            continue;
                        }
                    }
                    let msg = incoming.into_message()?;
                    if let Some(i) = interactor.as_mut() {
                        let measuring = ctx.progress.measuring.load(Ordering::Relaxed);
                        i.on_message(&msg, Instant::now(), measuring, &mut ctx.interaction.borrow_mut());
                    }
                    match msg {
                        ServerMessage::Joined { resume_token: t, .. } => {
                            resume_token = t;
                            self.rec.joined = true;
                            joined_at = Some(Instant::now());
                            self.rec.joined_after = Some(self.start.elapsed());
                            if let (None, Some(plan)) = (&interactor, &target.interaction) {
                                let i = interactor.insert(Interactor::new(plan, index, Instant::now()));
                                if let Some(due) = i.next_due() {
                                    interact_timer.as_mut().reset(due.into());
                                }
                            }
                        }
                        ServerMessage::Resumed { resume_token: t, media_reset, .. } => {
                            resume_token = Some(t);
                            if media_reset {
                                return Err(Failure::new("media_reset", "the server lost the media session"));
                            }
                        }
                        ServerMessage::Offer { sdp } => {
                            let p = match peer.as_mut() {
                                Some(p) => p,
                                None => {
                                    let fresh = match target.transport {
                                        Transport::Udp => Peer::bind(target.bind_ip, ctx.clock),
                                        Transport::Tcp => Peer::connect_tcp(target.bind_ip, ctx.clock, &sdp).await,
                                    };
                                    let p = peer.insert(fresh.map_err(Failure::with("bind_failed"))?);
                                    if counting {
                                        p.count_headers(target.send_log.clone());
                                    }
                                    if target.viewers_estimate() {
                                        let cap = target
                                            .viewer_mix
                                            .as_ref()
                                            .zip(self.rec.class)
                                            .and_then(|(m, c)| m.classes.get(c))
                                            .map(|c| c.cap_kbps * 1000)
                                            .filter(|&c| c > 0);
                                        p.set_downlink(cap, Instant::now());
                                    }
                                    p
                                }
                            };
                            let answer = p.answer_offer(&sdp)?;
                            if let Some(s) = sig.as_ref() {
                                s.send(ClientMessage::Answer { sdp: answer }).map_err(Failure::with("ws_closed"))?;
                            }
                        }
                        _ => {}
                    }
                },
                _ = watchdog.tick() => {
                    let now = Instant::now();
                    if self.want_keyframe {
                        // No key frame yet, a second after asking: ask again, as a decoder would.
                        if let Some(p) = peer.as_mut() {
                            p.request_keyframes();
                        }
                    }
                    match joined_at {
                        None if now - self.start > JOIN_TIMEOUT => {
                            return Err(Failure::new("join_timeout", "no `joined` within 10 s"));
                        }
                        Some(t) if self.rec.first_media.is_none() && now - t > MEDIA_TIMEOUT => {
                            return Err(Failure::new("no_media", "no media within 15 s of `joined`"));
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Copy the peer's counters of feedback and the downlink into the record.
    fn note_peer(&mut self, p: &Peer) {
        match self.media_since {
            None if self.rec.first_media.is_some() => self.media_since = Some((Instant::now(), p.sent)),
            None => {}
            Some((t, sent)) => {
                self.rec.feedback_sent = p.sent - sent;
                self.rec.watched = t.elapsed();
            }
        }
        self.rec.rembs = p.rembs;
        self.rec.downlink_drops = p.downlink_drops();
        if *self.ctx.sending.borrow() {
            // Not after the speakers stop: the estimate then falls with what arrives.
            self.rec.estimate = p.estimate().or(self.rec.estimate);
        }
    }

    /// One event of the session; `at` is when the kernel received the datagram behind it.
    fn on_event(&mut self, e: Event, at: Instant) {
        let pkt = match e {
            Event::RtpPacket(pkt) => pkt,
            Event::Connected => {
                self.rec.connected_after.get_or_insert(self.start.elapsed());
                return;
            }
            _ => return,
        };
        let Some(stamp) = Stamp::read(&pkt.payload) else { return };
        self.on_stamp(stamp, at);
    }

    /// One received packet of a speaker stream, decrypted or counted from its header.
    fn on_stamp(&mut self, stamp: Stamp, at: Instant) {
        let now = at;
        if self.rec.first_media.is_none() {
            self.rec.first_media = Some(now - self.start);
            self.ctx.progress.viewers_joined.fetch_add(1, Ordering::Relaxed);
            self.ctx.progress.viewers_settled.fetch_add(1, Ordering::Relaxed);
        }
        if self.rec.first_keyframe.is_none() && stamp.starts_keyframe() {
            self.rec.first_keyframe = Some(now - self.start);
        }
        if let (Some(end), Some(b)) = (self.cut_end, self.rec.blip.as_mut()) {
            if now >= end {
                if b.media_after.is_none() {
                    b.media_after = Some(now - end);
                    self.want_keyframe = true;
                }
                if b.keyframe_after.is_none() && stamp.stream.is_video() && stamp.starts_keyframe() {
                    b.keyframe_after = Some(now - end);
                    self.want_keyframe = false;
                }
            }
        }
        let first_copy = self.rec.record(&stamp, now.saturating_duration_since(self.start));
        let us = now.saturating_duration_since(self.ctx.clock.at(stamp.sent_ns)).as_micros();
        let us = u64::try_from(us).unwrap_or(u64::MAX).max(1);
        self.ctx.latency.borrow_mut().saturating_record(us);
        if let (true, Some(f)) = (first_copy, &self.ctx.fanout) {
            f.borrow_mut().record(&stamp, us);
        }
        self.ctx.recent.borrow_mut().saturating_record(us);
        self.ctx.progress.packets.fetch_add(1, Ordering::Relaxed);
    }
}

/// Readiness of the viewer's socket, or never while it has none.
async fn readable(peer: &Option<Peer>) -> std::io::Result<()> {
    match peer {
        Some(p) => p.readable().await,
        None => std::future::pending().await,
    }
}
