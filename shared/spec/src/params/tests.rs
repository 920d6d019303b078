//! Tests of `shared/spec/src/params.rs`.

use super::super::tests::{assert_error, assert_error_at, errors, leaf};
use super::super::{parse_sweep, Condition, Method, ParamSpec, ParamValue, SweepSpec};
use crate::space::{params_json, render_command, trial, trial_count};

const RANDOM: &str = "name: s\nmethod: random\nmax_runs: 5\ncommand: [a]\nparameters:\n";
const GRID: &str = "name: s\nmethod: grid\ncommand: [a]\nparameters:\n";

#[track_caller]
fn parse(text: &str) -> SweepSpec {
    parse_sweep("s.yaml", text).unwrap_or_else(|errors| panic!("{errors}"))
}

fn random(parameters: &str) -> String {
    format!("{RANDOM}{parameters}")
}

fn grid(parameters: &str) -> String {
    format!("{GRID}{parameters}")
}

fn strs(values: &[&str]) -> Vec<ParamValue> {
    values
        .iter()
        .map(|v| ParamValue::Str(v.to_string()))
        .collect()
}

#[test]
fn every_distribution_parses() {
    let spec = parse(&random(
        "  a: {value: 1}\n\
             \x20 b: {distribution: constant, value: x}\n\
             \x20 c: {values: [x, y], probabilities: [0.25, 0.75]}\n\
             \x20 d: {distribution: categorical, values: [1, 2]}\n\
             \x20 e: {distribution: log_uniform_values, min: 0.001, max: 1}\n\
             \x20 f: {distribution: q_uniform, min: 0, max: 10, q: 2}\n\
             \x20 g: {distribution: q_uniform, min: 0, max: 1, q: 0.25}\n\
             \x20 h: {distribution: q_log_uniform_values, min: 1, max: 1024, q: 1}\n\
             \x20 i: {distribution: normal}\n\
             \x20 j: {distribution: log_normal, mu: -2, sigma: 0.5}\n\
             \x20 k: {distribution: q_normal, mu: 10, sigma: 3, q: 1}\n\
             \x20 l: {distribution: q_log_normal, q: 0.5}\n",
    ));
    let specs: Vec<ParamSpec> = spec.parameters.into_iter().map(|p| p.spec).collect();
    assert_eq!(
        specs,
        [
            ParamSpec::Value(ParamValue::Int(1)),
            ParamSpec::Value(ParamValue::Str("x".into())),
            ParamSpec::Values {
                values: strs(&["x", "y"]),
                probabilities: Some(vec![0.25, 0.75])
            },
            ParamSpec::Values {
                values: vec![ParamValue::Int(1), ParamValue::Int(2)],
                probabilities: None
            },
            ParamSpec::LogUniform {
                min: 0.001,
                max: 1.0
            },
            ParamSpec::QUniform {
                min: 0.0,
                max: 10.0,
                q: 2.0,
                integer: true
            },
            ParamSpec::QUniform {
                min: 0.0,
                max: 1.0,
                q: 0.25,
                integer: false
            },
            ParamSpec::QLogUniform {
                min: 1.0,
                max: 1024.0,
                q: 1.0,
                integer: true
            },
            ParamSpec::Normal {
                mu: 0.0,
                sigma: 1.0
            },
            ParamSpec::LogNormal {
                mu: -2.0,
                sigma: 0.5
            },
            ParamSpec::QNormal {
                mu: 10.0,
                sigma: 3.0,
                q: 1.0,
                integer: true
            },
            ParamSpec::QLogNormal {
                mu: 0.0,
                sigma: 1.0,
                q: 0.5,
                integer: false
            },
        ]
    );
}

