//! How client verbs reach the coordinator, set up once for the whole process:
//!
//! - TLS when the URL is `https://`, trusting the CA of `--ca` / `LADDER_CA` (or, without
//!   it, the system's roots);
//! - the bearer token of `--token` / `LADDER_TOKEN` on every request, added by a tonic
//!   interceptor, so every verb (and every client built on [`channel`]) carries it;
//! - without either, the token of a coordinator this process started ([`remember_token`]:
//!   `ladder run`, `ladder bench`), else the admin token that a coordinator of this user
//!   started without `--auth` left in its runtime file for the URL
//!   (`ladder_coordinator::local_token::find`).
//!
//! `main` calls [`configure`] before a client verb runs; `ladder run` and `ladder bench`
//! talk to their own embedded, loopback coordinator and leave it unconfigured.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ladder_coordinator::local_token;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::debug;

/// `--token` and `--ca`, accepted by every client verb and by `ladder agent`.
#[derive(Args, Clone, Debug, Default)]
pub struct SecurityArgs {
    /// Bearer token for a coordinator started with --auth.
    #[arg(long, env = "LADDER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the coordinator's TLS certificate (the URL must then be https://).
    #[arg(long, env = "LADDER_CA", hide_env_values = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// The loaded form of [`SecurityArgs`].
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// The token, as given.
    pub token: Option<String>,
    /// The CA certificate(s), PEM.
    pub ca_pem: Option<Vec<u8>>,
    authorization: Option<MetadataValue<Ascii>>,
}

impl SecurityArgs {
    /// Reads the CA file and checks the token.
    pub fn load(&self) -> anyhow::Result<ClientSecurity> {
        let ca_pem = match &self.ca {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read the CA file {}", path.display()))?,
            ),
            None => None,
        };
        let token = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let authorization = match token {
            Some(token) => {
                Some(bearer(token).context("--token / LADDER_TOKEN must be printable ASCII")?)
            }
            None => None,
        };
        Ok(ClientSecurity {
            token: token.map(String::from),
            ca_pem,
            authorization,
        })
    }
}

fn bearer(token: &str) -> Option<MetadataValue<Ascii>> {
    MetadataValue::try_from(format!("Bearer {token}")).ok()
}

static SECURITY: OnceLock<ClientSecurity> = OnceLock::new();

/// Sets how this process's client verbs connect; the first call wins.
pub fn configure(security: ClientSecurity) {
    let _ = SECURITY.set(security);
}

/// Tokens of the coordinators this process started, by URL.
static OWN_COORDINATORS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// Makes [`channel`] send `token` to the coordinator at `url`, which this process started,
/// unless `--token` / `LADDER_TOKEN` says otherwise.
pub fn remember_token(url: &str, token: &str) {
    let mut own = OWN_COORDINATORS.lock().unwrap_or_else(|e| e.into_inner());
    own.insert(url.to_string(), token.to_string());
}

/// The token for `url` when none was given: one this process started the coordinator
/// with, else one from this user's runtime files.
fn discovered_authorization(url: &str) -> Option<MetadataValue<Ascii>> {
    let own = OWN_COORDINATORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(url)
        .cloned();
    let token = match own {
        Some(token) => token,
        None => {
            let found = local_token::find(url)?;
            debug!(file = %found.file.display(), "using the token of a local coordinator");
            found.token
        }
    };
    bearer(token.trim())
}

/// Adds `authorization: Bearer <token>` to every request, when a token is configured.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to the coordinator that sends the configured token with each request.
pub type CoordinatorChannel = InterceptedService<Channel, BearerToken>;

/// Connects to the coordinator at `url` with the configured TLS and token.
pub async fn channel(url: &str) -> anyhow::Result<CoordinatorChannel> {
    let security = SECURITY.get().cloned().unwrap_or_default();
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid coordinator URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5));
    let https = endpoint.uri().scheme_str() == Some("https");
    let tls = match &security.ca_pem {
        Some(_) if !https => bail!(
            "--ca / LADDER_CA is set but the coordinator URL {url} is not https://; \
             use https://HOST:PORT"
        ),
        Some(pem) => Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))),
        None if https => Some(ClientTlsConfig::new().with_native_roots()),
        None => None,
    };
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .context("cannot configure TLS for the coordinator")?;
    }
    let channel = endpoint.connect().await.map_err(|error| {
        let chain = error_chain(&error);
        let tls_problem = ["certificate", "tls", "handshake", "CertificateUnknown"]
            .iter()
            .any(|word| chain.to_lowercase().contains(&word.to_lowercase()));
        if tls_problem {
            anyhow::anyhow!(
                "TLS with the coordinator at {url} failed: {chain} (does --ca / LADDER_CA \
                 name the CA that signed the coordinator's certificate, for this host name?)"
            )
        } else {
            anyhow::anyhow!(
                "cannot reach the coordinator at {url}: {chain} (is `ladder coordinator` \
                 running there? set --coordinator or LADDER_COORDINATOR)"
            )
        }
    })?;
    let authorization = security
        .authorization
        .or_else(|| discovered_authorization(url));
    Ok(InterceptedService::new(channel, BearerToken(authorization)))
}

/// Who submits sweeps, as declared to a coordinator without `--auth`: `$LADDER_USER`,
/// else `$USER`, else empty.
pub fn declared_user() -> String {
    ["LADDER_USER", "USER"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|value| value.trim().to_string())
        .find(|value| !value.is_empty())
        .or_else(os_user_name)
        .unwrap_or_default()
}

/// The name of the user this process runs as, from the system's user database (a
/// container or a cron job often has no `$USER`); `None` when it has no entry.
fn os_user_name() -> Option<String> {
    let mut buffer = vec![0u8; 4096];
    // SAFETY: `passwd` is plain data that getpwuid_r fills in; `result` ends up null or
    // pointing at `passwd`, whose strings point into `buffer`, both alive below.
    unsafe {
        let mut passwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let status = libc::getpwuid_r(
            libc::getuid(),
            &mut passwd,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut result,
        );
        if status != 0 || result.is_null() || passwd.pw_name.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(passwd.pw_name).to_string_lossy();
        let name = name.trim();
        (!name.is_empty()).then(|| name.to_string())
    }
}

/// An error and its sources, `: `-separated, with repeated messages dropped.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_user_variables_the_owner_is_the_system_user() {
        let expected = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        let expected = String::from_utf8(expected.stdout).unwrap();
        assert_eq!(os_user_name().as_deref(), Some(expected.trim()));
    }
}
