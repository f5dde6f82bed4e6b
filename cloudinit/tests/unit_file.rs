//! The shipped `units/cairn-cloudinit.service`: systemd accepts it (systemd-analyze verify, no complaint) and it says what the image relies on.

use std::path::Path;
use std::process::Command;

fn unit_text() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("units/cairn-cloudinit.service");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let text = unit_text();
    // verify checks that ExecStart exists: point it at the binary just built
    let t = tempfile::tempdir().unwrap();
    let unit = t.path().join("cairn-cloudinit.service");
    std::fs::write(
        &unit,
        text.replace(
            "/usr/bin/cairn-cloudinit",
            env!("CARGO_BIN_EXE_cairn-cloudinit"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cairn-cloudinit.service"))
        .collect();
    assert!(complaints.is_empty(), "{stderr}");
}

#[test]
fn the_unit_runs_the_agent_once_per_boot_before_etcd() {
    let text = unit_text();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=/usr/bin/cairn-cloudinit",
        "Wants=network-online.target",
        "WantedBy=multi-user.target",
    ] {
        assert!(lines.contains(&want), "{want} missing:\n{text}");
    }
    let before = lines
        .iter()
        .find(|l| l.starts_with("Before="))
        .expect("a Before= line");
    assert!(before.contains("etcd.service"), "{before}");
    assert!(before.contains("fleet.service"), "{before}");
    // not after network-online.target: local data sources do not wait for
    // the network (the binary waits for it before a network source)
    let after = lines
        .iter()
        .find(|l| l.starts_with("After="))
        .expect("an After= line");
    assert!(!after.contains("network-online.target"), "{after}");
    // early, beside sysinit.target: not after basic.target, so that etcd
    // starts when basic.target is reached; after what useradd and
    // write_files rely on
    assert!(lines.contains(&"DefaultDependencies=no"), "{text}");
    for dep in [
        "local-fs.target",
        "systemd-sysusers.service",
        "systemd-tmpfiles-setup.service",
    ] {
        let deps = after.trim_start_matches("After=");
        assert!(deps.split_whitespace().any(|a| a == dep), "{dep}: {after}");
    }
    // without the default dependencies, stopped at shutdown by hand
    assert!(lines.contains(&"Conflicts=shutdown.target"), "{text}");
    assert!(before.contains("shutdown.target"), "{before}");
    // no Requires=/BindsTo= on anything: a failure must not hold the boot
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("Requires=") || l.starts_with("BindsTo=")),
        "{text}"
    );
}
