//! The agent protocol in domain form, for both of its sides.
//!
//! An agent and the coordinator talk over one bidirectional stream of `ladder.v1`
//! messages ([`ladder_proto::v1::AgentMessage`] one way,
//! [`ladder_proto::v1::CoordinatorMessage`] the other). Neither side handles those
//! messages itself: the agent builds [`FromAgent`] and reads [`ToAgent`], the coordinator
//! the reverse, and [`wire`] is the one conversion between these types and the messages,
//! in both directions. What arrives from the other side is checked there (lengths,
//! counts, required fields), so a hostile or broken peer gets a [`ProtocolError`] naming
//! the field instead of a value the domain would have to guard against.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use ladder_types::{Gpu, LogLine, MetricPoint};

pub mod wire;

#[cfg(test)]
mod tests;

/// A message of the other side that the protocol does not allow, with what is wrong and
/// where (`register.labels`, `run event seq`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// The right of one agent to execute one attempt of a run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub run_id: String,
    pub attempt: u32,
    pub epoch: u64,
}

/// Length of a secret as the coordinator issues it: 32 random bytes as lowercase hex.
pub const SECRET_HEX_LEN: usize = 64;

/// The secret an agent's name is bound to: issued by the coordinator when the name
/// enrolled, presented by the agent on every later registration. Prints redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentSecret(String);

impl fmt::Debug for AgentSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentSecret(<redacted>)")
    }
}

impl AgentSecret {
    /// Whether `text` has the form of an issued secret ([`SECRET_HEX_LEN`] lowercase hex
    /// digits).
    pub fn is_well_formed(text: &str) -> bool {
        text.len() == SECRET_HEX_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// A secret the coordinator issues: `hex` must be well formed (see
    /// [`AgentSecret::is_well_formed`]).
    pub fn issued(hex: String) -> AgentSecret {
        assert!(
            AgentSecret::is_well_formed(&hex),
            "an issued agent secret is {SECRET_HEX_LEN} lowercase hex digits"
        );
        AgentSecret(hex)
    }

    /// The secret a message carries in its `field`: `None` when empty (an agent
    /// enrolling its name for the first time, or a registration that enrolled nothing).
    pub fn presented(field: &str, text: String) -> Result<Option<AgentSecret>, ProtocolError> {
        if text.is_empty() {
            return Ok(None);
        }
        if !AgentSecret::is_well_formed(&text) {
            return Err(ProtocolError(format!(
                "{field} must be the {SECRET_HEX_LEN} lowercase hex digits the \
                 coordinator issued when the agent's name enrolled, or empty to enroll a \
                 new name (got {} bytes)",
                text.len()
            )));
        }
        Ok(Some(AgentSecret(text)))
    }

    /// The secret itself, to send or keep. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The first message of an agent session.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Runs without GPUs the agent executes at once.
    pub slots: u32,
    /// Assignments without GPUs the agent keeps waiting beyond `slots`, each started
    /// the moment one of its runs ends; 0 for an agent that takes runs only into free
    /// slots.
    pub queue_depth: u32,
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
    RunEvent(RunEventMessage),
}

/// One event of an attempt, numbered: the agent keeps it until the coordinator
/// acknowledges its `seq` (which it does once the event is durable).
#[derive(Debug, Clone)]
pub struct RunEventMessage {
    pub lease: Lease,
    /// 1 for an attempt's first event, then one more for each.
    pub seq: u64,
    pub event: RunEvent,
}

#[derive(Debug, Clone)]
pub enum RunEvent {
    Started {
        pid: u32,
        work_dir: String,
    },
    Output {
        metrics: Vec<MetricPoint>,
        logs: Vec<LogLine>,
        /// The run's `@ladder.info` entries read in this batch (later values over
        /// earlier ones), within the names and lengths the protocol allows.
        info: BTreeMap<String, String>,
    },
    Finished(Finish),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishOutcome {
    Completed,
    Failed,
    /// Stopped on the coordinator's request.
    Stopped,
    /// Handed back by a draining agent.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub outcome: FinishOutcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
}

/// One attempt to execute, as pushed to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub lease: Lease,
    pub sweep_id: String,
    /// The command, parameters already substituted. Never run through a shell.
    pub argv: Vec<String>,
    /// The parameters as a JSON object (`LADDER_PARAMS`).
    pub params_json: String,
    /// The agent's GPUs given to the run, by the indices the agent reported.
    pub gpus: Vec<u32>,
    pub env: BTreeMap<String, String>,
    /// How the agent starts the command on the run's GPUs (`resources.launch`).
    pub launch: ladder_spec::Launch,
    /// Paths in the run directory the sweep declares as artifacts (`artifacts:`),
    /// uploaded when the command ends; a trailing `/` marks a directory.
    pub artifacts: Vec<String>,
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
    /// Give back an attempt still waiting in the agent's queue (reported released,
    /// never started); one that has started is left running.
    Revoke {
        lease: Lease,
        reason: String,
    },
}
