//! Extension of 16-bit RTP sequence numbers to a monotonic 64-bit space.
//!
//! The extender remembers the highest extended value seen and places each new wire value at the nearest
//! point to it (within ±32767), so wraps at 65535 continue upwards and reordered packets land below the
//! maximum. The first value is placed at [`BASE`] + seq so reordering before the first packet never goes
//! below zero; arithmetic saturates, so no input can panic.

/// Where the first extended value is placed (plus its wire value).
pub(crate) const BASE: u64 = 1 << 32;

/// Extends one stream's sequence numbers.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqExtender {
    max: Option<u64>,
}

impl SeqExtender {
    /// Extend `seq` relative to what was seen so far and return it.
    pub(crate) fn extend(&mut self, seq: u16) -> u64 {
        match self.max {
            None => {
                let e = BASE + u64::from(seq);
                self.max = Some(e);
                e
            }
            Some(max) => {
                let delta = i64::from(seq.wrapping_sub(max as u16) as i16);
                let e = max.saturating_add_signed(delta);
                if e > max {
                    self.max = Some(e);
                }
                e
            }
        }
    }

    /// Forget everything: the next value starts a new stream.
    pub(crate) fn reset(&mut self) {
        self.max = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_forward() {
        let mut x = SeqExtender::default();
        let a = x.extend(65534);
        assert_eq!(x.extend(65535), a + 1);
        assert_eq!(x.extend(0), a + 2);
        assert_eq!(x.extend(1), a + 3);
    }

    #[test]
    fn reorder_across_wrap() {
        let mut x = SeqExtender::default();
        let a = x.extend(65535);
        assert_eq!(x.extend(1), a + 2);
        assert_eq!(x.extend(0), a + 1);
        assert_eq!(x.extend(65534), a - 1);
        assert_eq!(x.extend(2), a + 3);
    }

    #[test]
    fn reset_starts_over() {
        let mut x = SeqExtender::default();
        x.extend(10);
        x.extend(20000);
        x.reset();
        assert_eq!(x.extend(5), BASE + 5);
    }
}
