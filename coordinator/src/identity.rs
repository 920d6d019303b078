//! Agent identity: an agent's name is bound to a secret the coordinator issued when the
//! name enrolled, the way Nomad binds a client node to its secret ID.
//!
//! An agent token (with `--auth`), or nothing (without), only lets an agent *enroll* a
//! name. On the first registration of a name the scheduler issues an [`AgentSecret`],
//! stores only its [`SecretHash`] on the agent's record (durably, before the agent hears
//! of it) and returns the secret in `Registered`; the agent keeps it in its work
//! directory. Every later registration of that name must present it: [`admit`] decides.
//! A registration that does not is refused, and the live session of that name, its runs
//! and its quarantine are left as they were. `ladder agents forget NAME` (an admin's
//! `ForgetAgent`) drops the hash, so that the name can enroll again.
//!
//! Secrets never reach a log or a listing: both types print redacted, and the hash is
//! compared in constant time.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::CoordinatorError;

pub use ladder_protocol::{AgentSecret, SECRET_HEX_LEN};

/// What only the coordinator does with a secret: issue one, and hash it.
pub trait SecretExt {
    /// A new secret: 32 bytes from the thread-local CSPRNG (seeded by the OS), as 64
    /// lowercase hex digits.
    fn generate() -> AgentSecret;
    /// The SHA-256 of the secret, the only form the coordinator keeps.
    fn hash(&self) -> SecretHash;
}

impl SecretExt for AgentSecret {
    fn generate() -> AgentSecret {
        AgentSecret::issued(crate::auth::new_token())
    }

    fn hash(&self) -> SecretHash {
        SecretHash(Sha256::digest(self.expose().as_bytes()).into())
    }
}

/// The SHA-256 of an agent's secret, kept on its [`crate::model::AgentRecord`]. Stored
/// as 64 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

impl SecretHash {
    /// Whether `secret` is the one this is the hash of, compared in constant time.
    pub fn verifies(&self, secret: &AgentSecret) -> bool {
        bool::from(self.0.ct_eq(&secret.hash().0))
    }

    fn to_hex(&self) -> String {
        use std::fmt::Write;
        let mut text = String::with_capacity(64);
        for byte in self.0 {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    fn from_hex(text: &str) -> Option<SecretHash> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(SecretHash(bytes))
    }
}

impl Serialize for SecretHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SecretHash::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("secret_sha256 must be 64 hex digits"))
    }
}

/// What to do with a registration, given the hash stored for its name and the secret it
/// presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The name has no secret yet (first registration, or forgotten): issue one. A
    /// secret presented anyway (an agent whose name was forgotten, or one that moved to
    /// another coordinator) is replaced by the new one.
    Enroll,
    /// The name's secret was presented.
    Proven,
    /// The name is enrolled and this registration did not present its secret.
    Refused,
}

/// Decides whether a registration may take its name (a pure decision; the scheduler
/// applies it).
pub fn admit(stored: Option<&SecretHash>, presented: Option<&AgentSecret>) -> Admission {
    match (stored, presented) {
        (None, _) => Admission::Enroll,
        (Some(hash), Some(secret)) if hash.verifies(secret) => Admission::Proven,
        (Some(_), _) => Admission::Refused,
    }
}

/// The refusal a registration gets when [`admit`] says [`Admission::Refused`]: names the
/// agent and tells the operator how to re-enroll it.
pub fn refusal(name: &str, presented: Option<&AgentSecret>) -> CoordinatorError {
    let what = match presented {
        None => "this agent sent no secret (a new or emptied work directory?)",
        Some(_) => "this agent sent another secret",
    };
    CoordinatorError::AgentNameRefused(format!(
        "agent name {name:?} is enrolled and bound to a secret, and {what}; the agent that \
         holds the name keeps running. If this is that agent and its work directory (which \
         keeps the secret) was lost, an admin can run `ladder agents forget {name}` to let \
         the name enroll again; otherwise give this agent another --name"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_secrets_are_64_lowercase_hex_digits_and_differ() {
        let first = AgentSecret::generate();
        assert_eq!(first.expose().len(), SECRET_HEX_LEN);
        assert!(
            AgentSecret::presented("register.secret", first.expose().to_string())
                .unwrap()
                .is_some()
        );
        assert_ne!(first, AgentSecret::generate());
    }

    #[test]
    fn presented_secrets_are_checked_and_named_in_errors() {
        assert_eq!(
            AgentSecret::presented("register.secret", String::new()).unwrap(),
            None
        );
        for bad in ["abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
            let error = CoordinatorError::from(
                AgentSecret::presented("register.secret", bad.to_string()).unwrap_err(),
            );
            assert!(
                matches!(error, CoordinatorError::InvalidArgument(_)),
                "{error:?}"
            );
            assert!(error.to_string().starts_with("register.secret must be"));
        }
    }

    #[test]
    fn secrets_and_hashes_print_redacted() {
        let secret = AgentSecret::generate();
        let shown = format!("{secret:?} {:?}", secret.hash());
        assert!(!shown.contains(secret.expose()), "{shown}");
        assert!(!shown.contains(&secret.hash().to_hex()), "{shown}");
    }

    #[test]
    fn hashes_round_trip_through_their_stored_form() {
        let hash = AgentSecret::generate().hash();
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json.len(), 66);
        let back: SecretHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hash);
        assert!(serde_json::from_str::<SecretHash>("\"beef\"").is_err());
    }

    #[test]
    fn the_refusal_names_the_agent_and_the_way_out() {
        let error = refusal("gpu-01", None);
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("\"gpu-01\""),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("ladder agents forget gpu-01"),
            "{}",
            status.message()
        );
        assert!(status
            .metadata()
            .contains_key(ladder_proto::AGENT_NAME_REFUSED_METADATA));
    }

    fn secret_strategy() -> impl Strategy<Value = AgentSecret> {
        "[0-9a-f]{64}".prop_map(AgentSecret::issued)
    }

    proptest! {
        /// Only the secret whose hash is stored proves the name; an unbound name enrolls
        /// whatever is presented.
        #[test]
        fn only_the_stored_secret_proves_a_name(
            stored in proptest::option::of(secret_strategy()),
            presented in proptest::option::of(secret_strategy()),
        ) {
            let hash = stored.as_ref().map(SecretExt::hash);
            let admission = admit(hash.as_ref(), presented.as_ref());
            let expected = match (&stored, &presented) {
                (None, _) => Admission::Enroll,
                (Some(s), Some(p)) if s == p => Admission::Proven,
                (Some(_), _) => Admission::Refused,
            };
            prop_assert_eq!(admission, expected);
            if let Some(secret) = &stored {
                prop_assert_eq!(admit(hash.as_ref(), Some(secret)), Admission::Proven);
            }
        }
    }
}
