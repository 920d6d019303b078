//! The one conversion between the protocol's domain types and the `ladder.v1` messages,
//! both ways. Decoding checks what the other side sent against the limits of
//! [`ladder_limits`] and names the field it refuses.

use std::collections::BTreeMap;
use std::time::Duration;

use ladder_proto::v1 as pb;
use prost::encoding::{btree_map, double, int64, string};

use crate::{
    AgentSecret, Assignment, Finish, FinishOutcome, FromAgent, Gpu, Lease, LogLine, MetricPoint,
    ProtocolError, Registration, RunEvent, RunEventMessage, ToAgent,
};

/// Refuses a text field longer than `max` bytes, naming the field.
pub fn check_len(field: &str, text: &str, max: usize) -> Result<(), ProtocolError> {
    if text.len() > max {
        return Err(ProtocolError(format!(
            "{field} is {} bytes; the limit is {max}",
            text.len()
        )));
    }
    Ok(())
}

/// Refuses a count above `max`, naming the field.
pub fn check_count(field: &str, count: usize, max: usize) -> Result<(), ProtocolError> {
    if count > max {
        return Err(ProtocolError(format!(
            "{field} has {count} entries; the limit is {max}"
        )));
    }
    Ok(())
}

// ----- parts -----

/// A lease from its message; `field` names the message in the error.
pub fn lease_from_pb(field: &str, lease: Option<pb::Lease>) -> Result<Lease, ProtocolError> {
    let lease = lease.ok_or_else(|| ProtocolError(format!("{field} has no lease")))?;
    if lease.run_id.is_empty() || lease.attempt == 0 {
        return Err(ProtocolError(format!(
            "{field}: invalid lease: run {:?} attempt {}",
            lease.run_id, lease.attempt
        )));
    }
    check_len(
        &format!("{field}.lease.run_id"),
        &lease.run_id,
        ladder_limits::MAX_ID_BYTES,
    )?;
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

pub fn gpu_to_pb(gpu: &Gpu) -> pb::Gpu {
    pb::Gpu {
        index: gpu.index,
        uuid: gpu.uuid.clone(),
        name: gpu.name.clone(),
        memory_mib: gpu.memory_mib,
    }
}

pub fn gpu_from_pb(gpu: pb::Gpu) -> Gpu {
    Gpu {
        index: gpu.index,
        uuid: gpu.uuid,
        name: gpu.name,
        memory_mib: gpu.memory_mib,
    }
}

/// A metric point as received; non-finite values cannot be ranked or plotted and are
/// dropped here.
pub fn point_from_pb(point: pb::MetricPoint) -> MetricPoint {
    MetricPoint {
        step: point.step,
        values: point
            .values
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .collect(),
        time_ms: point.time_ms,
    }
}

pub fn point_to_pb(point: MetricPoint) -> pb::MetricPoint {
    pb::MetricPoint {
        step: point.step,
        values: point.values.into_iter().collect(),
        time_ms: point.time_ms,
    }
}

pub fn log_from_pb(line: pb::LogLine) -> LogLine {
    LogLine {
        time_ms: line.time_ms,
        stream: line.stream,
        text: line.text,
    }
}

pub fn log_to_pb(line: LogLine) -> pb::LogLine {
    pb::LogLine {
        time_ms: line.time_ms,
        stream: line.stream,
        text: line.text,
    }
}

/// Bytes `point` takes encoded as a `MetricPoint` message (without the framing of the
/// field that holds it), computed without building the message.
pub fn point_encoded_len(point: &MetricPoint) -> usize {
    point.step.map_or(0, |step| int64::encoded_len(1, &step))
        + btree_map::encoded_len(string::encoded_len, double::encoded_len, 2, &point.values)
        + if point.time_ms != 0 {
            int64::encoded_len(3, &point.time_ms)
        } else {
            0
        }
}

/// Bytes `line` takes encoded as a `LogLine` message (without the framing of the field
/// that holds it), computed without building the message.
pub fn log_line_encoded_len(line: &LogLine) -> usize {
    (if line.time_ms != 0 {
        int64::encoded_len(1, &line.time_ms)
    } else {
        0
    }) + if line.stream.is_empty() {
        0
    } else {
        string::encoded_len(2, &line.stream)
    } + if line.text.is_empty() {
        0
    } else {
        string::encoded_len(3, &line.text)
    }
}

fn outcome_from_pb(outcome: i32) -> Result<FinishOutcome, ProtocolError> {
    match pb::RunOutcome::try_from(outcome) {
        Ok(pb::RunOutcome::Completed) => Ok(FinishOutcome::Completed),
        Ok(pb::RunOutcome::Failed) => Ok(FinishOutcome::Failed),
        Ok(pb::RunOutcome::Stopped) => Ok(FinishOutcome::Stopped),
        Ok(pb::RunOutcome::Released) => Ok(FinishOutcome::Released),
        _ => Err(ProtocolError(format!("unknown run outcome {outcome}"))),
    }
}

fn outcome_to_pb(outcome: FinishOutcome) -> pb::RunOutcome {
    match outcome {
        FinishOutcome::Completed => pb::RunOutcome::Completed,
        FinishOutcome::Failed => pb::RunOutcome::Failed,
        FinishOutcome::Stopped => pb::RunOutcome::Stopped,
        FinishOutcome::Released => pb::RunOutcome::Released,
    }
}

// ----- agent to coordinator -----

impl TryFrom<pb::Register> for Registration {
    type Error = ProtocolError;
    fn try_from(register: pb::Register) -> Result<Self, Self::Error> {
        let max_name = ladder_limits::MAX_AGENT_NAME_BYTES;
        if register.name.is_empty() || register.name.len() > max_name {
            return Err(ProtocolError(format!(
                "agent name must be 1 to {max_name} bytes long"
            )));
        }
        check_len(
            "register.hostname",
            &register.hostname,
            ladder_limits::MAX_HOSTNAME_BYTES,
        )?;
        check_len(
            "register.version",
            &register.version,
            ladder_limits::MAX_VERSION_BYTES,
        )?;
        check_count(
            "register.labels",
            register.labels.len(),
            ladder_limits::MAX_LABELS,
        )?;
        for (key, value) in &register.labels {
            if key.is_empty() {
                return Err(ProtocolError(
                    "register.labels: a label key is empty".into(),
                ));
            }
            check_len(
                "register.labels key",
                key,
                ladder_limits::MAX_LABEL_KEY_BYTES,
            )?;
            check_len(
                &format!("register.labels[{key}]"),
                value,
                ladder_limits::MAX_LABEL_VALUE_BYTES,
            )?;
        }
        if register.queue_depth > ladder_limits::MAX_AGENT_SLOTS {
            return Err(ProtocolError(format!(
                "register.queue_depth is {}; the limit is {}",
                register.queue_depth,
                ladder_limits::MAX_AGENT_SLOTS
            )));
        }
        if register.slots > ladder_limits::MAX_AGENT_SLOTS {
            return Err(ProtocolError(format!(
                "register.slots is {}; the limit is {}",
                register.slots,
                ladder_limits::MAX_AGENT_SLOTS
            )));
        }
        check_count(
            "register.gpus",
            register.gpus.len(),
            ladder_limits::MAX_GPUS_PER_AGENT,
        )?;
        let mut indices = std::collections::BTreeSet::new();
        for gpu in &register.gpus {
            check_len(
                "register.gpus.uuid",
                &gpu.uuid,
                ladder_limits::MAX_GPU_TEXT_BYTES,
            )?;
            check_len(
                "register.gpus.name",
                &gpu.name,
                ladder_limits::MAX_GPU_TEXT_BYTES,
            )?;
            if !indices.insert(gpu.index) {
                return Err(ProtocolError(format!(
                    "register.gpus: GPU index {} is reported twice",
                    gpu.index
                )));
            }
        }
        check_count(
            "register.held",
            register.held.len(),
            ladder_limits::MAX_HELD_LEASES,
        )?;
        let held = register
            .held
            .into_iter()
            .map(|lease| lease_from_pb("register.held", Some(lease)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Registration {
            name: register.name,
            labels: register.labels.into_iter().collect(),
            slots: register.slots,
            queue_depth: register.queue_depth,
            gpus: register.gpus.into_iter().map(gpu_from_pb).collect(),
            held,
            hostname: register.hostname,
            version: register.version,
            secret: AgentSecret::presented("register.secret", register.secret)?,
        })
    }
}

impl From<Registration> for pb::Register {
    fn from(registration: Registration) -> Self {
        pb::Register {
            name: registration.name,
            labels: registration.labels.into_iter().collect(),
            slots: registration.slots,
            queue_depth: registration.queue_depth,
            gpus: registration.gpus.iter().map(gpu_to_pb).collect(),
            held: registration.held.into_iter().map(lease_to_pb).collect(),
            hostname: registration.hostname,
            version: registration.version,
            secret: registration
                .secret
                .map(|secret| secret.0)
                .unwrap_or_default(),
        }
    }
}

/// The first message of a session.
pub fn register_message(registration: Registration) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Register(registration.into())),
    }
}

