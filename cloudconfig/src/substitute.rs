//! `$public_ipv4`-style substitution of the machine's addresses into user-data, with `\$` escapes, as coreos-cloudinit's initialize/env.go.

use std::net::IpAddr;

/// The machine's addresses, from the datasource's metadata (or `COREOS_*_IPV*` as a fallback, the caller's choice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    pub public_ipv4: Option<IpAddr>,
    pub private_ipv4: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub private_ipv6: Option<IpAddr>,
}

/// The four names that are substituted, with their `$`.
pub const VARIABLES: [&str; 4] = [
    "$public_ipv4",
    "$private_ipv4",
    "$public_ipv6",
    "$private_ipv6",
];

/// Replace `$public_ipv4`, `$private_ipv4`, `$public_ipv6` and `$private_ipv6` with the addresses (empty when unknown).
/// `\$name` stands for a literal `$name` (the backslash is dropped); any other text, `$unknown` included, is left as it is.
/// The name is matched as a prefix, as coreos-cloudinit does: `$public_ipv4:2379` becomes `192.0.2.1:2379`.
pub fn substitute(text: &str, addrs: &Addresses) -> String {
    let values = [
        addrs.public_ipv4,
        addrs.private_ipv4,
        addrs.public_ipv6,
        addrs.private_ipv6,
    ]
    .map(|a| a.map(|ip| ip.to_string()).unwrap_or_default());
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(['$', '\\']) {
        out.push_str(&rest[..pos]);
        let at = &rest[pos..];
        if let Some(escaped) = at.strip_prefix('\\') {
            if let Some(name) = VARIABLES.iter().find(|v| escaped.starts_with(**v)) {
                out.push_str(name);
                rest = &escaped[name.len()..];
            } else {
                out.push('\\');
                rest = escaped;
            }
        } else if let Some(i) = VARIABLES.iter().position(|v| at.starts_with(*v)) {
            out.push_str(&values[i]);
            rest = &at[VARIABLES[i].len()..];
        } else {
            out.push('$');
            rest = &at[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Addresses {
        Addresses {
            public_ipv4: Some("192.0.2.3".parse().unwrap()),
            private_ipv4: Some("192.0.2.203".parse().unwrap()),
            public_ipv6: Some("fe00:1234::".parse().unwrap()),
            private_ipv6: Some("fe00:5678::".parse().unwrap()),
        }
    }

    #[test]
    fn substitution_table() {
        let private_only = Addresses {
            private_ipv4: Some("127.0.0.1".parse().unwrap()),
            ..Default::default()
        };
        let cases: &[(&Addresses, &str, &str)] = &[
            (
                &all(),
                "[Service]\nExecStart=/usr/bin/echo \"$public_ipv4 $public_ipv6\"\nExecStop=/usr/bin/echo $private_ipv4 $private_ipv6\nExecStop=/usr/bin/echo $unknown",
                "[Service]\nExecStart=/usr/bin/echo \"192.0.2.3 fe00:1234::\"\nExecStop=/usr/bin/echo 192.0.2.203 fe00:5678::\nExecStop=/usr/bin/echo $unknown",
            ),
            (&private_only, "$private_ipv4\n$public_ipv4", "127.0.0.1\n"),
            (&Addresses::default(), "$private_ipv4\nfoobar", "\nfoobar"),
            (
                &private_only,
                "\\$private_ipv4\n$private_ipv4\naddr: \\$private_ipv4\n\\\\$private_ipv4",
                "$private_ipv4\n127.0.0.1\naddr: $private_ipv4\n\\$private_ipv4",
            ),
            (&Addresses::default(), "\\$test\n$test", "\\$test\n$test"),
            (&all(), "http://$public_ipv4:2379,http://$private_ipv4:4001", "http://192.0.2.3:2379,http://192.0.2.203:4001"),
            (&all(), "$private_ipv4$private_ipv4", "192.0.2.203192.0.2.203"),
            (&all(), "$public_ipv4x $", "192.0.2.3x $"),
            (&all(), "[$public_ipv6]:2379 ünïcødé \\", "[fe00:1234::]:2379 ünïcødé \\"),
            (&all(), "", ""),
        ];
        for (addrs, input, want) in cases {
            assert_eq!(substitute(input, addrs), *want, "{input:?}");
        }
    }
}
