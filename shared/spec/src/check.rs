//! The sweep file's checker: walks the spanned YAML tree against the schema, collecting
//! every error with its position, and builds the [`SweepSpec`] when there is none.
//! `parameters:` is checked in `params`, `early_terminate:` in `early_terminate`,
//! `metric.summary` and `summaries:` in `summaries`, each as more `Checker` methods.

use super::*;

/// A misspelled required key is reported twice: as missing (at its map) and as unknown
/// (at its line, with "did you mean"). The second says what to fix, so it moves in front
/// of the first.
pub(crate) fn did_you_mean_first(errors: &mut Vec<SpecError>) {
    let mut index = 0;
    while index < errors.len() {
        let missing = errors[index]
            .message
            .strip_prefix("missing required key \"")
            .and_then(|rest| rest.split('"').next())
            .map(|key| format!("did you mean \"{key}\"?"));
        if let Some(suggestion) = missing {
            let explained = (index + 1..errors.len())
                .find(|&later| errors[later].message.ends_with(&suggestion));
            if let Some(later) = explained {
                let error = errors.remove(later);
                errors.insert(index, error);
                index += 1;
            }
        }
        index += 1;
    }
}

/// Parses and validates a sweep file. `file_name` only labels the errors.
pub fn parse_sweep(file_name: &str, text: &str) -> Result<SweepSpec, SpecErrors> {
    let mut checker = Checker {
        file: file_name,
        errors: Vec::new(),
    };
    let Some(root) = checker.document_root(
        text,
        "sweep file is empty: expected a mapping with at least name, method and command",
    ) else {
        return Err(checker.finish());
    };
    let spec = checker.sweep(&root);
    match spec {
        Some(spec) if checker.errors.is_empty() => Ok(spec),
        _ => Err(checker.finish()),
    }
}

pub(crate) const SWEEP_KEYS: &[&str] = &[
    "name",
    "project",
    "description",
    "method",
    "metric",
    "parameters",
    "max_runs",
    "parallel",
    "seed",
    "command",
    "train",
    "max_restarts",
    "resources",
    "early_terminate",
    "summaries",
    "bayes",
    "warm_start",
    "artifacts",
];
pub(crate) const BAYES_KEYS: &[&str] = &["multivariate"];
pub(crate) const WARM_START_KEYS: &[&str] = &["sweep"];
/// Longest `warm_start.sweep` accepted (sweep IDs are 8 characters).
const WARM_START_ID_MAX: usize = 64;
pub(crate) const METRIC_KEYS: &[&str] = &["name", "goal", "summary"];
pub(crate) const RESOURCE_KEYS: &[&str] = &["gpus", "labels", "launch"];
pub(crate) const METHOD_NAMES: &[&str] = &Method::NAMES;
pub(crate) const GOAL_NAMES: &[&str] = &Goal::NAMES;
pub(crate) const COMMAND_EXAMPLE: &str = "[python, train.py, --lr, \"{{lr}}\"]";