#[test]
fn probability_errors() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "  x: {values: [a, b, c], probabilities: [0.5, 0.5]}\n",
            "[0.5, 0.5]",
            &["probabilities has 2 entries but values has 3"],
        ),
        (
            "  x: {values: [a, b], probabilities: [1.5, -0.5]}\n",
            "-0.5",
            &["probabilities must be >= 0 (got -0.5)"],
        ),
        (
            "  x: {values: [a, b], probabilities: [0.5, 0.4]}\n",
            "[0.5, 0.4]",
            &["probabilities must sum to 1 (they sum to 0.9)"],
        ),
        (
            "  x: {values: [a, b], probabilities: 1}\n",
            "1}",
            &["probabilities must be a list of numbers"],
        ),
        (
            "  x: {values: [a, b], probabilities: [a, 1]}\n",
            "a, 1]",
            &["probabilities element must be a number"],
        ),
        (
            "  x: {distribution: uniform, min: 0, max: 1, probabilities: [1]}\n",
            "probabilities",
            &["probabilities only applies with values"],
        ),
        (
            "  x: {value: 1, probabilities: [1]}\n",
            "probabilities",
            &["probabilities only applies with values"],
        ),
    ];
    for (parameter, needle, fragments) in cases {
        let text = random(parameter);
        let (line, column) = super::super::tests::locate(parameter, needle);
        assert_error(&text, line + 5, column, fragments);
    }
    // Within 1e-6 of 1 is fine.
    parse(&random(
        "  x: {values: [a, b, c], probabilities: [0.3333333, 0.3333333, 0.3333334]}\n",
    ));
}

#[test]
fn distribution_shape_errors() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "  x: {distribution: normal, min: 0}\n",
            "min",
            &["min does not apply to distribution normal (it takes mu, sigma)"],
        ),
        (
            "  x: {distribution: uniform, min: 0, max: 1, q: 0.1}\n",
            "q:",
            &["q does not apply to distribution uniform (it takes min, max)"],
        ),
        (
            "  x: {distribution: normal, sigma: 0}\n",
            "0}",
            &["sigma must be greater than 0"],
        ),
        (
            "  x: {distribution: q_uniform, min: 0, max: 1, q: -1}\n",
            "-1",
            &["q must be greater than 0 (got -1)"],
        ),
        (
            "  x: {distribution: q_uniform, min: 0.1, max: 0.2, q: 1}\n",
            "1}",
            &["no multiple of q = 1 lies in [min, max] = [0.1, 0.2]"],
        ),
        (
            "  x: {distribution: q_log_uniform, min: 0, max: 8, q: 1}\n",
            "0, max",
            &["q_log_uniform needs min > 0"],
        ),
        (
            "  x: {distribution: q_normal, mu: 0}\n",
            "{distribution",
            &["missing required key \"q\" in parameter \"x\""],
        ),
        (
            "  x: {distribution: q_uniform, min: 0, max: 10000000000000000, q: 1}\n",
            "10000000000000000",
            &["too large for exact integer steps"],
        ),
        (
            "  x: {distribution: uniform, value: 1, min: 0, max: 1}\n",
            "distribution",
            &[
                "has both value and distribution uniform",
                "distribution: constant",
            ],
        ),
        (
            "  x: {distribution: constant}\n",
            "{distribution",
            &["missing required key \"value\" in parameter \"x\""],
        ),
        (
            "  x: {distribution: categorical}\n",
            "{distribution",
            &["missing required key \"values\" in parameter \"x\""],
        ),
        (
            "  x: {distribution: inv_log_uniform, min: 1, max: 2}\n",
            "inv_log",
            &["unknown distribution \"inv_log_uniform\"", "q_log_normal"],
        ),
    ];
    for (parameter, needle, fragments) in cases {
        let text = random(parameter);
        let (line, column) = super::super::tests::locate(parameter, needle);
        assert_error(&text, line + 5, column, fragments);
    }
}

#[test]
fn grid_rules() {
    assert_error_at(
        &grid("  x: {distribution: normal}\n"),
        "normal",
        &[
            "grid search needs discrete parameters",
            "unbounded distribution normal",
        ],
    );
    assert_error_at(
        &grid("  x: {distribution: q_uniform, min: 0, max: 100000000, q: 1}\n"),
        "1}",
        &["q_uniform has 100000001 grid points, more than 10000000"],
    );
    let spec = parse(&grid(
            "  x: {distribution: q_uniform, min: 0, max: 1, q: 0.25}\n  y: {values: [a, b], probabilities: [0.9, 0.1]}\n",
        ));
    assert_eq!(trial_count(&spec), 10);
    let xs: Vec<ParamValue> = (0..10)
        .step_by(2)
        .map(|i| trial(&spec, i).unwrap()["x"].clone())
        .collect();
    assert_eq!(xs, [0.0, 0.25, 0.5, 0.75, 1.0].map(ParamValue::Float));
    let decimal = parse(&grid(
        "  x: {distribution: q_uniform, min: 0.1, max: 0.35, q: 0.1}\n",
    ));
    let xs: Vec<ParamValue> = (0..trial_count(&decimal))
        .map(|i| trial(&decimal, i).unwrap()["x"].clone())
        .collect();
    assert_eq!(xs, [0.1, 0.2, 0.3].map(ParamValue::Float));
}

