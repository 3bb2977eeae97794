//! A viewer's downlink, emulated inside the generator (`--viewer-mix`): a token-bucket bottleneck with
//! a drop-tail queue in front of the viewer's str0m session, and the receive-side estimator that turns
//! what gets through into REMB, as a browser behind such a link does.
//!
//! [`Bottleneck`] plays `tc qdisc tbf`: datagrams leave at the cap's rate (with a small burst), wait in
//! a queue bounded in bytes while they cannot, and are dropped when the queue is full. What leaves is
//! handed to str0m with the time it left, so str0m sees the loss (and NACKs it) and the spacing a real
//! link would give.
//!
//! [`Estimator`] is a simplified version of the receive-side estimator of Google Congestion Control
//! (the one behind Chromium's REMB). Like libwebrtc's, it is fed video only: the peer leaves audio
//! and RTCP out. It measures the incoming rate over 500 ms; while packets wait
//! more than [`OVERUSE_DELAY`] in the queue (the delay growth that GCC's arrival filter detects; here the
//! bottleneck tells it exactly) the estimate drops to 85 % of the incoming rate, at most every 300 ms;
//! otherwise it grows by 8 % a second, but not past 1.5 times the incoming rate (that bound stops a
//! rise, it never lowers the estimate: libwebrtc's `AimdRateControl`). The first estimate, one second
//! after video starts, is the highest rate of any 100 ms in that second: what a browser measures of
//! the SFU's first probe burst. It asks for a REMB at once after a drop of more than 3 %,
//! otherwise once a second, never twice within 200 ms (Chromium's pacing of REMB).
//!
//! Both are sans-IO: every call is told the time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes the bucket holds when full: about three full-size packets leave back to back.
const BURST: f64 = 4_000.0;
/// The queue holds at most this long at the cap's rate, and never less than [`MIN_QUEUE`] bytes.
const QUEUE_TIME: Duration = Duration::from_millis(200);
/// Smallest queue, in bytes.
const MIN_QUEUE: usize = 8_000;

/// A held datagram.
#[derive(Debug)]
struct Held {
    arrived: Instant,
    source: SocketAddr,
    data: Vec<u8>,
}

/// A datagram that left the bottleneck.
#[derive(Debug)]
pub struct Released {
    /// Its bytes; give the buffer back with [`Bottleneck::recycle`].
    pub data: Vec<u8>,
    /// Where it came from.
    pub source: SocketAddr,
    /// When it left.
    pub at: Instant,
    /// How long it waited in the queue.
    pub delay: Duration,
}

/// A token bucket at `rate` bits per second with a drop-tail queue (see the module docs).
#[derive(Debug)]
pub struct Bottleneck {
    /// Bytes per second.
    rate: f64,
    /// Most bytes queued.
    limit: usize,
    tokens: f64,
    refilled: Instant,
    queue: VecDeque<Held>,
    queued: usize,
    /// Buffers of released datagrams, reused for new ones (no allocation per packet once warm).
    pool: Vec<Vec<u8>>,
    /// Datagrams dropped because the queue was full.
    pub dropped: u64,
}

impl Bottleneck {
    /// A bottleneck of `bits_per_second`, full at `now`.
    pub fn new(bits_per_second: u64, now: Instant) -> Bottleneck {
        let rate = bits_per_second.max(8_000) as f64 / 8.0;
        let limit = ((rate * QUEUE_TIME.as_secs_f64()) as usize).max(MIN_QUEUE);
        Bottleneck {
            rate,
            limit,
            tokens: BURST,
            refilled: now,
            queue: VecDeque::new(),
            queued: 0,
            pool: Vec::new(),
            dropped: 0,
        }
    }

