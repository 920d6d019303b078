//! Conversions between the `ladder.v1` messages and domain types. The only place that
//! touches generated types besides the thin gRPC adapters.

use ladder_proto::v1 as pb;
use ladder_shared::spec::{Goal, ParamValue};
use ladder_shared::types::{Gpu, RunStatus, SweepStatus};

use crate::error::CoordinatorError;
use crate::model::{AttemptRecord, RunRecord, StoredLogLine, StoredPoint, SweepRecord};
use crate::protocol::{
    Assignment, Finish, FinishOutcome, FromAgent, Lease, Registration, RunEvent, ToAgent,
};
use crate::scheduler::AgentView;

pub fn run_status_to_pb(status: RunStatus) -> pb::RunStatus {
    match status {
        RunStatus::Queued => pb::RunStatus::Queued,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Completed => pb::RunStatus::Completed,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Stopped => pb::RunStatus::Stopped,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    }
}

impl TryFrom<pb::RunStatus> for crate::RunStatusFilter {
    type Error = CoordinatorError;
    fn try_from(status: pb::RunStatus) -> Result<Self, Self::Error> {
        let status = match status {
            pb::RunStatus::Queued => RunStatus::Queued,
            pb::RunStatus::Running => RunStatus::Running,
            pb::RunStatus::Completed => RunStatus::Completed,
            pb::RunStatus::Failed => RunStatus::Failed,
            pb::RunStatus::Stopped => RunStatus::Stopped,
            pb::RunStatus::Cancelled => RunStatus::Cancelled,
            pb::RunStatus::Unspecified => {
                return Err(CoordinatorError::InvalidArgument(
                    "run status filter RUN_STATUS_UNSPECIFIED is not a status".into(),
                ))
            }
        };
        Ok(crate::RunStatusFilter(status))
    }
}

pub fn sweep_status_to_pb(status: SweepStatus) -> pb::SweepStatus {
    match status {
        SweepStatus::Running => pb::SweepStatus::Running,
        SweepStatus::Paused => pb::SweepStatus::Paused,
        SweepStatus::Completed => pb::SweepStatus::Completed,
        SweepStatus::Cancelled => pb::SweepStatus::Cancelled,
    }
}

pub fn param_to_pb(value: &ParamValue) -> pb::ParamValue {
    let kind = match value {
        ParamValue::Bool(b) => pb::param_value::Kind::BoolValue(*b),
        ParamValue::Int(i) => pb::param_value::Kind::IntValue(*i),
        ParamValue::Float(f) => pb::param_value::Kind::FloatValue(*f),
        ParamValue::Str(s) => pb::param_value::Kind::StringValue(s.clone()),
    };
    pb::ParamValue { kind: Some(kind) }
}

/// A sweep with its run counts.
pub fn sweep_to_pb(record: &SweepRecord, counts: pb::RunCounts) -> pb::Sweep {
    let spec = &record.spec;
    pb::Sweep {
        id: record.id.clone(),
        name: spec.name.clone(),
        project: spec.project.clone(),
        method: spec.method.as_str().to_string(),
        status: sweep_status_to_pb(record.status) as i32,
        metric_name: spec
            .metric
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        metric_goal: spec
            .metric
            .as_ref()
            .map(|m| match m.goal {
                Goal::Minimize => "minimize".to_string(),
                Goal::Maximize => "maximize".to_string(),
            })
            .unwrap_or_default(),
        parallel: spec.parallel,
        planned_runs: record.planned_runs,
        created_runs: record.created_runs,
        counts: Some(counts),
        created_ms: record.created_ms,
        ended_ms: record.ended_ms.unwrap_or(0),
        spec_yaml: record.yaml.clone(),
        file_name: record.file_name.clone(),
    }
}

pub fn count_runs(runs: &[RunRecord]) -> pb::RunCounts {
    let mut counts = pb::RunCounts::default();
    for run in runs {
        match run.status {
            RunStatus::Queued => counts.queued += 1,
            RunStatus::Running => counts.running += 1,
            RunStatus::Completed => counts.completed += 1,
            RunStatus::Failed => counts.failed += 1,
            RunStatus::Stopped => counts.stopped += 1,
            RunStatus::Cancelled => counts.cancelled += 1,
        }
    }
    counts
}

