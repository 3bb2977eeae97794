//! A synthetic viewer: joins over WebSocket, answers the server's offers with a str0m session on its own
//! socket, and measures every packet it decrypts.
//!
//! Join time is counted from the start of the WebSocket connect, to the first media packet and to the first
//! packet that starts a key frame (from which a real decoder could show a picture). Every received payload's
//! [`Stamp`] feeds the viewer's [`ViewerRecord`] (loss, duplicates, reordering) and the shard's latency
//! histogram. A viewer that gets no `joined` within 10 s, or no media within 15 s of `joined`, fails with
//! `join_timeout` or `no_media`; a server `error` fails it with the server's code.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dais_proto::{ClientMessage, Role, ServerMessage};
use str0m::Event;

use crate::peer::{Got, Peer};
use crate::shard::Ctx;
use crate::signal::Signal;
use crate::stamp::Stamp;
use crate::stats::ViewerRecord;
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
    let mut v = Viewer { rec: ViewerRecord::default(), start: Instant::now(), ctx: ctx.clone() };
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
}

impl Viewer {
    async fn watch(&mut self, index: usize, leave_at: Option<Instant>) -> Result<(), Failure> {
        let ctx = self.ctx.clone();
        let target = &ctx.target;
        let name = format!("viewer-{index}");
        let mut sig = Signal::connect(&target.url).await.map_err(Failure::with("connect_failed"))?;
        let token = crate::token(target, &name, Role::Viewer)?;
        sig.join(&target.room, &name, Role::Viewer, token).await.map_err(Failure::with("ws_closed"))?;
        let mut sig = sig.spawn();

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
                r = readable(&peer), if resume_reads.is_none() => {
                    r.map_err(Failure::with("socket"))?;
                    if let Some(p) = peer.as_mut() {
                        dirty = p.read(&mut |g, at| match g {
                            Got::Event(e) => self.on_event(e, at),
                            Got::Counted(stamp) => self.on_stamp(stamp, at),
                        })
                        .map_err(Failure::with("media_failed"))?;
                        self.rec.counted = p.counted();
                        if p.counted() > 0 {
                            resume_reads = Some(Instant::now() + COUNTING_READ_PAUSE);
                        }
                    }
                }
                _ = &mut sleep, if peer.is_some() => {
                    if let Some(p) = peer.as_mut() {
                        p.tick(&mut |e, at| self.on_event(e, at)).map_err(Failure::with("media_failed"))?;
                    }
                }
                _ = stop.changed() => {
                    sig.leave().await;
                    return Ok(());
                }
                _ = &mut leave => {
                    sig.leave().await;
                    self.rec.left_early = true;
                    return Ok(());
                }
                r = sig.next() => match r.map_err(Failure::with("ws_closed"))?.into_message()? {
                    ServerMessage::Joined { .. } => {
                        self.rec.joined = true;
                        joined_at = Some(Instant::now());
                        self.rec.joined_after = Some(self.start.elapsed());
                    }
                    ServerMessage::Offer { sdp } => {
                        let p = match peer.as_mut() {
                            Some(p) => p,
                            None => {
                                let p = peer.insert(Peer::bind(target.bind_ip, ctx.clock).map_err(Failure::with("bind_failed"))?);
                                if counting {
                                    p.count_headers(target.send_log.clone());
                                }
                                p
                            }
                        };
                        let answer = p.answer_offer(&sdp)?;
                        sig.send(ClientMessage::Answer { sdp: answer })
                            .map_err(Failure::with("ws_closed"))?;
                    }
                    _ => {}
                },
                _ = watchdog.tick() => {
                    let now = Instant::now();
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
        let first_copy = self.rec.record(&stamp);
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
