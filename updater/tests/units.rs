//! The unit files under `units/`: `systemd-analyze verify` accepts them
//! (with ExecStart pointing at the freshly built binary) without a single
//! warning, and the health gate is wired the way boot assessment needs.
//! Needs the Debian package `systemd` (systemd-analyze).

use std::fs;
use std::path::Path;
use std::process::Command;

const UNITS: [&str; 4] = [
    "cairn-update.service",
    "cairn-update.timer",
    "cairn-health.service",
    "cairn-loader-update.service",
];

fn unit(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("units")
            .join(name),
    )
    .unwrap()
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let t = tempfile::tempdir().unwrap();
    for u in UNITS {
        // bootctl comes with Debian's systemd-boot, which the image has
        // and a test machine need not: any executable stands in for it
        let text = unit(u)
            .replace("/usr/bin/cairn-update", env!("CARGO_BIN_EXE_cairn-update"))
            .replace("ExecStart=bootctl ", "ExecStart=/bin/true ");
        fs::write(t.path().join(u), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(UNITS.iter().map(|u| t.path().join(u)))
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze (Debian package systemd) is needed for this test: {e}")
        });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {err}");
    assert!(
        err.trim().is_empty(),
        "systemd-analyze verify warned: {err}"
    );
}

#[test]
fn the_health_gate_is_wired_for_boot_assessment() {
    let h = unit("cairn-health.service");
    for line in [
        "Before=boot-complete.target",
        "RequiredBy=boot-complete.target",
        "FailureAction=reboot",
        "ExecStart=/usr/bin/cairn-update health",
    ] {
        assert!(h.lines().any(|l| l.starts_with(line)), "{line} missing");
    }
    assert!(h.lines().any(|l| l.starts_with("TimeoutStartSec=")));
    let t = unit("cairn-update.timer");
    assert!(t.contains("WantedBy=timers.target"));
    let s = unit("cairn-update.service");
    assert!(s.contains("ExecStart=/usr/bin/cairn-update apply"));
}

#[test]
fn the_loader_is_updated_only_after_the_health_gate() {
    let u = unit("cairn-loader-update.service");
    for line in [
        "Requires=boot-complete.target",
        "After=boot-complete.target",
        "WantedBy=boot-complete.target",
        "RequiresMountsFor=/efi",
        "ConditionKernelCommandLine=cairn.slot",
        "ExecStart=bootctl --no-variables --graceful update",
    ] {
        assert!(u.lines().any(|l| l == line), "{line} missing");
    }
    // the gate runs before the target this unit waits for
    assert!(unit("cairn-health.service")
        .lines()
        .any(|l| l == "Before=boot-complete.target"));
}
