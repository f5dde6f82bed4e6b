//! The health gate `cairn-update health` runs before `boot-complete.target`:
//! no failed units, etcd and Docker answering when enabled, and the root
//! that runs is the slot the booted entry names (systemd-boot's
//! `LoaderEntrySelected` EFI variable against `cairn.slot=`). The verdict
//! moves a trial to committed (pass) or records why it failed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::entries::{self, EntryName};
use crate::error::{Result, UpdateError};
use crate::slot::{self, Slot};

/// systemd-boot's vendor GUID for its EFI variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// How a failed-units finding starts. Such a finding is final: a failed
/// unit stays failed until someone starts it again, so the gate does not
/// wait for it to change (as systemd's own systemd-boot-check-no-failures
/// does not); etcd or Docker still starting are retried.
pub const FAILED_UNITS: &str = "failed units: ";

/// Whether `problem` will not go away by waiting.
pub fn is_final(problem: &str) -> bool {
    problem.starts_with(FAILED_UNITS)
}

/// What the gate checks and against what.
#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// `systemctl` (tests may point elsewhere).
    pub systemctl: String,
    pub etcd_url: String,
    pub docker_socket: std::path::PathBuf,
    /// Units whose failure the gate ignores (itself).
    pub ignore_units: Vec<String>,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            systemctl: "systemctl".into(),
            etcd_url: "http://127.0.0.1:2379".into(),
            docker_socket: "/run/docker.sock".into(),
            ignore_units: vec!["cairn-health.service".into()],
        }
    }
}

/// Decodes an EFI string variable as efivarfs shows it: 4 bytes of
/// attributes, then UTF-16LE up to a NUL.
pub fn parse_efi_string(raw: &[u8]) -> Option<String> {
    let data = raw.get(4..)?;
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// The id of the entry systemd-boot booted, if the firmware says.
pub fn selected_entry(efivars: &Path) -> Option<String> {
    let p = efivars.join(format!("LoaderEntrySelected-{LOADER_GUID}"));
    std::fs::read(p).ok().and_then(|b| parse_efi_string(&b))
}

/// Whether entry id `id` (as systemd-boot reports it: with or without
/// `.conf`, with or without the counter) names the file `name`.
pub fn id_matches(id: &str, name: &EntryName) -> bool {
    let id = id.to_ascii_lowercase();
    let with_conf = if id.ends_with(".conf") {
        id
    } else {
        format!("{id}.conf")
    };
    EntryName::parse(&with_conf).is_some_and(|n| n.stem.eq_ignore_ascii_case(&name.stem))
}

/// The slot the booted entry names, and that entry's file name.
pub fn booted_entry_slot(efivars: &Path, esp: &Path) -> Result<Option<(String, Option<Slot>)>> {
    let Some(id) = selected_entry(efivars) else {
        return Ok(None);
    };
    let found = entries::list(esp)?
        .into_iter()
        .find(|e| id_matches(&id, &e.name));
    Ok(Some(match found {
        Some(e) => (e.file_name(), e.slot()),
        None => (id, None),
    }))
}

/// Problems with the slot: the command line's slot against the entry's.
pub fn check_slot(cmdline: &Path, efivars: &Path, esp: &Path) -> Result<Vec<String>> {
    let running = slot::running_slot(cmdline)?;
    Ok(match booted_entry_slot(efivars, esp)? {
        None => {
            tracing::info!("no LoaderEntrySelected EFI variable: cannot compare the booted entry with cairn.slot={running}");
            vec![]
        }
        Some((id, None)) => vec![format!(
            "the booted entry {id} is not on the ESP or names no cairn.slot"
        )],
        Some((id, Some(s))) if s != running => vec![format!(
            "the booted entry {id} says slot {s}, but the root is slot {running}"
        )],
        Some(_) => vec![],
    })
}

/// Failed units (`systemctl list-units --failed`), minus the ignored ones.
pub fn failed_units(o: &HealthOptions) -> Result<Vec<String>> {
    let out = Command::new(&o.systemctl)
        .args(["list-units", "--failed", "--no-legend", "--plain", "--full"])
        .output()
        .map_err(|e| UpdateError::Refused(format!("running {} list-units: {e}", o.systemctl)))?;
    if !out.status.success() {
        return Err(UpdateError::Refused(format!(
            "{} list-units --failed: {}",
            o.systemctl,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_failed_units(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|u| !o.ignore_units.contains(u))
        .collect())
}

/// The unit names of `systemctl list-units --failed --no-legend --plain`.
pub fn parse_failed_units(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.chars().any(|c| c.is_ascii_alphanumeric()))
        })
        .map(str::to_string)
        .collect()
}

/// Whether `unit` is enabled (`systemctl is-enabled`).
pub fn unit_enabled(o: &HealthOptions, unit: &str) -> bool {
    Command::new(&o.systemctl)
        .args(["is-enabled", unit])
        .output()
        .map(|out| {
            matches!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "enabled" | "enabled-runtime" | "static" | "alias"
            ) && out.status.success()
        })
        .unwrap_or(false)
}

