use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<u64> for $name {
            fn from(value: u64) -> Self {
                $name(value)
            }
        }
    };
}

id_newtype!(
    /// A node of the cluster. Node ids start at 1; 0 means "none".
    NodeId,
    "n"
);
id_newtype!(
    /// A Raft group. Every Raft message names its group so that one node can
    /// host many groups.
    GroupId,
    "g"
);
id_newtype!(
    /// A Raft term (§5.1): a logical clock that only grows.
    Term,
    "t"
);
id_newtype!(
    /// A position in a Raft log. Index 0 is the empty prefix; the first entry
    /// has index 1.
    LogIndex,
    "i"
);

impl Term {
    /// The next term.
    #[must_use]
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    #[must_use]
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one, saturating at 0.
    #[must_use]
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}
