//! What viewers measure: per-stream sequence tracking, latency histograms and join times.
//!
//! Each viewer keeps one [`StreamRx`] per speaker stream it receives. It counts unique packets, duplicates
//! and reordered packets with a 1,024-packet bitmap window behind the highest sequence number seen. Loss is
//! decided at the end of the run, against the last sequence number each speaker really sent, so packets
//! lost at the tail count too. Latency (speaker send -> viewer receive, after SRTP decryption) goes into one
//! hdrhistogram per shard thread.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::stamp::{Stamp, Stream};

/// Sequence numbers remembered behind the highest one, for duplicate detection.
const WINDOW: u64 = 1024;

/// Receive state of one speaker stream at one viewer.
#[derive(Debug, Clone)]
pub struct StreamRx {
    /// Lowest sequence number received.
    pub first: u64,
    /// Highest sequence number received.
    pub highest: u64,
    /// Distinct packets received.
    pub unique: u64,
    /// Packets received more than once.
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    seen: [u64; (WINDOW / 64) as usize],
}

impl StreamRx {
    fn new(seq: u64) -> StreamRx {
        let mut s = StreamRx {
            first: seq,
            highest: seq,
            unique: 1,
            duplicates: 0,
            reordered: 0,
            seen: [0; (WINDOW / 64) as usize],
        };
        s.mark(seq);
        s
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn mark(&mut self, seq: u64) -> bool {
        let (w, b) = Self::bit(seq);
        let Some(word) = self.seen.get_mut(w) else { return false };
        let was = *word & b != 0;
        *word |= b;
        was
    }

    fn clear(&mut self, seq: u64) {
        let (w, b) = Self::bit(seq);
        if let Some(word) = self.seen.get_mut(w) {
            *word &= !b;
        }
    }

    /// Account for one received packet; false if it is a duplicate.
    pub fn record(&mut self, seq: u64) -> bool {
        if seq > self.highest {
            if seq - self.highest >= WINDOW {
                self.seen = [0; (WINDOW / 64) as usize];
            } else {
                for s in self.highest + 1..seq {
                    self.clear(s);
                }
            }
            self.clear(seq);
            self.highest = seq;
            self.mark(seq);
            self.unique += 1;
            return true;
        }
        if self.highest - seq >= WINDOW {
            // Too old to tell a duplicate from a late packet: count it as late and new.
            self.reordered += 1;
            self.unique += 1;
        } else if self.mark(seq) {
            self.duplicates += 1;
            return false;
        } else {
            self.reordered += 1;
            self.unique += 1;
        }
        self.first = self.first.min(seq);
        true
    }

    /// Packets the sender sent from the first one this viewer got up to `last` (the sender's last), and how
    /// many of those never arrived.
    pub fn expected_and_lost(&self, last: Option<u64>) -> (u64, u64) {
        let end = last.unwrap_or(self.highest).max(self.highest);
        let expected = end - self.first + 1;
        (expected, expected.saturating_sub(self.unique))
    }
}

/// Everything one viewer measured.
#[derive(Debug, Clone, Default)]
pub struct ViewerRecord {
    /// Received `joined`.
    pub joined: bool,
    /// The failure that ended it, as an error code (the server's, or one of the generator's own).
    pub failure: Option<String>,
    /// It left before the end of the run on purpose (churn).
    pub left_early: bool,
    /// WebSocket connect started -> `joined` received.
    pub joined_after: Option<Duration>,
    /// WebSocket connect started -> ICE and DTLS connected.
    pub connected_after: Option<Duration>,
    /// WebSocket connect started -> first media packet decrypted.
    pub first_media: Option<Duration>,
    /// WebSocket connect started -> first packet of a key frame decrypted.
    pub first_keyframe: Option<Duration>,
    /// Per speaker stream.
    pub streams: BTreeMap<(u16, Stream), StreamRx>,
    /// Packets counted from their SRTP headers without decryption (`--decrypt-one-in`).
    pub counted: u64,
    /// What the blip did to this viewer, if it was cut (`--blip`).
    pub blip: Option<BlipRecord>,
}

/// One cut viewer's way back from the blip, timed from the end of the outage.
#[derive(Debug, Clone, Default)]
pub struct BlipRecord {
    /// Outage end -> first media packet.
    pub media_after: Option<Duration>,
    /// Outage end -> first packet of a key frame (from which a decoder shows pictures again).
    pub keyframe_after: Option<Duration>,
    /// The signaling socket was dropped and the participant resumed on a new one.
    pub resumed: bool,
}

impl ViewerRecord {
    /// Account for one received, stamped packet; false if this viewer already had it.
    pub fn record(&mut self, stamp: &Stamp) -> bool {
        match self.streams.get_mut(&(stamp.speaker, stamp.stream)) {
            Some(s) => s.record(stamp.seq),
            None => {
                self.streams.insert((stamp.speaker, stamp.stream), StreamRx::new(stamp.seq));
                true
            }
        }
    }
}

/// How many of the earliest copies of a packet the fan-out figures follow (the "first 32 viewers").
pub const FIRST_VIEWERS: usize = 32;

/// How one ingress packet's copies spread over the viewers: how many arrived, when the last did, and the
/// [`FIRST_VIEWERS`] earliest arrivals. Latencies in microseconds from the speaker's send.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    /// Copies received.
    pub count: u32,
    /// Latency of the latest copy.
    pub last_us: u64,
    /// The smallest latencies, at most [`FIRST_VIEWERS`] (a max-heap, so the largest of them is on top).
    earliest: BinaryHeap<u64>,
}

