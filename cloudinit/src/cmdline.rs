//! Kernel command line parsing: finds `cloud-config-url=` the way coreos-cloudinit's proc_cmdline data source does, and the metadata-service keys `cairn.metadata=` and `cairn.metadata.imdsv1`.

/// The kernel command line parameter naming the cloud-config URL.
pub const CLOUD_CONFIG_URL: &str = "cloud-config-url";
/// The metadata services to ask (`cairn.metadata=off|ec2|digitalocean|...`).
pub use cairn_formats::cmdline::METADATA;
/// IMDSv1 allowed (`cairn.metadata.imdsv1=1`).
pub use cairn_formats::cmdline::METADATA_IMDSV1;

/// Splits a kernel command line into parameters. Double quotes group words
/// (`key="a b"`) and are removed, as the kernel itself does (the same
/// splitting `/init` uses).
pub use cairn_formats::cmdline::split_words as split;

/// The value of `cloud-config-url` (also spelled `cloud_config_url`) on a
/// kernel command line. Given more than once, the last one with a value wins,
/// as in coreos-cloudinit; a bare `cloud-config-url` without `=` is ignored
/// (logged).
pub fn cloud_config_url(cmdline: &str) -> Option<String> {
    let mut found = None;
    for param in split(cmdline) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param.as_str(), None),
        };
        if key.replace('_', "-") != CLOUD_CONFIG_URL {
            continue;
        }
        match value {
            Some(v) if !v.is_empty() => found = Some(v.to_string()),
            _ => tracing::warn!(
                "{CLOUD_CONFIG_URL} on the kernel command line has no value, ignoring it"
            ),
        }
    }
    found
}

/// The value of the last `key=VALUE` on a command line (a bare `key`
/// counts as `key=`).
fn last_value(cmdline: &str, key: &str) -> Option<String> {
    split(cmdline)
        .into_iter()
        .filter_map(|w| match w.split_once('=') {
            Some((k, v)) if k == key => Some(v.to_string()),
            None if w == key => Some(String::new()),
            _ => None,
        })
        .next_back()
}

/// The value of `cairn.metadata=` (the last one wins), not yet parsed.
pub fn metadata_services(cmdline: &str) -> Option<String> {
    last_value(cmdline, METADATA)
}

/// Whether `cairn.metadata.imdsv1` allows IMDSv1: a bare key, `=1`,
/// `=yes`, `=true` or `=on` (the last one wins); `=0` and anything else
/// do not.
pub fn metadata_imdsv1(cmdline: &str) -> bool {
    last_value(cmdline, METADATA_IMDSV1)
        .is_some_and(|v| matches!(v.as_str(), "" | "1" | "yes" | "true" | "on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_config_url_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("console=ttyS0 root=/dev/sda", None),
            (
                "cloud-config-url=http://10.0.2.100/good",
                Some("http://10.0.2.100/good"),
            ),
            ("a=1 cloud_config_url=http://x/y b=2\n", Some("http://x/y")),
            // more than once: the last one wins (coreos-cloudinit overwrites)
            (
                "cloud-config-url=http://a/1 cloud-config-url=http://b/2",
                Some("http://b/2"),
            ),
            // no value: ignored, an earlier one stays
            (
                "cloud-config-url=http://a/1 cloud-config-url",
                Some("http://a/1"),
            ),
            ("cloud-config-url", None),
            ("cloud-config-url=", None),
            // '=' inside the value is kept
            (
                "cloud-config-url=http://h/c?a=1&b=2 quiet",
                Some("http://h/c?a=1&b=2"),
            ),
            // quoted
            ("x \"cloud-config-url=http://h/p\" y", Some("http://h/p")),
            // similar names are not it
            ("cloud-config-urls=http://no", None),
            ("mycloud-config-url=http://no", None),
        ];
        for (line, want) in cases {
            assert_eq!(cloud_config_url(line).as_deref(), *want, "cmdline {line:?}");
        }
    }

    #[test]
    fn metadata_keys() {
        assert_eq!(metadata_services("quiet"), None);
        assert_eq!(
            metadata_services("cairn.metadata=ec2 x cairn.metadata=off").as_deref(),
            Some("off")
        );
        assert_eq!(
            metadata_services("cairn.metadata=ec2,digitalocean").as_deref(),
            Some("ec2,digitalocean")
        );
        // the imdsv1 key is not the services key, nor the other way round
        assert_eq!(metadata_services("cairn.metadata.imdsv1=1"), None);
        assert!(!metadata_imdsv1("cairn.metadata=ec2"));
        for (line, want) in [
            ("", false),
            ("cairn.metadata.imdsv1", true),
            ("cairn.metadata.imdsv1=1", true),
            ("cairn.metadata.imdsv1=yes", true),
            ("cairn.metadata.imdsv1=0", false),
            ("cairn.metadata.imdsv1=1 cairn.metadata.imdsv1=0", false),
            ("cairn.metadata.imdsv1=maybe", false),
            ("xcairn.metadata.imdsv1=1", false),
        ] {
            assert_eq!(metadata_imdsv1(line), want, "{line:?}");
        }
    }

    #[test]
    fn split_keeps_quoted_spaces() {
        assert_eq!(split(" a  b=\"c d\"\te "), vec!["a", "b=c d", "e"]);
    }
}
