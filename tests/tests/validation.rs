//! Invalid sweep files are rejected by `ladder sweep submit` before anything is sent:
//! exit code 2, `FILE:LINE:COL: message` on stderr, and no sweep on the coordinator.

use std::path::Path;

use ladder_e2e::{write_file, Coordinator, TestDir};

/// Line and column (1-based, in characters) of the first occurrence of `needle`.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {text:?}"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

struct Case {
    name: &'static str,
    yaml: String,
    /// Where the error must be reported.
    line: usize,
    column: usize,
    /// Fragments the message must contain.
    fragments: &'static [&'static str],
}

/// A bad file whose error is at the first occurrence of `needle` (shifted by `shift`
/// columns).
fn case(
    name: &'static str,
    yaml: &str,
    needle: &str,
    shift: usize,
    fragments: &'static [&'static str],
) -> Case {
    let (line, column) = locate(yaml, needle);
    Case {
        name,
        yaml: yaml.to_string(),
        line,
        column: column + shift,
        fragments,
    }
}

fn cases() -> Vec<Case> {
    let command = "command: [python3, train.py, --lr, \"{{lr}}\"]\n";
    let grid = "name: bad\nmethod: grid\nparallel: 2\nparameters:\n";
    let random = "name: bad\nmethod: random\nmax_runs: 4\nparameters:\n";
    vec![
        case(
            "unknown_top_level_key",
            &format!("name: bad\nmethod: grid\nparalel: 4\nparameters:\n  lr: {{values: [0.1, 0.2]}}\n{command}"),
            "paralel",
            0,
            &["unknown key \"paralel\"", "\"parallel\""],
        ),
        case(
            "unknown_distribution",
            &format!("{random}  lr: {{distribution: loguniform, min: 0.001, max: 0.1}}\n{command}"),
            "loguniform",
            0,
            &["unknown distribution \"loguniform\"", "log_uniform"],
        ),
        case(
            "min_not_below_max",
            &format!("{random}  lr: {{distribution: uniform, min: 0.5, max: 0.1}}\n{command}"),
            "0.5",
            0,
            &["min must be less than max"],
        ),
        case(
            "equal_min_and_max",
            &format!("{random}  lr: {{distribution: uniform, min: 0.5, max: 0.5}}\n{command}"),
            "0.5",
            0,
            &["min must be less than max"],
        ),
        case(
            "log_uniform_min_zero",
            &format!("{random}  lr: {{distribution: log_uniform, min: 0, max: 0.1}}\n{command}"),
            "0,",
            0,
            &["log_uniform needs min > 0"],
        ),
        case(
            "empty_values",
            &format!("{grid}  lr: {{values: []}}\n{command}"),
            "[]",
            0,
            &["values must not be empty"],
        ),
        case(
            "unknown_placeholder",
            &format!("{grid}  rate: {{values: [0.1, 0.2]}}\n{command}"),
            "\"{{lr}}\"",
            0,
            &["{{lr}}", "no parameter is named \"lr\""],
        ),
        case(
            "grid_over_uniform",
            &format!("{grid}  lr: {{distribution: uniform, min: 0.1, max: 0.2}}\n{command}"),
            "uniform",
            0,
            &["grid search needs discrete parameters"],
        ),
        case(
            "yaml_syntax_error",
            // One closing brace too many on line 5.
            &format!("{grid}  lr: {{values: [0.1, 0.2]}}}}\n{command}"),
            "}}",
            1,
            &["YAML syntax error"],
        ),
        case(
            "random_without_max_runs",
            &format!("name: bad\nmethod: random\nparallel: 2\nparameters:\n  lr: {{values: [0.1, 0.2]}}\n{command}"),
            "random",
            0,
            &["random search needs max_runs"],
        ),
        case(
            "command_as_string",
            &format!("{grid}  lr: {{values: [0.1, 0.2]}}\ncommand: python3 train.py --lr {{{{lr}}}}\n"),
            "python3",
            0,
            &["command", "list", "not a string"],
        ),
    ]
}

/// Submits `file`; returns a description of what is wrong, or `None` when the
/// rejection is as expected.
fn check(coordinator: &Coordinator, file: &Path, case: &Case) -> Option<String> {
    let path = file.to_str().expect("utf-8 path");
    let output = coordinator.ladder(&["sweep", "submit", path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut problems = Vec::new();
    if output.status.code() != Some(2) {
        problems.push(format!("exit status {} instead of 2", output.status));
    }
    if !stdout.trim().is_empty() {
        problems.push(format!("unexpected stdout {stdout:?}"));
    }
    let prefix = format!("{path}:{}:{}: ", case.line, case.column);
    match stderr.lines().find(|line| line.starts_with(&prefix)) {
        None => problems.push(format!("no stderr line starts with {prefix:?}")),
        Some(line) => {
            for fragment in case.fragments {
                if !line.contains(fragment) {
                    problems.push(format!("the message lacks {fragment:?}"));
                }
            }
        }
    }
    if problems.is_empty() {
        return None;
    }
    Some(format!(
        "case {}: {}\n  file:\n{}\n  stderr:\n{}",
        case.name,
        problems.join("; "),
        case.yaml
            .lines()
            .enumerate()
            .map(|(i, l)| format!("    {:>2}| {l}", i + 1))
            .collect::<Vec<_>>()
            .join("\n"),
        stderr
    ))
}

#[test]
fn bad_sweep_files_exit_2_with_line_and_column() {
    let tmp = TestDir::new();
    let coordinator = Coordinator::start(&tmp.path().join("data"), &[]);

    let mut failures = Vec::new();
    for case in cases() {
        let file = write_file(tmp.path(), &format!("{}.yaml", case.name), &case.yaml);
        if let Some(failure) = check(&coordinator, &file, &case) {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the bad files were not rejected as expected:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );

    // Nothing reached the coordinator.
    let sweeps = coordinator.json(&["sweep", "ls"]);
    assert_eq!(
        sweeps["sweeps"].as_array().map(Vec::len),
        Some(0),
        "sweep ls after only invalid submissions: {sweeps}"
    );

    // And the same coordinator accepts the corrected file.
    let good = write_file(
        tmp.path(),
        "good.yaml",
        "name: good\nmethod: grid\nparallel: 2\nparameters:\n  lr: {values: [0.1, 0.2]}\ncommand: [python3, train.py, --lr, \"{{lr}}\"]\n",
    );
    let sweep = coordinator.json(&["sweep", "submit", good.to_str().unwrap()]);
    assert_eq!(sweep["name"], "good", "{sweep}");
    assert_eq!(sweep["planned_runs"], 2, "{sweep}");
    let sweeps = coordinator.json(&["sweep", "ls"]);
    assert_eq!(
        sweeps["sweeps"].as_array().map(Vec::len),
        Some(1),
        "{sweeps}"
    );
}
