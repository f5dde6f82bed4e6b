//! KEY=value files (/etc/environment, /etc/cairn/update.conf): merge new values in, keep every other line.

/// Whether `key` is a shell-compatible variable name.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `old` with each `KEY=` line of a key in `pending` replaced in place (the
/// first one; later duplicates dropped), other lines (comments, other keys)
/// kept as they were, and the keys not yet present appended in the order
/// given. The result ends with a newline (unless empty).
pub fn merge(old: &str, pending: &[(String, String)]) -> String {
    let mut done = vec![false; pending.len()];
    let mut out = String::with_capacity(old.len() + 64);
    for line in old.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let key = line
            .split_once('=')
            .map(|(k, _)| k)
            .filter(|k| valid_key(k));
        match key.and_then(|k| pending.iter().position(|(pk, _)| pk == k)) {
            Some(i) if done[i] => {}
            Some(i) => {
                done[i] = true;
                out.push_str(&format!("{}={}\n", pending[i].0, pending[i].1));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (i, (k, v)) in pending.iter().enumerate() {
        if !done[i] {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn merge_table() {
        let new = kv(&[
            ("COREOS_PRIVATE_IPV4", "10.0.2.15"),
            ("COREOS_PUBLIC_IPV4", "10.0.2.15"),
        ]);
        let cases: &[(&str, &str)] = &[
            ("", "COREOS_PRIVATE_IPV4=10.0.2.15\nCOREOS_PUBLIC_IPV4=10.0.2.15\n"),
            // other lines and comments are kept, in place
            (
                "# comment\nPATH=/usr/bin\nLANG=C.UTF-8",
                "# comment\nPATH=/usr/bin\nLANG=C.UTF-8\nCOREOS_PRIVATE_IPV4=10.0.2.15\nCOREOS_PUBLIC_IPV4=10.0.2.15\n",
            ),
            // an old value is replaced where it was; DOS line ends dropped
            (
                "A=1\r\nCOREOS_PUBLIC_IPV4=1.2.3.4\r\nB=2\r\n",
                "A=1\nCOREOS_PUBLIC_IPV4=10.0.2.15\nB=2\nCOREOS_PRIVATE_IPV4=10.0.2.15\n",
            ),
            // duplicates of a managed key collapse into one
            (
                "COREOS_PRIVATE_IPV4=a\nCOREOS_PRIVATE_IPV4=b\n",
                "COREOS_PRIVATE_IPV4=10.0.2.15\nCOREOS_PUBLIC_IPV4=10.0.2.15\n",
            ),
            // prefixes of a key are other keys
            (
                "COREOS_PRIVATE_IPV4_X=keep\n",
                "COREOS_PRIVATE_IPV4_X=keep\nCOREOS_PRIVATE_IPV4=10.0.2.15\nCOREOS_PUBLIC_IPV4=10.0.2.15\n",
            ),
        ];
        for (old, want) in cases {
            let got = merge(old, &new);
            assert_eq!(got, *want, "merging into {old:?}");
            // merging again changes nothing
            assert_eq!(merge(&got, &new), got);
        }
    }

    #[test]
    fn keys() {
        assert!(valid_key("ETCD_NAME"));
        assert!(!valid_key("A-B"));
        assert!(!valid_key(""));
        assert!(!valid_key("export A"));
    }
}
