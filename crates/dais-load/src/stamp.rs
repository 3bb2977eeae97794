//! The synthetic media the load generator sends, and the stamp every packet carries.
//!
//! Speakers send payloads that the SFU treats as real VP8 and Opus: a video packet starts with an RFC 7741
//! payload descriptor (S=1 on the first packet of a frame) and, on a frame's first packet, a VP8 payload
//! header whose P bit marks key frames, so the router's keyframe gating works on them. The last
//! [`STAMP_LEN`] bytes of every payload are a [`Stamp`]: which speaker and stream sent it, its sequence
//! number in that stream and the send time. The SFU forwards payloads unchanged, so a viewer reads the stamp
//! back after SRTP decryption to measure latency, loss, duplicates and reordering without any shared state
//! with the sender beyond the process-wide clock [`Clock`].

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes of the stamp at the end of every payload.
pub const STAMP_LEN: usize = 24;

/// "DAIS" in ASCII: marks a payload as ours.
const MAGIC: u32 = 0x4441_4953;

/// Flag: the packet belongs to a key frame.
pub const FLAG_KEYFRAME: u8 = 0x01;
/// Flag: the packet is the first of its frame.
pub const FLAG_FRAME_START: u8 = 0x02;

/// Which of a speaker's streams a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// The Opus-like stream, 50 packets/s.
    Audio,
    /// The VP8-like stream of a speaker that sends one.
    Video,
    /// Simulcast layer `n` of a speaker's VP8-like video (`--simulcast`), 0 the lowest.
    Layer(u8),
}

/// Simulcast layers a speaker sends with `--simulcast`.
pub const LAYERS: u8 = 3;

impl Stream {
    /// Whether this is video (one stream or a layer).
    pub fn is_video(self) -> bool {
        self != Stream::Audio
    }

    /// The simulcast layer, if this is one.
    pub fn layer(self) -> Option<u8> {
        match self {
            Stream::Layer(n) => Some(n),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Stream::Audio => 0,
            Stream::Video => 1,
            Stream::Layer(n) => 2 + n.min(LAYERS - 1),
        }
    }

    fn from_code(c: u8) -> Option<Stream> {
        match c {
            0 => Some(Stream::Audio),
            1 => Some(Stream::Video),
            c if (2..2 + LAYERS).contains(&c) => Some(Stream::Layer(c - 2)),
            _ => None,
        }
    }
}

/// What a viewer learns from one received payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the sending speaker in this run.
    pub speaker: u16,
    /// Its stream.
    pub stream: Stream,
    /// [`FLAG_KEYFRAME`] and [`FLAG_FRAME_START`].
    pub flags: u8,
    /// Sequence number within the stream, from 0, without gaps at the sender.
    pub seq: u64,
    /// Send time in nanoseconds of the process clock ([`Clock`]).
    pub sent_ns: u64,
}

impl Stamp {
    /// Whether this packet starts a key frame: the point from which a viewer can decode.
    pub fn starts_keyframe(&self) -> bool {
        self.flags & (FLAG_KEYFRAME | FLAG_FRAME_START) == (FLAG_KEYFRAME | FLAG_FRAME_START)
    }

    /// Write the stamp into the last [`STAMP_LEN`] bytes of `payload`. Does nothing if it is shorter.
    pub fn write(&self, payload: &mut [u8]) {
        let Some(start) = payload.len().checked_sub(STAMP_LEN) else {
            return;
        };
        let out = &mut payload[start..];
        out[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.speaker.to_be_bytes());
        out[6] = self.stream.code();
        out[7] = self.flags;
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Read the stamp from the end of a received payload; `None` if it is not one of ours.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let start = payload.len().checked_sub(STAMP_LEN)?;
        let s = payload.get(start..)?;
        let word = |r: std::ops::Range<usize>| s.get(r).and_then(|b| <[u8; 8]>::try_from(b).ok());
        if u32::from_be_bytes(s.get(0..4)?.try_into().ok()?) != MAGIC {
            return None;
        }
        Some(Stamp {
            speaker: u16::from_be_bytes(s.get(4..6)?.try_into().ok()?),
            stream: Stream::from_code(*s.get(6)?)?,
            flags: *s.get(7)?,
            seq: u64::from_be_bytes(word(8..16)?),
            sent_ns: u64::from_be_bytes(word(16..24)?),
        })
    }
}

/// The process-wide clock that stamps are read against: nanoseconds since it was made. It also maps the
/// kernel's receive timestamps (wall clock) onto it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
    /// The wall clock at `epoch`, since the Unix epoch.
    wall_epoch: Duration,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        let epoch = Instant::now();
        let wall_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { epoch, wall_epoch }
    }

    /// The instant of a wall-clock time (since the Unix epoch), e.g. a kernel receive timestamp; the epoch
    /// if it is earlier. Good to the few microseconds between the two clock readings in [`Clock::new`],
    /// as long as nobody steps the wall clock during the run.
    pub fn from_wall(&self, wall: Duration) -> Instant {
        self.epoch + wall.saturating_sub(self.wall_epoch)
    }

    /// Nanoseconds since the epoch at `t` (0 before it).
    pub fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after the epoch.
    pub fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Build one synthetic payload of `len` bytes (at least [`STAMP_LEN`] + 10) carrying `stamp`.