#[test]
fn gp_is_validated_like_bayes_without_conditions() {
    let spec = parse("name: s\nmethod: gp\nmax_runs: 4\ncommand: [a]\nparameters:\n  x: {distribution: log_uniform, min: 1.0e-4, max: 1}\n  o: {values: [a, b]}\n");
    assert_eq!(spec.method, Method::Gp);
    assert!(spec.method.learns() && Method::Bayes.learns() && !Method::Random.learns());
    assert_eq!(trial_count(&spec), 4);
    assert_error(
        "name: s\nmethod: gp\ncommand: [a]\n",
        2,
        9,
        &["gp search needs max_runs"],
    );
    let conditional = "name: s\nmethod: gp\nmax_runs: 4\ncommand: [a]\nparameters:\n  o: {values: [sgd, adam]}\n  momentum: {distribution: uniform, min: 0, max: 1, when: {o: sgd}}\n";
    assert_error_at(
        conditional,
        "o: sgd",
        &[
            "parameter \"momentum\" has a when: condition, but method: gp",
            "use method: bayes",
        ],
    );
    assert_error_at(
        "name: s\nmethod: gp\nmax_runs: 4\ncommand: [a]\nbayes: {multivariate: false}\nparameters:\n  x: {value: 1}\n",
        "{multivariate: false}",
        &["bayes: options apply to method: bayes, not gp"],
    );
}

#[test]
fn bayes_is_validated_like_random() {
    let spec = parse("name: s\nmethod: bayes\nmax_runs: 4\ncommand: [a]\nparameters:\n  x: {distribution: normal}\n");
    assert_eq!(spec.method, Method::Bayes);
    assert_eq!(trial_count(&spec), 4);
    assert!(trial(&spec, 3).unwrap().contains_key("x"));
    assert_error(
        "name: s\nmethod: bayes\ncommand: [a]\n",
        2,
        9,
        &["bayes search needs max_runs"],
    );
}

const NESTED: &str = "  optimizer: {values: [adamw, sgd]}\n  lora:\n    when: {optimizer: adamw}\n    parameters:\n      rank: {values: [8, 16]}\n      alpha: {value: 32}\n      inner:\n        parameters:\n          drop: {values: [0.0, 0.1]}\n  momentum:\n    values: [0.9, 0.99]\n    when: {optimizer: sgd}\n  lr: {values: [0.1]}\n";

#[test]
fn groups_flatten_to_dotted_leaves_in_place() {
    let spec = parse(&grid(NESTED));
    let names: Vec<&str> = spec.parameters.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "optimizer",
            "lora.rank",
            "lora.alpha",
            "lora.inner.drop",
            "momentum",
            "lr"
        ]
    );
    let adamw = vec![Condition {
        parameter: "optimizer".into(),
        any_of: strs(&["adamw"]),
    }];
    for leaf in &spec.parameters[1..4] {
        assert_eq!(leaf.when, adamw, "{}", leaf.name);
    }
    assert_eq!(spec.parameters[4].when[0].any_of, strs(&["sgd"]));
    assert!(spec.parameters[5].when.is_empty());
    // adamw: 2 ranks x 2 drops; sgd: 2 momenta.
    assert_eq!(trial_count(&spec), 6);
    let first = trial(&spec, 0).unwrap();
    assert_eq!(
        params_json(&first),
        serde_json::json!({"optimizer": "adamw", "lr": 0.1, "lora": {"rank": 8, "alpha": 32, "inner": {"drop": 0.0}}})
    );
    let last = trial(&spec, 5).unwrap();
    assert_eq!(
        params_json(&last),
        serde_json::json!({"optimizer": "sgd", "lr": 0.1, "momentum": 0.99})
    );
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<SweepSpec>(&json).unwrap(), spec);
}

