//! RFC 4571 framing of ICE over TCP, sans-IO: every STUN, DTLS, RTP or RTCP packet on a TCP connection
//! travels behind a 2-byte big-endian length.
//!
//! [`Deframer`] takes whatever a read returned and yields whole packets; it holds at most one unfinished
//! frame (at most [`MAX_FRAME`] bytes plus the length), so a peer cannot make it grow. A length above
//! [`MAX_FRAME`] is a framing error: the connection is closed, as it would be for any garbage, because
//! nothing after it can be trusted to start a frame. Zero-length frames carry nothing and are skipped.
//! [`frame`] writes one packet with its length in front.

/// The largest packet accepted on a TCP connection: what a UDP datagram may carry here.
pub(crate) const MAX_FRAME: usize = 2048;

/// Why a TCP connection's bytes cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// A frame longer than [`MAX_FRAME`].
    Oversized(usize),
}

/// Whole packets out of a TCP byte stream. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Deframer {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`; what is before it was handed out.
    start: usize,
}

impl Deframer {
    /// Add bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet, `None` when more bytes are needed, or the error that ends the connection.
    pub fn next_packet(&mut self) -> Option<Result<Vec<u8>, FramingError>> {
        loop {
            let rest = self.buf.get(self.start..)?;
            let [hi, lo, ..] = rest[..] else { return None };
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if len > MAX_FRAME {
                return Some(Err(FramingError::Oversized(len)));
            }
            let packet = rest.get(2..2 + len)?.to_vec();
            self.start += 2 + len;
            if !packet.is_empty() {
                return Some(Ok(packet));
            }
        }
    }

    /// Bytes held for an unfinished frame.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// `packet` with its RFC 4571 length in front, or `None` if it is longer than a frame can say.
pub(crate) fn frame(packet: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(packet.len()).ok()?;
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(packets: &[&[u8]]) -> Vec<u8> {
        packets.iter().flat_map(|p| frame(p).expect("fits")).collect()
    }

    #[test]
    fn a_frame_split_across_reads_comes_out_whole() {
        let bytes = framed(&[&[1, 2, 3, 4, 5]]);
        let mut d = Deframer::default();
        for chunk in bytes.chunks(2) {
            assert_eq!(d.next_packet(), None);
            d.push(chunk);
        }
        assert_eq!(d.next_packet(), Some(Ok(vec![1, 2, 3, 4, 5])));
        assert_eq!(d.next_packet(), None);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn two_frames_in_one_read_come_out_in_order() {
        let mut d = Deframer::default();
        let mut bytes = framed(&[&[9; 3], &[8; 700]]);
        bytes.extend_from_slice(&[0, 4, 7]); // the start of a third
        d.push(&bytes);
        assert_eq!(d.next_packet(), Some(Ok(vec![9; 3])));
        assert_eq!(d.next_packet(), Some(Ok(vec![8; 700])));
        assert_eq!(d.next_packet(), None);
        assert_eq!(d.pending(), 3);
        d.push(&[7, 7, 7]);
        assert_eq!(d.next_packet(), Some(Ok(vec![7; 4])));
    }

    #[test]
    fn a_zero_length_frame_is_skipped() {
        let mut d = Deframer::default();
        d.push(&[0, 0, 0, 0]);
        d.push(&framed(&[&[5]]));
        assert_eq!(d.next_packet(), Some(Ok(vec![5])));
        assert_eq!(d.next_packet(), None);
    }

    #[test]
    fn an_oversized_length_is_an_error_before_its_bytes_arrive() {
        let mut d = Deframer::default();
        d.push(&[0x08, 0x01]); // 2,049
        assert_eq!(d.next_packet(), Some(Err(FramingError::Oversized(2049))));
        let mut d = Deframer::default();
        d.push(&[0xff, 0xff, 1, 2, 3]);
        assert_eq!(d.next_packet(), Some(Err(FramingError::Oversized(65535))));
        let mut d = Deframer::default();
        d.push(&framed(&[&[1; MAX_FRAME]]));
        assert_eq!(d.next_packet().map(|r| r.map(|p| p.len())), Some(Ok(MAX_FRAME)), "the largest frame passes");
    }

    #[test]
    fn frame_refuses_what_a_length_cannot_say() {
        assert_eq!(frame(&[0; 3]), Some(vec![0, 3, 0, 0, 0]));
        assert!(frame(&vec![0; 70_000]).is_none());
    }

    #[test]
    fn garbage_never_panics_and_never_holds_more_than_a_frame() {
        let mut state: u64 = 0x1234_5678_9abc_def0;
        for _ in 0..2_000 {
            let mut d = Deframer::default();
            'stream: for _ in 0..20 {
                let mut chunk = [0u8; 97];
                for b in &mut chunk {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *b = state as u8;
                }
                d.push(&chunk[..(state % 98) as usize]);
                loop {
                    match d.next_packet() {
                        Some(Ok(p)) => assert!(!p.is_empty() && p.len() <= MAX_FRAME),
                        // The connection is closed here: nothing more is read.
                        Some(Err(_)) => break 'stream,
                        None => break,
                    }
                }
                assert!(d.pending() <= MAX_FRAME + 2, "held {} bytes of an unfinished frame", d.pending());
            }
        }
    }
}
