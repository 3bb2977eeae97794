//! A synthetic speaker: joins, publishes one Opus-like and one VP8-like stream, and sends stamped packets.
//!
//! Video is sent as frames at a fixed rate, each split into equal packets of at most 1,200 bytes so that the
//! configured bitrate holds; a key frame follows every keyframe request (PLI or FIR) the SFU sends, and the
//! first frame is one. With `--simulcast` the video is three simulcast layers, rids `q`, `h` and `f` at a
//! tenth, a third and all of the video bitrate (150 k, 500 k and 1.5 Mbit/s by default, as a browser's
//! 320x180, 640x360 and 1280x720 encodings), each with its own sequence numbers and its own key frames
//! (a keyframe request names the layer it wants). Audio is one 160-byte packet every 20 ms. Every packet is written through str0m's RTP
//! mode with its own sequence number and a [`Stamp`] of the send time. The speaker answers server offers (it
//! receives the other speakers) but measures nothing it receives: that is the viewers' job.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dais_proto::{ClientMessage, Role, ServerMessage};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::Event;
use tokio::time::MissedTickBehavior;

use crate::peer::{Got, Peer};
use crate::shard::Ctx;
use crate::signal::{Incoming, Signal};
use crate::stamp::{self, Stamp, Stream, FLAG_FRAME_START, FLAG_KEYFRAME, LAYERS};
use crate::Failure;

/// Largest RTP payload a speaker sends.
pub const MAX_PAYLOAD: usize = 1200;
/// Opus-like payload size.
pub const AUDIO_PAYLOAD: usize = 160;
/// One audio packet per this interval.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);

/// The simulcast layers' rids, lowest first.
pub const RIDS: [&str; LAYERS as usize] = ["q", "h", "f"];

/// What every speaker sends.
#[derive(Debug, Clone, Copy)]
pub struct SpeakerPlan {
    /// Video bitrate in bits per second (payload bytes); the top layer's with `simulcast`.
    pub video_bitrate: u64,
    /// Video frames per second.
    pub fps: u32,
    /// Send the video as three simulcast layers.
    pub simulcast: bool,
}

impl SpeakerPlan {
    /// Packets per video frame, and the payload size of each, of the top (or only) layer.
    pub fn frame_layout(&self) -> (usize, usize) {
        self.layout_at(self.video_bitrate)
    }

    fn layout_at(&self, bitrate: u64) -> (usize, usize) {
        let fps = u64::from(self.fps.max(1));
        let frame_bytes = (bitrate / 8 / fps).max(stamp::STAMP_LEN as u64 + 10) as usize;
        let packets = frame_bytes.div_ceil(MAX_PAYLOAD);
        (packets, frame_bytes.div_ceil(packets))
    }

    /// The video streams sent, each with its bitrate: one, or the layers from the lowest.
    pub fn video_streams(&self) -> Vec<(Stream, u64)> {
        if !self.simulcast {
            return vec![(Stream::Video, self.video_bitrate)];
        }
        let b = self.video_bitrate;
        vec![(Stream::Layer(0), b / 10), (Stream::Layer(1), b / 3), (Stream::Layer(2), b)]
    }

    /// Audio payload bits per second.
    pub fn audio_bitrate(&self) -> u64 {
        (AUDIO_PAYLOAD as u64 * 8 * 1000) / AUDIO_INTERVAL.as_millis() as u64
    }

    /// Media packets per second a viewer of one speaker receives (its top or only layer, and audio).
    pub fn packets_per_second(&self) -> f64 {
        let (per_frame, _) = self.frame_layout();
        (per_frame as f64) * f64::from(self.fps) + 1.0 / AUDIO_INTERVAL.as_secs_f64()
    }
}

/// What one speaker did.
#[derive(Debug, Clone, Default)]
pub struct SpeakerRecord {
    /// Its index.
    pub index: u16,
    /// The failure that ended it, as an error code.
    pub failure: Option<String>,
    /// Per stream, the last sequence number sent.
    pub last_seq: BTreeMap<Stream, u64>,
    /// Media packets written.
    pub packets_sent: u64,
    /// When each keyframe request from the SFU arrived.
    pub keyframe_requests: Vec<Instant>,
}

/// Run speaker `index` until the run stops; never fails, the failure is in the record.
pub async fn run(ctx: Rc<Ctx>, index: u16) -> SpeakerRecord {
    let mut s = Speaker { index, rec: SpeakerRecord { index, ..Default::default() }, ..Speaker::default() };
    match s.speak(&ctx).await {
        Ok(()) => {}
        Err(f) => {
            ctx.progress.speakers_failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("dais-load: speaker {index} failed: {f}");
            s.rec.failure = Some(f.code);
        }
    }
    s.rec
}