#[test]
fn placeholders_may_name_conditional_and_nested_parameters() {
    let text = format!(
            "name: s\nmethod: grid\ncommand: [run, \"--rank={{{{lora.rank}}}}\", \"{{{{momentum}}}}\"]\nparameters:\n{NESTED}"
        );
    let spec = parse(&text);
    let adamw = render_command(&spec.command, &trial(&spec, 0).unwrap()).unwrap();
    assert_eq!(adamw, ["run", "--rank=8", ""]);
    let sgd = render_command(&spec.command, &trial(&spec, 4).unwrap()).unwrap();
    assert_eq!(sgd, ["run", "--rank=", "0.9"]);
    assert_error_at(
        &format!("name: s\nmethod: grid\ncommand: [\"{{{{lora.rnak}}}}\"]\nparameters:\n{NESTED}"),
        "\"{{lora.rnak",
        &[
            "no parameter is named \"lora.rnak\"",
            "did you mean \"lora.rank\"?",
        ],
    );
}

#[test]
fn group_errors() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "  lora:\n    values: [1]\n    parameters:\n      rank: {value: 1}\n",
            "values",
            &["has parameters: and values; a group takes only parameters and when"],
        ),
        (
            "  lora:\n    parameters: {}\n",
            "{}",
            &["parameter group \"lora\" has no parameters"],
        ),
        (
            "  lora:\n    parameters: [rank]\n",
            "[rank]",
            &["parameter group \"lora\" parameters must be a mapping"],
        ),
        (
            "  lora:\n    parameters:\n      rank: {value: 1}\n  lora.rank: {value: 2}\n",
            "lora.rank",
            &["parameter \"lora.rank\" is defined twice (first at line 8, column 7)"],
        ),
        (
            "  ladder.x: {value: 1}\n",
            "ladder.x",
            &["parameter name \"ladder.x\" is reserved", "ladder.run_dir"],
        ),
        (
            "  ladder:\n    parameters:\n      run_id: {value: 1}\n",
            "run_id",
            &["parameter name \"ladder.run_id\" is reserved"],
        ),
        (
            "  lora:\n    parameters:\n      a b: {value: 1}\n",
            "a b",
            &["contains ' '"],
        ),
        (
            "  lora:\n    parameters:\n      rank: {value: 1}\n    wen: {x: 1}\n",
            "wen",
            &[
                "unknown key \"wen\" in parameter group \"lora\"",
                "did you mean \"when\"?",
            ],
        ),
    ];
    for (parameters, needle, fragments) in cases {
        let text = random(parameters);
        let (line, column) = super::super::tests::locate(parameters, needle);
        assert_error(&text, line + 5, column, fragments);
    }
}