    /// Most bytes the queue holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A datagram arrives at `now`; false if the queue was full and it was dropped.
    pub fn push(&mut self, now: Instant, source: SocketAddr, data: &[u8]) -> bool {
        if self.queued + data.len() > self.limit {
            self.dropped += 1;
            return false;
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        self.queued += data.len();
        self.queue.push_back(Held { arrived: now, source, data: buf });
        true
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(BURST);
        self.refilled = self.refilled.max(now);
    }

    /// The next datagram that may leave by `now`, if any.
    pub fn pop(&mut self, now: Instant) -> Option<Released> {
        self.refill(now);
        let len = self.queue.front()?.data.len() as f64;
        if self.tokens < len {
            return None;
        }
        let held = self.queue.pop_front()?;
        self.tokens -= len;
        self.queued -= held.data.len();
        let at = now.max(held.arrived);
        Some(Released { delay: at.saturating_duration_since(held.arrived), data: held.data, source: held.source, at })
    }

    /// Give a released datagram's buffer back.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        // As many buffers as the queue can hold datagrams of 100 bytes: the pool never outgrows it.
        if self.pool.len() < self.limit / 100 {
            self.pool.push(buf);
        }
    }

    /// When the first queued datagram may leave, if one is queued.
    pub fn next_release(&self) -> Option<Instant> {
        let len = self.queue.front()?.data.len() as f64;
        let missing = (len - self.tokens).max(0.0);
        Some(self.refilled + Duration::from_secs_f64(missing / self.rate))
    }
}

/// Queueing delay above which the link counts as overused.
pub const OVERUSE_DELAY: Duration = Duration::from_millis(30);
/// The incoming rate is measured over this many slots of [`SLOT`].
const SLOTS: usize = 5;
const SLOT: Duration = Duration::from_millis(100);
/// Decreases are at least this far apart (about an RTT and a half of a congested link).
const DECREASE_GAP: Duration = Duration::from_millis(300);
/// REMBs are at least this far apart.
const REMB_GAP: Duration = Duration::from_millis(200);
/// A REMB goes out at least this often.
const REMB_EVERY: Duration = Duration::from_secs(1);

/// The receive-side bandwidth estimator (see the module docs).
#[derive(Debug)]
pub struct Estimator {
    /// Bits per second, once there is one.
    estimate: Option<f64>,
    first: Option<Instant>,
    /// Bytes per slot, `slot_start` the start of `slots[current]`.
    slots: [u64; SLOTS],
    current: usize,
    slot_start: Instant,
    /// Slots filled since the first packet (up to [`SLOTS`]).
    filled: usize,
    last_decrease: Option<Instant>,
    overused: bool,
    updated: Instant,
    /// The last REMB asked for: when, and its value.
    sent: Option<(Instant, f64)>,
    /// A drop worth telling at once.
    urgent: bool,
}

impl Estimator {
    /// An estimator with nothing received, at `now`.
    pub fn new(now: Instant) -> Estimator {
        Estimator {
            estimate: None,
            first: None,
            slots: [0; SLOTS],
            current: 0,
            slot_start: now,
            filled: 1,
            last_decrease: None,
            overused: false,
            updated: now,
            sent: None,
            urgent: false,
        }
    }

    /// The current estimate, bits per second.
    pub fn estimate(&self) -> Option<u64> {
        self.estimate.map(|e| e as u64)
    }

