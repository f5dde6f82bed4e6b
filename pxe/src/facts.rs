//! What a machine says about itself in a request (MAC, UUID, hostname, serial, labels), normalised for matching.

use std::collections::BTreeMap;
use std::fmt;

/// A normalised MAC address (`52:54:00:12:34:56`, lower case).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(String);

impl Mac {
    /// Accepts `52:54:00:12:34:56`, `52-54-00-12-34-56`, `525400123456`, any case.
    pub fn parse(s: &str) -> Option<Mac> {
        let s = s.trim();
        let hex: String = if s.contains(':') || s.contains('-') {
            let parts: Vec<&str> = s.split([':', '-']).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return None;
            }
            parts.concat()
        } else {
            s.to_string()
        };
        if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let hex = hex.to_ascii_lowercase();
        let pairs: Vec<&str> = (0..6).map(|i| &hex[2 * i..2 * i + 2]).collect();
        Some(Mac(pairs.join(":")))
    }

    /// `52:54:00:12:34:56`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalises a selector or query value for comparison: MACs as [`Mac`], UUIDs lower case, others as given.
pub fn normalise(key: &str, value: &str) -> Result<String, String> {
    match key {
        "mac" => Mac::parse(value).map(|m| m.0).ok_or_else(|| {
            format!("{value:?} is not a MAC address: expected six hex pairs like 52:54:00:12:34:56")
        }),
        "uuid" => Ok(value.trim().to_ascii_lowercase()),
        _ => Ok(value.to_string()),
    }
}

/// The facts of one request: the query parameters iPXE (or the machine's agent) sent, normalised.
/// Empty values (iPXE sends `hostname=` when it has none) count as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Every non-empty query parameter (`mac` and `uuid` normalised). A MAC that does not parse is dropped
    /// and recorded in `bad_mac`.
    pub labels: BTreeMap<String, String>,
    /// The raw query string, for templates (`request.raw_query`).
    pub raw_query: String,
    /// A `mac=` value that was not a MAC address.
    pub bad_mac: Option<String>,
    /// Other parameters dropped at the boundary (name or value outside its charset), by name; never
    /// reach a template, a selector or the status table.
    pub rejected: BTreeMap<String, String>,
}

/// True when `value` reads the same wherever a template puts it in a YAML document: as a plain
/// scalar, inside a single- or double-quoted one, or in a block scalar. Letters, digits, inner
/// spaces and `_ . / @ + = : - % & ? ~`, starting with a letter, digit or one of `_ . / + -`, with
/// no `: ` and no trailing `:`. So no newline (a new key), no `#` (a comment), no quote or
/// backslash (the end of a quoted scalar), no `[ ] { } ,` (a flow collection), and none of YAML's
/// indicators (`& * ! | > % @`) where they would count, at the start.
pub fn yaml_plain(value: &str) -> bool {
    let Some(first) = value.bytes().next() else {
        return false;
    };
    (first.is_ascii_alphanumeric() || matches!(first, b'_' | b'.' | b'/' | b'+' | b'-'))
        && value.trim_end() == value
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b' ' | b'_'
                        | b'.'
                        | b'/'
                        | b'@'
                        | b'+'
                        | b'='
                        | b':'
                        | b'-'
                        | b'%'
                        | b'&'
                        | b'?'
                        | b'~'
                )
        })
        && !value.contains(": ")
        && !value.ends_with(':')
}

/// Why a request fact is refused, if it is: names are `[A-Za-z0-9_.-]`; UUIDs hex and `-`; hostnames
/// RFC 1123 characters; serials letters, digits, space and `._/+-`; any other value [`yaml_plain`]
/// (a `%0A` cannot start a new line in a rendered cloud-config, a `%23` cannot start a comment, a
/// `%22` cannot end a quoted string), all bounded. Refused facts are dropped: templates, selectors
/// and the status table never see them.
pub fn check_fact(key: &str, value: &str) -> Result<(), String> {
    let name_ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err(format!("{key:?} is not a parameter name"));
    }
    let ok = match key {
        "uuid" => value.len() <= 64 && value.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
        "hostname" => {
            value.len() <= 253
                && !value.starts_with(['-', '.'])
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        }
        "serial" => {
            value.len() <= 128
                && value.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b' ' | b'.' | b'_' | b'/' | b'+' | b'-')
                })
        }
        _ => value.len() <= 256 && yaml_plain(value),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key}={value:?} has characters a {key} cannot have"
        ))
    }
}