/// etcd's `/health` says `"health":"true"`.
pub fn etcd_healthy(url: &str) -> std::result::Result<(), String> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    let u = format!("{}/health", url.trim_end_matches('/'));
    let resp = agent.get(&u).call().map_err(|e| format!("{u}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| format!("{u}: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|_| format!("{u}: HTTP {status}, not JSON: {body:.80}"))?;
    match v.get("health").and_then(|h| h.as_str()) {
        Some("true") if status == 200 => Ok(()),
        _ => Err(format!("{u}: HTTP {status}: {}", body.trim())),
    }
}

/// Docker's API answers `GET /_ping` with `OK` on its socket.
pub fn docker_healthy(socket: &Path) -> std::result::Result<(), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut resp = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut resp)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let text = String::from_utf8_lossy(&resp);
    let status_ok = text
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    if status_ok && body == "OK" {
        Ok(())
    } else {
        Err(format!(
            "{}: /_ping answered {:?}",
            socket.display(),
            text.lines().next().unwrap_or("")
        ))
    }
}

/// Every check once; the problems found (empty = healthy).
pub fn check_once(
    o: &HealthOptions,
    cmdline: &Path,
    efivars: &Path,
    esp: &Path,
) -> Result<Vec<String>> {
    let mut problems = check_services(o)?;
    problems.extend(check_slot(cmdline, efivars, esp)?);
    Ok(problems)
}

/// The checks that do not depend on slots (all a diskless machine has):
/// failed units, etcd and Docker when enabled.
pub fn check_services(o: &HealthOptions) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let failed = failed_units(o)?;
    if !failed.is_empty() {
        problems.push(format!("{FAILED_UNITS}{}", failed.join(", ")));
    }
    if unit_enabled(o, "etcd.service") {
        if let Err(e) = etcd_healthy(&o.etcd_url) {
            problems.push(format!("etcd is enabled but not healthy: {e}"));
        }
    }
    if unit_enabled(o, "docker.service") || unit_enabled(o, "docker.socket") {
        if let Err(e) = docker_healthy(&o.docker_socket) {
            problems.push(format!("docker is enabled but not answering: {e}"));
        }
    }
    Ok(problems)
}

