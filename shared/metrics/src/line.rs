//! The `@ladder` line protocol: a run reports metrics by printing lines like
//!
//! ```text
//! @ladder {"step": 100, "loss": 0.25, "accuracy": 0.91}
//! ```
//!
//! and facts about itself that are not metrics (provenance: the base model's path and
//! content hash, the data files it read) by printing lines like
//!
//! ```text
//! @ladder.info {"base_model": "models/tiny", "base_model.sha256": "ab12...", "data.train": "data/train.jsonl"}
//! ```
//!
//! on stdout. The agent feeds every output line of rank 0 to [`parse_info_line`] and
//! [`parse_metric_line`]; plain log lines yield `None` from both and are only logged.
//!
//! Metric lines: the line must start with `@ladder` at column 0 (no leading whitespace),
//! followed by whitespace, `{` or the end of the line; the rest is one JSON object.
//! `"step"` is optional and must be a non-negative integer (an integral float such as
//! `10.0` counts). Every other key is a metric name (non-empty, at most
//! [`MAX_METRIC_NAME_BYTES`] bytes) whose value must be a finite JSON number; booleans
//! count as 1.0/0.0. Other values are skipped: the line still succeeds with the valid
//! metrics and the skipped ones are listed by [`parse_metric_line_detailed`]; a line with
//! no valid metric at all is an error.
//!
//! Info lines: the line must start with `@ladder.info` at column 0, followed by
//! whitespace, `{` or the end of the line; the rest is one JSON object. Every key is a
//! name (non-empty, at most [`MAX_METRIC_NAME_BYTES`] bytes; `step` is an ordinary name
//! here) whose value is a string (at most [`MAX_INFO_VALUE_BYTES`] bytes), a number or a
//! boolean, kept as its string form (`3`, `0.5`, `true`). Nulls, arrays, objects, longer
//! strings and invalid names are skipped with a reason in [`InfoLine::skipped`]; a line
//! with no valid entry at all is an error. A run's info is the union of all its info
//! lines, over every attempt: a later line overrides the keys it repeats.
//!
//! Artifact lines: `@ladder.artifact {"path": "model/"}` at column 0 names a file or a
//! directory (trailing `/` optional) in the run directory to upload to the artifact
//! store when the command ends, beside the sweep's `artifacts:`. The path is relative to
//! the run directory and `/`-separated, with no empty, `.` or `..` component (see
//! [`check_artifact_path`]); other keys are an error.
//!
//! A malformed line of any kind (bad JSON, not an object, nothing valid in it) is
//! kept in the run's log after a warning (`ignored metric line: ...`, `ignored info
//! line: ...`); the agent notes each reason for a skipped entry once per attempt
//! (`skipped in info line (noted once): ...`). Neither fails the run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The line prefix that marks a metric line.
pub const PREFIX: &str = "@ladder";

/// The line prefix that marks an info line.
pub const INFO_PREFIX: &str = "@ladder.info";

/// The line prefix that marks an artifact line.
pub const ARTIFACT_PREFIX: &str = "@ladder.artifact";

/// Longest accepted string value of an info entry.
pub const MAX_INFO_VALUE_BYTES: usize = 4 * 1024;

/// Longest accepted metric name.
pub const MAX_METRIC_NAME_BYTES: usize = 256;

/// The metrics of one `@ladder` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// The run's step counter when given.
    pub step: Option<i64>,
    /// Metric name → finite value; never empty.
    pub values: BTreeMap<String, f64>,
}

/// A parsed metric line with the entries that were skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedMetricLine {
    pub point: MetricPoint,
    /// One human-readable reason per skipped key, e.g. `"lr": value is a string, not a number`.
    pub skipped: Vec<String>,
}

/// `Some(Ok(point))` for a valid `@ladder` line, `Some(Err(message))` for a malformed one,
/// `None` for a plain log line. Skipped non-numeric entries are dropped silently here; use
/// [`parse_metric_line_detailed`] to report them.
pub fn parse_metric_line(line: &str) -> Option<Result<MetricPoint, String>> {
    parse_metric_line_detailed(line).map(|parsed| parsed.map(|parsed| parsed.point))
}

/// Like [`parse_metric_line`], also returning which entries were skipped and why.
pub fn parse_metric_line_detailed(line: &str) -> Option<Result<ParsedMetricLine, String>> {
    payload_after(line, PREFIX).map(parse_payload)
}

/// The text after `prefix` when `line` is a line of that kind: the prefix at column 0,
/// then whitespace, `{` or the end of the line.
fn payload_after<'l>(line: &'l str, prefix: &str) -> Option<&'l str> {
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = line.strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace) || rest.starts_with('{')) {
        return None;
    }
    Some(rest.trim())
}

