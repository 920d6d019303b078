//! Tests of `coordinator/src/convert.rs`.

use super::*;
use crate::protocol::{FinishOutcome, FromAgent, Registration, RunEvent, RunEventMessage};
use ladder_proto::v1::agent_message::Kind;
use ladder_proto::v1::run_event::Kind as EventKind;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use ladder_fuzz::fuzz;
use prost::Message;

fn valid_register(name: &str) -> pb::Register {
    pb::Register {
        name: name.into(),
        slots: 4,
        hostname: "gpu-01".into(),
        version: "1".into(),
        ..Default::default()
    }
}

#[test]
fn every_field_and_count_of_a_registration_is_bounded() {
    assert!(Registration::try_from(valid_register("a")).is_ok());
    let refused = |r: pb::Register, needle: &str| {
        let error = Registration::try_from(r).unwrap_err().to_string();
        assert!(error.contains(needle), "{needle}: {error}");
    };
    let mut r = valid_register("a");
    r.hostname = "h".repeat(2_500_000);
    refused(r, "register.hostname is 2500000 bytes; the limit is 255");
    let mut r = valid_register("a");
    r.version = "v".repeat(1000);
    refused(r, "register.version");
    let mut r = valid_register("a");
    r.slots = 4_000_000_000;
    refused(r, "register.slots is 4000000000; the limit is 1024");
    let mut r = valid_register("a");
    r.labels = (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
    refused(r, "register.labels has 100 entries; the limit is 64");
    let mut r = valid_register("a");
    r.labels = [("pool".to_string(), "x".repeat(10_000))].into();
    refused(r, "register.labels[pool]");
    let mut r = valid_register("a");
    r.gpus = (0..65)
        .map(|i| pb::Gpu {
            index: i,
            ..Default::default()
        })
        .collect();
    refused(r, "register.gpus has 65 entries; the limit is 64");
    let mut r = valid_register("a");
    r.gpus = vec![pb::Gpu::default(), pb::Gpu::default()];
    refused(r, "GPU index 0 is reported twice");
    let mut r = valid_register("a");
    r.gpus = vec![pb::Gpu {
        name: "n".repeat(300),
        ..Default::default()
    }];
    refused(r, "register.gpus.name");
    let mut r = valid_register("a");
    r.held = (0..3_000)
        .map(|i| pb::Lease {
            run_id: format!("r{i}"),
            attempt: 1,
            epoch: 1,
        })
        .collect();
    refused(r, "register.held has 3000 entries");
}

fn valid_lease(lease: &Option<pb::Lease>) -> bool {
    lease.as_ref().is_some_and(|l| {
        !l.run_id.is_empty() && l.run_id.len() <= ladder_limits::MAX_ID_BYTES && l.attempt >= 1
    })
}

/// The documented properties of `FromAgent::try_from`.
fn check_agent_message(message: pb::AgentMessage) -> Result<(), TestCaseError> {
    let original = message.clone();
    match (FromAgent::try_from(message), &original.kind) {
        (Ok(FromAgent::Heartbeat), Some(Kind::Heartbeat(_))) => {}
        (Ok(FromAgent::Drain { forget }), Some(Kind::Drain(raw))) => {
            prop_assert_eq!(forget, raw.forget);
        }
        (
            Ok(FromAgent::RunEvent(RunEventMessage { lease, seq, event })),
            Some(Kind::RunEvent(raw)),
        ) => {
            prop_assert!(!lease.run_id.is_empty());
            prop_assert!(lease.attempt >= 1);
            prop_assert!(seq >= 1);
            prop_assert_eq!(seq, raw.seq);
            match (event, &raw.kind) {
                (RunEvent::Started { .. }, Some(EventKind::Started(_))) => {}
                (
                    RunEvent::Output {
                        metrics,
                        logs,
                        info,
                    },
                    Some(EventKind::Output(output)),
                ) => {
                    // Exactly the entries within the protocol's limits survive.
                    for (name, value) in &output.info {
                        let valid = !name.is_empty() && name.len() <= 256 && value.len() <= 4096;
                        prop_assert_eq!(info.get(name), valid.then_some(value));
                    }
                    prop_assert!(info.len() <= output.info.len());
                    prop_assert_eq!(metrics.len(), output.metrics.len());
                    prop_assert_eq!(logs.len(), output.logs.len());
                    for point in &metrics {
                        for (name, value) in &point.values {
                            prop_assert!(value.is_finite(), "{} = {}", name, value);
                        }
                    }
                    // Every finite value survives.
                    let finite_in: usize = output
                        .metrics
                        .iter()
                        .map(|p| p.values.values().filter(|v| v.is_finite()).count())
                        .sum();
                    let out: usize = metrics.iter().map(|p| p.values.len()).sum();
                    prop_assert_eq!(finite_in, out);
                }
                (RunEvent::Finished(finish), Some(EventKind::Finished(raw))) => {
                    let expected = match pb::RunOutcome::try_from(raw.outcome) {
                        Ok(pb::RunOutcome::Completed) => FinishOutcome::Completed,
                        Ok(pb::RunOutcome::Failed) => FinishOutcome::Failed,
                        Ok(pb::RunOutcome::Stopped) => FinishOutcome::Stopped,
                        Ok(pb::RunOutcome::Released) => FinishOutcome::Released,
                        other => {
                            return Err(TestCaseError::fail(format!(
                                "outcome {} ({other:?}) accepted",
                                raw.outcome
                            )))
                        }
                    };
                    prop_assert_eq!(finish.outcome, expected);
                }
                (event, kind) => {
                    return Err(TestCaseError::fail(format!("{kind:?} became {event:?}")))
                }
            }
        }
        (Ok(converted), kind) => {
            return Err(TestCaseError::fail(format!(
                "{kind:?} became {converted:?}"
            )))
        }
        (Err(error), kind) => {
            let text = error.to_string();
            prop_assert!(!text.is_empty());
            // Accepting would have been wrong: say why this one is invalid.
            if let Some(Kind::RunEvent(raw)) = kind {
                if valid_lease(&raw.lease) && raw.seq >= 1 {
                    if let Some(EventKind::Finished(finished)) = &raw.kind {
                        prop_assert!(
                            text.contains(&finished.outcome.to_string()),
                            "error {:?} does not name outcome {}",
                            text,
                            finished.outcome
                        );
                    } else {
                        prop_assert!(raw.kind.is_none(), "{:?} rejected: {}", raw, text);
                    }
                }
            } else {
                prop_assert!(
                    matches!(kind, None | Some(Kind::Register(_))),
                    "{:?} rejected: {}",
                    kind,
                    text
                );
            }
        }
    }
    Ok(())
}

/// Whether every field and count of `register` other than its name and leases is
/// within the documented limits.
fn fields_within_limits(register: &pb::Register) -> bool {
    let mut indices = std::collections::BTreeSet::new();
    register.hostname.len() <= ladder_limits::MAX_HOSTNAME_BYTES
        && register.version.len() <= ladder_limits::MAX_VERSION_BYTES
        && register.labels.len() <= ladder_limits::MAX_LABELS
        && register.labels.iter().all(|(k, v)| {
            !k.is_empty()
                && k.len() <= ladder_limits::MAX_LABEL_KEY_BYTES
                && v.len() <= ladder_limits::MAX_LABEL_VALUE_BYTES
        })
        && register.slots <= ladder_limits::MAX_AGENT_SLOTS
        && register.gpus.len() <= ladder_limits::MAX_GPUS_PER_AGENT
        && register.gpus.iter().all(|g| {
            g.uuid.len() <= ladder_limits::MAX_GPU_TEXT_BYTES
                && g.name.len() <= ladder_limits::MAX_GPU_TEXT_BYTES
                && indices.insert(g.index)
        })
        && register.held.len() <= ladder_limits::MAX_HELD_LEASES
}

fn check_register(register: pb::Register) -> Result<(), TestCaseError> {
    let original = register.clone();
    match Registration::try_from(register) {
        Ok(registration) => {
            prop_assert!(!registration.name.is_empty());
            prop_assert!(registration.name.len() <= MAX_NAME_LEN);
            prop_assert!(fields_within_limits(&original));
            prop_assert_eq!(registration.held.len(), original.held.len());
            for lease in &registration.held {
                prop_assert!(!lease.run_id.is_empty() && lease.attempt >= 1);
            }
        }
        Err(error) => {
            let valid_name = !original.name.is_empty() && original.name.len() <= MAX_NAME_LEN;
            let valid_held = original.held.iter().all(|l| valid_lease(&Some(l.clone())));
            prop_assert!(
                !(valid_name && valid_held && fields_within_limits(&original)),
                "valid register rejected: {}",
                error
            );
        }
    }
    Ok(())
}

fn check_list_runs(request: pb::ListRunsRequest) -> Result<(), TestCaseError> {
    match crate::reads::RunQuery::parse(&request) {
        Ok(query) => {
            prop_assert_eq!(query.statuses.len(), request.statuses.len());
            for raw in &request.statuses {
                prop_assert!((1..=6).contains(raw), "status {} accepted", raw);
            }
            prop_assert!(request.r#where.len() <= ladder_limits::MAX_QUERY_BYTES);
            if let Some(filter) = &query.filter {
                prop_assert!(filter.depth() <= ladder_query::MAX_TREE_DEPTH);
            }
            prop_assert!(query.sort.len() <= ladder_limits::MAX_SORT_KEYS);
            prop_assert!(request.cursor.len() <= ladder_limits::MAX_CURSOR_BYTES);
        }
        Err(error) => {
            let text = error.to_string();
            if let Some(raw) = request.statuses.iter().find(|raw| !(1..=6).contains(*raw)) {
                // The first bad status is what is reported (statuses are checked first).
                let named = if *raw == 0 {
                    "RUN_STATUS_UNSPECIFIED".to_string()
                } else {
                    raw.to_string()
                };
                prop_assert!(text.contains(&named), "{}", text);
            }
        }
    }
    Ok(())
}

/// Floats a program or a broken agent could send.
fn hostile_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            -0.0,
            0.0,
            2f64.powi(70),
        ]),
        any::<f64>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,12}",
        "\\PC{0,20}",
        (250..300usize).prop_map(|n| "n".repeat(n)),
    ]
}