fn attempt_to_pb(attempt: &AttemptRecord) -> pb::Attempt {
    pb::Attempt {
        number: attempt.number,
        epoch: attempt.epoch,
        agent: attempt.agent.clone(),
        outcome: attempt.outcome.as_str().to_string(),
        exit_code: attempt.exit_code,
        signal: attempt.signal,
        reason: attempt.reason.clone(),
        started_ms: attempt.started_ms,
        ended_ms: attempt.ended_ms.unwrap_or(0),
    }
}

pub fn run_to_pb(run: &RunRecord) -> pb::Run {
    let last = run.current_attempt();
    pb::Run {
        id: run.id.clone(),
        sweep_id: run.sweep_id.clone(),
        index: run.index,
        params: run
            .params
            .iter()
            .map(|(k, v)| (k.clone(), param_to_pb(v)))
            .collect(),
        status: run_status_to_pb(run.status) as i32,
        agent: run.agent().unwrap_or_default().to_string(),
        attempts: run.attempts.iter().map(attempt_to_pb).collect(),
        last_metrics: run
            .last_metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        last_step: run.last_step,
        argv: run.argv.clone(),
        created_ms: run.created_ms,
        ended_ms: run.ended_ms.unwrap_or(0),
        exit_code: last.and_then(|a| a.exit_code),
        signal: last.and_then(|a| a.signal),
        project: run.project.clone(),
    }
}

pub fn point_to_pb(point: &StoredPoint) -> pb::MetricPoint {
    pb::MetricPoint {
        step: point.step,
        values: point.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        time_ms: point.time_ms,
    }
}

pub fn log_to_pb(line: &StoredLogLine) -> pb::LogLine {
    pb::LogLine {
        time_ms: line.time_ms,
        stream: line.stream.clone(),
        text: line.text.clone(),
    }
}

pub fn agent_to_pb(view: &AgentView) -> pb::Agent {
    let record = &view.record;
    pb::Agent {
        name: record.name.clone(),
        labels: record
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        slots: record.slots,
        free_slots: view.free_slots,
        gpus: record
            .gpus
            .iter()
            .map(|g| pb::Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                memory_mib: g.memory_mib,
            })
            .collect(),
        connected: view.connected,
        last_seen_ms: record.last_seen_ms,
        runs: view.runs.clone(),
        hostname: record.hostname.clone(),
        version: record.version.clone(),
        quarantined: record.quarantined,
        quarantine_reason: record.quarantine_reason.clone().unwrap_or_default(),
        draining: view.draining,
    }
}

// ----- agent protocol -----

fn lease_from_pb(lease: Option<pb::Lease>) -> Result<Lease, CoordinatorError> {
    let lease = lease
        .ok_or_else(|| CoordinatorError::InvalidArgument("run event without a lease".into()))?;
    if lease.run_id.is_empty() || lease.attempt == 0 {
        return Err(CoordinatorError::InvalidArgument(format!(
            "invalid lease: run {:?} attempt {}",
            lease.run_id, lease.attempt
        )));
    }
    Ok(Lease {
        run_id: lease.run_id,
        attempt: lease.attempt,
        epoch: lease.epoch,
    })
}

fn lease_to_pb(lease: Lease) -> pb::Lease {
    pb::Lease {
        run_id: lease.run_id,
        attempt: lease.attempt,
        epoch: lease.epoch,
    }
}

/// Limits on what one agent message may carry.
pub const MAX_NAME_LEN: usize = 256;

impl TryFrom<pb::Register> for Registration {
    type Error = CoordinatorError;
    fn try_from(register: pb::Register) -> Result<Self, Self::Error> {
        if register.name.is_empty() || register.name.len() > MAX_NAME_LEN {
            return Err(CoordinatorError::InvalidArgument(format!(
                "agent name must be 1 to {MAX_NAME_LEN} bytes long"
            )));
        }
        let mut held = Vec::new();
        for lease in register.held {
            held.push(lease_from_pb(Some(lease))?);
        }
        Ok(Registration {
            name: register.name,
            labels: register.labels.into_iter().collect(),
            slots: register.slots,
            gpus: register
                .gpus
                .into_iter()
                .map(|g| Gpu {
                    index: g.index,
                    uuid: g.uuid,
                    name: g.name,
                    memory_mib: g.memory_mib,
                })
                .collect(),
            held,
            hostname: register.hostname,
            version: register.version,
        })
    }
}

