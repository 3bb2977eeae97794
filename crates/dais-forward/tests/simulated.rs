//! Simulated-network scenario tests for the forwarding core.
//!
//! One publisher sends VP8 video (30 fps, frames of 1..=5 packets, RFC 7741 descriptors with a 15-bit
//! picture id, a keyframe every 2 s and on request) and Opus audio (50 packets/s) through a seeded path with
//! loss, order-preserving queueing jitter, reordering (a packet held back within a window) and duplicates
//! into a [`Router`]. Over a 60 s session 58 participants join (a burst at the start, the rest spread out,
//! one right at the restart) and 10 leave (2 of them while still waiting for a keyframe); mid-stream the
//! publisher restarts both streams (new SSRC, new random seq and timestamp bases, a keyframe first), and on
//! the lossy paths the last packets of the old streams straggle in after the first packets of the new ones.
//! Keyframe requests reach the publisher RTT/2 later (the feedback path loses nothing); the next frame it
//! captures is a keyframe.
//!
//! Time is virtual (a base `Instant` plus microseconds; nothing sleeps; `handle_timeout` runs exactly when
//! `poll_timeout` says), every run is a pure function of its seed, and a whole session takes well under a
//! second. Every router call is checked as it happens
//! (each live consumer gets exactly one output or one counted drop per packet); every consumer's output is
//! checked afterwards against what was published and what the path did to it (see [`Sim::check`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use dais_forward::{
    is_keyframe_start, Codec, ConsumerId, ConsumerSpec, DropReason, KeyframeKind, LayerId, MediaExt, MediaKind, Output,
    Payload, ProducerId, ProducerSpec, Router, RouterConfig, RtpIn, RtpOut,
};

const MS: u64 = 1_000;
const SEC: u64 = 1_000_000;

/// Virtual session length: the publisher captures nothing after this.
const SESSION: u64 = 60 * SEC;
/// The simulation stops here; the last deliveries and timers are long done.
const END: u64 = SESSION + SEC;
const FPS: u64 = 30;
/// Longest gap between two captures (frame k is captured at k s / 30, rounded down).
const FRAME: u64 = SEC.div_ceil(FPS);
const KEYFRAME_PERIOD: u64 = 2 * SEC;
/// Round trip between router and publisher; one way is half of it plus the path's jitter.
const RTT: u64 = 40 * MS;
const PTIME: u64 = 20 * MS;
/// Spacing of the packets of one frame on the wire.
const PACING: u64 = 150;
const VIDEO_PT: u8 = 96;
const AUDIO_PT: u8 = 111;
const VIDEO_CLOCK: u32 = 90_000;
const AUDIO_CLOCK: u32 = 48_000;
const VIDEO: usize = 0;
const AUDIO: usize = 1;
const SEEDS: [u64; 5] = [1, 2, 3, 0xdead_beef, 0x5eed_0fda_1500];

/// What the network between publisher and router does. Probabilities are in parts per million.
#[derive(Debug, Clone, Copy)]
struct Path {
    loss_ppm: u64,
    /// One-way delay is RTT / 2 plus up to this much queueing jitter; jitter alone never reorders.
    jitter: u64,
    /// A held packet arrives 1..=`reorder_window` µs late and is overtaken by the packets behind it.
    reorder_ppm: u64,
    reorder_window: u64,
    /// A duplicated packet arrives a second time, up to `reorder_window` after the first copy.
    duplicate_ppm: u64,
    /// Hold half the packets sent in the 60 ms before the restart by 40..=100 ms, so old-SSRC packets
    /// arrive after the new stream began.
    straggle_at_restart: bool,
}

const CLEAN: Path =
    Path { loss_ppm: 0, jitter: 0, reorder_ppm: 0, reorder_window: 0, duplicate_ppm: 0, straggle_at_restart: false };

const fn lossy(loss_ppm: u64) -> Path {
    Path {
        loss_ppm,
        jitter: 30 * MS,
        reorder_ppm: 20_000,
        reorder_window: 50 * MS,
        duplicate_ppm: 10_000,
        straggle_at_restart: true,
    }
}

/// xorshift64*, seeded; no external crates.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`; 0 for `n == 0`.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, ppm: u64) -> bool {
        self.below(1_000_000) < ppm
    }
}

/// One packet the publisher sent, and what the path did with it.
#[derive(Debug)]
struct Published {
    media: usize,
    /// 0 before the restart, 1 after.
    epoch: usize,
    ssrc: u32,
    /// The publisher's own extended sequence number in its epoch; the wire value is `ext as u16`.
    ext: u64,
    ts: u32,
    marker: bool,
    key_start: bool,
    payload: Payload,
    sent: u64,
    lost: bool,
    /// Extra reorder delay of the first copy (0: not held).
    hold: u64,
    /// (router step, virtual time) of each delivery; two for a duplicate.
    arrivals: Vec<(u64, u64)>,
}

