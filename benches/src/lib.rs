//! Fixtures shared by the Dais benches: synthetic RTP payloads and, in [`session`], str0m sessions that
//! were handshaken in memory.
//!
//! Everything here is set up once, outside the timed region; the benches in `benches/` time only the
//! per-packet work. Payloads are built once and shared (the same `Arc<[u8]>` into the router and into
//! str0m), as the media worker does, so no bench times a payload copy that the server does not make.

pub mod session;

/// Payload size of a video packet: a full 1,200-byte RTP payload, the usual WebRTC video packet.
pub const VIDEO_PAYLOAD: usize = 1200;
/// Payload size of an Opus packet (20 ms at about 64 kbit/s).
pub const AUDIO_PAYLOAD: usize = 160;

/// The two kinds of packet every bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 1,200-byte VP8 packets.
    Video,
    /// 160-byte Opus packets.
    Audio,
}

impl From<Kind> for dais_forward::MediaKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Video => dais_forward::MediaKind::Video,
            Kind::Audio => dais_forward::MediaKind::Audio,
        }
    }
}

impl Kind {
    /// Both kinds, video first.
    pub const ALL: [Kind; 2] = [Kind::Video, Kind::Audio];

    /// The forwarding core's codec of the synthetic stream.
    pub fn codec(self) -> dais_forward::Codec {
        match self {
            Kind::Video => dais_forward::Codec::Vp8,
            Kind::Audio => dais_forward::Codec::Opus,
        }
    }

    /// Short name for benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Video => "vp8_1200B",
            Kind::Audio => "opus_160B",
        }
    }

    /// RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        match self {
            Kind::Video => 90_000,
            Kind::Audio => 48_000,
        }
    }

    /// Payload type the synthetic publisher uses.
    pub fn publisher_pt(self) -> u8 {
        match self {
            Kind::Video => 96,
            Kind::Audio => 111,
        }
    }

    /// A synthetic payload. A video keyframe payload starts with a valid RFC 7741 descriptor (S=1, PID=0,
    /// then P=0), so the router opens its consumers' gates on it; other video payloads are interframe.
    pub fn payload(self, keyframe: bool) -> Vec<u8> {
        match self {
            Kind::Video => {
                let head: &[u8] = if keyframe {
                    // Descriptor S=1 PID=0; VP8 payload header P=0 (key frame); start code; 640x480.
                    &[0x10, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]
                } else {
                    // Descriptor S=1 PID=0; payload header P=1 (interframe).
                    &[0x10, 0x01, 0x00, 0x11]
                };
                fill(head, VIDEO_PAYLOAD)
            }
            // TOC byte of a 20 ms CELT frame, then opaque bytes.
            Kind::Audio => fill(&[0xfc], AUDIO_PAYLOAD),
        }
    }

    /// RTP timestamp of packet number `i`: 30 fps video in 5-packet frames, 20 ms audio frames.
    pub fn timestamp(self, i: u64) -> u32 {
        match self {
            Kind::Video => (i / 5).wrapping_mul(3000) as u32,
            Kind::Audio => i.wrapping_mul(960) as u32,
        }
    }

    /// Whether packet number `i` closes a frame (the RTP marker).
    pub fn marker(self, i: u64) -> bool {
        match self {
            Kind::Video => i % 5 == 4,
            Kind::Audio => i == 0,
        }
    }
}

fn fill(head: &[u8], len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(head);
    let mut x: u32 = 0x9e37_79b9;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v
}