fn lease() -> impl Strategy<Value = Option<pb::Lease>> {
    prop::option::weighted(
        0.9,
        (
            text(),
            prop_oneof![Just(0u32), Just(1u32), Just(2u32), any::<u32>()],
            any::<u64>(),
        )
            .prop_map(|(run_id, attempt, epoch)| pb::Lease {
                run_id,
                attempt,
                epoch,
            }),
    )
}

fn metric_point() -> impl Strategy<Value = pb::MetricPoint> {
    (
        prop::option::of(any::<i64>()),
        prop::collection::hash_map(text(), hostile_f64(), 0..5),
        any::<i64>(),
    )
        .prop_map(|(step, values, time_ms)| pb::MetricPoint {
            step,
            values: values.into_iter().collect(),
            time_ms,
        })
}

fn outcome() -> impl Strategy<Value = i32> {
    prop_oneof![-2..7i32, Just(i32::MAX), Just(i32::MIN), any::<i32>()]
}

fn run_event_kind() -> impl Strategy<Value = Option<EventKind>> {
    prop_oneof![
        1 => Just(None),
        2 => (any::<u32>(), text())
            .prop_map(|(pid, work_dir)| Some(EventKind::Started(pb::RunStarted { pid, work_dir }))),
        4 => (
            prop::collection::vec(metric_point(), 0..4),
            prop::collection::vec(
                (any::<i64>(), text(), text())
                    .prop_map(|(time_ms, stream, text)| pb::LogLine { time_ms, stream, text }),
                0..4,
            ),
            prop::collection::hash_map(
                text(),
                prop_oneof![text(), (4090..4100usize).prop_map(|n| "v".repeat(n))],
                0..4,
            ),
        )
            .prop_map(|(metrics, logs, info)| {
                Some(EventKind::Output(pb::RunOutput { metrics, logs, info }))
            }),
        3 => (outcome(), any::<Option<i32>>(), any::<Option<i32>>(), text()).prop_map(
            |(outcome, exit_code, signal, reason)| {
                Some(EventKind::Finished(pb::RunFinished { outcome, exit_code, signal, reason }))
            }
        ),
    ]
}

