//! Keyframe detection from RTP payloads, one bounds-checked parser per video codec.
//!
//! [`is_keyframe_start`] answers "does this packet start a keyframe?", which is what gating a new consumer
//! needs: forwarding from that packet on gives the viewer a decodable stream. The parsers read only the
//! payload descriptor and the first bytes of the codec payload, never index without a bounds check, and
//! answer `false` for anything truncated or malformed, so arbitrary network bytes cannot panic.

use crate::Codec;

/// Whether an RTP payload of `codec` is the first packet of a keyframe.
///
/// - VP8 (RFC 7741): S=1 and PID=0 in the payload descriptor, then P=0 in the VP8 payload header.
/// - VP9 (RFC 9628): B=1 and P=0; with the L bit set, the spatial layer id must also be 0.
/// - H.264 (RFC 6184): a single IDR (5) or SPS (7) NAL unit, a STAP-A holding one of those, or the start
///   fragment of an FU-A carrying an IDR.
/// - AV1: the N bit of the aggregation header (start of a new coded video sequence).
/// - Opus and [`Codec::Other`]: never.
pub fn is_keyframe_start(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::H264 => h264(payload),
        Codec::Av1 => av1(payload),
        Codec::Opus | Codec::Other => false,
    }
}

fn vp8(p: &[u8]) -> bool {
    const X: u8 = 0x80;
    const S: u8 = 0x10;
    const PID: u8 = 0x07;
    const I: u8 = 0x80;
    const L: u8 = 0x40;
    const T: u8 = 0x20;
    const K: u8 = 0x10;
    const M: u8 = 0x80;

    let Some(&b0) = p.first() else {
        return false;
    };
    if b0 & S == 0 || b0 & PID != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & X != 0 {
        let Some(&ext) = p.get(i) else {
            return false;
        };
        i += 1;
        if ext & I != 0 {
            let Some(&pic) = p.get(i) else {
                return false;
            };
            i += if pic & M != 0 { 2 } else { 1 };
        }
        if ext & L != 0 {
            i += 1;
        }
        if ext & (T | K) != 0 {
            i += 1;
        }
    }
    // VP8 payload header, first byte: Size0(3) H(1) Ver(3) P(1); P is the inverse key frame flag.
    p.get(i).is_some_and(|&h| h & 0x01 == 0)
}

fn vp9(p: &[u8]) -> bool {
    const I: u8 = 0x80;
    const P: u8 = 0x40;
    const L: u8 = 0x20;
    const B: u8 = 0x08;
    const M: u8 = 0x80;

    let Some(&b0) = p.first() else {
        return false;
    };
    if b0 & B == 0 || b0 & P != 0 {
        return false;
    }
    if b0 & L == 0 {
        return true;
    }
    let mut i = 1;
    if b0 & I != 0 {
        let Some(&pic) = p.get(i) else {
            return false;
        };
        i += if pic & M != 0 { 2 } else { 1 };
    }
    // Layer indices: TID(3) U(1) SID(3) D(1).
    p.get(i).is_some_and(|&layer| (layer >> 1) & 0x07 == 0)
}

fn h264(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;

    let Some(&b0) = p.first() else {
        return false;
    };
    match b0 & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut rest = p.get(1..).unwrap_or_default();
            while let [hi, lo, tail @ ..] = rest {
                let size = usize::from(u16::from_be_bytes([*hi, *lo]));
                let (Some(nal), Some(next)) = (tail.get(..size), tail.get(size..)) else {
                    return false;
                };
                match nal.first() {
                    Some(h) if matches!(h & 0x1f, IDR | SPS) => return true,
                    Some(_) => {}
                    None => return false,
                }
                rest = next;
            }
            false
        }
        FU_A => p.get(1).is_some_and(|&fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        _ => false,
    }
}

