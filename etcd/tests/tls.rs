//! cairn-etcd over TLS against a real etcd 3.4 (Debian's etcd-server) on 127.0.0.1 serving
//! clients on https only, with `--client-cert-auth`, and certificates made by testkit's `tls::pki` (rcgen):
//! a CA, a server certificate (IP SAN 127.0.0.1, serverAuth and clientAuth: etcd's JSON gateway
//! dials etcd's own gRPC with it), a client certificate, and an unrelated second CA with its
//! own client certificate. KV, a transaction, a kept lease and a watch work with the right
//! client certificate; no client certificate, a client certificate of the other CA, a server
//! not trusted (the other CA), a host name the certificate does not name, plain HTTP to the TLS
//! port and TLS to a plain HTTP port each fail at once with an error that says why; bad PEM
//! files are refused when the settings are built, naming the file.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_etcd::{
    Client, Compare, CompareOp, Config, Error, EventKind, GetOptions, LeaseStatus, Op, PutOptions,
    Tls, Txn, WatchOptions, WatchUpdate,
};
use cairn_testkit::tls::{pki, Pki};
use cairn_testkit::Etcd;

/// An etcd on https that wants client certificates of `pki.ca`.
fn etcd(dir: &Path, pki: &Pki) -> Etcd {
    Etcd::single_tls(dir, "tls", pki.server())
}

fn config(tls: Option<Tls>) -> Config {
    Config {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        tls,
        ..Config::default()
    }
}