#[derive(Default)]
struct Speaker {
    index: u16,
    rec: SpeakerRecord,
    audio: Option<(Mid, Option<Pt>)>,
    video: Option<(Mid, Option<Pt>)>,
    connected: bool,
    /// Per video stream (one, or each layer): a key frame is owed.
    keyframe_wanted: [bool; LAYERS as usize],
    frames: u64,
    /// Next sequence number per video stream.
    video_seq: [u64; LAYERS as usize],
    audio_seq: u64,
}

impl Speaker {
    async fn speak(&mut self, ctx: &Ctx) -> Result<(), Failure> {
        let target = &ctx.target;
        let name = format!("speaker-{}", self.index);
        let mut sig = Signal::connect(&target.url).await.map_err(Failure::with("connect_failed"))?;
        let token = crate::token(target, &name, Role::Speaker)?;
        sig.join(&target.room, &name, Role::Speaker, token).await.map_err(Failure::with("ws_closed"))?;
        match tokio::time::timeout(Duration::from_secs(10), sig.next()).await {
            Ok(Ok(Incoming::Message(ServerMessage::Joined { .. }))) => {}
            Ok(Ok(Incoming::Message(ServerMessage::Error { code, message, .. }))) => {
                return Err(Failure::new(code.as_str(), message))
            }
            Ok(other) => return Err(Failure::new("join_failed", format!("{other:?}"))),
            Err(_) => return Err(Failure::new("join_timeout", "no `joined` within 10 s")),
        }

        let mut peer = Peer::bind(target.bind_ip, ctx.clock).map_err(Failure::with("bind_failed"))?;
        let mut pending: Option<SdpPendingOffer> = {
            let mut api = peer.rtc.sdp_api();
            let stream_id = Some(format!("load-{}", self.index));
            let a = api.add_media(MediaKind::Audio, Direction::SendOnly, stream_id.clone(), Some("audio".into()), None);
            let simulcast = target.speaker.simulcast.then(|| {
                let mut s = Simulcast::new();
                for rid in RIDS {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                s
            });
            let v = api.add_media(MediaKind::Video, Direction::SendOnly, stream_id, Some("video".into()), simulcast);
            self.audio = Some((a, None));
            self.video = Some((v, None));
            let (offer, pending) = api.apply().ok_or_else(|| Failure::new("internal", "nothing to offer"))?;
            sig.send(&ClientMessage::Offer { sdp: offer.to_sdp_string() }).await.map_err(Failure::with("ws_closed"))?;
            Some(pending)
        };

        let mut sig = sig.spawn();
        let plan = target.speaker;
        let mut video_tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(plan.fps.max(1))));
        video_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut audio_tick = tokio::time::interval(AUDIO_INTERVAL);
        audio_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut stop = ctx.stop.clone();
        let connect_deadline = Instant::now() + Duration::from_secs(20);

