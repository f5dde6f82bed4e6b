//! `cairn serve`'s side of the machines' lifecycle: the netboot answer for
//! profiles that install to disk (the installer once, then the local disk),
//! the machines' reports (`POST /lifecycle/v1/report`), the data map of an
//! image's `disk.raw` the installer copies (`/lifecycle/v1/map/IMAGE`), and
//! the operators' view and actions (`/lifecycle` on the admin listener).
//! The decisions and records are `cairn_lifecycle`'s; this module turns
//! them into HTTP and iPXE.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use cairn_formats::lifecycle::{Event, Report, MAX_REPORT_BYTES};
use cairn_lifecycle::{InstallAction, Lifecycle};

use crate::facts::Facts;
use crate::inventory::{Group, Inventory};
use crate::ipxe::{self, Endpoints};

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What the update channel gives one machine while a rollout runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOffer {
    /// No rollout of the channel in the inventory: the newest bundle.
    NoRollout,
    /// The rollout's version, in this wave.
    Offer { version: String, wave: String },
    /// The version before the rollout's, and why.
    Hold { version: String, reason: String },
}

/// A made map: the file's modification time and size it was made from, and its JSON.
type CachedMap = (SystemTime, u64, Arc<Vec<u8>>);

/// The records, behind a lock (every operation is short: a decision and
/// one small file written).
pub struct Records {
    inner: Mutex<Lifecycle>,
    maps: Mutex<HashMap<PathBuf, CachedMap>>,
}

