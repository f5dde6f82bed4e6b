//! `fleetctl ssh [-A] [--machine ID | --unit UNIT] {MACHINE|UNIT}
//! [COMMAND...]`, as fleet had it: `ssh` to the public IP of a machine
//! named by (a unique prefix of) its ID, or of the machine a unit is
//! scheduled on, as `--ssh-username` (`core`) on `--ssh-port` (22),
//! through `--tunnel` when given; an interactive shell without COMMAND.
//!
//! Resolution follows fleet's `globalLookup`: the argument is looked up
//! both as a machine ID prefix and as a unit (`.service` added when it has
//! no type); both matching is ambiguous (`--machine`/`--unit` say which),
//! neither is "could not find matching unit or machine". A prefix of more
//! than one machine, a global unit (it is on every machine) and a unit
//! scheduled nowhere do not match. COMMAND's words go to ssh as they are,
//! after the host, so the remote shell reads them joined by spaces (as
//! ssh, and fleet's `strings.Join(args, " ")`, did).

use anyhow::Result;
use cairn_fleet::model::MachineRecord;

use crate::remote::{run_ssh, ssh_to};
use crate::view::View;
use crate::{unit_name, Ctx};

/// `fleetctl ssh`'s options.
#[derive(Debug, Clone, Default)]
pub struct SshOpts {
    /// `-A`: forward the local ssh-agent.
    pub forward_agent: bool,
    /// `--machine`: the machine, by ID or a unique prefix of it.
    pub machine: Option<String>,
    /// `--unit`: the machine the unit is scheduled on.
    pub unit: Option<String>,
    pub ssh_port: u16,
}

/// Runs `fleetctl ssh`; returns ssh's exit code (1 when no machine
/// matches).
pub async fn ssh(ctx: &Ctx, o: &SshOpts, args: &[String]) -> Result<u8> {
    if o.machine.is_some() && o.unit.is_some() {
        eprintln!("Both machine and unit flags provided, please specify only one.");
        return Ok(1);
    }
    if o.machine.is_none() && o.unit.is_none() && args.is_empty() {
        eprintln!("Provide a machine or unit, and optionally a command.");
        return Ok(1);
    }
    let view = View::read(&ctx.reg).await?;
    let (machine, command) = match resolve(&view, o, args) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("Unable to proceed: {why}");
            return Ok(1);
        }
    };
    let Some(m) = machine else {
        eprintln!("Could not determine address of machine.");
        return Ok(1);
    };
    let mut argv = ssh_to(ctx, &m, o.ssh_port, false, o.forward_agent)?;
    argv.extend(command.iter().map(Into::into));
    run_ssh(&argv, &m)
}

/// The machine to reach (`None`: its address is not known) and the
/// command's words.
pub fn resolve(
    view: &View,
    o: &SshOpts,
    args: &[String],
) -> Result<(Option<MachineRecord>, Vec<String>), String> {
    let (machine, rest) = match (&o.machine, &o.unit) {
        (Some(id), _) => (by_machine(view, id)?, args),
        (None, Some(unit)) => (by_unit(view, unit)?, args),
        (None, None) => {
            let lookup = &args[0];
            let m = by_machine(view, lookup).ok().flatten();
            let u = by_unit(view, lookup).ok().flatten();
            let found = match (m, u) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "ambiguous argument, both machine and unit found for `{lookup}`.\nPlease use flag `--machine` or `--unit` to refine the search"
                    ))
                }
                (Some(m), None) | (None, Some(m)) => m,
                (None, None) => return Err("could not find matching unit or machine".into()),
            };
            (Some(found), &args[1..])
        }
    };
    // fleet's TrimToDashes: everything after a `--`, if there is one
    let rest = match rest.iter().position(|a| a == "--") {
        Some(i) => &rest[i + 1..],
        None => rest,
    };
    Ok((machine, rest.to_vec()))
}

/// The one machine whose ID starts with `lookup`.
fn by_machine(view: &View, lookup: &str) -> Result<Option<MachineRecord>, String> {
    if lookup.is_empty() {
        return Err("machine does not exist".into());
    }
    let mut found = view.machines.values().filter(|m| m.id.starts_with(lookup));
    match (found.next(), found.next()) {
        (Some(m), None) => Ok(addressed(m)),
        (Some(_), Some(_)) => Err("found more than one machine".into()),
        (None, _) => Err("machine does not exist".into()),
    }
}

