//! The daemon: from checked settings to a running agent (or, with
//! `--systemd=sim --sim-agents N`, N simulated agents in one process) and a
//! candidate engine, sharing one etcd client; stopped by SIGTERM or SIGINT,
//! after which each agent purges its units and revokes its lease, and the
//! engine gives up its leadership.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cairn_etcd::{Client, Config, Tls};
use cairn_fleet::agent::{Agent, AgentOptions};
use cairn_fleet::engine::{Engine, EngineOptions};
use cairn_fleet::model::MachineRecord;
use cairn_fleet::registry::Registry;
use cairn_fleet::systemd::{Backend, DbusOptions, SimOptions, SimUnitManager, SystemdMode};
use tokio::sync::watch;
use tracing::info;

use crate::config::Settings;
use crate::host;

/// The etcd client the settings describe.
pub fn etcd_client(s: &Settings) -> Result<Client> {
    let tls = match (&s.etcd_cafile, &s.etcd_certfile, &s.etcd_keyfile) {
        (None, None, None) => None,
        (None, _, _) => bail!(
            "etcd_certfile and etcd_keyfile need etcd_cafile too (the CA that signed etcd's certificate)"
        ),
        (Some(ca), cert, key) => Some(
            Tls::from_files(ca, cert.as_deref(), key.as_deref())
                .context("reading the etcd TLS files")?,
        ),
    };
    let config = Config {
        request_timeout: s.etcd_request_timeout,
        tls,
        ..Config::default()
    };
    Client::with_config(&s.etcd_servers, config).context("etcd_servers")
}

/// This machine's record: ID from the settings or `machine_id_file`, the
/// public IP from the settings or detected.
pub fn machine(s: &Settings, machine_id_file: &Path) -> Result<MachineRecord> {
    let id = match &s.machine_id {
        Some(id) => id.clone(),
        None => host::machine_id(machine_id_file)?,
    };
    let public_ip = match &s.public_ip {
        Some(ip) => ip.clone(),
        None => host::detect_public_ip(&s.etcd_servers)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
    };
    Ok(MachineRecord {
        id,
        public_ip,
        metadata: s.metadata.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Runs until `stop` turns true.
pub async fn run(s: Settings, me: MachineRecord, stop: watch::Receiver<bool>) -> Result<()> {
    if s.sim_agents > 1 && s.systemd != SystemdMode::Sim {
        bail!("sim_agents {} needs --systemd=sim", s.sim_agents);
    }
    let etcd = etcd_client(&s)?;
    let registry = Registry::new(etcd, s.keys.clone());
    let until = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    let options = |machine: MachineRecord| {
        let mut o = AgentOptions::new(machine);
        o.ttl = s.agent_ttl;
        o
    };
    if s.systemd == SystemdMode::Sim {
        // N agents, one simulated systemd each; IDs ID, or ID-0001... for
        // more than one
        for i in 0..s.sim_agents {
            let mut m = me.clone();
            if s.sim_agents > 1 {
                m.id = format!("{}-{:04}", me.id, i + 1);
            }
            let agent = Agent::new(
                registry.clone(),
                Arc::new(SimUnitManager::new(SimOptions::default())),
                options(m),
            )
            .context("starting a simulated agent")?;
            let stop = until(stop.clone());
            tasks.spawn(async move {
                agent.run(stop).await;
                Ok(())
            });
        }
    } else {
        let dbus = DbusOptions {
            units_dir: s.units_dir.clone(),
            ..DbusOptions::default()
        };
        let backend = Backend::open(SystemdMode::Dbus, dbus, SimOptions::default())
            .await
            .context("connecting to systemd over D-Bus")?;
        let agent = Agent::new(registry.clone(), Arc::new(backend), options(me.clone()))
            .context("starting the agent")?;
        let stop = until(stop.clone());
        tasks.spawn(async move {
            agent.run(stop).await;
            Ok(())
        });
    }
    info!(
        machine = %me.id,
        public_ip = %me.public_ip,
        agents = s.sim_agents,
        engine = !s.disable_engine,
        systemd = %s.systemd,
        "fleetd started"
    );
    if !s.disable_engine {
        let mut opts = EngineOptions::new(me.id.clone());
        opts.reconcile_interval = s.engine_reconcile_interval;
        let engine = Engine::new(registry, opts);
        let stop = until(stop.clone());
        tasks.spawn(async move { engine.run(stop).await.context("engine") });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a fleetd task panicked")??;
    }
    Ok(())
}
