//! The settings every property test of the workspace shares: a bounded case count that
//! `TETHER_FUZZ_CASES` raises for a longer run, a bounded shrink time, and turning errors into
//! test failures. The property tests of the agent and the relay include this same file (by
//! `#[path]`), so the three crates cannot drift apart.

use std::fmt::Display;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Shrinking stops after 10 s, so that even a failing property ends promptly.
pub const SHRINK_MS: u32 = 10_000;

/// `cases` cases, or `TETHER_FUZZ_CASES` if set (for a longer run), shrinking bounded by
/// [`SHRINK_MS`].
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("TETHER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let mut config = ProptestConfig::with_cases(cases);
    config.max_shrink_time = SHRINK_MS;
    config
}

/// Turns any error into a test failure (the tests may not unwrap).
pub fn fail<E: Display>(e: E) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}
