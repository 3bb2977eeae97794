//! Drop accounting: every packet (or feedback message) the router does not forward is counted under exactly
//! one [`DropReason`]. Packet-level reasons count once per packet; consumer-level reasons
//! ([`DropReason::CodecNotNegotiated`], [`DropReason::WaitingForKeyframe`], [`DropReason::BeforeStart`]) count
//! once per consumer per packet. Counters are a fixed array, so counting never allocates.

use std::fmt;

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// The producer id is not (or no longer) known to the router.
    UnknownProducer,
    /// The payload type was not negotiated with the publisher.
    UnknownPayloadType,
    /// The consumer did not negotiate the packet's codec (counted per consumer).
    CodecNotNegotiated,
    /// A video consumer is still waiting for its first keyframe (counted per consumer).
    WaitingForKeyframe,
    /// The packet is older than the consumer's first forwarded packet (counted per consumer).
    BeforeStart,
    /// The packet cannot be valid, e.g. an empty video payload.
    Malformed,
    /// A keyframe request named a consumer the router does not know.
    UnknownConsumer,
    /// The packet carries the SSRC the producer's stream had before its latest restart and arrived shortly
    /// after it: a late packet of the old stream, not a second restart.
    StaleSsrc,
    /// The producer is paused (muted by an operator); counted once per packet.
    Paused,
    /// The packet names a simulcast layer the producer does not have.
    UnknownLayer,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 10] = [
        DropReason::UnknownProducer,
        DropReason::UnknownPayloadType,
        DropReason::CodecNotNegotiated,
        DropReason::WaitingForKeyframe,
        DropReason::BeforeStart,
        DropReason::Malformed,
        DropReason::UnknownConsumer,
        DropReason::StaleSsrc,
        DropReason::Paused,
        DropReason::UnknownLayer,
    ];

    /// Stable snake_case name, suitable as a metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::UnknownProducer => "unknown_producer",
            DropReason::UnknownPayloadType => "unknown_payload_type",
            DropReason::CodecNotNegotiated => "codec_not_negotiated",
            DropReason::WaitingForKeyframe => "waiting_for_keyframe",
            DropReason::BeforeStart => "before_start",
            DropReason::Malformed => "malformed",
            DropReason::UnknownConsumer => "unknown_consumer",
            DropReason::StaleSsrc => "stale_ssrc",
            DropReason::Paused => "paused",
            DropReason::UnknownLayer => "unknown_layer",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One counter per [`DropReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounters {
    /// How many drops were counted for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Every reason with its count, in [`DropReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub(crate) fn count(&mut self, reason: DropReason) {
        let c = &mut self.counts[reason.index()];
        *c = c.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    #[test]
    fn counts_sum() {
        let mut c = DropCounters::default();
        c.count(DropReason::Malformed);
        c.count(DropReason::Malformed);
        c.count(DropReason::BeforeStart);
        assert_eq!(c.get(DropReason::Malformed), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(c.iter().filter(|&(_, n)| n > 0).count(), 2);
    }
}
