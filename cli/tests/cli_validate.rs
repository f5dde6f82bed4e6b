//! `cairn validate` as a user runs it: the real binary on files, its
//! output lines, JSON and exit status.

use std::process::{Command, Output};

mod common;
use common::repo_root;

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("running cairn")
}

#[test]
fn valid_corpus_file_passes_silently() {
    let f = repo_root().join(
        "cloudconfig/tests/fixtures/corpus/poseidon+matchbox__examples_etcd-large_cloud_etcd1.yaml",
    );
    let o = cairn(&["validate", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(o.stdout.is_empty());
}

#[test]
fn warnings_alone_fail_like_coreos_cloudinit() {
    // rust-fleet's user-data is valid but configures the legacy etcd 0.4
    // section, whose options do not work for etcd 3: a warning, and a
    // non-zero exit
    let f = repo_root().join("cloudconfig/tests/fixtures/corpus/jimmycuadra+rust-fleet__user-data");
    let o = cairn(&["validate", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains(":5: warning: deprecated key \"etcd\""),
        "{out}"
    );
    // coreos-vagrant's sample configures fleet, which cairn runs: clean
    let f = repo_root()
        .join("cloudconfig/tests/fixtures/corpus/coreos+coreos-vagrant__user-data.sample");
    let o = cairn(&["validate", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn findings_print_file_line_kind_message_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("my-node.yaml");
    std::fs::write(
        &f,
        "#cloud-config\nhostname: a\nfoo: 1\ncoreos:\n  update:\n    reboot-strategy: sometimes\n",
    )
    .unwrap();
    let name = f.to_str().unwrap();
    let o = cairn(&["validate", name]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!("{name}:3: warning: ")),
        "{out}"
    );
    assert!(lines[0].contains("\"foo\""), "{out}");
    assert_eq!(
        lines[1],
        format!("{name}:6: error: invalid value sometimes")
    );

    let o = cairn(&["validate", "--json", name]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[1]["kind"], "error");
    assert_eq!(v[1]["line"], 6);
    assert_eq!(v[1]["message"], "invalid value sometimes");
}

#[test]
fn a_missing_file_is_named() {
    let o = cairn(&["validate", "/nonexistent/node.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("reading /nonexistent/node.yaml"), "{err}");
}