#[test]
fn condition_errors() {
    let head =
        "  optimizer: {values: [adamw, sgd]}\n  lr: {distribution: uniform, min: 0, max: 1}\n";
    let cases: &[(&str, &str, &[&str])] = &[
            (
                "  m: {value: 1, when: {optimizr: sgd}}\n",
                "optimizr",
                &["when refers to \"optimizr\", but no parameter has that name", "did you mean \"optimizer\"?"],
            ),
            (
                "  m: {value: 1, when: {optimizer: sdg}}\n",
                "sdg",
                &[
                    "optimizer never takes that value (values: adamw, sgd)",
                    "compares \"optimizer\" with \"sdg\"",
                    "did you mean \"sgd\"?",
                ],
            ),
            (
                "  m: {value: 1, when: {optimizer: [sgd, rmsprop]}}\n",
                "rmsprop",
                &["never takes that value"],
            ),
            (
                "  m: {value: 1, when: {lr: 0.5}}\n",
                "lr: 0.5",
                &["a uniform parameter, which never repeats a value"],
            ),
            (
                "  m: {value: 1, when: {m: 1}}\n",
                "m: 1",
                &["when refers to the parameter itself"],
            ),
            (
                "  m: {value: 1, when: {optimizer: []}}\n",
                "[]",
                &["must list at least one value"],
            ),
            (
                "  m: {value: 1, when: {}}\n",
                "{}",
                &["when must not be empty"],
            ),
            (
                "  m: {value: 1, when: sgd}\n",
                "sgd}",
                &["when must be a mapping"],
            ),
            (
                "  m: {value: 1, when: {optimizer: ~}}\n",
                "~",
                &["not null"],
            ),
            (
                "  g: {parameters: {a: {value: 1}}}\n  m: {value: 1, when: {g: 1}}\n",
                "g: 1",
                &["when refers to \"g\", a parameter group", "such as \"g.a\""],
            ),
            (
                "  a: {values: [1, 2], when: {b: 1}}\n  b: {values: [1, 2], when: {c: 1}}\n  c: {values: [1, 2], when: {a: 2}}\n",
                "a: 2",
                &["conditions form a cycle: a → b → c → a"],
            ),
            (
                "  n: {distribution: int_uniform, min: 1, max: 4}\n  m: {value: 1, when: {n: 5}}\n",
                "5}",
                &["n never takes that value (integers 1 to 4)"],
            ),
            (
                "  n: {distribution: q_uniform, min: 0, max: 1, q: 0.25}\n  m: {value: 1, when: {n: 0.3}}\n",
                "0.3}",
                &["n never takes that value (multiples of 0.25 from 0 to 1)"],
            ),
        ];
    for (extra, needle, fragments) in cases {
        let parameters = format!("{head}{extra}");
        let text = random(&parameters);
        let (line, column) = super::super::tests::locate(&parameters, needle);
        assert_error(&text, line + 5, column, fragments);
    }
    // A condition inherited by several leaves is reported once.
    let text = random(
        "  g:\n    when: {nope: 1}\n    parameters:\n      a: {value: 1}\n      b: {value: 1}\n",
    );
    assert_eq!(errors(&text).len(), 1);
    // A condition on a parameter whose own spec is invalid does not cascade.
    let text = random("  a: {values: []}\n  b: {value: 1, when: {a: 1}}\n");
    assert_eq!(errors(&text).len(), 1);
}

#[test]
fn conditions_canonicalise_values_to_the_parameters_form() {
    let spec = parse(&random(
            "  f: {values: [1.0, 2.5]}\n  n: {distribution: int_uniform, min: 0, max: 9}\n  q: {distribution: q_uniform, min: 0, max: 1, q: 0.1}\n  a: {value: 1, when: {f: 1, n: [3.0, 3], q: 0.3}}\n",
        ));
    let when = &spec.parameter("a").unwrap().when;
    assert_eq!(when[0].any_of, [ParamValue::Float(1.0)]);
    assert_eq!(when[1].any_of, [ParamValue::Int(3)]);
    assert_eq!(when[2].any_of, [ParamValue::Float(0.3)]);
}

#[test]
fn grids_bound_the_condition_branches() {
    let text = grid(
            "  a: {distribution: int_uniform, min: 0, max: 999}\n  b: {distribution: int_uniform, min: 0, max: 999}\n  c: {value: 1, when: {a: 1}}\n  d: {value: 1, when: {b: 1}}\n",
        );
    assert_error_at(
            &text,
            "a: 1",
            &["the parameters that conditions refer to (a, b) have 1000000 value combinations, more than 100000"],
        );
    // Random search has no such limit.
    parse(&text.replace("method: grid", "method: random\nmax_runs: 3"));
}

#[test]
fn the_reference_example_parses() {
    let doc = include_str!("../../../../docs/reference/sweep-file.md");
    let start = doc.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + doc[start..].find("```").expect("closed");
    let spec = parse(&doc[start..end]);
    assert_eq!(spec.parameters.len(), 6);
    assert_eq!(spec.parameter("momentum").unwrap().when.len(), 1);
    assert!(spec.early_terminate.is_some());
    for index in 0..trial_count(&spec) {
        let params = trial(&spec, index).unwrap();
        let sgd = params["optimizer"] == ParamValue::Str("sgd".into());
        assert_eq!(params.contains_key("momentum"), sgd);
    }
}

#[test]
fn leaf_helper_builds_unconditional_parameters() {
    assert!(leaf("x", ParamSpec::Value(ParamValue::Int(1)))
        .when
        .is_empty());
}
