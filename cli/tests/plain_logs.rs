//! `cairn` writing its log to a pipe (a CI log, `cairn build ... 2>log`):
//! plain text, no ANSI colour codes (issue 19 item 3). The warning comes
//! from a build whose mirror is a loopback port nobody listens on (one
//! retry, then the error); nothing is downloaded.

use std::path::Path;
use std::process::Command;

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let t = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(repo.join("images"))
        .arg(t.path())
        .status()
        .unwrap();
    assert!(st.success());
    let _ = std::fs::remove_file(t.path().join("images/test.lock"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, err) = cairn_testkit::run_piped_plain(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("build")
            .arg(t.path().join("images/test.yaml"))
            .arg("--out")
            .arg(t.path().join("out"))
            .arg("--cache")
            .arg(t.path().join("cache"))
            .args(["--mirror", &format!("http://127.0.0.1:{port}/debian")])
            .args(["--retries", "1"])
            .env("RUST_LOG", "warn"),
    );
    assert!(!ok, "{err}");
    assert!(err.contains("WARN") && err.contains("try 2 of 2"), "{err}");
}
