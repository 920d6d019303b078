//! The agent protocol in domain form: the scheduler only sees these types.
//! `ladder_protocol::wire` maps them to and from the `ladder.v1` messages, the same
//! conversion the agent uses.

pub use ladder_protocol::{
    Assignment, Finish, FinishOutcome, FromAgent, Lease, Registration, RunEvent, RunEventMessage,
    ToAgent,
};
