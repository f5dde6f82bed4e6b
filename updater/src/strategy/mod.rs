//! Reboot strategies (locksmith's `REBOOT_STRATEGY`), one file each: when
//! a staged update may reboot the machine, and what a strategy does once
//! the new slot passed the health gate. [`for_config`] picks one from
//! `update.conf`; [`reboot`] is the one way the agent reboots.

pub mod drain;
mod etcd_lock;
mod immediate;
mod off;
mod window;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub use drain::{wait_for_drain, DrainWait};
pub use etcd_lock::EtcdLock;
pub use immediate::Immediate;
pub use off::Off;
pub use window::InWindow;

use crate::config::{Config, Strategy};
use crate::error::{Result, UpdateError};

/// What a strategy says about rebooting into a staged update now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Reboot now.
    Reboot,
    /// Not now; the reason, for the log (the next timer run asks again).
    NotNow(String),
}

/// What every strategy may look at.
pub struct Facts<'a> {
    pub config: &'a Config,
    /// Seconds since the epoch, UTC.
    pub now: fn() -> i64,
}

/// One reboot strategy.
pub trait RebootStrategy {
    /// `REBOOT_STRATEGY=` as written in `update.conf`.
    fn name(&self) -> &'static str;
    /// An update is staged: may the machine reboot into it now? May wait
    /// (the cluster lock), but returns once the answer is known.
    fn before_reboot(&self, cx: &Facts<'_>) -> Decision;
    /// The new slot passed the health gate (nothing by default).
    fn after_healthy(&self, _cx: &Facts<'_>) {}
}

/// The clock's answer: inside the reboot window, or no window set.
fn by_the_clock(cx: &Facts<'_>) -> Decision {
    match cx.config.may_reboot_now((cx.now)()) {
        Ok(()) => Decision::Reboot,
        Err(why) => Decision::NotNow(why),
    }
}

/// The strategy `update.conf` names. `etcd-lock` holds the lock as the
/// machine id in the file `machine_id` (read only for it) and asks again
/// for a full lock every `lock_poll`.
pub fn for_config(
    config: &Config,
    machine_id_file: &Path,
    lock_poll: Duration,
) -> Result<Box<dyn RebootStrategy>> {
    Ok(match config.strategy {
        Strategy::Reboot => Box::new(Immediate { name: "reboot" }),
        // CoreOS's best-effort took the lock when etcd ran; cairn reboots.
        Strategy::BestEffort => Box::new(Immediate {
            name: "best-effort",
        }),
        Strategy::Off => Box::new(Off),
        Strategy::Window => Box::new(InWindow),
        Strategy::EtcdLock => Box::new(EtcdLock::new(
            &config.etcd_endpoints[0],
            machine_id(machine_id_file)?,
            lock_poll,
        )),
    })
}

/// The machine's name for the cluster lock: `/etc/machine-id`'s one line.
pub fn machine_id(path: &Path) -> Result<String> {
    let id = std::fs::read_to_string(path)
        .map_err(UpdateError::io(path))?
        .trim()
        .to_string();
    if id.is_empty() {
        return Err(UpdateError::Refused(format!(
            "the machine id {} is empty",
            path.display()
        )));
    }
    Ok(id)
}

/// `systemctl reboot`: systemd stops the services, then the machine
/// restarts into the entry the staged update made the default.
pub fn reboot() -> Result<()> {
    println!("rebooting into the new slot");
    let st = Command::new("systemctl")
        .arg("reboot")
        .status()
        .map_err(UpdateError::io("systemctl"))?;
    if !st.success() {
        return Err(UpdateError::Refused(format!("systemctl reboot: {st}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-11-27T01:46:40Z, a Thursday, 01:46.
    fn thu() -> i64 {
        1_764_208_000
    }

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("update.conf")).unwrap()
    }

    fn strategy(c: &Config) -> Box<dyn RebootStrategy> {
        for_config(
            c,
            Path::new("/nonexistent/machine-id"),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    fn decide(text: &str) -> Decision {
        let c = config(text);
        strategy(&c).before_reboot(&Facts {
            config: &c,
            now: thu,
        })
    }

    #[test]
    fn each_strategy_decides_by_its_own_rule() {
        assert_eq!(decide("REBOOT_STRATEGY=reboot\n"), Decision::Reboot);
        assert_eq!(decide("REBOOT_STRATEGY=best-effort\n"), Decision::Reboot);
        let Decision::NotNow(why) = decide("REBOOT_STRATEGY=off\n") else {
            panic!("off rebooted")
        };
        assert!(why.contains("off"), "{why}");
        // Thursday 01:46 is inside a daily 01:00+2h window, outside Sunday's
        assert_eq!(
            decide("REBOOT_STRATEGY=window\nREBOOT_WINDOW_START=01:00\nREBOOT_WINDOW_LENGTH=2h\n"),
            Decision::Reboot
        );
        let Decision::NotNow(why) = decide(
            "REBOOT_STRATEGY=window\nREBOOT_WINDOW_START=Sun 01:00\nREBOOT_WINDOW_LENGTH=2h\n",
        ) else {
            panic!("rebooted outside the window")
        };
        assert!(why.contains("window"), "{why}");
        // reboot with a window set honours it too
        assert!(matches!(
            decide(
                "REBOOT_STRATEGY=reboot\nREBOOT_WINDOW_START=Sun 01:00\nREBOOT_WINDOW_LENGTH=1h\n"
            ),
            Decision::NotNow(_)
        ));
    }

    #[test]
    fn names_are_update_conf_spellings() {
        for s in ["reboot", "best-effort", "off"] {
            let c = config(&format!("REBOOT_STRATEGY={s}\n"));
            assert_eq!(strategy(&c).name(), s);
        }
    }

    #[test]
    fn only_etcd_lock_needs_the_machine_id() {
        let t = tempfile::tempdir().unwrap();
        let c = config("REBOOT_STRATEGY=etcd-lock\n");
        let missing = t.path().join("machine-id");
        let e = for_config(&c, &missing, Duration::from_secs(1))
            .err()
            .expect("no machine id")
            .to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        std::fs::write(&missing, "abc\n").unwrap();
        let s = for_config(&c, &missing, Duration::from_secs(1)).unwrap();
        assert_eq!(s.name(), "etcd-lock");
    }

    #[test]
    fn the_machine_id_is_one_nonempty_line() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("machine-id");
        std::fs::write(&p, "0123abcd\n").unwrap();
        assert_eq!(machine_id(&p).unwrap(), "0123abcd");
        let missing = t.path().join("none");
        let e = machine_id(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        std::fs::write(&p, "\n").unwrap();
        assert!(machine_id(&p).is_err());
    }
}