impl Spread {
    fn add(&mut self, us: u64) {
        self.count += 1;
        self.last_us = self.last_us.max(us);
        self.keep_if_early(us);
    }

    fn merge(&mut self, other: Spread) {
        self.count += other.count;
        self.last_us = self.last_us.max(other.last_us);
        for us in other.earliest {
            self.keep_if_early(us);
        }
    }

    /// Keep `us` if it is among the [`FIRST_VIEWERS`] smallest seen.
    fn keep_if_early(&mut self, us: u64) {
        if self.earliest.len() < FIRST_VIEWERS {
            self.earliest.push(us);
        } else if self.earliest.peek().is_some_and(|&top| us < top) {
            self.earliest.pop();
            self.earliest.push(us);
        }
    }

    /// Latency of the [`FIRST_VIEWERS`]-th copy, once that many arrived.
    pub fn first_viewers_us(&self) -> Option<u64> {
        (self.earliest.len() >= FIRST_VIEWERS).then(|| self.earliest.peek().copied()).flatten()
    }
}

/// Per ingress packet (speaker, stream, sequence number), its [`Spread`] over this shard's viewers. Only
/// kept with `--fanout`: it grows with the length of the run (a few hundred bytes per packet sent).
#[derive(Debug, Default)]
pub struct FanoutRecorder {
    /// Spread per packet.
    pub packets: HashMap<(u16, Stream, u64), Spread>,
}

impl FanoutRecorder {
    /// One copy of a packet arrived at a viewer `us` after it was sent.
    pub fn record(&mut self, stamp: &Stamp, us: u64) {
        self.packets.entry((stamp.speaker, stamp.stream, stamp.seq)).or_default().add(us);
    }

    /// Fold another shard's recorder into this one.
    pub fn merge(&mut self, other: FanoutRecorder) {
        for (k, v) in other.packets {
            self.packets.entry(k).or_default().merge(v);
        }
    }
}

/// A histogram in microseconds, 1 us to one hour (larger values are clamped), 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // hdrhistogram rejects only low < 1, high < 2 * low and more than 5 digits: these constants can
    // never fail, so this is not a runtime panic path.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| unreachable!("constant, valid bounds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut s = StreamRx::new(10);
        for q in 11..5000 {
            s.record(q);
        }
        assert_eq!((s.unique, s.duplicates, s.reordered), (4990, 0, 0));
        assert_eq!(s.expected_and_lost(Some(4999)), (4990, 0));
        // Tail loss: the sender went on to 5009.
        assert_eq!(s.expected_and_lost(Some(5009)), (5000, 10));
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_told_apart() {
        let mut s = StreamRx::new(0);
        for q in [1, 3, 2, 2, 5, 5, 1, 7] {
            s.record(q);
        }
        // Unique: 0 1 3 2 5 7; duplicates: 2, 5, 1; reordered: 2 (after 3).
        assert_eq!(s.unique, 6);
        assert_eq!(s.duplicates, 3);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.expected_and_lost(None), (8, 2)); // 4 and 6 lost
    }

    #[test]
    fn window_slides_without_false_duplicates() {
        let mut s = StreamRx::new(0);
        s.record(3000); // a jump larger than the window clears it
        s.record(2990); // never seen: reordered, not a duplicate
        s.record(3000 - WINDOW - 1); // older than the window: counted late
        assert_eq!((s.unique, s.duplicates, s.reordered), (4, 0, 2));
        s.record(3000);
        s.record(2990);
        assert_eq!(s.duplicates, 2);
        // Sliding forward by less than the window forgets what falls out of it.
        s.record(3000 + WINDOW - 1);
        s.record(2990 + WINDOW); // shares 2990's slot, but is new
        assert_eq!((s.unique, s.duplicates), (6, 2));
    }

    #[test]
    fn spread_tracks_the_last_and_the_32nd_copy_across_merges() {
        let stamp = Stamp { speaker: 0, stream: Stream::Video, flags: 0, seq: 7, sent_ns: 0 };
        let (mut a, mut b) = (FanoutRecorder::default(), FanoutRecorder::default());
        // Latencies 1..=100 us, split unevenly over two shards.
        for us in 1..=100u64 {
            if us % 3 == 0 {
                a.record(&stamp, us)
            } else {
                b.record(&stamp, us)
            }
        }
        a.merge(b);
        let s = &a.packets[&(0, Stream::Video, 7)];
        assert_eq!((s.count, s.last_us, s.first_viewers_us()), (100, 100, Some(32)));
        let mut few = FanoutRecorder::default();
        few.record(&stamp, 5);
        assert_eq!(few.packets[&(0, Stream::Video, 7)].first_viewers_us(), None);
    }

    #[test]
    fn packets_before_the_first_lower_the_start() {
        let mut s = StreamRx::new(100);
        s.record(99);
        s.record(101);
        assert_eq!(s.first, 99);
        assert_eq!(s.expected_and_lost(Some(101)), (3, 0));
    }
}
