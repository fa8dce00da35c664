//! The ap checkers on hand-written histories, each one that must fail.

#[allow(unused_imports)]
use super::*;
