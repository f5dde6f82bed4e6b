//! How many VMs run at once on this machine, across every process: each
//! [`Vm`](crate::Vm) holds a slot while it runs, and the slots are files
//! locked with `flock`, so parallel test threads and parallel test binaries
//! (or a developer's second `cargo test`) share one limit instead of each
//! booting as many VMs as it likes on a 2-core machine, where every TCG
//! guest then runs slower and boot timeouts turn flaky.
//!
//! The limit is `CAIRN_VM_JOBS`, else the number of CPUs. A test that must
//! run several VMs at the same time (a cluster) says so first with
//! [`reserve`]: it waits for that many slots (at most the whole limit)
//! and the VMs it then starts draw on the reservation. The slot files live
//! in `$CAIRN_VM_DIR/cairn-vm-slots` (default: the temp dir); a process
//! that dies gives its slots back with its file descriptors.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

use crate::error::VmError;

/// The environment variable with the limit.
pub const JOBS_ENV: &str = "CAIRN_VM_JOBS";

/// How long a VM waits for a slot before the test fails with a message
/// rather than hanging (a slot is held by a VM that never ends).
const WAIT_LIMIT: Duration = Duration::from_secs(3 * 3600);

/// Live reservations of this process: started VMs take a free credit from
/// one of them before they take a slot of their own.
static RESERVATIONS: Mutex<Vec<Weak<Reserved>>> = Mutex::new(Vec::new());

