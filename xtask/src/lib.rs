//! The parts of `cargo xtask` that tests use too.

pub mod deb;