/// One stream of the publisher, restarted with new bases at the restart.
#[derive(Debug)]
struct Stream {
    ssrc: u32,
    seq_base: u64,
    ts_base: u32,
    /// Packets sent in this epoch.
    count: u64,
    /// Frames (video) or packets (audio) in this epoch, for timestamps.
    units: u64,
    epoch: usize,
    /// Ids of the published packets of each epoch, indexed by `ext - seq_base`.
    ids: Vec<Vec<usize>>,
    bases: Vec<u64>,
}

impl Stream {
    fn new(rng: &mut Rng, epoch: usize, mut ids: Vec<Vec<usize>>, mut bases: Vec<u64>) -> Self {
        let seq_base = rng.below(1 << 16);
        ids.push(Vec::new());
        bases.push(seq_base);
        Stream { ssrc: rng.next() as u32, seq_base, ts_base: rng.next() as u32, count: 0, units: 0, epoch, ids, bases }
    }
}

#[derive(Debug, Clone, Copy)]
struct Out {
    step: u64,
    t: u64,
    seq: u64,
    ts: u32,
    id: usize,
}

/// Test-side record of one consumer.
#[derive(Debug)]
struct Track {
    media: usize,
    ssrc: u32,
    pt: u8,
    initial_seq: u16,
    join_step: u64,
    join_t: u64,
    leave_step: u64,
    leave_t: u64,
    outs: Vec<Out>,
    /// Packets delivered after this consumer started that it did not get: (step, published id).
    before_start: Vec<(u64, usize)>,
}

#[derive(Debug, Clone, Copy)]
struct Participant {
    join: u64,
    leave: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    RequestArrives,
    Restart,
    VideoFrame(u64),
    AudioPacket(u64),
    Deliver(usize),
    Join(usize),
    Leave(usize),
}

impl Ev {
    /// Order of events at the same instant.
    fn class(self) -> u8 {
        match self {
            Ev::RequestArrives => 0,
            Ev::Restart => 1,
            Ev::VideoFrame(_) | Ev::AudioPacket(_) => 2,
            Ev::Deliver(_) => 3,
            Ev::Join(_) | Ev::Leave(_) => 4,
        }
    }
}

/// What a run saw, for non-vacuity checks and the summary line.
#[derive(Debug, Default)]
struct Summary {
    sent: u64,
    lost: u64,
    held: u64,
    duplicated: u64,
    arrivals: u64,
    outputs: u64,
    holes_lost: u64,
    holes_gated: u64,
    before_start: u64,
    stale: u64,
    requests: u64,
    rebased: u64,
    video_started: u64,
    strict: u64,
    waited_for_retry: u64,
    max_wait: u64,
}

#[derive(Debug)]
struct Sim {
    rng: Rng,
    path: Path,
    config: RouterConfig,
    base: Instant,
    router: Router,
    producers: [ProducerId; 2],
    now: u64,
    step: u64,
    tiebreak: u64,
    events: BinaryHeap<Reverse<(u64, u8, u64, Ev)>>,
    published: Vec<Published>,
    streams: [Stream; 2],
    restart_at: u64,
    last_key: Option<u64>,
    key_requested: bool,
    picture_id: u16,
    /// Latest in-order delivery time: jitter never lets a packet overtake the one before it.
    fifo: u64,
    participants: Vec<Participant>,
    /// Video and audio track of each participant once joined.
    joined: Vec<Option<[usize; 2]>>,
    tracks: Vec<Track>,
    /// Track of each consumer, indexed by the (dense) consumer id.
    track_of: Vec<usize>,
    live: [Vec<usize>; 2],
    /// (router step, virtual time) of every `Output::KeyframeRequest`.
    requests: Vec<(u64, u64)>,
    /// Router step of the first delivery of each media's new (post-restart) stream.
    switch_step: [Option<u64>; 2],
    /// Virtual time of the first delivery of the new video stream.
    switch_t: Option<u64>,
    /// (step, published id) of every keyframe start the router saw from the current stream.
    key_arrivals: Vec<(u64, usize)>,
    stale: u64,
    duplicated: u64,
}

fn payload_id(payload: &[u8]) -> usize {
    let tail: [u8; 8] = payload[payload.len() - 8..].try_into().expect("every payload ends in its 8-byte id");
    u64::from_be_bytes(tail) as usize
}

/// RTP ticks the router adds across a restart for `elapsed_us` of silence (at least 1).
fn ticks(clock: u32, elapsed_us: u64) -> u32 {
    let t = u128::from(clock) * u128::from(elapsed_us) / u128::from(SEC);
    u32::try_from(t).unwrap_or(u32::MAX).max(1)
}