///
/// Video: RFC 7741 descriptor with S set on a frame's first packet and PID 0; the first packet also carries a
/// VP8 payload header (P=0, the start code and the frame size on key frames: 640x480 for one stream,
/// 320x180, 640x360 and 1280x720 for simulcast layers 0, 1 and 2). Audio: a CELT TOC byte. The filler is
/// arbitrary but fixed, so that the SFU and str0m see realistic sizes.
pub fn payload(stamp: &Stamp, len: usize) -> Vec<u8> {
    let len = len.max(STAMP_LEN + 10);
    let mut v = vec![0u8; len];
    match stamp.stream {
        Stream::Video | Stream::Layer(_) => {
            let start = stamp.flags & FLAG_FRAME_START != 0;
            // Width and height, 14 bits little-endian each (no scaling).
            let size: [u8; 4] = match stamp.stream {
                Stream::Layer(0) => [0x40, 0x01, 0xb4, 0x00],
                Stream::Layer(1) => [0x80, 0x02, 0x68, 0x01],
                Stream::Layer(_) => [0x00, 0x05, 0xd0, 0x02],
                _ => [0x80, 0x02, 0xe0, 0x01],
            };
            // Descriptor, a 3-byte frame tag (P=0), the start code, the size.
            let key = [0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, size[0], size[1], size[2], size[3]];
            let head: &[u8] = match (start, stamp.flags & FLAG_KEYFRAME != 0) {
                // S=1 PID=0; P=0 (key frame).
                (true, true) => &key,
                // S=1 PID=0; P=1 (interframe).
                (true, false) => &[0x10, 0x01, 0x00, 0x11],
                // Continuation: S=0.
                (false, _) => &[0x00],
            };
            v[..head.len()].copy_from_slice(head);
            fill(&mut v[head.len()..len - STAMP_LEN]);
        }
        Stream::Audio => {
            v[0] = 0xfc;
            fill(&mut v[1..len - STAMP_LEN]);
        }
    }
    stamp.write(&mut v);
    v
}

fn fill(buf: &mut [u8]) {
    let mut x: u32 = 0x9e37_79b9;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_payloads() {
        for (stream, flags, len) in [
            (Stream::Video, FLAG_KEYFRAME | FLAG_FRAME_START, 1200),
            (Stream::Video, 0, 900),
            (Stream::Audio, 0, 160),
            (Stream::Layer(0), FLAG_FRAME_START, 600),
            (Stream::Layer(2), FLAG_KEYFRAME | FLAG_FRAME_START, 1200),
        ] {
            let s = Stamp { speaker: 3, stream, flags, seq: 1 << 40, sent_ns: 123_456_789 };
            let p = payload(&s, len);
            assert_eq!(p.len(), len);
            assert_eq!(Stamp::read(&p), Some(s));
        }
    }

    #[test]
    fn keyframe_payloads_open_the_routers_gate() {
        let key =
            Stamp { speaker: 0, stream: Stream::Video, flags: FLAG_KEYFRAME | FLAG_FRAME_START, seq: 0, sent_ns: 0 };
        let inter = Stamp { flags: FLAG_FRAME_START, ..key };
        let cont = Stamp { flags: FLAG_KEYFRAME, ..key };
        let vp8 = |p: &[u8]| dais_forward::is_keyframe_start(dais_forward::Codec::Vp8, p);
        assert!(vp8(&payload(&key, 1200)));
        assert!(!vp8(&payload(&inter, 1200)));
        assert!(!vp8(&payload(&cont, 1200)));
        assert!(key.starts_keyframe() && !inter.starts_keyframe() && !cont.starts_keyframe());
        // Each layer's key frames carry its size, as a camera's simulcast encodings do.
        for (layer, size) in [(0, (320, 180)), (1, (640, 360)), (2, (1280, 720))] {
            let p = payload(&Stamp { stream: Stream::Layer(layer), ..key }, 1200);
            assert!(vp8(&p));
            assert_eq!(dais_forward::vp8::dimensions(&p), Some(size), "layer {layer}");
        }
    }

    #[test]
    fn foreign_and_truncated_payloads_are_not_stamps() {
        assert_eq!(Stamp::read(&[]), None);
        assert_eq!(Stamp::read(&[0u8; 23]), None);
        assert_eq!(Stamp::read(&[0u8; 200]), None);
        let mut p = payload(&Stamp { speaker: 1, stream: Stream::Audio, flags: 0, seq: 9, sent_ns: 1 }, 160);
        let n = p.len();
        p[n - STAMP_LEN + 6] = 7; // unknown stream
        assert_eq!(Stamp::read(&p), None);
        // Every prefix and every single-byte corruption reads as something or nothing, never panics.
        for cut in 0..p.len() {
            let _ = Stamp::read(&p[..cut]);
        }
    }
}