fn client(url: &str, tls: Tls) -> Client {
    Client::with_config([url], config(Some(tls))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_txn_lease_and_watch_over_tls_with_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let etcd = etcd(tmp.path(), &pki);
    assert!(etcd.client_url.starts_with("https://127.0.0.1:"));
    let tls = Tls::with_client_cert(&pki.ca, &pki.client_cert, &pki.client_key).unwrap();
    assert_eq!(tls.ca_file(), pki.ca);
    assert_eq!(
        tls.client_cert(),
        Some((pki.client_cert.as_path(), pki.client_key.as_path()))
    );
    // a bare HOST:PORT means https:// when TLS is configured
    let bare = format!("127.0.0.1:{}", etcd.client_port());
    let c = client(&bare, tls);
    assert_eq!(c.endpoints(), std::slice::from_ref(&etcd.client_url));

    let st = c.status().await.unwrap();
    assert!(st.version.starts_with("3."), "{st:?}");

    // a watch first, so it sees everything below
    let mut w = c
        .watch("/tls/", WatchOptions::new().prefix())
        .await
        .unwrap();

    c.put("/tls/a", "1", PutOptions::new()).await.unwrap();
    let r = c.get("/tls/a", GetOptions::new()).await.unwrap();
    assert_eq!(r.kvs[0].value_str(), "1");

    let t = c
        .txn(
            Txn::new()
                .when([Compare::value("/tls/a", CompareOp::Equal, "1")])
                .and_then([Op::put("/tls/b", "2", PutOptions::new())])
                .or_else([Op::put("/tls/wrong", "x", PutOptions::new())]),
        )
        .await
        .unwrap();
    assert!(t.succeeded);

    // a lease kept alive past three of its TTLs, its key still there
    let kept = c.grant_kept(2).await.unwrap();
    c.put("/tls/kept", "1", PutOptions::new().lease(kept.id()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        matches!(kept.status(), LeaseStatus::Alive { ttl: 2, .. }),
        "{:?}",
        kept.status()
    );
    assert_eq!(
        c.get("/tls/kept", GetOptions::new()).await.unwrap().count,
        1
    );
    kept.revoke().await.unwrap();

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(Ok(WatchUpdate::Events { events, .. }))) => seen.extend(
                events
                    .into_iter()
                    .map(|e| (e.kind, e.kv.key_str().into_owned())),
            ),
            other => panic!("watch: {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            (EventKind::Put, "/tls/a".to_string()),
            (EventKind::Put, "/tls/b".to_string()),
            (EventKind::Put, "/tls/kept".to_string()),
            (EventKind::Delete, "/tls/kept".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_certificates_fail_at_once_saying_why() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let etcd = etcd(tmp.path(), &pki);
    let url = etcd.client_url.clone();

    let expect_tls = |e: Error, wants: &[&str]| {
        let text = e.to_string();
        assert!(matches!(e, Error::Tls { .. }), "{e:?}");
        assert!(!e.is_transient() && e.is_connect(), "{e:?}");
        assert_eq!(e.endpoint(), Some(url.as_str()));
        for w in wants {
            assert!(text.contains(w), "{text:?} lacks {w:?}");
        }
        eprintln!("{text}");
    };

    // no client certificate: etcd refuses the connection (TLS 1.3: right after the handshake)
    let t = Instant::now();
    let c = client(&url, Tls::new(&pki.ca).unwrap());
    let e = c.get("/x", GetOptions::new()).await.unwrap_err();
    expect_tls(
        e,
        &["etcd wants a client certificate and none is configured"],
    );
    // a write, and a watch, the same
    let e = c.put("/x", "1", PutOptions::new()).await.unwrap_err();
    expect_tls(e, &["client certificate"]);
    let e = c.watch("/x", WatchOptions::new()).await.unwrap_err();
    expect_tls(e, &["client certificate"]);

    // a client certificate of another CA
    let other =
        Tls::with_client_cert(&pki.ca, &pki.other_client_cert, &pki.other_client_key).unwrap();
    let e = client(&url, other)
        .get("/x", GetOptions::new())
        .await
        .unwrap_err();
    expect_tls(
        e,
        &["etcd refused the client certificate", "other-client.pem"],
    );

    // the refusal comes right after the handshake (TLS 1.3), racing the first request: fresh
    // clients, fresh connections, always the same clear error
    for i in 0..20 {
        let tls = if i % 2 == 0 {
            Tls::new(&pki.ca).unwrap()
        } else {
            Tls::with_client_cert(&pki.ca, &pki.other_client_cert, &pki.other_client_key).unwrap()
        };
        let c = client(&url, tls);
        let e = if i % 4 < 2 {
            c.get("/x", GetOptions::new()).await.unwrap_err()
        } else {
            c.put("/x", "1", PutOptions::new()).await.unwrap_err()
        };
        assert!(matches!(e, Error::Tls { .. }), "attempt {i}: {e:?}");
    }

    // the server's certificate is not trusted: its CA is not the one given
    let wrong = Tls::with_client_cert(&pki.other_ca, &pki.client_cert, &pki.client_key).unwrap();
    let e = client(&url, wrong)
        .get("/x", GetOptions::new())
        .await
        .unwrap_err();
    expect_tls(
        e,
        &[
            "invalid peer certificate",
            "UnknownIssuer",
            "does not chain to a CA of",
            "other-ca.pem",
        ],
    );

    // the right CA, but a host name the certificate does not name (it has IP 127.0.0.1 only)
    let right = Tls::with_client_cert(&pki.ca, &pki.client_cert, &pki.client_key).unwrap();
    let by_name = format!("https://localhost:{}", etcd.client_port());
    let e = client(&by_name, right.clone())
        .get("/x", GetOptions::new())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(
        text.contains("localhost") && text.contains("not valid for name"),
        "{text}"
    );
    eprintln!("{text}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refusals took {:?}",
        t.elapsed()
    );

    // a bad endpoint first: the request moves on to the next one and works
    let c = Client::with_config([by_name.as_str(), url.as_str()], config(Some(right))).unwrap();
    c.put("/moved", "1", PutOptions::new()).await.unwrap();
    assert_eq!(c.current_endpoint(), url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_and_tls_to_a_plain_port_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let etcd = etcd(tmp.path(), &pki);

    // plain HTTP to etcd's TLS port: an answer or a broken connection, within the bounds
    let plain = format!("http://127.0.0.1:{}", etcd.client_port());
    let c = Client::with_config([plain.as_str()], config(None)).unwrap();
    let t = Instant::now();
    let e = c.get("/x", GetOptions::new()).await.unwrap_err();
    eprintln!("{e}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(
        matches!(
            e,
            Error::Http { status: 400, .. } | Error::Transport { .. } | Error::Connect { .. }
        ),
        "{e:?}"
    );
    assert_eq!(e.endpoint(), Some(plain.as_str()));

    // TLS to a port that answers in clear
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let tls = Tls::with_client_cert(&pki.ca, &pki.client_cert, &pki.client_key).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let t = Instant::now();
    let e = client(&url, tls)
        .get("/x", GetOptions::new())
        .await
        .unwrap_err();
    eprintln!("{e}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(
        e.to_string().contains("does the endpoint speak TLS?"),
        "{e}"
    );

    // a port that accepts and never answers the handshake: the connect timeout
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", silent.local_addr().unwrap());
    let tls = Tls::new(&pki.ca).unwrap();
    let t = Instant::now();
    let e = client(&url, tls)
        .put("/x", "1", PutOptions::new())
        .await
        .unwrap_err();
    eprintln!("{e}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        matches!(e, Error::Connect { .. }) && e.is_transient(),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("TLS handshake not done within"),
        "{e}"
    );
    drop(silent);
}

#[test]
fn endpoints_and_settings_that_do_not_go_together_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let tls = Tls::new(&pki.ca).unwrap();

    let e = Client::new(["https://10.0.0.1:2379"]).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("\"https://10.0.0.1:2379\"")
            && text.contains("CA file")
            && text.contains("Config::tls"),
        "{text}"
    );
    let e = Client::with_config(["http://10.0.0.1:2379"], config(Some(tls.clone()))).unwrap_err();
    assert!(e.to_string().contains("TLS is configured"), "{e}");
    let e = Client::with_config(
        ["https://10.0.0.1:2379", "http://10.0.0.2:2379"],
        config(Some(tls)),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("one client speaks TLS to every endpoint or to none"),
        "{e}"
    );
}

#[test]
fn bad_pem_files_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let d = tmp.path();
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let expect = |r: Result<Tls, Error>, path: &Path, wants: &str| {
        let e = r.unwrap_err();
        let text = e.to_string();
        eprintln!("{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(wants), "{text:?} lacks {wants:?}");
    };

    let missing = d.join("missing.pem");
    expect(Tls::new(&missing), &missing, "CA file");
    expect(Tls::new(&missing), &missing, "does not exist");
    expect(Tls::new(d), d, "not a regular file");
    let empty = write("empty.pem", "");
    expect(Tls::new(&empty), &empty, "no certificate in it");
    // a key where the CA bundle should be
    expect(
        Tls::new(&pki.client_key),
        &pki.client_key,
        "no certificate in it",
    );
    let garbage = write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    );
    expect(Tls::new(&garbage), &garbage, "not valid PEM");
    let cut = write("cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    expect(Tls::new(&cut), &cut, "without its END line");
    let not_der = write(
        "not-der.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    );
    expect(Tls::new(&not_der), &not_der, "not usable as a CA");

    // the client's files
    expect(
        Tls::with_client_cert(&pki.ca, &missing, &pki.client_key),
        &missing,
        "client certificate file",
    );
    expect(
        Tls::with_client_cert(&pki.ca, &pki.client_cert, &pki.client_cert),
        &pki.client_cert,
        "no private key in it",
    );
    let encrypted = write(
        "encrypted-key.pem",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\naGVsbG8=\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    expect(
        Tls::with_client_cert(&pki.ca, &pki.client_cert, &encrypted),
        &encrypted,
        "encrypted private key",
    );
    let not_der = write(
        "client-not-der.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    );
    expect(
        Tls::with_client_cert(&pki.ca, &not_der, &pki.client_key),
        &not_der,
        "unusable certificate",
    );
    // a key that is not the certificate's
    let r = Tls::with_client_cert(&pki.ca, &pki.client_cert, &pki.other_client_key);
    expect(r, &pki.other_client_key, "do not match");
    let r = Tls::with_client_cert(&pki.ca, &pki.client_cert, &pki.other_client_key);
    expect(r, &pki.client_cert, "do not match");
    // both or neither
    let r = Tls::from_files(&pki.ca, Some(&pki.client_cert), None);
    expect(r, &pki.client_cert, "needs its private key file");
    let r = Tls::from_files(&pki.ca, None, Some(&pki.client_key));
    expect(r, &pki.client_key, "needs its certificate file");
    assert!(Tls::from_files(&pki.ca, None, None).is_ok());
}