/// Walks the spanned tree, collecting errors. Methods return `None` after reporting why.
pub(crate) struct Checker<'f> {
    file: &'f str,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    /// The file's root node, with its structural diagnostics recorded; `None` (with the
    /// error recorded) on a syntax error or when the file holds nothing (`empty` says
    /// what was expected).
    pub(crate) fn document_root(&mut self, text: &str, empty: &str) -> Option<Node> {
        let document = match yaml::parse(text) {
            Ok(document) => document,
            Err(syntax) => {
                self.error(syntax.pos, syntax.message);
                return None;
            }
        };
        for diagnostic in document.diagnostics {
            self.error(diagnostic.pos, diagnostic.message);
        }
        let root = document.root.filter(|root| !root.is_null());
        if root.is_none() {
            self.error(Pos::START, empty);
        }
        root
    }

    pub(crate) fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }

    pub(crate) fn finish(mut self) -> SpecErrors {
        if self.errors.is_empty() {
            self.error(Pos::START, "invalid sweep");
        }
        self.errors.sort_by_key(|error| (error.line, error.column));
        // A group's condition is checked once per leaf; report each problem once.
        self.errors.dedup();
        did_you_mean_first(&mut self.errors);
        SpecErrors(self.errors)
    }

    pub(crate) fn sweep(&mut self, root: &Node) -> Option<SweepSpec> {
        let NodeKind::Map(entries) = &root.kind else {
            self.error(
                root.pos,
                format!(
                    "a sweep must be a mapping of keys like name, method, parameters and command, not {}",
                    root.type_name()
                ),
            );
            return None;
        };
        self.check_keys(entries, "sweep", SWEEP_KEYS);

        let name = self
            .required(root, entries, "name", "sweep", "e.g. name: lr-sweep")
            .and_then(|node| self.non_empty_text(node, "name"));
        let project = match field(entries, "project") {
            None => Some("default".to_string()),
            Some(node) => self.non_empty_text(node, "project"),
        };
        let description = match field(entries, "description") {
            Some(node) if !node.is_null() => self.text(node, "description").map(Some),
            _ => Some(None),
        };
        let method = self
            .required(root, entries, "method", "sweep", "grid, random or bayes")
            .and_then(|node| self.method(node));
        let mut metric = match field(entries, "metric") {
            Some(node) if !node.is_null() => self.metric(node).map(Some),
            _ => Some(None),
        };
        let early_terminate = match field(entries, "early_terminate") {
            Some(node) if !node.is_null() => self.early_terminate(node, &metric).map(Some),
            _ => Some(None),
        };
        let summaries = match field(entries, "summaries") {
            Some(node) if !node.is_null() => self.summaries(node, &mut metric, &early_terminate),
            _ => Some(BTreeMap::new()),
        };
        let params::ParsedParameters {
            parameters,
            names: parameter_names,
        } = match field(entries, "parameters") {
            Some(node) if !node.is_null() => self.parameters(node, method.map(|(m, _)| m)),
            _ => params::ParsedParameters {
                parameters: Some(Vec::new()),
                names: Vec::new(),
            },
        };
        let max_runs = match field(entries, "max_runs") {
            Some(node) if !node.is_null() => self
                .integer(
                    node,
                    "max_runs",
                    1,
                    ladder_limits::MAX_SWEEP_RUNS,
                    "a positive integer",
                )
                .map(Some),
            _ => Some(None),
        };
        let parallel =
            self.optional_integer(entries, "parallel", 1, 1, ladder_limits::MAX_SWEEP_PARALLEL);
        let seed = self.optional_integer(entries, "seed", 0, 0, u64::MAX);
        let max_restarts = self.optional_integer(entries, "max_restarts", 3, 0, u32::MAX.into());
        let train_node = field(entries, "train").filter(|node| !node.is_null());
        let command = match (train_node, field(entries, "command")) {
            (Some(train), Some(_)) => {
                self.error(
                    train.pos,
                    "a sweep runs either a command or the built-in trainer (train:), not both",
                );
                None
            }
            (Some(train), None) => {
                self.train_placeholders(train, &parameter_names);
                Some(TRAIN_COMMAND.iter().map(|s| s.to_string()).collect())
            }
            (None, _) => self
                .required(root, entries, "command", "sweep", COMMAND_EXAMPLE)
                .and_then(|node| self.command(node, &parameter_names)),
        };
        let resources = match field(entries, "resources") {
            Some(node) if !node.is_null() => self.resources(node),
            _ => Some(Resources::default()),
        };
        // The built-in trainer runs one data-parallel rank per GPU.
        let resources = match (train_node, resources) {
            (Some(_), Some(mut resources)) => {
                let launch_node = field(entries, "resources").and_then(|node| match &node.kind {
                    NodeKind::Map(inner) => field(inner, "launch").filter(|n| !n.is_null()),
                    _ => None,
                });
                match launch_node {
                    None if resources.gpus >= 1 => resources.launch = Launch::PerGpu,
                    Some(node) if resources.launch == Launch::Single && resources.gpus > 1 => {
                        self.error(
                            node.pos,
                            "resources.launch: single starts one process, but the built-in trainer runs one rank per GPU; use per_gpu or leave launch out",
                        );
                    }
                    _ => {}
                }
                Some(resources)
            }
            (_, resources) => resources,
        };

        if let (
            Some((method @ (Method::Random | Method::Bayes | Method::Gp), method_pos)),
            Some(None),
        ) = (method, max_runs)
        {
            self.error(
                method_pos,
                format!(
                    "{method} search needs max_runs (it would never end); add e.g. max_runs: 20"
                ),
            );
        }

        let bayes = match field(entries, "bayes") {
            Some(node) if !node.is_null() => self.bayes(node, method),
            _ => Some(BayesOptions::default()),
        };
        let warm_start = match field(entries, "warm_start") {
            Some(node) if !node.is_null() => {
                let has_metric = matches!(metric, Some(Some(_)));
                self.warm_start(node, method, has_metric).map(Some)
            }
            _ => Some(None),
        };

        let artifacts = match field(entries, "artifacts") {
            Some(node) if !node.is_null() => self.artifacts(node),
            _ => Some(Vec::new()),
        };

        let train = train_node.map(yaml_to_json);
        let spec = SweepSpec {
            name: name?,
            project: project?,
            method: method?.0,
            metric: metric?,
            parameters: parameters?,
            max_runs: max_runs?,
            parallel: u32::try_from(parallel?).ok()?,
            seed: seed?,
            command: command?,
            max_restarts: u32::try_from(max_restarts?).ok()?,
            resources: resources?,
            description: description?,
            early_terminate: early_terminate?,
            bayes: bayes?,
            warm_start: warm_start?,
            summaries: summaries?,
            train,
            artifacts: artifacts?,
        };
        if let Some(train) = train_node {
            self.check_train(&spec, train);
        }
        Some(spec)
    }

    /// Every `{{name}}` in the `train:` block must name a parameter (or be a `ladder.*`
    /// value the agent fills in).
    pub(crate) fn train_placeholders(&mut self, node: &Node, parameter_names: &[String]) {
        match &node.kind {
            NodeKind::Scalar { text, .. } => {
                let block = serde_json::Value::String(text.clone());
                for name in crate::train_config::placeholders(&block) {
                    let known = parameter_names.contains(&name)
                        || crate::space::AGENT_PLACEHOLDERS.contains(&name.as_str());
                    if !known {
                        let names: Vec<&str> = parameter_names.iter().map(String::as_str).collect();
                        let help = match suggestion(&name, &names) {
                            Some(close) => format!("; did you mean \"{close}\"?"),
                            None => String::new(),
                        };
                        self.error(
                            node.pos,
                            format!(
                                "train uses {{{{{name}}}}} but no parameter is named \"{name}\"{help}"
                            ),
                        );
                    }
                }
            }
            NodeKind::Seq(items) => {
                for item in items {
                    self.train_placeholders(item, parameter_names);
                }
            }
            NodeKind::Map(entries) => {
                for entry in entries {
                    self.train_placeholders(&entry.value, parameter_names);
                }
            }
        }
    }

    /// Checks the `train:` block as the trainer will read it, with the first trial's
    /// parameters substituted, and reports the first problem at its position.
    pub(crate) fn check_train(&mut self, spec: &SweepSpec, node: &Node) {
        let Some(block) = &spec.train else { return };
        let params = crate::space::trial(spec, 0).unwrap_or_default();
        let rendered = crate::train_config::render(block, &params);
        let config = match crate::train_config::TrainConfig::from_json(&rendered) {
            Ok(config) => config,
            Err(error) => {
                let pos = position_of_path(node, &error.path);
                let field = if error.path.is_empty() {
                    "train".to_string()
                } else {
                    format!("train.{}", error.path)
                };
                self.error(pos, format!("{field}: {}", error.message));
                return;
            }
        };
        let gpus = spec.resources.gpus as usize;
        if gpus > 1 && spec.resources.launch == Launch::PerGpu {
            if config.data_parallel > 1 {
                self.error(
                    position_of_path(node, "data_parallel"),
                    format!(
                        "train.data_parallel: {} ranks in one process cannot be combined with resources.gpus: {gpus} (one rank per GPU); leave data_parallel at 1",
                        config.data_parallel
                    ),
                );
            } else if !config.batch_size.is_multiple_of(gpus) {
                self.error(
                    position_of_path(node, "batch_size"),
                    format!(
                        "train.batch_size: {} does not split evenly over resources.gpus: {gpus} ranks",
                        config.batch_size
                    ),
                );
            }
        }
    }

    /// Reports keys of `entries` not in `known`, suggesting the closest known key.
    pub(crate) fn check_keys(&mut self, entries: &[Entry], what: &str, known: &[&str]) {
        for entry in entries {
            if known.contains(&entry.key.as_str()) {
                continue;
            }
            let message = unknown("key", &entry.key, &format!(" in {what}"), known);
            self.error(entry.key_pos, message);
        }
    }

    /// The value of a required key, or an error at the enclosing mapping's position.
    pub(crate) fn required<'n>(
        &mut self,
        map: &Node,
        entries: &'n [Entry],
        key: &str,
        what: &str,
        hint: &str,
    ) -> Option<&'n Node> {
        let node = field(entries, key);
        if node.is_none() {
            self.error(
                map.pos,
                format!("missing required key \"{key}\" in {what} ({hint})"),
            );
        }
        node
    }

    /// Any non-null scalar, as written.
    pub(crate) fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            NodeKind::Scalar { value, text } if *value != Scalar::Null => Some(text.clone()),
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be a string, not {}", node.type_name()),
                );
                None
            }
        }
    }

    pub(crate) fn non_empty_text(&mut self, node: &Node, what: &str) -> Option<String> {
        let text = self.text(node, what)?;
        if text.trim().is_empty() {
            self.error(node.pos, format!("{what} must not be empty"));
            return None;
        }
        Some(text)
    }

    /// An integer in `min..=max`; `expected` describes the type for messages.
    pub(crate) fn integer(
        &mut self,
        node: &Node,
        what: &str,
        min: u64,
        max: u64,
        expected: &str,
    ) -> Option<u64> {
        let NodeKind::Scalar { value, text } = &node.kind else {
            self.error(
                node.pos,
                format!("{what} must be {expected}, not {}", node.type_name()),
            );
            return None;
        };
        let Scalar::Int(int) = value else {
            self.error(
                node.pos,
                format!(
                    "{what} must be {expected} (got {} \"{text}\")",
                    value.type_name()
                ),
            );
            return None;
        };
        if *int < 0 {
            self.error(node.pos, format!("{what} must be {expected} (got {int})"));
            return None;
        }
        if *int < i128::from(min) {
            self.error(
                node.pos,
                format!("{what} must be at least {min} (got {int})"),
            );
            return None;
        }
        if *int > i128::from(max) {
            self.error(
                node.pos,
                format!("{what} must be at most {max} (got {int})"),
            );
            return None;
        }
        u64::try_from(*int).ok()
    }

    pub(crate) fn optional_integer(
        &mut self,
        entries: &[Entry],
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let expected = if min == 0 {
            "a non-negative integer"
        } else {
            "a positive integer"
        };
        match field(entries, key) {
            Some(node) if !node.is_null() => self.integer(node, key, min, max, expected),
            _ => Some(default),
        }
    }

    /// A name from a fixed list, with "expected one of" and "did you mean" on error.
    pub(crate) fn keyword(&mut self, node: &Node, what: &str, names: &[&str]) -> Option<String> {
        let name = self.text(node, what)?;
        if names.contains(&name.as_str()) {
            return Some(name);
        }
        self.error(node.pos, unknown(what, &name, "", names));
        None
    }

    pub(crate) fn method(&mut self, node: &Node) -> Option<(Method, Pos)> {
        let name = self.keyword(node, "method", METHOD_NAMES)?;
        Method::from_name(&name).map(|method| (method, node.pos))
    }

    /// `bayes: {multivariate: BOOL}`, only with `method: bayes`.
    pub(crate) fn bayes(
        &mut self,
        node: &Node,
        method: Option<(Method, Pos)>,
    ) -> Option<BayesOptions> {
        let entries = self.mapping(node, "bayes", "e.g. bayes: {multivariate: false}")?;
        if let Some((other @ (Method::Grid | Method::Random | Method::Gp), _)) = method {
            self.error(
                node.pos,
                format!("bayes: options apply to method: bayes, not {other}; remove bayes: or use method: bayes"),
            );
            return None;
        }
        self.check_keys(entries, "bayes", BAYES_KEYS);
        let mut options = BayesOptions::default();
        if let Some(value) = field(entries, "multivariate").filter(|n| !n.is_null()) {
            options.multivariate = self.boolean(value, "bayes.multivariate")?;
        }
        Some(options)
    }

    /// `warm_start: {sweep: ID}`, only with `method: bayes` and a `metric:` (the earlier
    /// sweep's objective must be the same; the coordinator checks that at submit).
    pub(crate) fn warm_start(
        &mut self,
        node: &Node,
        method: Option<(Method, Pos)>,
        has_metric: bool,
    ) -> Option<WarmStart> {
        let entries = self.mapping(node, "warm_start", "e.g. warm_start: {sweep: k3x9abcd}")?;
        self.check_keys(entries, "warm_start", WARM_START_KEYS);
        let sweep = self
            .required(
                node,
                entries,
                "sweep",
                "warm_start",
                "the ID of an earlier sweep, e.g. sweep: k3x9abcd",
            )
            .and_then(|value| self.non_empty_text(value, "warm_start.sweep"));
        if let Some(id) = &sweep {
            let valid = id.len() <= WARM_START_ID_MAX
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                let at = field(entries, "sweep").map_or(node.pos, |value| value.pos);
                self.error(
                    at,
                    format!(
                        "warm_start.sweep must be a sweep ID (letters, digits, - and _, at most {WARM_START_ID_MAX} characters) as `ladder sweep ls` shows it"
                    ),
                );
                return None;
            }
        }
        if let Some((other @ (Method::Grid | Method::Random), _)) = method {
            self.error(
                node.pos,
                format!("warm_start applies to method: bayes, not {other} (only bayes and gp learn from earlier trials); remove warm_start: or use method: bayes"),
            );
            return None;
        }
        if !has_metric {
            self.error(
                node.pos,
                "warm_start needs a metric: the earlier sweep's results are read as values of it; add e.g. metric: {name: loss, goal: minimize}",
            );
            return None;
        }
        Some(WarmStart { sweep: sweep? })
    }

    /// `true` or `false`.
    pub(crate) fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.kind {
            NodeKind::Scalar {
                value: Scalar::Bool(value),
                ..
            } => Some(*value),
            NodeKind::Scalar { value, text } => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be true or false (got {} \"{text}\")",
                        value.type_name()
                    ),
                );
                None
            }
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be true or false, not {}", node.type_name()),
                );
                None
            }
        }
    }

    pub(crate) fn metric(&mut self, node: &Node) -> Option<MetricSpec> {
        let entries = self.mapping(
            node,
            "metric",
            "e.g. metric: {name: val_loss, goal: minimize}",
        )?;
        self.check_keys(entries, "metric", METRIC_KEYS);
        let name = self
            .required(
                node,
                entries,
                "name",
                "metric",
                "the metric to optimise, e.g. name: val_loss",
            )
            .and_then(|name| self.non_empty_text(name, "metric name"));
        let goal = match field(entries, "goal") {
            Some(goal) if !goal.is_null() => {
                let goal = self.keyword(goal, "goal", GOAL_NAMES)?;
                Goal::ALL
                    .into_iter()
                    .find(|candidate| candidate.as_str() == goal)
            }
            _ => Some(Goal::default()),
        };
        let summary = match field(entries, "summary") {
            Some(summary) if !summary.is_null() => self.summary(summary).map(Some),
            _ => Some(None),
        };
        Some(MetricSpec {
            name: name?,
            goal: goal?,
            summary: summary?,
        })
    }

    pub(crate) fn mapping<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        example: &str,
    ) -> Option<&'n [Entry]> {
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                format!(
                    "{what} must be a mapping ({example}), not {}",
                    node.type_name()
                ),
            );
            return None;
        };
        Some(entries)
    }

    pub(crate) fn command(
        &mut self,
        node: &Node,
        parameter_names: &[String],
    ) -> Option<Vec<String>> {
        let NodeKind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                format!(
                    "command is argv, a list like {COMMAND_EXAMPLE}, not {} (no shell is used)",
                    node.type_name()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                node.pos,
                format!("command must not be empty (a list like {COMMAND_EXAMPLE})"),
            );
            return None;
        }
        let names: Vec<&str> = parameter_names.iter().map(String::as_str).collect();
        let mut command = Some(Vec::with_capacity(items.len()));
        for item in items {
            let element = self.command_element(item, &names);
            match (element, command.as_mut()) {
                (Some(element), Some(list)) => list.push(element),
                _ => command = None,
            }
        }
        command
    }

    /// `artifacts:`: a list of paths in the run directory (strings; a trailing `/` for a
    /// directory), each inside it, at most [`ladder_limits::MAX_DECLARED_ARTIFACTS`].
    pub(crate) fn artifacts(&mut self, node: &Node) -> Option<Vec<String>> {
        const EXAMPLE: &str = "[model/, results.json]";
        let NodeKind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                format!(
                    "artifacts is a list of paths in the run directory like {EXAMPLE}, not {}",
                    node.type_name()
                ),
            );
            return None;
        };
        if items.len() > ladder_limits::MAX_DECLARED_ARTIFACTS {
            self.error(
                node.pos,
                format!(
                    "artifacts lists {} paths; the limit is {} (name a directory to upload every file in it)",
                    items.len(),
                    ladder_limits::MAX_DECLARED_ARTIFACTS
                ),
            );
            return None;
        }
        let mut paths = Some(Vec::with_capacity(items.len()));
        for item in items {
            let path = match &item.kind {
                // A file may be named like a number (`2024`); text is what was written.
                NodeKind::Scalar { value, text }
                    if !matches!(value, Scalar::Null | Scalar::Bool(_)) =>
                {
                    match ladder_metrics::line::check_artifact_path(text) {
                        Ok(()) => Some(text.clone()),
                        Err(problem) => {
                            self.error(item.pos, format!("artifacts: {problem}"));
                            None
                        }
                    }
                }
                _ => {
                    self.error(
                        item.pos,
                        format!(
                            "artifacts entries are paths (strings), not {} (a list like {EXAMPLE})",
                            item.type_name()
                        ),
                    );
                    None
                }
            };
            match (path, paths.as_mut()) {
                (Some(path), Some(list)) => list.push(path),
                _ => paths = None,
            }
        }
        paths
    }

    pub(crate) fn command_element(
        &mut self,
        item: &Node,
        parameter_names: &[&str],
    ) -> Option<String> {
        let NodeKind::Scalar { value, text } = &item.kind else {
            self.error(
                item.pos,
                format!(
                    "command elements must be strings, not {} (command is argv, a list like {COMMAND_EXAMPLE})",
                    item.type_name()
                ),
            );
            return None;
        };
        if *value == Scalar::Null {
            self.error(
                item.pos,
                "command elements must be strings, not null (quote \"\" for an empty argument)",
            );
            return None;
        }
        let segments = match parse_template(text) {
            Ok(segments) => segments,
            Err(error) => {
                self.error(item.pos, format!("command element: {error}"));
                return None;
            }
        };
        let mut ok = true;
        for segment in segments {
            let Segment::Placeholder(name) = segment else {
                continue;
            };
            if parameter_names.contains(&name) || crate::space::AGENT_PLACEHOLDERS.contains(&name) {
                continue;
            }
            ok = false;
            let help = match suggestion(name, parameter_names) {
                Some(close) => format!("; did you mean \"{close}\"?"),
                None if parameter_names.is_empty() => "; the sweep has no parameters".to_string(),
                None => format!(" (parameters: {})", parameter_names.join(", ")),
            };
            self.error(
                item.pos,
                format!("command uses {{{{{name}}}}} but no parameter is named \"{name}\"{help}"),
            );
        }
        ok.then(|| text.clone())
    }

    pub(crate) fn resources(&mut self, node: &Node) -> Option<Resources> {
        let entries = self.mapping(
            node,
            "resources",
            "e.g. resources: {gpus: 1, labels: {zone: a}}",
        )?;
        self.check_keys(entries, "resources", RESOURCE_KEYS);
        let gpus = self.optional_integer(entries, "gpus", 0, 0, u32::MAX.into());
        let labels = match field(entries, "labels") {
            Some(labels) if !labels.is_null() => self.labels(labels),
            _ => Some(BTreeMap::new()),
        };
        let launch = match field(entries, "launch") {
            Some(node) if !node.is_null() => {
                let launch = self
                    .keyword(node, "resources.launch", Launch::NAMES)
                    .and_then(|name| Launch::from_name(&name));
                if launch == Some(Launch::PerGpu) && gpus == Some(0) {
                    self.error(
                        node.pos,
                        "resources.launch: per_gpu starts one process per GPU, so it needs resources.gpus of at least 1",
                    );
                    return None;
                }
                launch
            }
            _ => Some(Launch::default()),
        };
        Some(Resources {
            gpus: u32::try_from(gpus?).ok()?,
            labels: labels?,
            launch: launch?,
        })
    }

    pub(crate) fn labels(&mut self, node: &Node) -> Option<BTreeMap<String, String>> {
        let entries = self.mapping(
            node,
            "resources.labels",
            "e.g. labels: {zone: a, gpu: a100}",
        )?;
        let mut labels = Some(BTreeMap::new());
        for entry in entries {
            let value = self.text(&entry.value, &format!("label \"{}\"", entry.key));
            let key_ok = !entry.key.is_empty();
            if !key_ok {
                self.error(entry.key_pos, "label names must not be empty");
            }
            match (key_ok, value, labels.as_mut()) {
                (true, Some(value), Some(map)) => {
                    map.insert(entry.key.clone(), value);
                }
                _ => labels = None,
            }
        }
        labels
    }
}

