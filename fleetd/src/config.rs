//! fleetd's settings as fleet read them: fleet's option names, from the
//! config file (`/etc/fleet/fleet.conf`, `key=value` at the top level),
//! then `FLEET_`-prefixed environment variables (what cloud-config's
//! `coreos.fleet` writes into `fleet.service.d/20-cloudinit.conf`), then
//! command-line flags, each overriding the one before. Every value is
//! checked; an error names where it came from (file and line, variable or
//! flag), the option, and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_fleet::model::parse_metadata;
use cairn_fleet::registry::{check_machine_id, Keys, DEFAULT_PREFIX};
use cairn_fleet::systemd::SystemdMode;

/// fleet's default config file.
pub const DEFAULT_CONFIG: &str = "/etc/fleet/fleet.conf";

/// The largest config file read.
const MAX_CONFIG: u64 = 64 << 10;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { path: PathBuf, line: usize },
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// A setting that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {key}: {why}")]
    Value {
        origin: Origin,
        key: String,
        why: String,
    },
    #[error("{origin}: unknown option {key:?}{hint}")]
    Unknown {
        origin: Origin,
        key: String,
        hint: String,
    },
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
}

/// How each option is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Bool,
    Str,
    Duration,
}

/// fleet's options (its configuration document and fleetd's flags), with
/// what cairn does with each.
const OPTIONS: &[(&str, Kind, Use)] = &[
    ("verbosity", Kind::Int, Use::Used),
    ("etcd_servers", Kind::Str, Use::Used),
    ("etcd_key_prefix", Kind::Str, Use::Used),
    ("etcd_request_timeout", Kind::Float, Use::Used),
    ("etcd_cafile", Kind::Str, Use::Used),
    ("etcd_certfile", Kind::Str, Use::Used),
    ("etcd_keyfile", Kind::Str, Use::Used),
    ("etcd_username", Kind::Str, Use::Auth),
    ("etcd_password", Kind::Str, Use::Auth),
    ("public_ip", Kind::Str, Use::Used),
    ("metadata", Kind::Str, Use::Used),
    ("agent_ttl", Kind::Duration, Use::Used),
    ("engine_reconcile_interval", Kind::Float, Use::Used),
    ("disable_engine", Kind::Bool, Use::Used),
    ("disable_watches", Kind::Bool, Use::Ignored),
    ("token_limit", Kind::Int, Use::Ignored),
    ("verify_units", Kind::Bool, Use::Ignored),
    ("authorized_keys_file", Kind::Str, Use::Ignored),
    ("enable_grpc", Kind::Bool, Use::Ignored),
    ("unit_prefix", Kind::Str, Use::Ignored),
    ("boot_id", Kind::Str, Use::Ignored),
    // cairn's own
    ("machine_id", Kind::Str, Use::Used),
    ("systemd", Kind::Str, Use::Used),
    ("units_dir", Kind::Str, Use::Used),
    ("sim_agents", Kind::Int, Use::Used),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Used,
    /// Accepted for compatibility; cairn's design has no use for it.
    Ignored,
    /// etcd user/password: not supported; refused.
    Auth,
}

/// fleetd's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub verbosity: u8,
    pub etcd_servers: Vec<String>,
    pub keys: Keys,
    pub etcd_request_timeout: Duration,
    /// etcd TLS: the CA bundle, the client certificate and key (PEM).
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    /// `None`: detect.
    pub public_ip: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub agent_ttl: Duration,
    pub engine_reconcile_interval: Duration,
    pub disable_engine: bool,
    /// `None`: `/etc/machine-id`.
    pub machine_id: Option<String>,
    pub systemd: SystemdMode,
    pub units_dir: PathBuf,
    /// Simulated agents in this process (`--systemd=sim` only).
    pub sim_agents: usize,
    /// Options given that cairn accepts and ignores, with where.
    pub ignored: Vec<(String, Origin)>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            verbosity: 0,
            etcd_servers: vec!["http://127.0.0.1:2379".into()],
            keys: Keys::default(),
            // fleet's was 1 s; cairn's client counts a whole request in
            // it (connect to the last byte), and a thousand agents
            // starting together make etcd slower than that
            etcd_request_timeout: Duration::from_secs(5),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            public_ip: None,
            metadata: BTreeMap::new(),
            agent_ttl: Duration::from_secs(30),
            engine_reconcile_interval: Duration::from_secs(2),
            disable_engine: false,
            machine_id: None,
            systemd: SystemdMode::Dbus,
            units_dir: PathBuf::from(cairn_fleet::systemd::DEFAULT_UNITS_DIR),
            sim_agents: 1,
            ignored: Vec::new(),
        }
    }
}