fn point_from_pb(point: pb::MetricPoint) -> StoredPoint {
    StoredPoint {
        step: point.step,
        // Non-finite values cannot be ranked or plotted; they are dropped here.
        values: point
            .values
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .collect(),
        time_ms: point.time_ms,
    }
}

impl TryFrom<pb::AgentMessage> for FromAgent {
    type Error = CoordinatorError;
    fn try_from(message: pb::AgentMessage) -> Result<Self, Self::Error> {
        use pb::agent_message::Kind;
        match message.kind {
            Some(Kind::Heartbeat(_)) => Ok(FromAgent::Heartbeat),
            Some(Kind::Drain(_)) => Ok(FromAgent::Drain),
            Some(Kind::Register(_)) => Err(CoordinatorError::InvalidArgument(
                "register is only valid as the first message of a session".into(),
            )),
            Some(Kind::RunEvent(event)) => {
                use pb::run_event::Kind as EventKind;
                let lease = lease_from_pb(event.lease)?;
                if event.seq == 0 {
                    return Err(CoordinatorError::InvalidArgument(
                        "run event seq starts at 1".into(),
                    ));
                }
                let event_kind = match event.kind {
                    Some(EventKind::Started(started)) => RunEvent::Started {
                        pid: started.pid,
                        work_dir: started.work_dir,
                    },
                    Some(EventKind::Output(output)) => RunEvent::Output {
                        metrics: output.metrics.into_iter().map(point_from_pb).collect(),
                        logs: output
                            .logs
                            .into_iter()
                            .map(|l| StoredLogLine {
                                time_ms: l.time_ms,
                                stream: l.stream,
                                text: l.text,
                            })
                            .collect(),
                    },
                    Some(EventKind::Finished(finished)) => {
                        let outcome = match pb::RunOutcome::try_from(finished.outcome) {
                            Ok(pb::RunOutcome::Completed) => FinishOutcome::Completed,
                            Ok(pb::RunOutcome::Failed) => FinishOutcome::Failed,
                            Ok(pb::RunOutcome::Stopped) => FinishOutcome::Stopped,
                            Ok(pb::RunOutcome::Released) => FinishOutcome::Released,
                            _ => {
                                return Err(CoordinatorError::InvalidArgument(format!(
                                    "unknown run outcome {}",
                                    finished.outcome
                                )))
                            }
                        };
                        RunEvent::Finished(Finish {
                            outcome,
                            exit_code: finished.exit_code,
                            signal: finished.signal,
                            reason: finished.reason,
                        })
                    }
                    None => {
                        return Err(CoordinatorError::InvalidArgument(
                            "run event without content".into(),
                        ))
                    }
                };
                Ok(FromAgent::RunEvent {
                    lease,
                    seq: event.seq,
                    event: event_kind,
                })
            }
            None => Err(CoordinatorError::InvalidArgument(
                "empty agent message".into(),
            )),
        }
    }
}

impl From<ToAgent> for pb::CoordinatorMessage {
    fn from(message: ToAgent) -> Self {
        use pb::coordinator_message::Kind;
        let kind = match message {
            ToAgent::Registered {
                heartbeat_interval,
                lease_timeout,
            } => Kind::Registered(pb::Registered {
                heartbeat_interval_ms: heartbeat_interval.as_millis() as u64,
                lease_timeout_ms: lease_timeout.as_millis() as u64,
            }),
            ToAgent::Assign(Assignment {
                lease,
                sweep_id,
                argv,
                params_json,
                gpus,
                env,
            }) => Kind::Assign(pb::Assign {
                lease: Some(lease_to_pb(lease)),
                sweep_id,
                argv,
                params_json,
                gpus,
                env: env.into_iter().collect(),
            }),
            ToAgent::Stop { lease, reason } => Kind::Stop(pb::StopRun {
                lease: Some(lease_to_pb(lease)),
                reason,
            }),
            ToAgent::Ack { lease, seq } => Kind::Ack(pb::Ack {
                lease: Some(lease_to_pb(lease)),
                seq,
            }),
            ToAgent::Reject { lease, reason } => Kind::Reject(pb::RejectLease {
                lease: Some(lease_to_pb(lease)),
                reason,
            }),
        };
        pb::CoordinatorMessage { kind: Some(kind) }
    }
}