pub(crate) fn entry_of<'e>(entries: &'e [Entry], key: &str) -> Option<&'e Entry> {
    entries.iter().find(|entry| entry.key == key)
}

/// Parses a `ladder train CONFIG.yaml` file: the same keys as a sweep's `train:` block,
/// without placeholders. Errors carry file, line and column.
pub fn parse_train_file(
    file_name: &str,
    text: &str,
) -> Result<crate::train_config::TrainConfig, SpecErrors> {
    let mut checker = Checker {
        file: file_name,
        errors: Vec::new(),
    };
    let Some(root) = checker.document_root(
        text,
        "train config is empty: expected a mapping with at least model and data",
    ) else {
        return Err(checker.finish());
    };
    let block = yaml_to_json(&root);
    if let Some(name) = crate::train_config::placeholders(&block).first() {
        checker.error(
            root.pos,
            format!("{{{{{name}}}}}: placeholders are filled in only for runs of a sweep"),
        );
    }
    match crate::train_config::TrainConfig::from_json(&block) {
        Ok(config) if checker.errors.is_empty() => Ok(config),
        Ok(_) => Err(checker.finish()),
        Err(error) => {
            let pos = position_of_path(&root, &error.path);
            checker.error(pos, error.to_string().trim_start_matches(": ").to_string());
            Err(checker.finish())
        }
    }
}

