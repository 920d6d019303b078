//! Access control: who may call which RPC.
//!
//! With `ladder coordinator --auth FILE`, every RPC of the ladder services carries
//! `authorization: Bearer <token>` metadata. The file lists users, each with a [`Role`],
//! and agents; it stores only the SHA-256 of each token:
//!
//! ```yaml
//! users:
//!   - {name: alice, role: member, token_sha256: 9f86d0…}
//! agents:
//!   - {name: gpu-fleet, token_sha256: 2c26b4…}
//! ```
//!
//! [`Authorizer::authenticate`] maps a request's token to a [`Principal`] (comparing
//! hashes in constant time), and [`Authorizer::authorize`] is the one decision of who may
//! do what ([`Action`]). The gRPC adapters in `service` call both at the top of every
//! method; `From<AuthError> for tonic::Status` maps the refusals to `UNAUTHENTICATED`
//! and `PERMISSION_DENIED`.

use std::fmt;
use std::path::Path;

use ladder_spec::yaml::{self, Node, NodeKind, Pos, Scalar};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use tonic::metadata::MetadataMap;

/// What a user may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read RPCs only: list, get and watch sweeps, runs and agents.
    Viewer,
    /// Viewer, plus submitting sweeps and pausing, resuming or cancelling their own.
    Member,
    /// Everything: any sweep, lifting an agent's quarantine, and forgetting the secret an
    /// agent's name is bound to.
    Admin,
}

impl Role {
    pub const NAMES: [&'static str; 3] = ["viewer", "member", "admin"];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who sent a request, as established from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User {
        name: String,
        role: Role,
    },
    /// An agent token; it may only open agent sessions.
    Agent {
        name: String,
    },
}

impl Principal {
    /// The name in the auth file; a user's name is the owner of the sweeps it submits.
    pub fn name(&self) -> &str {
        match self {
            Principal::User { name, .. } | Principal::Agent { name } => name,
        }
    }

    /// Whether this is a user with the admin role.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Principal::User {
                role: Role::Admin,
                ..
            }
        )
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User { name, role } => write!(f, "user {name} ({role})"),
            Principal::Agent { name } => write!(f, "agent {name}"),
        }
    }
}

/// What a request wants to do, as far as access control is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// List, get or watch sweeps, runs and agents.
    Read,
    Submit,
    /// Pause, resume or cancel the sweep owned by `owner` (empty: no owner recorded).
    ControlSweep {
        owner: &'a str,
    },
    /// Add notes and tags to, or delete notes of, a run of a sweep owned by `owner`.
    UpdateRun {
        owner: &'a str,
    },
    /// Lift an agent's quarantine.
    EnableAgent,
    /// Drop the secret an agent's name is bound to, so that the name can enroll again.
    ForgetAgent,
    /// Open `AgentService/Session`: be an agent.
    AgentSession,
    /// Upload a file of an attempt the agent holds (`ArtifactService/UploadArtifact`);
    /// whoever may be an agent may try, and the lease and the agent's secret decide.
    UploadArtifact,
}

impl Action<'_> {
    /// The action as the predicate of "X may not ...".
    fn describe(&self) -> String {
        match self {
            Action::Read => "read sweeps, runs or agents".into(),
            Action::Submit => "submit sweeps".into(),
            Action::ControlSweep { owner: "" } => {
                "pause, resume or cancel sweeps that have no owner".into()
            }
            Action::ControlSweep { owner } => {
                format!("pause, resume or cancel sweeps owned by {owner}")
            }
            Action::UpdateRun { owner: "" } => "annotate runs of sweeps that have no owner".into(),
            Action::UpdateRun { owner } => format!("annotate runs of sweeps owned by {owner}"),
            Action::EnableAgent => "enable agents".into(),
            Action::ForgetAgent => "forget agents".into(),
            Action::AgentSession => "open an agent session".into(),
            Action::UploadArtifact => "upload artifacts".into(),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error(
        "missing bearer token: this coordinator requires `authorization: Bearer <token>` \
         (ladder: --token or LADDER_TOKEN)"
    )]
    MissingToken,
    #[error("malformed authorization metadata: expected `Bearer <token>`")]
    MalformedToken,
    #[error("unknown token")]
    UnknownToken,
    #[error("{principal} may not {action}{hint}")]
    Denied {
        principal: String,
        action: String,
        /// Starts with "; " when not empty.
        hint: String,
    },
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::MissingToken | AuthError::MalformedToken | AuthError::UnknownToken => {
                tonic::Status::unauthenticated(message)
            }
            AuthError::Denied { .. } => tonic::Status::permission_denied(message),
        }
    }
}

