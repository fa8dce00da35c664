//! Hybrid logical clocks and last-write-wins registers (Kulkarni, Demirbas,
//! Madappa, Avva, Leone, "Logical Physical Clocks and Consistent Snapshots
//! in Globally Distributed Databases", OPODIS 2014; as CockroachDB and
//! MongoDB use them).
//!
//! What it is: a timestamp [`Hlc`] of (`wall_ms`, `logical`) that stays close
//! to physical time but never goes backwards and is always greater than any
//! timestamp the node has received. A node whose clock runs behind therefore
//! still stamps its next write after the newer write it saw, instead of
//! silently losing to it under last-write-wins. [`HlcClock`] is the per-node
//! state; [`Lww`] is a register resolved by (timestamp, node id).
//!
//! Rules, as the code implements them (Kulkarni et al., Fig. 5):
//!
//! 1. `now(pt)`: if `pt` is past the last wall time, the wall time becomes
//!    `pt` and the logical part 0; otherwise the logical part grows by one.
//! 2. `update(received, pt)`: the wall time becomes the largest of the last,
//!    the received and `pt`; the logical part is one more than the largest
//!    logical part among those that share that wall time, or 0.
//! 3. A received timestamp more than `max_drift_ms` ahead of `pt` is refused
//!    and the clock does not move: one node with a runaway clock must not
//!    drag every clock in the cluster into the future.
//! 4. If the logical part would overflow, the wall time advances by one
//!    millisecond instead, so monotonicity never depends on how many events
//!    fit in one millisecond.
//!
//! What it does not do: read any clock (physical time is passed in), persist
//! the last timestamp across restarts (the driver must, or wait out
//! `max_drift_ms` on start), or fix lost updates inherent to LWW: two
//! concurrent writes still keep one and drop the other. Use dotted version
//! vectors (`dvv`) when that matters.

use capkv_core::NodeId;
use serde::{Deserialize, Serialize};

/// A hybrid logical timestamp. Ordered by wall time, then logical part.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// The largest physical time (milliseconds) this timestamp's history has
    /// seen; close to real time, never behind any causal predecessor's.
    pub wall_ms: u64,
    /// Orders events that share `wall_ms`.
    pub logical: u32,
}

impl Hlc {
    /// The smallest timestamp strictly after this one (rule 4 on overflow).
    #[must_use]
    pub fn successor(self) -> Hlc {
        match self.logical.checked_add(1) {
            Some(logical) => Hlc {
                wall_ms: self.wall_ms,
                logical,
            },
            None => Hlc {
                wall_ms: self.wall_ms + 1,
                logical: 0,
            },
        }
    }
}

/// Why a received timestamp was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    /// Rule 3: the sender's clock is too far ahead of ours.
    #[error(
        "received timestamp {received_wall_ms} ms is {drift_ms} ms ahead of local time \
         {physical_ms} ms; at most {max_drift_ms} ms is accepted"
    )]
    DriftTooLarge {
        /// The refused timestamp's wall time.
        received_wall_ms: u64,
        /// Local physical time when it arrived.
        physical_ms: u64,
        /// How far ahead it was.
        drift_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
}

/// One node's hybrid logical clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HlcClock {
    /// The last timestamp issued or received; every new one is after it.
    last: Hlc,
    /// How far ahead of local physical time a received timestamp may be.
    max_drift_ms: u64,
}

impl HlcClock {
    /// A clock that has issued nothing yet and accepts received timestamps
    /// at most `max_drift_ms` ahead of local physical time.
    pub fn new(max_drift_ms: u64) -> HlcClock {
        HlcClock::starting_after(Hlc::default(), max_drift_ms)
    }

    /// A clock whose timestamps all come after `last` (for a restart that
    /// persisted its last timestamp).
    pub fn starting_after(last: Hlc, max_drift_ms: u64) -> HlcClock {
        HlcClock { last, max_drift_ms }
    }

    /// The last timestamp issued or received.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The configured drift bound.
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// Rule 1: a timestamp for a local event (a write this node coordinates)
    /// at physical time `physical_ms`.
    pub fn now(&mut self, physical_ms: u64) -> Hlc {
        let next = if physical_ms > self.last.wall_ms {
            Hlc {
                wall_ms: physical_ms,
                logical: 0,
            }
        } else {
            self.last.successor()
        };
        self.advance_to(next)
    }

