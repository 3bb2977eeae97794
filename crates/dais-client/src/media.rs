//! Synthetic, self-verifying media payloads.
//!
//! Every payload is a pure function of `(sender tag, kind, packet counter, shape)`, and the tag,
//! counter and shape travel inside the payload itself, so a receiver recomputes the expected bytes
//! from what it got and compares them byte for byte: no side channel, no shared state. The shape
//! (first/last packet of a frame, keyframe, length) is embedded too, so truncation or a flipped
//! flag is a mismatch as well.
//!
//! Layout: a codec prefix, then a 16-byte tag block, then filler bytes.
//! - audio prefix: one Opus TOC byte (`0x78`).
//! - video prefix (RFC 7741): descriptor `0x10` (S=1, PID=0) on the first packet of a frame,
//!   `0x00` on continuations. A frame's first packet then carries a VP8 payload header whose first
//!   byte has bit 0 clear for a keyframe (`10 02 00 9d 01 2a` plus a 320x240 size) and set for a
//!   delta frame (`11 02 00`).
//! - tag block: tag `u32`, kind byte (`A`/`V`), flags byte, counter `u64`, total length `u16`,
//!   all big-endian.
//! - filler: a SplitMix64 stream seeded from tag, kind and counter.

use bytes::{BufMut, Bytes, BytesMut};
use dais_proto::MediaKind;

/// Largest RTP payload this module produces, in bytes.
pub const MAX_PAYLOAD: usize = 1200;
/// RTP timestamp step of one 20 ms Opus packet at 48 kHz.
pub const AUDIO_TS_STEP: u32 = 960;
/// RTP timestamp step of one frame at 30 fps on the 90 kHz video clock.
pub const VIDEO_TS_STEP: u32 = 3000;

const TAG_BLOCK_LEN: usize = 16;
const AUDIO_PREFIX: &[u8] = &[0x78];
const VIDEO_KEY_PREFIX: &[u8] = &[0x10, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
const VIDEO_DELTA_PREFIX: &[u8] = &[0x10, 0x11, 0x02, 0x00];
const VIDEO_CONT_PREFIX: &[u8] = &[0x00];

/// Flag: the packet starts a frame (video) or is a whole frame (audio).
pub const FLAG_FRAME_START: u8 = 1;
/// Flag: the packet belongs to a keyframe.
pub const FLAG_KEYFRAME: u8 = 2;
/// Flag: the packet ends a frame; the RTP marker bit is set on it.
pub const FLAG_FRAME_END: u8 = 4;

fn kind_byte(kind: MediaKind) -> u8 {
    match kind {
        MediaKind::Audio => b'A',
        MediaKind::Video => b'V',
    }
}

fn prefix(kind: MediaKind, flags: u8) -> &'static [u8] {
    match kind {
        MediaKind::Audio => AUDIO_PREFIX,
        MediaKind::Video if flags & FLAG_FRAME_START == 0 => VIDEO_CONT_PREFIX,
        MediaKind::Video if flags & FLAG_KEYFRAME != 0 => VIDEO_KEY_PREFIX,
        MediaKind::Video => VIDEO_DELTA_PREFIX,
    }
}

/// Smallest payload length for a packet of this kind and shape.
pub fn min_len(kind: MediaKind, flags: u8) -> usize {
    prefix(kind, flags).len() + TAG_BLOCK_LEN
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Build one payload. `len` is clamped to `min_len(kind, flags)..=MAX_PAYLOAD`.
pub fn build_payload(tag: u32, kind: MediaKind, counter: u64, flags: u8, len: usize) -> Bytes {
    let pre = prefix(kind, flags);
    let len = len.clamp(min_len(kind, flags), MAX_PAYLOAD);
    let mut buf = BytesMut::with_capacity(len);
    buf.put_slice(pre);
    buf.put_u32(tag);
    buf.put_u8(kind_byte(kind));
    buf.put_u8(flags);
    buf.put_u64(counter);
    // `len` is at most MAX_PAYLOAD, which fits in u16.
    buf.put_u16(len as u16);
    let mut state = (u64::from(tag) << 32) ^ (u64::from(kind_byte(kind)) << 24) ^ counter.rotate_left(17);
    while buf.len() < len {
        let word = splitmix(&mut state).to_be_bytes();
        let take = (len - buf.len()).min(word.len());
        buf.put_slice(&word[..take]);
    }
    buf.freeze()
}

/// What a receiver learned from one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The sender tag embedded in the payload.
    pub tag: u32,
    /// The per-stream packet counter embedded in the payload.
    pub counter: u64,
    /// The embedded shape flags (`FLAG_*`).
    pub flags: u8,
    /// Whether every byte equals what the sender would have produced for that tag and counter.
    pub ok: bool,
}

impl Verified {
    /// Whether this packet starts a keyframe.
    pub fn keyframe_start(&self) -> bool {
        self.flags & (FLAG_FRAME_START | FLAG_KEYFRAME) == FLAG_FRAME_START | FLAG_KEYFRAME
    }
}

