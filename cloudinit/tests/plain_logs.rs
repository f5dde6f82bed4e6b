//! `cairn-cloudinit` writing its log to a pipe (the journal, or a log file):
//! plain text, no ANSI colour codes (issue 19 item 3).

use std::process::Command;

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no-such-root");
    let (ok, err) = cairn_testkit::run_piped_plain(
        Command::new(env!("CARGO_BIN_EXE_cairn-cloudinit"))
            .arg("--root")
            .arg(&missing)
            .env("RUST_LOG", "info"),
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("ERROR") && err.contains("no-such-root"),
        "{err}"
    );
}
