//! The speakers' send log, and the header-only receive path of viewers that do not decrypt.
//!
//! With `--decrypt-one-in K`, one viewer in K decrypts every packet (its figures come from the stamps in
//! the payloads, so they are verified cryptographically). The others decrypt only until their first key
//! frame: each decrypted packet teaches them, per SSRC, which speaker stream it carries and the offset
//! between the SFU's rewritten RTP sequence number and the speaker's own ([`HeaderCounter::learn`]). From
//! then on they read the plaintext SRTP header (sequence number and SSRC) of each packet and look its send
//! time up in the [`SendLog`] the speakers write, without handing the packet to str0m. Loss, duplicates,
//! reordering and latency are then counted exactly as for a decrypting viewer; what such a viewer does not
//! do is check the payload and its SRTP authentication tag, and (as str0m never sees those packets) send
//! NACKs or receiver reports for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stamp::{Stamp, Stream};

/// Packets remembered per speaker stream: about 70 s of 1.5 Mbit/s video.
const LOG_LEN: usize = 16_384;

/// The send-time bits of a slot's time word.
const NS_MASK: u64 = (1 << 56) - 1;

/// Marks an empty slot (no sequence number is this large).
const EMPTY: u64 = u64::MAX;

/// Send times of every speaker's recent packets, by speaker, stream and the speaker's sequence number.
/// Written by the speakers' shard, read by every viewer shard; lock-free.
#[derive(Debug)]
pub struct SendLog {
    speakers: usize,
    /// Per slot: the sequence number it holds, then its send time in [`crate::stamp::Clock`] nanoseconds
    /// (the low 56 bits: over two years) with the stamp's flags in the top byte.
    seqs: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
}

impl SendLog {
    /// A log for `speakers` speakers.
    pub fn new(speakers: usize) -> SendLog {
        let n = speakers * 2 * LOG_LEN;
        SendLog {
            speakers,
            seqs: (0..n).map(|_| AtomicU64::new(EMPTY)).collect(),
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, speaker: u16, stream: Stream, seq: u64) -> Option<usize> {
        let speaker = usize::from(speaker);
        if speaker >= self.speakers || seq == EMPTY {
            return None;
        }
        let s = match stream {
            Stream::Audio => 0,
            Stream::Video => 1,
            // Simulcast runs decrypt every packet (`--simulcast` refuses `--decrypt-one-in`).
            Stream::Layer(_) => return None,
        };
        Some((speaker * 2 + s) * LOG_LEN + (seq % LOG_LEN as u64) as usize)
    }

    /// A speaker sent `stamp`.
    pub fn record(&self, stamp: &Stamp) {
        let Some(i) = self.slot(stamp.speaker, stamp.stream, stamp.seq) else { return };
        if let (Some(seq), Some(sent)) = (self.seqs.get(i), self.sent.get(i)) {
            // Invalidate, write the time, then publish the sequence number: a reader that sees the number
            // sees the time written before it.
            seq.store(EMPTY, Ordering::Release);
            sent.store((stamp.sent_ns & NS_MASK) | (u64::from(stamp.flags) << 56), Ordering::Release);
            seq.store(stamp.seq, Ordering::Release);
        }
    }

    /// When the speaker sent packet `seq` of `stream`, if the log still holds it.
    pub fn sent_ns(&self, speaker: u16, stream: Stream, seq: u64) -> Option<u64> {
        self.sent(speaker, stream, seq).map(|(ns, _)| ns)
    }

    /// When the speaker sent packet `seq` of `stream`, and its stamp's flags (key frame, frame start).
    pub fn sent(&self, speaker: u16, stream: Stream, seq: u64) -> Option<(u64, u8)> {
        let i = self.slot(speaker, stream, seq)?;
        let (slot_seq, sent) = (self.seqs.get(i)?, self.sent.get(i)?);
        if slot_seq.load(Ordering::Acquire) != seq {
            return None;
        }
        let ns = sent.load(Ordering::Acquire);
        // Overwritten meanwhile (only after LOG_LEN more packets of the stream): treat as unknown.
        (slot_seq.load(Ordering::Acquire) == seq).then_some((ns & NS_MASK, (ns >> 56) as u8))
    }
}

/// What one SSRC carries, learned from a decrypted packet.
#[derive(Debug, Clone, Copy)]
struct Learned {
    speaker: u16,
    stream: Stream,
    /// The speaker's sequence number minus the extended RTP sequence number.
    offset: i64,
    /// Highest extended RTP sequence number seen.
    ext: u64,
}

/// A viewer's header-only receive path (see the module docs).
#[derive(Debug, Default)]
pub struct HeaderCounter {
    by_ssrc: HashMap<u32, Learned>,
    /// Packets counted from their headers alone.
    pub counted: u64,
}

impl HeaderCounter {
    /// A decrypted packet of `ssrc` with extended sequence number `ext` (str0m's) carried `stamp`. The
    /// first one per SSRC counts: the SFU keeps one offset per stream, and later packets str0m decrypts
    /// (resends) would only repeat it.
    pub fn learn(&mut self, ssrc: u32, ext: u64, stamp: &Stamp) {
        let offset = (stamp.seq as i64).wrapping_sub(ext as i64);
        self.by_ssrc.entry(ssrc).or_insert(Learned { speaker: stamp.speaker, stream: stamp.stream, offset, ext });
    }

    /// Whether any SSRC was learned.
    pub fn ready(&self) -> bool {
        !self.by_ssrc.is_empty()
    }

