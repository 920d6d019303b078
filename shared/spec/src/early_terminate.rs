//! The `early_terminate:` section → [`EarlyTerminateSpec`].
//!
//! Keys follow ladder's names (`min_step`, `max_step`, `reduction_factor`) and accept
//! W&B's (`min_iter`, `max_iter`, `eta`) as aliases; giving both spellings is an error.
//! Keys that only one rule uses are rejected for the others, so a setting never silently
//! does nothing.

use super::yaml::{Entry, Node, Pos};
use super::{field, Checker, Goal, MetricSpec, GOAL_NAMES};
use ladder_early_stop::{EarlyTerminateKind, EarlyTerminateSpec};

const EARLY_TERMINATE_KEYS: &[&str] = &[
    "type",
    "metric",
    "goal",
    "min_step",
    "min_iter",
    "max_step",
    "max_iter",
    "reduction_factor",
    "eta",
    "brackets",
    "min_runs",
];
const DEFAULT_REDUCTION_FACTOR: u64 = 3;
const DEFAULT_MIN_RUNS: u64 = 3;

impl Checker<'_> {
    /// `metric` is the sweep's metric: `None` when it was invalid (already reported, so
    /// defaults that depend on it are not reported again), `Some(None)` when absent.
    pub(super) fn early_terminate(
        &mut self,
        node: &Node,
        metric: &Option<Option<MetricSpec>>,
    ) -> Option<EarlyTerminateSpec> {
        let entries = self.mapping(
            node,
            "early_terminate",
            "e.g. early_terminate: {type: asha, min_step: 1, max_step: 27}",
        )?;
        self.check_keys(entries, "early_terminate", EARLY_TERMINATE_KEYS);
        let kind = self
            .required(
                node,
                entries,
                "type",
                "early_terminate",
                "asha, hyperband or median",
            )
            .and_then(|kind| {
                let names = EarlyTerminateKind::ALL.map(EarlyTerminateKind::as_str);
                self.keyword(kind, "early_terminate type", &names)
            })
            .and_then(|name| EarlyTerminateKind::from_name(&name));
        let (metric_name, goal) = self.early_terminate_metric(node, entries, metric);

        let min_step = match self.aliased(entries, "min_step", "min_iter") {
            Some(Some((key, value))) => self.integer(
                value,
                &format!("early_terminate.{key}"),
                1,
                i64::MAX as u64,
                "a positive integer",
            ),
            Some(None) => Some(1),
            None => None,
        };
        let max_step = match self.aliased(entries, "max_step", "max_iter") {
            Some(Some((key, value))) => self
                .integer(
                    value,
                    &format!("early_terminate.{key}"),
                    1,
                    i64::MAX as u64,
                    "a positive integer",
                )
                .map(|max| Some((max, key, value.pos))),
            Some(None) => Some(None),
            None => None,
        };
        let reduction_factor = match self.aliased(entries, "reduction_factor", "eta") {
            Some(Some((key, value))) => self.integer(
                value,
                &format!("early_terminate.{key}"),
                2,
                u32::MAX.into(),
                "an integer >= 2",
            ),
            Some(None) => Some(DEFAULT_REDUCTION_FACTOR),
            None => None,
        };
        let brackets = match field(entries, "brackets") {
            Some(value) if !value.is_null() => self
                .integer(
                    value,
                    "early_terminate.brackets",
                    1,
                    u32::MAX.into(),
                    "a positive integer",
                )
                .map(Some),
            _ => Some(None),
        };
        let min_runs =
            self.optional_integer(entries, "min_runs", DEFAULT_MIN_RUNS, 1, u32::MAX.into());

        let kind = kind?;
        let mut ok = self.only_for(entries, kind);
        if let (Some(min), Some(Some((max, key, pos)))) = (min_step, max_step) {
            if max <= min {
                ok = false;
                self.error(
                    pos,
                    format!("early_terminate.{key} must be greater than min_step (got {key} {max}, min_step {min})"),
                );
            }
        }
        if kind == EarlyTerminateKind::Hyperband && max_step == Some(None) {
            ok = false;
            self.error(
                node.pos,
                "missing required key \"max_step\" in early_terminate (hyperband needs the step runs finish at, e.g. max_step: 81; W&B's max_iter is accepted too)",
            );
        }
        let spec = EarlyTerminateSpec {
            kind,
            metric: metric_name?,
            goal: goal?,
            min_step: i64::try_from(min_step?).ok()?,
            max_step: match max_step? {
                Some((max, _, _)) => Some(i64::try_from(max).ok()?),
                None => None,
            },
            reduction_factor: u32::try_from(reduction_factor?).ok()?,
            brackets: match brackets? {
                Some(brackets) => Some(u32::try_from(brackets).ok()?),
                None => None,
            },
            min_runs: u32::try_from(min_runs?).ok()?,
        };
        ok.then_some(spec)
    }

    /// The metric and goal, defaulting to the sweep's metric.
    fn early_terminate_metric(
        &mut self,
        node: &Node,
        entries: &[Entry],
        sweep_metric: &Option<Option<MetricSpec>>,
    ) -> (Option<String>, Option<Goal>) {
        let written = match field(entries, "metric") {
            Some(metric) if !metric.is_null() => {
                match self.non_empty_text(metric, "early_terminate.metric") {
                    Some(name) => Some(Some((name, metric.pos))),
                    None => return (None, None),
                }
            }
            _ => Some(None),
        };
        let goal = match field(entries, "goal") {
            Some(goal) if !goal.is_null() => self.keyword(goal, "goal", GOAL_NAMES).map(|goal| {
                Goal::ALL
                    .into_iter()
                    .find(|candidate| candidate.as_str() == goal)
            }),
            _ => Some(None),
        };
        let name = match (written, sweep_metric) {
            (Some(Some((name, _))), _) => Some(name),
            (Some(None), Some(Some(sweep))) => Some(sweep.name.clone()),
            (Some(None), Some(None)) => {
                self.error(
                    node.pos,
                    "early_terminate needs a metric to compare runs by: add early_terminate.metric or a sweep metric (metric: {name: val_loss, goal: minimize})",
                );
                None
            }
            _ => None,
        };
        let goal = match (goal, &name, sweep_metric) {
            (Some(Some(goal)), _, _) => Some(goal),
            (Some(None), Some(name), Some(Some(sweep))) if *name == sweep.name => Some(sweep.goal),
            (Some(None), Some(name), Some(_)) => {
                let pos = field(entries, "metric").map_or(node.pos, |metric| metric.pos);
                self.error(
                    pos,
                    format!("early_terminate.goal is required when early_terminate.metric differs from the sweep metric (\"{name}\" is not the sweep metric); add goal: minimize or goal: maximize"),
                );
                None
            }
            _ => None,
        };
        (name, goal)
    }

    /// A key with a W&B alias: `Some(Some((spelling used, value)))`, `Some(None)` when
    /// neither is given, `None` after reporting that both are.
    fn aliased<'n>(
        &mut self,
        entries: &'n [Entry],
        key: &'static str,
        alias: &'static str,
    ) -> Option<Option<(&'static str, &'n Node)>> {
        let own = field(entries, key).filter(|node| !node.is_null());
        let other = entries
            .iter()
            .find(|entry| entry.key == alias)
            .filter(|entry| !entry.value.is_null());
        match (own, other) {
            (Some(_), Some(other)) => {
                self.error(
                    other.key_pos,
                    format!("early_terminate has both {key} and {alias} ({alias} is W&B's name for {key}); keep one"),
                );
                None
            }
            (Some(own), None) => Some(Some((key, own))),
            (None, Some(other)) => Some(Some((alias, &other.value))),
            (None, None) => Some(None),
        }
    }

    /// Reports keys that the chosen rule does not use.
    fn only_for(&mut self, entries: &[Entry], kind: EarlyTerminateKind) -> bool {
        let mut ok = true;
        for entry in entries {
            let applies: &[EarlyTerminateKind] = match entry.key.as_str() {
                "reduction_factor" | "eta" => {
                    &[EarlyTerminateKind::Asha, EarlyTerminateKind::Hyperband]
                }
                "brackets" => &[EarlyTerminateKind::Hyperband],
                "min_runs" => &[EarlyTerminateKind::Median],
                _ => continue,
            };
            if applies.contains(&kind) {
                continue;
            }
            ok = false;
            let names: Vec<&str> = applies.iter().map(|kind| kind.as_str()).collect();
            self.report_inapplicable(entry.key_pos, &entry.key, kind, &names);
        }
        ok
    }

    fn report_inapplicable(
        &mut self,
        pos: Pos,
        key: &str,
        kind: EarlyTerminateKind,
        applies: &[&str],
    ) {
        self.error(
            pos,
            format!(
                "early_terminate.{key} does not apply to type {} (only to {}); remove it",
                kind.as_str(),
                applies.join(" and ")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_error, assert_error_at};
    use super::super::{parse_sweep, Goal};
    use ladder_early_stop::{EarlyTerminateKind, EarlyTerminateSpec};

    const HEAD: &str = "name: s\nmethod: random\nmax_runs: 9\ncommand: [a]\nmetric: {name: loss, goal: minimize}\n";

    fn with(early_terminate: &str) -> String {
        format!("{HEAD}early_terminate:\n{early_terminate}")
    }

    #[track_caller]
    fn parse(text: &str) -> EarlyTerminateSpec {
        parse_sweep("s.yaml", text)
            .unwrap_or_else(|errors| panic!("{errors}"))
            .early_terminate
            .expect("early_terminate")
    }

    #[test]
    fn defaults_come_from_the_sweep_metric() {
        assert_eq!(
            parse(&with("  type: asha\n")),
            EarlyTerminateSpec {
                kind: EarlyTerminateKind::Asha,
                metric: "loss".into(),
                goal: Goal::Minimize,
                min_step: 1,
                max_step: None,
                reduction_factor: 3,
                brackets: None,
                min_runs: 3,
            }
        );
        let median = parse(&with("  type: median\n  min_runs: 5\n  metric: loss\n"));
        assert_eq!(
            (median.kind, median.min_runs, median.goal),
            (EarlyTerminateKind::Median, 5, Goal::Minimize)
        );
        let no_rule = parse_sweep("s.yaml", HEAD).unwrap();
        assert_eq!(no_rule.early_terminate, None);
    }

    #[test]
    fn wandb_spellings_are_accepted() {
        let spec = parse(&with("  type: hyperband\n  min_iter: 3\n  max_iter: 81\n  eta: 3\n  brackets: 2\n  metric: acc\n  goal: maximize\n"));
        assert_eq!(
            spec,
            EarlyTerminateSpec {
                kind: EarlyTerminateKind::Hyperband,
                metric: "acc".into(),
                goal: Goal::Maximize,
                min_step: 3,
                max_step: Some(81),
                reduction_factor: 3,
                brackets: Some(2),
                min_runs: 3,
            }
        );
    }

    #[test]
    fn errors_are_positioned() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("  type: asa\n", "asa", &["unknown early_terminate type \"asa\" (expected one of: asha, hyperband, median)", "did you mean \"asha\"?"]),
            ("  min_step: 1\n", "min_step", &["missing required key \"type\" in early_terminate"]),
            ("  type: asha\n  metric: acc\n", "acc", &["early_terminate.goal is required when early_terminate.metric differs from the sweep metric"]),
            ("  type: asha\n  min_step: 0\n", "0", &["early_terminate.min_step must be at least 1"]),
            ("  type: asha\n  min_step: 4\n  max_step: 3\n", "3\n", &["early_terminate.max_step must be greater than min_step"]),
            ("  type: asha\n  max_iter: 2\n  min_iter: 3\n", "2\n", &["early_terminate.max_iter must be greater than min_step"]),
            ("  type: hyperband\n", "type", &["missing required key \"max_step\" in early_terminate", "hyperband"]),
            ("  type: asha\n  eta: 1\n", "1\n", &["early_terminate.eta must be at least 2"]),
            ("  type: asha\n  reduction_factor: 2.5\n", "2.5", &["reduction_factor must be an integer >= 2"]),
            ("  type: asha\n  brackets: 2\n", "brackets", &["early_terminate.brackets does not apply to type asha (only to hyperband)"]),
            ("  type: median\n  eta: 2\n", "eta", &["early_terminate.eta does not apply to type median (only to asha and hyperband)"]),
            ("  type: asha\n  min_runs: 2\n", "min_runs", &["does not apply to type asha (only to median)"]),
            ("  type: asha\n  min_step: 1\n  min_iter: 1\n", "min_iter", &["early_terminate has both min_step and min_iter"]),
            ("  type: asha\n  max_stp: 3\n", "max_stp", &["unknown key \"max_stp\" in early_terminate", "did you mean \"max_step\"?"]),
            ("  type: asha\n  goal: minimise\n", "minimise", &["unknown goal \"minimise\""]),
            ("  type: hyperband\n  max_step: 9\n  brackets: 0\n", "0", &["early_terminate.brackets must be at least 1"]),
        ];
        for (body, needle, fragments) in cases {
            let text = with(body);
            let (line, column) = super::super::tests::locate(body, needle);
            assert_error(&text, line + 6, column, fragments);
        }
        assert_error_at(
            "name: s\nmethod: grid\ncommand: [a]\nearly_terminate: {type: asha}\n",
            "{type",
            &["early_terminate needs a metric to compare runs by"],
        );
        assert_error_at(
            "name: s\nmethod: grid\ncommand: [a]\nearly_terminate: asha\n",
            "asha",
            &["early_terminate must be a mapping"],
        );
        // Without a sweep metric, metric and goal together are enough.
        let text = "name: s\nmethod: grid\ncommand: [a]\nearly_terminate: {type: median, metric: acc, goal: maximize}\n";
        assert_eq!(parse(text).metric, "acc");
    }
}