/// A problem with the auth file, found at start-up. Every line names the file and, where
/// it can, the line, column, entry and field.
#[derive(Debug, Error)]
#[error("{}", problems.join("\n"))]
pub struct AuthFileError {
    pub problems: Vec<String>,
}

/// The SHA-256 of a token, as lowercase hex (the form the auth file stores).
pub fn token_sha256_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A new random token: 32 bytes from the thread-local CSPRNG (ChaCha, seeded by the OS),
/// as 64 hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn parse_hex_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

/// One token of the auth file.
#[derive(Clone)]
struct Credential {
    token_sha256: [u8; 32],
    principal: Principal,
}

/// The users and agents of an auth file, and the access rules.
#[derive(Clone)]
pub struct Authorizer {
    credentials: Vec<Credential>,
    /// Built by [`Authorizer::local`]: its one admin also opens agent sessions.
    local: bool,
}

impl fmt::Debug for Authorizer {
    /// Names and roles only; hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.credentials.iter().map(|c| c.principal.to_string()))
            .finish()
    }
}

impl Authorizer {
    /// Reads and validates an auth file (see the module documentation for its form).
    pub fn from_file(path: &Path) -> Result<Authorizer, AuthFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| AuthFileError {
            problems: vec![format!("{file}: cannot read the auth file: {error}")],
        })?;
        Authorizer::parse(&file, &text)
    }

    /// Parses the text of an auth file named `file` (for messages).
    pub fn parse(file: &str, text: &str) -> Result<Authorizer, AuthFileError> {
        let mut parser = FileParser {
            file,
            problems: Vec::new(),
            credentials: Vec::new(),
        };
        parser.document(text);
        if parser.problems.is_empty() {
            Ok(Authorizer {
                credentials: parser.credentials,
                local: false,
            })
        } else {
            Err(AuthFileError {
                problems: parser.problems,
            })
        }
    }

    /// The access rules of a coordinator started without `--auth` (see
    /// [`crate::local_token`]): one token, held by the user who started it, that makes
    /// its holder admin `name` and also opens agent sessions, so that user's own agents
    /// connect with it. An invalid `name` becomes `local`.
    pub fn local(name: &str, token: &str) -> Authorizer {
        let name = if valid_name(name) { name } else { "local" };
        Authorizer {
            credentials: vec![Credential {
                token_sha256: Sha256::digest(token.as_bytes()).into(),
                principal: Principal::User {
                    name: name.to_string(),
                    role: Role::Admin,
                },
            }],
            local: true,
        }
    }

    /// Whether this is the one-token authorizer of [`Authorizer::local`].
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// How many users and agents the file defines.
    pub fn counts(&self) -> (usize, usize) {
        let users = self
            .credentials
            .iter()
            .filter(|c| matches!(c.principal, Principal::User { .. }))
            .count();
        (users, self.credentials.len() - users)
    }

    /// Establishes who sent a request from its `authorization: Bearer <token>` metadata.
    ///
    /// The token's SHA-256 is compared with every stored hash in constant time, and the
    /// scan does not stop at a match, so timing tells nothing about which hash matched.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, AuthError> {
        let value = metadata
            .get("authorization")
            .ok_or(AuthError::MissingToken)?;
        let value = value.to_str().map_err(|_| AuthError::MalformedToken)?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or(AuthError::MalformedToken)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::MalformedToken);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        self.principal_of_token(token)
            .cloned()
            .ok_or(AuthError::UnknownToken)
    }

    fn principal_of_token(&self, token: &str) -> Option<&Principal> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for credential in &self.credentials {
            if bool::from(credential.token_sha256.ct_eq(&presented)) {
                found = Some(&credential.principal);
            }
        }
        found
    }

    /// Decides whether `principal` may do `action`.
    ///
    /// Viewers read; members also submit sweeps and control their own; admins do
    /// everything. Agent tokens only open agent sessions, and user tokens never do. An
    /// agent token does not say which agent it is: the name an agent registers is bound
    /// to a secret of its own (see [`crate::identity`]).
    pub fn authorize(&self, principal: &Principal, action: Action<'_>) -> Result<(), AuthError> {
        let denied = |hint: &str| AuthError::Denied {
            principal: principal.to_string(),
            action: action.describe(),
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!("; {hint}")
            },
        };
        match principal {
            Principal::Agent { .. } => match action {
                Action::AgentSession | Action::UploadArtifact => Ok(()),
                _ => Err(denied("agent tokens only open agent sessions")),
            },
            Principal::User { name, role } => match action {
                Action::Read => Ok(()),
                Action::AgentSession if self.local && *role == Role::Admin => Ok(()),
                Action::AgentSession => Err(denied("agents need an agent token")),
                Action::UploadArtifact if self.local && *role == Role::Admin => Ok(()),
                Action::UploadArtifact => Err(denied("only agents upload artifacts")),
                Action::Submit if *role >= Role::Member => Ok(()),
                Action::Submit => Err(denied("viewers only read")),
                Action::ControlSweep { .. } if *role == Role::Admin => Ok(()),
                Action::ControlSweep { owner } if *role == Role::Member && owner == name => Ok(()),
                Action::ControlSweep { .. } if *role == Role::Member => {
                    Err(denied("members control only their own sweeps"))
                }
                Action::ControlSweep { .. } => Err(denied("viewers only read")),
                Action::UpdateRun { .. } if *role == Role::Admin => Ok(()),
                Action::UpdateRun { owner } if *role == Role::Member && owner == name => Ok(()),
                Action::UpdateRun { .. } if *role == Role::Member => {
                    Err(denied("members annotate only runs of their own sweeps"))
                }
                Action::UpdateRun { .. } => Err(denied("viewers only read")),
                Action::EnableAgent if *role == Role::Admin => Ok(()),
                Action::EnableAgent => Err(denied("only admins enable agents")),
                Action::ForgetAgent if *role == Role::Admin => Ok(()),
                Action::ForgetAgent => Err(denied("only admins forget agents")),
            },
        }
    }
}

