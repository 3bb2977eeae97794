//! VP8 picture ids across simulcast switches (RFC 7741): each layer numbers its pictures on its own,
//! so a consumer that moves from one layer to another rewrites the PictureID and TL0PICIDX of its
//! packets to continue from the last ones it sent, as LiveKit's `codecmunger/vp8.go` and mediasoup's
//! `VP8` payload descriptor handler do. The router only computes the values; the media layer patches
//! them into the payload (same width, same length) when it writes the packet.

/// The ids a VP8 payload descriptor carries, as parsed by [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Ids {
    /// PictureID, 7 or 15 bits.
    pub picture_id: u16,
    /// Whether the PictureID is the 15-bit form.
    pub long: bool,
    /// TL0PICIDX, when present.
    pub tl0_pic_idx: Option<u8>,
}

/// The PictureID and TL0PICIDX of a VP8 payload, if its descriptor has a PictureID; `None` for
/// anything without one or truncated.
pub fn parse(p: &[u8]) -> Option<Vp8Ids> {
    const X: u8 = 0x80;
    const I: u8 = 0x80;
    const L: u8 = 0x40;
    const M: u8 = 0x80;
    let b0 = *p.first()?;
    if b0 & X == 0 {
        return None;
    }
    let ext = *p.get(1)?;
    if ext & I == 0 {
        return None;
    }
    let pic = *p.get(2)?;
    let (picture_id, long, next) = if pic & M != 0 {
        (u16::from(pic & 0x7f) << 8 | u16::from(*p.get(3)?), true, 4)
    } else {
        (u16::from(pic), false, 3)
    };
    let tl0_pic_idx = if ext & L != 0 { Some(*p.get(next)?) } else { None };
    Some(Vp8Ids { picture_id, long, tl0_pic_idx })
}

/// The width and height a VP8 keyframe's first packet declares (the frame header after the start
/// code `9d 01 2a`), or `None` for any other packet.
pub fn dimensions(p: &[u8]) -> Option<(u16, u16)> {
    const X: u8 = 0x80;
    const S: u8 = 0x10;
    let b0 = *p.first()?;
    if b0 & S == 0 || b0 & 0x07 != 0 {
        return None;
    }
    let mut i = 1;
    if b0 & X != 0 {
        let ext = *p.get(i)?;
        i += 1;
        if ext & 0x80 != 0 {
            i += if *p.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1;
        }
        if ext & 0x30 != 0 {
            i += 1;
        }
    }
    let h = p.get(i..i + 10)?;
    if h[0] & 0x01 != 0 || h[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([h[6], h[7]]) & 0x3fff;
    let ht = u16::from_le_bytes([h[8], h[9]]) & 0x3fff;
    Some((w, ht))
}

/// One consumer's rewrite of VP8 ids: offsets that make the first picture after a switch follow the
/// last one sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Vp8Munger {
    /// Added to the source PictureID (modulo its width).
    picture_offset: u16,
    /// Added to the source TL0PICIDX.
    tl0_offset: u8,
    /// The last ids sent, once anything was.
    last: Option<(u16, u8)>,
    /// The next packet starts a new mapping (a switch or a restart).
    rebase: bool,
}

impl Vp8Munger {
    /// The next packet comes from another stream: continue its ids after the last ones sent.
    pub fn rebase(&mut self) {
        self.rebase = true;
    }

    /// The rewritten ids of a packet whose descriptor says `src`.
    pub fn rewrite(&mut self, src: Vp8Ids) -> Vp8Ids {
        let mask = if src.long { 0x7fff } else { 0x7f };
        if self.rebase {
            self.rebase = false;
            if let Some((pid, tl0)) = self.last {
                self.picture_offset = pid.wrapping_add(1).wrapping_sub(src.picture_id);
                self.tl0_offset = src.tl0_pic_idx.map_or(0, |t| tl0.wrapping_add(1).wrapping_sub(t));
            }
        }
        let out = self.map(src, mask);
        let tl0 = out.tl0_pic_idx.or(self.last.map(|l| l.1)).unwrap_or(0);
        self.last = Some((out.picture_id, tl0));
        out
    }

    /// The ids a resent packet gets (same offsets, nothing remembered).
    pub fn resend(&self, src: Vp8Ids) -> Vp8Ids {
        self.map(src, if src.long { 0x7fff } else { 0x7f })
    }

    fn map(&self, src: Vp8Ids, mask: u16) -> Vp8Ids {
        Vp8Ids {
            picture_id: src.picture_id.wrapping_add(self.picture_offset) & mask,
            long: src.long,
            tl0_pic_idx: src.tl0_pic_idx.map(|t| t.wrapping_add(self.tl0_offset)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_long_and_short_ids() {
        assert_eq!(
            parse(&[0x90, 0xc0, 0x81, 0x23, 0x07, 0x00]),
            Some(Vp8Ids { picture_id: 0x123, long: true, tl0_pic_idx: Some(7) })
        );
        assert_eq!(parse(&[0x90, 0x80, 0x05, 0x00]), Some(Vp8Ids { picture_id: 5, long: false, tl0_pic_idx: None }));
        assert_eq!(parse(&[0x10, 0x00]), None, "no extension, no id");
        assert_eq!(parse(&[0x90, 0xc0, 0x81]), None, "truncated");
    }

    #[test]
    fn keyframe_dimensions() {
        let key = [0x90, 0x80, 0x05, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02];
        assert_eq!(dimensions(&key), Some((1280, 720)));
        let mut delta = key;
        delta[3] |= 0x01;
        assert_eq!(dimensions(&delta), None, "not a keyframe");
        assert_eq!(dimensions(&key[..10]), None, "truncated");
    }

    #[test]
    fn a_switch_continues_the_ids() {
        let mut m = Vp8Munger::default();
        let a = |pid, tl0| Vp8Ids { picture_id: pid, long: true, tl0_pic_idx: Some(tl0) };
        assert_eq!(m.rewrite(a(100, 10)), a(100, 10), "the first stream passes unchanged");
        assert_eq!(m.rewrite(a(101, 11)), a(101, 11));
        m.rebase();
        assert_eq!(m.rewrite(a(0x7ffe, 200)), a(102, 12), "the new layer follows on");
        assert_eq!(m.rewrite(a(0x7fff, 201)), a(103, 13));
        assert_eq!(m.rewrite(a(0, 202)), a(104, 14), "the source wraps");
        assert_eq!(m.resend(a(0x7fff, 201)), a(103, 13));
    }
}
