//! The per-machine status table (seen, got iPXE script, kernel, initrd, cloud-config), logged on each change
//! and served as JSON at `/machines`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// How far a machine got, in boot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Asked for `/boot.ipxe` or matched nothing.
    Seen,
    /// Got its iPXE script.
    Script,
    /// Fetched the kernel.
    Kernel,
    /// Fetched the initrd.
    Initrd,
    /// Fetched its cloud-config.
    CloudConfig,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Stage::Seen => "seen",
            Stage::Script => "got iPXE script",
            Stage::Kernel => "got kernel",
            Stage::Initrd => "got initrd",
            Stage::CloudConfig => "got cloud-config",
        }
    }
}

/// One machine's row.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// MAC, `uuid:...`, or the IP address for machines that sent neither.
    pub key: String,
    /// Facts last sent.
    pub mac: Option<String>,
    /// Hardware UUID.
    pub uuid: Option<String>,
    /// Hostname.
    pub hostname: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Last client IP address.
    pub ip: String,
    /// Group matched (None: no group).
    pub group: Option<String>,
    /// Profile of that group.
    pub profile: Option<String>,
    /// Latest stage reached.
    pub stage: Stage,
    /// Last request, RFC 3339-like (HTTP date).
    pub last_seen: String,
}

/// The table; keyed by machine key, with an index by IP for asset requests (which carry no MAC).
#[derive(Debug, Default)]
pub struct StatusTable {
    inner: Mutex<BTreeMap<String, Machine>>,
}

/// What is known about the requester at the time of an event.
#[derive(Debug, Clone, Default)]
pub struct Sighting {
    /// Machine key (see [`Machine::key`]).
    pub key: String,
    /// Facts.
    pub mac: Option<String>,
    /// Facts.
    pub uuid: Option<String>,
    /// Facts.
    pub hostname: Option<String>,
    /// Facts.
    pub serial: Option<String>,
    /// Client address.
    pub ip: String,
    /// Group, when one matched.
    pub group: Option<String>,
    /// Profile, when a group matched.
    pub profile: Option<String>,
}

impl StatusTable {
    /// Records a stage for a machine identified by its facts; logs when the stage changes.
    pub fn record(&self, s: Sighting, stage: Stage) {
        let now = httpdate::fmt_http_date(SystemTime::now());
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut is_new = false;
        let m = t.entry(s.key.clone()).or_insert_with(|| {
            is_new = true;
            Machine {
                key: s.key.clone(),
                mac: None,
                uuid: None,
                hostname: None,
                serial: None,
                ip: s.ip.clone(),
                group: None,
                profile: None,
                stage,
                last_seen: now.clone(),
            }
        });
        let changed = is_new || m.stage != stage || (s.group.is_some() && m.group != s.group);
        m.mac = s.mac.or(m.mac.take());
        m.uuid = s.uuid.or(m.uuid.take());
        m.hostname = s.hostname.or(m.hostname.take());
        m.serial = s.serial.or(m.serial.take());
        m.ip = s.ip;
        if s.group.is_some() {
            m.group = s.group;
            m.profile = s.profile;
        }
        m.stage = stage;
        m.last_seen = now;
        if changed {
            tracing::info!(
                machine = %m.key,
                ip = %m.ip,
                group = m.group.as_deref().unwrap_or("-"),
                profile = m.profile.as_deref().unwrap_or("-"),
                "machine {}: {}",
                m.key,
                stage.describe()
            );
        }
    }

    /// Records a stage for whichever machine last used this IP (asset fetches carry no MAC). Returns the
    /// machine's key, or None when the IP is unknown.
    pub fn record_by_ip(&self, ip: &str, stage: Stage) -> Option<String> {
        let s = {
            let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let m = t
                .values()
                .filter(|m| m.ip == ip)
                .max_by(|a, b| a.last_seen.cmp(&b.last_seen))?;
            Sighting {
                key: m.key.clone(),
                ip: ip.to_string(),
                ..Sighting::default()
            }
        };
        let key = s.key.clone();
        self.record(s, stage);
        Some(key)
    }

    /// Machine key last seen at this IP.
    pub fn key_for_ip(&self, ip: &str) -> Option<String> {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        t.values().find(|m| m.ip == ip).map(|m| m.key.clone())
    }

    /// A copy of every row, sorted by key.
    pub fn snapshot(&self) -> Vec<Machine> {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        t.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_machine_by_ip() {
        let t = StatusTable::default();
        t.record(
            Sighting {
                key: "52:54:00:00:00:01".into(),
                mac: Some("52:54:00:00:00:01".into()),
                ip: "10.0.0.1".into(),
                group: Some("g".into()),
                profile: Some("p".into()),
                ..Sighting::default()
            },
            Stage::Script,
        );
        assert_eq!(
            t.record_by_ip("10.0.0.1", Stage::Kernel).as_deref(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(t.record_by_ip("10.0.0.2", Stage::Kernel), None);
        let rows = t.snapshot();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].stage, Stage::Kernel);
        assert_eq!(rows[0].group.as_deref(), Some("g"));
        assert_eq!(rows[0].mac.as_deref(), Some("52:54:00:00:00:01"));
    }
}
