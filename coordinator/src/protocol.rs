//! The agent protocol in domain form. `convert` maps it to and from the `ladder.v1`
//! messages; the scheduler only sees these types.

use std::collections::BTreeMap;
use std::time::Duration;

use ladder_types::Gpu;

use crate::identity::AgentSecret;
use crate::model::{StoredLogLine, StoredPoint};

/// The right of one agent to execute one attempt of a run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub run_id: String,
    pub attempt: u32,
    pub epoch: u64,
}

/// The first message of an agent session.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub slots: u32,
    pub gpus: Vec<Gpu>,
    /// Attempts the agent still holds.
    pub held: Vec<Lease>,
    pub hostname: String,
    pub version: String,
    /// The secret the agent's name is bound to, as the agent presents it; `None` when it
    /// enrolls its name for the first time.
    pub secret: Option<AgentSecret>,
}

/// Messages an agent sends after registering.
#[derive(Debug, Clone)]
pub enum FromAgent {
    Heartbeat,
    /// The agent is shutting down gracefully; with `forget`, it will not come back under
    /// its name, and its record is dropped once its session ends with no run left on it.
    Drain {
        forget: bool,
    },
    RunEvent {
        lease: Lease,
        seq: u64,
        event: RunEvent,
    },
}

#[derive(Debug, Clone)]
pub enum RunEvent {
    Started {
        pid: u32,
        work_dir: String,
    },
    Output {
        metrics: Vec<StoredPoint>,
        logs: Vec<StoredLogLine>,
        /// The run's `@ladder.info` entries read in this batch (already checked against
        /// the names and lengths the protocol allows), to merge into
        /// [`crate::model::RunRecord::info`].
        info: BTreeMap<String, String>,
    },
    Finished(Finish),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishOutcome {
    Completed,
    Failed,
    Stopped,
    /// Handed back by a draining agent.
    Released,
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub outcome: FinishOutcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
}

/// One attempt to execute, as pushed to an agent.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub lease: Lease,
    pub sweep_id: String,
    pub argv: Vec<String>,
    pub params_json: String,
    pub gpus: Vec<u32>,
    pub env: BTreeMap<String, String>,
    /// How the agent starts the command on the run's GPUs (`resources.launch`).
    pub launch: ladder_spec::Launch,
}

/// Messages the coordinator pushes to an agent.
#[derive(Debug, Clone)]
pub enum ToAgent {
    Registered {
        heartbeat_interval: Duration,
        lease_timeout: Duration,
        /// Set when this registration enrolled the agent's name: the secret it must
        /// present from now on.
        agent_secret: Option<AgentSecret>,
    },
    Assign(Assignment),
    Stop {
        lease: Lease,
        reason: String,
    },
    Ack {
        lease: Lease,
        seq: u64,
    },
    Reject {
        lease: Lease,
        reason: String,
    },
}