        loop {
            peer.drive(Instant::now(), &mut |e, at| self.on_event(e, at, ctx))
                .map_err(Failure::with("media_failed"))?;
            sleep.as_mut().reset(peer.next_tick().into());
            let live = self.connected && *ctx.sending.borrow();
            if !self.connected && Instant::now() > connect_deadline {
                return Err(Failure::new("ice_timeout", "the session did not connect within 20 s"));
            }
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    sig.leave().await;
                    return Ok(());
                }
                r = sig.next() => match r.map_err(Failure::with("ws_closed"))?.into_message()? {
                    ServerMessage::Answer { sdp } => {
                        let answer = SdpAnswer::from_sdp_string(&sdp).map_err(Failure::with("bad_sdp"))?;
                        let p = pending.take().ok_or_else(|| Failure::new("unexpected_answer", "no offer pending"))?;
                        peer.rtc.sdp_api().accept_answer(p, answer).map_err(Failure::with("bad_sdp"))?;
                        peer.nudge().map_err(Failure::with("media_failed"))?;
                        self.audio = self.audio.map(|(m, _)| (m, peer.negotiated_pt(m, Codec::Opus)));
                        self.video = self.video.map(|(m, _)| (m, peer.negotiated_pt(m, Codec::Vp8)));
                    }
                    ServerMessage::Offer { sdp } => {
                        let answer = peer.answer_offer(&sdp)?;
                        sig.send(ClientMessage::Answer { sdp: answer })
                            .map_err(Failure::with("ws_closed"))?;
                    }
                    _ => {}
                },
                r = peer.readable() => {
                    r.map_err(Failure::with("socket"))?;
                    peer.read(&mut |g, at| {
                        if let Got::Event(e) = g {
                            self.on_event(e, at, ctx)
                        }
                    }).map_err(Failure::with("media_failed"))?;
                }
                _ = &mut sleep => peer.tick(&mut |g, at| if let Got::Event(e) = g { self.on_event(e, at, ctx) })
                    .map_err(Failure::with("media_failed"))?,
                _ = video_tick.tick(), if live => self.send_frame(&mut peer, ctx, plan),
                _ = audio_tick.tick(), if live => self.send_audio(&mut peer, ctx),
            }
        }
    }

    /// One event of the session; `at` is when the kernel received the datagram behind it (or now).
    fn on_event(&mut self, e: Event, at: Instant, ctx: &Ctx) {
        match e {
            Event::Connected if !self.connected => {
                self.connected = true;
                ctx.progress.speakers_live.fetch_add(1, Ordering::Relaxed);
            }
            Event::KeyframeRequest(req) => {
                match req.rid.and_then(|r| RIDS.iter().position(|x| Rid::from(*x) == r)) {
                    Some(layer) => self.keyframe_wanted[layer] = true,
                    None => self.keyframe_wanted = [true; LAYERS as usize],
                }
                // The kernel's receive time: how the SFU spaced its requests, not when this thread got
                // round to them.
                self.rec.keyframe_requests.push(at);
            }
            _ => {}
        }
    }

    /// One frame of every video stream (the same picture in each layer).
    fn send_frame(&mut self, peer: &mut Peer, ctx: &Ctx, plan: SpeakerPlan) {
        let Some((mid, Some(pt))) = self.video else { return };
        let rtp_time = (self.frames * 90_000 / u64::from(plan.fps.max(1))) as u32;
        for (n, (stream, bitrate)) in plan.video_streams().into_iter().enumerate() {
            let Some(wanted) = self.keyframe_wanted.get_mut(n) else { break };
            let key = std::mem::take(wanted) || self.frames == 0;
            let (packets, size) = plan.layout_at(bitrate);
            for i in 0..packets {
                let mut flags = if key { FLAG_KEYFRAME } else { 0 };
                if i == 0 {
                    flags |= FLAG_FRAME_START;
                }
                if !self.send(peer, ctx, (mid, pt), stream, flags, size, rtp_time, i + 1 == packets) {
                    break;
                }
            }
        }
        self.frames += 1;
    }

    fn send_audio(&mut self, peer: &mut Peer, ctx: &Ctx) {
        let Some((mid, Some(pt))) = self.audio else { return };
        let rtp_time = self.audio_seq.wrapping_mul(960) as u32;
        let first = self.audio_seq == 0;
        self.send(peer, ctx, (mid, pt), Stream::Audio, 0, AUDIO_PAYLOAD, rtp_time, first);
    }

    /// Stamp the next packet of `stream`, log it for header-counting viewers and write it on `mid`
    /// (video is resent on NACK). False if the m-line has no send stream.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        peer: &mut Peer,
        ctx: &Ctx,
        (mid, pt): (Mid, Pt),
        stream: Stream,
        flags: u8,
        size: usize,
        rtp_time: u32,
        marker: bool,
    ) -> bool {
        let now = Instant::now();
        let layer = stream.layer();
        let slot = usize::from(layer.unwrap_or(0));
        let seq = match stream {
            Stream::Audio => self.audio_seq,
            _ => self.video_seq.get(slot).copied().unwrap_or(0),
        };
        let stamp = Stamp { speaker: self.index, stream, flags, seq, sent_ns: ctx.clock.ns(now) };
        let payload: Arc<[u8]> = stamp::payload(&stamp, size).into();
        ctx.target.send_log.record(&stamp);
        let mut api = peer.rtc.direct_api();
        let rid = layer.and_then(|l| RIDS.get(usize::from(l))).map(|r| Rid::from(*r));
        let Some(tx) = api.stream_tx_by_mid(mid, rid) else { return false };
        tx.write_rtp(
            RtpWrite::new(pt, SeqNo::from(seq), rtp_time, now, payload).marker(marker).nackable(stream.is_video()),
        );
        self.rec.last_seq.insert(stream, seq);
        match stream {
            Stream::Audio => self.audio_seq += 1,
            _ => {
                if let Some(s) = self.video_seq.get_mut(slot) {
                    *s += 1;
                }
            }
        }
        self.rec.packets_sent += 1;
        true
    }
}
