//! Who is speaking: a sans-IO active-speaker detector, fed with RFC 6464 audio levels.
//!
//! Two pieces, both told the time:
//! - [`LevelMeter`] sits beside one audio producer on the media thread. Each packet's audio level
//!   (`-dBov`, 0 loudest, 127 silence) goes in; every [`METER_WINDOW`] it hands out the window's
//!   *activity*: the percentage of its packets louder than [`VOICE_DBOV`]. That is all that leaves the
//!   media thread, about 5 numbers a second per speaker.
//! - [`Detector`] holds one room's speakers. Activity goes in with [`Detector::push`]; a speaker that
//!   stops sending decays as silence. [`Detector::poll`] hands out a [`Speaking`] (who speaks, and the
//!   dominant speaker) only when that changed, and at most once per [`MIN_INTERVAL`].
//!
//! The model follows the shape of Jitsi's `DominantSpeakerIdentification`: activity is judged over a
//! short and a long time scale, a speaker counts as speaking by the short one (with a higher level
//! to start than to stay, so a breath does not end a sentence), and the dominant speaker changes
//! only when someone else has clearly spoken more over the long one, or when the dominant one has
//! stopped speaking while someone else speaks. Silence keeps the last dominant speaker.

use std::time::{Duration, Instant};

/// Packets at this level or louder (`-dBov`, so numerically at most this) count as voice.
pub const VOICE_DBOV: u8 = 50;
/// A [`LevelMeter`] reports once per this window.
pub const METER_WINDOW: Duration = Duration::from_millis(200);
/// [`Detector::poll`] reports at most once per this.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// Time constant of the short average (speaking or not).
const SHORT_TAU: f64 = 0.4;
/// Time constant of the long average (who dominates).
const LONG_TAU: f64 = 2.0;
/// The short average at which a speaker starts speaking (activity 0..1).
const START_SPEAKING: f64 = 0.3;
/// The short average below which a speaker stops speaking.
const STOP_SPEAKING: f64 = 0.1;
/// A challenger replaces a dominant speaker who still speaks when its long average exceeds the
/// dominant one's by this factor plus [`TAKEOVER_MARGIN`].
const TAKEOVER_FACTOR: f64 = 1.2;
/// See [`TAKEOVER_FACTOR`].
const TAKEOVER_MARGIN: f64 = 0.05;
/// A speaker whose last activity is older than this decays as if silent.
const STALE_AFTER: Duration = Duration::from_millis(600);

/// Turns one producer's per-packet audio levels into activity per [`METER_WINDOW`].
#[derive(Debug, Clone, Default)]
pub struct LevelMeter {
    since: Option<Instant>,
    packets: u32,
    voiced: u32,
}

impl LevelMeter {
    /// Count one packet with audio level `level` (`-dBov`; values over 127 read as 127). Returns the
    /// finished window's activity, 0 to 100 percent, when this packet closes a window.
    pub fn count(&mut self, now: Instant, level: u8) -> Option<u8> {
        let since = *self.since.get_or_insert(now);
        let mut done = None;
        if now.saturating_duration_since(since) >= METER_WINDOW && self.packets > 0 {
            done = Some(u8::try_from(self.voiced * 100 / self.packets).unwrap_or(100));
            self.since = Some(now);
            self.packets = 0;
            self.voiced = 0;
        }
        self.packets += 1;
        if level.min(127) <= VOICE_DBOV {
            self.voiced += 1;
        }
        done
    }
}

/// What [`Detector::poll`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaking<K> {
    /// Who speaks now, the most active over the long average first.
    pub speaking: Vec<K>,
    /// The dominant speaker: the last one who clearly held the floor, even if silent now.
    pub dominant: Option<K>,
}

impl<K> Default for Speaking<K> {
    fn default() -> Self {
        Speaking { speaking: Vec::new(), dominant: None }
    }
}

#[derive(Debug, Clone)]
struct Track<K> {
    key: K,
    short: f64,
    long: f64,
    /// When `short` and `long` were last brought up to date.
    updated: Instant,
    /// When the last activity arrived.
    heard: Instant,
    speaking: bool,
}

impl<K> Track<K> {
    /// Bring the averages to `now` with `activity` (0..1) held since the last update.
    fn advance(&mut self, now: Instant, activity: f64) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        let short = 1.0 - (-dt / SHORT_TAU).exp();
        let long = 1.0 - (-dt / LONG_TAU).exp();
        self.short += (activity - self.short) * short;
        self.long += (activity - self.long) * long;
        if self.speaking {
            self.speaking = self.short >= STOP_SPEAKING;
        } else {
            self.speaking = self.short >= START_SPEAKING;
        }
    }
}

