//! The QEMU process behind a [`crate::Vm`] and the reset watchdog that
//! power-cycles it when the firmware hangs on a guest's warm reset.
//!
//! Under TCG, OVMF now and then never comes back from a warm reset: the
//! guest kernel prints `reboot: machine restart`, QEMU resets the machine,
//! and the serial console stays silent for good (no `BdsDxe` line; seen
//! once in CI after ~10 good reboots, a test then waited 50 minutes). Real
//! machines have a power button for that; the harness has
//! [`ResetWatchdog`]: when the console's last line is the kernel's reboot
//! line and nothing followed for `stall`, it kills QEMU and starts it again
//! with the same command line, a cold boot: the disks, the OVMF variable
//! store and the serial log (opened with `append=on`) carry over, as they
//! would on hardware. Every power cycle is printed to stderr, bumps
//! [`Proc::generation`] (so [`crate::Vm`] reconnects QMP and the guest
//! agent) and counts in [`ResetWatchdog::cycles`], at most [`MAX_CYCLES`].

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::serial::clean_line;

/// Power cycles one VM may take; beyond that the hang is left for the test
/// to see.
pub const MAX_CYCLES: u32 = 3;

/// The last console lines of a Linux guest that reboots (`reboot=` any
/// method); one of them must end the log for the watchdog to act.
const REBOOT_LINES: [&str; 2] = ["reboot: machine restart", "reboot: Restarting system"];

/// How QEMU is started, kept to start it again.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub netns: Option<String>,
    pub stderr: PathBuf,
    /// Socket files QEMU creates; removed before each start.
    pub sockets: Vec<PathBuf>,
}

impl Launcher {
    /// Starts QEMU; its stderr goes to (`append`: the end of) the stderr file.
    pub fn spawn(&self, append: bool) -> io::Result<Child> {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&self.stderr)?;
        for sock in &self.sockets {
            let _ = fs::remove_file(sock);
        }
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str()]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        crate::vm::die_with_parent(&mut cmd);
        cmd.spawn()
    }
}

/// The running QEMU, shared by the [`crate::Vm`] and its watchdog.
#[derive(Debug)]
pub(crate) struct Proc {
    pub child: Child,
    pub exit: Option<ExitStatus>,
    /// 0 for the first QEMU, +1 for each power cycle.
    pub generation: u64,
}

impl Proc {
    /// QEMU's exit status if it has exited (reaps it).
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
            }
        }
        self.exit
    }
}

pub(crate) type Shared = Arc<Mutex<Proc>>;

/// Locks the process; a panic elsewhere while holding it leaves nothing
/// half-done worth refusing (the child handle stays valid).
pub(crate) fn lock(p: &Shared) -> MutexGuard<'_, Proc> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The watchdog thread of one VM; stopped (and joined) on drop.
pub(crate) struct ResetWatchdog {
    stop: Arc<AtomicBool>,
    cycles: Arc<AtomicU32>,
    handle: Option<JoinHandle<()>>,
}

impl ResetWatchdog {
    /// Watches `serial` of the VM `name`. The thread becomes the parent of
    /// every QEMU it starts (`PR_SET_PDEATHSIG`), so it runs until the
    /// `Vm` is dropped, after QEMU was killed.
    pub fn start(
        name: String,
        proc: Shared,
        launcher: Launcher,
        serial: PathBuf,
        stall: Duration,
    ) -> ResetWatchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let cycles = Arc::new(AtomicU32::new(0));
        let (s, c) = (stop.clone(), cycles.clone());
        let handle = thread::Builder::new()
            .name(format!("reset-watchdog-{name}"))
            .spawn(move || watch(&name, &proc, &launcher, &serial, stall, &s, &c))
            .expect("spawning a thread");
        ResetWatchdog {
            stop,
            cycles,
            handle: Some(handle),
        }
    }

    /// Power cycles done so far.
    pub fn cycles(&self) -> u32 {
        self.cycles.load(Ordering::Relaxed)
    }
}

impl Drop for ResetWatchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn watch(
    name: &str,
    proc: &Shared,
    launcher: &Launcher,
    serial: &Path,
    stall: Duration,
    stop: &AtomicBool,
    cycles: &AtomicU32,
) {
    const TICK: Duration = Duration::from_millis(100);
    let mut len = 0u64;
    let mut changed = Instant::now();
    let mut gave_up = false;
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(TICK);
        let cur = fs::metadata(serial).map(|m| m.len()).unwrap_or(0);
        if cur != len {
            len = cur;
            changed = Instant::now();
            continue;
        }
        if changed.elapsed() < stall || gave_up || !ends_with_reboot(serial, len) {
            continue;
        }
        let mut p = lock(proc);
        if p.poll().is_some() {
            // QEMU left (a `-no-reboot` VM, a quit): nothing to watch, and no
            // child of this thread alive that its exit would kill.
            return;
        }
        let n = cycles.load(Ordering::Relaxed);
        if n >= MAX_CYCLES {
            eprintln!(
                "cairn-qemu: VM {name:?}: silent for {stall:?} after a reboot again; \
                 {MAX_CYCLES} power cycles done, leaving it"
            );
            gave_up = true;
            continue;
        }
        eprintln!(
            "cairn-qemu: VM {name:?}: no console output for {stall:?} after the guest \
             rebooted (the firmware hung on the warm reset); power-cycling QEMU ({} of at most {MAX_CYCLES})",
            n + 1
        );
        tracing::warn!(vm = name, "power-cycling QEMU after a hung warm reset");
        let _ = p.child.kill();
        let _ = p.child.wait();
        match launcher.spawn(true) {
            Ok(child) => {
                p.child = child;
                p.exit = None;
                p.generation += 1;
                cycles.store(n + 1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!(
                    "cairn-qemu: VM {name:?}: starting QEMU again failed: {e}; the VM stays off"
                );
                // The old child is reaped: its status stands as the VM's exit.
                let _ = p.poll();
                return;
            }
        }
        drop(p);
        changed = Instant::now();
    }
}

/// Whether the last non-empty line of the log (`len` bytes) is the
/// kernel's last word before a reset.
fn ends_with_reboot(serial: &Path, len: u64) -> bool {
    let tail = (|| -> io::Result<Vec<u8>> {
        let mut f = fs::File::open(serial)?;
        f.seek(SeekFrom::Start(len.saturating_sub(512)))?;
        let mut buf = Vec::new();
        f.take(512).read_to_end(&mut buf)?;
        Ok(buf)
    })()
    .unwrap_or_default();
    last_line_is_reboot(&tail)
}

fn last_line_is_reboot(tail: &[u8]) -> bool {
    tail.split(|&b| b == b'\n')
        .map(clean_line)
        .rfind(|l| !l.trim().is_empty())
        .is_some_and(|l| REBOOT_LINES.iter().any(|r| l.contains(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_last_reboot_line_counts_only_at_the_end() {
        let log = b"[  167.3] reboot: Restarting system\r\n[  167.35] reboot: machine restart\r\n";
        assert!(last_line_is_reboot(log));
        assert!(last_line_is_reboot(
            b"x\n[ 1.0] reboot: Restarting system\r\n\r\n"
        ));
        // after the reset the firmware spoke: not a hang
        let mut after = log.to_vec();
        after.extend_from_slice(b"\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001\r\n");
        assert!(!last_line_is_reboot(&after));
        // a power-off is not a reboot
        assert!(!last_line_is_reboot(b"[ 9.1] reboot: Power down\r\n"));
        assert!(!last_line_is_reboot(b""));
    }
}
