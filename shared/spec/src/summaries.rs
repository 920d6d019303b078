//! `metric: {.., summary: S}` and the `summaries:` section → which value of each metric
//! stands for a run (see [`ladder_metrics::summary`]).
//!
//! The objective's summary lives on [`MetricSpec::summary`]; `summaries:` may also name
//! the objective (folded into it; giving it in both places is an error). `best` needs a
//! goal: the objective's, or the `early_terminate` rule's for its metric; for any other
//! metric it is an error that suggests `min` or `max`.

use std::collections::BTreeMap;

use super::yaml::Node;
use super::{unknown, Checker, MetricSpec, SweepSpec};
use ladder_early_stop::EarlyTerminateSpec;
use ladder_metrics::summary::{Reduction, Summary};

const SUMMARY_NAMES: &[&str] = &["best", "last", "min", "max"];

impl SweepSpec {
    /// How the value that stands for a run is taken from `metric`'s history: the chosen
    /// summary resolved by the metric's goal, or the last value when none was chosen.
    pub fn reduction_of(&self, metric: &str) -> Reduction {
        if let Some(objective) = self.metric.as_ref().filter(|m| m.name == metric) {
            return objective
                .summary
                .map_or(Reduction::Last, |s| s.resolve(Some(objective.goal)));
        }
        let Some(summary) = self.summaries.get(metric) else {
            return Reduction::Last;
        };
        let goal = self
            .early_terminate
            .as_ref()
            .filter(|rule| rule.metric == metric)
            .map(|rule| rule.goal);
        summary.resolve(goal)
    }
}

