//! A tiny deterministic hasher for the router's dense `u32` ids. SipHash's DoS resistance buys nothing
//! here (ids are chosen by the router, not by the network), and a fixed hasher keeps iteration order, and
//! therefore output order, reproducible between runs.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiplicative (Fibonacci) hasher for small integer keys.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Map keyed by router ids.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IdHasher>>;
