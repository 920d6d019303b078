//! How a sweep chooses its next trial: [`propose`] is the one entry point. Grid and
//! random trials are pure functions of the trial index ([`ladder_spec::space::trial`]);
//! `method: bayes` fits the Tree-structured Parzen Estimator of [`tpe`] to the
//! [`Observation`]s of the trials so far (`bayes` maps the sweep's parameters onto
//! its dimensions), and with `warm_start:` also to an earlier sweep's trials
//! ([`propose_with_warm_start`]); `method: gp` fits the Gaussian process of [`gp`] to the
//! same dimensions instead.

use serde::{Deserialize, Serialize};

use ladder_spec::space::Params;

mod bayes;
pub mod gp;
pub mod tpe;

pub use bayes::{propose, propose_with_warm_start};

/// A trial as a search method sees it: finished, failed, or still in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub params: Params,
    /// The sweep metric's value: the run's summary of it as the sweep chose it (`last`
    /// unless `summary:` says `min`, `max` or `best`); larger is better for `maximize`.
    /// `None` when the run failed, never reported it, or is still in flight.
    pub value: Option<f64>,
    /// The trial is queued or running: learning methods must not propose it again
    /// (e.g. treat it with a "constant liar" value).
    pub pending: bool,
}