impl Checker<'_> {
    /// A summary name: best, last, min or max.
    pub(super) fn summary(&mut self, node: &Node) -> Option<Summary> {
        let name = self.text(node, "summary")?;
        match Summary::from_name(&name) {
            Some(summary) => Some(summary),
            None => {
                self.error(node.pos, unknown("summary", &name, "", SUMMARY_NAMES));
                None
            }
        }
    }

    /// `summaries: {metric: summary, ..}`. An entry for the objective moves into `metric`
    /// (`None` when the objective was invalid, already reported).
    pub(super) fn summaries(
        &mut self,
        node: &Node,
        metric: &mut Option<Option<MetricSpec>>,
        early_terminate: &Option<Option<EarlyTerminateSpec>>,
    ) -> Option<BTreeMap<String, Summary>> {
        let entries = self.mapping(
            node,
            "summaries",
            "e.g. summaries: {train/loss: min, eval/acc: max}",
        )?;
        let mut summaries = BTreeMap::new();
        let mut valid = true;
        for entry in entries {
            if entry.key.trim().is_empty() || entry.key.contains('\0') {
                self.error(
                    entry.key_pos,
                    "a metric name in summaries must be a non-empty name as reported on @ladder lines",
                );
                valid = false;
                continue;
            }
            let Some(summary) = self.summary(&entry.value) else {
                valid = false;
                continue;
            };
            if let Some(Some(objective)) = metric.as_mut() {
                if objective.name == entry.key {
                    if objective.summary.is_some_and(|chosen| chosen != summary) {
                        self.error(
                            entry.key_pos,
                            format!(
                                "the summary of the sweep metric {:?} is already set in metric: (summary: {}); give it once",
                                entry.key,
                                objective.summary.map_or("", |s| s.as_str())
                            ),
                        );
                        valid = false;
                    }
                    objective.summary = Some(summary);
                    continue;
                }
            }
            let goal_known = early_terminate
                .as_ref()
                .and_then(Option::as_ref)
                .is_some_and(|rule| rule.metric == entry.key);
            // An invalid objective or rule was reported already; do not guess at it.
            let unsure = metric.is_none() || early_terminate.is_none();
            if summary == Summary::Best && !goal_known && !unsure {
                self.error(
                    entry.value.pos,
                    format!(
                        "summary best of {:?} needs a goal, and it is neither the sweep's metric nor the early_terminate metric; use min or max",
                        entry.key
                    ),
                );
                valid = false;
                continue;
            }
            summaries.insert(entry.key.clone(), summary);
        }
        valid.then_some(summaries)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_error_at, errors};
    use super::super::{parse_sweep, SweepSpec};
    use ladder_metrics::summary::{Reduction, Summary};

    const HEAD: &str = "name: s\nmethod: random\nmax_runs: 9\ncommand: [a]\n";

    #[track_caller]
    fn parse(text: &str) -> SweepSpec {
        match parse_sweep("sweep.yaml", text) {
            Ok(spec) => spec,
            Err(errors) => panic!("{errors}"),
        }
    }

    #[test]
    fn the_objective_takes_a_summary() {
        let spec = parse(&format!(
            "{HEAD}metric: {{name: eval/loss, goal: minimize, summary: best}}\n"
        ));
        assert_eq!(spec.metric.as_ref().unwrap().summary, Some(Summary::Best));
        assert_eq!(spec.reduction_of("eval/loss"), Reduction::Min);
        assert_eq!(spec.reduction_of("other"), Reduction::Last);
        let spec = parse(&format!(
            "{HEAD}metric: {{name: acc, summary: best}}\n" // goal defaults to maximize
        ));
        assert_eq!(spec.reduction_of("acc"), Reduction::Max);
        let spec = parse(&format!("{HEAD}metric: {{name: acc}}\n"));
        assert_eq!(spec.metric.as_ref().unwrap().summary, None);
        assert_eq!(spec.reduction_of("acc"), Reduction::Last);
    }

    #[test]
    fn other_metrics_take_summaries() {
        let spec = parse(&format!(
            "{HEAD}metric: {{name: eval/loss, goal: minimize}}\nsummaries: {{train/loss: min, eval/acc: max, lr: last}}\n"
        ));
        assert_eq!(spec.summaries.len(), 3);
        assert_eq!(spec.reduction_of("train/loss"), Reduction::Min);
        assert_eq!(spec.reduction_of("eval/acc"), Reduction::Max);
        assert_eq!(spec.reduction_of("lr"), Reduction::Last);
        assert_eq!(spec.reduction_of("eval/loss"), Reduction::Last);
        // Without a sweep metric too.
        let spec = parse(&format!("{HEAD}summaries: {{loss: min}}\n"));
        assert_eq!(spec.reduction_of("loss"), Reduction::Min);
    }

    #[test]
    fn summaries_may_name_the_objective_once() {
        let spec = parse(&format!(
            "{HEAD}metric: {{name: loss, goal: minimize}}\nsummaries: {{loss: best}}\n"
        ));
        assert_eq!(spec.metric.as_ref().unwrap().summary, Some(Summary::Best));
        assert!(spec.summaries.is_empty());
        assert_eq!(spec.reduction_of("loss"), Reduction::Min);
        let text = format!(
            "{HEAD}metric: {{name: loss, goal: minimize, summary: last}}\nsummaries: {{loss: min}}\n"
        );
        assert_error_at(
            &text,
            "loss: min",
            &[
                "summary of the sweep metric \"loss\" is already set",
                "summary: last",
            ],
        );
    }

    #[test]
    fn best_needs_a_goal() {
        let text = format!(
            "{HEAD}metric: {{name: eval/loss, goal: minimize}}\nsummaries: {{train/loss: best}}\n"
        );
        assert_error_at(
            &text,
            "best}",
            &[
                "summary best of \"train/loss\" needs a goal",
                "use min or max",
            ],
        );
        // The early_terminate rule gives its metric a goal.
        let spec = parse(&format!(
            "{HEAD}metric: {{name: eval/loss, goal: minimize}}\nearly_terminate: {{type: median, metric: eval/acc, goal: maximize}}\nsummaries: {{eval/acc: best}}\n"
        ));
        assert_eq!(spec.reduction_of("eval/acc"), Reduction::Max);
    }

    #[test]
    fn unknown_summaries_and_keys_are_positioned() {
        let text = format!("{HEAD}metric: {{name: loss, summary: mean}}\n");
        assert_error_at(
            &text,
            "mean",
            &[
                "unknown summary \"mean\"",
                "expected one of: best, last, min, max",
            ],
        );
        let text = format!("{HEAD}summaries: {{loss: mxa}}\n");
        assert_error_at(
            &text,
            "mxa",
            &["unknown summary \"mxa\"", "did you mean \"max\"?"],
        );
        let text = format!("{HEAD}metric: {{name: loss, sumary: min}}\n");
        assert_error_at(
            &text,
            "sumary",
            &[
                "unknown key \"sumary\" in metric",
                "did you mean \"summary\"?",
            ],
        );
        let text = format!("{HEAD}summaries: [loss, min]\n");
        assert_error_at(&text, "[loss", &["summaries must be a mapping"]);
        let text = format!("{HEAD}summaries: {{loss: [min]}}\n");
        assert_error_at(&text, "[min]", &["summary must be a string"]);
        assert_eq!(
            errors(&format!("{HEAD}summaries: {{\"\": min}}\n")).len(),
            1
        );
    }

    #[test]
    fn specs_stored_before_summaries_still_load() {
        let spec = parse(&format!("{HEAD}metric: {{name: loss, goal: minimize}}\n"));
        let mut json: serde_json::Value = serde_json::to_value(&spec).unwrap();
        assert!(
            json.get("summaries").is_none(),
            "empty summaries are not written"
        );
        json["metric"].as_object_mut().unwrap().remove("summary");
        let loaded: SweepSpec = serde_json::from_value(json).unwrap();
        assert_eq!(loaded, spec);
        let with = parse(&format!(
            "{HEAD}metric: {{name: loss, goal: minimize, summary: best}}\nsummaries: {{acc: max}}\n"
        ));
        let round: SweepSpec =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(round, with);
    }
}
