//! Human tables and the documented `--json` forms of every read verb.
//!
//! The JSON field names are stable (docs/reference/json-output.md). Times are milliseconds since
//! the Unix epoch; absent values are `null`.

use ladder_proto::v1 as pb;
use serde_json::{json, Map, Value};

pub fn param_json(value: &pb::ParamValue) -> Value {
    use pb::param_value::Kind;
    match &value.kind {
        Some(Kind::IntValue(i)) => json!(i),
        Some(Kind::FloatValue(f)) => json!(f),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        None => Value::Null,
    }
}

pub fn param_text(value: &pb::ParamValue) -> String {
    use pb::param_value::Kind;
    match &value.kind {
        Some(Kind::IntValue(i)) => i.to_string(),
        Some(Kind::FloatValue(f)) => format_number(*f),
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        None => String::new(),
    }
}

/// A metric or parameter value in at most ~7 significant characters.
pub fn format_number(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let magnitude = value.abs();
    if !(1e-3..1e6).contains(&magnitude) {
        return format!("{value:.3e}");
    }
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

fn ms_or_null(ms: i64) -> Value {
    if ms == 0 {
        Value::Null
    } else {
        json!(ms)
    }
}

pub fn run_status_name(status: i32) -> &'static str {
    match pb::RunStatus::try_from(status) {
        Ok(pb::RunStatus::Queued) => "queued",
        Ok(pb::RunStatus::Running) => "running",
        Ok(pb::RunStatus::Completed) => "completed",
        Ok(pb::RunStatus::Failed) => "failed",
        Ok(pb::RunStatus::Stopped) => "stopped",
        Ok(pb::RunStatus::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

pub fn sweep_status_name(status: i32) -> &'static str {
    match pb::SweepStatus::try_from(status) {
        Ok(pb::SweepStatus::Running) => "running",
        Ok(pb::SweepStatus::Paused) => "paused",
        Ok(pb::SweepStatus::Completed) => "completed",
        Ok(pb::SweepStatus::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

pub fn sweep_ended(sweep: &pb::Sweep) -> bool {
    matches!(
        pb::SweepStatus::try_from(sweep.status),
        Ok(pb::SweepStatus::Completed) | Ok(pb::SweepStatus::Cancelled)
    )
}

pub fn counts_json(counts: &pb::RunCounts) -> Value {
    json!({
        "queued": counts.queued,
        "running": counts.running,
        "completed": counts.completed,
        "failed": counts.failed,
        "stopped": counts.stopped,
        "cancelled": counts.cancelled,
    })
}

pub fn sweep_json(sweep: &pb::Sweep) -> Value {
    let counts = sweep.counts.unwrap_or_default();
    let metric = if sweep.metric_name.is_empty() {
        Value::Null
    } else {
        json!({"name": sweep.metric_name, "goal": sweep.metric_goal})
    };
    json!({
        "id": sweep.id,
        "name": sweep.name,
        "project": sweep.project,
        "method": sweep.method,
        "status": sweep_status_name(sweep.status),
        "metric": metric,
        "parallel": sweep.parallel,
        "planned_runs": sweep.planned_runs,
        "created_runs": sweep.created_runs,
        "counts": counts_json(&counts),
        "created_ms": sweep.created_ms,
        "ended_ms": ms_or_null(sweep.ended_ms),
        "created": rfc3339_or_null(sweep.created_ms),
        "ended": rfc3339_or_null(sweep.ended_ms),
        "file_name": sweep.file_name,
        "owner": sweep.owner,
    })
}

pub fn run_json(run: &pb::Run) -> Value {
    let params: Map<String, Value> = sorted(&run.params)
        .into_iter()
        .map(|(k, v)| (k.clone(), param_json(v)))
        .collect();
    let metrics: Map<String, Value> = sorted(&run.last_metrics)
        .into_iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let summaries: Map<String, Value> = sorted(&run.summaries)
        .into_iter()
        .map(|(k, s)| {
            let summary = json!({
                "value": s.value,
                "summary": s.summary,
                "last": s.last,
                "last_step": s.last_step,
                "min": s.min,
                "min_step": s.min_step,
                "max": s.max,
                "max_step": s.max_step,
            });
            (k.clone(), summary)
        })
        .collect();
    let info: Map<String, Value> = sorted(&run.info)
        .into_iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "id": run.id,
        "sweep_id": run.sweep_id,
        "project": run.project,
        "index": run.index,
        "status": run_status_name(run.status),
        "params": params,
        "agent": if run.agent.is_empty() { Value::Null } else { json!(run.agent) },
        "attempts": run.attempts.len(),
        "metrics": metrics,
        "summaries": summaries,
        "last_step": run.last_step,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "created_ms": run.created_ms,
        "ended_ms": ms_or_null(run.ended_ms),
        "created": rfc3339_or_null(run.created_ms),
        "ended": rfc3339_or_null(run.ended_ms),
        "tags": run.tags,
        "notes": run.notes.iter().map(|n| json!({"id": n.id, "time_ms": n.time_ms, "text": n.text, "author": n.author})).collect::<Vec<_>>(),
        "info": info,
    })
}

/// An instant given in milliseconds since the Unix epoch as RFC 3339 in UTC
/// (`2026-12-05T23:51:12.123Z`); `None` for 0 (not yet) or out of range.
pub fn rfc3339(ms: i64) -> Option<String> {
    let time = jiff::Timestamp::from_millisecond(ms).ok()?;
    (ms > 0).then(|| time.to_string())
}

/// [`rfc3339`] as JSON: a string, or `null`.
pub fn rfc3339_or_null(ms: i64) -> Value {
    rfc3339(ms).map_or(Value::Null, Value::String)
}

/// An instant as people read it, in this machine's time zone
/// (`2026-12-05 23:51:12 UTC`); empty for 0 (not yet).
pub fn local_time(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(time) => time
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => format!("{ms} ms since the epoch"),
    }
}

/// A duration as people read it: `850 ms`, `12.4 s`, `3 min 05 s`, `2 h 07 min`,
/// `3 d 04 h`.
pub fn duration_text(ms: i64) -> String {
    let ms = ms.max(0);
    let seconds = ms / 1000;
    match seconds {
        0 => format!("{ms} ms"),
        1..=59 => format!("{:.1} s", ms as f64 / 1000.0),
        60..=3599 => format!("{} min {:02} s", seconds / 60, seconds % 60),
        3600..=86_399 => format!("{} h {:02} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} d {:02} h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

pub use ladder_types::now_ms;

/// Prints `value` as indented JSON on stdout (every `--json` output).
pub fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("json"));
}

pub fn run_detail_json(detail: &pb::GetRunResponse) -> Value {
    let run = detail.run.clone().unwrap_or_default();
    let mut value = run_json(&run);
    let object = value.as_object_mut().expect("run json is an object");
    object.insert("argv".into(), json!(run.argv));
    object.insert(
        "attempt_history".into(),
        Value::Array(
            run.attempts
                .iter()
                .map(|a| {
                    json!({
                        "number": a.number,
                        "agent": a.agent,
                        "outcome": a.outcome,
                        "exit_code": a.exit_code,
                        "signal": a.signal,
                        "reason": a.reason,
                        "started_ms": a.started_ms,
                        "ended_ms": ms_or_null(a.ended_ms),
                        "started": rfc3339_or_null(a.started_ms),
                        "ended": rfc3339_or_null(a.ended_ms),
                        "gpus": a.gpus,
                        "log_bytes": a.log_bytes,
                        "metric_points": a.metric_points,
                        "log_capped": a.log_capped,
                        "points_capped": a.points_capped,
                    })
                })
                .collect(),
        ),
    );
    object.insert(
        "artifacts".into(),
        Value::Array(
            detail
                .artifacts
                .iter()
                .map(crate::artifacts::artifact_json)
                .collect(),
        ),
    );
    object.insert(
        "metric_history".into(),
        Value::Array(
            detail
                .metrics
                .iter()
                .map(|m| {
                    json!({
                        "attempt": m.attempt,
                        "total_points": m.total_points,
                        "downsampled": m.downsampled,
                        "points": m.points.iter().map(|p| json!({
                            "step": p.step,
                            "time_ms": p.time_ms,
                            "values": sorted(&p.values).into_iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        ),
    );
    object.insert(
        "log_tail".into(),
        Value::Array(
            detail
                .log_tail
                .iter()
                .map(|l| json!({"time_ms": l.time_ms, "stream": l.stream, "text": l.text}))
                .collect(),
        ),
    );
    object.insert("log_lines".into(), json!(detail.log_lines));
    let text_or_null = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    object.insert("sweep_name".into(), json!(detail.sweep_name));
    object.insert("owner".into(), text_or_null(&detail.owner));
    object.insert("git_commit".into(), text_or_null(&detail.git_commit));
    object.insert("git_dirty".into(), json!(detail.git_dirty));
    object.insert(
        "objective".into(),
        if detail.sweep_metric.is_empty() {
            Value::Null
        } else {
            json!({
                "name": detail.sweep_metric,
                "goal": detail.sweep_goal,
                "final": run.last_metrics.get(&detail.sweep_metric),
                "best": detail.best_value,
            })
        },
    );
    let by_name = |m: &std::collections::HashMap<String, f64>| -> Value {
        sorted(m)
            .into_iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<Map<_, _>>()
            .into()
    };
    object.insert("min_metrics".into(), by_name(&detail.min_metrics));
    object.insert("max_metrics".into(), by_name(&detail.max_metrics));
    value
}

pub fn agent_json(agent: &pb::Agent) -> Value {
    json!({
        "name": agent.name,
        "hostname": agent.hostname,
        "connected": agent.connected,
        "slots": agent.slots,
        "free_slots": agent.free_slots,
        "labels": sorted(&agent.labels).into_iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
        "gpus": agent.gpus.iter().map(|g| json!({
            "index": g.index,
            "uuid": g.uuid,
            "name": g.name,
            "memory_mib": g.memory_mib,
            "run": agent.gpu_runs.get(&g.index),
        })).collect::<Vec<_>>(),
        "runs": agent.runs,
        "last_seen_ms": ms_or_null(agent.last_seen_ms),
        "quarantined": agent.quarantined,
        "quarantine_reason": if agent.quarantine_reason.is_empty() { Value::Null } else { json!(agent.quarantine_reason) },
        "draining": agent.draining,
        "version": agent.version,
    })
}

pub fn sorted<K: Ord, V>(map: &std::collections::HashMap<K, V>) -> Vec<(&K, &V)> {
    let mut entries: Vec<(&K, &V)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Prints an aligned table; the last column is not padded.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(headers, rows));
}

/// An aligned table without borders: columns two spaces apart, each as wide as its widest
/// cell as a terminal shows it (comfy-table measures display width, so names in CJK or
/// with emoji line up), no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers.iter().copied());
    for row in rows {
        table.add_row(row.iter().map(String::as_str));
    }
    let last = headers.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i < last { 2 } else { 0 }));
    }
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `lr=0.001 layers=4`.
pub fn params_text(run: &pb::Run) -> String {
    sorted(&run.params)
        .into_iter()
        .map(|(k, v)| format!("{k}={}", param_text(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One row per metric: its summary value, which summary that is, and last / min / max,
/// each with `@step` when the point carried one.
pub fn summary_rows(run: &pb::Run) -> Vec<Vec<String>> {
    let at = |value: f64, step: Option<i64>| match step {
        Some(step) => format!("{} @{step}", format_number(value)),
        None => format_number(value),
    };
    sorted(&run.summaries)
        .into_iter()
        .map(|(name, s)| {
            vec![
                name.clone(),
                format_number(s.value),
                s.summary.clone(),
                at(s.last, s.last_step),
                at(s.min, s.min_step),
                at(s.max, s.max_step),
            ]
        })
        .collect()
}

/// The value that stands for a run's metric: its summary value (last, unless its sweep
/// chose another), else the last value.
pub fn metric_value(run: &pb::Run, name: &str) -> Option<f64> {
    match run.summaries.get(name) {
        Some(summary) => Some(summary.value),
        None => run.last_metrics.get(name).copied(),
    }
}

pub fn metrics_text(run: &pb::Run) -> String {
    sorted(&run.last_metrics)
        .into_iter()
        .map(|(k, v)| format!("{k}={}", format_number(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn counts_text(counts: &pb::RunCounts) -> String {
    let mut parts = Vec::new();
    for (name, value) in [
        ("queued", counts.queued),
        ("running", counts.running),
        ("completed", counts.completed),
        ("failed", counts.failed),
        ("stopped", counts.stopped),
        ("cancelled", counts.cancelled),
    ] {
        if value > 0 {
            parts.push(format!("{value} {name}"));
        }
    }
    if parts.is_empty() {
        "no runs yet".into()
    } else {
        parts.join(", ")
    }
}

pub fn exit_text(run: &pb::Run) -> String {
    match (run.exit_code, run.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn times_read_as_rfc3339_for_programs_and_as_durations_for_people() {
        assert_eq!(
            rfc3339_or_null(1_796_469_698_743),
            json!("2026-12-05T11:21:38.743Z")
        );
        assert_eq!(rfc3339_or_null(0), Value::Null);
        assert_eq!(local_time(0), "");
        assert!(local_time(1_796_469_698_743).starts_with("2026-12-0"));
        assert_eq!(duration_text(850), "850 ms");
        assert_eq!(duration_text(12_400), "12.4 s");
        assert_eq!(duration_text(185_000), "3 min 05 s");
        assert_eq!(duration_text(7_620_000), "2 h 07 min");
        assert_eq!(duration_text(273_600_000), "3 d 04 h");
        assert_eq!(duration_text(-5), "0 ms");
    }
    use super::*;

    #[test]
    fn numbers_are_short_and_exact_enough() {
        assert_eq!(format_number(0.5), "0.5");
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(0.0001), "1.000e-4");
        assert_eq!(format_number(123.456789), "123.4568");
    }

    #[test]
    fn table_aligns_columns() {
        let text = table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(text, "a    bb\nxxx  y\n");
    }

    #[test]
    fn table_aligns_by_display_width() {
        // Each CJK character takes two columns of a terminal.
        let text = table(
            &["name", "x"],
            &[
                vec!["学习率".into(), "1".into()],
                vec!["ab".into(), "2".into()],
            ],
        );
        assert_eq!(text, "name    x\n学习率  1\nab      2\n");
    }
}
