//! Per-stream receive statistics.
//!
//! One [`StreamStats`] per received stream, keyed by the publisher's participant id and the media
//! id (the msid the server puts on every track it sends). It counts packets and bytes, payload
//! mismatches, sequence gaps (missing numbers), packets that arrived out of order or twice, and
//! keyframes; sequence numbers are unwrapped to 64 bits so a wrap is not a gap.

use crate::media::Verified;
use dais_proto::MediaKind;

/// Receive statistics of one incoming stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// Publisher's participant id (the msid stream id).
    pub participant_id: String,
    /// Media id (the msid track id).
    pub media_id: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// SSRC of the last packet.
    pub ssrc: u32,
    /// Sender tag read from the last readable payload.
    pub sender_tag: Option<u32>,
    /// RTP packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Packets whose payload was not byte-identical to what the sender produced (or unreadable).
    pub payload_mismatches: u64,
    /// Sequence numbers skipped (missing) between consecutive packets.
    pub seq_gaps: u64,
    /// Packets that arrived at or below the highest sequence number already seen.
    pub out_of_order: u64,
    /// Times the embedded counter jumped by more than one between consecutive packets.
    pub counter_jumps: u64,
    /// First sequence number received.
    pub first_seq: Option<u16>,
    /// Last sequence number received.
    pub last_seq: Option<u16>,
    /// Embedded counter of the first packet.
    pub first_counter: Option<u64>,
    /// Embedded counter of the last packet.
    pub last_counter: Option<u64>,
    /// Packets that start a keyframe.
    pub keyframes: u64,
    /// Whether the first packet received started a keyframe (video gating should ensure it).
    pub first_is_keyframe: bool,
    /// Packets with the RTP marker bit.
    pub markers: u64,
    /// Whether the track has ended (its m-line went inactive or the connection closed).
    pub ended: bool,
    highest_ext_seq: Option<u64>,
}

impl StreamStats {
    /// Empty statistics for a stream.
    pub fn new(participant_id: String, media_id: String, kind: MediaKind) -> Self {
        Self {
            participant_id,
            media_id,
            kind,
            ssrc: 0,
            sender_tag: None,
            packets: 0,
            bytes: 0,
            payload_mismatches: 0,
            seq_gaps: 0,
            out_of_order: 0,
            counter_jumps: 0,
            first_seq: None,
            last_seq: None,
            first_counter: None,
            last_counter: None,
            keyframes: 0,
            first_is_keyframe: false,
            markers: 0,
            ended: false,
            highest_ext_seq: None,
        }
    }

    /// Account one received packet.
    pub fn record(&mut self, seq: u16, ssrc: u32, marker: bool, len: usize, verified: Option<Verified>) {
        let ok = verified.is_some_and(|v| v.ok);
        if self.packets == 0 {
            self.first_seq = Some(seq);
            self.first_is_keyframe = verified.is_some_and(|v| v.keyframe_start());
        }
        self.packets += 1;
        self.bytes += len as u64;
        self.ssrc = ssrc;
        self.last_seq = Some(seq);
        if marker {
            self.markers += 1;
        }
        if !ok {
            self.payload_mismatches += 1;
        }
        match self.highest_ext_seq {
            None => self.highest_ext_seq = Some(u64::from(seq) + (1 << 16)),
            Some(high) => {
                // Unwrap against the highest seen: pick the candidate nearest to it.
                let base = high & !0xffff;
                let ext = [base.wrapping_sub(1 << 16), base, base + (1 << 16)]
                    .into_iter()
                    .map(|b| b + u64::from(seq))
                    .min_by_key(|c| c.abs_diff(high))
                    .unwrap_or(high);
                if ext > high {
                    self.seq_gaps += ext - high - 1;
                    self.highest_ext_seq = Some(ext);
                } else {
                    self.out_of_order += 1;
                }
            }
        }
        if let Some(v) = verified {
            self.sender_tag = Some(v.tag);
            if v.keyframe_start() {
                self.keyframes += 1;
            }
            if self.first_counter.is_none() {
                self.first_counter = Some(v.counter);
            }
            if let Some(last) = self.last_counter {
                if v.counter != last.wrapping_add(1) {
                    self.counter_jumps += 1;
                }
            }
            self.last_counter = Some(v.counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{verify_payload, AudioSource};

    #[test]
    fn contiguous_across_wrap_then_gap_and_reorder() {
        let mut s = StreamStats::new("p1".into(), "m1".into(), MediaKind::Audio);
        let mut src = AudioSource::new(3);
        let mut seq: u16 = 65530;
        for _ in 0..12 {
            let p = src.next_packet();
            s.record(seq, 9, false, p.payload.len(), verify_payload(MediaKind::Audio, &p.payload));
            seq = seq.wrapping_add(1);
        }
        assert_eq!((s.packets, s.seq_gaps, s.out_of_order, s.payload_mismatches), (12, 0, 0, 0));
        assert_eq!(s.counter_jumps, 0);
        s.record(seq.wrapping_add(2), 9, false, 10, None);
        assert_eq!((s.seq_gaps, s.payload_mismatches), (2, 1));
        s.record(seq, 9, false, 10, None);
        assert_eq!(s.out_of_order, 1);
    }
}