    /// Rules 2 and 3: takes in a timestamp received from another node at
    /// physical time `physical_ms` and returns one after both it and every
    /// timestamp this clock issued before.
    pub fn update(&mut self, received: Hlc, physical_ms: u64) -> Result<Hlc, HlcError> {
        if received.wall_ms > physical_ms.saturating_add(self.max_drift_ms) {
            return Err(HlcError::DriftTooLarge {
                received_wall_ms: received.wall_ms,
                physical_ms,
                drift_ms: received.wall_ms - physical_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        let wall_ms = self.last.wall_ms.max(received.wall_ms).max(physical_ms);
        let logical_max = [self.last, received]
            .iter()
            .filter(|timestamp| timestamp.wall_ms == wall_ms)
            .map(|timestamp| timestamp.logical)
            .max();
        let next = match logical_max {
            Some(logical) => Hlc { wall_ms, logical }.successor(),
            None => Hlc {
                wall_ms,
                logical: 0,
            },
        };
        assert!(
            next > received,
            "hlc: update must be after what it received"
        );
        Ok(self.advance_to(next))
    }

    fn advance_to(&mut self, next: Hlc) -> Hlc {
        assert!(
            next > self.last,
            "hlc: timestamps must strictly increase ({next:?} after {:?})",
            self.last
        );
        self.last = next;
        next
    }
}

/// A last-write-wins register: the value with the greatest (timestamp,
/// node id) wins; the node id breaks ties between nodes that issued equal
/// timestamps, so every replica picks the same winner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lww<V> {
    /// The current value; a tombstone is `V = Option<_>` set to `None`.
    pub value: V,
    /// When the write that produced it was coordinated.
    pub timestamp: Hlc,
    /// The coordinator of that write, the tie-breaker.
    pub node: NodeId,
}

impl<V: PartialEq> Lww<V> {
    /// A register holding `value`, written at `timestamp` by `node`.
    pub fn new(value: V, timestamp: Hlc, node: NodeId) -> Lww<V> {
        Lww {
            value,
            timestamp,
            node,
        }
    }

    /// The register's position in the total order of writes.
    pub fn version(&self) -> (Hlc, NodeId) {
        (self.timestamp, self.node)
    }

    /// Whether this write beats `other`.
    pub fn wins_over(&self, other: &Lww<V>) -> bool {
        self.version() > other.version()
    }

    /// Keeps whichever of the two writes wins; returns whether `other`
    /// replaced the current value. Commutative, associative, idempotent.
    pub fn merge(&mut self, other: Lww<V>) -> bool {
        if self.version() == other.version() {
            // One node never issues one timestamp twice, so equal versions
            // are the same write delivered twice.
            assert!(
                self.value == other.value,
                "lww: two different values share version {:?}",
                self.version()
            );
            return false;
        }
        if other.wins_over(self) {
            *self = other;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_DRIFT_MS: u64 = 60_000;

    #[test]
    fn a_clock_ten_seconds_behind_still_writes_after_what_it_received() {
        // Node 1's clock is right; node 2's runs 10 s behind. Node 2 reads
        // node 1's write and overwrites it: under plain wall clocks its
        // write would carry an older time and lose to the one it replaced.
        let real_ms = 1_700_000_000_000;
        let mut ahead = HlcClock::new(MAX_DRIFT_MS);
        let mut behind = HlcClock::new(MAX_DRIFT_MS);
        let first = Lww::new("first", ahead.now(real_ms), NodeId(1));
        behind.update(first.timestamp, real_ms - 10_000).unwrap();
        let second_stamp = behind.now(real_ms - 10_000 + 5);
        assert!(second_stamp > first.timestamp);
        let mut register = first.clone();
        assert!(register.merge(Lww::new("second", second_stamp, NodeId(2))));
        assert_eq!(register.value, "second");
        // And the wall time did not run off: it is the newest one seen.
        assert_eq!(second_stamp.wall_ms, real_ms);
    }

    #[test]
    fn timestamps_stay_monotonic_when_the_clock_goes_backwards() {
        let mut clock = HlcClock::new(MAX_DRIFT_MS);
        let physical = [100, 200, 150, 150, 90, 300, 299, 300];
        let mut previous = Hlc::default();
        for physical_ms in physical {
            let timestamp = clock.now(physical_ms);
            assert!(timestamp > previous, "{timestamp:?} after {previous:?}");
            assert!(timestamp.wall_ms >= physical_ms);
            previous = timestamp;
        }
        assert_eq!(
            clock.now(1_000),
            Hlc {
                wall_ms: 1_000,
                logical: 0
            }
        );
    }

    #[test]
    fn update_is_after_both_the_received_and_the_local_history() {
        let mut clock = HlcClock::new(MAX_DRIFT_MS);
        let local = clock.now(500);
        let received = Hlc {
            wall_ms: 500,
            logical: 7,
        };
        assert_eq!(
            clock.update(received, 400),
            Ok(Hlc {
                wall_ms: 500,
                logical: 8
            })
        );
        let older = Hlc {
            wall_ms: 10,
            logical: 99,
        };
        let next = clock.update(older, 400).unwrap();
        assert!(next > local && next > older);
        assert_eq!(
            next,
            Hlc {
                wall_ms: 500,
                logical: 9
            }
        );
        assert_eq!(
            clock.update(older, 900),
            Ok(Hlc {
                wall_ms: 900,
                logical: 0
            })
        );
    }

    #[test]
    fn a_timestamp_too_far_in_the_future_is_refused_and_changes_nothing() {
        let mut clock = HlcClock::new(1_000);
        clock.now(5_000);
        let before = clock.clone();
        let runaway = Hlc {
            wall_ms: 6_001,
            logical: 0,
        };
        assert_eq!(
            clock.update(runaway, 5_000),
            Err(HlcError::DriftTooLarge {
                received_wall_ms: 6_001,
                physical_ms: 5_000,
                drift_ms: 1_001,
                max_drift_ms: 1_000
            })
        );
        assert_eq!(clock, before);
        let at_bound = Hlc {
            wall_ms: 6_000,
            logical: 0,
        };
        assert!(clock.update(at_bound, 5_000).is_ok());
    }

    #[test]
    fn logical_overflow_advances_the_wall_time() {
        let last = Hlc {
            wall_ms: 10,
            logical: u32::MAX,
        };
        let mut clock = HlcClock::starting_after(last, MAX_DRIFT_MS);
        assert_eq!(
            clock.now(5),
            Hlc {
                wall_ms: 11,
                logical: 0
            }
        );
    }

    #[test]
    fn lww_ties_break_by_node_id_and_merge_commutes() {
        let stamp = Hlc {
            wall_ms: 7,
            logical: 0,
        };
        let low = Lww::new("low", stamp, NodeId(1));
        let high = Lww::new("high", stamp, NodeId(2));
        let mut left = low.clone();
        left.merge(high.clone());
        let mut right = high.clone();
        right.merge(low.clone());
        assert_eq!(left, right);
        assert_eq!(left.value, "high");
        assert!(!right.merge(high), "the same write twice changes nothing");
    }
}
