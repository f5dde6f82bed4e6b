//! Waiting for the network, only for what needs it: `cairn-cloudinit.service`
//! is not ordered after `network-online.target` (a machine whose cloud-config
//! is on its state partition or a config drive applies it without waiting
//! for a DHCP lease), so the data sources that are on the network (a URL on
//! the kernel command line, the metadata services) ask systemd for
//! `network-online.target` themselves before their first request.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a network data source waits for `network-online.target` before
/// it tries anyway (its own retries then cover a slow link).
pub const ONLINE_TIMEOUT: Duration = Duration::from_secs(120);

/// How the network is waited for.
#[derive(Debug, Clone)]
pub enum NetworkWait {
    /// Not at all (`--root DIR`: not this machine's boot).
    Never,
    /// `systemctl start network-online.target` (joins the boot's own job),
    /// at most `timeout`.
    Systemd { timeout: Duration },
    /// Counts the waits asked for (tests).
    Counted(Arc<AtomicUsize>),
}

impl NetworkWait {
    /// Waits before a request that needs the network, for `why`. Never
    /// fails: a network that is not online in time is logged, and the
    /// request goes ahead with its own retries.
    pub fn wait(&self, why: &str) {
        match self {
            NetworkWait::Never => {}
            NetworkWait::Counted(n) => {
                n.fetch_add(1, Ordering::SeqCst);
            }
            NetworkWait::Systemd { timeout } => {
                tracing::info!("waiting for network-online.target: {why}");
                let t = Instant::now();
                match start_target("network-online.target", *timeout) {
                    Ok(()) => {
                        tracing::info!("network online after {:.1} s", t.elapsed().as_secs_f64())
                    }
                    Err(e) => tracing::warn!(
                        "network-online.target: {e}; going ahead after {:.1} s",
                        t.elapsed().as_secs_f64()
                    ),
                }
            }
        }
    }
}

/// `systemctl start TARGET`, killed after `timeout`.
fn start_target(target: &str, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new("systemctl")
        .args(["start", target])
        .spawn()
        .map_err(|e| format!("running systemctl: {e}"))?;
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("systemctl start {target}: {st}")),
            Ok(None) if t.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not reached within {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for systemctl: {e}")),
        }
    }
}
