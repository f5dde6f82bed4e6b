//! What fleetctl reads from the registry, checked beyond the registry's
//! own checks (everything in etcd is untrusted): machines, units, the
//! schedule and the agents' state reports, with the records that did not
//! read reported once on stderr and skipped; and fleet's derived views of
//! them (a unit's current state, a machine's legend).

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context as _, Result};
use cairn_fleet::model::{MachineRecord, ScheduleEntry, UnitRecord, UnitStateReport};
use cairn_fleet::registry::{check_machine_id, BadRecord, Registry};
use cairn_fleet::unit::{JobState, UnitHash, UnitName};

use crate::table::clean;

/// The longest systemd state word shown (`active`, `running`, ...).
const MAX_STATE_WORD: usize = 64;

/// Says on stderr which records were skipped.
pub fn warn_bad(bad: &[BadRecord]) {
    for b in bad {
        eprintln!(
            "WARNING: skipping a bad record at {}: {}",
            clean(&b.key, 512),
            clean(&b.error, 512)
        );
    }
}

/// A machine record checked for use: its ID fits in keys, its public IP
/// is an address (or empty).
pub fn check_machine(m: &MachineRecord) -> Result<(), String> {
    check_machine_id(&m.id).map_err(|e| e.to_string())?;
    if !m.public_ip.is_empty() && m.public_ip.parse::<IpAddr>().is_err() {
        return Err(format!(
            "machine {}: public IP \"{}\" is not an IP address",
            m.id,
            clean(&m.public_ip, 64)
        ));
    }
    Ok(())
}

/// A state report checked for use: a unit name, a machine ID, short
/// state words.
pub fn check_report(r: &UnitStateReport) -> Result<(), String> {
    UnitName::parse(&r.unit).map_err(|e| e.to_string())?;
    check_machine_id(&r.machine).map_err(|e| e.to_string())?;
    for (what, v) in [("load", &r.load), ("active", &r.active), ("sub", &r.sub)] {
        if v.len() > MAX_STATE_WORD || v.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "unit {} on {}: {what} state \"{}\" is not a systemd state",
                r.unit,
                r.machine,
                clean(v, MAX_STATE_WORD)
            ));
        }
    }
    Ok(())
}

/// The machines, checked, by ID.
pub async fn machines(reg: &Registry) -> Result<BTreeMap<String, MachineRecord>> {
    let r = reg.machines().await?;
    warn_bad(&r.bad);
    Ok(keep_machines(r.records, reg))
}

fn keep_machines(records: Vec<MachineRecord>, reg: &Registry) -> BTreeMap<String, MachineRecord> {
    let mut out = BTreeMap::new();
    for m in records {
        match check_machine(&m) {
            Ok(()) => {
                out.insert(m.id.clone(), m);
            }
            Err(e) => warn_bad(&[BadRecord {
                key: reg.keys().machine(&m.id),
                error: e,
            }]),
        }
    }
    out
}

/// The state reports, checked, in (unit, machine) order.
pub async fn reports(reg: &Registry) -> Result<Vec<UnitStateReport>> {
    let r = reg.states().await?;
    warn_bad(&r.bad);
    let mut out: Vec<UnitStateReport> = r
        .records
        .into_iter()
        .filter(|s| match check_report(s) {
            Ok(()) => true,
            Err(e) => {
                warn_bad(&[BadRecord {
                    key: reg.keys().state(&s.machine, &s.unit),
                    error: e,
                }]);
                false
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.unit, &a.machine).cmp(&(&b.unit, &b.machine)));
    Ok(out)
}

/// Machines, units and schedule at one revision, and the state reports.
pub struct View {
    pub machines: BTreeMap<String, MachineRecord>,
    pub units: Vec<UnitRecord>,
    /// Unit -> its entry (non-global units are on one machine).
    pub schedule: BTreeMap<String, ScheduleEntry>,
    pub reports: Vec<UnitStateReport>,
}

impl View {
    pub async fn read(reg: &Registry) -> Result<View> {
        let snap = reg.snapshot().await.context("reading the registry")?;
        warn_bad(&snap.bad);
        let machines = keep_machines(snap.machines, reg);
        let mut schedule = BTreeMap::new();
        for e in snap.schedule {
            if let Err(err) = check_machine_id(&e.machine) {
                warn_bad(&[BadRecord {
                    key: reg.keys().schedule(),
                    error: err.to_string(),
                }]);
                continue;
            }
            schedule.entry(e.unit.clone()).or_insert(e);
        }
        let reports = reports(reg).await?;
        Ok(View {
            machines,
            units: snap.units,
            schedule,
            reports,
        })
    }

    /// fleet's legend of a machine: `ID.../IP` (the whole ID with
    /// `full`); the ID alone when the machine is gone or has no IP.
    pub fn legend(&self, id: &str, full: bool) -> String {
        legend(self.machines.get(id), id, full)
    }

    /// The report of `unit` from `machine`.
    pub fn report(&self, unit: &str, machine: &str) -> Option<&UnitStateReport> {
        self.reports
            .iter()
            .find(|r| r.unit == unit && r.machine == machine)
    }
}

/// fleet's `machineIDLegend`: the first 8 characters and `...`, or the
/// whole ID.
pub fn id_legend(id: &str, full: bool) -> String {
    if full {
        return id.to_string();
    }
    let short: String = id.chars().take(8).collect();
    format!("{short}...")
}

/// fleet's `machineFullLegend`: the ID legend and `/IP` when known.
pub fn legend(m: Option<&MachineRecord>, id: &str, full: bool) -> String {
    let l = id_legend(id, full);
    match m {
        Some(m) if !m.public_ip.is_empty() => format!("{l}/{}", m.public_ip),
        _ => l,
    }
}

/// Whether systemd is doing something to the unit or it runs (not at
/// rest).
pub fn running(active: &str) -> bool {
    matches!(
        active,
        "active" | "activating" | "deactivating" | "reloading"
    )
}

/// The state a unit reached on its machine, as fleet's registry derived
/// it (`determineJobState`): inactive without a machine or a report for
/// the text it has now, launched when its report says active, loaded
/// otherwise.
pub fn current_state(report: Option<&UnitStateReport>, hash: UnitHash) -> JobState {
    match report {
        Some(r) if r.hash == hash && r.active == "active" => JobState::Launched,
        Some(r) if r.hash == hash && r.load == "loaded" => JobState::Loaded,
        _ => JobState::Inactive,
    }
}