impl Facts {
    /// Builds facts from decoded query pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>, raw_query: &str) -> Facts {
        let mut facts = Facts {
            raw_query: raw_query.to_string(),
            ..Facts::default()
        };
        for (k, v) in pairs {
            if v.trim().is_empty() {
                continue;
            }
            match normalise(&k, &v) {
                Ok(n) => {
                    if check_fact(&k, &n).is_ok() {
                        facts.labels.insert(k, n);
                    } else {
                        facts.rejected.insert(k, v);
                    }
                }
                Err(_) => facts.bad_mac = Some(v),
            }
        }
        facts
    }

    /// Parses a raw (percent-encoded) query string.
    pub fn from_query(raw_query: &str) -> Facts {
        let pairs = raw_query.split('&').filter(|p| !p.is_empty()).map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        });
        Facts::from_pairs(pairs, raw_query)
    }

    /// A label's value, or "" when absent.
    pub fn get(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }

    /// The key the status table files this machine under: MAC, else UUID, else the given fallback (the IP).
    pub fn machine_key(&self, fallback: &str) -> String {
        if let Some(m) = self.labels.get("mac") {
            m.clone()
        } else if let Some(u) = self.labels.get("uuid") {
            format!("uuid:{u}")
        } else {
            fallback.to_string()
        }
    }

    /// `mac 52:54:.. uuid .. hostname ..` for messages (only the facts present; `(none)` when nothing is).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for k in ["mac", "uuid", "hostname", "serial"] {
            if let Some(v) = self.labels.get(k) {
                parts.push(format!("{k} {v}"));
            }
        }
        if let Some(b) = &self.bad_mac {
            parts.push(format!("invalid mac {b:?}"));
        }
        for (k, v) in &self.rejected {
            parts.push(format!("invalid {k} {v:?}"));
        }
        if parts.is_empty() {
            "(no mac, uuid, hostname or serial)".to_string()
        } else {
            parts.join(" ")
        }
    }
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms_normalise_to_one() {
        for form in [
            "52:54:00:AB:cd:0f",
            "52-54-00-ab-CD-0F",
            "525400abcd0f",
            " 52:54:00:ab:cd:0f ",
        ] {
            assert_eq!(
                Mac::parse(form).unwrap().as_str(),
                "52:54:00:ab:cd:0f",
                "{form}"
            );
        }
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "5:54:00:ab:cd:0f0",
            "52:54:00:ab:cd:0f:00",
        ] {
            assert!(Mac::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn query_facts_decode_and_drop_empty() {
        let f = Facts::from_query(
            "mac=52%3A54%3A00%3A00%3A00%3A01&uuid=ABC-D&hostname=&serial=x+y&rack=r1",
        );
        assert_eq!(f.get("mac"), "52:54:00:00:00:01");
        assert_eq!(f.get("uuid"), "abc-d");
        assert!(!f.labels.contains_key("hostname"));
        assert_eq!(f.get("serial"), "x y");
        assert_eq!(f.get("rack"), "r1");
        let bad = Facts::from_query("mac=zz");
        assert_eq!(bad.bad_mac.as_deref(), Some("zz"));
        assert!(bad.describe().contains("invalid mac"));
    }

    #[test]
    fn request_facts_outside_their_charsets_are_dropped() {
        let f = Facts::from_query(
            "hostname=node%0Ausers%3A&serial=A1%22%0A&uuid=12ab-zz&rack=r1%0Assh_authorized_keys%3A&ok=r%201&b%0Ad=1",
        );
        for k in ["hostname", "serial", "uuid", "rack"] {
            assert!(!f.labels.contains_key(k), "{k} kept: {:?}", f.labels);
            assert!(f.rejected.contains_key(k), "{k}");
        }
        assert_eq!(f.get("ok"), "r 1");
        assert!(f.labels.keys().all(|k| !k.contains('\n')));
        assert!(f.describe().contains("invalid hostname"));
        let good = Facts::from_query("hostname=node-1.lab&serial=VMware-56%204d&uuid=ABCD-12");
        assert_eq!(good.get("hostname"), "node-1.lab");
        assert_eq!(good.get("serial"), "VMware-56 4d");
        assert_eq!(good.get("uuid"), "abcd-12");
        assert!(good.rejected.is_empty());
    }

    #[test]
    fn generic_values_must_read_the_same_anywhere_in_yaml() {
        for ok in [
            "r9",
            "r 1",
            "efi",
            "x86_64",
            "http://10.0.0.1:8080/x",
            "a=b",
            "-v",
            "50%",
            "user@host",
            "r&1",
            "a?b=c",
        ] {
            assert!(yaml_plain(ok), "{ok:?} refused");
        }
        for bad in [
            "", " a", "a ", "a #b", "#x", "[evil]", "{a: b}", "a: b", "a:", "x\"", "'x", "x\\y",
            "a,b", "&anchor", "*alias", "!tag", "|", ">", "@x", "%x", "a\tb", "é",
        ] {
            assert!(!yaml_plain(bad), "{bad:?} allowed");
        }
        let f = Facts::from_query("rack=a%20%23b&row=%5Bevil%5D&x=k%3A%20v&y=q%22&z=r9");
        for k in ["rack", "row", "x", "y"] {
            assert!(f.rejected.contains_key(k), "{k} kept: {:?}", f.labels);
        }
        assert_eq!(f.get("z"), "r9");
    }
}
