//! A Merkle tree over key-hash ranges, for anti-entropy between replicas
//! (Dynamo, DeCandia et al., SOSP 2007, §4.7; Merkle, CRYPTO 1987; Riak's
//! and Cassandra's repair trees).
//!
//! What it is: a complete binary tree of fixed shape. The key space is split
//! into `leaf_count` ranges by the high bits of each key's hash; a leaf is
//! the wrapping sum of `hash(key, version digest)` over the keys in its
//! range, and an inner node is the hash of its two children. Two replicas
//! with equal roots hold equal (key, version) sets with overwhelming
//! probability; when roots differ, [`MerkleTree::diff`] walks only into the
//! differing subtrees and names the leaf ranges to exchange.
//!
//! Why a sum: it is order-independent, so the same set gives the same leaf
//! whatever order keys arrived in, and it is invertible, so changing one key
//! subtracts its old term and adds its new one: O(1) for the leaf plus
//! O(depth) to rehash the path to the root, with no rescan of the range.
//!
//! Rules the caller must keep (the tree cannot check them):
//!
//! 1. `update(key, old, new)` is called with `old` equal to the digest the
//!    tree last saw for `key` (`None` if absent), so the sum stays exact.
//! 2. Both sides of a comparison use the same `leaf_count`; [`MerkleTree::diff`]
//!    refuses trees of different shapes.
//!
//! What it does not do: no storage, no message exchange (a replica would
//! send node hashes level by level, see [`MerkleTree::node_hash`]), no
//! per-key listing of a leaf (the store scans the leaf's range), no
//! cryptographic strength: FNV-1a is for accidents, not adversaries.

use crate::mix64;
use capkv_core::StableHasher;

/// The most leaves a tree may have: 2^20 leaves are 16 MiB of hashes per
/// tree, already more than anti-entropy gains from.
pub const LEAF_COUNT_MAX: usize = 1 << 20;

/// Why a tree could not be built or compared.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The leaf count must be a power of two in `1..=LEAF_COUNT_MAX`.
    #[error("leaf count must be a power of two between 1 and {max}, got {got}")]
    BadLeafCount {
        /// The rejected count.
        got: usize,
        /// [`LEAF_COUNT_MAX`].
        max: usize,
    },
    /// Rule 2: trees of different shapes cannot be compared.
    #[error("cannot compare a tree of {ours} leaves with one of {theirs}")]
    ShapeMismatch {
        /// This tree's leaf count.
        ours: usize,
        /// The other tree's leaf count.
        theirs: usize,
    },
}

/// A fixed-shape Merkle tree with incrementally maintained leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    /// Node hashes in heap order: index 1 is the root, node `i` has children
    /// `2i` and `2i + 1`, and the leaves are `leaf_count..2 * leaf_count`.
    /// Index 0 is unused so the arithmetic stays plain.
    nodes: Vec<u64>,
    /// log2 of the leaf count: how many high bits of a key's hash pick its
    /// leaf, and the length of every root-to-leaf path.
    depth: u32,
}

impl MerkleTree {
    /// An empty tree with `leaf_count` leaves (a power of two).
    pub fn new(leaf_count: usize) -> Result<MerkleTree, MerkleError> {
        if !leaf_count.is_power_of_two() || leaf_count > LEAF_COUNT_MAX {
            return Err(MerkleError::BadLeafCount {
                got: leaf_count,
                max: LEAF_COUNT_MAX,
            });
        }
        let mut tree = MerkleTree {
            nodes: vec![0; 2 * leaf_count],
            depth: leaf_count.trailing_zeros(),
        };
        for index in (1..leaf_count).rev() {
            tree.rehash(index);
        }
        Ok(tree)
    }

    /// How many leaves (key ranges) the tree has.
    pub fn leaf_count(&self) -> usize {
        self.nodes.len() / 2
    }

    /// The length of every root-to-leaf path.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The root hash: equal on two replicas that hold equal sets.
    pub fn root(&self) -> u64 {
        self.nodes[1]
    }

    /// The hash of leaf `leaf` (a key range); `None` past the last leaf.
    pub fn leaf_hash(&self, leaf: usize) -> Option<u64> {
        self.nodes.get(self.leaf_count() + leaf).copied()
    }