fn av1(p: &[u8]) -> bool {
    // Aggregation header: Z(1) Y(1) W(2) N(1) reserved(3).
    p.first().is_some_and(|&h| h & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Codec; 6] = [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::Other];

    #[test]
    fn vp8_minimal() {
        assert!(is_keyframe_start(Codec::Vp8, &[0x10, 0x00]));
        // P=1: interframe.
        assert!(!is_keyframe_start(Codec::Vp8, &[0x10, 0x01]));
        // S=0: not the start of a partition.
        assert!(!is_keyframe_start(Codec::Vp8, &[0x00, 0x00]));
        // PID=1.
        assert!(!is_keyframe_start(Codec::Vp8, &[0x11, 0x00]));
        // Descriptor only.
        assert!(!is_keyframe_start(Codec::Vp8, &[0x10]));
    }

    #[test]
    fn vp8_extensions() {
        // X, I with 15-bit picture id, L, T: 1 + 1 + 2 + 1 + 1 bytes of descriptor.
        let key = [0x90, 0xe0, 0x80 | 0x12, 0x34, 0x07, 0x40, 0x00];
        assert!(is_keyframe_start(Codec::Vp8, &key));
        let inter = [0x90, 0xe0, 0x80 | 0x12, 0x34, 0x07, 0x40, 0x01];
        assert!(!is_keyframe_start(Codec::Vp8, &inter));
        // 7-bit picture id, K only.
        assert!(is_keyframe_start(Codec::Vp8, &[0x90, 0x90, 0x12, 0x00, 0x9c]));
        // Truncated after the extension byte.
        assert!(!is_keyframe_start(Codec::Vp8, &[0x90, 0xe0, 0x80]));
    }

    #[test]
    fn vp9() {
        assert!(is_keyframe_start(Codec::Vp9, &[0x08]));
        assert!(!is_keyframe_start(Codec::Vp9, &[0x48]));
        assert!(!is_keyframe_start(Codec::Vp9, &[0x00]));
        // I (15-bit) + L with SID 0, then SID 1.
        assert!(is_keyframe_start(Codec::Vp9, &[0xa8, 0x81, 0x02, 0x00, 0x00]));
        assert!(!is_keyframe_start(Codec::Vp9, &[0xa8, 0x81, 0x02, 0x02, 0x00]));
        assert!(!is_keyframe_start(Codec::Vp9, &[0xa8, 0x81]));
    }

    #[test]
    fn h264() {
        assert!(is_keyframe_start(Codec::H264, &[0x65, 0x88]));
        assert!(is_keyframe_start(Codec::H264, &[0x67, 0x42]));
        assert!(!is_keyframe_start(Codec::H264, &[0x41, 0x9a]));
        // STAP-A: SPS(2 bytes) + PPS(1 byte).
        assert!(is_keyframe_start(Codec::H264, &[0x78, 0, 2, 0x67, 0x42, 0, 1, 0x68]));
        // STAP-A: a non-IDR slice, then an IDR.
        assert!(is_keyframe_start(Codec::H264, &[0x78, 0, 1, 0x41, 0, 1, 0x65]));
        // STAP-A with a size that overruns.
        assert!(!is_keyframe_start(Codec::H264, &[0x78, 0, 9, 0x67]));
        // STAP-A holding only non-IDR.
        assert!(!is_keyframe_start(Codec::H264, &[0x78, 0, 1, 0x41]));
        // FU-A start of IDR, middle of IDR, start of non-IDR.
        assert!(is_keyframe_start(Codec::H264, &[0x7c, 0x85]));
        assert!(!is_keyframe_start(Codec::H264, &[0x7c, 0x05]));
        assert!(!is_keyframe_start(Codec::H264, &[0x7c, 0x81]));
        assert!(!is_keyframe_start(Codec::H264, &[0x7c]));
    }

    #[test]
    fn av1_and_audio() {
        assert!(is_keyframe_start(Codec::Av1, &[0x18]));
        assert!(!is_keyframe_start(Codec::Av1, &[0x10]));
        assert!(!is_keyframe_start(Codec::Opus, &[0xff; 8]));
        assert!(!is_keyframe_start(Codec::Other, &[0xff; 8]));
        for codec in ALL {
            assert!(!is_keyframe_start(codec, &[]));
        }
    }

    /// Thousands of pseudo-random payloads through every parser: none may panic.
    #[test]
    fn random_bytes_never_panic() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut buf = [0u8; 64];
        let mut hits = 0usize;
        for _ in 0..20_000 {
            let len = (next() % 65) as usize;
            for b in &mut buf[..len] {
                *b = next() as u8;
            }
            for codec in ALL {
                hits += usize::from(is_keyframe_start(codec, &buf[..len]));
            }
        }
        // Some random bytes look like keyframes; the point is that we got here.
        assert!(hits > 0);
    }
}