/// Runs `check` until it finds no problem or a final one, or `timeout` is
/// up, every `every`: the last problems found (none: healthy). A check
/// that cannot even run is a problem.
pub fn retry(
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut check: impl FnMut() -> Result<Vec<String>>,
) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let problems = check().unwrap_or_else(|e| vec![format!("running the health checks: {e}")]);
        if problems.is_empty() || start.elapsed() >= timeout || problems.iter().any(|p| is_final(p))
        {
            return problems;
        }
        tracing::info!("not healthy yet ({}); retrying", problems.join("; "));
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::net::TcpListener;
    use std::os::unix::net::UnixListener;

    fn efi_var(s: &str) -> Vec<u8> {
        let mut v = vec![6, 0, 0, 0];
        for u in s.encode_utf16().chain([0]) {
            v.extend_from_slice(&u.to_le_bytes());
        }
        v
    }

    #[test]
    fn efi_strings_and_entry_ids() {
        assert_eq!(
            parse_efi_string(&efi_var("cairn-2+3.conf")).unwrap(),
            "cairn-2+3.conf"
        );
        assert_eq!(parse_efi_string(&[6, 0]), None);
        let n = EntryName::parse("cairn-2+2-1.conf").unwrap();
        for id in [
            "cairn-2+3.conf",
            "cairn-2.conf",
            "cairn-2",
            "CAIRN-2+2-1.conf",
        ] {
            assert!(id_matches(id, &n), "{id}");
        }
        assert!(!id_matches("cairn-20.conf", &n));
        assert!(!id_matches("cairn-1.conf", &n));
    }

    #[test]
    fn slot_against_booted_entry() {
        let t = tempfile::tempdir().unwrap();
        let esp = t.path().join("esp");
        let vars = t.path().join("efivars");
        fs::create_dir_all(esp.join("loader/entries")).unwrap();
        fs::create_dir_all(&vars).unwrap();
        fs::write(
            esp.join("loader/entries/cairn-1.conf"),
            "options cairn.slot=a\n",
        )
        .unwrap();
        fs::write(
            esp.join("loader/entries/cairn-2+2-1.conf"),
            "options cairn.slot=b\n",
        )
        .unwrap();
        let cmdline = t.path().join("cmdline");
        fs::write(&cmdline, "cairn.slot=b console=ttyS0\n").unwrap();
        // no variable (BIOS, or not systemd-boot): nothing to compare
        assert!(check_slot(&cmdline, &vars, &esp).unwrap().is_empty());
        let var = vars.join(format!("LoaderEntrySelected-{LOADER_GUID}"));
        fs::write(&var, efi_var("cairn-2+3.conf")).unwrap();
        assert!(check_slot(&cmdline, &vars, &esp).unwrap().is_empty());
        fs::write(&var, efi_var("cairn-1.conf")).unwrap();
        let p = check_slot(&cmdline, &vars, &esp).unwrap();
        assert_eq!(
            p,
            ["the booted entry cairn-1.conf says slot a, but the root is slot b"]
        );
        fs::write(&var, efi_var("other.conf")).unwrap();
        let p = check_slot(&cmdline, &vars, &esp).unwrap();
        assert!(p[0].contains("not on the ESP"), "{p:?}");
    }

    #[test]
    fn failed_unit_lines() {
        let text = "etcd.service loaded failed failed etcd key-value store\n\u{25cf} docker.service loaded failed failed Docker\n";
        assert_eq!(parse_failed_units(text), ["etcd.service", "docker.service"]);
        assert!(parse_failed_units("").is_empty());
    }

    #[test]
    fn failed_units_are_final_and_unhealthy_daemons_are_not() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        // a systemctl that reports one failed unit and etcd enabled
        let sc = t.path().join("systemctl");
        fs::write(
            &sc,
            "#!/bin/sh\ncase \"$1\" in\n list-units) echo 'broken.service loaded failed failed Broken';;\n \
             is-enabled) [ \"$2\" = etcd.service ] && { echo enabled; exit 0; }; echo disabled; exit 1;;\nesac\n",
        )
        .unwrap();
        fs::set_permissions(&sc, fs::Permissions::from_mode(0o755)).unwrap();
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let etcd_url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let o = HealthOptions {
            systemctl: sc.display().to_string(),
            etcd_url,
            docker_socket: t.path().join("docker.sock"),
            ignore_units: vec![],
        };
        let cmdline = t.path().join("cmdline");
        fs::write(&cmdline, "cairn.slot=a\n").unwrap();
        let p = check_once(&o, &cmdline, &t.path().join("vars"), t.path()).unwrap();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0], "failed units: broken.service");
        assert!(is_final(&p[0]));
        assert!(p[1].starts_with("etcd is enabled but not healthy"), "{p:?}");
        assert!(!is_final(&p[1]));
    }

    fn serve_once(l: TcpListener, response: &'static str) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            s.write_all(response.as_bytes()).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    }

    #[test]
    fn etcd_health_over_http() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = serve_once(
            l,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"health\":\"true\",\"reason\":\"\"}    ",
        );
        etcd_healthy(&url).unwrap();
        assert!(h.join().unwrap().starts_with("GET /health "));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = serve_once(
            l,
            "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}  ",
        );
        let e = etcd_healthy(&url).unwrap_err();
        assert!(e.contains("503") && e.contains("NO LEADER"), "{e}");
        h.join().unwrap();
        // nothing listening
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        assert!(etcd_healthy(&url).is_err());
    }

    #[test]
    fn docker_ping_over_unix_socket() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("docker.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let h = std::thread::spawn(move || {
            for reply in [
                "HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK",
                "HTTP/1.0 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail",
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"GET /_ping "));
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        docker_healthy(&sock).unwrap();
        let e = docker_healthy(&sock).unwrap_err();
        assert!(e.contains("500"), "{e}");
        h.join().unwrap();
        assert!(docker_healthy(&t.path().join("none.sock")).is_err());
    }
}
