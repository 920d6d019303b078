//! The JSON form of the read path's domain views, for the web API: the same fields the
//! gRPC messages of `convert` carry, named alike (see docs/reference/http-api.md).

use ladder_spec::{Goal, ParamValue};
use serde_json::{json, Map, Value};

use crate::model::{AttemptRecord, RunRecord, StoredLogLine, StoredPoint};
use crate::reads::{Leaderboard, PointsPage, RunCard, SweepView};
use crate::scheduler::AgentView;

fn goal(goal: Goal) -> &'static str {
    match goal {
        Goal::Minimize => "minimize",
        Goal::Maximize => "maximize",
    }
}

/// A number, or `null` for a value JSON cannot hold (NaN, infinities).
fn number(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

pub fn param(value: &ParamValue) -> Value {
    match value {
        ParamValue::Bool(b) => Value::Bool(*b),
        ParamValue::Int(i) => json!(i),
        ParamValue::Float(f) => number(*f),
        ParamValue::Str(s) => Value::String(s.clone()),
    }
}

/// A sweep with its run counts; `with_yaml`: with its sweep file.
pub fn sweep(view: &SweepView, with_yaml: bool) -> Value {
    let record = &view.record;
    let counts = &view.counts;
    let spec = &record.spec;
    let mut value = json!({
        "id": record.id,
        "name": spec.name,
        "project": spec.project,
        "method": spec.method.as_str(),
        "status": record.status.as_str(),
        "metric": spec.metric.as_ref().map(|m| json!({"name": m.name, "goal": goal(m.goal)})),
        "parallel": spec.parallel,
        "planned_runs": record.planned_runs,
        "created_runs": record.created_runs,
        "counts": {
            "queued": counts.queued,
            "running": counts.running,
            "completed": counts.completed,
            "failed": counts.failed,
            "stopped": counts.stopped,
            "cancelled": counts.cancelled,
        },
        "created_ms": record.created_ms,
        "ended_ms": record.ended_ms,
        "owner": record.owner,
        "file_name": record.file_name,
        "git_commit": record.git_commit,
        "git_dirty": record.git_dirty,
    });
    if with_yaml {
        value["yaml"] = Value::String(record.yaml.clone());
    }
    value
}

fn attempt(attempt: &AttemptRecord) -> Value {
    json!({
        "number": attempt.number,
        "agent": attempt.agent,
        "gpus": attempt.gpus,
        "outcome": attempt.outcome.as_str(),
        "exit_code": attempt.exit_code,
        "signal": attempt.signal,
        "reason": attempt.reason,
        "started_ms": attempt.started_ms,
        "ended_ms": attempt.ended_ms,
        "log_lines": attempt.log_lines,
        "metric_points": attempt.metric_points,
        "log_capped": attempt.log_capped,
        "points_capped": attempt.points_capped,
        "stop_reason": attempt.stop_reason,
    })
}

/// A run as listed: its parameters, status, attempts and the summary value of every
/// metric (the value queries and the leaderboard rank by).
pub fn run(run: &RunRecord) -> Value {
    let params: Map<String, Value> = run
        .params
        .iter()
        .map(|(name, value)| (name.clone(), param(value)))
        .collect();
    let metrics: Map<String, Value> = run
        .metric_values()
        .into_iter()
        .map(|(name, value)| (name, number(value)))
        .collect();
    json!({
        "id": run.id,
        "sweep_id": run.sweep_id,
        "project": run.project,
        "index": run.index,
        "params": params,
        "status": run.status.as_str(),
        "agent": run.agent(),
        "attempts": run.attempts.iter().map(attempt).collect::<Vec<_>>(),
        "metrics": metrics,
        "last_step": run.last_step,
        "argv": run.argv,
        "created_ms": run.created_ms,
        "ended_ms": run.ended_ms,
        "tags": run.tags,
        "notes": run.notes.iter().map(|n| json!({"id": n.id, "time_ms": n.time_ms, "author": n.author, "text": n.text})).collect::<Vec<_>>(),
        "info": run.info,
    })
}

pub fn point(point: &StoredPoint) -> Value {
    let values: Map<String, Value> = point
        .values
        .iter()
        .map(|(name, value)| (name.clone(), number(*value)))
        .collect();
    json!({"step": point.step, "time_ms": point.time_ms, "values": values})
}

pub fn log_line(line: &StoredLogLine) -> Value {
    json!({"time_ms": line.time_ms, "stream": line.stream, "text": line.text})
}

/// A run's card: the run, each attempt's metric series (downsampled as `GetRun`'s),
/// its log tail and what its sweep says about it.
pub fn card(card: &RunCard) -> Value {
    let number_map = |map: &std::collections::HashMap<String, f64>| -> Map<String, Value> {
        map.iter()
            .map(|(name, value)| (name.clone(), number(*value)))
            .collect()
    };
    json!({
        "run": run(&card.run),
        "series": card.series.iter().map(|s| json!({
            "attempt": s.attempt,
            "total_points": s.total_points,
            "downsampled": s.downsampled,
            "points": s.points.iter().map(point).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "log_tail": card.log_tail.iter().map(log_line).collect::<Vec<_>>(),
        "log_lines": card.log_lines,
        "sweep_name": card.sweep_name,
        "owner": card.owner,
        "git_commit": card.git_commit,
        "git_dirty": card.git_dirty,
        "sweep_metric": card.sweep_metric,
        "sweep_goal": card.sweep_goal,
        "best_value": card.best_value.map(number),
        "min_metrics": number_map(&card.min_metrics),
        "max_metrics": number_map(&card.max_metrics),
        "artifacts": card.run.artifacts.iter().map(|a| json!({
            "name": a.name, "size": a.size, "sha256": a.sha256, "attempt": a.attempt,
            "created_ms": a.created_ms,
        })).collect::<Vec<_>>(),
    })
}

pub fn points_page(page: &PointsPage) -> Value {
    json!({
        "attempt": page.attempt,
        "points": page.points.iter().map(point).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })
}

pub fn leaderboard(board: &Leaderboard) -> Value {
    let mut tasks: Vec<&String> = board.rows.iter().flat_map(|r| r.tasks.keys()).collect();
    tasks.sort();
    tasks.dedup();
    json!({
        "metric": board.metric,
        "goal": goal(board.goal),
        "tasks": tasks,
        "rows": board.rows.iter().enumerate().map(|(i, row)| json!({
            "rank": i + 1,
            "run": run(&row.run),
            "sweep_name": row.sweep_name,
            "value": number(row.value),
            "tasks": row.tasks.iter().map(|(k, v)| (k.clone(), number(*v))).collect::<Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn agent(view: &AgentView) -> Value {
    let record = &view.record;
    json!({
        "name": record.name,
        "hostname": record.hostname,
        "version": record.version,
        "labels": record.labels,
        "slots": record.slots,
        "free_slots": view.free_slots,
        "gpus": record.gpus.iter().map(|g| json!({
            "index": g.index, "name": g.name, "uuid": g.uuid, "memory_mib": g.memory_mib,
            "run": view.gpu_holders.get(&g.index),
        })).collect::<Vec<_>>(),
        "connected": view.connected,
        "draining": view.draining,
        "last_seen_ms": record.last_seen_ms,
        "runs": view.runs,
        "quarantined": record.quarantined,
        "quarantine_reason": record.quarantine_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_json_cannot_hold_become_null() {
        assert_eq!(number(f64::NAN), Value::Null);
        assert_eq!(number(f64::INFINITY), Value::Null);
        assert_eq!(number(0.5), json!(0.5));
        assert_eq!(param(&ParamValue::Int(3)), json!(3));
        assert_eq!(param(&ParamValue::Str("adamw".into())), json!("adamw"));
    }
}