/// argv of a run of the built-in trainer; the scheduler appends the rendered `train:`
/// block as `--config-json JSON`.
pub const TRAIN_COMMAND: &[&str] = &["{{ladder.exe}}", "train", "--sweep-run"];

/// The spanned YAML node as JSON (positions dropped).
pub(crate) fn yaml_to_json(node: &Node) -> serde_json::Value {
    match &node.kind {
        NodeKind::Scalar { value, .. } => match value {
            Scalar::Null => serde_json::Value::Null,
            Scalar::Bool(b) => serde_json::Value::Bool(*b),
            Scalar::Int(i) => i64::try_from(*i)
                .map(serde_json::Value::from)
                .or_else(|_| u64::try_from(*i).map(serde_json::Value::from))
                .unwrap_or_else(|_| serde_json::Value::from(*i as f64)),
            Scalar::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Scalar::Str(text) => serde_json::Value::String(text.clone()),
        },
        NodeKind::Seq(items) => serde_json::Value::Array(items.iter().map(yaml_to_json).collect()),
        NodeKind::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|entry| (entry.key.clone(), yaml_to_json(&entry.value)))
                .collect(),
        ),
    }
}

/// The position of the node at a dotted path (`optim.lr`, `eval.0.task`); the deepest
/// node that exists when the path goes further than the file does.
pub(crate) fn position_of_path(root: &Node, path: &str) -> Pos {
    let mut node = root;
    let mut pos = root.pos;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let next = match &node.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|entry| entry.key == segment)
                .map(|entry| (entry.key_pos, &entry.value)),
            NodeKind::Seq(items) => segment
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get(index))
                .map(|item| (item.pos, item)),
            NodeKind::Scalar { .. } => None,
        };
        let Some((key_pos, child)) = next else { break };
        pos = if matches!(child.kind, NodeKind::Scalar { .. }) {
            child.pos
        } else {
            key_pos
        };
        node = child;
    }
    pos
}