/// One room's active-speaker detector (see the module docs). `K` names a participant.
#[derive(Debug, Clone)]
pub struct Detector<K> {
    tracks: Vec<Track<K>>,
    dominant: Option<K>,
    reported: Speaking<K>,
    last_report: Option<Instant>,
}

impl<K> Default for Detector<K> {
    fn default() -> Self {
        Detector { tracks: Vec::new(), dominant: None, reported: Speaking::default(), last_report: None }
    }
}

impl<K: Clone + PartialEq> Detector<K> {
    /// A detector with nobody in it.
    pub fn new() -> Self {
        Self::default()
    }

    /// `key` sent a window with `activity` percent voiced packets (values over 100 read as 100).
    pub fn push(&mut self, now: Instant, key: &K, activity: u8) {
        let a = f64::from(activity.min(100)) / 100.0;
        match self.tracks.iter_mut().find(|t| t.key == *key) {
            Some(t) => {
                // What passed since its last update is credited with this window's activity.
                t.advance(now, a);
                t.heard = now;
            }
            None => {
                let mut t =
                    Track { key: key.clone(), short: 0.0, long: 0.0, updated: now, heard: now, speaking: false };
                // A newcomer's first window counts for one window's length.
                t.updated = now.checked_sub(crate::speech::METER_WINDOW).unwrap_or(now);
                t.advance(now, a);
                self.tracks.push(t);
            }
        }
    }

    /// `key` left (or is no longer a speaker): it no longer speaks, and is no longer dominant. The
    /// next [`Detector::poll`] reports that at once, whatever [`MIN_INTERVAL`] says: a departure is
    /// rare, and a caller that polls only on input might otherwise not poll again.
    pub fn remove(&mut self, key: &K) {
        let before = self.tracks.len();
        self.tracks.retain(|t| t.key != *key);
        if self.tracks.len() != before {
            self.last_report = None;
        }
        if self.dominant.as_ref() == Some(key) {
            self.dominant = None;
        }
    }

    /// The state at `now`, if it differs from the last one reported and [`MIN_INTERVAL`] has passed
    /// since that report.
    pub fn poll(&mut self, now: Instant) -> Option<Speaking<K>> {
        for t in &mut self.tracks {
            if now.saturating_duration_since(t.heard) > STALE_AFTER {
                t.advance(now, 0.0);
            }
        }
        self.elect();
        let mut speaking: Vec<&Track<K>> = self.tracks.iter().filter(|t| t.speaking).collect();
        speaking.sort_by(|a, b| b.long.total_cmp(&a.long));
        let state =
            Speaking { speaking: speaking.iter().map(|t| t.key.clone()).collect(), dominant: self.dominant.clone() };
        if state == self.reported {
            return None;
        }
        if self.last_report.is_some_and(|t| now < t + MIN_INTERVAL) {
            return None;
        }
        self.last_report = Some(now);
        self.reported = state.clone();
        Some(state)
    }

