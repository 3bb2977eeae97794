//! What viewers measure: per-stream sequence tracking, latency histograms and join times.
//!
//! Each viewer keeps one [`StreamRx`] per speaker stream it receives. It counts unique packets, duplicates
//! and reordered packets with a 1,024-packet bitmap window behind the highest sequence number seen. Loss is
//! decided at the end of the run, against the last sequence number each speaker really sent, so packets
//! lost at the tail count too. Latency (speaker send -> viewer receive, after SRTP decryption) goes into one
//! hdrhistogram per shard thread.
//!
//! Simulcast video ([`LayerTrack`], one per speaker) is counted by *stint*: the run of packets of one
//! layer from the first one received after the SFU moved the viewer onto it until it moved the viewer
//! off. A stint expects every packet from its first to its last (to the speaker's last at the end of the
//! run), so a layer's delivery is measured over the packets sent while the viewer was on it. The same
//! track records every layer change and the freezes: gaps of more than [`FREEZE_GAP`] between new video
//! packets of a speaker.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::stamp::{Stamp, Stream};

/// Sequence numbers remembered behind the highest one, for duplicate detection.
const WINDOW: u64 = 1024;

/// A gap between new video packets of one speaker longer than this is a freeze.
pub const FREEZE_GAP: Duration = Duration::from_millis(500);

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
    /// Its `--viewer-mix` class.
    pub class: Option<usize>,
    /// Per speaker, its simulcast layers as received.
    pub layers: BTreeMap<u16, LayerTrack>,
    /// Per speaker, the freezes of its video.
    pub gaps: BTreeMap<u16, Gaps>,
    /// Datagrams this viewer sent (RTCP feedback, STUN) from its first media packet to its end.
    pub feedback_sent: u64,
    /// REMBs it sent.
    pub rembs: u64,
    /// From its first media packet to its end.
    pub watched: Duration,
    /// Datagrams its emulated downlink dropped (queue full).
    pub downlink_drops: u64,
    /// Its last downlink estimate, bits per second.
    pub estimate: Option<u64>,
}

/// Packets expected and received over a layer's stints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Expected.
    pub expected: u64,
    /// Received (unique).
    pub received: u64,
}

/// Freezes of one speaker's video at one viewer: gaps longer than [`FREEZE_GAP`] between new packets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gaps {
    last: Option<Duration>,
    /// Gaps longer than [`FREEZE_GAP`].
    pub freezes: u32,
}

impl Gaps {
    /// A new video packet arrived `at` after the viewer started.
    pub fn packet(&mut self, at: Duration) {
        if self.last.is_some_and(|t| at.saturating_sub(t) > FREEZE_GAP) {
            self.freezes += 1;
        }
        self.last = Some(self.last.map_or(at, |t| t.max(at)));
    }
}

/// One speaker's simulcast layers at one viewer (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct LayerTrack {
    /// The layer being received.
    pub on: Option<u8>,
    /// Every change of layer: when (since the viewer started) and to which.
    pub changes: Vec<(Duration, u8)>,
    /// The open stint.
    open: Option<StreamRx>,
    /// Per layer, its closed stints.
    closed: BTreeMap<u8, Tally>,
    /// Per layer, the highest sequence number ever received: a packet at or below it belongs to a stint
    /// already closed (a retransmission or probe that came late).
    highest: BTreeMap<u8, u64>,
    /// Packets of a closed stint that arrived after it closed.
    pub late: u64,
}

impl LayerTrack {
    /// Packet `seq` of `layer` arrived `at` after the viewer started; false if it was not new.
    pub fn record(&mut self, layer: u8, seq: u64, at: Duration) -> bool {
        let newer = self.highest.get(&layer).is_none_or(|&h| seq > h);
        let new = if self.on == Some(layer) {
            self.open.as_mut().is_some_and(|rx| rx.record(seq))
        } else if newer {
            self.close();
            self.on = Some(layer);
            self.changes.push((at, layer));
            self.open = Some(StreamRx::new(seq));
            true
        } else {
            self.late += 1;
            false
        };
        if newer {
            self.highest.insert(layer, seq);
        }
        new
    }