/// Validates the auth file's tree, collecting every problem.
struct FileParser<'a> {
    file: &'a str,
    problems: Vec<String>,
    credentials: Vec<Credential>,
}

impl FileParser<'_> {
    fn problem(&mut self, pos: Pos, message: impl fmt::Display) {
        self.problems.push(format!(
            "{}:{}:{}: {message}",
            self.file, pos.line, pos.column
        ));
    }

    fn document(&mut self, text: &str) {
        let document = match yaml::parse(text) {
            Ok(document) => document,
            Err(diagnostic) => {
                self.problem(diagnostic.pos, diagnostic.message);
                return;
            }
        };
        for diagnostic in document.diagnostics {
            self.problem(diagnostic.pos, diagnostic.message);
        }
        let Some(root) = document.root else {
            self.problem(
                Pos::START,
                "the auth file is empty; it needs `users:` and/or `agents:` lists",
            );
            return;
        };
        let NodeKind::Map(entries) = &root.kind else {
            self.problem(
                root.pos,
                format!(
                    "expected a mapping with `users:` and `agents:`, found {}",
                    root.type_name()
                ),
            );
            return;
        };
        for entry in entries {
            match entry.key.as_str() {
                "users" => self.list(&entry.value, Kind::User),
                "agents" => self.list(&entry.value, Kind::Agent),
                other => self.problem(
                    entry.key_pos,
                    format!("unknown key {other:?} (expected `users` or `agents`)"),
                ),
            }
        }
        if self.problems.is_empty() && self.credentials.is_empty() {
            self.problem(
                root.pos,
                "the auth file defines no users or agents, so nobody could connect",
            );
        }
    }

    fn list(&mut self, node: &Node, kind: Kind) {
        if node.is_null() {
            return;
        }
        let NodeKind::Seq(items) = &node.kind else {
            self.problem(
                node.pos,
                format!(
                    "`{}` must be a list, found {}",
                    kind.key(),
                    node.type_name()
                ),
            );
            return;
        };
        for (index, item) in items.iter().enumerate() {
            self.entry(item, kind, index);
        }
    }

    fn entry(&mut self, node: &Node, kind: Kind, index: usize) {
        let label = format!("{}[{index}]", kind.key());
        let NodeKind::Map(fields) = &node.kind else {
            self.problem(
                node.pos,
                format!(
                    "{label}: expected a mapping {}, found {}",
                    kind.example(),
                    node.type_name()
                ),
            );
            return;
        };
        let mut name: Option<String> = None;
        let mut role: Option<Role> = None;
        let mut hash: Option<[u8; 32]> = None;
        // Problems about the entry's fields are reported with its name once known.
        let mut pending: Vec<(Pos, String)> = Vec::new();
        for field in fields {
            let value = string_value(&field.value);
            match (field.key.as_str(), kind) {
                ("name", _) => match value {
                    Some(text) if valid_name(text) => name = Some(text.to_string()),
                    _ => pending.push((
                        field.value.pos,
                        "field `name` must be a non-empty name without spaces".into(),
                    )),
                },
                ("role", Kind::User) => match value.and_then(Role::parse) {
                    Some(parsed) => role = Some(parsed),
                    None => pending.push((
                        field.value.pos,
                        format!(
                            "field `role` must be one of {}, found {}",
                            Role::NAMES.join(", "),
                            shown(&field.value)
                        ),
                    )),
                },
                ("token_sha256", _) => match value.and_then(|t| parse_hex_32(&t.to_lowercase())) {
                    Some(parsed) => hash = Some(parsed),
                    None => pending.push((
                        field.value.pos,
                        "field `token_sha256` must be 64 hex digits, the SHA-256 of the token \
                         (`ladder auth token` prints one)"
                            .into(),
                    )),
                },
                (other, _) => pending.push((
                    field.key_pos,
                    format!(
                        "unknown field `{other}` (expected {})",
                        kind.fields().join(", ")
                    ),
                )),
            }
        }
        let who = match &name {
            Some(name) => format!("{label} ({name})"),
            None => label.clone(),
        };
        for (pos, message) in pending {
            self.problem(pos, format!("{who}: {message}"));
        }
        let present: Vec<&str> = fields.iter().map(|f| f.key.as_str()).collect();
        for required in kind.fields() {
            if !present.contains(required) {
                self.problem(node.pos, format!("{who}: missing field `{required}`"));
            }
        }
        let (Some(name), Some(hash)) = (name, hash) else {
            return;
        };
        let principal = match kind {
            Kind::User => {
                let Some(role) = role else { return };
                Principal::User { name, role }
            }
            Kind::Agent => Principal::Agent { name },
        };
        for existing in &self.credentials {
            if existing.token_sha256 == hash {
                let message = format!(
                    "{who}: token_sha256 is also the token of {}; every entry needs its own token",
                    existing.principal
                );
                self.problem(node.pos, message);
                return;
            }
            let same_kind =
                matches!(existing.principal, Principal::User { .. }) == (kind == Kind::User);
            if same_kind && existing.principal.name() == principal.name() {
                let message = format!("{who}: {} is defined twice", principal.name());
                self.problem(node.pos, message);
                return;
            }
        }
        self.credentials.push(Credential {
            token_sha256: hash,
            principal,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    User,
    Agent,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::User => "users",
            Kind::Agent => "agents",
        }
    }

    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::User => &["name", "role", "token_sha256"],
            Kind::Agent => &["name", "token_sha256"],
        }
    }

    fn example(self) -> &'static str {
        match self {
            Kind::User => "{name, role, token_sha256}",
            Kind::Agent => "{name, token_sha256}",
        }
    }
}

