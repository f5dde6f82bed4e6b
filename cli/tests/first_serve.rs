//! The second recorded session of `docs/usage.md` ("First steps",
//! transcript `serve`), run as written: every command line of the document
//! goes to `sh -c` in a folder laid out as a user's checkout (a copy of
//! `examples/`, `out/default` the default image, `cairn` on the PATH), in a
//! network namespace of the test's own so the document's fixed ports are
//! free; `cairn serve` is started in the background and the later commands
//! (curl over HTTP and TFTP, the operators' listener) talk to it. Every
//! expected line of the document must be in what each command printed.
//!
//! Needs root (the namespace) and curl.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::transcript;

/// A process holding a fresh network namespace with only `lo`, up.
struct Netns(Child);

impl Netns {
    fn new() -> Netns {
        let child = Command::new("unshare")
            .args(["--net", "sh", "-c", "ip link set lo up && exec sleep 3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (package util-linux)");
        let ns = Netns(child);
        let start = Instant::now();
        while !ns.sh("ip -o link show lo").contains("UP") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "lo never came up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ns
    }

    fn command(&self, script: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.0.id()))
            .args(["sh", "-c", script]);
        c
    }

    fn sh(&self, script: &str) -> String {
        let out = self.command(script).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server started by the session: killed when the test ends, also when
/// it fails (a leaked one would hold the document's state directory).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_documented_serve_session_runs_as_written() {
    cairn_testkit::require("curl", "curl");
    cairn_testkit::require("nsenter", "util-linux");
    let image = common::default_image();
    let work = tempfile::tempdir().unwrap();
    let home = work.path();
    let st = Command::new("cp")
        .arg("-a")
        .arg(common::repo_root().join("examples"))
        .arg(home)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::create_dir_all(home.join("out")).unwrap();
    std::os::unix::fs::symlink(&image, home.join("out/default")).unwrap();
    std::fs::create_dir_all(home.join("bin")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cairn"), home.join("bin/cairn")).unwrap();
    let path = format!(
        "{}:{}",
        home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let ns = Netns::new();
    let steps = transcript::load("serve");
    assert!(
        steps[0].command.starts_with("cairn serve "),
        "the session starts the server: {:?}",
        steps[0].command
    );
    let log = home.join("serve.log");
    let mut serve = ns
        .command(&format!(
            "exec {} > {} 2>&1",
            steps[0].command,
            log.display()
        ))
        .current_dir(home)
        .env("PATH", &path)
        .env("NO_COLOR", "1")
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    // up once /healthz answers on the document's HTTP address
    let health = steps[0]
        .argv()
        .windows(2)
        .find(|w| w[0] == "--http-addr")
        .map(|w| format!("http://{}/healthz", w[1]))
        .expect("the serve command names --http-addr");
    let start = Instant::now();
    while ns.sh(&format!("curl -sf {health}")).trim() != "ok" {
        if let Ok(Some(st)) = serve.0.try_wait() {
            panic!(
                "cairn serve exited ({st}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "cairn serve did not answer {health}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    for step in &steps[1..] {
        let out = ns
            .command(&step.command)
            .current_dir(home)
            .env("PATH", &path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "`{}` failed:\n{text}", step.command);
        step.check(&text);
    }
    drop(serve);
    steps[0].check(&std::fs::read_to_string(&log).unwrap());
    check_files(home, &image);
}

/// The iPXE programs the session fetched over TFTP are the build's own.
fn check_files(home: &Path, image: &Path) {
    for name in ["undionly.kpxe", "ipxe.efi"] {
        let got = home.join(name);
        if got.exists() {
            assert_eq!(
                std::fs::read(&got).unwrap(),
                std::fs::read(image.join("ipxe").join(name)).unwrap(),
                "{name} over TFTP"
            );
        }
    }
}