    fn close(&mut self) {
        if let (Some(rx), Some(layer)) = (self.open.take(), self.on) {
            let t = self.closed.entry(layer).or_default();
            t.expected += rx.highest - rx.first + 1;
            t.received += rx.unique;
        }
    }

    /// Per layer, expected and received over every stint; the open one up to `last(layer)` (the
    /// speaker's last sequence number) when given.
    pub fn tallies(&self, last: impl Fn(u8) -> Option<u64>) -> BTreeMap<u8, Tally> {
        let mut out = self.closed.clone();
        if let (Some(rx), Some(layer)) = (&self.open, self.on) {
            let (expected, lost) = rx.expected_and_lost(last(layer));
            let t = out.entry(layer).or_default();
            t.expected += expected;
            t.received += expected - lost;
        }
        out
    }

    /// The layer this viewer was on at `at` after it started.
    pub fn layer_at(&self, at: Duration) -> Option<u8> {
        self.changes.iter().take_while(|(t, _)| *t <= at).last().map(|&(_, l)| l)
    }

    /// When the viewer moved onto the layer it ended on.
    pub fn settled_at(&self) -> Option<Duration> {
        self.changes.last().map(|&(t, _)| t)
    }
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
    /// Account for one received, stamped packet that arrived `at` after the viewer started; false if this
    /// viewer already had it.
    pub fn record(&mut self, stamp: &Stamp, at: Duration) -> bool {
        let new = if let Some(layer) = stamp.stream.layer() {
            self.layers.entry(stamp.speaker).or_default().record(layer, stamp.seq, at)
        } else {
            match self.streams.get_mut(&(stamp.speaker, stamp.stream)) {
                Some(s) => s.record(stamp.seq),
                None => {
                    self.streams.insert((stamp.speaker, stamp.stream), StreamRx::new(stamp.seq));
                    true
                }
            }
        };
        if new && stamp.stream.is_video() {
            self.gaps.entry(stamp.speaker).or_default().packet(at);
        }
        new
    }

    /// Freezes of every speaker's video.
    pub fn freezes(&self) -> u32 {
        self.gaps.values().map(|g| g.freezes).sum()
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
    fn layers_are_counted_by_stint_and_gaps_are_freezes() {
        let ms = Duration::from_millis;
        let mut t = LayerTrack::default();
        // Layer 0, packets 10..20 with 15 lost; then layer 1 from 100 (a switch), 100..110; a late
        // retransmission of layer 0's 15; back to layer 0 at 40 after a 600 ms gap.
        for q in (10..20).filter(|&q| q != 15) {
            assert!(t.record(0, q, ms(q * 10)));
        }
        for q in 100..110 {
            t.record(1, q, ms(200 + q));
        }
        assert!(!t.record(0, 15, ms(310)), "late: its stint closed");
        assert!(t.record(0, 40, ms(910)));
        assert!(!t.record(0, 40, ms(911)), "a duplicate (a probe)");
        assert_eq!(t.on, Some(0));
        assert_eq!(t.changes, vec![(ms(100), 0), (ms(300), 1), (ms(910), 0)]);
        assert_eq!(t.layer_at(ms(350)), Some(1));
        assert_eq!(t.settled_at(), Some(ms(910)));
        assert_eq!(t.late, 1);
        let tallies = t.tallies(|l| (l == 0).then_some(44));
        assert_eq!(tallies[&0], Tally { expected: 10 + 5, received: 9 + 1 }, "40..=44 expected at the end");
        assert_eq!(tallies[&1], Tally { expected: 10, received: 10 });
    }

    #[test]
    fn gaps_over_half_a_second_between_new_video_packets_are_freezes() {
        let ms = Duration::from_millis;
        let mut v = ViewerRecord::default();
        let video = |seq| Stamp { speaker: 0, stream: Stream::Layer(1), flags: 0, seq, sent_ns: 0 };
        v.record(&video(1), ms(0));
        v.record(&video(2), ms(400));
        v.record(&video(2), ms(1000)); // a probe: a copy, not a picture
        v.record(&video(3), ms(1000)); // 600 ms after the last new one
        v.record(&Stamp { stream: Stream::Audio, ..video(9) }, ms(2000)); // audio never freezes
        v.record(&video(4), ms(1400));
        assert_eq!(v.freezes(), 1);
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