/// The machine unit `lookup` is scheduled on.
fn by_unit(view: &View, lookup: &str) -> Result<Option<MachineRecord>, String> {
    let name = unit_name(lookup).map_err(|e| format!("{e:#}"))?;
    let Some(u) = view.units.iter().find(|u| u.name == name.as_str()) else {
        return Err("unit does not exist".into());
    };
    if u.unit().is_ok_and(|u| u.is_global()) {
        return Err("global units unsupported".into());
    }
    Ok(view
        .schedule
        .get(name.as_str())
        .and_then(|e| view.machines.get(&e.machine))
        .and_then(addressed))
}

/// The machine, when it has a public IP to reach it at.
fn addressed(m: &MachineRecord) -> Option<MachineRecord> {
    (!m.public_ip.is_empty()).then(|| m.clone())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_fleet::model::{ScheduleEntry, UnitRecord};
    use cairn_fleet::unit::JobState;

    use super::*;

    fn view() -> View {
        let m = |id: &str, ip: &str| MachineRecord {
            id: id.into(),
            public_ip: ip.into(),
            metadata: BTreeMap::new(),
            version: "t".into(),
        };
        let units = vec![
            UnitRecord::submit(
                "web.service",
                "[Service]\nExecStart=/bin/true\n",
                JobState::Launched,
            )
            .unwrap(),
            UnitRecord::submit(
                "all.service",
                "[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n",
                JobState::Launched,
            )
            .unwrap(),
            UnitRecord::submit(
                "idle.service",
                "[Service]\nExecStart=/bin/true\n",
                JobState::Inactive,
            )
            .unwrap(),
            UnitRecord::submit(
                "abc.service",
                "[Service]\nExecStart=/bin/true\n",
                JobState::Launched,
            )
            .unwrap(),
        ];
        let schedule = [("web.service", "abc123"), ("abc.service", "abd456")]
            .iter()
            .map(|(u, mid)| {
                let r = units.iter().find(|r| r.name == *u).unwrap();
                (u.to_string(), ScheduleEntry::new(r, mid))
            })
            .collect();
        View {
            machines: [
                m("abc123", "10.0.0.1"),
                m("abd456", "10.0.0.2"),
                m("noip", ""),
            ]
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect(),
            units,
            schedule,
            reports: Vec::new(),
        }
    }

    fn go(o: &SshOpts, args: &[&str]) -> Result<(Option<String>, Vec<String>), String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        resolve(&view(), o, &args).map(|(m, c)| (m.map(|m| m.public_ip), c))
    }

    #[test]
    fn machines_and_units_resolve_as_fleets_did() {
        let none = SshOpts::default();
        let ip = |s: &str| Some(s.to_string());
        assert_eq!(go(&none, &["abc1"]), Ok((ip("10.0.0.1"), vec![])));
        assert_eq!(
            go(&none, &["web", "ls", "-l"]),
            Ok((ip("10.0.0.1"), vec!["ls".into(), "-l".into()]))
        );
        assert_eq!(
            go(&none, &["abd", "--", "uptime"]),
            Ok((ip("10.0.0.2"), vec!["uptime".into()]))
        );
        // "ab" is a prefix of two machines, and no unit
        assert_eq!(
            go(&none, &["ab"]).unwrap_err(),
            "could not find matching unit or machine"
        );
        // "abc" is machine abc123 and unit abc.service
        assert!(go(&none, &["abc"])
            .unwrap_err()
            .starts_with("ambiguous argument"));
        let unit = |u: &str| SshOpts {
            unit: Some(u.into()),
            ..SshOpts::default()
        };
        let machine = |m: &str| SshOpts {
            machine: Some(m.into()),
            ..SshOpts::default()
        };
        assert_eq!(go(&unit("abc"), &[]), Ok((ip("10.0.0.2"), vec![])));
        assert_eq!(
            go(&machine("abc"), &["w"]),
            Ok((ip("10.0.0.1"), vec!["w".into()]))
        );
        assert_eq!(
            go(&machine("ab"), &[]).unwrap_err(),
            "found more than one machine"
        );
        assert_eq!(
            go(&machine("zz"), &[]).unwrap_err(),
            "machine does not exist"
        );
        assert_eq!(go(&machine("noip"), &[]), Ok((None, vec![])));
        assert_eq!(
            go(&unit("all"), &[]).unwrap_err(),
            "global units unsupported"
        );
        assert_eq!(go(&unit("nope"), &[]).unwrap_err(), "unit does not exist");
        assert_eq!(
            go(&unit("idle"), &[]),
            Ok((None, vec![])),
            "scheduled nowhere"
        );
    }
}