fn register() -> impl Strategy<Value = pb::Register> {
    (
        text(),
        prop::collection::hash_map(text(), text(), 0..3),
        any::<u32>(),
        prop::collection::vec(lease(), 0..4),
        text(),
    )
        .prop_map(|(name, labels, slots, held, hostname)| pb::Register {
            queue_depth: 0,
            name,
            labels: labels.into_iter().collect(),
            slots,
            gpus: vec![pb::Gpu {
                index: 0,
                uuid: "GPU-0".into(),
                name: "fake".into(),
                memory_mib: u64::MAX,
            }],
            held: held.into_iter().flatten().collect(),
            hostname,
            version: String::new(),
            secret: String::new(),
        })
}

fn agent_message() -> impl Strategy<Value = pb::AgentMessage> {
    let run_event = (
        lease(),
        prop_oneof![Just(0u64), Just(1u64), any::<u64>()],
        run_event_kind(),
    )
        .prop_map(|(lease, seq, kind)| Kind::RunEvent(pb::RunEvent { lease, seq, kind }));
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Kind::Heartbeat(pb::Heartbeat {}))),
        1 => any::<bool>().prop_map(|forget| Some(Kind::Drain(pb::Drain { forget }))),
        1 => register().prop_map(|r| Some(Kind::Register(r))),
        8 => run_event.prop_map(Some),
    ]
    .prop_map(|kind| pb::AgentMessage { kind })
}

