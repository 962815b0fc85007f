//! The shared test support (`mkmodule-testkit`) under the names these tests use.

pub use mkmodule_testkit::data::{random, sample, sha256_bytes, sha256_hex, text_lines as text};
pub use mkmodule_testkit::fixtures::fixtures;
pub use mkmodule_testkit::image::{build, Built, Spec};