    /// The hash of the node at heap index `index` (1 is the root, `2i` and
    /// `2i + 1` are the children of `i`), for exchanging the tree level by
    /// level; `None` outside the tree.
    pub fn node_hash(&self, index: usize) -> Option<u64> {
        match index {
            0 => None,
            _ => self.nodes.get(index).copied(),
        }
    }

    /// The leaf (key range) that `key` belongs to.
    pub fn leaf_of(&self, key: &[u8]) -> usize {
        if self.depth == 0 {
            return 0;
        }
        let position = mix64(StableHasher::hash_bytes(key));
        (position >> (64 - self.depth)) as usize
    }

    /// Records that `key`'s version digest went from `old` to `new` (`None`
    /// meaning absent). Rule 1: `old` must be what the tree last saw.
    pub fn update(&mut self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        let leaf = self.leaf_count() + self.leaf_of(key);
        let mut sum = self.nodes[leaf];
        if let Some(digest) = old {
            sum = sum.wrapping_sub(key_term(key, digest));
        }
        if let Some(digest) = new {
            sum = sum.wrapping_add(key_term(key, digest));
        }
        self.nodes[leaf] = sum;
        let mut index = leaf / 2;
        while index >= 1 {
            self.rehash(index);
            index /= 2;
        }
    }

    /// The leaves whose hashes differ, in ascending order, visiting only
    /// subtrees whose hashes differ.
    pub fn diff(&self, other: &MerkleTree) -> Result<Vec<usize>, MerkleError> {
        self.diff_counting_visits(other)
            .map(|(leaves, _visited)| leaves)
    }

    /// [`MerkleTree::diff`], also returning how many nodes it compared.
    fn diff_counting_visits(&self, other: &MerkleTree) -> Result<(Vec<usize>, usize), MerkleError> {
        if self.leaf_count() != other.leaf_count() {
            return Err(MerkleError::ShapeMismatch {
                ours: self.leaf_count(),
                theirs: other.leaf_count(),
            });
        }
        let leaf_count = self.leaf_count();
        let mut leaves = Vec::new();
        let mut visited = 0;
        // Depth-first with the right child pushed first, so leaves come out
        // in ascending order. At most one pending sibling waits per level,
        // so the stack never holds more than depth + 1 entries.
        let mut stack = vec![1usize];
        while let Some(index) = stack.pop() {
            visited += 1;
            if self.nodes[index] == other.nodes[index] {
                continue;
            }
            if index >= leaf_count {
                leaves.push(index - leaf_count);
            } else {
                stack.push(2 * index + 1);
                stack.push(2 * index);
            }
            assert!(
                stack.len() <= self.depth as usize + 1,
                "merkle: diff stack exceeds its bound"
            );
        }
        Ok((leaves, visited))
    }

    /// Recomputes inner node `index` from its children.
    fn rehash(&mut self, index: usize) {
        assert!(
            index >= 1 && index < self.leaf_count(),
            "merkle: only inner nodes are rehashed"
        );
        let mut hasher = StableHasher::new();
        hasher.write_u64(self.nodes[2 * index]);
        hasher.write_u64(self.nodes[2 * index + 1]);
        self.nodes[index] = mix64(hasher.finish());
    }
}