/// A valid encoding with a few bytes overwritten, inserted or removed.
fn mutated<M: Message + Default + std::fmt::Debug>(
    message: impl Strategy<Value = M>,
) -> impl Strategy<Value = Vec<u8>> {
    (
        message,
        prop::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..5),
    )
        .prop_map(|(message, edits)| {
            let mut bytes = message.encode_to_vec();
            for (at, byte, op) in edits {
                let at = at % (bytes.len() + 1);
                match op {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.push(byte),
                }
            }
            bytes
        })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..256)
}

#[test]
fn fuzz_agent_messages() {
    let mut total = 0;
    total += fuzz(
        "AgentMessage/structured",
        6_000,
        agent_message(),
        |message| {
            // The structured message itself, and after an encode/decode round trip.
            let decoded = pb::AgentMessage::decode(message.encode_to_vec().as_slice())
                .map_err(|e| TestCaseError::fail(format!("round trip: {e}")))?;
            check_agent_message(decoded)?;
            check_agent_message(message)
        },
    );
    total += fuzz("AgentMessage/arbitrary-bytes", 10_000, bytes(), |bytes| {
        if let Ok(message) = pb::AgentMessage::decode(bytes.as_slice()) {
            check_agent_message(message)?;
        }
        Ok(())
    });
    total += fuzz(
        "AgentMessage/mutated",
        10_000,
        mutated(agent_message()),
        |bytes| {
            if let Ok(message) = pb::AgentMessage::decode(bytes.as_slice()) {
                check_agent_message(message)?;
            }
            Ok(())
        },
    );
    eprintln!("fuzz AgentMessage: {total} executions in all");
}

#[test]
fn fuzz_registrations() {
    fuzz("Register/structured", 4_000, register(), check_register);
    fuzz("Register/mutated", 6_000, mutated(register()), |bytes| {
        if let Ok(register) = pb::Register::decode(bytes.as_slice()) {
            check_register(register)?;
        }
        Ok(())
    });
}

