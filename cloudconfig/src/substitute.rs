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
