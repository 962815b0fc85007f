//! The integration tests of the packer, in one test binary (one link instead of one per file).
//!
//! Each file of this directory is a module; a test's name starts with its module
//! (`cargo test -p mkmodule-pack -- MODULE::` runs one group). To add tests, put them in a new file
//! here and list it below with `mod NAME;`; a file left directly in `tests/` would become a
//! binary of its own. Shared helpers live in `mkmodule-testkit` or in a module of this binary.
//! Tests here run as threads of one process: anything process-wide (environment variables, the
//! current directory, signal handlers, fixed ports) must be serialised explicitly.

mod positioned;
mod reuse;
mod roundtrip;
