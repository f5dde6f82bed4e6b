//! Test certificates (rcgen, behind the `tls` feature): [`pki`] writes a
//! CA, a server certificate for 127.0.0.1, a client certificate, and an
//! unrelated second CA with a client certificate of its own, as PEM files
//! in a folder, for an etcd on https with `--client-cert-auth`
//! ([`crate::Etcd::single_tls`], [`Pki::server`]) and the clients that
//! talk to it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::ServerTls;

/// The PEM files [`pki`] wrote.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// IP SAN 127.0.0.1, serverAuth and clientAuth (etcd 3.4's JSON gateway
    /// dials etcd's own gRPC with it).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// clientAuth, signed by `ca`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA unrelated to `ca`, and a client certificate it signed.
    pub other_ca: PathBuf,
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

impl Pki {
    /// An etcd server's settings with these files: the server certificate,
    /// and client certificates of `ca` required.
    pub fn server(&self) -> ServerTls<'_> {
        ServerTls {
            cert_file: &self.server_cert,
            key_file: &self.server_key,
            client_ca_file: Some(&self.ca),
        }
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate signed by `issuer`, written as `NAME.pem` and
/// `NAME-key.pem`.
fn leaf(
    dir: &Path,
    name: &str,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = usages.to_vec();
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// Makes the certificates of one test in `dir` (see the module
/// documentation).
pub fn pki(dir: &Path) -> Pki {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let root = ca("cairn test etcd CA");
    let other = ca("cairn test unrelated CA");
    let (server_cert, server_key) = leaf(
        dir,
        "server",
        &["127.0.0.1"],
        &[ServerAuth, ClientAuth],
        &root,
    );
    let (client_cert, client_key) = leaf(dir, "client", &[], &[ClientAuth], &root);
    let (other_client_cert, other_client_key) =
        leaf(dir, "other-client", &[], &[ClientAuth], &other);
    let (ca, other_ca) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
    std::fs::write(&ca, root.pem()).unwrap();
    std::fs::write(&other_ca, other.pem()).unwrap();
    Pki {
        ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
        other_ca,
        other_client_cert,
        other_client_key,
    }
}
