//! Consistent hashing with virtual nodes (Dynamo, DeCandia et al., SOSP 2007,
//! §4.2 "Partitioning" and §4.3 "Replication").
//!
//! What it is: a ring of 64-bit positions. Every node owns
//! `vnodes_per_node` positions, each the hash of (node id, vnode index), so a
//! node's share of the key space is the sum of many small arcs and adding or
//! removing a node moves only about 1/N of the keys. A key's *preference
//! list* is the first `n` distinct nodes met walking clockwise from the key's
//! hash; the first `n` are its replicas, and the ones after them are the
//! fallbacks a sloppy quorum would use.
//!
//! Every position comes from capkv-core's `StableHasher` (FNV-1a 64) followed
//! by a fixed finaliser, so the ring is the same on every machine and across
//! Rust releases.
//!
//! What it does not do: no membership protocol, no weights, no rack or zone
//! awareness, no token hand-over. A membership change is a new `Ring`.

use crate::mix64;
use capkv_core::{NodeId, StableHasher};
use std::collections::BTreeSet;

/// The largest number of virtual nodes per node a ring accepts. Beyond this
/// the ring's memory and construction cost grow with no gain in balance that
/// matters.
pub const VNODES_PER_NODE_MAX: usize = 4096;

/// The largest number of nodes a ring accepts.
pub const NODES_MAX: usize = 1024;

/// Why a ring could not be built. These are configuration errors, not bugs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Every node needs at least one position on the ring.
    #[error("vnodes_per_node must be between 1 and {max}, got {got}")]
    VnodesOutOfRange {
        /// The rejected value.
        got: usize,
        /// [`VNODES_PER_NODE_MAX`].
        max: usize,
    },
    /// A node listed twice would own twice its share of keys.
    #[error("node {0} is listed more than once")]
    DuplicateNode(NodeId),
    /// Too many nodes for one ring.
    #[error("a ring holds at most {max} nodes, got {got}")]
    TooManyNodes {
        /// The number of nodes given.
        got: usize,
        /// [`NODES_MAX`].
        max: usize,
    },
}

/// A consistent-hash ring with virtual nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    /// Every virtual node as (position, owner), sorted by position and then
    /// owner, so that two vnodes that hash to the same position still have
    /// one fixed order on every machine.
    positions: Vec<(u64, NodeId)>,
    /// The distinct nodes, sorted. Caps the length of a preference list.
    nodes: BTreeSet<NodeId>,
    /// How many positions each node owns.
    vnodes_per_node: usize,
}

impl Ring {
    /// A ring over `nodes`, each owning `vnodes_per_node` positions. An empty
    /// node list gives an empty ring whose preference lists are empty.
    pub fn new(nodes: &[NodeId], vnodes_per_node: usize) -> Result<Ring, RingError> {
        if vnodes_per_node == 0 || vnodes_per_node > VNODES_PER_NODE_MAX {
            return Err(RingError::VnodesOutOfRange {
                got: vnodes_per_node,
                max: VNODES_PER_NODE_MAX,
            });
        }
        if nodes.len() > NODES_MAX {
            return Err(RingError::TooManyNodes {
                got: nodes.len(),
                max: NODES_MAX,
            });
        }
        let mut distinct = BTreeSet::new();
        for node in nodes {
            if !distinct.insert(*node) {
                return Err(RingError::DuplicateNode(*node));
            }
        }
        let mut positions: Vec<(u64, NodeId)> = distinct
            .iter()
            .flat_map(|node| {
                (0..vnodes_per_node).map(move |vnode| (vnode_position(*node, vnode), *node))
            })
            .collect();
        positions.sort_unstable();
        assert_eq!(
            positions.len(),
            distinct.len() * vnodes_per_node,
            "ring: every node owns exactly vnodes_per_node positions"
        );
        Ok(Ring {
            positions,
            nodes: distinct,
            vnodes_per_node,
        })
    }

    /// The distinct nodes of the ring, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().copied()
    }

    /// How many nodes the ring holds.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// How many positions each node owns.
    pub fn vnodes_per_node(&self) -> usize {
        self.vnodes_per_node
    }

    /// Where `key` sits on the ring.
    pub fn key_position(key: &[u8]) -> u64 {
        mix64(StableHasher::hash_bytes(key))
    }

    /// The first `n` distinct nodes met walking clockwise from the key's
    /// position (the first vnode at or after it, wrapping around). `n` is
    /// capped at the number of nodes. The first `N` entries are the key's
    /// replicas; later ones are the fallbacks for hinted handoff.
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        let wanted = n.min(self.nodes.len());
        let mut list = Vec::with_capacity(wanted);
        if wanted == 0 {
            return list;
        }
        let position = Ring::key_position(key);
        let start = self
            .positions
            .partition_point(|(vnode_position, _)| *vnode_position < position);
        // One lap of the ring meets every node, so the walk is bounded by
        // the number of vnodes.
        for offset in 0..self.positions.len() {
            let (_, node) = self.positions[(start + offset) % self.positions.len()];
            if !list.contains(&node) {
                list.push(node);
                if list.len() == wanted {
                    break;
                }
            }
        }
        assert_eq!(list.len(), wanted, "ring: one lap meets every node");
        list
    }
}

