//! What a machine tells `cairn serve` about its life: the JSON body of
//! `POST /lifecycle/v1/report`, sent by the installer (install started,
//! finished, refused, failed) and by `cairn-update` (booted, healthy,
//! unhealthy, rolled back), read by the server's lifecycle state
//! (`cairn-lifecycle`). One format, shared by the senders and the server.
//!
//! A report is small and checked before anything else looks at it: at most
//! [`MAX_REPORT_BYTES`], no unknown fields, a MAC address, an optional
//! 32-hex machine id, versions and image names in the characters the
//! builder allows, reasons at most [`MAX_REASON`] bytes with control
//! characters replaced (they end up in logs and on the status page).

use serde::{Deserialize, Serialize};

/// Where reports are posted on `cairn serve`.
pub const REPORT_PATH: &str = "/lifecycle/v1/report";
/// The largest report body the server reads.
pub const MAX_REPORT_BYTES: usize = 8 * 1024;
/// The longest reason, disk name or image name kept (bytes).
pub const MAX_REASON: usize = 1024;
/// The longest version kept (bytes).
pub const MAX_VERSION: usize = 128;

/// Where a machine's root came from on this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootSource {
    /// Slot A of its disk.
    A,
    /// Slot B of its disk.
    B,
    /// The network (diskless: the root image in RAM).
    Ram,
}

impl BootSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BootSource::A => "a",
            BootSource::B => "b",
            BootSource::Ram => "ram",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Event {
    /// The installer chose `disk` and starts writing it.
    InstallStarted { disk: String },
    /// The installer wrote `image` `version` to `disk` and will reboot.
    InstallFinished {
        disk: String,
        image: String,
        version: String,
    },
    /// The installer would not write: no disk fits the profile's rule, or
    /// the chosen disk holds data and the profile does not allow that.
    InstallRefused {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk: Option<String>,
        reason: String,
    },
    /// The install started and did not complete.
    InstallFailed { reason: String },
    /// The machine came up running `image` `version` from `source`.
    Booted {
        image: String,
        version: String,
        source: BootSource,
    },
    /// The health gate passed for `version` on this boot.
    Healthy { version: String },
    /// The health gate failed for `version`; the machine goes back to its
    /// previous version (disk: the other slot; diskless: the server's
    /// previous image on the next boot).
    Unhealthy { version: String, reason: String },
    /// The machine tried `version` and is back on `to_version`.
    RolledBack {
        version: String,
        to_version: String,
        reason: String,
    },
}

/// One report: on the wire one flat JSON object, `mac`, optional
/// `machine_id` and the event's fields with its name under `event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The MAC address the machine netboots with (lower case, colons).
    pub mac: String,
    /// `/etc/machine-id`, when the machine has one yet.
    pub machine_id: Option<String>,
    pub event: Event,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report: {0} bytes, more than the {MAX_REPORT_BYTES} allowed")]
    TooLarge(usize),
    #[error("report: not a lifecycle report: {0}")]
    Json(String),
    #[error("report: {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> ReportError {
    ReportError::Field {
        field,
        message: message.into(),
    }
}

/// A MAC address in lower case with colons, from `aa:bb:..` or
/// `aa-bb-..` in either case; `None` for anything else.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