    fn elect(&mut self) {
        let best = self.tracks.iter().filter(|t| t.speaking).max_by(|a, b| a.long.total_cmp(&b.long));
        let Some(best) = best else { return };
        let current = self.dominant.as_ref().and_then(|d| self.tracks.iter().find(|t| t.key == *d));
        let take = match current {
            None => true,
            Some(c) if c.key == best.key => false,
            Some(c) if !c.speaking => true,
            Some(c) => best.long > c.long * TAKEOVER_FACTOR + TAKEOVER_MARGIN,
        };
        if take {
            self.dominant = Some(best.key.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = METER_WINDOW;

    /// Feed `activity[i]` for speaker `i` every window for `secs`, polling each window; every report.
    fn run(d: &mut Detector<u32>, t: &mut Instant, secs: f64, activity: &[u8]) -> Vec<(Instant, Speaking<u32>)> {
        let mut out = Vec::new();
        let end = *t + Duration::from_secs_f64(secs);
        while *t < end {
            *t += STEP;
            for (i, a) in activity.iter().enumerate() {
                d.push(*t, &(i as u32), *a);
            }
            if let Some(s) = d.poll(*t) {
                out.push((*t, s));
            }
        }
        out
    }

    #[test]
    fn the_meter_reports_the_share_of_voiced_packets_per_window() {
        let mut m = LevelMeter::default();
        let t0 = Instant::now();
        let mut reports = Vec::new();
        for i in 0..50u32 {
            // Every other packet loud (30 dBov), the rest silent (127): 20 ms apart.
            let level = if i % 2 == 0 { 30 } else { 127 };
            if let Some(a) = m.count(t0 + Duration::from_millis(20 * u64::from(i)), level) {
                reports.push(a);
            }
        }
        assert_eq!(reports.len(), 4, "{reports:?}");
        assert!(reports.iter().all(|a| *a == 50), "{reports:?}");
        assert_eq!(m.count(t0 + Duration::from_secs(5), 200), Some(50), "a level over 127 is silence");
    }

    #[test]
    fn the_one_who_talks_becomes_dominant_within_a_second() {
        let mut d = Detector::new();
        let t0 = Instant::now();
        let mut t = t0;
        let reports = run(&mut d, &mut t, 3.0, &[0, 90, 0]);
        let (at, first) = reports.iter().find(|(_, s)| s.dominant == Some(1)).expect("a dominant speaker");
        assert!(*at - t0 <= Duration::from_secs(1), "{:?}", *at - t0);
        assert_eq!(first.speaking, vec![1]);
        assert_eq!(reports.last().unwrap().1, Speaking { speaking: vec![1], dominant: Some(1) });
    }

    #[test]
    fn dominance_follows_a_swap_and_survives_silence() {
        let mut d = Detector::new();
        let mut t = Instant::now();
        run(&mut d, &mut t, 5.0, &[90, 0, 0]);
        let swap = t;
        let reports = run(&mut d, &mut t, 4.0, &[0, 0, 90]);
        let (at, _) = reports.iter().find(|(_, s)| s.dominant == Some(2)).expect("the floor changes hands");
        assert!(*at - swap <= Duration::from_millis(1500), "{:?}", *at - swap);
        assert_eq!(reports.last().unwrap().1.speaking, vec![2]);
        // Everyone silent: nobody speaks, and the last dominant speaker stays.
        let reports = run(&mut d, &mut t, 3.0, &[0, 0, 0]);
        assert_eq!(reports.last().unwrap().1, Speaking { speaking: vec![], dominant: Some(2) });
    }

    #[test]
    fn a_short_interjection_does_not_take_the_floor() {
        let mut d = Detector::new();
        let mut t = Instant::now();
        run(&mut d, &mut t, 6.0, &[90, 0]);
        // Speaker 1 says a word (0.4 s) while 0 goes on talking.
        let mut reports = run(&mut d, &mut t, 0.4, &[90, 90]);
        reports.extend(run(&mut d, &mut t, 3.0, &[90, 0]));
        assert!(reports.iter().all(|(_, s)| s.dominant == Some(0)), "{reports:?}");
        assert!(reports.iter().any(|(_, s)| s.speaking.contains(&1)), "the interjection shows as speaking");
    }

    #[test]
    fn a_pause_between_words_does_not_end_speaking() {
        let mut d = Detector::new();
        let mut t = Instant::now();
        run(&mut d, &mut t, 3.0, &[90]);
        // 400 ms of silence between phrases.
        let reports = run(&mut d, &mut t, 0.4, &[0]);
        assert!(reports.iter().all(|(_, s)| s.speaking == vec![0]), "{reports:?}");
    }

    #[test]
    fn reports_come_only_on_change_and_at_most_four_a_second() {
        let mut d = Detector::new();
        let mut t = Instant::now();
        // Two speakers flip-flopping every window would change the state all the time.
        let mut reports = Vec::new();
        for i in 0..50 {
            let a = if i % 2 == 0 { [100, 0] } else { [0, 100] };
            reports.extend(run(&mut d, &mut t, 0.2, &a));
        }
        for w in reports.windows(2) {
            assert!(w[1].0 - w[0].0 >= MIN_INTERVAL, "{:?}", w[1].0 - w[0].0);
        }
        // A steady state is reported once.
        run(&mut d, &mut t, 5.0, &[100, 0]);
        assert!(run(&mut d, &mut t, 5.0, &[100, 0]).is_empty());
    }

    #[test]
    fn a_speaker_who_stops_sending_decays_and_one_who_leaves_is_gone() {
        let mut d = Detector::new();
        let mut t = Instant::now();
        run(&mut d, &mut t, 3.0, &[90, 90]);
        // Speaker 1 sends nothing more; polls alone must notice.
        let mut last = None;
        for _ in 0..20 {
            t += STEP;
            d.push(t, &0, 90);
            if let Some(s) = d.poll(t) {
                last = Some(s);
            }
        }
        assert_eq!(last.expect("a change").speaking, vec![0]);
        d.remove(&0);
        t += Duration::from_secs(1);
        assert_eq!(d.poll(t), Some(Speaking { speaking: vec![], dominant: d.dominant }));
        assert_ne!(d.dominant, Some(0));
    }
}