/// One key's term in its leaf's sum. The key's length goes in first so that
/// (key, digest) pairs cannot run into each other.
fn key_term(key: &[u8], digest: u64) -> u64 {
    let mut hasher = StableHasher::new();
    hasher.write_u64(key.len() as u64);
    hasher.write(key);
    hasher.write_u64(digest);
    mix64(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use capkv_core::Rng;

    const LEAVES: usize = 1024;

    fn key(index: u64) -> Vec<u8> {
        format!("key-{index}").into_bytes()
    }

    fn tree_of(pairs: &[(u64, u64)]) -> MerkleTree {
        let mut tree = MerkleTree::new(LEAVES).unwrap();
        for (index, digest) in pairs {
            tree.update(&key(*index), None, Some(*digest));
        }
        tree
    }

    #[test]
    fn equal_sets_have_equal_roots_whatever_the_insertion_order() {
        let mut rng = Rng::new(11);
        let mut pairs: Vec<(u64, u64)> = (0..2_000).map(|index| (index, rng.next_u64())).collect();
        let reference = tree_of(&pairs);
        for _ in 0..5 {
            // Fisher–Yates with the seeded generator.
            for index in (1..pairs.len()).rev() {
                let other = rng.range(0, index as u64 + 1) as usize;
                pairs.swap(index, other);
            }
            assert_eq!(tree_of(&pairs), reference);
        }
        assert_ne!(reference.root(), MerkleTree::new(LEAVES).unwrap().root());
    }

    #[test]
    fn updates_and_removals_match_a_tree_built_from_the_final_set() {
        let mut tree = tree_of(&[(1, 10), (2, 20), (3, 30)]);
        tree.update(&key(2), Some(20), Some(21));
        tree.update(&key(3), Some(30), None);
        tree.update(&key(4), None, Some(40));
        assert_eq!(tree, tree_of(&[(1, 10), (2, 21), (4, 40)]));
        for (index, digest) in [(1, 10), (2, 21), (4, 40)] {
            tree.update(&key(index), Some(digest), None);
        }
        assert_eq!(tree, MerkleTree::new(LEAVES).unwrap());
    }

    #[test]
    fn one_changed_key_diffs_to_exactly_its_leaf() {
        let pairs: Vec<(u64, u64)> = (0..5_000).map(|index| (index, index * 7)).collect();
        let ours = tree_of(&pairs);
        for changed in [0, 17, 4_999] {
            let mut theirs = ours.clone();
            theirs.update(&key(changed), Some(changed * 7), Some(1));
            let leaf = ours.leaf_of(&key(changed));
            assert_eq!(ours.diff(&theirs), Ok(vec![leaf]));
            assert_eq!(theirs.diff(&ours), Ok(vec![leaf]));
            theirs.update(&key(changed), Some(1), None);
            assert_eq!(ours.diff(&theirs), Ok(vec![leaf]), "a missing key too");
        }
        assert_eq!(ours.diff(&ours.clone()), Ok(vec![]));
    }

    #[test]
    fn diff_visits_only_differing_subtrees() {
        let pairs: Vec<(u64, u64)> = (0..5_000).map(|index| (index, index)).collect();
        let ours = tree_of(&pairs);
        let depth = ours.depth() as usize;
        assert_eq!(depth, 10);
        for changed_count in [1u64, 4, 16] {
            let mut theirs = ours.clone();
            for index in 0..changed_count {
                let changed = index * 311;
                theirs.update(&key(changed), Some(changed), Some(changed + 1));
            }
            let (leaves, visited) = ours.diff_counting_visits(&theirs).unwrap();
            let expected: std::collections::BTreeSet<usize> = (0..changed_count)
                .map(|index| ours.leaf_of(&key(index * 311)))
                .collect();
            assert_eq!(leaves, expected.into_iter().collect::<Vec<_>>());
            // Each differing inner node costs a visit to each child: at most
            // 1 + 2 × changed × depth, against 2 × 1024 - 1 for a full walk.
            let bound = 1 + 2 * changed_count as usize * depth;
            assert!(visited <= bound, "visited {visited} > {bound}");
        }
        let (_, visited_equal) = ours.diff_counting_visits(&ours.clone()).unwrap();
        assert_eq!(visited_equal, 1, "equal roots end the walk at once");
    }

    #[test]
    fn leaf_placement_and_shapes_are_checked() {
        assert_eq!(
            MerkleTree::new(1000),
            Err(MerkleError::BadLeafCount {
                got: 1000,
                max: LEAF_COUNT_MAX
            })
        );
        assert!(MerkleTree::new(0).is_err());
        let one = MerkleTree::new(1).unwrap();
        assert_eq!(one.leaf_of(b"anything"), 0);
        let small = MerkleTree::new(16).unwrap();
        assert_eq!(
            small.diff(&MerkleTree::new(32).unwrap()),
            Err(MerkleError::ShapeMismatch {
                ours: 16,
                theirs: 32
            })
        );
        assert_eq!(small.node_hash(0), None);
        assert_eq!(small.node_hash(1), Some(small.root()));
        assert_eq!(small.leaf_hash(16), None);
        // Keys spread over the leaves: 10,000 keys leave no leaf of 16 empty.
        let mut counts = [0usize; 16];
        for index in 0..10_000 {
            counts[small.leaf_of(&key(index))] += 1;
        }
        assert!(counts.iter().all(|count| *count > 400), "{counts:?}");
    }
}