#[test]
fn fuzz_client_requests() {
    let list_runs = (
        text(),
        prop::collection::vec(prop_oneof![-3..10i32, any::<i32>()], 0..4),
        any::<u32>(),
        prop_oneof![
            Just(String::new()),
            "\\PC{0,40}",
            Just("metrics.loss < 1e400 and status = completed".to_string()),
            // Nesting and length around and beyond the limits.
            (
                0usize..200,
                prop::sample::select(vec!["(", "not ", "not ("])
            )
                .prop_map(|(depth, opener)| format!("{}status = failed", opener.repeat(depth))),
            (0usize..4_000).prop_map(|n| format!("status = failed{}", " or tag = x".repeat(n))),
        ],
        prop_oneof![
            prop::collection::vec(prop_oneof!["-?metrics\\.[a-z]{1,4}", "\\PC{0,10}"], 0..3),
            prop::collection::vec(Just("-created".to_string()), 0..40),
        ],
        prop_oneof![
            Just(String::new()),
            "[A-Za-z0-9_=-]{0,40}",
            "\\PC{0,20}",
            (0usize..4_000).prop_map(|n| "7b".repeat(n)),
        ],
    )
        .prop_map(
            |(sweep_id, statuses, limit, r#where, sort, cursor)| pb::ListRunsRequest {
                sweep_id,
                statuses,
                limit,
                r#where,
                sort,
                cursor,
                project: String::new(),
            },
        );
    fuzz(
        "ListRunsRequest/structured",
        4_000,
        list_runs,
        check_list_runs,
    );
    fuzz("ListRunsRequest/arbitrary-bytes", 6_000, bytes(), |bytes| {
        if let Ok(request) = pb::ListRunsRequest::decode(bytes.as_slice()) {
            check_list_runs(request)?;
        }
        Ok(())
    });
    // Requests whose conversion is an id check or a sweep parse: decoding arbitrary
    // bytes never panics, and what decodes is handled by the checks the service runs.
    fuzz(
        "id and submit requests/arbitrary-bytes",
        6_000,
        bytes(),
        |bytes| {
            let bytes = bytes.as_slice();
            if let Ok(request) = pb::SubmitSweepRequest::decode(bytes) {
                let _ = ladder_spec::parse_sweep(&request.file_name, &request.yaml);
            }
            for id in [
                pb::GetRunRequest::decode(bytes).map(|r| r.run_id),
                pb::GetSweepRequest::decode(bytes).map(|r| r.sweep_id),
                pb::CancelSweepRequest::decode(bytes).map(|r| r.sweep_id),
                pb::PauseSweepRequest::decode(bytes).map(|r| r.sweep_id),
                pb::ResumeSweepRequest::decode(bytes).map(|r| r.sweep_id),
                pb::WatchSweepRequest::decode(bytes).map(|r| r.sweep_id),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(id.len() <= bytes.len());
            }
            if let Ok(request) = pb::UpdateRunRequest::decode(bytes) {
                if let Ok(update) = crate::model::RunUpdate::try_from(request) {
                    prop_assert!(!update.run_id.is_empty());
                }
            }
            if let Ok(request) = pb::LeaderboardRequest::decode(bytes) {
                let _ = crate::reads::LeaderboardQuery::try_from(request);
            }
            Ok(())
        },
    );
}

#[test]
fn unknown_enum_values_are_rejected_by_value() {
    let finished = |outcome| pb::AgentMessage {
        kind: Some(Kind::RunEvent(pb::RunEvent {
            lease: Some(pb::Lease {
                run_id: "s-000000".into(),
                attempt: 1,
                epoch: 1,
            }),
            seq: 1,
            kind: Some(EventKind::Finished(pb::RunFinished {
                outcome,
                exit_code: None,
                signal: None,
                reason: String::new(),
            })),
        })),
    };
    for outcome in [0, 99, -1, i32::MAX] {
        let error = FromAgent::try_from(finished(outcome))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("unknown run outcome {outcome}")),
            "{error}"
        );
    }
    let request = pb::ListRunsRequest {
        statuses: vec![1, 42],
        ..Default::default()
    };
    let error = crate::reads::RunQuery::parse(&request)
        .err()
        .expect("rejected")
        .to_string();
    assert!(error.contains("unknown run status 42"), "{error}");
    let request = pb::ListRunsRequest {
        statuses: vec![0],
        ..Default::default()
    };
    let error = crate::reads::RunQuery::parse(&request)
        .err()
        .expect("rejected")
        .to_string();
    assert!(error.contains("RUN_STATUS_UNSPECIFIED"), "{error}");
}