/// The limit: `CAIRN_VM_JOBS`, else the number of CPUs (at least 1).
pub fn limit() -> usize {
    std::env::var(JOBS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn slot_dir() -> PathBuf {
    std::env::var_os(crate::vm::VM_DIR_ENV)
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join("cairn-vm-slots")
}

fn open(path: &Path) -> Result<File, VmError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(VmError::io(path))
}

/// Locked slot files; dropping them (closing the descriptors) frees them.
#[derive(Debug)]
pub struct Slots {
    _files: Vec<File>,
}

/// Takes `n` slots of `limit` in `dir` (at most the limit), waiting for
/// them. The gate file makes takers queue, so a process waiting for several
/// slots is not starved by others taking single ones.
fn take(dir: &Path, limit: usize, n: usize, what: &str) -> Result<Slots, VmError> {
    let n = n.clamp(1, limit);
    std::fs::create_dir_all(dir).map_err(VmError::io(dir))?;
    let gate_path = dir.join("gate");
    let gate = open(&gate_path)?;
    flock(&gate, FlockOperation::LockExclusive).map_err(|e| VmError::Io {
        path: gate_path.clone(),
        source: e.into(),
    })?;
    let start = Instant::now();
    let mut said = false;
    let mut files = Vec::with_capacity(n);
    loop {
        for i in 0..limit {
            if files.len() == n {
                break;
            }
            let path = dir.join(format!("slot-{i}"));
            let f = open(&path)?;
            if flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
                files.push(f);
            }
        }
        if files.len() == n {
            return Ok(Slots { _files: files });
        }
        // give back what was taken this round: a taker holds all it asked
        // for or nothing
        files.clear();
        if !said && start.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "cairn-qemu: {what} waits for {n} of {limit} VM slots ({JOBS_ENV}; held by VMs of this or other processes)"
            );
            said = true;
        }
        if start.elapsed() > WAIT_LIMIT {
            return Err(VmError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no VM slot became free in {WAIT_LIMIT:?}"),
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The slots of a reservation and how many of its VMs may still start;
/// freed when the reservation and all its VMs are gone.
#[derive(Debug)]
pub(crate) struct Reserved {
    _slots: Slots,
    /// Places left; 0 for good once the reservation is dropped.
    free: Mutex<Option<usize>>,
}

/// A reservation of slots for VMs that must run at the same time; VMs this
/// process starts while it lives draw on it (up to the number reserved).
/// Its slots are freed when it and the VMs started on it are dropped.
#[derive(Debug)]
pub struct Reservation {
    inner: Arc<Reserved>,
}

/// Reserves slots for `n` VMs that must run together (at most the limit:
/// with fewer CPUs than VMs the reservation takes the whole machine).
pub fn reserve(n: usize) -> Result<Reservation, VmError> {
    reserve_in(&slot_dir(), limit(), n)
}

fn reserve_in(dir: &Path, limit: usize, n: usize) -> Result<Reservation, VmError> {
    let slots = take(dir, limit, n, &format!("a reservation for {n} VMs"))?;
    let inner = Arc::new(Reserved {
        _slots: slots,
        free: Mutex::new(Some(n)),
    });
    let mut all = RESERVATIONS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(&inner));
    Ok(Reservation { inner })
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // no more VMs start on it; those running keep its slots
        *self.inner.free.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// What a running VM holds: a slot of its own or a place in a reservation.
#[derive(Debug)]
pub(crate) enum Held {
    Slot(#[allow(dead_code)] Slots),
    Reserved(Arc<Reserved>),
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Reserved(r) = self {
            // give the place back while the reservation lives
            if let Some(free) = r.free.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                *free += 1;
            }
        }
    }
}

/// The slot for one VM: a free place in a reservation of this process,
/// else a slot of its own (waiting for it).
pub(crate) fn for_vm(name: &str) -> Result<Held, VmError> {
    for_vm_in(&slot_dir(), limit(), name)
}

fn for_vm_in(dir: &Path, limit: usize, name: &str) -> Result<Held, VmError> {
    {
        let all = RESERVATIONS.lock().unwrap_or_else(|p| p.into_inner());
        for r in all.iter().filter_map(Weak::upgrade) {
            let mut free = r.free.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n @ 1..) = free.as_mut() {
                *n -= 1;
                drop(free);
                return Ok(Held::Reserved(r));
            }
        }
    }
    take(dir, limit, 1, &format!("VM {name:?}")).map(Held::Slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(dir: &Path, i: usize) -> bool {
        let f = open(&dir.join(format!("slot-{i}"))).unwrap();
        flock(&f, FlockOperation::NonBlockingLockExclusive).is_err()
    }

    // One test: reservations are process-wide.
    #[test]
    fn slots_are_shared_and_reservations_feed_vms() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let a = for_vm_in(&dir, 2, "a").unwrap();
        let b = for_vm_in(&dir, 2, "b").unwrap();
        assert!(matches!((&a, &b), (Held::Slot(_), Held::Slot(_))));
        // a third waits until one is freed
        let d = dir.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            let c = for_vm_in(&d, 2, "c").unwrap();
            (start.elapsed(), c)
        });
        std::thread::sleep(Duration::from_millis(600));
        assert!(!t.is_finished(), "a third VM started beside two");
        drop(a);
        let (waited, c) = t.join().unwrap();
        assert!(waited >= Duration::from_millis(500), "{waited:?}");
        drop((b, c));
        assert!(!locked(&dir, 0) && !locked(&dir, 1));

        // a reservation for three takes the whole machine, and its VMs run
        // in it
        let r = reserve_in(&dir, 2, 3).unwrap();
        assert!(locked(&dir, 0) && locked(&dir, 1));
        let mut vms: Vec<Held> = (0..3)
            .map(|i| for_vm_in(&dir, 2, &format!("n{i}")).unwrap())
            .collect();
        assert!(vms.iter().all(|h| matches!(h, Held::Reserved(_))));
        // a place given back is used again
        vms.pop();
        vms.push(for_vm_in(&dir, 2, "n3").unwrap());
        assert!(matches!(vms[2], Held::Reserved(_)));
        // the reservation dropped first: its VMs keep the slots until they end
        drop(r);
        assert!(locked(&dir, 0) && locked(&dir, 1));
        drop(vms);
        assert!(!locked(&dir, 0) && !locked(&dir, 1));
    }
}
