//! The per-machine status table (seen, got iPXE script, kernel, initrd, cloud-config), logged on each change
//! and served as JSON at `/machines`. Bounded: beyond `max` rows the machine seen least recently is
//! forgotten; indexed by IP; recency is the order of events, not a comparison of date strings. Each row
//! also keeps the machine's last netboot (the address that fetched its iPXE script, and when), which
//! `cloud_config_access: booted-ip` groups check.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

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

/// Rows kept by default; the machine seen least recently goes first beyond it.
pub const DEFAULT_MAX_MACHINES: usize = 4096;

/// The table; keyed by machine key, bounded (least recently seen evicted), with an index by IP for
/// asset requests (which carry no MAC). Every operation is O(log n) or better under the lock.
#[derive(Debug)]
pub struct StatusTable {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rows: HashMap<String, Row>,
    /// Recency order: tick of the last record -> key. Ticks grow with every record, so the order is
    /// the order of events whatever the wall clock does.
    lru: BTreeMap<u64, String>,
    /// Key of the machine last recorded at each IP.
    by_ip: HashMap<String, String>,
    tick: u64,
}

#[derive(Debug)]
struct Row {
    machine: Machine,
    tick: u64,
    /// The machine's last netboot: who fetched its iPXE script, and when.
    boot: Option<Boot>,
}

/// A machine's netboot as this server saw it: the address that fetched its iPXE script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// The address the script went to (IPv4-mapped IPv6 as IPv4).
    pub ip: IpAddr,
    /// When (monotonic: a boot is always newer than the server's start).
    pub at: Instant,
}

/// How long after a netboot its address may fetch the machine's cloud-config and metadata under
/// `cloud_config_access: booted-ip`: room for a slow kernel and initrd download and a slow boot.
pub const BOOT_SESSION: Duration = Duration::from_secs(60 * 60);

/// Why a `booted-ip` request is refused (for the operator's log; the client is told less).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotBooted {
    /// The machine did not netboot from this server since it started (or its row was forgotten).
    Never,
    /// Its last netboot is older than the window.
    Expired {
        /// How long ago it was.
        ago: Duration,
    },
    /// It netbooted from another address.
    Elsewhere {
        /// That address.
        booted: IpAddr,
        /// How long ago.
        ago: Duration,
    },
}

impl fmt::Display for NotBooted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotBooted::Never => f.write_str("it did not netboot from this server since it started"),
            NotBooted::Expired { ago } => write!(
                f,
                "its last netboot from this server was {} s ago, more than {} s",
                ago.as_secs(),
                BOOT_SESSION.as_secs()
            ),
            NotBooted::Elsewhere { booted, ago } => {
                write!(f, "it netbooted from {booted} {} s ago", ago.as_secs())
            }
        }
    }
}

/// Whether `peer` may have the machine's cloud-config at `now`: it is the address of the machine's
/// last netboot (`boot`), which is at most `window` old.
pub fn check_boot(
    boot: Option<Boot>,
    peer: IpAddr,
    now: Instant,
    window: Duration,
) -> Result<(), NotBooted> {
    let Some(boot) = boot else {
        return Err(NotBooted::Never);
    };
    let ago = now.saturating_duration_since(boot.at);
    if boot.ip != peer.to_canonical() {
        return Err(NotBooted::Elsewhere {
            booted: boot.ip,
            ago,
        });
    }
    if ago > window {
        return Err(NotBooted::Expired { ago });
    }
    Ok(())
}