/// The position of a node's `vnode`-th virtual node.
fn vnode_position(node: NodeId, vnode: usize) -> u64 {
    let mut hasher = StableHasher::new();
    hasher.write(b"capkv-ring-vnode");
    hasher.write_u64(node.0);
    hasher.write_u64(vnode as u64);
    mix64(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(count: u64) -> Vec<NodeId> {
        (1..=count).map(NodeId).collect()
    }

    fn key(index: usize) -> Vec<u8> {
        format!("key-{index}").into_bytes()
    }

    #[test]
    fn preference_list_holds_distinct_nodes_capped_at_node_count() {
        let ring = Ring::new(&nodes(5), 64).unwrap();
        for index in 0..1_000 {
            let list = ring.preference_list(&key(index), 3);
            assert_eq!(list.len(), 3);
            let distinct: BTreeSet<_> = list.iter().collect();
            assert_eq!(distinct.len(), 3, "duplicates in {list:?}");
        }
        assert_eq!(ring.preference_list(b"k", 9).len(), 5);
        assert!(ring.preference_list(b"k", 0).is_empty());
        let empty = Ring::new(&[], 8).unwrap();
        assert!(empty.preference_list(b"k", 3).is_empty());
    }

    #[test]
    fn preference_list_is_stable_and_independent_of_node_order() {
        let ring = Ring::new(&nodes(5), 64).unwrap();
        let mut reversed = nodes(5);
        reversed.reverse();
        let other = Ring::new(&reversed, 64).unwrap();
        assert_eq!(ring, other);
        for index in 0..100 {
            assert_eq!(
                ring.preference_list(&key(index), 3),
                ring.preference_list(&key(index), 3)
            );
            assert_eq!(
                ring.preference_list(&key(index), 3),
                other.preference_list(&key(index), 3)
            );
            // A longer list extends the shorter one: fallbacks come after
            // the replicas.
            let long = ring.preference_list(&key(index), 5);
            assert_eq!(long[..3], ring.preference_list(&key(index), 3)[..]);
        }
    }

    #[test]
    fn positions_are_fixed_forever() {
        // Pinned values: if the hash or the finaliser ever changed, every
        // deployed ring would move its keys, and this test would say so.
        assert_eq!(Ring::key_position(b"alpha"), 0x774c_e336_ac91_31e8);
        let ring = Ring::new(&nodes(5), 16).unwrap();
        assert_eq!(
            ring.preference_list(b"alpha", 5),
            [4, 2, 1, 3, 5].map(NodeId)
        );
    }

    #[test]
    fn adding_a_node_moves_about_one_nth_of_keys() {
        // Dynamo §4.2: a new node takes keys only from its neighbours, about
        // 1/N of them, and nothing moves between the old nodes.
        let keys = 10_000usize;
        let before = Ring::new(&nodes(5), 64).unwrap();
        let after = Ring::new(&nodes(6), 64).unwrap();
        let mut moved = 0usize;
        for index in 0..keys {
            let old_owner = before.preference_list(&key(index), 1)[0];
            let new_owner = after.preference_list(&key(index), 1)[0];
            if old_owner != new_owner {
                assert_eq!(new_owner, NodeId(6), "a key moved between old nodes");
                moved += 1;
            }
        }
        let expected = keys / 6;
        let tolerance = expected / 4;
        assert!(
            moved.abs_diff(expected) <= tolerance,
            "moved {moved} of {keys}, expected about {expected}"
        );
    }

    #[test]
    fn keys_balance_across_nodes_with_64_vnodes() {
        let keys = 10_000usize;
        let node_count = 5;
        let ring = Ring::new(&nodes(node_count), 64).unwrap();
        let mut owned = std::collections::BTreeMap::new();
        for index in 0..keys {
            *owned
                .entry(ring.preference_list(&key(index), 1)[0])
                .or_insert(0usize) += 1;
        }
        assert_eq!(owned.len(), node_count as usize);
        let mean = keys / node_count as usize;
        for (node, count) in owned {
            // With 64 vnodes a node's share has a relative spread of about
            // 1/sqrt(64) = 12.5%; 30% is well over two standard deviations.
            assert!(
                count.abs_diff(mean) <= mean * 3 / 10,
                "{node} owns {count} keys, mean {mean}"
            );
        }
    }

    #[test]
    fn bad_configurations_are_errors() {
        assert_eq!(
            Ring::new(&nodes(3), 0),
            Err(RingError::VnodesOutOfRange {
                got: 0,
                max: VNODES_PER_NODE_MAX
            })
        );
        assert_eq!(
            Ring::new(&[NodeId(1), NodeId(2), NodeId(1)], 8),
            Err(RingError::DuplicateNode(NodeId(1)))
        );
    }
}