impl Sim {
    fn new(path: Path, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let base = Instant::now();
        let config = RouterConfig::default();
        let mut router = Router::new(config.clone());
        let video = router.add_producer(
            base,
            ProducerSpec {
                kind: MediaKind::Video,
                clock_rate: VIDEO_CLOCK,
                payload_types: vec![(VIDEO_PT, Codec::Vp8)],
                layers: 1,
            },
        );
        let audio = router.add_producer(
            base,
            ProducerSpec {
                kind: MediaKind::Audio,
                clock_rate: AUDIO_CLOCK,
                payload_types: vec![(AUDIO_PT, Codec::Opus)],
                layers: 1,
            },
        );
        let streams =
            [Stream::new(&mut rng, 0, Vec::new(), Vec::new()), Stream::new(&mut rng, 0, Vec::new(), Vec::new())];
        let restart_at = 30 * SEC + rng.below(5 * SEC);

        // A burst of 10 at the start, 40 more over the first 20 s, 8 later (one right at the restart).
        let mut participants = Vec::new();
        for i in 0..58 {
            let join = match i {
                0..10 => rng.below(SEC),
                10..50 => rng.range(SEC, 20 * SEC),
                50 => restart_at + rng.below(50 * MS),
                _ => rng.range(20 * SEC, 58 * SEC),
            };
            participants.push(Participant { join, leave: None });
        }
        // 10 of the first 50 leave: 2 within 300 ms (usually still waiting for a keyframe), 8 later.
        let mut leavers = Vec::new();
        while leavers.len() < 10 {
            let i = rng.below(50) as usize;
            if !leavers.contains(&i) {
                leavers.push(i);
            }
        }
        for (n, &i) in leavers.iter().enumerate() {
            let join = participants[i].join;
            participants[i].leave =
                Some(if n < 2 { join + rng.below(300 * MS) } else { rng.range(join + SEC, SESSION - SEC) });
        }

        let mut sim = Sim {
            rng,
            path,
            config,
            base,
            router,
            producers: [video, audio],
            now: 0,
            step: 0,
            tiebreak: 0,
            events: BinaryHeap::new(),
            published: Vec::new(),
            streams,
            restart_at,
            last_key: None,
            key_requested: false,
            picture_id: 0,
            fifo: 0,
            joined: vec![None; participants.len()],
            participants,
            tracks: Vec::new(),
            track_of: Vec::new(),
            live: [Vec::new(), Vec::new()],
            requests: Vec::new(),
            switch_step: [None, None],
            switch_t: None,
            key_arrivals: Vec::new(),
            stale: 0,
            duplicated: 0,
        };
        sim.schedule(0, Ev::VideoFrame(0));
        sim.schedule(3 * MS, Ev::AudioPacket(0));
        sim.schedule(restart_at, Ev::Restart);
        for i in 0..sim.participants.len() {
            let Participant { join, leave } = sim.participants[i];
            sim.schedule(join, Ev::Join(i));
            if let Some(leave) = leave {
                sim.schedule(leave, Ev::Leave(i));
            }
        }
        sim
    }

    fn at(&self, t: u64) -> Instant {
        self.base + Duration::from_micros(t)
    }

    fn schedule(&mut self, t: u64, ev: Ev) {
        self.tiebreak += 1;
        self.events.push(Reverse((t, ev.class(), self.tiebreak, ev)));
    }