impl TryFrom<pb::AgentMessage> for FromAgent {
    type Error = ProtocolError;
    fn try_from(message: pb::AgentMessage) -> Result<Self, Self::Error> {
        use pb::agent_message::Kind;
        match message.kind {
            Some(Kind::Heartbeat(_)) => Ok(FromAgent::Heartbeat),
            Some(Kind::Drain(drain)) => Ok(FromAgent::Drain {
                forget: drain.forget,
            }),
            Some(Kind::Register(_)) => Err(ProtocolError(
                "register is only valid as the first message of a session".into(),
            )),
            Some(Kind::RunEvent(event)) => {
                use pb::run_event::Kind as EventKind;
                let lease = lease_from_pb("run event", event.lease)?;
                if event.seq == 0 {
                    return Err(ProtocolError("run event seq starts at 1".into()));
                }
                let event_kind = match event.kind {
                    Some(EventKind::Started(started)) => RunEvent::Started {
                        pid: started.pid,
                        work_dir: started.work_dir,
                    },
                    Some(EventKind::Output(output)) => RunEvent::Output {
                        metrics: output.metrics.into_iter().map(point_from_pb).collect(),
                        logs: output.logs.into_iter().map(log_from_pb).collect(),
                        // A broken agent's entries outside the protocol's limits are
                        // dropped, like non-finite metric values.
                        info: output
                            .info
                            .into_iter()
                            .filter(|(name, value)| {
                                ladder_metrics::line::check_info_entry(name, value).is_ok()
                            })
                            .collect(),
                    },
                    Some(EventKind::Finished(finished)) => RunEvent::Finished(Finish {
                        outcome: outcome_from_pb(finished.outcome)?,
                        exit_code: finished.exit_code,
                        signal: finished.signal,
                        reason: finished.reason,
                    }),
                    None => return Err(ProtocolError("run event without content".into())),
                };
                Ok(FromAgent::RunEvent(RunEventMessage {
                    lease,
                    seq: event.seq,
                    event: event_kind,
                }))
            }
            None => Err(ProtocolError("empty agent message".into())),
        }
    }
}

