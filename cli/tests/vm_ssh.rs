//! `cairn vm` as a user runs it, in QEMU (TCG), one boot: the command of
//! docs/usage.md's recorded session ("First steps", transcript `vm`), run
//! as written: the real binary boots the small test image with the user's
//! default SSH key (`~/.ssh/id_ed25519.pub`, a fresh one in a throwaway
//! home) and a hostname (`--hostname`) on its config drive, standard input
//! a pipe, and prints `ready: ssh -p P core@127.0.0.1` once the guest's
//! SSH answers; every expected line of the session is checked, and its ssh
//! commands are run. Then `ssh` with the key runs `systemctl is-system-running
//! --wait` (`running`), the hostname is the metadata's, the serial console
//! (cairn vm's standard output) shows cairn's ready banner (slot, address,
//! `ssh core@...`) and agetty's automatic login of `core`
//! and runs a command typed into it, the autologin drop-in is under /run
//! only, and killing `cairn vm` takes QEMU with it. The VM holds a slot of
//! the machine-wide pool like every test VM (`cairn vm` takes it).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::transcript;

/// From start to the ready line (a cold TCG boot takes a few minutes).
const READY: Duration = Duration::from_secs(420);
/// The hostname docs/usage.md's session gives the VM.
const HOSTNAME: &str = "myvm";

/// `cairn vm` running, its output collected; killed when dropped.
struct CairnVm {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<Vec<u8>>>,
    log: Arc<Mutex<Vec<u8>>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
}

impl CairnVm {
    fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// Waits until `find` says yes about (console, stderr), or panics.
    fn wait(&mut self, what: &str, limit: Duration, find: impl Fn(&str, &str) -> bool) {
        let start = Instant::now();
        loop {
            if find(&self.console(), &self.log()) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "cairn vm exited ({st}) before {what}\nstderr:\n{}\nconsole tail:\n{}",
                    self.log(),
                    tail(&self.console())
                );
            }
            if start.elapsed() > limit {
                panic!(
                    "no {what} after {limit:?}\nstderr:\n{}\nconsole tail:\n{}",
                    self.log(),
                    tail(&self.console())
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for CairnVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// `ssh` to the guest as core with `key`, running `command`.
fn ssh(key: &Path, port: u16, command: &str) -> Output {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=60",
            "-o",
            "LogLevel=ERROR",
            "core@127.0.0.1",
            command,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running ssh (Debian package openssh-client)")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// The QEMU started by `parent`, found through /proc.
fn qemu_child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // "PID (comm) STATE PPID ..."; comm may hold spaces
        let (comm, rest) = stat.rsplit_once(") ")?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && comm.contains("qemu-system")).then_some(pid)
    })
}