    /// Run the session to the end: events and router timers in virtual-time order.
    fn run(&mut self) {
        loop {
            let next_event = self.events.peek().map(|Reverse((t, ..))| *t);
            let next_timer = self.router.poll_timeout().map(|i| i.duration_since(self.base).as_micros() as u64);
            match (next_event, next_timer) {
                (_, Some(t)) if t <= END && next_event.is_none_or(|e| t <= e) => {
                    assert!(t >= self.now, "poll_timeout went back in time");
                    self.now = t;
                    self.step += 1;
                    self.router.handle_timeout(self.at(t));
                    assert_eq!(self.drain(), 0, "timeouts send no media");
                    let again = self.router.poll_timeout().map(|i| i.duration_since(self.base).as_micros() as u64);
                    assert!(again.is_none_or(|a| a > t), "handle_timeout left its own timer due");
                }
                (Some(t), _) if t <= END => {
                    let Reverse((t, _, _, ev)) = self.events.pop().expect("peeked");
                    self.now = t;
                    self.handle(ev);
                }
                _ => break,
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::RequestArrives => self.key_requested = true,
            Ev::Restart => {
                for m in [VIDEO, AUDIO] {
                    let old = &mut self.streams[m];
                    let (epoch, ids, bases) =
                        (old.epoch + 1, std::mem::take(&mut old.ids), std::mem::take(&mut old.bases));
                    self.streams[m] = Stream::new(&mut self.rng, epoch, ids, bases);
                }
                // A restarted encoder starts with a keyframe.
                self.key_requested = true;
            }
            Ev::VideoFrame(k) => {
                self.video_frame();
                let next = (k + 1) * SEC / FPS;
                if next < SESSION {
                    self.schedule(next, Ev::VideoFrame(k + 1));
                }
            }
            Ev::AudioPacket(k) => {
                let mut payload = vec![0x78];
                self.send(AUDIO, false, false, self.now, &mut payload);
                let next = 3 * MS + (k + 1) * PTIME;
                if next < SESSION {
                    self.schedule(next, Ev::AudioPacket(k + 1));
                }
            }
            Ev::Deliver(id) => self.deliver(id),
            Ev::Join(i) => self.join(i),
            Ev::Leave(i) => self.leave(i),
        }
    }

    fn video_frame(&mut self) {
        let t = self.now;
        let key = self.key_requested || self.last_key.is_none_or(|l| t - l >= KEYFRAME_PERIOD);
        if key {
            self.key_requested = false;
            self.last_key = Some(t);
        }
        let n = if key { self.rng.range(3, 5) } else { self.rng.range(1, 5) };
        let pid = self.picture_id & 0x7fff;
        self.picture_id = self.picture_id.wrapping_add(1);
        for j in 0..n {
            let first = j == 0;
            // X=1 (S=1, PID=0 on the first packet), I=1 with a 15-bit picture id.
            let mut payload = vec![if first { 0x90 } else { 0x80 }, 0x80, 0x80 | (pid >> 8) as u8, pid as u8];
            if first && key {
                // Frame tag with P=0 (key frame), start code, 640x480.
                payload.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
            } else if first {
                payload.extend_from_slice(&[0x11, 0x02, 0x00]);
            }
            self.send(VIDEO, j == n - 1, first && key, t + j * PACING, &mut payload);
        }
        self.streams[VIDEO].units += 1;
    }

    /// Publish one packet (filler and the id are appended to `payload`) and put it on the path.
    fn send(&mut self, media: usize, marker: bool, key_start: bool, sent: u64, payload: &mut Vec<u8>) {
        let id = self.published.len();
        let filler = self.rng.range(16, 200);
        payload.extend((0..filler).map(|_| self.rng.next() as u8));
        payload.extend_from_slice(&(id as u64).to_be_bytes());
        let s = &mut self.streams[media];
        let ext = s.seq_base + s.count;
        s.count += 1;
        let step = if media == VIDEO { 3000 } else { 960 };
        let ts = s.ts_base.wrapping_add((s.units as u32).wrapping_mul(step));
        if media == AUDIO {
            s.units += 1;
        }
        s.ids[s.epoch].push(id);
        let mut p = Published {
            media,
            epoch: s.epoch,
            ssrc: s.ssrc,
            ext,
            ts,
            marker,
            key_start,
            payload: Payload::from(std::mem::take(payload)),
            sent,
            lost: false,
            hold: 0,
            arrivals: Vec::new(),
        };
        assert_eq!(key_start, media == VIDEO && is_keyframe_start(Codec::Vp8, &p.payload));

        let path = self.path;
        if self.rng.chance(path.loss_ppm) {
            p.lost = true;
        } else {
            let arrive = self.fifo.max(sent + RTT / 2 + self.rng.below(path.jitter + 1));
            self.fifo = arrive;
            let straggler = path.straggle_at_restart && sent < self.restart_at && sent + 60 * MS >= self.restart_at;
            if straggler && self.rng.chance(500_000) {
                p.hold = self.rng.range(40 * MS, 100 * MS);
            } else if self.rng.chance(path.reorder_ppm) {
                p.hold = self.rng.range(1, path.reorder_window);
            }
            self.schedule(arrive + p.hold, Ev::Deliver(id));
            if self.rng.chance(path.duplicate_ppm) {
                self.duplicated += 1;
                let again = arrive + p.hold + self.rng.below(path.reorder_window + 1);
                self.schedule(again, Ev::Deliver(id));
            }
        }
        self.published.push(p);
    }

    fn join(&mut self, i: usize) {
        let mut pair = [0; 2];
        for m in [VIDEO, AUDIO] {
            let (codec, pt) = if m == VIDEO {
                (Codec::Vp8, self.rng.range(96, 127) as u8)
            } else {
                (Codec::Opus, self.rng.range(96, 127) as u8)
            };
            let spec = ConsumerSpec {
                sink: self.tracks.len() as u64,
                ssrc: self.rng.next() as u32,
                payload_types: vec![(codec, pt)],
                initial_seq: self.rng.next() as u16,
            };
            self.step += 1;
            let track = Track {
                media: m,
                ssrc: spec.ssrc,
                pt,
                initial_seq: spec.initial_seq,
                join_step: self.step,
                join_t: self.now,
                leave_step: u64::MAX,
                leave_t: u64::MAX,
                outs: Vec::with_capacity(8192),
                before_start: Vec::new(),
            };
            let id = self.router.add_consumer(self.at(self.now), self.producers[m], spec).expect("codec in common");
            assert_eq!(self.drain(), 0, "joining sends no media");
            pair[m] = self.tracks.len();
            assert_eq!(id, ConsumerId(self.track_of.len() as u32), "consumer ids are dense");
            self.track_of.push(self.tracks.len());
            self.live[m].push(self.tracks.len());
            self.tracks.push(track);
        }
        self.joined[i] = Some(pair);
    }

    fn leave(&mut self, i: usize) {
        let pair = self.joined[i].expect("leaves after joining");
        for (m, ti) in pair.into_iter().enumerate() {
            let id = ConsumerId(self.track_of.iter().position(|&t| t == ti).expect("joined") as u32);
            self.step += 1;
            self.router.remove_consumer(id);
            self.tracks[ti].leave_step = self.step;
            self.tracks[ti].leave_t = self.now;
            self.live[m].retain(|&t| t != ti);
        }
    }

    /// One packet into the router, checked on the spot: every live consumer of its producer gets exactly
    /// one output or exactly one counted drop, and the drop reason follows from the consumer's state.
    fn deliver(&mut self, id: usize) {
        self.step += 1;
        let (step, now) = (self.step, self.now);
        let p = &mut self.published[id];
        p.arrivals.push((step, now));
        let m = p.media;
        if p.epoch > 0 && self.switch_step[m].is_none() {
            self.switch_step[m] = Some(step);
            if m == VIDEO {
                self.switch_t = Some(now);
            }
        }
        let stale = p.epoch == 0 && self.switch_step[m].is_some();
        if p.key_start && !stale {
            self.key_arrivals.push((step, id));
        }
        let packet = RtpIn {
            layer: LayerId(0),
            ssrc: p.ssrc,
            seq: p.ext as u16,
            timestamp: p.ts,
            payload_type: if m == VIDEO { VIDEO_PT } else { AUDIO_PT },
            marker: p.marker,
            payload: Payload::clone(&p.payload),
            ext: MediaExt::default(),
            wallclock: self.at(now),
        };
        let before = self.router.drops().clone();
        self.router.handle_rtp(self.at(now), self.producers[m], packet);
        let forwarded = self.drain();

        let (mut waiting, mut before_start) = (0, 0);
        if stale {
            // Late packets of the replaced stream arrive well within the router's stale-SSRC window.
            assert_eq!(forwarded, 0, "a packet of the previous stream was forwarded after the new stream began");
            self.stale += 1;
        } else {
            for &ti in &self.live[m] {
                let t = &mut self.tracks[ti];
                if t.outs.last().is_some_and(|o| o.step == step) {
                    continue;
                }
                if t.outs.is_empty() {
                    assert_eq!(m, VIDEO, "audio consumers are never gated");
                    waiting += 1;
                } else {
                    before_start += 1;
                    t.before_start.push((step, id));
                }
            }
        }
        let after = self.router.drops();
        let delta = |r: DropReason| after.get(r) - before.get(r);
        assert_eq!(delta(DropReason::WaitingForKeyframe), waiting, "waiting_for_keyframe at step {step}");
        assert_eq!(delta(DropReason::BeforeStart), before_start, "before_start at step {step}");
        assert_eq!(delta(DropReason::StaleSsrc), u64::from(stale), "stale drop at step {step}");
        assert_eq!(after.total() - before.total(), waiting + before_start + u64::from(stale));
    }

    /// Drain the router; checks every packet against what was published and returns how many there were.
    fn drain(&mut self) -> u64 {
        let mut forwarded = 0;
        while let Some(out) = self.router.poll_output() {
            match out {
                Output::Rtp(o) => {
                    forwarded += 1;
                    self.record(o);
                }
                Output::KeyframeRequest { producer, kind, .. } => {
                    assert_eq!(producer, self.producers[VIDEO], "keyframe request for audio");
                    assert_eq!(kind, KeyframeKind::Pli, "nobody asked for a FIR");
                    self.requests.push((self.step, self.now));
                    self.schedule(self.now + RTT / 2, Ev::RequestArrives);
                }
                other => panic!("no estimate and no tile, so no pause or resume: {other:?}"),
            }
        }
        forwarded
    }

    fn record(&mut self, o: RtpOut) {
        let ti = *self.track_of.get(o.consumer.0 as usize).expect("outputs name known consumers");
        let id = payload_id(&o.payload);
        let p = &self.published[id];
        let t = &mut self.tracks[ti];
        assert_eq!(t.leave_step, u64::MAX, "output for a removed consumer");
        assert_eq!(p.media, t.media, "output on the other producer's consumer");
        assert_eq!((o.ssrc, o.payload_type), (t.ssrc, t.pt), "consumer's own SSRC and PT");
        assert_eq!(o.payload, p.payload, "payload byte-identical to the published packet");
        assert_eq!(o.payload.as_ptr(), p.payload.as_ptr(), "payload shared, not copied");
        assert_eq!(o.marker, p.marker);
        assert_eq!(o.keyframe, p.key_start);
        assert!(t.outs.last().is_none_or(|l| l.step < self.step), "two outputs for one consumer from one packet");
        t.outs.push(Out { step: self.step, t: self.now, seq: o.seq, ts: o.timestamp, id });
    }

    /// The published packet of `media`'s `epoch` with extended seq `ext`.
    fn lookup(&self, media: usize, epoch: usize, ext: u64) -> &Published {
        let s = &self.streams[media];
        let id = s.ids[epoch][(ext - s.bases[epoch]) as usize];
        &self.published[id]
    }

    /// Checks everything that can only be judged after the session; returns what the run saw.
    fn check(&self) -> Summary {
        let mut sum = Summary::default();
        for p in &self.published {
            sum.sent += 1;
            sum.lost += u64::from(p.lost);
            sum.held += u64::from(p.hold > 0);
            sum.arrivals += p.arrivals.len() as u64;
        }
        sum.duplicated = self.duplicated;
        sum.stale = self.stale;
        sum.requests = self.requests.len() as u64;

        // Upstream keyframe requests: at most one per interval, however many consumers join.
        for w in self.requests.windows(2) {
            let apart = w[1].1 - w[0].1;
            assert!(apart >= self.config.keyframe_request_interval.as_micros() as u64, "requests {apart} µs apart");
        }
        // ... and none without a reason: a video consumer that has not started (still there, or left
        // waiting within the last interval, while its request was held back), or a restart within the last
        // interval that no keyframe has answered yet.
        let interval = self.config.keyframe_request_interval.as_micros() as u64;
        for &(r_step, r) in &self.requests {
            let waiting = self.tracks.iter().filter(|t| t.media == VIDEO).any(|t| {
                let start = t.outs.first().map_or(u64::MAX, |o| o.step);
                t.join_step <= r_step && start > r_step && t.leave_t.saturating_add(interval) > r
            });
            let restart = self.switch_step[VIDEO].is_some_and(|s| {
                let t = self.switch_t.expect("set with the switch step");
                s <= r_step && t + interval > r && !self.key_arrivals.iter().any(|&(k, _)| k >= s && k < r_step)
            });
            assert!(waiting || restart, "keyframe request at {r} µs without a reason");
        }
        let stats = self.router.stats();
        assert_eq!(stats.keyframe_requests_sent, sum.requests);
        assert_eq!(stats.packets_in, sum.arrivals);

        for t in &self.tracks {
            sum.outputs += t.outs.len() as u64;
            sum.before_start += t.before_start.len() as u64;
            if t.media == VIDEO {
                self.check_start(t, &mut sum);
            }
            if !t.outs.is_empty() {
                self.check_rewrite(t, &mut sum);
            }
        }
        assert_eq!(stats.packets_out, sum.outputs);

        // Drop counters by reason: what the per-packet checks expected, and nothing else.
        let d = self.router.drops();
        assert_eq!(d.get(DropReason::BeforeStart), sum.before_start);
        assert_eq!(d.get(DropReason::StaleSsrc), sum.stale);
        let mut video_steps: Vec<u64> = self
            .published
            .iter()
            .filter(|p| p.media == VIDEO)
            .flat_map(|p| p.arrivals.iter().map(move |&(s, _)| (s, p)))
            .filter(|&(s, p)| !self.is_stale(p, s))
            .map(|(s, _)| s)
            .collect();
        video_steps.sort_unstable();
        let waiting: u64 = self
            .tracks
            .iter()
            .filter(|t| t.media == VIDEO)
            .map(|t| {
                let until = t.outs.first().map_or(t.leave_step, |o| o.step);
                let from = video_steps.partition_point(|&s| s <= t.join_step);
                let to = video_steps.partition_point(|&s| s < until);
                to.saturating_sub(from) as u64
            })
            .sum();
        assert_eq!(d.get(DropReason::WaitingForKeyframe), waiting, "waiting_for_keyframe only before each start");
        assert_eq!(d.total(), waiting + sum.before_start + sum.stale, "no other drop reason: {d:?}");
        sum
    }

    fn is_stale(&self, p: &Published, step: u64) -> bool {
        p.epoch == 0 && self.switch_step[p.media].is_some_and(|s| step > s)
    }

    /// A video consumer starts on the first keyframe start the router sees after it joined, and that comes
    /// within the bound the core can guarantee.
    ///
    /// The bound: a join at J gets a request out at R <= J + keyframe_request_interval (at once if the
    /// window is open, else when it closes, unless a keyframe arrives first and starts the consumer). The
    /// publisher hears it at R + RTT/2, captures a keyframe within one frame, and its first packet reaches
    /// the router RTT/2 + jitter later. So S - J <= interval + RTT + frame + max jitter (+ the reorder hold,
    /// if that packet was held). The core cannot see a keyframe whose first packet was lost; a consumer
    /// still waiting asks again one keyframe_retry_interval after the last request, so each lost keyframe
    /// start can cost one retry interval more. The periodic 2 s keyframe never enters the bound.
    fn check_start(&self, t: &Track, sum: &mut Summary) {
        let first_key = self.key_arrivals.iter().find(|&&(s, _)| s > t.join_step);
        match (t.outs.first(), first_key) {
            (Some(o), Some(&(s, id))) => assert_eq!((o.step, o.id), (s, id), "starts on the first keyframe start"),
            (None, Some(&(s, _))) => assert!(s > t.leave_step, "a keyframe came and the consumer did not start"),
            (Some(_), None) => unreachable!("started without a keyframe"),
            (None, None) => {}
        }
        let Some(first) = t.outs.first() else {
            return;
        };
        let p = &self.published[first.id];
        assert!(p.key_start && is_keyframe_start(Codec::Vp8, &p.payload), "first video packet is a keyframe start");
        sum.video_started += 1;
        let wait = first.t - t.join_t;
        sum.max_wait = sum.max_wait.max(wait);

        // Keyframe starts the publisher sent while this consumer could have been waiting for them.
        let from = t.join_t.saturating_sub(RTT / 2 + self.path.jitter + 100 * MS);
        let candidates = self.published.iter().filter(|p| p.key_start && p.sent >= from && p.sent <= first.t);
        let (lost, hold) = candidates.fold((0, 0), |(l, h), p| (l + u64::from(p.lost), h.max(p.hold)));
        let interval = self.config.keyframe_request_interval.as_micros() as u64;
        let retry = self.config.keyframe_retry_interval.as_micros() as u64;
        let bound = interval + RTT + FRAME + self.path.jitter + hold + lost * retry;
        assert!(wait <= bound, "waited {wait} µs for a keyframe, bound {bound} µs ({lost} keyframe starts lost)");
        if lost == 0 && hold == 0 {
            sum.strict += 1;
        }
        if wait > interval + RTT + FRAME + self.path.jitter + hold {
            sum.waited_for_retry += 1;
        }
    }

    /// SSRC, seq and timestamp rewrite of one consumer: see the assertion messages.
    fn check_rewrite(&self, t: &Track, sum: &mut Summary) {
        let outs = &t.outs;
        assert_eq!(outs[0].seq, u64::from(t.initial_seq), "first packet carries the consumer's initial seq");
        let pubd = |o: &Out| &self.published[o.id];
        assert!(outs.iter().all(|o| o.step > t.join_step && o.step < t.leave_step));
        assert!(outs.iter().all(|o| o.t >= t.join_t && o.t <= t.leave_t));

        // Strictly increasing for in-order input.
        let (mut max_key, mut max_seq) = ((0, 0), 0);
        for (i, o) in outs.iter().enumerate() {
            let p = pubd(o);
            let key = (p.epoch, p.ext);
            if i == 0 || key > max_key {
                assert!(i == 0 || o.seq > max_seq, "in-order input, out seq {} after {max_seq}", o.seq);
                max_key = key;
                max_seq = o.seq;
            }
        }

        // Order-preserving: sorted by what was published, out seqs strictly increase; a duplicate gets the
        // same seq and timestamp again.
        let mut sorted: Vec<&Out> = outs.iter().collect();
        sorted.sort_by_key(|o| (pubd(o).epoch, pubd(o).ext, o.step));
        for w in sorted.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.id == b.id {
                assert_eq!((a.seq, a.ts), (b.seq, b.ts), "a duplicate is rewritten identically");
            } else {
                assert!(a.seq < b.seq, "out seq order follows publish order");
                assert!((b.ts.wrapping_sub(a.ts) as i32) >= 0, "timestamps never go backwards");
            }
        }

        // Per stream epoch: constant seq and timestamp offsets; epochs follow each other (no flip-flop).
        let mut segments: Vec<(usize, Vec<&Out>)> = Vec::new();
        for o in outs {
            let e = pubd(o).epoch;
            match segments.last_mut() {
                Some((le, seg)) if *le == e => seg.push(o),
                _ => {
                    assert!(segments.iter().all(|(le, _)| *le < e), "went back to an earlier stream");
                    segments.push((e, vec![o]));
                }
            }
        }
        for (n, (e, seg)) in segments.iter().enumerate() {
            let e = *e;
            let first = seg[0];
            let seq_off = first.seq.wrapping_sub(pubd(first).ext);
            let ts_off = first.ts.wrapping_sub(pubd(first).ts);
            if n == 0 {
                assert_eq!(ts_off, 0, "timestamps pass through until a restart");
            }
            let start = pubd(first).ext;
            let max = seg.iter().map(|o| pubd(o).ext).max().expect("segments are not empty");
            let mut seen = vec![false; (max - start + 1) as usize];
            for o in seg {
                let p = pubd(o);
                assert_eq!(o.seq.wrapping_sub(p.ext), seq_off, "out seq gaps are exactly published seq gaps");
                assert_eq!(o.ts.wrapping_sub(p.ts), ts_off, "timestamp offset is constant in a stream");
                assert!(p.ext >= pubd(first).ext, "the first packet forwarded in a stream is its lowest");
                seen[(p.ext - start) as usize] = true;
            }
            // Every gap is a packet the path lost, or one that reached the router while this consumer
            // was not (yet, or any more) forwarding that stream.
            for ext in start + 1..max {
                if seen[(ext - start) as usize] {
                    continue;
                }
                let p = self.lookup(t.media, e, ext);
                if p.lost {
                    sum.holes_lost += 1;
                    continue;
                }
                for &(s, _) in &p.arrivals {
                    assert!(
                        s < first.step || s > t.leave_step || self.is_stale(p, s),
                        "gap at published seq {ext} (epoch {e}) without a loss: delivered at step {s}"
                    );
                }
                sum.holes_gated += 1;
            }
            if n > 0 {
                // Continuity across the restart: right after the highest seq sent before, and the timestamp
                // advanced by the silence since the last packet out.
                sum.rebased += 1;
                let earlier: Vec<&Out> = outs.iter().filter(|o| o.step < first.step).collect();
                let top = earlier.iter().max_by_key(|o| o.seq).expect("an earlier segment");
                let last = earlier.last().expect("an earlier segment");
                let clock = if t.media == VIDEO { VIDEO_CLOCK } else { AUDIO_CLOCK };
                assert_eq!(first.seq, top.seq + 1, "the new stream continues at the next seq");
                assert_eq!(first.ts, top.ts.wrapping_add(ticks(clock, first.t - last.t)), "timestamps continue");
            }
        }

        // Packets after the start that were not forwarded are older than the start of their stream.
        for &(s, id) in &t.before_start {
            let p = &self.published[id];
            let (_, seg) = segments.iter().find(|(e, _)| *e == p.epoch).expect("dropped within a forwarded stream");
            assert!(seg[0].step < s && p.ext < pubd(seg[0]).ext, "before_start only for packets older than the start");
        }
    }
}

