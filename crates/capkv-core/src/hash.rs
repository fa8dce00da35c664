/// FNV-1a, 64 bits: a stable hash for trace hashes and checksums.
///
/// `std`'s `DefaultHasher` may change between Rust releases, so a trace hash
/// printed today could not be compared with one printed next year. This one
/// never changes.
#[derive(Clone, Debug)]
pub struct StableHasher {
    state: u64,
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher {
            state: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl StableHasher {
    /// A hasher in its initial state.
    pub fn new() -> StableHasher {
        StableHasher::default()
    }

    /// Mixes `bytes` into the hash.
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.state ^= u64::from(*byte);
            self.state = self.state.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }

    /// Mixes a number into the hash in one step (a 64-bit FNV-style round
    /// over the whole word, then a rotation so that high bits reach low
    /// ones). Not byte-wise FNV, but just as fixed forever.
    pub fn write_u64(&mut self, value: u64) {
        self.state = (self.state ^ value)
            .wrapping_mul(0x0000_0100_0000_01B3)
            .rotate_left(29);
    }

    /// The hash of everything written so far.
    pub fn finish(&self) -> u64 {
        self.state
    }

    /// The hash of one byte string.
    pub fn hash_bytes(bytes: &[u8]) -> u64 {
        let mut hasher = StableHasher::new();
        hasher.write(bytes);
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // FNV-1a 64 of "a" is a published test vector.
        assert_eq!(StableHasher::hash_bytes(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
