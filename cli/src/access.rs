//! The coordinator's access options (`--auth`, `--no-auth`, `--tls-cert/--tls-key`,
//! `--insecure-listen-anywhere`) and `ladder auth token`, which makes the tokens an admin
//! puts in the auth file. The rules themselves live in `ladder_coordinator::auth`; the
//! admin token of a coordinator started without `--auth` in
//! `ladder_coordinator::local_token`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use ladder_coordinator::auth::{new_token, token_sha256_hex, Authorizer};
use ladder_coordinator::local_token;
use ladder_coordinator::tls::TlsIdentity;
use serde_json::json;
use tracing::{info, warn};

/// Who may reach the coordinator, and over what.
#[derive(Args, Debug)]
pub struct CoordinatorAccessArgs {
    /// Require a bearer token on every RPC: FILE lists users (viewer, member, admin) and agents by token SHA-256.
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// Serve TLS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Listen on a non-loopback address without --auth, guarded only by the one admin token the coordinator makes (in clear text on the network unless TLS is on).
    #[arg(long, conflicts_with = "no_auth")]
    pub insecure_listen_anywhere: bool,
    /// Serve every request without a token (loopback addresses only). Unsafe on a shared machine: any local user could run commands as you.
    #[arg(long, conflicts_with = "auth")]
    pub no_auth: bool,
}

/// What [`CoordinatorAccessArgs::load`] found.
pub struct CoordinatorAccess {
    pub auth: Option<Authorizer>,
    pub tls: Option<TlsIdentity>,
    /// The admin token required without `--auth` (`None` with `--auth` or `--no-auth`).
    pub local_token: Option<String>,
}

impl CoordinatorAccessArgs {
    /// Loads the auth file (or, without one, the admin token of `data_dir`) and the TLS
    /// identity; refuses `--no-auth` on a non-loopback address, and a non-loopback
    /// address without `--auth` unless asked to.
    pub fn load(&self, listen: SocketAddr, data_dir: &Path) -> anyhow::Result<CoordinatorAccess> {
        if self.no_auth && !listen.ip().is_loopback() {
            bail!(
                "--no-auth is allowed only on a loopback address, not {listen}: anyone who can \
                 reach it could run commands on your agents. Listen on 127.0.0.1, or drop \
                 --no-auth (the coordinator then requires the admin token it writes to \
                 {}/{})",
                data_dir.display(),
                local_token::DATA_DIR_TOKEN_FILE
            );
        }
        if self.auth.is_none() && !listen.ip().is_loopback() && !self.insecure_listen_anywhere {
            bail!(
                "refusing to listen on {listen} without --auth: its one admin token would be \
                 the only guard, and every agent and user would share it. Listen on a \
                 loopback address (127.0.0.1), give --auth FILE (`ladder auth token` makes \
                 its entries), or pass --insecure-listen-anywhere"
            );
        }
        let mut local_token = None;
        let auth = match &self.auth {
            Some(path) => {
                let authorizer = Authorizer::from_file(path).map_err(|error| {
                    anyhow!("invalid --auth file:\n  {}", error.problems.join("\n  "))
                })?;
                let (users, agents) = authorizer.counts();
                info!(file = %path.display(), users, agents, "access control on");
                Some(authorizer)
            }
            None if self.no_auth => {
                warn!(
                    %listen,
                    "--no-auth: every request is served without a token; any user of this \
                     machine can run commands as you"
                );
                None
            }
            None => {
                let token = local_token::load_or_create(data_dir).with_context(|| {
                    format!("cannot keep the admin token in {}", data_dir.display())
                })?;
                let authorizer = Authorizer::local(&crate::connect::declared_user(), &token);
                local_token = Some(token);
                Some(authorizer)
            }
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity::from_files(cert, key)?),
            _ => None,
        };
        if auth.is_some() && tls.is_none() && !listen.ip().is_loopback() {
            warn!(
                "no --tls-cert: tokens cross the network in clear text; serve TLS on \
                 non-loopback addresses"
            );
        }
        if local_token.is_some() && !listen.ip().is_loopback() {
            warn!(
                %listen,
                "--insecure-listen-anywhere: one admin token guards this coordinator; give \
                 --auth FILE for per-user tokens"
            );
        }
        Ok(CoordinatorAccess {
            auth,
            tls,
            local_token,
        })
    }
}

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Print a new random token and its entry for the --auth file (only the SHA-256 is stored).
    Token {
        /// Name of the user or agent (default: $LADDER_USER or $USER).
        #[arg(long)]
        name: Option<String>,
        /// viewer, member or admin for a user; agent for an agent token.
        #[arg(long, default_value = "member", value_parser = ["viewer", "member", "admin", "agent"])]
        role: String,
        /// Print {name, role, token, token_sha256} as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: AuthCommand) -> anyhow::Result<()> {
    let AuthCommand::Token { name, role, json } = command;
    let name = name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(crate::connect::declared_user);
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("--name must be a name without spaces (no $USER to default to)");
    }
    let token = new_token();
    let hash = token_sha256_hex(&token);
    if json {
        let value = json!({"name": name, "role": role, "token": token, "token_sha256": hash});
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let (list, entry) = if role == "agent" {
        (
            "agents",
            format!("  - {{name: {name}, token_sha256: {hash}}}"),
        )
    } else {
        (
            "users",
            format!("  - {{name: {name}, role: {role}, token_sha256: {hash}}}"),
        )
    };
    println!("token: {token}");
    println!();
    println!("# Give the token to {name} (as LADDER_TOKEN or --token); it is not stored.");
    println!("# Add this entry to the coordinator's --auth file:");
    println!("{list}:");
    println!("{entry}");
    Ok(())
}