fn run(path: Path, seed: u64) -> Summary {
    let mut sim = Sim::new(path, seed);
    sim.run();
    let sum = sim.check();
    eprintln!("seed {seed:#x} {path:?}\n  {sum:?}");
    sum
}

#[test]
fn clean_path() {
    for seed in SEEDS {
        let s = run(CLEAN, seed);
        assert_eq!((s.lost, s.held, s.duplicated, s.stale), (0, 0, 0, 0));
        assert_eq!(s.arrivals, s.sent);
        assert_eq!((s.holes_lost, s.holes_gated, s.before_start), (0, 0, 0), "no loss, no gap");
        assert_eq!(s.video_started, s.strict, "every video consumer within the strict bound");
        assert_eq!(s.waited_for_retry, 0);
        assert!(s.rebased > 0 && s.requests > 1);
    }
}

fn lossy_scenario(loss_ppm: u64) {
    for seed in SEEDS {
        let s = run(lossy(loss_ppm), seed);
        // The impairments happened, and the checks had something to check.
        assert!(s.lost > 0 && s.held > 0 && s.duplicated > 0 && s.stale > 0);
        assert!(s.holes_lost > 0 && s.rebased > 0 && s.requests > 1);
        assert!(s.strict > 0);
    }
}

#[test]
fn two_percent_loss() {
    lossy_scenario(20_000);
}

#[test]
fn ten_percent_loss() {
    lossy_scenario(100_000);
}
