//! Tests of `shared/spec/src/lib.rs`.

use super::*;

pub(super) fn errors(text: &str) -> Vec<SpecError> {
    match parse_sweep("sweep.yaml", text) {
        Ok(spec) => panic!("expected errors, got {spec:?}"),
        Err(SpecErrors(errors)) => errors,
    }
}

/// Asserts that some error is at `line:column` and contains every fragment.
#[track_caller]
pub(super) fn assert_error(text: &str, line: usize, column: usize, fragments: &[&str]) {
    let errors = errors(text);
    let found = errors.iter().any(|error| {
        error.line == line
            && error.column == column
            && fragments
                .iter()
                .all(|fragment| error.message.contains(fragment))
    });
    assert!(
        found,
        "no error at {line}:{column} containing {fragments:?}; got:\n{}",
        SpecErrors(errors)
    );
}

/// 1-based line and column (in characters) of the first occurrence of `needle`.
pub(super) fn locate(text: &str, needle: &str) -> (usize, usize) {
    let offset = text.find(needle).expect("needle occurs in text");
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Asserts an error at the first occurrence of `needle`.
#[track_caller]
pub(super) fn assert_error_at(text: &str, needle: &str, fragments: &[&str]) {
    let (line, column) = locate(text, needle);
    assert_error(text, line, column, fragments);
}

/// An unconditional leaf parameter.
pub(super) fn leaf(name: &str, spec: ParamSpec) -> Parameter {
    Parameter {
        name: name.into(),
        spec,
        when: Vec::new(),
    }
}

const BASE: &str = "name: s\nmethod: grid\ncommand: [python, train.py]\n";

fn with_base(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn full_example_parses() {
    let text = r#"
name: lr-sweep
project: vision
description: learning rate and width
method: random
metric:
  name: val_loss
  goal: minimize
parameters:
  lr:
    distribution: log_uniform_values
    min: 1e-5
    max: 1.0e-1
  dropout:
    distribution: uniform
    min: 0
    max: 0.5
  layers:
    distribution: int_uniform
    min: 2
    max: 8
  optimizer:
    values: [adam, sgd, "1", 2, 2.5, 3.0, true]
  lora.rank:
    value: 8
max_runs: 50
parallel: 4
seed: 42
command: [python, train.py, --lr, "{{lr}}", "--layers={{ layers }}", 3, 1e-4]
max_restarts: 1
resources:
  gpus: 2
  labels: {zone: eu, tier: 1}
"#;
    let spec = parse_sweep("sweep.yaml", text).unwrap();
    let expected = SweepSpec {
        name: "lr-sweep".into(),
        project: "vision".into(),
        method: Method::Random,
        metric: Some(MetricSpec {
            name: "val_loss".into(),
            goal: Goal::Minimize,
            summary: None,
        }),
        parameters: vec![
            leaf(
                "lr",
                ParamSpec::LogUniform {
                    min: 1e-5,
                    max: 0.1,
                },
            ),
            leaf("dropout", ParamSpec::Uniform { min: 0.0, max: 0.5 }),
            leaf("layers", ParamSpec::IntUniform { min: 2, max: 8 }),
            leaf(
                "optimizer",
                ParamSpec::Values {
                    values: vec![
                        ParamValue::Str("adam".into()),
                        ParamValue::Str("sgd".into()),
                        ParamValue::Str("1".into()),
                        ParamValue::Int(2),
                        ParamValue::Float(2.5),
                        ParamValue::Float(3.0),
                        ParamValue::Bool(true),
                    ],
                    probabilities: None,
                },
            ),
            leaf("lora.rank", ParamSpec::Value(ParamValue::Int(8))),
        ],
        max_runs: Some(50),
        parallel: 4,
        seed: 42,
        command: [
            "python",
            "train.py",
            "--lr",
            "{{lr}}",
            "--layers={{ layers }}",
            "3",
            "1e-4",
        ]
        .map(String::from)
        .to_vec(),
        max_restarts: 1,
        resources: Resources {
            gpus: 2,
            labels: BTreeMap::from([
                ("tier".to_string(), "1".to_string()),
                ("zone".to_string(), "eu".to_string()),
            ]),
            launch: Launch::Single,
        },
        description: Some("learning rate and width".into()),
        early_terminate: None,
        bayes: BayesOptions::default(),
        warm_start: None,
        train: None,
        summaries: BTreeMap::new(),
        artifacts: Vec::new(),
    };
    assert_eq!(spec, expected);
    let json = serde_json::to_string(&spec).unwrap();
    let back: SweepSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn defaults_apply() {
    let spec = parse_sweep("s.yaml", BASE).unwrap();
    assert_eq!(spec.project, "default");
    assert_eq!(spec.metric, None);
    assert!(spec.parameters.is_empty());
    assert_eq!(spec.max_runs, None);
    assert_eq!(spec.parallel, 1);
    assert_eq!(spec.seed, 0);
    assert_eq!(spec.max_restarts, 3);
    assert_eq!(spec.resources, Resources::default());
    assert_eq!(spec.description, None);
    let spec = parse_sweep("s.yaml", &with_base("metric: {name: acc}\n")).unwrap();
    assert_eq!(spec.metric.unwrap().goal, Goal::Maximize);
}

#[test]
fn anchors_aliases_and_merges_work() {
    let text = "name: s\nmethod: grid\ncommand: [run, \"{{a}}\", \"{{b}}\"]\nparameters:\n  a: &small {values: [1, 2]}\n  b: *small\n";
    let spec = parse_sweep("s.yaml", text).unwrap();
    assert_eq!(spec.parameters[0].spec, spec.parameters[1].spec);
    let text = "name: s\nmethod: grid\ncommand: [run]\nbase: &b {gpus: 1}\n";
    assert_error(text, 4, 1, &["unknown key \"base\""]);
    let text =
        "name: s\nmethod: grid\ncommand: [run]\nresources:\n  <<: {gpus: 1}\n  labels: {a: b}\n";
    assert_eq!(parse_sweep("s.yaml", text).unwrap().resources.gpus, 1);
}

#[test]
fn errors_display_with_file_line_column() {
    let error = parse_sweep("conf/sweep.yaml", "name: s\nmethod: grd\ncommand: [a]\n").unwrap_err();
    assert_eq!(error.0.len(), 1);
    assert_eq!(
            error.to_string(),
            "conf/sweep.yaml:2:9: unknown method \"grd\" (expected one of: grid, random, bayes, gp); did you mean \"grid\"?"
        );
    let boxed: Box<dyn std::error::Error> = Box::new(error);
    assert!(boxed.to_string().starts_with("conf/sweep.yaml:2:9:"));
}

#[test]
fn artifacts_are_paths_inside_the_run_directory() {
    let base = "name: s\nmethod: grid\ncommand: [a]\n";
    let spec = parse_sweep(
        "s.yaml",
        &format!("{base}artifacts: [model/, results.json, 2024, out/a.bin]\n"),
    )
    .unwrap();
    assert_eq!(
        spec.artifacts,
        ["model/", "results.json", "2024", "out/a.bin"]
    );
    assert!(parse_sweep("s.yaml", base).unwrap().artifacts.is_empty());
    assert_error(
        &format!("{base}artifacts: model/\n"),
        4,
        12,
        &["a list of paths", "not a string"],
    );
    let text =
        format!("{base}artifacts:\n  - ok.json\n  - ../up.txt\n  - /etc/passwd\n  - {{a: 1}}\n");
    assert_error_at(&text, "../up.txt", &["artifacts:", "\"..\""]);
    assert_error_at(
        &text,
        "/etc/passwd",
        &["absolute", "relative to the run directory"],
    );
    assert_error_at(&text, "{a: 1}", &["paths (strings)", "not a mapping"]);
    let many: Vec<String> = (0..=ladder_limits::MAX_DECLARED_ARTIFACTS)
        .map(|i| format!("f{i}"))
        .collect();
    assert_error(
        &format!("{base}artifacts: [{}]\n", many.join(", ")),
        4,
        12,
        &["the limit is 64"],
    );
}

#[test]
fn all_errors_are_collected_in_position_order() {
    let text = "name: \"\"\nmethod: grid\nparalel: 2\nseed: -1\ncommand: [a, \"{{nope}}\"]\n";
    let errors = errors(text);
    let positions: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(
        positions,
        [(1, 7), (3, 1), (4, 7), (5, 14)],
        "{}",
        SpecErrors(errors.clone())
    );
    assert_eq!(SpecErrors(errors).to_string().lines().count(), 4);
}

#[test]
fn empty_and_non_mapping_files() {
    assert_error("", 1, 1, &["sweep file is empty"]);
    assert_error("# nothing\n", 1, 1, &["sweep file is empty"]);
    assert_error("~\n", 1, 1, &["sweep file is empty"]);
    assert_error("- a\n- b\n", 1, 1, &["must be a mapping", "not a list"]);
    assert_error("name: s\n---\nname: t\n", 3, 1, &["single YAML document"]);
}

#[test]
fn yaml_syntax_errors_are_positioned() {
    let errors = errors("name: s\nmethod: grid\n  command: [a]\n");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 3);
    assert!(errors[0].message.starts_with("YAML syntax error"));
    let unclosed = super::tests::errors("name: s\ncommand: [a, b\n");
    assert_eq!(unclosed.len(), 1);
    assert!(
        unclosed[0]
            .message
            .contains("\"[\" opened here is never closed: add \"]\""),
        "{}",
        unclosed[0].message
    );
    assert_eq!((unclosed[0].line, unclosed[0].column), (2, 10));
}

#[test]
fn a_misspelled_required_key_is_reported_with_its_suggestion_first() {
    let errors =
        errors("name: t\nmethod: grid\nparameters:\n  x: {values: [1, 2]}\ncomand: [\"true\"]\n");
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        messages[0].starts_with("unknown key \"comand\""),
        "{messages:#?}"
    );
    assert!(
        messages[0].ends_with("did you mean \"command\"?"),
        "{messages:#?}"
    );
    assert!(
        messages[1].starts_with("missing required key \"command\""),
        "{messages:#?}"
    );
}

#[test]
fn duplicate_keys_are_errors() {
    assert_error(
        &with_base("parallel: 2\nparallel: 3\n"),
        5,
        1,
        &["duplicate key \"parallel\"", "line 4, column 1"],
    );
    assert_error(
        &with_base("parameters:\n  a: {value: 1, value: 2}\n"),
        5,
        17,
        &["duplicate key \"value\""],
    );
}

#[test]
fn unknown_keys_everywhere() {
    assert_error(
        &with_base("paralel: 4\n"),
        4,
        1,
        &[
            "unknown key \"paralel\" in sweep",
            "expected one of: name, project",
            "did you mean \"parallel\"?",
        ],
    );
    let far = errors(&with_base("zzzzzzzz: 4\n"));
    assert!(!far[0].message.contains("did you mean"), "{}", far[0]);
    assert_error(
        &with_base("metric:\n  name: loss\n  gaol: minimize\n"),
        6,
        3,
        &["unknown key \"gaol\" in metric", "did you mean \"goal\"?"],
    );
    assert_error(
        &with_base("parameters:\n  lr:\n    valeus: [1, 2]\n"),
        6,
        5,
        &[
            "unknown key \"valeus\" in parameter \"lr\"",
            "did you mean \"values\"?",
        ],
    );
    assert_error(
        &with_base("resources:\n  gpu: 1\n"),
        5,
        3,
        &["unknown key \"gpu\" in resources", "did you mean \"gpus\"?"],
    );
}

#[test]
fn launch_defaults_to_single_and_parses_per_gpu() {
    let spec = parse_sweep("s.yaml", &with_base("resources: {gpus: 2}\n")).unwrap();
    assert_eq!(spec.resources.launch, Launch::Single);
    let spec = parse_sweep(
        "s.yaml",
        &with_base("resources: {gpus: 2, launch: per_gpu}\n"),
    )
    .unwrap();
    assert_eq!(spec.resources.launch, Launch::PerGpu);
    // Specs stored before `launch` existed still load.
    let old: Resources = serde_json::from_str(r#"{"gpus": 1, "labels": {}}"#).unwrap();
    assert_eq!(old.launch, Launch::Single);
}

#[test]
fn missing_required_keys_point_at_the_mapping() {
    assert_error(
        "method: grid\ncommand: [a]\n",
        1,
        1,
        &["missing required key \"name\""],
    );
    assert_error(
        "name: s\ncommand: [a]\n",
        1,
        1,
        &["missing required key \"method\"", "grid, random or bayes"],
    );
    assert_error(
        "name: s\nmethod: grid\n",
        1,
        1,
        &["missing required key \"command\""],
    );
    assert_error(
        &with_base("metric:\n  goal: minimize\n"),
        5,
        3,
        &["missing required key \"name\" in metric"],
    );
    assert_error(
        &with_base("metric: {goal: minimize}\n"),
        4,
        9,
        &["missing required key \"name\" in metric"],
    );
}

#[test]
fn counts_beyond_the_limits_are_refused_with_their_position() {
    assert_error(
        &with_base("parallel: 4000000000\n"),
        4,
        11,
        &["parallel must be at most 10000", "4000000000"],
    );
    assert_error(
        &with_base("max_runs: 4000000000000\n"),
        4,
        11,
        &["max_runs must be at most 1000000000"],
    );
}

#[test]
fn wrong_types() {
    assert_error(
        &with_base("parallel: \"four\"\n"),
        4,
        11,
        &["parallel must be a positive integer", "\"four\""],
    );
    assert_error(
        &with_base("parallel: 1.5\n"),
        4,
        11,
        &["parallel must be a positive integer", "a float"],
    );
    assert_error(
        &with_base("parallel: 0\n"),
        4,
        11,
        &["parallel must be at least 1"],
    );
    assert_error(
        &with_base("parallel: 5000000000\n"),
        4,
        11,
        &["parallel must be at most 10000"],
    );
    assert_error(
        &with_base("max_runs: 0\n"),
        4,
        11,
        &["max_runs must be at least 1"],
    );
    assert_error(
        &with_base("max_runs: [1]\n"),
        4,
        11,
        &["max_runs must be a positive integer", "not a list"],
    );
    assert_error(
        &with_base("seed: -3\n"),
        4,
        7,
        &["seed must be a non-negative integer"],
    );
    assert_error(
        &with_base("max_restarts: x\n"),
        4,
        15,
        &["max_restarts must be a non-negative integer"],
    );
    assert_error(
        &with_base("resources: {gpus: -1}\n"),
        4,
        19,
        &["gpus must be a non-negative integer"],
    );
    assert_error(
        &with_base("resources: {labels: [a]}\n"),
        4,
        21,
        &["resources.labels must be a mapping"],
    );
    assert_error(
        &with_base("resources: {gpus: 2, launch: per_rank}\n"),
        4,
        30,
        &["unknown resources.launch \"per_rank\"", "single, per_gpu"],
    );
    assert_error(
        &with_base("resources: {launch: per_gpu}\n"),
        4,
        21,
        &[
            "per_gpu starts one process per GPU",
            "resources.gpus of at least 1",
        ],
    );
    assert_error(
        &with_base("resources: 2\n"),
        4,
        12,
        &["resources must be a mapping"],
    );
    assert_error(
        &with_base("metric: loss\n"),
        4,
        9,
        &["metric must be a mapping"],
    );
    assert_error(
        &with_base("parameters: [lr]\n"),
        4,
        13,
        &["parameters must be a mapping"],
    );
    assert_error(
        "name: [a]\nmethod: grid\ncommand: [a]\n",
        1,
        7,
        &["name must be a string"],
    );
    assert_error(
        "name: ' '\nmethod: grid\ncommand: [a]\n",
        1,
        7,
        &["name must not be empty"],
    );
}

#[test]
fn unknown_method_goal_and_distribution() {
    assert_error(
        "name: s\nmethod: hyperopt\ncommand: [a]\n",
        2,
        9,
        &[
            "unknown method \"hyperopt\"",
            "expected one of: grid, random, bayes",
        ],
    );
    let text = with_base("metric: {name: loss, goal: minimise}\n");
    assert_error_at(
        &text,
        "minimise",
        &["unknown goal \"minimise\"", "did you mean \"minimize\"?"],
    );
    let text = with_base("parameters:\n  lr: {distribution: loguniform, min: 1, max: 2}\n");
    assert_error(
            &text,
            5,
            22,
            &[
                "unknown distribution \"loguniform\" for parameter \"lr\"",
                "expected one of: constant, categorical, uniform, log_uniform, log_uniform_values, int_uniform, q_uniform",
                "did you mean \"log_uniform\"?",
            ],
        );
}

#[test]
fn distribution_bounds() {
    let random = "name: s\nmethod: random\nmax_runs: 3\ncommand: [a]\nparameters:\n";
    let text = format!("{random}  x: {{distribution: uniform, min: 2, max: 1}}\n");
    assert_error(
        &text,
        6,
        35,
        &["parameter \"x\": min must be less than max"],
    );
    let text = format!("{random}  x: {{distribution: int_uniform, min: 2, max: 2}}\n");
    assert_error_at(&text, "2, max", &["min must be less than max"]);
    let text = format!("{random}  x: {{distribution: log_uniform, min: 0, max: 1}}\n");
    assert_error_at(&text, "0, max", &["needs min > 0"]);
    let text = format!("{random}  x: {{distribution: log_uniform_values, min: -1, max: 1}}\n");
    assert_error_at(&text, "-1, max", &["log_uniform_values needs min > 0"]);
    let text = format!("{random}  x: {{distribution: int_uniform, min: 0.5, max: 4}}\n");
    assert_error_at(&text, "0.5", &["int_uniform bounds must be integers"]);
    let text = format!("{random}  x: {{distribution: int_uniform, min: 1, max: 4.0}}\n");
    assert_error_at(&text, "4.0", &["int_uniform bounds must be integers"]);
    let text = format!("{random}  x: {{distribution: uniform, min: .nan, max: 1}}\n");
    assert_error_at(&text, ".nan", &["min must be a finite number"]);
    let text = format!("{random}  x: {{distribution: uniform, min: 0, max: .inf}}\n");
    assert_error_at(&text, ".inf", &["max must be a finite number"]);
    let text = format!("{random}  x: {{distribution: uniform, min: 0, max: high}}\n");
    assert_error_at(&text, "high", &["max must be a number", "a string"]);
    let text = format!("{random}  x: {{distribution: uniform, min: 0}}\n");
    assert_error_at(
        &text,
        "{distribution",
        &["missing required key \"max\" in parameter \"x\""],
    );
    let text = format!("{random}  x:\n    distribution: uniform\n    max: 1\n");
    assert_error(&text, 7, 5, &["missing required key \"min\""]);
}

#[test]
fn parameter_forms() {
    let params = with_base("parameters:\n");
    let cases: &[(&str, &str, &[&str])] = &[
        ("  x: {values: []}\n", "[]", &["values must not be empty"]),
        ("  x: {values: 3}\n", "3}", &["values must be a list"]),
        (
            "  x: {values: [1, 2, 1]}\n",
            "1]",
            &["lists the value 1 twice"],
        ),
        ("  x: {values: [1, ~]}\n", "~", &["not null"]),
        ("  x: {values: [1, [2]]}\n", "[2]", &["not a list"]),
        ("  x: {value: .inf}\n", ".inf", &["must be finite"]),
        (
            "  x: {value: 99999999999999999999}\n",
            "999",
            &["does not fit a 64-bit integer"],
        ),
        (
            "  x: {}\n",
            "{}",
            &["parameter \"x\" needs one of value, values or distribution"],
        ),
        (
            "  x:\n    min: 1\n",
            "min",
            &["needs one of value, values or distribution"],
        ),
        (
            "  x: {value: 1, values: [1, 2]}\n",
            "values",
            &["has both value and values", "exactly one of"],
        ),
        (
            "  x: {values: [1], distribution: int_uniform}\n",
            "distribution",
            &["has both values and distribution"],
        ),
        (
            "  x: {value: 1, min: 0}\n",
            "min",
            &["min only applies with a distribution"],
        ),
        (
            "  x: 0.1\n",
            "0.1",
            &["parameter \"x\" must be a mapping", "{value: 1}"],
        ),
    ];
    for (parameter, needle, fragments) in cases {
        let text = format!("{params}{parameter}");
        let (line, column) = locate(parameter, needle);
        assert_error(&text, line + 4, column, fragments);
    }
}

#[test]
fn parameter_names() {
    let params = with_base("parameters:\n");
    assert_error(
        &format!("{params}  learning rate: {{value: 1}}\n"),
        5,
        3,
        &["contains ' '", "letters, digits"],
    );
    assert_error(
        &format!("{params}  \"\": {{value: 1}}\n"),
        5,
        3,
        &["must not be empty"],
    );
    assert_error(
        &format!("{params}  a..b: {{value: 1}}\n"),
        5,
        3,
        &["empty part"],
    );
    assert_error(
        &format!("{params}  lora: {{value: 1}}\n  lora.rank: {{value: 2}}\n"),
        6,
        3,
        &["nests under parameter \"lora\""],
    );
    let ok = format!(
        "{params}  opt/lr-x_1.y: {{value: 1}}\n  lora_a.rank: {{value: 2}}\n  lora: {{value: 3}}\n"
    );
    assert_eq!(parse_sweep("s.yaml", &ok).unwrap().parameters.len(), 3);
}

#[test]
fn method_constraints() {
    let grid = "name: s\nmethod: grid\ncommand: [a]\nparameters:\n";
    assert_error(
        &format!("{grid}  lr: {{distribution: uniform, min: 0, max: 1}}\n"),
        5,
        22,
        &[
            "grid search needs discrete parameters",
            "parameter \"lr\"",
            "use values: [...] or method: random",
        ],
    );
    let text = format!("{grid}  lr: {{distribution: log_uniform, min: 0.1, max: 1}}\n");
    assert_error_at(
        &text,
        "log_uniform",
        &["grid search needs discrete parameters"],
    );
    let int_grid = format!("{grid}  n: {{distribution: int_uniform, min: 1, max: 3}}\n");
    assert_eq!(
        parse_sweep("s.yaml", &int_grid).unwrap().parameters[0].spec,
        ParamSpec::IntUniform { min: 1, max: 3 }
    );
    assert_error(
        "name: s\nmethod: random\ncommand: [a]\n",
        2,
        9,
        &["random search needs max_runs (it would never end)"],
    );
}

#[test]
fn command_checks() {
    let head = "name: s\nmethod: grid\nparameters:\n  lr: {values: [0.1]}\n";
    assert_error(
        &format!("{head}command: python train.py --lr {{{{lr}}}}\n"),
        5,
        10,
        &["command is argv, a list like [python, train.py, --lr, \"{{lr}}\"]"],
    );
    assert_error(
        &format!("{head}command: []\n"),
        5,
        10,
        &["command must not be empty"],
    );
    assert_error(
        &format!("{head}command:\n  - python\n  - [x]\n"),
        7,
        5,
        &["command elements must be strings"],
    );
    assert_error(
        &format!("{head}command: [python, ~]\n"),
        5,
        19,
        &["not null"],
    );
    assert_error(
        &format!("{head}command: [python, \"--lr={{{{lrr}}}}\"]\n"),
        5,
        19,
        &["no parameter is named \"lrr\"", "did you mean \"lr\"?"],
    );
    assert_error(
        &format!("{head}command: [python, \"--lr={{{{lr}}\"]\n"),
        5,
        19,
        &["unclosed placeholder"],
    );
    assert_error(
        &format!("{head}command: [python, \"{{{{}}}}\"]\n"),
        5,
        19,
        &["invalid placeholder"],
    );
    assert_error(
        "name: s\nmethod: grid\ncommand: [\"{{x}}\"]\n",
        3,
        11,
        &["the sweep has no parameters"],
    );
    let spec = parse_sweep(
        "s.yaml",
        &format!("{head}command: [python, 1, 2.50, true, 1e-4]\n"),
    )
    .unwrap();
    assert_eq!(spec.command, ["python", "1", "2.50", "true", "1e-4"]);
}

#[test]
fn placeholders_to_parameters_with_errors_do_not_cascade() {
    let text = "name: s\nmethod: grid\nparameters:\n  lr: {values: []}\ncommand: [\"{{lr}}\"]\n";
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{}", SpecErrors(errors.clone()));
    assert!(errors[0].message.contains("values must not be empty"));
}

#[test]
fn suggestions_need_to_be_close() {
    assert_eq!(suggestion("paralel", SWEEP_KEYS), Some("parallel"));
    assert_eq!(suggestion("Method", SWEEP_KEYS), Some("method"));
    assert_eq!(suggestion("maxruns", SWEEP_KEYS), Some("max_runs"));
    assert_eq!(suggestion("tpe", METHOD_NAMES), None);
    assert_eq!(suggestion("bayse", METHOD_NAMES), Some("bayes"));
    assert_eq!(suggestion("x", &["lr"]), None);
    assert_eq!(suggestion("gaol", METRIC_KEYS), Some("goal"));
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("gaol", "goal"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
}

#[test]
fn bayes_options_parse_with_positioned_errors() {
    let bayes = "name: s\nmethod: bayes\nmax_runs: 20\ncommand: [a]\n";
    let default = parse_sweep("s.yaml", bayes).unwrap();
    assert!(default.bayes.multivariate, "multivariate is the default");
    let univariate = parse_sweep(
        "s.yaml",
        &format!("{bayes}bayes: {{multivariate: false}}\n"),
    )
    .unwrap();
    assert_eq!(
        univariate.bayes,
        BayesOptions {
            multivariate: false
        }
    );
    let explicit = parse_sweep("s.yaml", &format!("{bayes}bayes:\n  multivariate: true\n"));
    assert_eq!(explicit.unwrap().bayes, BayesOptions::default());

    let text = format!("{bayes}bayes: {{multivariate: yes please}}\n");
    assert_error_at(
        &text,
        "yes please",
        &["bayes.multivariate must be true or false", "\"yes please\""],
    );
    let text = format!("{bayes}bayes: {{multivarite: false}}\n");
    assert_error_at(
        &text,
        "multivarite",
        &["unknown key \"multivarite\" in bayes", "multivariate"],
    );
    let text = format!("{bayes}bayes: false\n");
    assert_error_at(&text, "false", &["bayes must be a mapping"]);
    let random = "name: s\nmethod: random\nmax_runs: 20\ncommand: [a]\n";
    let text = format!("{random}bayes: {{multivariate: false}}\n");
    assert_error_at(
        &text,
        "{multivariate",
        &["bayes: options apply to method: bayes, not random"],
    );
}

#[test]
fn bayes_options_survive_a_json_round_trip_and_default_when_absent() {
    let text = "name: s\nmethod: bayes\nmax_runs: 20\ncommand: [a]\nbayes: {multivariate: false}\n";
    let spec = parse_sweep("s.yaml", text).unwrap();
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["bayes"]["multivariate"], serde_json::json!(false));
    let back: SweepSpec = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, spec);
    // A sweep stored before the option existed reads as the default.
    let mut old = json;
    old.as_object_mut().unwrap().remove("bayes");
    let read: SweepSpec = serde_json::from_value(old).unwrap();
    assert_eq!(read.bayes, BayesOptions::default());
}

#[test]
fn warm_start_parses_with_positioned_errors() {
    let bayes = "name: s\nmethod: bayes\nmax_runs: 20\ncommand: [a]\nmetric: {name: loss, goal: minimize}\n";
    assert_eq!(parse_sweep("s.yaml", bayes).unwrap().warm_start, None);
    let warm = parse_sweep(
        "s.yaml",
        &format!("{bayes}warm_start: {{sweep: k3x9abcd}}\n"),
    )
    .unwrap();
    assert_eq!(
        warm.warm_start,
        Some(WarmStart {
            sweep: "k3x9abcd".into()
        })
    );
    let block = parse_sweep(
        "s.yaml",
        &format!("{bayes}warm_start:\n  sweep: k3x9abcd\n"),
    )
    .unwrap();
    assert_eq!(block.warm_start, warm.warm_start);

    let text = format!("{bayes}warm_start: {{swep: k3x9abcd}}\n");
    assert_error_at(
        &text,
        "swep",
        &["unknown key \"swep\" in warm_start", "sweep"],
    );
    let text = format!("{bayes}warm_start: k3x9abcd\n");
    assert_error_at(&text, "k3x9abcd", &["warm_start must be a mapping"]);
    let text = format!("{bayes}warm_start: {{sweep: \"a b/c\"}}\n");
    assert_error_at(&text, "\"a b/c\"", &["warm_start.sweep must be a sweep ID"]);
    let text = format!("{bayes}warm_start: {{sweep: \"\"}}\n");
    assert_error_at(&text, "\"\"", &["warm_start.sweep must not be empty"]);
    let text = format!("{bayes}warm_start: {{}}\n");
    assert_error_at(
        &text,
        "{}",
        &["missing required key \"sweep\" in warm_start"],
    );

    let random = bayes.replace("method: bayes", "method: random");
    let text = format!("{random}warm_start: {{sweep: k3x9abcd}}\n");
    assert_error_at(
        &text,
        "{sweep: k3x9abcd}",
        &["warm_start applies to method: bayes, not random"],
    );
    let no_metric = bayes.replace("metric: {name: loss, goal: minimize}\n", "");
    let text = format!("{no_metric}warm_start: {{sweep: k3x9abcd}}\n");
    assert_error_at(&text, "{sweep: k3x9abcd}", &["warm_start needs a metric"]);
}
