//! [`Tls`]: what `https://` endpoints need, read from PEM files when it is built: the CA bundle
//! etcd's server certificates must chain to (etcd clusters use private CAs, so there is no
//! fallback to the system's or the web's roots), and optionally a client certificate with its
//! key for etcd's `--client-cert-auth`. rustls with ring, TLS 1.2 and 1.3.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::Error;

/// The largest PEM file read (a CA bundle of a few hundred certificates fits).
const PEM_LIMIT: u64 = 4 << 20;

/// TLS settings for a [`Client`](crate::Client) (see [`Config::tls`](crate::Config::tls)):
/// a CA bundle (required) and an optional client certificate chain and key, loaded and
/// checked by the constructors; cheap to clone.
///
/// The server's certificate must chain to a CA of the bundle and name the endpoint's host (a
/// DNS name, or an IP address SAN for an IP endpoint).
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    ca_file: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client.as_ref().map(|c| &c.0))
            .field("client_key", &self.client.as_ref().map(|c| &c.1))
            .finish()
    }
}

impl Tls {
    /// Verifies servers against the CA certificates in `ca_file` (PEM, one or more
    /// `CERTIFICATE` blocks); no client certificate.
    pub fn new(ca_file: impl AsRef<Path>) -> Result<Tls, Error> {
        Tls::from_files(ca_file.as_ref(), None, None)
    }

    /// As [`Tls::new`], and presents the certificate chain in `cert_file` (PEM, the client's
    /// certificate first) with the private key in `key_file` (PEM: PKCS#8 `PRIVATE KEY`,
    /// `RSA PRIVATE KEY` or `EC PRIVATE KEY`, not encrypted).
    pub fn with_client_cert(
        ca_file: impl AsRef<Path>,
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<Tls, Error> {
        Tls::from_files(
            ca_file.as_ref(),
            Some(cert_file.as_ref()),
            Some(key_file.as_ref()),
        )
    }

    /// The general form, for settings that come separately (fleet's `etcd_cafile`,
    /// `etcd_certfile`, `etcd_keyfile`): a certificate and a key are given both or neither.
    pub fn from_files(
        ca_file: &Path,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
    ) -> Result<Tls, Error> {
        let client = match (cert_file, key_file) {
            (Some(c), Some(k)) => Some((c.to_path_buf(), k.to_path_buf())),
            (None, None) => None,
            (Some(c), None) => {
                return Err(Error::TlsConfig {
                    reason: format!(
                        "a client certificate ({}) needs its private key file",
                        c.display()
                    ),
                })
            }
            (None, Some(k)) => {
                return Err(Error::TlsConfig {
                    reason: format!("a client key ({}) needs its certificate file", k.display()),
                })
            }
        };
        let mut roots = RootCertStore::empty();
        for (i, cert) in certificates(ca_file, "CA file")?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| Error::TlsFile {
                path: ca_file.to_path_buf(),
                what: "CA file",
                reason: format!("certificate {} is not usable as a CA: {e}", i + 1),
            })?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| Error::TlsConfig {
                    reason: format!("{e}"),
                })?
                .with_root_certificates(roots);
        let config = match &client {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let chain = certificates(cert_file, "client certificate file")?;
                let key = private_key(key_file)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => Error::TlsConfig {
                            reason: format!(
                                "the client certificate {} and the key {} do not match (the \
                                 key is not the certificate's)",
                                cert_file.display(),
                                key_file.display()
                            ),
                        },
                        rustls::Error::InvalidCertificate(_) => Error::TlsFile {
                            path: cert_file.clone(),
                            what: "client certificate file",
                            reason: format!("unusable certificate: {e}"),
                        },
                        e => Error::TlsFile {
                            path: key_file.clone(),
                            what: "client key file",
                            reason: format!("unusable key: {e}"),
                        },
                    })?
            }
        };
        Ok(Tls {
            config: Arc::new(config),
            ca_file: ca_file.to_path_buf(),
            client,
        })
    }

    /// The CA bundle servers are verified against.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The client certificate and key files, when there are.
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        self.client
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        (*self.config).clone()
    }
}

/// A PEM file's bytes, or an error naming it.
fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    let bad = |reason: String| Error::TlsFile {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_string(),
            _ => format!("cannot read: {e}"),
        })
    })?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > PEM_LIMIT {
        return Err(bad(format!(
            "{} bytes, larger than {PEM_LIMIT} for a PEM file",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))
}

/// Every `CERTIFICATE` block of a PEM file, at least one.
fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read(path, what)?;
    let bad = |reason: String| Error::TlsFile {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {}", pem_error(&e))))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)".into(),
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    const WHAT: &str = "client key file";
    let bytes = read(path, WHAT)?;
    let bad = |reason: String| Error::TlsFile {
        path: path.to_path_buf(),
        what: WHAT,
        reason,
    };
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            if bytes
                .windows(29)
                .any(|w| w == b"BEGIN ENCRYPTED PRIVATE KEY--")
            {
                bad("an encrypted private key: give the key without a passphrase".into())
            } else {
                bad(
                    "no private key in it (expected PEM \"-----BEGIN PRIVATE KEY-----\", \
                     \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")"
                        .into(),
                )
            }
        }
        e => bad(format!("not valid PEM: {}", pem_error(&e))),
    })
}

fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section without its END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "invalid base64 inside a section".into(),
        e => format!("{e}"),
    }
}

/// Why a handshake (or the first read after it) failed with `r`: the rustls error with a hint
/// naming the file to look at. `in_connect`: the error came while connecting, so any TLS error
/// counts; afterwards only a peer refusing the certificates does (TLS 1.3 checks the client's
/// certificate after the client finished its handshake).
pub(crate) fn failure(r: &rustls::Error, in_connect: bool, tls: &Tls) -> Option<String> {
    use rustls::AlertDescription as A;
    let hint = match r {
        rustls::Error::InvalidCertificate(c) => match c {
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature => {
                format!(
                    " (etcd's certificate does not chain to a CA of {})",
                    tls.ca_file.display()
                )
            }
            _ => String::new(),
        },
        rustls::Error::AlertReceived(
            A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied
            | A::HandshakeFailure,
        ) => match &tls.client {
            None => " (etcd wants a client certificate and none is configured)".into(),
            Some((cert, _)) => format!(" (etcd refused the client certificate {})", cert.display()),
        },
        _ if in_connect => " (does the endpoint speak TLS?)".into(),
        _ => return None,
    };
    Some(format!("{r}{hint}"))
}

/// The rustls error in an error's chain, also inside `io::Error`s (whose `source` skips the
/// error they wrap; hyper-rustls wraps tokio-rustls' `io::Error` in another).
pub(crate) fn find_rustls<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        let inner: &(dyn std::error::Error + 'static) = inner;
        if let Some(r) = find_rustls(inner) {
            return Some(r);
        }
    }
    e.source().and_then(find_rustls)
}