/// Gone, or a zombie waiting for whoever inherited it.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[test]
fn cairn_vm_with_a_key_prints_a_working_ssh_line_and_logs_core_in_on_the_console() {
    cairn_testkit::require("ssh", "openssh-client");
    cairn_testkit::require("ssh-keygen", "openssh-client");
    let image = common::test_image();
    let work = tempfile::tempdir().unwrap();
    // a user's default key, found by cairn vm in $HOME/.ssh
    std::fs::create_dir_all(work.path().join(".ssh")).unwrap();
    let key = work.path().join(".ssh/id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cairn-vm-test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen: {st}");
    let port = cairn_testkit::free_port();

    // docs/usage.md's recorded session, run as written: its build is the
    // one common::test_image made (the same definition, through the
    // library), its port is one that is free here
    let steps = transcript::load("vm");
    assert_eq!(steps[0].command, "cairn build images/test.yaml -o out/test");
    let doc_port = "2222";
    let subst = |w: &str| match w {
        "out/test" => image.display().to_string(),
        w if w == doc_port => port.to_string(),
        w => w.to_owned(),
    };
    let argv: Vec<String> = steps[1].argv().iter().map(|w| subst(w)).collect();
    assert_eq!(argv[..2], ["cairn", "vm"], "{:?}", steps[1].command);
    assert!(
        argv.windows(2).any(|w| w == ["--hostname", HOSTNAME]),
        "the session names the hostname {HOSTNAME}: {:?}",
        steps[1].command
    );

    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(&argv[1..])
        .env("HOME", work.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cairn vm");
    let console = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    collect(child.stdout.take().unwrap(), console.clone());
    collect(child.stderr.take().unwrap(), log.clone());
    let stdin = child.stdin.take().unwrap();
    let mut vm = CairnVm {
        child,
        stdin,
        console,
        log,
    };

    // 1. the ready line, once, after the guest's sshd answered
    // a default identity: the ready line has no -i
    let ready = format!("ready: ssh -p {port} core@127.0.0.1");
    vm.wait("ready line", READY, |_, log| {
        log.lines().any(|l| l.trim_end() == ready)
    });
    let ready_after = t0.elapsed();
    eprintln!("ready line after {ready_after:.0?}");
    let qemu = qemu_child_of(vm.child.id()).expect("QEMU is a child of cairn vm");
    // its directories (VM files, config drive), left behind by a killed
    // cairn vm: the test removes them at the end. The drive is open.
    let opened: Vec<std::path::PathBuf> = std::fs::read_dir(format!("/proc/{qemu}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(
        opened.iter().any(|p| p.ends_with("config-2.img")),
        "QEMU does not have the config drive open: {opened:?}"
    );
    let leftovers: std::collections::BTreeSet<std::path::PathBuf> = opened
        .iter()
        .filter_map(|p| p.parent())
        .filter(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .is_some_and(|n| n.starts_with("cairn-vm-") && n != "cairn-vm-slots")
        })
        .map(Path::to_path_buf)
        .collect();

    // 2. ssh with the key, as the line says; the key came through the
    // config drive's metadata (the agent may still be applying it when
    // sshd first answers: then a few seconds more)
    let start = Instant::now();
    let mut tries = 0;
    let state = loop {
        tries += 1;
        let out = ssh(&key, port, "timeout 300 systemctl is-system-running --wait");
        let state = text(&out.stdout);
        if !state.is_empty() {
            break state;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "ssh as core with the key never got in: {}\nstderr of cairn vm:\n{}",
            text(&out.stderr),
            vm.log()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!(
        "ssh got in {:.0?} after the ready line ({tries} tries); system {state}",
        start.elapsed()
    );
    if state != "running" {
        let failed = ssh(&key, port, "systemctl --failed --no-legend --plain");
        let status = ssh(&key, port, "cat /run/cairn/cloudinit.status");
        panic!(
            "system is {state}; failed units:\n{}\ncloudinit status:\n{}",
            text(&failed.stdout),
            text(&status.stdout)
        );
    }

    // 3. the hostname from the metadata; the key in core's authorized keys
    let out = ssh(
        &key,
        port,
        "hostname; cat /etc/hostname; cat ~/.ssh/authorized_keys.d/cairn-cloudinit",
    );
    let got = text(&out.stdout);
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    assert_eq!(
        got,
        format!("{HOSTNAME}\n{HOSTNAME}\n{}", pubkey.trim()),
        "{}",
        text(&out.stderr)
    );

    // the console's banner, after cloud-config gave core the key (the guest
    // sees slirp's address, not the forwarded port)
    vm.wait(
        "the console's ready banner",
        Duration::from_secs(120),
        |c, _| c.contains("cairn-test 0.1.0 ready: slot a, "),
    );
    let console = vm.console();
    let banner = console
        .lines()
        .find(|l| l.contains("cairn-test 0.1.0 ready: "))
        .unwrap()
        .trim();
    assert!(
        banner.contains(" 10.0.2.15") && banner.ends_with("; log in: ssh core@10.0.2.15"),
        "{banner}"
    );

    // the session's expected lines, and its ssh commands run as written
    // (plus the key and no host-key check: the test's throwaway home is
    // not the one ssh reads)
    let doc = |t: &str| t.replace(&format!("-p {doc_port} "), &format!("-p {port} "));
    let mut step = steps[1].clone();
    step.expect = step.expect.iter().map(|l| doc(l)).collect();
    step.check(&format!("{}\n{}", vm.console(), vm.log()));
    for step in &steps[2..] {
        let argv = step.argv();
        assert_eq!(
            argv[..4],
            ["ssh", "-p", doc_port, "core@127.0.0.1"],
            "{:?}",
            step.command
        );
        let out = ssh(&key, port, &argv[4..].join(" "));
        step.check(&format!("{}{}", text(&out.stdout), text(&out.stderr)));
    }

    // 4. the autologin is a runtime drop-in, nothing of it under /etc
    let out = ssh(
        &key,
        port,
        "ls /run/systemd/system/serial-getty@ttyS0.service.d/; \
         test ! -e /etc/systemd/system/serial-getty@ttyS0.service.d && echo none-in-etc; \
         systemctl show -P ExecStart serial-getty@ttyS0.service",
    );
    let got = text(&out.stdout);
    assert!(
        got.starts_with("50-cairn-vm-autologin.conf\nnone-in-etc\n")
            && got.contains("--autologin core"),
        "{got}\n{}",
        text(&out.stderr)
    );

    // 5. the serial console: core logged in by agetty, a typed command runs
    vm.wait(
        "automatic login on the console",
        Duration::from_secs(120),
        |c, _| c.contains("login: core (automatic login)"),
    );
    vm.wait("core's shell prompt", Duration::from_secs(60), |c, _| {
        c.contains(&format!("core@{HOSTNAME}"))
    });
    vm.stdin
        .write_all(b"echo console-$((6 * 7))-ok\n")
        .expect("typing into the console");
    vm.stdin.flush().unwrap();
    vm.wait(
        "the typed command's output",
        Duration::from_secs(60),
        |c, _| c.contains("console-42-ok"),
    );
    assert_eq!(
        vm.log()
            .lines()
            .filter(|l| l.starts_with("ready: "))
            .count(),
        1,
        "the ready line is printed once:\n{}",
        vm.log()
    );

    // 6. killing cairn vm takes QEMU with it
    vm.child.kill().unwrap();
    vm.child.wait().unwrap();
    let killed = Instant::now();
    while !dead(qemu) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "QEMU ({qemu}) still runs 30 s after cairn vm was killed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for d in &leftovers {
        let _ = std::fs::remove_dir_all(d);
    }
    eprintln!(
        "cairn vm: ready after {ready_after:.0?}, whole test {:.0?}",
        t0.elapsed()
    );
}
