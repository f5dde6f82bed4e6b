//! `cairn-cloudinit` writing its log to a pipe (the journal, or a log file):
//! plain text, no ANSI colour codes (issue 19 item 3).

use std::process::{Command, Stdio};

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no-such-root");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-cloudinit"))
        .arg("--root")
        .arg(&missing)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("ERROR") && err.contains("no-such-root"),
        "{err}"
    );
    assert!(!err.contains("\x1b["), "colour codes in a pipe: {err:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\x1b["));
}