impl From<RunEventMessage> for pb::RunEvent {
    fn from(message: RunEventMessage) -> Self {
        use pb::run_event::Kind;
        let kind = match message.event {
            RunEvent::Started { pid, work_dir } => Kind::Started(pb::RunStarted { pid, work_dir }),
            RunEvent::Output {
                metrics,
                logs,
                info,
            } => Kind::Output(pb::RunOutput {
                metrics: metrics.into_iter().map(point_to_pb).collect(),
                logs: logs.into_iter().map(log_to_pb).collect(),
                info: info.into_iter().collect(),
            }),
            RunEvent::Finished(finish) => Kind::Finished(pb::RunFinished {
                outcome: outcome_to_pb(finish.outcome) as i32,
                exit_code: finish.exit_code,
                signal: finish.signal,
                reason: finish.reason,
            }),
        };
        pb::RunEvent {
            lease: Some(lease_to_pb(message.lease)),
            seq: message.seq,
            kind: Some(kind),
        }
    }
}

impl From<FromAgent> for pb::AgentMessage {
    fn from(message: FromAgent) -> Self {
        use pb::agent_message::Kind;
        let kind = match message {
            FromAgent::Heartbeat => Kind::Heartbeat(pb::Heartbeat {}),
            FromAgent::Drain { forget } => Kind::Drain(pb::Drain { forget }),
            FromAgent::RunEvent(event) => Kind::RunEvent(event.into()),
        };
        pb::AgentMessage { kind: Some(kind) }
    }
}

