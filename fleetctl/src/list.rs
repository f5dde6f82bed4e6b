//! `list-units`, `list-machines` and `list-unit-files`: fleet's columns
//! (and its other `--fields`), `--no-legend`, `--full`, fleet's tables.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use cairn_fleet::model::{MachineRecord, UnitRecord, UnitStateReport};

use crate::table::{clean, render};
use crate::view::{self, current_state, legend, View};
use crate::{Ctx, ListOpts};

/// Checks `--fields` against the known ones (fleet's messages); `None`
/// when fleet would have refused (the message is printed).
fn columns(opts: &ListOpts, default: &str, known: &[&str]) -> Option<Vec<String>> {
    let fields = opts.fields.as_deref().unwrap_or(default);
    if fields.is_empty() {
        eprintln!("Must define output format");
        return None;
    }
    let cols: Vec<String> = fields.split(',').map(str::to_string).collect();
    for c in &cols {
        if !known.contains(&c.as_str()) {
            eprintln!("Invalid key in output format: {:?}", clean(c, 64));
            return None;
        }
    }
    Some(cols)
}

fn print(cols: &[String], rows: Vec<Vec<String>>, opts: &ListOpts) -> Result<u8> {
    let mut all = Vec::with_capacity(rows.len() + 1);
    if !opts.no_legend {
        all.push(cols.iter().map(|c| c.to_uppercase()).collect());
    }
    all.extend(rows);
    let mut out = std::io::stdout().lock();
    out.write_all(render(&all).as_bytes())?;
    out.flush()?;
    Ok(0)
}

pub const UNITS_FIELDS: &[&str] = &["active", "hash", "load", "machine", "sub", "unit"];

/// `fleetctl list-units`: one line per unit per machine that reports it.
pub async fn list_units(ctx: &Ctx, opts: &ListOpts) -> Result<u8> {
    let Some(cols) = columns(opts, "unit,machine,active,sub", UNITS_FIELDS) else {
        return Ok(1);
    };
    let reports = view::reports(&ctx.reg)
        .await
        .context("Error retrieving list of units from repository")?;
    let machines = if cols.iter().any(|c| c == "machine") {
        view::machines(&ctx.reg)
            .await
            .context("Error retrieving list of units from repository")?
    } else {
        Default::default()
    };
    let rows = reports
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| unit_state_field(c, r, machines.get(&r.machine), opts.full))
                .collect()
        })
        .collect();
    print(&cols, rows, opts)
}

fn unit_state_field(
    col: &str,
    r: &UnitStateReport,
    m: Option<&MachineRecord>,
    full: bool,
) -> String {
    match col {
        "unit" => r.unit.clone(),
        "load" => clean(&r.load, 64),
        "active" => clean(&r.active, 64),
        "sub" => clean(&r.sub, 64),
        "machine" => legend(m, &r.machine, full),
        "hash" if full => r.hash.to_string(),
        "hash" => r.hash.short(),
        _ => "-".into(),
    }
}

pub const MACHINES_FIELDS: &[&str] = &["machine", "ip", "metadata"];

/// `fleetctl list-machines`.
pub async fn list_machines(ctx: &Ctx, opts: &ListOpts) -> Result<u8> {
    let Some(cols) = columns(opts, "machine,ip,metadata", MACHINES_FIELDS) else {
        return Ok(1);
    };
    let machines = view::machines(&ctx.reg)
        .await
        .context("Error retrieving list of active machines")?;
    let rows = machines
        .values()
        .map(|m| {
            cols.iter()
                .map(|c| match c.as_str() {
                    "machine" => view::id_legend(&m.id, opts.full),
                    "ip" if m.public_ip.is_empty() => "-".into(),
                    "ip" => m.public_ip.clone(),
                    _ if m.metadata.is_empty() => "-".into(),
                    _ => clean(
                        &m.metadata
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        4096,
                    ),
                })
                .collect()
        })
        .collect();
    print(&cols, rows, opts)
}

pub const UNIT_FILES_FIELDS: &[&str] = &[
    "desc", "dstate", "global", "hash", "state", "target", "tmachine", "unit",
];

/// `fleetctl list-unit-files`: every unit in the registry, its desired
/// and current state and its machine.
pub async fn list_unit_files(ctx: &Ctx, opts: &ListOpts) -> Result<u8> {
    let Some(cols) = columns(opts, "unit,hash,dstate,state,target", UNIT_FILES_FIELDS) else {
        return Ok(1);
    };
    if cols.iter().any(|c| c == "tmachine") {
        eprintln!("WARNING: The \"tmachine\" field is deprecated. Use \"target\" instead");
    }
    let v = View::read(&ctx.reg)
        .await
        .context("Error retrieving list of units from repository")?;
    let rows = v
        .units
        .iter()
        .map(|u| {
            cols.iter()
                .map(|c| unit_file_field(c, u, &v, opts.full))
                .collect()
        })
        .collect();
    print(&cols, rows, opts)
}

fn unit_file_field(col: &str, u: &UnitRecord, v: &View, full: bool) -> String {
    // The record was parsed and checked when it was read.
    let unit = u.unit().ok();
    let global = unit.as_ref().is_some_and(|u| u.is_global());
    let entry = v.schedule.get(&u.name);
    match col {
        "unit" => u.name.clone(),
        "global" => global.to_string(),
        "dstate" => u.desired_state.to_string(),
        "target" | "tmachine" if global => "global".into(),
        "target" | "tmachine" => match entry {
            Some(e) => v.legend(&e.machine, full),
            None => "-".into(),
        },
        "state" if global => "-".into(),
        "state" => {
            let report = entry.and_then(|e| v.report(&u.name, &e.machine));
            current_state(report, u.hash).to_string()
        }
        "hash" if full => u.hash.to_string(),
        "hash" => u.hash.short(),
        _ => match unit.and_then(|u| u.file.description()) {
            Some(d) if !d.is_empty() => clean(&d, 256),
            _ => "-".into(),
        },
    }
}
