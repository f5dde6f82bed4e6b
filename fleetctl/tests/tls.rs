//! fleetctl over TLS against a real etcd 3.4 serving clients on https only
//! with `--client-cert-auth` (testkit's `Etcd::single_tls`), certificates
//! made by testkit's `tls::pki` (rcgen): `--ca-file`, `--cert-file`, `--key-file` (or
//! `FLEETCTL_CA_FILE`...) reach it; without the client certificate the
//! command fails at once with one line that says why; flags that do not
//! go together are refused before anything is sent, naming them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_etcd::{Client, Config, Tls};
use cairn_fleet::model::MachineRecord;
use cairn_fleet::registry::{Keys, Registry};
use cairn_testkit::tls::pki;
use cairn_testkit::Etcd;
use common::Run;

/// fleetctl with `args`, none of the test's own `FLEETCTL_*` variables,
/// and `env` set.
fn fleetctl(args: &[&str], env: &[(&str, &Path)]) -> (Run, Duration) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEETCTL_") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .args(args)
        .stdin(Stdio::null());
    let t = Instant::now();
    let out = c.output().unwrap();
    (out.into(), t.elapsed())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn list_machines_over_tls_with_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let etcd = Etcd::single_tls(tmp.path(), "tls", pki.server());
    let url = etcd.client_url.clone();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // an agent's presence, written over TLS
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = Tls::with_client_cert(&pki.ca, &pki.client_cert, &pki.client_key).unwrap();
        let config = Config {
            tls: Some(tls),
            ..Config::default()
        };
        let reg = Registry::new(
            Client::with_config([&url], config).unwrap(),
            Keys::default(),
        );
        let m = MachineRecord {
            id: "m1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            public_ip: "10.0.0.1".into(),
            metadata: [("role".to_string(), "web".to_string())].into(),
            version: "0.1.0".into(),
        };
        reg.announce(&m, 0).await.unwrap();
    });
    let want = "m1aaaaaa...\t10.0.0.1\trole=web\n";

    // the flags
    let (r, _) = fleetctl(
        &[
            "--endpoint",
            &url,
            "--ca-file",
            s(&pki.ca),
            "--cert-file",
            s(&pki.client_cert),
            "--key-file",
            s(&pki.client_key),
            "list-machines",
            "--no-legend",
        ],
        &[],
    );
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, want, ""),
        "{r:?}"
    );

    // the environment, as fleet's; a bare HOST:PORT means https:// then
    let host_port = url.trim_start_matches("https://");
    let (r, _) = fleetctl(
        &["--endpoint", host_port, "list-machines", "--no-legend"],
        &[
            ("FLEETCTL_CA_FILE", &pki.ca),
            ("FLEETCTL_CERT_FILE", &pki.client_cert),
            ("FLEETCTL_KEY_FILE", &pki.client_key),
        ],
    );
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, want, ""),
        "{r:?}"
    );

    // no client certificate: etcd refuses it, at once, in one line
    let (r, took) = fleetctl(
        &["--endpoint", &url, "--ca-file", s(&pki.ca), "list-machines"],
        &[],
    );
    assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stderr.contains(&url), "{r:?}");
    assert!(
        r.stderr
            .contains("etcd wants a client certificate and none is configured"),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?} {r:?}");

    // no TLS at all to an https endpoint: refused before anything is sent
    let (r, _) = fleetctl(&["--endpoint", &url, "list-machines"], &[]);
    assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stderr.contains("https://"), "{r:?}");
}

#[test]
fn tls_flags_that_do_not_go_together_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        tmp.path().join("ca.pem"),
        tmp.path().join("c.pem"),
        tmp.path().join("k.pem"),
    );
    let endpoint = ["--endpoint", "https://127.0.0.1:1"];
    let run = |args: &[&str], env: &[(&str, &Path)]| {
        let all: Vec<&str> = endpoint.iter().chain(args).copied().collect();
        let (r, _) = fleetctl(&[all.as_slice(), &["list-machines"]].concat(), env);
        assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        r.stderr
    };
    assert_eq!(
        run(&["--cert-file", s(&cert), "--key-file", s(&key)], &[]),
        "--cert-file and --key-file need --ca-file (the CA that signed etcd's server \
         certificate)\n"
    );
    assert_eq!(
        run(&[], &[("FLEETCTL_KEY_FILE", &key)]),
        "--cert-file and --key-file need --ca-file (the CA that signed etcd's server \
         certificate)\n"
    );
    assert_eq!(
        run(&["--ca-file", s(&ca), "--cert-file", s(&cert)], &[]),
        format!(
            "--cert-file {} needs --key-file (the client certificate's key)\n",
            cert.display()
        )
    );
    assert_eq!(
        run(&["--ca-file", s(&ca), "--key-file", s(&key)], &[]),
        format!(
            "--key-file {} needs --cert-file (the client certificate)\n",
            key.display()
        )
    );
    // a CA file that is not there: named
    let e = run(&["--ca-file", s(&ca)], &[]);
    assert!(
        e.starts_with("Unable to set up TLS from --ca-file, --cert-file, --key-file: "),
        "{e}"
    );
    assert!(e.contains(s(&ca)), "{e}");
    // empty flags are no TLS (fleet's defaults are empty): https:// is refused
    let e = run(&["--ca-file", "", "--cert-file", "", "--key-file", ""], &[]);
    assert!(e.contains("https://"), "{e}");
}
