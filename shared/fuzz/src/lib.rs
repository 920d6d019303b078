//! The one fuzz runner of ladder's tests: every parser that sees untrusted input (sweep
//! files, metric lines, queries, agent and client messages) is fed generated inputs
//! through [`fuzz`], which shrinks a failure to a small input and fails the test with it.

use std::time::Instant;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Runs `property` on `cases` inputs from `strategy`; prints (`--no-capture`) and returns
/// how many were executed. Panics with the shrunk input when the property fails, and when
/// fewer than `cases` inputs ran.
pub fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64 {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // Inputs are cheap; rejections are not used.
        max_shrink_iters: 2_000,
        ..Config::default()
    });
    let executed = std::cell::Cell::new(0u64);
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        executed.set(executed.get() + 1);
        property(input)
    });
    eprintln!(
        "fuzz {name}: {} executions in {:.2?}",
        executed.get(),
        started.elapsed()
    );
    if let Err(error) = result {
        panic!("fuzz {name} failed: {error}");
    }
    assert!(
        executed.get() >= u64::from(cases),
        "{name}: too few executions"
    );
    executed.get()
}