impl Default for StatusTable {
    fn default() -> Self {
        StatusTable::new(DEFAULT_MAX_MACHINES)
    }
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
    /// A table of at most `max` rows (at least one).
    pub fn new(max: usize) -> StatusTable {
        StatusTable {
            max: max.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a stage for a machine identified by its facts; logs when the stage changes.
    /// [`Stage::Script`] is a netboot: the row's [`Boot`] becomes this address, now.
    pub fn record(&self, s: Sighting, stage: Stage) {
        let now = httpdate::fmt_http_date(SystemTime::now());
        let mut guard = self.lock();
        let t = &mut *guard;
        t.tick += 1;
        let tick = t.tick;
        let mut is_new = false;
        let row = t.rows.entry(s.key.clone()).or_insert_with(|| {
            is_new = true;
            Row {
                machine: Machine {
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
                },
                tick,
                boot: None,
            }
        });
        if stage == Stage::Script {
            if let Ok(ip) = s.ip.parse::<IpAddr>() {
                row.boot = Some(Boot {
                    ip: ip.to_canonical(),
                    at: Instant::now(),
                });
            }
        }
        if !is_new {
            t.lru.remove(&row.tick);
        }
        row.tick = tick;
        t.lru.insert(tick, s.key.clone());
        let m = &mut row.machine;
        let changed = is_new || m.stage != stage || (s.group.is_some() && m.group != s.group);
        if m.ip != s.ip && t.by_ip.get(&m.ip) == Some(&m.key) {
            t.by_ip.remove(&m.ip);
        }
        t.by_ip.insert(s.ip.clone(), s.key.clone());
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
        while t.rows.len() > self.max {
            let Some((_, old)) = t.lru.pop_first() else {
                break;
            };
            if let Some(r) = t.rows.remove(&old) {
                if t.by_ip.get(&r.machine.ip) == Some(&old) {
                    t.by_ip.remove(&r.machine.ip);
                }
                tracing::debug!(machine = %old, "status table full: forgetting the machine seen least recently");
            }
        }
    }

    /// Records a stage for whichever machine last used this IP (asset fetches carry no MAC). Returns the
    /// machine's key, or None when the IP is unknown.
    pub fn record_by_ip(&self, ip: &str, stage: Stage) -> Option<String> {
        let key = self.key_for_ip(ip)?;
        self.record(
            Sighting {
                key: key.clone(),
                ip: ip.to_string(),
                ..Sighting::default()
            },
            stage,
        );
        Some(key)
    }

    /// The last netboot of the machine filed under `key`.
    pub fn boot(&self, key: &str) -> Option<Boot> {
        self.lock().rows.get(key).and_then(|r| r.boot)
    }

    /// Key of the machine last seen at this IP.
    pub fn key_for_ip(&self, ip: &str) -> Option<String> {
        self.lock().by_ip.get(ip).cloned()
    }

    /// Rows kept now.
    pub fn len(&self) -> usize {
        self.lock().rows.len()
    }

    /// True when no machine has been seen (or all were forgotten).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every row, sorted by key.
    pub fn snapshot(&self) -> Vec<Machine> {
        let t = self.lock();
        let mut rows: Vec<Machine> = t.rows.values().map(|r| r.machine.clone()).collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
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

    fn at(t: &StatusTable, key: &str, ip: &str) {
        t.record(
            Sighting {
                key: key.into(),
                ip: ip.into(),
                ..Sighting::default()
            },
            Stage::Seen,
        );
    }

    #[test]
    fn a_netboot_is_the_last_script_fetch_and_other_stages_keep_it() {
        let t = StatusTable::default();
        let mac = "52:54:00:00:00:01";
        let sighting = |ip: &str| Sighting {
            key: mac.into(),
            mac: Some(mac.into()),
            ip: ip.into(),
            ..Sighting::default()
        };
        assert_eq!(t.boot(mac), None);
        t.record(sighting("10.0.0.1"), Stage::Seen);
        assert_eq!(t.boot(mac), None, "only the iPXE script is a netboot");
        let before = Instant::now();
        t.record(sighting("10.0.0.1"), Stage::Script);
        let boot = t.boot(mac).unwrap();
        assert_eq!(boot.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert!(boot.at >= before);
        // A cloud-config fetch from elsewhere moves the row's address, not the boot.
        t.record(sighting("10.0.0.9"), Stage::CloudConfig);
        t.record_by_ip("10.0.0.9", Stage::Kernel);
        assert_eq!(t.boot(mac), Some(boot));
        // The next script fetch is the next netboot, IPv4-mapped addresses as IPv4.
        t.record(sighting("::ffff:10.0.0.2"), Stage::Script);
        assert_eq!(
            t.boot(mac).unwrap().ip,
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn booted_ip_check() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let at = Instant::now();
        let boot = Some(Boot {
            ip: ip("10.0.0.1"),
            at,
        });
        let window = Duration::from_secs(3600);
        let later = |s: u64| at + Duration::from_secs(s);
        assert_eq!(check_boot(boot, ip("10.0.0.1"), later(5), window), Ok(()));
        assert_eq!(
            check_boot(boot, ip("::ffff:10.0.0.1"), later(5), window),
            Ok(())
        );
        assert_eq!(
            check_boot(boot, ip("10.0.0.1"), later(3600), window),
            Ok(())
        );
        assert_eq!(
            check_boot(boot, ip("10.0.0.1"), later(3601), window),
            Err(NotBooted::Expired {
                ago: Duration::from_secs(3601)
            })
        );
        assert_eq!(
            check_boot(boot, ip("10.0.0.2"), later(5), window),
            Err(NotBooted::Elsewhere {
                booted: ip("10.0.0.1"),
                ago: Duration::from_secs(5)
            })
        );
        assert_eq!(
            check_boot(None, ip("10.0.0.1"), later(5), window),
            Err(NotBooted::Never)
        );
        assert_eq!(
            NotBooted::Elsewhere {
                booted: ip("10.0.0.1"),
                ago: Duration::from_secs(5)
            }
            .to_string(),
            "it netbooted from 10.0.0.1 5 s ago"
        );
    }

    #[test]
    fn the_latest_machine_at_an_ip_wins() {
        let t = StatusTable::default();
        // "zz" first, then "aa" at the same address: the newer one is the machine at that IP (the old
        // table returned the first in key order, and compared HTTP dates as strings: "Mon" > "Fri").
        at(&t, "zz", "10.0.0.9");
        at(&t, "aa", "10.0.0.9");
        assert_eq!(t.key_for_ip("10.0.0.9").as_deref(), Some("aa"));
        assert_eq!(
            t.record_by_ip("10.0.0.9", Stage::Kernel).as_deref(),
            Some("aa")
        );
        // A machine that moves leaves its old address.
        at(&t, "aa", "10.0.0.10");
        assert_eq!(t.key_for_ip("10.0.0.9"), None);
        assert_eq!(t.key_for_ip("10.0.0.10").as_deref(), Some("aa"));
    }

    #[test]
    fn bounded_least_recently_seen_goes_first() {
        let t = StatusTable::new(3);
        at(&t, "a", "10.0.0.1");
        at(&t, "b", "10.0.0.2");
        at(&t, "c", "10.0.0.3");
        at(&t, "a", "10.0.0.1"); // a is recent again
        at(&t, "d", "10.0.0.4"); // b goes
        let keys: Vec<String> = t.snapshot().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["a", "c", "d"]);
        assert_eq!(t.key_for_ip("10.0.0.2"), None);
        for i in 0..10_000 {
            at(
                &t,
                &format!("m{i}"),
                &format!("10.1.{}.{}", i / 256, i % 256),
            );
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.lock().by_ip.len(), 3);
        assert_eq!(t.lock().lru.len(), 3);
        assert_eq!(t.key_for_ip("10.1.39.15").as_deref(), Some("m9999"));
    }
}