/// Check one received payload. `None` when it is too mangled to even read the tag block;
/// `Some` with `ok == false` when it reads but differs from the expected bytes.
pub fn verify_payload(kind: MediaKind, payload: &[u8]) -> Option<Verified> {
    let pre_len = match kind {
        MediaKind::Audio => AUDIO_PREFIX.len(),
        MediaKind::Video => {
            let first = *payload.first()?;
            if first & 0x10 == 0 {
                VIDEO_CONT_PREFIX.len()
            } else if payload.get(1)? & 1 == 0 {
                VIDEO_KEY_PREFIX.len()
            } else {
                VIDEO_DELTA_PREFIX.len()
            }
        }
    };
    let block = payload.get(pre_len..pre_len + TAG_BLOCK_LEN)?;
    let tag = u32::from_be_bytes(block[0..4].try_into().ok()?);
    let flags = block[5];
    let counter = u64::from_be_bytes(block[6..14].try_into().ok()?);
    let len = usize::from(u16::from_be_bytes(block[14..16].try_into().ok()?));
    let expected = build_payload(tag, kind, counter, flags, len);
    let ok = block[4] == kind_byte(kind) && expected.as_ref() == payload;
    Some(Verified { tag, counter, flags, ok })
}

/// One packet of a synthetic frame, ready to be put in an RTP packet.
#[derive(Debug, Clone)]
pub struct SyntheticPacket {
    /// The payload bytes.
    pub payload: Bytes,
    /// RTP marker bit (last packet of a video frame; first packet of the audio stream).
    pub marker: bool,
    /// The packet counter embedded in the payload.
    pub counter: u64,
}

/// Generates the audio stream of one sender: one packet per 20 ms frame.
#[derive(Debug, Clone)]
pub struct AudioSource {
    tag: u32,
    counter: u64,
}

impl AudioSource {
    /// A source whose packets carry `tag`.
    pub fn new(tag: u32) -> Self {
        Self { tag, counter: 0 }
    }

    /// The next packet; sizes vary between 60 and 159 bytes.
    pub fn next_packet(&mut self) -> SyntheticPacket {
        let counter = self.counter;
        self.counter += 1;
        let flags = FLAG_FRAME_START | FLAG_FRAME_END;
        let len = 60 + (counter.wrapping_mul(13) % 100) as usize;
        SyntheticPacket {
            payload: build_payload(self.tag, MediaKind::Audio, counter, flags, len),
            marker: counter == 0,
            counter,
        }
    }
}

/// Generates the VP8-shaped video stream of one sender, one frame at a time.
#[derive(Debug, Clone)]
pub struct VideoSource {
    tag: u32,
    counter: u64,
    frame: u64,
}

impl VideoSource {
    /// A source whose packets carry `tag`.
    pub fn new(tag: u32) -> Self {
        Self { tag, counter: 0, frame: 0 }
    }

    /// The packets of the next frame: a keyframe spans three packets (about 3 KB), a delta frame
    /// one or two (500 to 1999 bytes). Every packet is at most [`MAX_PAYLOAD`] bytes.
    pub fn next_frame(&mut self, keyframe: bool) -> Vec<SyntheticPacket> {
        let budget = if keyframe { 3000 } else { 500 + (self.frame.wrapping_mul(97) % 1500) as usize };
        self.frame += 1;
        let n = budget.div_ceil(MAX_PAYLOAD).max(1);
        let mut out = Vec::with_capacity(n);
        let mut left = budget;
        for i in 0..n {
            let mut flags = if keyframe { FLAG_KEYFRAME } else { 0 };
            if i == 0 {
                flags |= FLAG_FRAME_START;
            }
            if i + 1 == n {
                flags |= FLAG_FRAME_END;
            }
            let len = left.min(MAX_PAYLOAD);
            left -= len;
            let counter = self.counter;
            self.counter += 1;
            out.push(SyntheticPacket {
                payload: build_payload(self.tag, MediaKind::Video, counter, flags, len),
                marker: i + 1 == n,
                counter,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_round_trips_and_detects_corruption() {
        let mut src = AudioSource::new(0xdead_beef);
        for _ in 0..200 {
            let p = src.next_packet();
            let v = verify_payload(MediaKind::Audio, &p.payload).expect("readable");
            assert!(v.ok);
            assert_eq!((v.tag, v.counter), (0xdead_beef, p.counter));
            let mut bad = p.payload.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(!verify_payload(MediaKind::Audio, &bad).expect("readable").ok);
            let short = &p.payload[..p.payload.len() - 1];
            assert!(!verify_payload(MediaKind::Audio, short).expect("readable").ok);
        }
    }

    #[test]
    fn video_frames_are_valid_vp8_and_verify() {
        let mut src = VideoSource::new(7);
        let key = src.next_frame(true);
        assert_eq!(key.len(), 3);
        assert_eq!(&key[0].payload[..4], &[0x10, 0x10, 0x02, 0x00]);
        assert_eq!(key[0].payload[1] & 1, 0, "keyframe bit clear");
        assert_eq!(key[1].payload[0], 0x00, "continuation descriptor");
        assert!(key[2].marker && !key[0].marker);
        let v = verify_payload(MediaKind::Video, &key[0].payload).expect("readable");
        assert!(v.ok && v.keyframe_start());
        for _ in 0..100 {
            let frame = src.next_frame(false);
            assert_eq!(frame[0].payload[0], 0x10);
            assert_eq!(frame[0].payload[1] & 1, 1, "delta bit set");
            for p in &frame {
                assert!(p.payload.len() <= MAX_PAYLOAD);
                let v = verify_payload(MediaKind::Video, &p.payload).expect("readable");
                assert!(v.ok && !v.keyframe_start());
            }
            assert!(frame.last().is_some_and(|p| p.marker));
        }
    }

    #[test]
    fn wrong_kind_or_garbage_is_not_ok() {
        let p = AudioSource::new(1).next_packet();
        assert!(!verify_payload(MediaKind::Video, &p.payload).is_some_and(|v| v.ok));
        assert!(verify_payload(MediaKind::Audio, &[0x78, 1, 2]).is_none());
    }
}
