//! One producer layer's recent packets, kept once for every consumer's retransmissions.
//!
//! An SFU that lets each outgoing stream keep its own resend buffer holds the same second of packets
//! once per viewer. Here a [`PacketCache`] per video producer layer holds them once; a consumer's NACK is
//! mapped back through that consumer's sequence mapping to the layer's extended sequence number and
//! answered from here (mediasoup keeps one store per producer in the same way).
//!
//! The cache is a ring indexed by extended sequence number modulo its capacity (a power of two), so
//! insert and lookup are O(1) and the ring is allocated once, on the first insert, never per packet. A
//! lookup answers only for the exact sequence number and only while the packet is younger than the
//! maximum age; a late packet never overwrites a newer one in its slot.

use std::time::{Duration, Instant};

use crate::{MediaExt, Payload};

/// One cached packet, as the publisher sent it (before any consumer's rewrite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Extended sequence number in the layer's stream.
    pub ext_seq: u64,
    /// RTP timestamp as sent by the publisher.
    pub timestamp: u32,
    /// Payload type as negotiated with the publisher.
    pub payload_type: u8,
    /// RTP marker bit.
    pub marker: bool,
    /// The packet starts a keyframe.
    pub keyframe: bool,
    /// When it reached the router.
    pub arrival: Instant,
    /// The shared payload.
    pub payload: Payload,
    /// Header-extension values that travel with the media.
    pub ext: MediaExt,
    /// The publisher's capture time on the caller's clock.
    pub wallclock: Instant,
}

/// A ring of recent packets of one stream. See the module docs.
#[derive(Debug, Clone)]
pub struct PacketCache {
    slots: Vec<Option<Cached>>,
    capacity: usize,
    max_age: Duration,
}

impl PacketCache {
    /// A cache of at most `capacity` packets (rounded up to a power of two; 0 keeps nothing) younger
    /// than `max_age`. Nothing is allocated until the first insert.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        let capacity = if capacity == 0 { 0 } else { capacity.next_power_of_two() };
        PacketCache { slots: Vec::new(), capacity, max_age }
    }

    /// Keep `packet`, replacing whatever older packet shared its slot.
    pub fn insert(&mut self, packet: Cached) {
        if self.capacity == 0 {
            return;
        }
        if self.slots.is_empty() {
            self.slots.resize(self.capacity, None);
        }
        let index = self.index(packet.ext_seq);
        let Some(slot) = self.slots.get_mut(index) else { return };
        if slot.as_ref().is_some_and(|held| held.ext_seq > packet.ext_seq) {
            return;
        }
        *slot = Some(packet);
    }

    /// The packet with extended sequence number `ext_seq`, if it is held and not older than the
    /// maximum age at `now`.
    pub fn get(&self, now: Instant, ext_seq: u64) -> Option<&Cached> {
        let held = self.slots.get(self.index(ext_seq))?.as_ref()?;
        let fresh = now.saturating_duration_since(held.arrival) <= self.max_age;
        (held.ext_seq == ext_seq && fresh).then_some(held)
    }

    /// Forget every packet (the stream restarted); the ring stays allocated.
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
    }

    fn index(&self, ext_seq: u64) -> usize {
        // The capacity is a power of two (or 0, when `slots` stays empty and every lookup misses).
        (ext_seq as usize) & self.capacity.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn packet(base: Instant, ext_seq: u64, ms: u64) -> Cached {
        Cached {
            ext_seq,
            timestamp: ext_seq as u32 * 3000,
            payload_type: 96,
            marker: false,
            keyframe: false,
            arrival: base + Duration::from_millis(ms),
            payload: Arc::from(&[ext_seq as u8; 4][..]),
            ext: MediaExt::default(),
            wallclock: base,
        }
    }

    #[test]
    fn holds_exact_sequence_numbers_within_capacity() {
        let base = Instant::now();
        let mut c = PacketCache::new(6, Duration::from_secs(1));
        for s in 100..110 {
            c.insert(packet(base, s, 0));
        }
        // Capacity 6 rounds up to 8: 102..=109 are held, 100 and 101 were overwritten.
        assert!(c.get(base, 101).is_none());
        for s in 102..110 {
            assert_eq!(c.get(base, s).map(|p| p.ext_seq), Some(s));
        }
        assert!(c.get(base, 110).is_none(), "never inserted");
        assert!(c.get(base, 110 + 8).is_none());
    }

    #[test]
    fn old_packets_expire_and_late_ones_never_replace_newer() {
        let base = Instant::now();
        let mut c = PacketCache::new(8, Duration::from_millis(1000));
        c.insert(packet(base, 20, 0));
        assert!(c.get(base + Duration::from_millis(1000), 20).is_some());
        assert!(c.get(base + Duration::from_millis(1001), 20).is_none(), "older than the maximum age");
        c.insert(packet(base, 12, 0));
        assert!(c.get(base, 12).is_none(), "a late packet does not evict the newer one in its slot");
        assert!(c.get(base, 20).is_some());
        c.clear();
        assert!(c.get(base, 20).is_none());
    }

    #[test]
    fn a_zero_capacity_cache_keeps_nothing() {
        let base = Instant::now();
        let mut c = PacketCache::new(0, Duration::from_secs(1));
        c.insert(packet(base, 1, 0));
        assert!(c.get(base, 1).is_none());
        assert!(c.slots.is_empty());
    }
}