/// One `key = value` from some source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

/// Reads the config file's settings: `key=value` or `key="value"` lines at
/// the top level; `#` and `;` start comments; an INI section header is an
/// error (fleet wanted every option outside sections). A missing file is
/// no settings when it is the default one.
pub fn read_file(path: &Path, required: bool) -> Result<Vec<Setting>, ConfigError> {
    let file_err = |why: String| ConfigError::File {
        path: path.to_path_buf(),
        why,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Vec::new()),
        Err(e) => return Err(file_err(e.to_string())),
    };
    if !meta.is_file() {
        return Err(file_err("not a regular file".into()));
    }
    if meta.len() > MAX_CONFIG {
        return Err(file_err(format!(
            "{} bytes, more than the {MAX_CONFIG} a config file may have",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    parse_file(path, &text)
}

/// Parses config file text (see [`read_file`]).
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Setting>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let origin = Origin::File {
            path: path.to_path_buf(),
            line: i + 1,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            return Err(ConfigError::Value {
                origin,
                key: line.to_string(),
                why: "expected options at the top level, not in an INI section".into(),
            });
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::Value {
                origin,
                key: line.to_string(),
                why: "expected key=value".into(),
            });
        };
        let key = k.trim().to_string();
        let mut value = v.trim();
        if let Some(inner) = value.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            value = inner;
        } else if value.starts_with('"') {
            return Err(ConfigError::Value {
                origin,
                key,
                why: "a quoted value without its closing quote".into(),
            });
        }
        out.push(Setting {
            key,
            value: value.to_string(),
            origin,
        });
    }
    Ok(out)
}

/// The `FLEET_*` variables of `vars` as settings; unknown ones are returned
/// apart (the caller warns: other tools use the prefix too).
pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> (Vec<Setting>, Vec<String>) {
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix("FLEET_") else {
            continue;
        };
        let key = rest.to_ascii_lowercase();
        if OPTIONS.iter().any(|(k, _, _)| *k == key) {
            known.push(Setting {
                key,
                value,
                origin: Origin::Env(var),
            });
        } else {
            unknown.push(var);
        }
    }
    known.sort_by(|a, b| a.key.cmp(&b.key));
    (known, unknown)
}

impl Settings {
    /// Applies settings in order (later ones override earlier ones).
    pub fn apply(mut self, settings: &[Setting]) -> Result<Settings, ConfigError> {
        for s in settings {
            self.set(s)?;
        }
        Ok(self)
    }