    fn roll(&mut self, now: Instant) {
        while now >= self.slot_start + SLOT {
            self.slot_start += SLOT;
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current] = 0;
            self.filled = (self.filled + 1).min(SLOTS);
            if now >= self.slot_start + SLOT * SLOTS as u32 {
                // A long silence: nothing arrived in any slot since.
                self.slots = [0; SLOTS];
                self.slot_start = now;
                self.filled = 1;
            }
        }
    }

    /// The highest rate of one full slot among those filled, bits per second.
    fn peak(&self) -> f64 {
        let full = self.filled.saturating_sub(1);
        (1..=full)
            .map(|back| self.slots[(self.current + SLOTS - back) % SLOTS])
            .max()
            .map_or(0.0, |b| b as f64 * 8.0 / SLOT.as_secs_f64())
    }

    /// The incoming rate, bits per second, over the slots filled so far.
    fn rate(&self, now: Instant) -> f64 {
        let span = SLOT.as_secs_f64() * (self.filled - 1) as f64
            + now.saturating_duration_since(self.slot_start).as_secs_f64().min(SLOT.as_secs_f64());
        self.slots.iter().sum::<u64>() as f64 * 8.0 / span.max(0.05)
    }

    /// `bytes` arrived at `now` after waiting `delay` in the bottleneck's queue.
    pub fn on_packet(&mut self, now: Instant, bytes: usize, delay: Duration) {
        if self.first.is_none() {
            self.first = Some(now);
            self.slot_start = now;
            self.filled = 1;
        }
        self.roll(now);
        self.slots[self.current] += bytes as u64;
        self.overused = delay > OVERUSE_DELAY;
        if self.overused && self.last_decrease.is_none_or(|t| now >= t + DECREASE_GAP) {
            let target = 0.85 * self.rate(now);
            if self.estimate.is_none_or(|e| target < e) {
                self.estimate = Some(target);
                self.urgent = true;
            }
            self.last_decrease = Some(now);
        }
    }

    /// The REMB to send at `now`, bits per second, if one is due.
    pub fn poll(&mut self, now: Instant) -> Option<u64> {
        self.roll(now);
        let first = self.first?;
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        let rate = self.rate(now);
        match self.estimate {
            None if now >= first + Duration::from_secs(1) => {
                self.estimate = Some(self.peak().max(rate));
                self.urgent = true;
            }
            Some(e) if !self.overused => self.estimate = Some((e * 1.08f64.powf(dt)).min(e.max(1.5 * rate + 10_000.0))),
            _ => {}
        }
        let e = self.estimate?;
        let due = match self.sent {
            None => true,
            Some((t, _)) if now < t + REMB_GAP => false,
            Some((t, v)) => self.urgent || e < 0.97 * v || now >= t + REMB_EVERY,
        };
        if !due {
            return None;
        }
        self.urgent = false;
        self.sent = Some((now, e));
        Some(e as u64)
    }

    /// When [`Estimator::poll`] should next be called.
    pub fn next_poll(&self) -> Option<Instant> {
        let first = self.first?;
        Some(match self.sent {
            None => first + Duration::from_secs(1),
            Some((t, _)) if self.urgent => t + REMB_GAP,
            Some((t, _)) => t + REMB_EVERY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// Offer `offered_bps` in 1,000-byte datagrams for `secs` through a `cap_bps` bottleneck; the
    /// bytes that left and the datagrams dropped.
    fn offer(cap_bps: u64, offered_bps: u64, secs: u64) -> (u64, u64, Duration) {
        let t0 = Instant::now();
        let mut b = Bottleneck::new(cap_bps, t0);
        let gap = Duration::from_secs_f64(8_000.0 / offered_bps as f64);
        let (mut out, mut worst) = (0u64, Duration::ZERO);
        let mut t = t0;
        while t < t0 + Duration::from_secs(secs) {
            b.push(t, src(), &[0u8; 1000]);
            while let Some(r) = b.pop(t) {
                out += r.data.len() as u64;
                worst = worst.max(r.delay);
                b.recycle(r.data);
            }
            t += gap;
        }
        (out, b.dropped, worst)
    }

    #[test]
    fn under_the_cap_everything_passes_at_once() {
        let (out, dropped, worst) = offer(1_000_000, 500_000, 4);
        assert_eq!(dropped, 0);
        assert!(out >= 4 * 500_000 / 8 - 1000, "{out}");
        assert!(worst < Duration::from_millis(5), "{worst:?}");
    }

    #[test]
    fn over_the_cap_the_rate_is_the_cap_and_the_rest_is_dropped() {
        let (out, dropped, worst) = offer(400_000, 1_000_000, 10);
        let rate = out as f64 * 8.0 / 10.0;
        assert!((380_000.0..=420_000.0).contains(&rate), "{rate} bit/s through a 400 kbit/s cap");
        assert!(dropped > 600, "{dropped} dropped of 1,250");
        // The queue (200 ms at the cap) fills: packets wait about that long.
        assert!(worst >= Duration::from_millis(150) && worst <= Duration::from_millis(250), "{worst:?}");
    }

    #[test]
    fn the_next_release_is_when_the_bucket_has_the_tokens() {
        let t0 = Instant::now();
        let mut b = Bottleneck::new(80_000, t0); // 10,000 bytes/s
        for _ in 0..5 {
            b.push(t0, src(), &[0u8; 1000]);
        }
        let mut n = 0;
        while b.pop(t0).is_some() {
            n += 1;
        }
        assert_eq!(n, 4, "the 4,000-byte burst");
        let next = b.next_release().expect("one is queued");
        assert_eq!(next, t0 + Duration::from_millis(100));
        assert!(b.pop(next - Duration::from_millis(1)).is_none());
        assert!(b.pop(next).is_some());
        assert_eq!(b.next_release(), None);
    }

    /// Feed the estimator `secs` of `offered_bps` through a `cap_bps` bottleneck (0: none); the REMBs it
    /// asked for.
    fn estimate(cap_bps: u64, offered_bps: u64, secs: u64) -> Vec<(Duration, u64)> {
        let t0 = Instant::now();
        let mut b = (cap_bps > 0).then(|| Bottleneck::new(cap_bps, t0));
        let mut e = Estimator::new(t0);
        let gap = Duration::from_secs_f64(8_000.0 / offered_bps as f64);
        let mut rembs = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(secs) {
            match b.as_mut() {
                Some(b) => {
                    b.push(t, src(), &[0u8; 1000]);
                    while let Some(r) = b.pop(t) {
                        e.on_packet(r.at, r.data.len(), r.delay);
                        b.recycle(r.data);
                    }
                }
                None => e.on_packet(t, 1000, Duration::ZERO),
            }
            if let Some(v) = e.poll(t) {
                rembs.push((t - t0, v));
            }
            t += gap;
        }
        rembs
    }

    #[test]
    fn behind_a_cap_the_estimate_settles_below_it() {
        let rembs = estimate(400_000, 2_000_000, 10);
        let first = rembs.first().expect("a REMB");
        assert!(first.0 < Duration::from_millis(500), "overuse is told at once: {rembs:?}");
        let last = rembs.last().expect("a REMB").1;
        assert!((300_000..=400_000).contains(&last), "{last} behind a 400 kbit/s cap: {rembs:?}");
        // Chromium's pacing: never closer than 200 ms, at least once a second.
        for w in rembs.windows(2) {
            assert!(w[1].0 - w[0].0 >= REMB_GAP && w[1].0 - w[0].0 <= REMB_EVERY + SLOT, "{rembs:?}");
        }
    }

    #[test]
    fn on_a_clear_link_the_estimate_follows_what_arrives_and_grows_slowly() {
        let rembs = estimate(0, 1_500_000, 6);
        let first = rembs.first().expect("a REMB");
        assert!(first.0 >= Duration::from_secs(1), "the first after a second: {rembs:?}");
        assert!((1_300_000..=1_700_000).contains(&first.1), "{rembs:?}");
        let last = rembs.last().expect("a REMB").1;
        // 8 % a second for 5 s, capped at 1.5 times the incoming rate.
        assert!(last > first.1 && last <= 2_300_000, "{rembs:?}");
    }

    #[test]
    fn a_first_probe_burst_sets_the_first_estimate_and_less_traffic_after_it_does_not_lower_it() {
        let t0 = Instant::now();
        let mut e = Estimator::new(t0);
        let ms = Duration::from_millis;
        // 200 kbit/s for a second, with 200 ms of 2.4 Mbit/s (a probe) in it, then 200 kbit/s for 3 s.
        let mut t = t0;
        while t < t0 + Duration::from_secs(4) {
            let probing = t >= t0 + ms(500) && t < t0 + ms(700);
            e.on_packet(t, 1000, Duration::ZERO);
            e.poll(t);
            t += if probing { ms(3) + Duration::from_micros(333) } else { ms(40) };
        }
        let est = e.estimate().expect("an estimate");
        assert!((2_000_000..=2_800_000).contains(&est), "the probe's rate, kept: {est}");
    }
}
