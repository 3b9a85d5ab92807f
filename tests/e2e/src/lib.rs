//! End-to-end tests of hapod against a real control plane live in `tests/e2e.rs`; the
//! testbed they use is `hapod_testkit::testbed` (`tests/kit`, shared with `cargo xtask demo`
//! and `cargo xtask bench`).
