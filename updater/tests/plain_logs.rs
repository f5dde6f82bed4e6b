//! `cairn-update` writing its log to a pipe (as `apply >log 2>&1` or the
//! journal would take it): plain text, no ANSI colour codes (issue 19
//! item 3).

mod common;

use std::fs;
use std::process::Command;

use cairn_formats::channel::keys::SecretKey;
use common::*;

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start();
    let m = Machine::new(
        &t.path().join("machine"),
        &server,
        &SecretKey::from_seed([42; 32]),
        "1",
        &bytes(1, 1 << 20),
    );
    // no trusted key: the refusal is logged as an error
    fs::remove_file(m.paths.trusted_keys.join("update.pub")).unwrap();
    let (ok, err) = cairn_testkit::run_piped_plain(
        Command::new(env!("CARGO_BIN_EXE_cairn-update"))
            .args(m.cli_args())
            .args(["apply", "--no-reboot"])
            .env("RUST_LOG", "info"),
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("ERROR") && err.contains("update refused: no trusted update keys"),
        "{err}"
    );
}

/// An error whose message already says its cause (`{path}: {source}`) is
/// printed with that cause once, not once per link of the chain.
#[test]
fn an_error_says_its_cause_once() {
    let t = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-update"))
        // a directory where the settings file should be
        .args(["--config", t.path().to_str().unwrap()])
        .args(["--state-dir", t.path().join("state").to_str().unwrap()])
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("cairn-update: error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains(&t.path().display().to_string()), "{line}");
    assert_eq!(line.matches("os error 21").count(), 1, "{line}");
}
