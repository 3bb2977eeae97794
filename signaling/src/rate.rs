//! The per-connection message rate limit: a token bucket, told the time.
//!
//! Each text or binary frame a client sends takes a token; tokens come back at [`RATE`] per second up
//! to [`BURST`]. A frame without a token is not handled: the client gets `rate_limited` (for the first
//! refusal, then one per [`REPORT_EVERY`] refusals, so a flood cannot make the server flood back). A
//! client refused more than [`ABUSE_LIMIT`] frames within [`ABUSE_WINDOW`] is closed (1008). A
//! browser trickling candidates, pinging and toggling mute stays far below the rate.

use std::time::{Duration, Instant};

/// Frames per second, sustained.
pub const RATE: f64 = 20.0;
/// Frames at once.
pub const BURST: f64 = 200.0;
/// A refusal is reported for the first refused frame, then once per this many.
pub const REPORT_EVERY: u32 = 100;
/// Refused frames within [`ABUSE_WINDOW`] that close the connection.
pub const ABUSE_LIMIT: u32 = 1_000;
/// See [`ABUSE_LIMIT`].
pub const ABUSE_WINDOW: Duration = Duration::from_secs(10);

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allow,
    /// Drop it; `true`: tell the client (`rate_limited`).
    Refuse(bool),
    /// Drop it and close the connection.
    Close,
}

/// One connection's bucket.
#[derive(Debug, Clone)]
pub struct RateLimit {
    tokens: f64,
    last: Instant,
    window_start: Instant,
    refused: u32,
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> Self {
        RateLimit { tokens: BURST, last: now, window_start: now, refused: 0 }
    }

    /// One frame arrived at `now`.
    pub fn frame(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * RATE).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.window_start) >= ABUSE_WINDOW {
            self.window_start = now;
            self.refused = 0;
        }
        self.refused += 1;
        if self.refused > ABUSE_LIMIT {
            return Verdict::Close;
        }
        Verdict::Refuse(self.refused % REPORT_EVERY == 1)
    }
}

/// A plain token bucket: `rate` a second, at most `burst` at once (reactions per participant).
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(now: Instant, rate: f64, burst: f64) -> Self {
        Bucket { tokens: burst, last: now, rate, burst }
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, 2.0, 5.0);
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!((0..8).filter(|_| b.take(t1)).count(), 4);
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| b.take(t2)).count(), 5, "never more than the burst");
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(t0);
        for _ in 0..200 {
            assert_eq!(r.frame(t0), Verdict::Allow);
        }
        assert_eq!(r.frame(t0), Verdict::Refuse(true), "the 201st at once is refused, and reported");
        assert_eq!(r.frame(t0), Verdict::Refuse(false), "the next is not reported again");
        // A second later, 20 more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..30).filter(|_| r.frame(t1) == Verdict::Allow).count();
        assert_eq!(allowed, 20);
    }

    #[test]
    fn a_flood_is_closed_and_a_polite_client_never_is() {
        let t0 = Instant::now();
        let mut flood = RateLimit::new(t0);
        let verdicts: Vec<_> = (0..2_000).map(|i| flood.frame(t0 + Duration::from_micros(i))).collect();
        let reported = verdicts.iter().filter(|v| **v == Verdict::Refuse(true)).count();
        assert_eq!(reported, 10, "1,000 refusals reported 10 times");
        assert_eq!(
            verdicts.iter().position(|v| *v == Verdict::Close),
            Some(200 + 1_000),
            "closed after 1,000 refusals"
        );
        let mut polite = RateLimit::new(t0);
        for i in 0..10_000u64 {
            // 10 frames a second for 1,000 s.
            assert_eq!(polite.frame(t0 + Duration::from_millis(i * 100)), Verdict::Allow);
        }
    }

    #[test]
    fn refusals_age_out_of_the_window() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(t0);
        for _ in 0..200 {
            r.frame(t0);
        }
        for _ in 0..900 {
            assert!(matches!(r.frame(t0), Verdict::Refuse(_)));
        }
        // Eleven seconds later the window starts over: another 900 refusals do not close it.
        let t1 = t0 + Duration::from_secs(11);
        for _ in 0..220 {
            r.frame(t1);
        }
        for _ in 0..900 {
            assert!(matches!(r.frame(t1), Verdict::Refuse(_)));
        }
    }
}
