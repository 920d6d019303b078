//! The coordinator's TLS identity: a certificate chain and its private key (PEM files),
//! checked when loaded so that a bad file is a start-up error, not a failed handshake.

use std::fmt;
use std::path::Path;

use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::error::CoordinatorError;

/// The PEM certificate chain and private key the coordinator serves TLS with.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for TlsIdentity {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads `cert` (PEM, the server certificate first, then any intermediates) and `key`
    /// (PEM, PKCS#8, PKCS#1 or SEC1) and checks that rustls accepts them.
    pub fn from_files(cert: &Path, key: &Path) -> Result<TlsIdentity, CoordinatorError> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path).map_err(|source| CoordinatorError::Io {
                context: format!("cannot read the TLS {what} {}", path.display()),
                source,
            })
        };
        let identity = TlsIdentity {
            cert_pem: read(cert, "certificate")?,
            key_pem: read(key, "key")?,
        };
        identity.server_config_checked().map_err(|error| {
            CoordinatorError::InvalidArgument(format!(
                "cannot use {} and {} as the TLS certificate and key: {error}",
                cert.display(),
                key.display()
            ))
        })?;
        Ok(identity)
    }

    /// The tonic server configuration for this identity.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(ladder_limits::HANDSHAKE_TIMEOUT)
    }

    /// Builds the configuration once, as the server will, to surface PEM errors early.
    fn server_config_checked(&self) -> Result<(), String> {
        Server::builder()
            .tls_config(self.server_config())
            .map(|_| ())
            .map_err(|error| error_chain(&error))
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
