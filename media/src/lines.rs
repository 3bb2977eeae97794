//! The m-lines of a player session (WHEP, [`SessionMode::Player`](crate::SessionMode::Player)): the
//! client's own offer asked to receive them, and the server never offers, so what the session is
//! subscribed to rides those m-lines in turn.
//!
//! Invariants kept here:
//! - An m-line carries at most one consumer, of its own kind; a subscription waits (in order) until
//!   a line of its kind is free, and a line that frees takes the oldest waiting one of its kind.
//! - At most [`MAX_WAITING`] subscriptions wait; beyond that the oldest is forgotten (a player shows
//!   one participant or the program, a handful of streams, so this only bounds a misuse).

use std::collections::VecDeque;

use str0m::media::Mid;

use crate::negotiation::PendingConsumer;
use crate::Kind;

/// Most subscriptions waiting for a free m-line.
pub(crate) const MAX_WAITING: usize = 8;

#[derive(Debug)]
struct Line {
    mid: Mid,
    kind: Kind,
    busy: bool,
}

/// A player's m-lines and the subscriptions waiting for one. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct PlayerLines {
    lines: Vec<Line>,
    waiting: VecDeque<PendingConsumer>,
}

impl PlayerLines {
    /// The client's offer asks to receive `kind` on `mid`: returns the subscription it now carries.
    pub fn offered(&mut self, mid: Mid, kind: Kind) -> Option<(Mid, PendingConsumer)> {
        if self.lines.iter().any(|l| l.mid == mid) {
            return None;
        }
        self.lines.push(Line { mid, kind, busy: false });
        self.fill(mid)
    }

    /// Carry `consumer` on a free line of its kind (returned), or keep it waiting for one.
    pub fn subscribe(&mut self, consumer: PendingConsumer) -> Option<(Mid, PendingConsumer)> {
        if let Some(line) = self.lines.iter_mut().find(|l| !l.busy && l.kind == consumer.kind) {
            line.busy = true;
            return Some((line.mid, consumer));
        }
        if self.waiting.len() >= MAX_WAITING {
            self.waiting.pop_front();
        }
        self.waiting.push_back(consumer);
        None
    }

    /// The line `mid` no longer carries its consumer (it ended or could not be carried): returns the
    /// subscription it carries next.
    pub fn release(&mut self, mid: Mid) -> Option<(Mid, PendingConsumer)> {
        let line = self.lines.iter_mut().find(|l| l.mid == mid)?;
        line.busy = false;
        self.fill(mid)
    }

    /// Whether `mid` is one of the player's lines.
    pub fn has(&self, mid: Mid) -> bool {
        self.lines.iter().any(|l| l.mid == mid)
    }

    /// Give the free line `mid` the oldest waiting subscription of its kind.
    fn fill(&mut self, mid: Mid) -> Option<(Mid, PendingConsumer)> {
        let line = self.lines.iter_mut().find(|l| l.mid == mid && !l.busy)?;
        let at = self.waiting.iter().position(|c| c.kind == line.kind)?;
        let consumer = self.waiting.remove(at)?;
        line.busy = true;
        Some((mid, consumer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProducerKey;

    fn sub(producer: u64, kind: Kind) -> PendingConsumer {
        PendingConsumer {
            producer: ProducerKey(producer),
            kind,
            stream_id: "p1".into(),
            track_id: format!("m{producer}"),
            specs: Vec::new(),
        }
    }

    fn carried(x: Option<(Mid, PendingConsumer)>) -> Option<(String, u64)> {
        x.map(|(m, c)| (m.to_string(), c.producer.0))
    }

    #[test]
    fn subscriptions_wait_for_the_offer_and_take_the_line_of_their_kind() {
        let mut p = PlayerLines::default();
        assert!(p.subscribe(sub(1, Kind::Video)).is_none(), "no line yet");
        assert!(p.subscribe(sub(2, Kind::Audio)).is_none());
        assert_eq!(carried(p.offered(Mid::from("0"), Kind::Audio)), Some(("0".into(), 2)));
        assert_eq!(carried(p.offered(Mid::from("1"), Kind::Video)), Some(("1".into(), 1)));
        assert!(p.offered(Mid::from("1"), Kind::Video).is_none(), "a line is offered once");
    }

    #[test]
    fn a_line_that_frees_carries_the_next_waiting_one_of_its_kind() {
        let mut p = PlayerLines::default();
        assert!(p.offered(Mid::from("v"), Kind::Video).is_none());
        assert_eq!(carried(p.subscribe(sub(1, Kind::Video))), Some(("v".into(), 1)));
        assert!(p.subscribe(sub(2, Kind::Audio)).is_none(), "no audio line: it waits");
        assert!(p.subscribe(sub(3, Kind::Video)).is_none(), "the video line is busy");
        assert_eq!(carried(p.release(Mid::from("v"))), Some(("v".into(), 3)), "not the audio one");
        assert!(p.release(Mid::from("v")).is_none(), "nothing else waits for video");
        assert_eq!(carried(p.subscribe(sub(4, Kind::Video))), Some(("v".into(), 4)), "the line is free");
        assert!(p.release(Mid::from("x")).is_none(), "not a line");
    }

    #[test]
    fn at_most_max_waiting_wait_and_the_oldest_go_first() {
        let mut p = PlayerLines::default();
        for i in 0..(MAX_WAITING as u64 + 2) {
            assert!(p.subscribe(sub(i, Kind::Video)).is_none());
        }
        assert_eq!(carried(p.offered(Mid::from("v"), Kind::Video)), Some(("v".into(), 2)), "0 and 1 forgotten");
    }
}