    fn set(&mut self, s: &Setting) -> Result<(), ConfigError> {
        // dashes and underscores alike, as coreos-cloudinit took them
        let key = s.key.replace('-', "_");
        let bad = |why: String| ConfigError::Value {
            origin: s.origin.clone(),
            key: s.key.clone(),
            why,
        };
        let Some(&(_, kind, usage)) = OPTIONS.iter().find(|(k, _, _)| *k == key) else {
            let hint = OPTIONS
                .iter()
                .map(|(k, _, _)| (strsim::jaro_winkler(k, &key), k))
                .filter(|(score, _)| *score > 0.85)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| format!(" (did you mean {k:?}?)"))
                .unwrap_or_default();
            return Err(ConfigError::Unknown {
                origin: s.origin.clone(),
                key: s.key.clone(),
                hint,
            });
        };
        let v = s.value.trim();
        // check the value's type first, whatever is done with it
        match kind {
            Kind::Int => {
                v.parse::<i64>()
                    .map_err(|_| bad(format!("expected a whole number, got {v:?}")))?;
            }
            Kind::Float => {
                let f = v
                    .parse::<f64>()
                    .map_err(|_| bad(format!("expected a number of seconds, got {v:?}")))?;
                if !f.is_finite() || f <= 0.0 || f > 86_400.0 {
                    return Err(bad(format!(
                        "expected a number of seconds above 0 and at most 86400, got {v:?}"
                    )));
                }
            }
            Kind::Bool => {
                parse_bool(v).ok_or_else(|| bad(format!("expected true or false, got {v:?}")))?;
            }
            Kind::Duration => {
                parse_go_duration(v).map_err(bad)?;
            }
            Kind::Str => {}
        }
        match usage {
            Use::Ignored => {
                self.ignored.push((key, s.origin.clone()));
                return Ok(());
            }
            Use::Auth if v.is_empty() => return Ok(()),
            Use::Auth => {
                return Err(bad(
                    "etcd user authentication is not supported by cairn's fleetd".into(),
                ))
            }
            Use::Used => {}
        }
        match key.as_str() {
            "verbosity" => {
                let n: i64 = v.parse().expect("checked");
                if !(0..=2).contains(&n) {
                    return Err(bad(format!("expected 0, 1 or 2, got {v:?}")));
                }
                self.verbosity = n as u8;
            }
            "etcd_servers" => {
                let servers: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().trim_end_matches('/').to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if servers.is_empty() {
                    return Err(bad(
                        "expected one or more http:// URLs, comma-separated".into()
                    ));
                }
                for u in &servers {
                    let rest = u
                        .strip_prefix("http://")
                        .or_else(|| u.strip_prefix("https://"));
                    if rest.is_none_or(str::is_empty) {
                        return Err(bad(format!(
                            "{u:?} is not an http://HOST:PORT or https://HOST:PORT URL"
                        )));
                    }
                }
                self.etcd_servers = servers;
            }
            "etcd_key_prefix" => {
                let p = if v.ends_with('/') {
                    v.to_string()
                } else {
                    format!("{v}/")
                };
                self.keys = Keys::new(&p).map_err(|e| bad(e.to_string()))?;
            }
            "etcd_request_timeout" => {
                self.etcd_request_timeout = Duration::from_secs_f64(v.parse().expect("checked"));
            }
            "engine_reconcile_interval" => {
                self.engine_reconcile_interval =
                    Duration::from_secs_f64(v.parse().expect("checked"));
            }
            "public_ip" => {
                if v.is_empty() {
                    self.public_ip = None;
                } else {
                    v.parse::<std::net::IpAddr>()
                        .map_err(|_| bad(format!("expected an IP address, got {v:?}")))?;
                    self.public_ip = Some(v.to_string());
                }
            }
            "metadata" => {
                self.metadata = parse_metadata(v).map_err(|e| bad(e.to_string()))?;
            }
            "agent_ttl" => {
                let d = parse_go_duration(v).map_err(bad)?;
                if d < Duration::from_secs(2) || d > Duration::from_secs(3600) {
                    return Err(bad(format!("expected a duration from 2s to 1h, got {v:?}")));
                }
                self.agent_ttl = d;
            }
            "disable_engine" => self.disable_engine = parse_bool(v).expect("checked"),
            "machine_id" => {
                if v.is_empty() {
                    self.machine_id = None;
                } else {
                    check_machine_id(v).map_err(|e| bad(e.to_string()))?;
                    self.machine_id = Some(v.to_string());
                }
            }
            "systemd" => self.systemd = v.parse().map_err(bad)?,
            "etcd_cafile" | "etcd_certfile" | "etcd_keyfile" => {
                let path = if v.is_empty() {
                    None
                } else if v.starts_with('/') {
                    Some(PathBuf::from(v))
                } else {
                    return Err(bad(format!("expected an absolute path, got {v:?}")));
                };
                match key.as_str() {
                    "etcd_cafile" => self.etcd_cafile = path,
                    "etcd_certfile" => self.etcd_certfile = path,
                    _ => self.etcd_keyfile = path,
                }
            }
            "sim_agents" => {
                let n: i64 = v.parse().expect("checked");
                if !(1..=10_000).contains(&n) {
                    return Err(bad(format!("expected 1 to 10000, got {v:?}")));
                }
                self.sim_agents = n as usize;
            }
            "units_dir" => {
                if !v.starts_with('/') {
                    return Err(bad(format!("expected an absolute path, got {v:?}")));
                }
                self.units_dir = PathBuf::from(v);
            }
            other => unreachable!("option {other} is in OPTIONS but not set"),
        }
        Ok(())
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    // Go's strconv.ParseBool, which fleet's flags used
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A duration as Go's `time.ParseDuration` reads it (`30s`, `1m30s`,
/// `1.5h`, `500ms`), without a sign.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("expected a duration such as 30s, 1m30s or 500ms, got {s:?}");
    if s.is_empty() {
        return Err(err());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if n_end == 0 {
            return Err(err());
        }
        let n: f64 = rest[..n_end].parse().map_err(|_| err())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += n * unit;
        rest = &rest[u_end..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

/// The default key prefix, for `--help`.
pub fn default_prefix() -> &'static str {
    DEFAULT_PREFIX
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<Settings, ConfigError> {
        Settings::default().apply(&parse_file(Path::new("/etc/fleet/fleet.conf"), text)?)
    }

    #[test]
    fn fleet_conf_sample_reads() {
        let s = file(
            "# fleet.conf\n\
             verbosity=1\n\
             etcd_servers=\"http://10.0.0.1:2379,http://10.0.0.2:2379/\"\n\
             public_ip=\"192.0.2.7\"\n\
             metadata=\"region=us-west,az=us-west-1\"\n\
             agent_ttl=\"1m30s\"\n\
             engine_reconcile_interval=0.5\n\
             etcd_key_prefix=/x/fleet\n\
             ; a comment\n\
             token_limit=50\n\
             disable_engine=true\n",
        )
        .unwrap();
        assert_eq!(s.verbosity, 1);
        assert_eq!(
            s.etcd_servers,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(s.public_ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(s.metadata.get("az").map(String::as_str), Some("us-west-1"));
        assert_eq!(s.agent_ttl, Duration::from_secs(90));
        assert_eq!(s.engine_reconcile_interval, Duration::from_millis(500));
        assert_eq!(s.keys.prefix(), "/x/fleet/");
        assert!(s.disable_engine);
        assert_eq!(s.ignored.len(), 1);
        assert_eq!(s.ignored[0].0, "token_limit");
        assert_eq!(s.ignored[0].1.to_string(), "/etc/fleet/fleet.conf:10");
    }

    #[test]
    fn errors_name_the_place_the_key_and_what_was_expected() {
        let cases = [
            ("verbosity=loud\n", "/etc/fleet/fleet.conf:1: verbosity: expected a whole number, got \"loud\""),
            ("\n\nagent_ttl=30\n", "/etc/fleet/fleet.conf:3: agent_ttl: expected a duration such as 30s, 1m30s or 500ms, got \"30\""),
            ("agent_ttl=1s\n", "/etc/fleet/fleet.conf:1: agent_ttl: expected a duration from 2s to 1h, got \"1s\""),
            ("metadata=role\n", "/etc/fleet/fleet.conf:1: metadata: metadata \"role\" is not key=value"),
            ("public_ip=somewhere\n", "/etc/fleet/fleet.conf:1: public_ip: expected an IP address, got \"somewhere\""),
            ("etcd_servers=ftp://x\n", "/etc/fleet/fleet.conf:1: etcd_servers: \"ftp://x\" is not an http://HOST:PORT or https://HOST:PORT URL"),
            ("etcd_cafile=ca.pem\n", "/etc/fleet/fleet.conf:1: etcd_cafile: expected an absolute path, got \"ca.pem\""),
            ("sim_agents=0\n", "/etc/fleet/fleet.conf:1: sim_agents: expected 1 to 10000, got \"0\""),
            ("engine_reconcile_interval=0\n", "/etc/fleet/fleet.conf:1: engine_reconcile_interval: expected a number of seconds above 0 and at most 86400, got \"0\""),
            ("disable_engine=yes\n", "/etc/fleet/fleet.conf:1: disable_engine: expected true or false, got \"yes\""),
            ("agent_tl=30s\n", "/etc/fleet/fleet.conf:1: unknown option \"agent_tl\" (did you mean \"agent_ttl\"?)"),
            ("[global]\n", "/etc/fleet/fleet.conf:1: [global]: expected options at the top level, not in an INI section"),
            ("metadata\n", "/etc/fleet/fleet.conf:1: metadata: expected key=value"),
            ("metadata=\"a=b\n", "/etc/fleet/fleet.conf:1: metadata: a quoted value without its closing quote"),
            ("machine_id=../etc\n", "/etc/fleet/fleet.conf:1: machine_id: machine ID \"../etc\": expected 1 to 64 characters of A-Z a-z 0-9 - _ ."),
            ("systemd=upstart\n", "/etc/fleet/fleet.conf:1: systemd: unknown systemd mode \"upstart\" (valid: dbus, sim)"),
        ];
        for (text, want) in cases {
            assert_eq!(file(text).unwrap_err().to_string(), want, "{text:?}");
        }
        let e = file("etcd_password=secret\n").unwrap_err().to_string();
        assert!(
            e.contains("etcd user authentication is not supported"),
            "{e}"
        );
        let s =
            file("etcd_servers=https://10.0.0.1:2379\netcd_cafile=/etc/ssl/etcd/ca.pem\n").unwrap();
        assert_eq!(
            s.etcd_cafile.as_deref(),
            Some(Path::new("/etc/ssl/etcd/ca.pem"))
        );
        assert_eq!(s.etcd_servers, ["https://10.0.0.1:2379"]);
        // empty TLS settings (coreos-cloudinit wrote them empty) are fine
        file("etcd_cafile=\"\"\netcd_password=\n").unwrap();
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let f = parse_file(Path::new("f.conf"), "metadata=role=db\nagent_ttl=10s\n").unwrap();
        let (env, unknown) = from_env([
            ("FLEET_METADATA".to_string(), "role=web".to_string()),
            ("FLEET_ENGINE_RECONCILE_INTERVAL".into(), "3".into()),
            ("FLEET_COLOUR".into(), "blue".into()),
            ("PATH".into(), "/bin".into()),
        ]);
        assert_eq!(unknown, ["FLEET_COLOUR"]);
        let flags = [Setting {
            key: "engine-reconcile-interval".into(),
            value: "4".into(),
            origin: Origin::Flag("engine-reconcile-interval"),
        }];
        let s = Settings::default()
            .apply(&f)
            .unwrap()
            .apply(&env)
            .unwrap()
            .apply(&flags)
            .unwrap();
        assert_eq!(s.metadata.get("role").map(String::as_str), Some("web"));
        assert_eq!(s.agent_ttl, Duration::from_secs(10));
        assert_eq!(s.engine_reconcile_interval, Duration::from_secs(4));
        let (env, _) = from_env([("FLEET_AGENT_TTL".to_string(), "soon".to_string())]);
        assert_eq!(
            Settings::default().apply(&env).unwrap_err().to_string(),
            "environment variable FLEET_AGENT_TTL: agent_ttl: expected a duration such as 30s, 1m30s or 500ms, got \"soon\""
        );
    }

    #[test]
    fn go_durations() {
        for (s, ms) in [
            ("30s", 30_000),
            ("1m30s", 90_000),
            ("1.5h", 5_400_000),
            ("500ms", 500),
            ("0", 0),
            ("2m", 120_000),
        ] {
            assert_eq!(
                parse_go_duration(s).unwrap(),
                Duration::from_millis(ms),
                "{s}"
            );
        }
        for s in ["", "30", "s", "-1s", "1d", "1.2.3s", "1e400h"] {
            assert!(parse_go_duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn files_are_bounded_and_optional() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_file(&dir.path().join("none.conf"), false)
            .unwrap()
            .is_empty());
        let e = read_file(&dir.path().join("none.conf"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.conf: No such file"), "{e}");
        let big = dir.path().join("big.conf");
        std::fs::write(&big, "#".repeat(70_000)).unwrap();
        let e = read_file(&big, false).unwrap_err().to_string();
        assert!(
            e.ends_with("70000 bytes, more than the 65536 a config file may have"),
            "{e}"
        );
        let e = read_file(dir.path(), false).unwrap_err().to_string();
        assert!(e.ends_with("not a regular file"), "{e}");
    }
}
