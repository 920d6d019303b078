//! Pure building blocks of ladder, shared by the coordinator, the agent and the CLI.
//! Nothing here does I/O: callers pass file names and text in and get values back.
//!
//! Modules and how data flows through them:
//!
//! - [`spec`]: a sweep YAML file (name + text, read by the CLI) → [`SweepSpec`] via
//!   [`parse_sweep`], or [`SpecErrors`] listing every problem as `file:line:column: message`.
//!   The coordinator stores the validated spec as JSON.
//! - [`search`]: the coordinator asks [`trial`] (or a [`SearchMethod`] from [`method_for`])
//!   for the parameters of trial `n`; grid and random are pure functions of
//!   `(spec, n)`, so nothing is materialised and restarts are reproducible. The agent turns
//!   a trial into argv with [`render_command`] (no shell) and into the `LADDER_PARAMS`
//!   environment variable with [`params_json`].
//! - [`metric_line`]: the agent scans run output with [`parse_metric_line`] and
//!   [`parse_info_line`]; `@ladder {json}` lines become [`MetricPoint`]s and
//!   `@ladder.info {json}` lines the run's info (provenance), both sent to the coordinator.
//! - [`query`]: the run query language (`--where`, `--sort`, cursors), order-preserving
//!   index keys and the leaderboard's task convention.
//! - [`summary`]: which value of a metric's history stands for a run (last, min, max
//!   or best, chosen per sweep metric) and the running [`summary::MetricSummary`] the
//!   coordinator keeps per run and metric.
//! - [`types`]: lifecycle enums and agent hardware descriptions used on every side.
//!
//! The crate's error enum is [`SearchError`]; spec problems are positioned diagnostics
//! collected in [`SpecErrors`].

pub mod bayes;
pub mod search;
pub mod spec;
pub mod testfns;
pub mod tpe;
pub mod train_config;

pub use search::{
    grid_size, method_for, params_json, render_command, trial, trial_count, Observation, Params,
    SearchError, SearchMethod, StatelessSearch,
};
pub use spec::{
    parse_sweep, Condition, Goal, Method, MetricSpec, ParamSpec, ParamValue, Parameter, Resources,
    SpecError, SpecErrors, SweepSpec,
};

#[cfg(test)]
mod fuzz_tests;
