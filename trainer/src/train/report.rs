//! Where a run's metrics go: a [`Reporter`] (`@ladder` lines, or memory in tests and
//! benchmarks).

/// Where a run's metrics and progress go: `@ladder` lines for the agent, a progress bar
/// for `ladder train`, a vector in tests.
pub trait Reporter {
    /// Metrics at optimizer step `step` (1-based: the number of updates applied).
    fn metrics(&mut self, step: u64, values: &[(String, f64)]);
    /// Called after every step.
    fn progress(&mut self, _step: u64, _total: u64, _loss: f64) {}
    /// A line for humans (resumed from a checkpoint, model saved, ...).
    fn note(&mut self, _text: &str) {}
    /// Asked after every step: `true` ends training there, as if the process had been
    /// killed (nothing more is written), e.g. when a signal asked the run to stop.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// A reporter that keeps everything, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct Recorded {
    pub metrics: Vec<(u64, Vec<(String, f64)>)>,
    pub losses: Vec<(u64, f64)>,
    pub notes: Vec<String>,
    /// Stop after this step (simulates a killed run).
    pub stop_after: Option<u64>,
}

impl Reporter for Recorded {
    fn metrics(&mut self, step: u64, values: &[(String, f64)]) {
        self.metrics.push((step, values.to_vec()));
    }
    fn progress(&mut self, step: u64, _total: u64, loss: f64) {
        self.losses.push((step, loss));
    }
    fn note(&mut self, text: &str) {
        self.notes.push(text.to_string());
    }
    fn should_stop(&mut self) -> bool {
        let last = self.losses.last().map(|(step, _)| *step);
        self.stop_after.is_some() && last >= self.stop_after
    }
}

/// The reporter of ranks other than 0.
pub(crate) struct Silent;

impl Reporter for Silent {
    fn metrics(&mut self, _step: u64, _values: &[(String, f64)]) {}
}

/// Named metric values, in report order.
pub type Metrics = Vec<(String, f64)>;