impl Records {
    /// Opens the records: with `store` (`--store etcd://...`) in etcd under
    /// `PREFIX/lifecycle/`, else in files under `state_dir`
    /// (`STATE/lifecycle/`); the records that do not read are set aside
    /// and logged.
    pub fn open(state_dir: &std::path::Path, store: Option<&str>) -> anyhow::Result<Records> {
        use anyhow::Context as _;
        let (store, at): (Arc<dyn cairn_lifecycle::Store>, String) = match store {
            None => (
                Arc::new(
                    cairn_lifecycle::FileStore::open(state_dir).with_context(|| {
                        format!("opening the machine records in {}", state_dir.display())
                    })?,
                ),
                state_dir.display().to_string(),
            ),
            Some(spec) => {
                let holder = format!(
                    "cairn serve, pid {}, state dir {}",
                    std::process::id(),
                    state_dir.display()
                );
                let s = cairn_lifecycle::EtcdStore::open(spec, &holder)
                    .with_context(|| format!("opening the machine records in --store {spec}"))?;
                let at = format!("{spec} ({}/)", s.root());
                (Arc::new(s), at)
            }
        };
        let (l, set_aside) = Lifecycle::open(store, cairn_lifecycle::Limits::default())
            .with_context(|| format!("reading the machine records in {at}"))?;
        for s in set_aside {
            tracing::warn!(
                "machine record {} does not read ({}); set aside as {}",
                s.path.display(),
                s.error,
                s.moved_to.display()
            );
        }
        Ok(Records {
            inner: Mutex::new(l),
            maps: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The iPXE answer for a machine whose profile installs to disk, and
    /// what to log.
    pub fn install_answer(
        &self,
        inv: &Inventory,
        group: &Group,
        facts: &Facts,
        ep: &Endpoints,
    ) -> Result<String, String> {
        let Some(mac) = facts.labels.get("mac") else {
            return Ok(ipxe::refused_script(
                facts,
                "boot: install needs the machine's MAC address in the request (mac=${mac:hexhyp})",
            ));
        };
        let action = self
            .lock()
            .install_boot(mac, now())
            .map_err(|e| format!("machine records: {e}"))?;
        match action {
            InstallAction::Install {
                attempt,
                allow_overwrite,
            } => {
                tracing::info!(machine = %mac, group = %group.name, attempt, "serving the installer");
                ipxe::install_script(inv, group, facts, ep, attempt, allow_overwrite)
            }
            InstallAction::LocalDisk => {
                let why = self
                    .lock()
                    .machine(mac)
                    .map(|m| m.phase.describe())
                    .unwrap_or_default();
                Ok(ipxe::local_disk_script(facts, &why))
            }
            InstallAction::Refuse { reason } => {
                tracing::warn!(machine = %mac, group = %group.name, "not installing: {reason}");
                Ok(ipxe::refused_script(facts, &reason))
            }
        }
    }

    /// The iPXE answer for a machine that boots the network image (`boot: ram` or `disk-state`):
    /// the server is its A/B. The profile's image is a trial until the machine reports it healthy;
    /// one that failed there (the health gate said so, or the machine netbooted again before
    /// saying it was healthy) is not served to it again while its last good image is in the
    /// inventory (a profile's or an `updates:` folder), and the record says why.
    pub fn diskless_answer(
        &self,
        inv: &Inventory,
        group: &Group,
        facts: &Facts,
        ep: &Endpoints,
    ) -> Result<String, String> {
        let profile = inv.profile_of(group);
        let (Some(mac), Some(wanted)) = (facts.labels.get("mac"), inv.images.get(&profile.image))
        else {
            self.seen(facts);
            return ipxe::machine_script(inv, group, facts, ep);
        };
        let (choice, good) = {
            let mut records = self.lock();
            match records.diskless_boot(mac, &wanted.version, now()) {
                Ok(c) => (c, records.diskless_good(mac)),
                Err(e) => {
                    tracing::warn!(machine = %mac, "machine records: {e}");
                    return ipxe::machine_script(inv, group, facts, ep);
                }
            }
        };
        let script = match choice {
            cairn_lifecycle::Choice::Wanted { trial, version } => {
                if trial {
                    tracing::info!(machine = %mac, image = %profile.image, "diskless: serving {version} as a trial until the machine reports healthy");
                }
                // a failed gate reboots only when there is an earlier
                // healthy image to come back to
                let fallback = trial && good.is_some_and(|g| g != version);
                return ipxe::machine_script(inv, group, facts, ep)
                    .map(|s| ipxe::with_report_words(&s, &ep.public_url, mac, fallback));
            }
            cairn_lifecycle::Choice::Previous { version, reason } => {
                let key = format!("{}-{version}", wanted.name);
                if inv.images.contains_key(&key) {
                    tracing::warn!(machine = %mac, "diskless: serving {key}, not {}: {reason}", profile.image);
                    ipxe::machine_script_of(inv, group, facts, ep, &key)
                } else {
                    tracing::warn!(machine = %mac, "diskless: {reason}; its last good image {key} is in no image folder of the inventory, so {} is served", profile.image);
                    ipxe::machine_script(inv, group, facts, ep)
                }
            }
        };
        script.map(|s| ipxe::with_report_words(&s, &ep.public_url, mac, false))
    }

    /// A netboot under any other profile: recorded.
    pub fn seen(&self, facts: &Facts) {
        if let Some(mac) = facts.labels.get("mac") {
            if let Err(e) = self.lock().seen(mac, now()) {
                tracing::warn!(machine = %mac, "machine records: {e}");
            }
        }
    }

    /// A report. `booted_from`: the address the MAC last netbooted from
    /// (the status table's), which install reports must come from.
    pub fn report(
        &self,
        inv: &Inventory,
        body: &[u8],
        peer: std::net::IpAddr,
        booted_from: Option<std::net::IpAddr>,
    ) -> Result<String, (u16, String)> {
        if body.len() > MAX_REPORT_BYTES {
            return Err((413, format!("a report is at most {MAX_REPORT_BYTES} bytes")));
        }
        let r = Report::parse(body).map_err(|e| (400, e.to_string()))?;
        if self.lock().machine(&r.mac).is_none() {
            return Err((
                404,
                format!("{}: no such machine (reports are taken only from machines that netbooted from this server or asked a rollout channel naming their MAC)", r.mac),
            ));
        }
        let install_event = matches!(
            r.event,
            Event::InstallStarted { .. }
                | Event::InstallFinished { .. }
                | Event::InstallRefused { .. }
                | Event::InstallFailed { .. }
        );
        if install_event && booted_from.map(|b| b.to_canonical()) != Some(peer.to_canonical()) {
            return Err((
                403,
                format!(
                    "{}: install reports are taken only from the address that netbooted the machine from this server",
                    r.mac
                ),
            ));
        }
        let mut facts = Facts::default();
        facts.labels.insert("mac".into(), r.mac.clone());
        let group = inv.select(&facts).map(|g| g.name.clone());
        let pause = self
            .lock()
            .report(&r, group.as_deref(), now())
            .map_err(|e| match e {
                cairn_lifecycle::LifecycleError::UnknownMachine { .. } => (404, e.to_string()),
                _ => (500, e.to_string()),
            })?;
        tracing::info!(machine = %r.mac, %peer, event = ?r.event, "machine report");
        if let Some(p) = pause {
            tracing::warn!("rollout paused: {}", p.reason);
        }
        Ok("ok\n".into())
    }

    /// The data map of `disk` (JSON), made once per file version.
    pub fn disk_map(&self, disk: &std::path::Path) -> std::io::Result<Arc<Vec<u8>>> {
        let f = std::fs::File::open(disk)?;
        let meta = f.metadata()?;
        let stamp = (meta.modified()?, meta.len());
        if let Some((m, l, body)) = self
            .maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(disk)
        {
            if (*m, *l) == stamp {
                return Ok(body.clone());
            }
        }
        let map = cairn_install::map::map_file(&f)?;
        let body = Arc::new(serde_json::to_vec(&map).map_err(std::io::Error::other)?);
        self.maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(disk.to_path_buf(), (stamp.0, stamp.1, body.clone()));
        Ok(body)
    }

    /// Operators: every machine and rollout, as JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        let l = self.lock();
        serde_json::json!({
            "machines": l.machines().collect::<Vec<_>>(),
            "rollouts": l.rollouts().map(|r| serde_json::json!({
                "rollout": r,
                "waves": r.status(),
            })).collect::<Vec<_>>(),
        })
    }

    /// The inventory's rollout plans, applied at load and every reload.
    pub fn apply_plans(&self, plans: &[cairn_lifecycle::Plan]) {
        let mut l = self.lock();
        for plan in plans {
            match l.apply_plan(plan.clone(), now()) {
                Ok(cairn_lifecycle::PlanChange::Unchanged) => {}
                Ok(change) => tracing::info!(
                    channel = %plan.channel,
                    version = %plan.version,
                    waves = plan.waves.len(),
                    "rollout {}",
                    if change == cairn_lifecycle::PlanChange::Started { "started" } else { "plan edited" }
                ),
                Err(e) => tracing::error!(channel = %plan.channel, "rollout: {e}"),
            }
        }
    }

    /// Whether the rollout of `channel` (if the inventory has one) offers its version to the
    /// machine asking: `mac` from the request's header or the status table, `seed` from the
    /// request's header or else the machine's recorded machine id.
    pub fn update_offer(
        &self,
        inv: &Inventory,
        channel: &str,
        mac: Option<&str>,
        seed: Option<u32>,
    ) -> UpdateOffer {
        let Some(plan) = inv.rollouts.iter().find(|p| p.channel == channel) else {
            return UpdateOffer::NoRollout;
        };
        let version = plan.version.clone();
        let Some(mac) = mac else {
            return UpdateOffer::Hold {
                version,
                reason: format!(
                    "the request does not say which machine asks (header {}), and its address netbooted no known MAC",
                    cairn_formats::channel::rollout::MACHINE_HEADER
                ),
            };
        };
        let mut facts = Facts::default();
        facts.labels.insert("mac".into(), mac.to_owned());
        let group = inv.select(&facts).map(|g| g.name.clone());
        let mut l = self.lock();
        // A machine that names itself on the channel but never netbooted
        // from here (its disk written by other means) gets a record, so that
        // its wave and its reports are kept; as for netboots, the MAC is the
        // machine's word and the records are bounded (`Limits::max_machines`).
        if l.machine(mac).is_none() {
            if let Err(e) = l.seen(mac, now()) {
                return UpdateOffer::Hold {
                    version,
                    reason: format!("machine records: {e}"),
                };
            }
            tracing::info!(machine = %mac, channel, "machine first seen on the update channel");
        }
        let seed = seed
            .or_else(|| {
                l.machine(mac)
                    .and_then(|m| m.machine_id.as_deref())
                    .map(cairn_formats::channel::rollout::machine_seed)
            })
            // no seed: in no percent wave (group waves still apply)
            .unwrap_or(cairn_formats::channel::rollout::SEEDS);
        let c = cairn_lifecycle::Candidate {
            mac,
            seed,
            group: group.as_deref(),
        };
        match l.offer(channel, &c, now()) {
            Ok(Some(cairn_lifecycle::Decision::Offer { wave })) => UpdateOffer::Offer {
                version,
                wave: plan
                    .waves
                    .get(wave)
                    .map(|w| w.name.clone())
                    .unwrap_or_default(),
            },
            Ok(Some(cairn_lifecycle::Decision::Hold { reason })) => {
                UpdateOffer::Hold { version, reason }
            }
            Ok(None) => UpdateOffer::Hold {
                version,
                reason: "the rollout is not recorded (see the log at load)".into(),
            },
            Err(e) => UpdateOffer::Hold {
                version,
                reason: format!("machine records: {e}"),
            },
        }
    }

    /// Operators: resume the paused rollout of `channel`.
    pub fn resume(&self, channel: &str) -> Result<(), String> {
        self.lock()
            .resume_rollout(channel, now())
            .map_err(|e| e.to_string())?;
        tracing::info!(channel, "operator: rollout resumed");
        Ok(())
    }

    /// One machine's record and every rollout, copied (for explain).
    pub fn view(&self, mac: &str) -> crate::explain::RecordsView {
        let l = self.lock();
        crate::explain::RecordsView {
            machine: l.machine(mac).cloned(),
            rollouts: l.rollouts().cloned().collect(),
            unreadable: Vec::new(),
        }
    }

    /// Operators: install `mac` again at its next netboot.
    pub fn reinstall(&self, mac: &str, overwrite: bool) -> Result<(), String> {
        let mac = cairn_formats::lifecycle::normalize_mac(mac)
            .ok_or_else(|| format!("{mac:?} is not a MAC address"))?;
        self.lock()
            .reinstall(&mac, overwrite, now())
            .map_err(|e| e.to_string())?;
        tracing::info!(machine = %mac, overwrite, "operator: reinstall at the next netboot");
        Ok(())
    }
}
