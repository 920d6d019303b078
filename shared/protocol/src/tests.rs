use std::collections::BTreeMap;
use std::time::Duration;

use ladder_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;

use super::wire::{self, log_line_encoded_len, point_encoded_len};
use super::*;

fn lease() -> Lease {
    Lease {
        run_id: "abc-000001".into(),
        attempt: 2,
        epoch: 7,
    }
}

fn any_point() -> impl Strategy<Value = MetricPoint> {
    (
        proptest::option::of(any::<i64>()),
        proptest::collection::btree_map("[a-z/]{0,12}", any::<f64>(), 0..6),
        any::<i64>(),
    )
        .prop_map(|(step, values, time_ms)| MetricPoint {
            step,
            values,
            time_ms,
        })
}

fn any_line() -> impl Strategy<Value = LogLine> {
    (any::<i64>(), "(stdout|stderr|ladder|)", ".{0,40}").prop_map(|(time_ms, stream, text)| {
        LogLine {
            time_ms,
            stream,
            text,
        }
    })
}

proptest! {
    /// The agent bounds its batches with these lengths: they are the encoder's own.
    #[test]
    fn encoded_lengths_are_the_encoders(point in any_point(), line in any_line()) {
        prop_assert_eq!(point_encoded_len(&point), wire::point_to_pb(point.clone()).encoded_len());
        prop_assert_eq!(log_line_encoded_len(&line), wire::log_to_pb(line.clone()).encoded_len());
    }
}

#[test]
fn edge_values_have_the_encoders_length_too() {
    for step in [None, Some(0), Some(-1), Some(i64::MAX)] {
        for time_ms in [0, 1, -1, i64::MIN] {
            let point = MetricPoint {
                step,
                values: BTreeMap::from([(String::new(), 0.0), ("loss".into(), -0.0)]),
                time_ms,
            };
            assert_eq!(
                point_encoded_len(&point),
                wire::point_to_pb(point.clone()).encoded_len()
            );
            let line = LogLine {
                time_ms,
                stream: String::new(),
                text: String::new(),
            };
            assert_eq!(
                log_line_encoded_len(&line),
                wire::log_to_pb(line.clone()).encoded_len()
            );
        }
    }
}

/// What an agent sends decodes on the coordinator to what it meant.
#[test]
fn agent_messages_round_trip() {
    let finish = Finish {
        outcome: FinishOutcome::Released,
        exit_code: Some(3),
        signal: None,
        reason: "drained".into(),
    };
    let events = [
        RunEvent::Started {
            pid: 42,
            work_dir: "/w/runs/abc".into(),
        },
        RunEvent::Output {
            metrics: vec![MetricPoint {
                step: Some(10),
                values: BTreeMap::from([("loss".into(), 0.5)]),
                time_ms: 99,
            }],
            logs: vec![LogLine {
                time_ms: 98,
                stream: "stdout".into(),
                text: "hello".into(),
            }],
            info: BTreeMap::from([("base_model".into(), "tiny".into())]),
        },
        RunEvent::Finished(finish.clone()),
    ];
    for (seq, event) in events.into_iter().enumerate() {
        let sent = FromAgent::RunEvent(RunEventMessage {
            lease: lease(),
            seq: seq as u64 + 1,
            event,
        });
        let wire: pb::AgentMessage = sent.clone().into();
        let received =
            FromAgent::try_from(pb::AgentMessage::decode(&*wire.encode_to_vec()).unwrap()).unwrap();
        assert_eq!(format!("{sent:?}"), format!("{received:?}"));
    }
    for sent in [FromAgent::Heartbeat, FromAgent::Drain { forget: true }] {
        let received = FromAgent::try_from(pb::AgentMessage::from(sent.clone())).unwrap();
        assert_eq!(format!("{sent:?}"), format!("{received:?}"));
    }
}

