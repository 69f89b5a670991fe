//! The property-based fuzzers' runner (proptest runs in `cargo test` on stable).

use proptest::test_runner::{Config, TestRunner};

/// A runner for `cases` random inputs. Failures are reproduced from the printed input; no
/// regression files are written into the tree.
pub fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}
