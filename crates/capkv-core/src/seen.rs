//! A bounded record of request ids seen from one sender, for refusing
//! duplicated or replayed requests (a network may deliver a message twice).

use std::collections::BTreeSet;

/// Ids seen from one origin. Ids at or below `floor` count as seen, so
/// memory stays bounded while old duplicates are still refused. Ids must
/// grow over the origin's lifetime, across its restarts too (capkv nodes
/// prefix them with a persisted boot epoch).
#[derive(Clone, Debug, Default)]
pub struct SeenIds {
    floor: u64,
    ids: BTreeSet<u64>,
}

impl SeenIds {
    /// Records `id`; false when it was seen before (or is too old to tell).
    /// At most `limit` ids are kept above the floor.
    pub fn insert(&mut self, id: u64, limit: usize) -> bool {
        if id <= self.floor || !self.ids.insert(id) {
            return false;
        }
        while self.ids.len() > limit.max(1) {
            if let Some(oldest) = self.ids.pop_first() {
                self.floor = oldest;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_ids_below_the_floor_are_refused() {
        let mut seen = SeenIds::default();
        assert!(seen.insert(5, 2));
        assert!(!seen.insert(5, 2));
        assert!(seen.insert(7, 2));
        assert!(seen.insert(9, 2)); // 5 falls to the floor
        assert!(!seen.insert(5, 2));
        assert!(!seen.insert(4, 2));
        assert!(
            seen.insert(1 << 40 | 1, 2),
            "a new boot epoch is above every old id"
        );
    }
}