pub(crate) fn field<'e>(entries: &'e [Entry], key: &str) -> Option<&'e Node> {
    entry_of(entries, key).map(|entry| &entry.value)
}

/// `unknown {kind} "{got}"{context} (expected one of: ...)` plus a suggestion if close.
pub(crate) fn unknown(kind: &str, got: &str, context: &str, expected: &[&str]) -> String {
    let mut message = format!(
        "unknown {kind} \"{got}\"{context} (expected one of: {})",
        expected.join(", ")
    );
    if let Some(close) = suggestion(got, expected) {
        message.push_str(&format!("; did you mean \"{close}\"?"));
    }
    message
}

/// The candidate closest to `got` (case-insensitive edit distance), if close enough to be a
/// likely typo: at most a third of the candidate's length.
pub(crate) fn suggestion<'a>(got: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let got = got.to_lowercase();
    let got_len = got.chars().count();
    candidates
        .iter()
        // The distance is at least the difference in length: skip candidates that cannot
        // pass the filter below (cheap, so a 1 MiB key costs nothing).
        .filter(|candidate| {
            let len = candidate.chars().count();
            got_len.abs_diff(len) * 3 <= len.max(3)
        })
        .map(|candidate| (edit_distance(&got, &candidate.to_lowercase()), *candidate))
        .filter(|(distance, candidate)| distance * 3 <= candidate.chars().count().max(3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance in characters where insertions, deletions, substitutions and swaps of
/// adjacent characters (`gaol` → `goal`) each cost 1 (optimal string alignment).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
