//! TLS settings for `NBD_OPT_STARTTLS`: the mode, and the credentials loaded with rustls (ring
//! provider) from a directory in the qemu/nbdkit layout. The handshake itself and the pump that
//! carries an encrypted connection are in [`crate::tls_session`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// File name of the CA certificate inside a credentials directory.
pub const CA_CERT: &str = "ca-cert.pem";
/// File name of the server certificate (chain) inside a credentials directory.
pub const SERVER_CERT: &str = "server-cert.pem";
/// File name of the server's private key inside a credentials directory.
pub const SERVER_KEY: &str = "server-key.pem";

/// Whether the server offers or insists on TLS (the protocol's NOTLS, SELECTIVETLS with no
/// TLS-only export, and FORCEDTLS modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// No TLS: `NBD_OPT_STARTTLS` is refused with `NBD_REP_ERR_POLICY`.
    #[default]
    Off,
    /// TLS at the client's choice: plaintext clients are served too.
    On,
    /// TLS is required: every option but `STARTTLS` and `ABORT` gets `NBD_REP_ERR_TLS_REQD`
    /// until TLS is up, and `NBD_OPT_EXPORT_NAME` before it closes the connection.
    Require,
}

/// Why TLS credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file is not PEM or holds nothing of the expected kind.
    #[error("{} is not usable: {reason}", path.display())]
    Unparsable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate and key do not make a usable server identity (e.g. they do not match).
    #[error("the certificate {} and key {} cannot be used together", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The CA certificate cannot verify client certificates.
    #[error("the CA certificate {} cannot verify client certificates: {reason}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl TlsError {
    /// What kind of failure this is: a file that cannot be read, or credentials that are
    /// unusable as given.
    pub fn kind(&self) -> mkmodule_blockdev::ErrorKind {
        match self {
            TlsError::Read { .. } => mkmodule_blockdev::ErrorKind::Io,
            TlsError::Unparsable { .. } | TlsError::Identity { .. } | TlsError::Verifier { .. } => {
                mkmodule_blockdev::ErrorKind::Config
            }
        }
    }
}

/// Loaded TLS credentials: the server certificate and key, and (with peer verification) the CA
/// that client certificates must be signed by.
#[derive(Clone)]
pub struct TlsCredentials {
    config: Arc<rustls::ServerConfig>,
    dir: PathBuf,
    verify_peer: bool,
}

impl fmt::Debug for TlsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCredentials")
            .field("dir", &self.dir)
            .field("verify_peer", &self.verify_peer)
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Unparsable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Unparsable {
            path: path.to_path_buf(),
            reason: "no PEM certificate (BEGIN CERTIFICATE) in it".into(),
        });
    }
    Ok(certs)
}

impl TlsCredentials {
    /// Loads credentials from `dir` in the layout qemu and nbdkit use: `server-cert.pem` (the
    /// server certificate, optionally followed by intermediates), `server-key.pem` (its
    /// private key: PKCS#8, PKCS#1 or SEC1), and, when `verify_peer` is set, `ca-cert.pem`:
    /// clients must then present a certificate signed by that CA.
    pub fn load(dir: impl AsRef<Path>, verify_peer: bool) -> Result<TlsCredentials, TlsError> {
        let dir = dir.as_ref();
        let cert_path = dir.join(SERVER_CERT);
        let key_path = dir.join(SERVER_KEY);
        let certs = certificates(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Unparsable {
            path: key_path.clone(),
            reason: format!("no private key found ({e})"),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Identity {
                cert: cert_path.clone(),
                key: key_path.clone(),
                source,
            })?;
        let builder = if verify_peer {
            let ca_path = dir.join(CA_CERT);
            let mut roots = RootCertStore::empty();
            for ca in certificates(&ca_path)? {
                roots.add(ca).map_err(|e| TlsError::Unparsable {
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Verifier {
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::Identity {
                cert: cert_path,
                key: key_path,
                source,
            })?;
        Ok(TlsCredentials {
            config: Arc::new(config),
            dir: dir.to_path_buf(),
            verify_peer,
        })
    }

    /// The directory the credentials were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether clients must present a certificate signed by the CA.
    pub fn verify_peer(&self) -> bool {
        self.verify_peer
    }

    /// The rustls server configuration a session starts from.
    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }
}

/// Certificates and a rustls client for the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    /// Writes `ca-cert.pem`, `server-cert.pem` (for "localhost"), `server-key.pem`,
    /// `client-cert.pem` and `client-key.pem` into `dir`.
    pub(crate) fn write_credentials(dir: &Path) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca-cert.pem"), ca.pem()).unwrap();
        for (who, names, usage) in [
            (
                "server",
                vec!["localhost".to_string()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            ("client", vec![], ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{who}-cert.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{who}-key.pem")), key.serialize_pem()).unwrap();
        }
    }

    /// A client trusting `dir/ca-cert.pem`, with the client certificate if `with_cert`.
    pub(crate) fn client(dir: &Path, with_cert: bool) -> rustls::ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(dir.join("ca-cert.pem")).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = if with_cert {
            builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(dir.join("client-cert.pem")).unwrap()],
                    PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap(),
                )
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        let name = ServerName::try_from("localhost").unwrap();
        rustls::ClientConnection::new(Arc::new(config), name).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loading_names_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = TlsCredentials::load(d, false).unwrap_err().to_string();
        assert!(
            err.contains(&d.join(SERVER_CERT).display().to_string()),
            "{err}"
        );

        testing::write_credentials(d);
        let creds = TlsCredentials::load(d, true).unwrap();
        assert!(creds.verify_peer());
        assert_eq!(creds.dir(), d);

        std::fs::write(d.join(SERVER_KEY), "garbage\n").unwrap();
        let err = TlsCredentials::load(d, false).unwrap_err();
        assert!(matches!(err, TlsError::Unparsable { .. }), "{err}");
        assert!(err.to_string().contains(SERVER_KEY), "{err}");

        // A key that is not the certificate's.
        std::fs::copy(d.join("client-key.pem"), d.join(SERVER_KEY)).unwrap();
        let err = TlsCredentials::load(d, false).unwrap_err();
        assert!(matches!(err, TlsError::Identity { .. }), "{err}");

        std::fs::copy(d.join("server-key.pem"), d.join("unused")).unwrap();
        std::fs::write(d.join(SERVER_CERT), "-----BEGIN NOTHING-----\n").unwrap();
        let err = TlsCredentials::load(d, false).unwrap_err();
        assert!(err.to_string().contains(SERVER_CERT), "{err}");

        // The CA is read only when client certificates are verified.
        let dir = tempfile::tempdir().unwrap();
        testing::write_credentials(dir.path());
        std::fs::remove_file(dir.path().join(CA_CERT)).unwrap();
        assert!(TlsCredentials::load(dir.path(), false).is_ok());
        let err = TlsCredentials::load(dir.path(), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(CA_CERT), "{err}");
    }
}