fn check_version(name: &'static str, v: &str) -> Result<(), ReportError> {
    if v.is_empty() || v.len() > MAX_VERSION {
        return Err(field(
            name,
            format!("expected 1 to {MAX_VERSION} characters"),
        ));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
    {
        return Err(field(
            name,
            format!("{v:?}: expected letters, digits and . _ + ~ -"),
        ));
    }
    Ok(())
}

/// Cuts `s` to [`MAX_REASON`] bytes (on a character boundary) and replaces
/// control characters with spaces.
fn clean_text(s: &mut String) {
    if s.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    if s.chars().any(char::is_control) {
        *s = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
    }
}

impl Report {
    /// Reads and checks a report body; text fields are cut and cleaned,
    /// the MAC normalised.
    pub fn parse(body: &[u8]) -> Result<Report, ReportError> {
        if body.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge(body.len()));
        }
        let json = |e: serde_json::Error| ReportError::Json(e.to_string());
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(json)?;
        let text =
            |map: &mut serde_json::Map<String, serde_json::Value>, key: &'static str| match map
                .remove(key)
            {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(field(key, "expected a string")),
            };
        let mac = text(&mut map, "mac")?.ok_or_else(|| field("mac", "missing"))?;
        let machine_id = text(&mut map, "machine_id")?;
        let event: Event = serde_json::from_value(serde_json::Value::Object(map)).map_err(json)?;
        let mut r = Report {
            mac,
            machine_id,
            event,
        };
        r.mac = normalize_mac(&r.mac).ok_or_else(|| {
            field(
                "mac",
                format!(
                    "{:?}: expected six hex pairs such as 52:54:00:12:34:56",
                    r.mac
                ),
            )
        })?;
        if let Some(id) = &r.machine_id {
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(field(
                    "machine_id",
                    "expected 32 hex digits (/etc/machine-id)",
                ));
            }
            r.machine_id = Some(id.to_ascii_lowercase());
        }
        match &mut r.event {
            Event::InstallStarted { disk } => clean_text(disk),
            Event::InstallFinished {
                disk,
                image,
                version,
            } => {
                clean_text(disk);
                check_version("image", image)?;
                check_version("version", version)?;
            }
            Event::InstallRefused { disk, reason } => {
                if let Some(d) = disk {
                    clean_text(d);
                }
                clean_text(reason);
            }
            Event::InstallFailed { reason } => clean_text(reason),
            Event::Booted { image, version, .. } => {
                check_version("image", image)?;
                check_version("version", version)?;
            }
            Event::Healthy { version } => check_version("version", version)?,
            Event::Unhealthy { version, reason } => {
                check_version("version", version)?;
                clean_text(reason);
            }
            Event::RolledBack {
                version,
                to_version,
                reason,
            } => {
                check_version("version", version)?;
                check_version("to_version", to_version)?;
                clean_text(reason);
            }
        }
        Ok(r)
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(&self.event).expect("an event serialises");
        let map = v.as_object_mut().expect("an event is an object");
        map.insert("mac".into(), self.mac.clone().into());
        if let Some(id) = &self.machine_id {
            map.insert("machine_id".into(), id.clone().into());
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wire_form() {
        let r = Report {
            mac: "52:54:00:00:0a:01".into(),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            event: Event::InstallFinished {
                disk: "/dev/vda".into(),
                image: "cairn-test".into(),
                version: "1.0.0".into(),
            },
        };
        let j = r.to_json();
        assert_eq!(
            j,
            r#"{"disk":"/dev/vda","event":"install-finished","image":"cairn-test","mac":"52:54:00:00:0a:01","machine_id":"0123456789abcdef0123456789abcdef","version":"1.0.0"}"#
        );
        assert_eq!(Report::parse(j.as_bytes()).unwrap(), r);
        let b = Report::parse(
            br#"{"mac":"52-54-00-00-0A-01","event":"booted","image":"x","version":"2.0.0","source":"ram"}"#,
        )
        .unwrap();
        assert_eq!(b.mac, "52:54:00:00:0a:01");
        assert_eq!(
            b.event,
            Event::Booted {
                image: "x".into(),
                version: "2.0.0".into(),
                source: BootSource::Ram
            }
        );
    }

    #[test]
    fn hostile_reports_are_refused_or_cleaned() {
        let big = format!(
            r#"{{"mac":"52:54:00:00:0a:01","event":"install-failed","reason":"{}"}}"#,
            "x".repeat(MAX_REPORT_BYTES)
        );
        assert!(matches!(
            Report::parse(big.as_bytes()),
            Err(ReportError::TooLarge(_))
        ));
        for (body, what) in [
            (
                r#"{"mac":"52:54:00:00:0a","event":"healthy","version":"1"}"#,
                "mac",
            ),
            (
                r#"{"mac":"52:54:00:00:0a:zz","event":"healthy","version":"1"}"#,
                "mac",
            ),
            (
                r#"{"mac":"52:54:00:00:0a:01","event":"healthy","version":"1/../x"}"#,
                "version",
            ),
            (
                r#"{"mac":"52:54:00:00:0a:01","event":"healthy","version":""}"#,
                "version",
            ),
            (
                r#"{"mac":"52:54:00:00:0a:01","machine_id":"abc","event":"healthy","version":"1"}"#,
                "machine_id",
            ),
            (
                r#"{"mac":"52:54:00:00:0a:01","event":"healthy","version":"1","extra":1}"#,
                "unknown field",
            ),
            (
                r#"{"mac":"52:54:00:00:0a:01","event":"reboot-me"}"#,
                "unknown variant",
            ),
            (
                r#"{"mac":"52:54:00:00:0a:01","event":"booted","image":"x","version":"1","source":"c"}"#,
                "unknown variant",
            ),
            ("[]", "report"),
            (r#"{"event":"healthy","version":"1"}"#, "mac: missing"),
            (
                r#"{"mac":7,"event":"healthy","version":"1"}"#,
                "mac: expected a string",
            ),
        ] {
            let e = Report::parse(body.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(what), "{body}: {e}");
        }
        let long = format!(
            r#"{{"mac":"52:54:00:00:0a:01","event":"install-refused","reason":"{}\u001b[2J\n"}}"#,
            "é".repeat(600)
        );
        let r = Report::parse(long.as_bytes()).unwrap();
        let Event::InstallRefused { reason, disk } = r.event else {
            panic!()
        };
        assert!(disk.is_none());
        assert!(reason.len() <= MAX_REASON && !reason.chars().any(char::is_control));
    }

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("AA-bb-CC-00-11-22").as_deref(),
            Some("aa:bb:cc:00:11:22")
        );
        assert_eq!(normalize_mac("aabbcc001122"), None);
        assert_eq!(normalize_mac("aa:bb:cc:00:11:22:33"), None);
        assert_eq!(normalize_mac("aa:bb:cc:00:11:2"), None);
    }
}