/// What the coordinator sends decodes on the agent to what it meant.
#[test]
fn coordinator_messages_round_trip() {
    let secret = AgentSecret::issued("ab".repeat(32));
    let messages = [
        ToAgent::Registered {
            heartbeat_interval: Duration::from_millis(3000),
            lease_timeout: Duration::from_millis(15000),
            agent_secret: Some(secret.clone()),
        },
        ToAgent::Assign(Assignment {
            lease: lease(),
            sweep_id: "abc".into(),
            argv: vec!["python".into(), "train.py".into()],
            params_json: "{\"lr\":0.1}".into(),
            gpus: vec![0, 3],
            env: BTreeMap::from([("LADDER_PROJECT".into(), "p".into())]),
            launch: ladder_spec::Launch::PerGpu,
            artifacts: vec!["model/".into(), "results.json".into()],
        }),
        ToAgent::Stop {
            lease: lease(),
            reason: "asha".into(),
        },
        ToAgent::Ack {
            lease: lease(),
            seq: 5,
        },
        ToAgent::Reject {
            lease: lease(),
            reason: "stale".into(),
        },
        ToAgent::Revoke {
            lease: lease(),
            reason: "sweep paused".into(),
        },
    ];
    for sent in messages {
        let wire: pb::CoordinatorMessage = sent.clone().into();
        let received = ToAgent::try_from(wire).unwrap();
        assert_eq!(format!("{sent:?}"), format!("{received:?}"));
    }
    // The secret itself survives the trip (Debug redacts it).
    let wire: pb::CoordinatorMessage = ToAgent::Registered {
        heartbeat_interval: Duration::ZERO,
        lease_timeout: Duration::ZERO,
        agent_secret: Some(secret.clone()),
    }
    .into();
    match ToAgent::try_from(wire).unwrap() {
        ToAgent::Registered { agent_secret, .. } => assert_eq!(agent_secret, Some(secret)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_registration_round_trips_and_its_gpus_convert_once() {
    let registration = Registration {
        name: "node-1".into(),
        labels: BTreeMap::from([("pool".into(), "a100".into())]),
        slots: 4,
        queue_depth: 4,
        gpus: vec![Gpu {
            index: 1,
            uuid: "GPU-1".into(),
            name: "A100".into(),
            memory_mib: 81920,
        }],
        held: vec![lease()],
        hostname: "h".into(),
        version: "0.1.0".into(),
        secret: Some(AgentSecret::issued("0".repeat(64))),
    };
    let wire = match wire::register_message(registration.clone()).kind {
        Some(pb::agent_message::Kind::Register(register)) => register,
        other => panic!("{other:?}"),
    };
    let back = Registration::try_from(wire).unwrap();
    assert_eq!(back.gpus, registration.gpus);
    assert_eq!(back.held, registration.held);
    assert_eq!(back.secret, registration.secret);
    assert_eq!(back.labels, registration.labels);
    assert_eq!(back.queue_depth, 4);
}

#[test]
fn refusals_name_the_field() {
    let no_lease = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::RunEvent(pb::RunEvent {
            lease: None,
            seq: 1,
            kind: None,
        })),
    };
    assert_eq!(
        FromAgent::try_from(no_lease).unwrap_err().0,
        "run event has no lease"
    );
    let unknown_launch = pb::CoordinatorMessage {
        kind: Some(pb::coordinator_message::Kind::Assign(pb::Assign {
            lease: Some(pb::Lease {
                run_id: "r".into(),
                attempt: 1,
                epoch: 1,
            }),
            launch: "per_node".into(),
            ..Default::default()
        })),
    };
    assert_eq!(
        wire::assignment_lease(&unknown_launch).map(|l| l.run_id),
        Some("r".to_string())
    );
    let error = ToAgent::try_from(unknown_launch).unwrap_err().0;
    assert!(error.contains("assign.launch \"per_node\""), "{error}");
    let bad_secret = pb::Register {
        name: "n".into(),
        secret: "XYZ".into(),
        ..Default::default()
    };
    let error = Registration::try_from(bad_secret).unwrap_err().0;
    assert!(error.starts_with("register.secret must be"), "{error}");
    let long_run_id = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::RunEvent(pb::RunEvent {
            lease: Some(pb::Lease {
                run_id: "r".repeat(ladder_limits::MAX_ID_BYTES + 1),
                attempt: 1,
                epoch: 1,
            }),
            seq: 1,
            kind: Some(pb::run_event::Kind::Started(pb::RunStarted::default())),
        })),
    };
    let error = FromAgent::try_from(long_run_id).unwrap_err().0;
    assert!(
        error.starts_with("run event.lease.run_id is 129 bytes"),
        "{error}"
    );
}