// ----- coordinator to agent -----

impl From<ToAgent> for pb::CoordinatorMessage {
    fn from(message: ToAgent) -> Self {
        use pb::coordinator_message::Kind;
        let kind = match message {
            ToAgent::Registered {
                heartbeat_interval,
                lease_timeout,
                agent_secret,
            } => Kind::Registered(pb::Registered {
                heartbeat_interval_ms: heartbeat_interval.as_millis() as u64,
                lease_timeout_ms: lease_timeout.as_millis() as u64,
                agent_secret: agent_secret.map(|secret| secret.0).unwrap_or_default(),
            }),
            ToAgent::Assign(Assignment {
                lease,
                sweep_id,
                argv,
                params_json,
                gpus,
                env,
                launch,
                artifacts,
            }) => Kind::Assign(pb::Assign {
                lease: Some(lease_to_pb(lease)),
                sweep_id,
                argv,
                params_json,
                gpus,
                env: env.into_iter().collect(),
                launch: launch.as_str().to_string(),
                artifacts,
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
            ToAgent::Revoke { lease, reason } => Kind::Revoke(pb::RevokeRun {
                lease: Some(lease_to_pb(lease)),
                reason,
            }),
        };
        pb::CoordinatorMessage { kind: Some(kind) }
    }
}

/// The lease of an assignment, read before the rest of it: an agent that cannot take
/// an assignment in (a field it does not know) reports that attempt failed instead of
/// leaving it to hang.
pub fn assignment_lease(message: &pb::CoordinatorMessage) -> Option<Lease> {
    match &message.kind {
        Some(pb::coordinator_message::Kind::Assign(assign)) => {
            lease_from_pb("assign", assign.lease.clone()).ok()
        }
        _ => None,
    }
}

impl TryFrom<pb::CoordinatorMessage> for ToAgent {
    type Error = ProtocolError;
    fn try_from(message: pb::CoordinatorMessage) -> Result<Self, Self::Error> {
        use pb::coordinator_message::Kind;
        match message.kind {
            Some(Kind::Registered(registered)) => Ok(ToAgent::Registered {
                heartbeat_interval: Duration::from_millis(registered.heartbeat_interval_ms),
                lease_timeout: Duration::from_millis(registered.lease_timeout_ms),
                agent_secret: AgentSecret::presented(
                    "registered.agent_secret",
                    registered.agent_secret,
                )?,
            }),
            Some(Kind::Assign(assign)) => {
                let lease = lease_from_pb("assign", assign.lease)?;
                let launch = match assign.launch.as_str() {
                    "" => ladder_spec::Launch::Single,
                    name => ladder_spec::Launch::from_name(name).ok_or_else(|| {
                        ProtocolError(format!(
                            "assign.launch {name:?} is not a launch mode this agent knows ({})",
                            ladder_spec::Launch::NAMES.join(", ")
                        ))
                    })?,
                };
                Ok(ToAgent::Assign(Assignment {
                    lease,
                    sweep_id: assign.sweep_id,
                    argv: assign.argv,
                    params_json: assign.params_json,
                    gpus: assign.gpus,
                    env: assign.env.into_iter().collect::<BTreeMap<_, _>>(),
                    launch,
                    artifacts: assign
                        .artifacts
                        .into_iter()
                        .take(ladder_limits::MAX_DECLARED_ARTIFACTS)
                        .collect(),
                }))
            }
            Some(Kind::Stop(stop)) => Ok(ToAgent::Stop {
                lease: lease_from_pb("stop", stop.lease)?,
                reason: stop.reason,
            }),
            Some(Kind::Ack(ack)) => Ok(ToAgent::Ack {
                lease: lease_from_pb("ack", ack.lease)?,
                seq: ack.seq,
            }),
            Some(Kind::Reject(reject)) => Ok(ToAgent::Reject {
                lease: lease_from_pb("reject", reject.lease)?,
                reason: reject.reason,
            }),
            Some(Kind::Revoke(revoke)) => Ok(ToAgent::Revoke {
                lease: lease_from_pb("revoke", revoke.lease)?,
                reason: revoke.reason,
            }),
            None => Err(ProtocolError("empty coordinator message".into())),
        }
    }
}
