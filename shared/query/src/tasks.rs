//! The leaderboard's task convention: `eval/<task>/<score>` metrics and their average.

use super::*;

/// Score names tried per task, best first: `eval/<task>/acc_norm`, then `acc`, then `mc2`.
pub const TASK_SCORES: [&str; 3] = ["acc_norm", "acc", "mc2"];

/// The task scores of a run under the Open-LLM-Leaderboard convention: every metric
/// named `eval/<task>/<score>` with `<score>` one of [`TASK_SCORES`] makes `<task>` a
/// task, scored by the first of `acc_norm`, `acc`, `mc2` the run reported.
pub fn task_scores(metrics: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut best: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (name, value) in metrics {
        let Some(rest) = name.strip_prefix("eval/") else {
            continue;
        };
        let Some((task, score)) = rest.rsplit_once('/') else {
            continue;
        };
        let Some(rank) = TASK_SCORES.iter().position(|s| *s == score) else {
            continue;
        };
        if task.is_empty() || !value.is_finite() {
            continue;
        }
        let entry = best.entry(task.to_string()).or_insert((rank, *value));
        if rank < entry.0 {
            *entry = (rank, *value);
        }
    }
    best.into_iter().map(|(task, (_, v))| (task, v)).collect()
}

/// The mean of a run's task scores, when it has any.
pub fn tasks_average(metrics: &BTreeMap<String, f64>) -> Option<f64> {
    let scores = task_scores(metrics);
    if scores.is_empty() {
        return None;
    }
    Some(scores.values().sum::<f64>() / scores.len() as f64)
}
