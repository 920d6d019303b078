//! The `@ladder` metric protocol: a run reports metrics by printing lines like
//!
//! ```text
//! @ladder {"step": 100, "loss": 0.25, "accuracy": 0.91}
//! ```
//!
//! on stdout or stderr. The agent feeds every output line to [`parse_metric_line`]; plain
//! log lines yield `None` and are only logged.
//!
//! Rules: the line must start with `@ladder` at column 0 (no leading whitespace), followed
//! by whitespace, `{` or the end of the line; the rest is one JSON object. `"step"` is
//! optional and must be a non-negative integer (an integral float such as `10.0` counts).
//! Every other key is a metric name (non-empty, at most [`MAX_METRIC_NAME_BYTES`] bytes)
//! whose value must be a finite JSON number; booleans count as 1.0/0.0. Other values are
//! skipped: the line still succeeds with the valid metrics and the skipped ones are listed
//! by [`parse_metric_line_detailed`]; a line with no valid metric at all is an error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The line prefix that marks a metric line.
pub const PREFIX: &str = "@ladder";

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
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = line.strip_prefix(PREFIX)?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace) || rest.starts_with('{')) {
        return None;
    }
    Some(parse_payload(rest.trim()))
}

fn parse_payload(payload: &str) -> Result<ParsedMetricLine, String> {
    if payload.is_empty() {
        return Err(format!(
            "{PREFIX} line has no JSON object (expected e.g. {PREFIX} {{\"step\": 1, \"loss\": 0.5}})"
        ));
    }
    let json: serde_json::Value = serde_json::from_str(payload)
        .map_err(|error| format!("{PREFIX} line is not valid JSON: {error}"))?;
    let serde_json::Value::Object(object) = json else {
        return Err(format!(
            "{PREFIX} line must hold a JSON object like {{\"step\": 1, \"loss\": 0.5}}, not {}",
            json_type(&json)
        ));
    };
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
}