    /// The stamp of an SRTP packet of a learned SSRC, rebuilt from its header and the send log; `None` if
    /// the datagram is not RTP, its SSRC was not learned (RTX), or the log no longer holds it. Such
    /// datagrams go to str0m instead. The mapping assumes the SFU keeps one sequence offset per stream:
    /// a speaker that restarts its stream or is paused and resumed (dais-load's speakers do neither)
    /// gets new numbers on the same SSRC, and counting viewers would then misattribute packets.
    pub fn count(&mut self, datagram: &[u8], log: &SendLog) -> Option<Stamp> {
        let (seq16, ssrc) = rtp_seq_ssrc(datagram)?;
        let l = self.by_ssrc.get_mut(&ssrc)?;
        let ext = extend(l.ext, seq16);
        l.ext = l.ext.max(ext);
        let seq = u64::try_from((ext as i64).wrapping_add(l.offset)).ok()?;
        let (sent_ns, flags) = log.sent(l.speaker, l.stream, seq)?;
        self.counted += 1;
        Some(Stamp { speaker: l.speaker, stream: l.stream, flags, seq, sent_ns })
    }
}

/// Sequence number and SSRC of an RTP (not RTCP) packet, from its plaintext header (RFC 3550, RFC 5761).
fn rtp_seq_ssrc(d: &[u8]) -> Option<(u16, u32)> {
    let (first, second) = (*d.first()?, *d.get(1)?);
    if !(128..=191).contains(&first) || (64..=95).contains(&(second & 0x7f)) {
        return None;
    }
    let seq = u16::from_be_bytes([*d.get(2)?, *d.get(3)?]);
    let ssrc = u32::from_be_bytes(d.get(8..12)?.try_into().ok()?);
    Some((seq, ssrc))
}

/// The extended sequence number of `seq` nearest to `last`.
fn extend(last: u64, seq: u16) -> u64 {
    let base = last & !0xffff;
    let candidates = [base.wrapping_sub(0x1_0000), base, base.wrapping_add(0x1_0000)];
    candidates.into_iter().map(|b| b | u64::from(seq)).min_by_key(|c| c.abs_diff(last)).unwrap_or(u64::from(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(speaker: u16, stream: Stream, seq: u64, sent_ns: u64) -> Stamp {
        Stamp { speaker, stream, flags: 0, seq, sent_ns }
    }

    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut d = vec![0x80, 96];
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&[0, 0, 0, 1]);
        d.extend_from_slice(&ssrc.to_be_bytes());
        d.extend_from_slice(&[0xaa; 100]);
        d
    }

    #[test]
    fn the_log_answers_only_for_what_it_holds() {
        let log = SendLog::new(2);
        log.record(&stamp(1, Stream::Video, 5, 500));
        assert_eq!(log.sent_ns(1, Stream::Video, 5), Some(500));
        assert_eq!(log.sent_ns(1, Stream::Audio, 5), None, "streams are apart");
        assert_eq!(log.sent_ns(0, Stream::Video, 5), None, "speakers are apart");
        assert_eq!(log.sent_ns(2, Stream::Video, 5), None, "no such speaker");
        log.record(&stamp(1, Stream::Video, 5 + LOG_LEN as u64, 900));
        assert_eq!(log.sent_ns(1, Stream::Video, 5), None, "overwritten");
        assert_eq!(log.sent_ns(1, Stream::Video, 5 + LOG_LEN as u64), Some(900));
    }

    #[test]
    fn headers_map_to_the_speakers_sequence_numbers_across_wraps() {
        let log = SendLog::new(1);
        for seq in 0..70_000u64 {
            log.record(&stamp(0, Stream::Video, seq, seq * 10));
        }
        let mut c = HeaderCounter::default();
        assert!(!c.ready());
        // The SFU numbered speaker packet 60,000 as RTP 65,530 (extended 65,530).
        c.learn(7, 65_530, &stamp(0, Stream::Video, 60_000, 0));
        assert!(c.ready());
        let s = c.count(&rtp(65_535, 7), &log).expect("known ssrc");
        assert_eq!((s.seq, s.sent_ns), (60_005, 600_050));
        let s = c.count(&rtp(3, 7), &log).expect("after the wrap");
        assert_eq!(s.seq, 60_009);
        let s = c.count(&rtp(65_534, 7), &log).expect("late, before the wrap");
        assert_eq!(s.seq, 60_004);
        assert_eq!(c.counted, 3);
        assert!(c.count(&rtp(3, 8), &log).is_none(), "unknown ssrc (e.g. RTX) goes to str0m");
        let mut rtcp = rtp(0, 7);
        rtcp[1] = 200; // sender report
        assert!(c.count(&rtcp, &log).is_none(), "RTCP goes to str0m");
        assert!(c.count(&[0x80, 96, 0], &log).is_none(), "truncated");
        assert!(c.count(&[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &log).is_none(), "DTLS");
    }

    #[test]
    fn counted_packets_keep_their_key_frame_flags() {
        let log = SendLog::new(1);
        let key = Stamp {
            flags: crate::stamp::FLAG_KEYFRAME | crate::stamp::FLAG_FRAME_START,
            ..stamp(0, Stream::Video, 3, 1 << 40)
        };
        log.record(&key);
        log.record(&stamp(0, Stream::Video, 4, 77));
        assert_eq!(log.sent(0, Stream::Video, 3), Some((1 << 40, key.flags)));
        let mut c = HeaderCounter::default();
        c.learn(9, 3, &key);
        assert!(c.count(&rtp(3, 9), &log).expect("known").starts_keyframe(), "a counted key frame is one");
        assert!(!c.count(&rtp(4, 9), &log).expect("known").starts_keyframe());
    }

    #[test]
    fn extension_picks_the_nearest() {
        assert_eq!(extend(10, 12), 12);
        assert_eq!(extend(0x1_0005, 0xfffe), 0xfffe);
        assert_eq!(extend(0xfffe, 2), 0x1_0002);
        assert_eq!(extend(0, 0xffff), 0xffff, "no wrap below zero");
    }
}