/// The payload of a `prefix` line as one JSON object; `example` is the object shown in
/// the error messages.
fn json_object(
    payload: &str,
    prefix: &str,
    example: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if payload.is_empty() {
        return Err(format!(
            "{prefix} line has no JSON object (expected e.g. {prefix} {example})"
        ));
    }
    let json: serde_json::Value = serde_json::from_str(payload)
        .map_err(|error| format!("{prefix} line is not valid JSON: {error}"))?;
    match json {
        serde_json::Value::Object(object) => Ok(object),
        other => Err(format!(
            "{prefix} line must hold a JSON object like {example}, not {}",
            json_type(&other)
        )),
    }
}

fn parse_payload(payload: &str) -> Result<ParsedMetricLine, String> {
    let object = json_object(payload, PREFIX, r#"{"step": 1, "loss": 0.5}"#)?;
    let mut step = None;
    let mut values = BTreeMap::new();
    let mut skipped = Vec::new();
    for (key, value) in &object {
        if key == "step" {
            step = Some(parse_step(value)?);
            continue;
        }
        match metric_value(key, value) {
            Ok(number) => {
                values.insert(key.clone(), number);
            }
            Err(reason) => skipped.push(reason),
        }
    }
    if values.is_empty() {
        let detail = if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        };
        return Err(format!("{PREFIX} line has no numeric metric{detail}"));
    }
    Ok(ParsedMetricLine {
        point: MetricPoint { step, values },
        skipped,
    })
}

fn parse_step(value: &serde_json::Value) -> Result<i64, String> {
    let step = match value {
        serde_json::Value::Number(number) => number.as_i64().or_else(|| {
            number
                .as_f64()
                .filter(|float| float.fract() == 0.0 && *float >= 0.0 && *float < i64::MAX as f64)
                .map(|float| float as i64)
        }),
        _ => None,
    };
    match step {
        Some(step) if step >= 0 => Ok(step),
        _ => Err(format!(
            "{PREFIX} step must be a non-negative integer, got {value}"
        )),
    }
}

/// The value of a metric entry, or why it is skipped.
fn metric_value(key: &str, value: &serde_json::Value) -> Result<f64, String> {
    if key.is_empty() {
        return Err("an empty metric name".to_string());
    }
    if key.len() > MAX_METRIC_NAME_BYTES {
        return Err(format!(
            "a metric name longer than {MAX_METRIC_NAME_BYTES} bytes"
        ));
    }
    match value {
        serde_json::Value::Number(number) => number
            .as_f64()
            .filter(|float| float.is_finite())
            .ok_or_else(|| format!("{key:?}: value {number} is not a finite number")),
        serde_json::Value::Bool(flag) => Ok(if *flag { 1.0 } else { 0.0 }),
        other => Err(format!(
            "{key:?}: value is {}, not a number",
            json_type(other)
        )),
    }
}

/// The entries of one `@ladder.info` line with the entries that were skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoLine {
    /// Name → value in its string form; never empty.
    pub values: BTreeMap<String, String>,
    /// One human-readable reason per skipped key, e.g. `"cfg": value is an object, not a
    /// string, number or boolean`.
    pub skipped: Vec<String>,
}

/// `Some(Ok(line))` for a valid `@ladder.info` line, `Some(Err(message))` for a malformed
/// one, `None` for any other line (metric lines included).
pub fn parse_info_line(line: &str) -> Option<Result<InfoLine, String>> {
    payload_after(line, INFO_PREFIX).map(parse_info_payload)
}

fn parse_info_payload(payload: &str) -> Result<InfoLine, String> {
    let object = json_object(payload, INFO_PREFIX, r#"{"base_model": "models/tiny"}"#)?;
    let mut values = BTreeMap::new();
    let mut skipped = Vec::new();
    for (key, value) in &object {
        let text = match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(flag) => flag.to_string(),
            other => {
                skipped.push(format!(
                    "{key:?}: value is {}, not a string, number or boolean",
                    json_type(other)
                ));
                continue;
            }
        };
        match check_info_entry(key, &text) {
            Ok(()) => {
                values.insert(key.clone(), text);
            }
            Err(reason) => skipped.push(reason),
        }
    }
    if values.is_empty() {
        let detail = if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        };
        return Err(format!("{INFO_PREFIX} line has no valid entry{detail}"));
    }
    Ok(InfoLine { values, skipped })
}

