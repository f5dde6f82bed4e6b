//! The harness around QEMU, on real QEMU with the CPUs paused (`-S`) where
//! no guest is needed: disk overlays versus `persist`, port forwards on
//! loopback, the watchdog and guest-agent devices, start-up failures,
//! Drop, timeouts that name the log, and `run_interactive` on a pipe.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_qemu::{Firmware, InteractiveOptions, QmpError, Vm, VmConfig, VmError, WaitError};
use common::{ipxe_iso, pid_alive, processes_mentioning, timed, SECS};
use serde_json::json;

/// Writes 4 KiB of `pattern` at offset 0 of the first disk through QEMU's
/// block layer (HMP `qemu-io`), as a guest write would land. (qemu-io
/// prints its report on QEMU's stdout, not on the monitor.)
fn write_through_qemu(vm: &mut Vm, pattern: u8) -> anyhow::Result<()> {
    vm.qmp(
        "human-monitor-command",
        Some(json!({"command-line": format!("qemu-io disk0 \"write -P 0x{pattern:02x} 0 4k\"")})),
    )?;
    Ok(())
}

#[test]
fn overlay_keeps_base_unchanged_and_persist_writes_it() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let base = tmp.path().join("disk.raw");
    fs::write(&base, vec![0x11u8; 1 << 20])?;
    let before = fs::read(&base)?;

    let mut vm = Vm::start(VmConfig::new("overlay").bios().disk(&base).arg("-S"))?;
    assert_eq!(vm.query_status()?.status, "prelaunch");
    write_through_qemu(&mut vm, 0xab)?;
    let overlay = vm.dir().join("disk0.qcow2");
    vm.quit()?;
    vm.wait_exit(SECS(10))?;
    // The write went to the overlay, which names the base as backing file...
    assert!(fs::read(&base)? == before, "base image changed");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()?;
    let info: serde_json::Value = serde_json::from_slice(&info.stdout)?;
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(
        info["full-backing-filename"],
        fs::canonicalize(&base)?.display().to_string()
    );
    // ...and the overlay's view of the disk has the new data over the base.
    let flat = tmp.path().join("flat.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&flat)
        .status()?;
    assert!(st.success());
    let seen = fs::read(&flat)?;
    assert!(
        seen[..4096].iter().all(|&b| b == 0xab),
        "write not in the overlay"
    );
    assert!(seen[4096..].iter().all(|&b| b == 0x11));
    drop(vm);

    // persist: the image itself takes the write.
    let mut vm = Vm::start(
        VmConfig::new("persist")
            .bios()
            .disk(&base)
            .persist(true)
            .arg("-S"),
    )?;
    assert!(!vm.dir().join("disk0.qcow2").exists());
    write_through_qemu(&mut vm, 0xcd)?;
    vm.quit()?;
    vm.wait_exit(SECS(10))?;
    let after = fs::read(&base)?;
    assert!(after[..4096].iter().all(|&b| b == 0xcd));
    assert!(after[4096..].iter().all(|&b| b == 0x11));
    Ok(())
}

#[test]
fn forwards_watchdog_and_agent_channel_are_wired() -> anyhow::Result<()> {
    let mut vm = Vm::start(
        VmConfig::new("devices")
            .bios()
            .forward_ssh()
            .forward(8080)
            .watchdog(true)
            .arg("-S"),
    )?;
    let ssh = vm.ssh_port().expect("ssh forwarded");
    let http = vm.host_port(8080).expect("8080 forwarded");
    assert_ne!(ssh, http);
    assert_eq!(vm.host_port(443), None);
    for port in [ssh, http] {
        // QEMU listens on loopback: the port is taken, and accepts.
        let bind = TcpListener::bind(("127.0.0.1", port));
        assert!(bind.is_err(), "nothing listens on 127.0.0.1:{port}");
        TcpStream::connect(("127.0.0.1", port))?;
    }
    assert!(vm
        .args()
        .iter()
        .any(|a| a.contains(&format!("hostfwd=tcp:127.0.0.1:{ssh}-:22"))));

    // The PCI devices are there: i6300esb (8086:25ab), virtio-net, the
    // virtio-serial for the agent (1af4:1003), virtio-rng (1af4:1005).
    let pci = vm.qmp("query-pci", None)?;
    let ids: Vec<(u64, u64)> = pci[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"]["vendor"].as_u64().unwrap(),
                d["id"]["device"].as_u64().unwrap(),
            )
        })
        .collect();
    for want in [
        (0x8086, 0x25ab),
        (0x1af4, 0x1000),
        (0x1af4, 0x1003),
        (0x1af4, 0x1005),
    ] {
        assert!(ids.contains(&want), "{want:04x?} not in {ids:04x?}");
    }

    // The agent socket exists and accepts, but no agent runs in a paused
    // machine: a ping times out instead of hanging.
    assert!(vm.dir().join("qga.sock").exists());
    let start = Instant::now();
    let err = vm.guest_ping(Duration::from_millis(500)).unwrap_err();
    assert!(
        matches!(err, VmError::Agent(QmpError::Timeout { .. })),
        "{err}"
    );
    assert!(start.elapsed() < SECS(5));

    // A QMP error is an error, with QEMU's class.
    let err = vm.qmp("no-such-command", None).unwrap_err();
    assert!(
        matches!(&err, VmError::Qmp(QmpError::Command { class, .. }) if class == "CommandNotFound"),
        "{err}"
    );
    vm.keep_dir(false); // both failures above were the point
    Ok(())
}

