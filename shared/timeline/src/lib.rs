//! Timestamps of a run's way through the coordinator and an agent, for `ladder bench
//! dispatch`'s latency figures.
//!
//! Off unless [`enable`] was called (one relaxed atomic load per mark then), which only
//! the benchmark does: it runs the coordinator and its agents in one process, so every
//! mark is on one monotonic clock. Marks are kept in memory until [`take`]n, at most
//! [`MAX_MARKS`] of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Where a run is. `key` of a mark: the agent's name for [`Stage::SlotFreed`], else
/// `RUN_ID/ATTEMPT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The agent saw the run's process exit.
    Exited,
    /// The scheduler took in the run's completion: its slot on the agent is free.
    SlotFreed,
    /// The commit holding the run's completion is durable.
    CompletionDurable,
    /// The commit holding the run's lease is durable and the lease is on its way to the
    /// agent.
    LeaseSent,
    /// The agent received the lease.
    LeaseReceived,
    /// The run's process was started.
    Started,
}

#[derive(Debug, Clone)]
pub struct Mark {
    pub stage: Stage,
    pub key: String,
    /// For [`Stage::Started`], the agent's name; empty otherwise.
    pub agent: String,
    pub at: Instant,
}

/// Marks kept before further ones are dropped (a few hours of a busy benchmark).
pub const MAX_MARKS: usize = 4_000_000;

static ENABLED: AtomicBool = AtomicBool::new(false);
static MARKS: Mutex<Vec<Mark>> = Mutex::new(Vec::new());

/// The key of an attempt's marks: `RUN_ID/ATTEMPT`.
pub fn attempt_key(run_id: &str, attempt: u32) -> String {
    format!("{run_id}/{attempt}")
}

/// Starts keeping marks in this process.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Notes that `key` reached `stage` now; `key` is only built when marks are kept.
pub fn mark(stage: Stage, key: impl FnOnce() -> String, agent: &str) {
    if !enabled() {
        return;
    }
    let at = Instant::now();
    let mark = Mark {
        stage,
        key: key(),
        agent: agent.to_string(),
        at,
    };
    let mut marks = MARKS.lock().expect("timeline");
    if marks.len() < MAX_MARKS {
        marks.push(mark);
    }
}

/// Every mark so far, oldest first; the timeline is empty afterwards.
pub fn take() -> Vec<Mark> {
    let mut marks = std::mem::take(&mut *MARKS.lock().expect("timeline"));
    marks.sort_by_key(|mark| mark.at);
    marks
}

/// The benchmark's latency figures, each a list of samples.
#[derive(Debug, Default)]
pub struct Latencies {
    /// A run's process exited on an agent → the process of the next run started on
    /// that agent (the slot it freed taken again).
    pub slot_to_started: Vec<std::time::Duration>,
    /// Of those, the starts of runs that waited in the agent's queue: started by the
    /// agent itself, without a round trip to the coordinator.
    pub from_queue: usize,
    /// The parts of the other starts: slot freed → the new lease durable and sent
    /// (the completion's report, placement and a group commit); sent → received by the
    /// agent; received → process started (run directory, log file, cgroup, spawn).
    pub slot_to_lease_sent: Vec<std::time::Duration>,
    pub lease_sent_to_received: Vec<std::time::Duration>,
    pub received_to_started: Vec<std::time::Duration>,
    /// A run's process exited → its completion durable in the store.
    pub exited_to_durable: Vec<std::time::Duration>,
}

/// Pairs the marks of a benchmark (sorted by time, as [`take`] returns them). Each
/// process exit on an agent frees a slot there, which goes to the next run started on
/// that agent; runs started on slots that were free from the start have no pair. A run
/// whose lease reached the agent before the slot freed waited in its queue.
pub fn latencies(marks: &[Mark]) -> Latencies {
    use std::collections::{HashMap, VecDeque};
    let mut sent: HashMap<&str, Instant> = HashMap::new();
    let mut received: HashMap<&str, Instant> = HashMap::new();
    let mut exited: HashMap<&str, Instant> = HashMap::new();
    let mut freed: HashMap<&str, VecDeque<Instant>> = HashMap::new();
    let mut result = Latencies::default();
    for mark in marks {
        let key = mark.key.as_str();
        match mark.stage {
            Stage::Exited => {
                exited.insert(key, mark.at);
                freed
                    .entry(mark.agent.as_str())
                    .or_default()
                    .push_back(mark.at);
            }
            Stage::CompletionDurable => {
                if let Some(exit) = exited.remove(key) {
                    result.exited_to_durable.push(mark.at - exit);
                }
            }
            Stage::SlotFreed => {}
            Stage::LeaseSent => {
                sent.insert(key, mark.at);
            }
            Stage::LeaseReceived => {
                received.insert(key, mark.at);
            }
            Stage::Started => {
                let (Some(&lease_sent), Some(&lease_received)) = (sent.get(key), received.get(key))
                else {
                    continue;
                };
                let Some(slot) = freed
                    .get_mut(mark.agent.as_str())
                    .and_then(VecDeque::pop_front)
                else {
                    continue;
                };
                result.slot_to_started.push(mark.at - slot);
                if lease_received <= slot {
                    result.from_queue += 1;
                    continue;
                }
                result
                    .slot_to_lease_sent
                    .push(lease_sent.saturating_duration_since(slot));
                result
                    .lease_sent_to_received
                    .push(lease_received - lease_sent);
                result.received_to_started.push(mark.at - lease_received);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64, stage: Stage, key: &str, agent: &str) -> Mark {
        Mark {
            stage,
            key: key.into(),
            agent: agent.into(),
            at: base + Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_freed_slot_pairs_with_the_next_run_started_on_that_agent() {
        let t = Instant::now();
        let marks = vec![
            // r1 and r2 fill a and b's slots from the start.
            at(t, 0, Stage::LeaseSent, "r1/1", ""),
            at(t, 0, Stage::LeaseSent, "r2/1", ""),
            at(t, 1, Stage::LeaseReceived, "r1/1", ""),
            at(t, 1, Stage::LeaseReceived, "r2/1", ""),
            at(t, 2, Stage::Started, "r1/1", "a"),
            // r1 ends before r2 has started: r2 must not take r1's slot.
            at(t, 3, Stage::Exited, "r1/1", "a"),
            at(t, 4, Stage::SlotFreed, "a", ""),
            at(t, 5, Stage::Started, "r2/1", "b"),
            at(t, 6, Stage::CompletionDurable, "r1/1", ""),
            at(t, 6, Stage::LeaseSent, "r3/1", ""),
            // r4 is leased while a is busy: it waits in a's queue.
            at(t, 7, Stage::LeaseSent, "r4/1", ""),
            at(t, 8, Stage::LeaseReceived, "r3/1", ""),
            at(t, 9, Stage::LeaseReceived, "r4/1", ""),
            at(t, 11, Stage::Started, "r3/1", "a"),
            at(t, 12, Stage::Exited, "r3/1", "a"),
            at(t, 13, Stage::Started, "r4/1", "a"),
        ];
        let figures = latencies(&marks);
        let ms = |list: &[Duration]| list.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(ms(&figures.slot_to_started), [8, 1]);
        assert_eq!(figures.from_queue, 1);
        assert_eq!(ms(&figures.slot_to_lease_sent), [3]);
        assert_eq!(ms(&figures.lease_sent_to_received), [2]);
        assert_eq!(ms(&figures.received_to_started), [3]);
        assert_eq!(ms(&figures.exited_to_durable), [3]);
    }
}