/// `Some(Ok(path))` for a valid `@ladder.artifact` line (the path as written, checked
/// with [`check_artifact_path`]), `Some(Err(message))` for a malformed one, `None` for
/// any other line.
pub fn parse_artifact_line(line: &str) -> Option<Result<String, String>> {
    payload_after(line, ARTIFACT_PREFIX).map(parse_artifact_payload)
}

fn parse_artifact_payload(payload: &str) -> Result<String, String> {
    let example = r#"{"path": "model/"}"#;
    let object = json_object(payload, ARTIFACT_PREFIX, example)?;
    if let Some(key) = object.keys().find(|key| key.as_str() != "path") {
        return Err(format!(
            "{ARTIFACT_PREFIX} line has an unknown key {key:?} (expected {example})"
        ));
    }
    match object.get("path") {
        Some(serde_json::Value::String(path)) => {
            check_artifact_path(path)?;
            Ok(path.clone())
        }
        Some(other) => Err(format!(
            "{ARTIFACT_PREFIX} path must be a string, not {}",
            json_type(other)
        )),
        None => Err(format!(
            "{ARTIFACT_PREFIX} line has no \"path\" (expected {example})"
        )),
    }
}

/// Whether `path` may name an artifact: relative to the run directory, `/`-separated,
/// at most [`ladder_limits::MAX_ARTIFACT_NAME_BYTES`] bytes, with no empty, `.` or `..`
/// component and no NUL; one trailing `/` (a directory) is allowed. The agent checks the
/// paths it uploads and the coordinator the names it records with the same rule.
pub fn check_artifact_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("an artifact path must not be empty".into());
    }
    if path.len() > ladder_limits::MAX_ARTIFACT_NAME_BYTES {
        return Err(format!(
            "artifact path is {} bytes; the limit is {}",
            path.len(),
            ladder_limits::MAX_ARTIFACT_NAME_BYTES
        ));
    }
    if path.starts_with('/') {
        return Err(format!(
            "artifact path {path:?} is absolute; name it relative to the run directory"
        ));
    }
    if path.contains('\0') {
        return Err("an artifact path must not contain NUL".into());
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    for component in trimmed.split('/') {
        match component {
            "" => return Err(format!("artifact path {path:?} has an empty component")),
            "." | ".." => {
                return Err(format!(
                    "artifact path {path:?} has a {component:?} component; name a path inside the run directory"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `key` = `value` is a valid info entry (the name and length rules of
/// `@ladder.info` lines), or why not. The coordinator applies the same check to what
/// agents send.
pub fn check_info_entry(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("an empty info name".to_string());
    }
    if key.len() > MAX_METRIC_NAME_BYTES {
        return Err(format!(
            "an info name longer than {MAX_METRIC_NAME_BYTES} bytes"
        ));
    }
    if value.len() > MAX_INFO_VALUE_BYTES {
        return Err(format!(
            "{key:?}: value is longer than {MAX_INFO_VALUE_BYTES} bytes"
        ));
    }
    Ok(())
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> MetricPoint {
        match parse_metric_line(line) {
            Some(Ok(point)) => point,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn err(line: &str) -> String {
        match parse_metric_line(line) {
            Some(Err(message)) => message,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn plain_lines_are_not_metrics() {
        for line in [
            "",
            "epoch 1 loss 0.3",
            " @ladder {\"loss\": 1}",
            "\t@ladder {\"loss\": 1}",
            "@laddered {\"loss\": 1}",
            "log: @ladder {\"loss\": 1}",
        ] {
            assert_eq!(parse_metric_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn metric_lines_parse() {
        let point = ok("@ladder {\"step\": 10, \"loss\": 0.25, \"acc\": 1, \"done\": true}\r\n");
        assert_eq!(point.step, Some(10));
        assert_eq!(
            point.values,
            BTreeMap::from([
                ("acc".to_string(), 1.0),
                ("done".to_string(), 1.0),
                ("loss".to_string(), 0.25),
            ])
        );
        let point = ok("@ladder{\"loss\":-3e2}");
        assert_eq!(point.step, None);
        assert_eq!(point.values["loss"], -300.0);
        assert_eq!(ok("@ladder   {\"x\": false}   ").values["x"], 0.0);
    }

    #[test]
    fn step_must_be_a_non_negative_integer() {
        assert_eq!(ok("@ladder {\"step\": 10.0, \"x\": 1}").step, Some(10));
        assert_eq!(ok("@ladder {\"step\": 0, \"x\": 1}").step, Some(0));
        for step in ["-1", "1.5", "\"3\"", "null", "1e30"] {
            let message = err(&format!("@ladder {{\"step\": {step}, \"x\": 1}}"));
            assert!(
                message.contains("step must be a non-negative integer"),
                "{message}"
            );
        }
    }

    #[test]
    fn huge_numbers_parse_but_non_finite_ones_fail() {
        assert_eq!(
            ok("@ladder {\"x\": 123456789012345678901234567890}").values["x"],
            1.2345678901234568e29
        );
        assert_eq!(ok("@ladder {\"x\": 1e308}").values["x"], 1e308);
        assert!(err("@ladder {\"x\": NaN}").contains("not valid JSON"));
        assert!(err("@ladder {\"x\": Infinity}").contains("not valid JSON"));
        assert!(err("@ladder {\"x\": 1e400}").contains("not valid JSON"));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert!(err("@ladder").contains("no JSON object"));
        assert!(err("@ladder   ").contains("no JSON object"));
        assert!(err("@ladder {\"loss\": 0.5").contains("not valid JSON"));
        assert!(err("@ladder [1, 2]").contains("not an array"));
        assert!(err("@ladder 3").contains("not a number"));
        assert!(err("@ladder {}").contains("no numeric metric"));
        assert!(err("@ladder {\"step\": 3}").contains("no numeric metric"));
        let message = err("@ladder {\"name\": \"x\", \"other\": null}");
        assert!(message.contains("no numeric metric"), "{message}");
        assert!(message.contains("\"name\": value is a string"), "{message}");
    }

    #[test]
    fn invalid_entries_are_skipped_and_reported() {
        let long = "m".repeat(MAX_METRIC_NAME_BYTES + 1);
        let exact = "n".repeat(MAX_METRIC_NAME_BYTES);
        let line = format!(
            "@ladder {{\"loss\": 0.5, \"tag\": \"best\", \"cfg\": {{\"a\": 1}}, \"\": 1, \"{long}\": 2, \"{exact}\": 3}}"
        );
        let parsed = parse_metric_line_detailed(&line).unwrap().unwrap();
        assert_eq!(
            parsed.point.values,
            BTreeMap::from([("loss".to_string(), 0.5), (exact, 3.0)])
        );
        assert_eq!(parsed.skipped.len(), 4, "{:?}", parsed.skipped);
        assert!(parsed
            .skipped
            .iter()
            .any(|reason| reason.contains("\"tag\": value is a string")));
        assert!(parsed
            .skipped
            .iter()
            .any(|reason| reason.contains("an object")));
        assert!(parsed
            .skipped
            .iter()
            .any(|reason| reason.contains("empty metric name")));
        assert!(parsed
            .skipped
            .iter()
            .any(|reason| reason.contains("longer than 256 bytes")));
        assert_eq!(parse_metric_line(&line).unwrap().unwrap(), parsed.point);
    }

    #[test]
    fn artifact_lines_name_paths_inside_the_run_directory() {
        let path = |line: &str| parse_artifact_line(line).expect("an artifact line");
        assert_eq!(
            path("@ladder.artifact {\"path\": \"model/\"}").unwrap(),
            "model/"
        );
        assert_eq!(
            path("@ladder.artifact{\"path\":\"a/b.json\"}\r\n").unwrap(),
            "a/b.json"
        );
        for other in [
            "@ladder {\"path\": 1}",
            "@ladder.info {\"path\": \"x\"}",
            " @ladder.artifact {\"path\": \"x\"}",
            "@ladder.artifacts {\"path\": \"x\"}",
        ] {
            assert_eq!(parse_artifact_line(other), None, "{other}");
        }
        assert_eq!(
            parse_metric_line("@ladder.artifact {\"path\": \"x\"}"),
            None
        );
        assert!(path("@ladder.artifact")
            .unwrap_err()
            .contains("no JSON object"));
        assert!(path("@ladder.artifact {}")
            .unwrap_err()
            .contains("no \"path\""));
        assert!(path("@ladder.artifact {\"path\": 3}")
            .unwrap_err()
            .contains("not a number"));
        assert!(path("@ladder.artifact {\"path\": \"x\", \"size\": 1}")
            .unwrap_err()
            .contains("unknown key \"size\""));
        assert!(path("@ladder.artifact {\"path\": \"/etc/passwd\"}")
            .unwrap_err()
            .contains("absolute"));
        assert!(path("@ladder.artifact {\"path\": \"../x\"}")
            .unwrap_err()
            .contains("\"..\""));
    }

    #[test]
    fn artifact_paths_stay_inside_the_run_directory() {
        for good in [
            "a",
            "model/",
            "model/weights.bin",
            "a.b/c..d",
            "x/./y".replace("/./", "/z/").as_str(),
        ] {
            assert_eq!(check_artifact_path(good), Ok(()), "{good}");
        }
        for bad in [
            "", "/a", "a//b", "./a", "a/..", "a/../b", "a/.", "//", "a\0b",
        ] {
            assert!(check_artifact_path(bad).is_err(), "{bad:?}");
        }
        let long = "a".repeat(ladder_limits::MAX_ARTIFACT_NAME_BYTES + 1);
        assert!(check_artifact_path(&long).unwrap_err().contains("limit"));
    }

    fn info(line: &str) -> InfoLine {
        match parse_info_line(line) {
            Some(Ok(parsed)) => parsed,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn info_err(line: &str) -> String {
        match parse_info_line(line) {
            Some(Err(message)) => message,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn info_lines_and_metric_lines_do_not_overlap() {
        let line = "@ladder.info {\"base_model\": \"models/tiny\"}";
        assert_eq!(parse_metric_line(line), None);
        assert!(matches!(parse_info_line(line), Some(Ok(_))));
        assert_eq!(parse_info_line("@ladder {\"loss\": 1}"), None);
        for line in [
            "",
            "plain log",
            " @ladder.info {\"a\": \"b\"}",
            "@ladder.infos {\"a\": \"b\"}",
            "@ladder.information",
            "log: @ladder.info {\"a\": \"b\"}",
        ] {
            assert_eq!(parse_info_line(line), None, "{line:?}");
            assert_eq!(parse_metric_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn info_lines_parse_strings_numbers_and_booleans() {
        let parsed = info(
            "@ladder.info {\"base_model\": \"models/tiny\", \"base_model.sha256\": \"ab12\", \"step\": 3, \"lr\": 0.5, \"big\": 1e300, \"lora\": true, \"empty\": \"\"}\r\n",
        );
        assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
        let want: BTreeMap<String, String> = [
            ("base_model", "models/tiny"),
            ("base_model.sha256", "ab12"),
            ("big", "1e+300"),
            ("empty", ""),
            ("lora", "true"),
            ("lr", "0.5"),
            ("step", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(parsed.values, want);
        assert_eq!(info("@ladder.info{\"a\":false}").values["a"], "false");
        assert_eq!(info("@ladder.info   {\"a\": -2}   ").values["a"], "-2");
    }

    #[test]
    fn malformed_info_lines_are_errors() {
        assert!(info_err("@ladder.info").contains("no JSON object"));
        assert!(info_err("@ladder.info   ").contains("no JSON object"));
        assert!(info_err("@ladder.info {\"a\": \"b\"").contains("not valid JSON"));
        assert!(info_err("@ladder.info {\"a\": NaN}").contains("not valid JSON"));
        assert!(info_err("@ladder.info [\"a\"]").contains("not an array"));
        assert!(info_err("@ladder.info \"a\"").contains("not a string"));
        assert!(info_err("@ladder.info {}").contains("no valid entry"));
        let message = info_err("@ladder.info {\"a\": null, \"b\": [1]}");
        assert!(message.contains("no valid entry"), "{message}");
        assert!(message.contains("\"a\": value is null"), "{message}");
        assert!(message.contains("\"b\": value is an array"), "{message}");
    }

    #[test]
    fn invalid_info_entries_are_skipped_and_reported() {
        let long_name = "k".repeat(MAX_METRIC_NAME_BYTES + 1);
        let exact_name = "n".repeat(MAX_METRIC_NAME_BYTES);
        let long_value = "v".repeat(MAX_INFO_VALUE_BYTES + 1);
        let exact_value = "w".repeat(MAX_INFO_VALUE_BYTES);
        let line = format!(
            "@ladder.info {{\"ok\": \"yes\", \"none\": null, \"cfg\": {{\"a\": 1}}, \"list\": [1], \"\": \"x\", \"{long_name}\": \"x\", \"{exact_name}\": 1, \"long\": \"{long_value}\", \"exact\": \"{exact_value}\"}}"
        );
        let parsed = info(&line);
        assert_eq!(
            parsed.values,
            BTreeMap::from([
                ("exact".to_string(), exact_value),
                ("ok".to_string(), "yes".to_string()),
                (exact_name, "1".to_string()),
            ])
        );
        assert_eq!(parsed.skipped.len(), 6, "{:?}", parsed.skipped);
        for reason in [
            "\"none\": value is null",
            "\"cfg\": value is an object",
            "\"list\": value is an array",
            "an empty info name",
            "an info name longer than 256 bytes",
            "\"long\": value is longer than 4096 bytes",
        ] {
            assert!(
                parsed.skipped.iter().any(|r| r.contains(reason)),
                "{reason:?} not in {:?}",
                parsed.skipped
            );
        }
    }
}