/// The scalar's text when the node is a scalar that reads as a string (names and hashes
/// are taken as written, so `role: 1` or a numeric-looking hash are still checked).
fn string_value(node: &Node) -> Option<&str> {
    match &node.kind {
        NodeKind::Scalar {
            value: Scalar::Null,
            ..
        } => None,
        NodeKind::Scalar { text, .. } => Some(text.as_str()),
        _ => None,
    }
}

fn shown(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar { text, .. } if !node.is_null() => format!("{text:?}"),
        _ => node.type_name().to_string(),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owners_and_admins_annotate_runs() {
        let alice = Principal::User {
            name: "alice".into(),
            role: Role::Member,
        };
        let bob = Principal::User {
            name: "bob".into(),
            role: Role::Member,
        };
        let root = Principal::User {
            name: "root".into(),
            role: Role::Admin,
        };
        let victor = Principal::User {
            name: "victor".into(),
            role: Role::Viewer,
        };
        let agent = Principal::Agent {
            name: "fleet".into(),
        };
        let authorizer = authorizer();
        let action = || Action::UpdateRun { owner: "alice" };
        assert!(authorizer.authorize(&alice, action()).is_ok());
        assert!(authorizer.authorize(&root, action()).is_ok());
        for (who, hint) in [
            (&bob, "members annotate only runs of their own sweeps"),
            (&victor, "viewers only read"),
            (&agent, "agent tokens only open agent sessions"),
        ] {
            let error = authorizer.authorize(who, action()).unwrap_err().to_string();
            assert!(error.contains(hint), "{who}: {error}");
        }
    }

    const ADMIN: &str = "admin-token";
    const ALICE: &str = "alice-token";
    const VICTOR: &str = "victor-token";
    const FLEET: &str = "fleet-token";

    fn file() -> String {
        format!(
            "users:\n  - {{name: root, role: admin, token_sha256: {}}}\n  - name: alice\n    role: member\n    token_sha256: {}\n  - {{name: victor, role: viewer, token_sha256: {}}}\nagents:\n  - {{name: fleet, token_sha256: {}}}\n",
            token_sha256_hex(ADMIN),
            token_sha256_hex(ALICE),
            token_sha256_hex(VICTOR),
            token_sha256_hex(FLEET),
        )
    }

    fn authorizer() -> Authorizer {
        Authorizer::parse("auth.yaml", &file()).expect("valid file")
    }

    fn metadata(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", value.parse().expect("ascii"));
        metadata
    }

    fn user(name: &str, role: Role) -> Principal {
        Principal::User {
            name: name.into(),
            role,
        }
    }

    #[test]
    fn hashes_are_sha256_hex() {
        // The SHA-256 test vector of "abc" (FIPS 180-2).
        assert_eq!(
            token_sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            parse_hex_32(&token_sha256_hex("abc")).map(|b| hex(&b)),
            Some(token_sha256_hex("abc"))
        );
    }

    #[test]
    fn new_tokens_are_64_hex_digits_and_differ() {
        let first = new_token();
        assert_eq!(first.len(), 64);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(first, new_token());
    }

    #[test]
    fn tokens_map_to_their_principals() {
        let auth = authorizer();
        assert_eq!(auth.counts(), (3, 1));
        assert_eq!(
            auth.authenticate(&metadata(&format!("Bearer {ALICE}"))),
            Ok(user("alice", Role::Member))
        );
        assert_eq!(
            auth.authenticate(&metadata(&format!("bearer  {FLEET} "))),
            Ok(Principal::Agent {
                name: "fleet".into()
            })
        );
        assert_eq!(
            auth.authenticate(&metadata("Bearer nope")),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            auth.authenticate(&MetadataMap::new()),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            auth.authenticate(&metadata(&format!("Basic {ALICE}"))),
            Err(AuthError::MalformedToken)
        );
        assert_eq!(
            auth.authenticate(&metadata(ALICE)),
            Err(AuthError::MalformedToken)
        );
        // The hash, not the token, is what is stored: presenting the hash fails.
        assert_eq!(
            auth.authenticate(&metadata(&format!("Bearer {}", token_sha256_hex(ALICE)))),
            Err(AuthError::UnknownToken)
        );
    }

    #[test]
    fn constant_time_compare_decides_equality() {
        // `principal_of_token` uses `subtle::ConstantTimeEq`; check it agrees with `==`
        // on equal, first-byte-different and last-byte-different hashes.
        let a = [7u8; 32];
        let mut first = a;
        first[0] ^= 1;
        let mut last = a;
        last[31] ^= 0x80;
        assert!(bool::from(a.ct_eq(&a)));
        assert!(!bool::from(a.ct_eq(&first)));
        assert!(!bool::from(a.ct_eq(&last)));
    }

    #[test]
    fn role_action_matrix() {
        let auth = authorizer();
        let viewer = user("victor", Role::Viewer);
        let alice = user("alice", Role::Member);
        let admin = user("root", Role::Admin);
        let agent = Principal::Agent {
            name: "fleet".into(),
        };
        let own = Action::ControlSweep { owner: "alice" };
        let other = Action::ControlSweep { owner: "bob" };
        let unowned = Action::ControlSweep { owner: "" };
        // (principal, action, allowed)
        let cases = [
            (&viewer, Action::Read, true),
            (&viewer, Action::Submit, false),
            (&viewer, own, false),
            (&viewer, Action::ControlSweep { owner: "victor" }, false),
            (&viewer, Action::EnableAgent, false),
            (&viewer, Action::ForgetAgent, false),
            (&viewer, Action::AgentSession, false),
            (&viewer, Action::UploadArtifact, false),
            (&alice, Action::Read, true),
            (&alice, Action::Submit, true),
            (&alice, own, true),
            (&alice, other, false),
            (&alice, unowned, false),
            (&alice, Action::EnableAgent, false),
            (&alice, Action::ForgetAgent, false),
            (&alice, Action::AgentSession, false),
            (&alice, Action::UploadArtifact, false),
            (&admin, Action::Read, true),
            (&admin, Action::Submit, true),
            (&admin, own, true),
            (&admin, other, true),
            (&admin, unowned, true),
            (&admin, Action::EnableAgent, true),
            (&admin, Action::ForgetAgent, true),
            (&admin, Action::AgentSession, false),
            (&admin, Action::UploadArtifact, false),
            (&agent, Action::Read, false),
            (&agent, Action::Submit, false),
            (&agent, own, false),
            (&agent, Action::EnableAgent, false),
            (&agent, Action::ForgetAgent, false),
            (&agent, Action::AgentSession, true),
            (&agent, Action::UploadArtifact, true),
        ];
        for (principal, action, allowed) in cases {
            let result = auth.authorize(principal, action);
            assert_eq!(
                result.is_ok(),
                allowed,
                "{principal} {action:?}: {result:?}"
            );
        }
    }

    #[test]
    fn the_local_token_is_an_admin_that_also_opens_agent_sessions() {
        let auth = Authorizer::local("carol", ADMIN);
        assert!(auth.is_local() && !authorizer().is_local());
        let carol = auth
            .authenticate(&metadata(&format!("Bearer {ADMIN}")))
            .expect("the local token");
        assert_eq!(carol, user("carol", Role::Admin));
        for action in [
            Action::Read,
            Action::Submit,
            Action::ControlSweep { owner: "bob" },
            Action::EnableAgent,
            Action::AgentSession,
            Action::UploadArtifact,
        ] {
            assert_eq!(auth.authorize(&carol, action), Ok(()), "{action:?}");
        }
        assert_eq!(
            auth.authenticate(&MetadataMap::new()),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            auth.authenticate(&metadata(&format!("Bearer {ALICE}"))),
            Err(AuthError::UnknownToken)
        );
        let unnamed = Authorizer::local("", ADMIN)
            .authenticate(&metadata(&format!("Bearer {ADMIN}")))
            .expect("the local token");
        assert_eq!(unnamed.name(), "local");
    }

    #[test]
    fn refusals_name_the_principal_role_and_action() {
        let auth = authorizer();
        let error = auth
            .authorize(&user("bob", Role::Viewer), Action::Submit)
            .unwrap_err();
        assert!(error
            .to_string()
            .starts_with("user bob (viewer) may not submit sweeps"));
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let error = auth
            .authorize(
                &user("bob", Role::Member),
                Action::ControlSweep { owner: "alice" },
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "user bob (member) may not pause, resume or cancel sweeps owned by alice; \
             members control only their own sweeps"
        );
        let error = auth
            .authorize(
                &Principal::Agent {
                    name: "fleet".into(),
                },
                Action::Read,
            )
            .unwrap_err();
        assert!(error.to_string().starts_with("agent fleet may not read"));
        let status = tonic::Status::from(AuthError::UnknownToken);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "unknown token");
    }

    fn problems(text: &str) -> String {
        Authorizer::parse("auth.yaml", text)
            .expect_err("invalid file")
            .to_string()
    }

    #[test]
    fn bad_files_name_file_line_entry_and_field() {
        let hash = token_sha256_hex("x");
        let message = problems(&format!(
            "users:\n  - name: bob\n    role: owner\n    token_sha256: {hash}\n"
        ));
        assert_eq!(
            message,
            "auth.yaml:3:11: users[0] (bob): field `role` must be one of viewer, member, \
             admin, found \"owner\""
        );
        let message = problems("users:\n  - {name: bob, role: admin, token_sha256: abc}\n");
        assert!(
            message.starts_with("auth.yaml:2:44: users[0] (bob): field `token_sha256`"),
            "{message}"
        );
        let message = problems(&format!(
            "agents:\n  - {{name: a, token_sha256: {hash}}}\n  - {{token_sha256: {}}}\n",
            token_sha256_hex("y")
        ));
        assert_eq!(message, "auth.yaml:3:5: agents[1]: missing field `name`");
        let message = problems(&format!(
            "agents:\n  - {{name: a, role: admin, token_sha256: {hash}}}\n"
        ));
        assert!(
            message.starts_with("auth.yaml:2:15: agents[0] (a): unknown field `role`"),
            "{message}"
        );
        let message = problems(&format!(
            "users:\n  - {{name: a, role: admin, token_sha256: {hash}}}\n  - {{name: b, role: viewer, token_sha256: {hash}}}\n"
        ));
        assert!(
            message.contains("users[1] (b): token_sha256 is also the token of user a (admin)"),
            "{message}"
        );
        let message = problems("user:\n  - {name: a}\n");
        assert!(
            message.starts_with("auth.yaml:1:1: unknown key \"user\""),
            "{message}"
        );
        assert!(problems("").contains("the auth file is empty"));
        assert!(problems("users: []\n").contains("defines no users or agents"));
        assert!(problems("users: [\n").starts_with("auth.yaml:"));
    }

    #[test]
    fn from_file_names_an_unreadable_file() {
        let error = Authorizer::from_file(Path::new("/nonexistent/auth.yaml")).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("/nonexistent/auth.yaml: cannot read the auth file"));
    }
}
