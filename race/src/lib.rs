//! The race's shared parts: generated sets with a known truth.

pub mod truth;