#[test]
fn wait_timeout_names_pattern_time_and_log_and_keeps_the_dir() -> anyhow::Result<()> {
    let mut vm = Vm::start(VmConfig::new("timeout").bios().memory_mib(128))?;
    vm.wait_for("No bootable device", SECS(30))?;
    let err = vm
        .wait_for("login:", Duration::from_millis(700))
        .unwrap_err();
    let dir = vm.dir().to_owned();
    let WaitError::Timeout {
        pattern,
        waited,
        log_path,
        tail,
    } = &err
    else {
        panic!("expected a timeout, got {err}");
    };
    assert_eq!(pattern, "login:");
    assert!(*waited >= Duration::from_millis(700));
    assert_eq!(log_path, &dir.join("serial.log"));
    assert!(tail.contains("No bootable device"), "{tail}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"login:\"") && msg.contains(&log_path.display().to_string()),
        "{msg}"
    );
    assert!(tail.lines().count() <= 40);

    // A failed wait marks the VM: its directory survives the drop.
    let pid = vm.pid();
    drop(vm);
    assert!(!pid_alive(pid), "Drop must kill QEMU");
    assert!(
        dir.join("serial.log").is_file(),
        "failed VM's files are kept"
    );
    fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn drop_kills_qemu_and_removes_the_dir() -> anyhow::Result<()> {
    let vm = Vm::start(VmConfig::new("drop").uefi().memory_mib(128))?;
    let (pid, dir) = (vm.pid(), vm.dir().to_owned());
    assert!(pid_alive(pid) && dir.is_dir());
    drop(vm);
    assert!(!pid_alive(pid));
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(processes_mentioning(&dir.display().to_string()).is_empty());
    Ok(())
}

#[test]
fn startup_failures_are_explained() {
    // QEMU refuses the command line: its stderr is in the error.
    let err = Vm::start(VmConfig::new("bad-arg").bios().arg("-no-such-flag")).unwrap_err();
    match &err {
        VmError::EarlyExit {
            stderr,
            command,
            dir,
            ..
        } => {
            assert!(stderr.contains("no-such-flag"), "{stderr}");
            assert!(command.contains("qemu-system-x86_64"), "{command}");
            // Kept for diagnosis, with the command line in it.
            assert!(dir.join("qemu.cmdline").is_file());
            assert!(
                err.to_string().contains(&dir.display().to_string()),
                "{err}"
            );
            fs::remove_dir_all(dir).unwrap();
        }
        other => panic!("expected EarlyExit, got {other}"),
    }
    // Firmware that is not there: named, with the package to install.
    let mut c = VmConfig::new("no-ovmf").uefi();
    c.ovmf.code = "/nonexistent/OVMF_CODE_4M.fd".into();
    let err = Vm::start(c).unwrap_err();
    assert!(matches!(err, VmError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("`ovmf`"), "{err}");
    // A disk that is not there.
    let err = Vm::start(VmConfig::new("no-disk").disk("/nonexistent/disk.raw")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/disk.raw"), "{err}");
}

const CHILD_ENV: &str = "CAIRN_QEMU_TEST_INTERACTIVE_CHILD";

/// Not a test on its own: the body of `interactive_console_on_stdio`,
/// run in a child process whose stdio is a pipe.
#[test]
fn interactive_child() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut o = InteractiveOptions::new(target);
    o.firmware = Firmware::Bios;
    o.memory_mib = 256;
    o.cpus = 1;
    o.net = false;
    let status = cairn_qemu::run_interactive(&o).expect("run_interactive");
    println!("\nCHILD-EXIT-STATUS {:?}", status.code());
}

#[test]
fn interactive_console_on_stdio() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("image");
    fs::create_dir(&dir)?;
    fs::copy(ipxe_iso(), dir.join("disk.raw"))?;
    let before = fs::read(dir.join("disk.raw"))?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "interactive_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&all).into_owned());
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    // The BIOS console, on our pipe: SeaBIOS boots the disk into iPXE.
    let deadline = Instant::now() + SECS(60);
    let mut seen = String::new();
    timed("interactive: iPXE banner on stdio", || {
        while !seen.contains("iPXE initialising devices") {
            assert!(Instant::now() < deadline, "no iPXE on the console:\n{seen}");
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(200)) {
                seen = s;
            }
        }
    });
    // Ctrl-a x: QEMU's mux console quits.
    stdin.write_all(b"\x01x")?;
    stdin.flush()?;
    let status = child.wait()?;
    let out = reader.join().unwrap();
    assert!(status.success(), "child failed: {out}");
    assert!(out.contains("SeaBIOS (version"), "{out}");
    assert!(out.contains("QEMU: Terminated"), "{out}");
    assert!(out.contains("CHILD-EXIT-STATUS Some(0)"), "{out}");
    assert!(
        fs::read(dir.join("disk.raw"))? == before,
        "image changed without persist"
    );
    Ok(())
}
