//! The names cloud-config hands to the system: hostnames (systemd's rules), user and group names (shadow's `useradd` rules); one definition shared by the validator and the on-host agent.

use thiserror::Error;

/// The longest hostname Linux keeps (`HOST_NAME_MAX`).
pub const HOSTNAME_MAX: usize = 64;
/// The longest DNS label.
pub const LABEL_MAX: usize = 63;
/// The longest user or group name `useradd` and `groupadd` take.
pub const ACCOUNT_NAME_MAX: usize = 32;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("empty")]
    Empty,
    #[error("longer than {0} characters")]
    TooLong(usize),
    #[error("starts with '-'")]
    LeadingDash,
    #[error("character {0:?} is not allowed")]
    BadChar(char),
    #[error("empty label (a leading, trailing or doubled '.')")]
    EmptyLabel,
    #[error("a label starts or ends with '-'")]
    DashAtLabelEdge,
    #[error("a label is longer than {LABEL_MAX} characters")]
    LongLabel,
    #[error("'.' and '..' are not names")]
    Dots,
    #[error("all digits (taken for a numeric id)")]
    Numeric,
}

/// A hostname as systemd accepts it (`hostname_is_valid`) and DNS allows
/// it: dot-separated labels of ASCII letters, digits and `-`, no label
/// empty, longer than 63 or starting or ending with `-`, at most 64 in all.
pub fn check_hostname(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(NameError::BadChar(c));
    }
    if name.starts_with('-') {
        return Err(NameError::LeadingDash);
    }
    if name.len() > HOSTNAME_MAX {
        return Err(NameError::TooLong(HOSTNAME_MAX));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::DashAtLabelEdge);
        }
        if label.len() > LABEL_MAX {
            return Err(NameError::LongLabel);
        }
    }
    Ok(())
}

/// A user or group name as shadow's `useradd` checks it without
/// `--badname`: `[A-Za-z0-9_.][A-Za-z0-9_.-]*` with an optional final `$`,
/// not all digits, not `.` or `..`, at most 32 characters. So never an
/// option (`-x`) nor anything with `:`, `,`, `/`, spaces or newlines.
pub fn check_account_name(name: &str) -> Result<(), NameError> {
    let Some(first) = name.chars().next() else {
        return Err(NameError::Empty);
    };
    if first == '-' {
        return Err(NameError::LeadingDash);
    }
    let body = name.strip_suffix('$').unwrap_or(name);
    if let Some(c) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(NameError::BadChar(c));
    }
    if body.is_empty() || name == "." || name == ".." {
        return Err(NameError::Dots);
    }
    if name.len() > ACCOUNT_NAME_MAX {
        return Err(NameError::TooLong(ACCOUNT_NAME_MAX));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::Numeric);
    }
    Ok(())
}

/// A group as `useradd --gid`/`--groups` take it: a name
/// ([`check_account_name`]) or a numeric id.
pub fn check_group(group: &str) -> Result<(), NameError> {
    if !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    check_account_name(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in [
            "a",
            "node-1",
            "node1.example.com",
            "A0",
            "x23456789012345678901234567890123456789012345678901234567890123",
        ] {
            assert_eq!(check_hostname(ok), Ok(()), "{ok}");
        }
        let long_total = ["abcdefghij"; 6].join(".") + ".abc"; // 69
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("-n", NameError::LeadingDash),
            ("--help", NameError::LeadingDash),
            ("a b", NameError::BadChar(' ')),
            ("a\nb", NameError::BadChar('\n')),
            ("h\n127.0.0.1 evil", NameError::BadChar('\n')),
            ("a_b", NameError::BadChar('_')),
            ("fe80::1", NameError::BadChar(':')),
            ("a..b", NameError::EmptyLabel),
            (".a", NameError::EmptyLabel),
            ("a.", NameError::EmptyLabel),
            ("a-.b", NameError::DashAtLabelEdge),
            ("a.-b", NameError::DashAtLabelEdge),
            (
                "x234567890123456789012345678901234567890123456789012345678901234",
                NameError::LongLabel,
            ),
            (&long_total, NameError::TooLong(64)),
        ];
        for (name, want) in cases {
            assert_eq!(check_hostname(name).as_ref(), Err(want), "{name:?}");
        }
    }

    #[test]
    fn account_names() {
        for ok in [
            "core",
            "web.admin",
            "_svc",
            "a-b",
            "Admin",
            "host$",
            "x1",
            "1x",
        ] {
            assert_eq!(check_account_name(ok), Ok(()), "{ok}");
        }
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("-o", NameError::LeadingDash),
            ("--root=/x", NameError::LeadingDash),
            ("a b", NameError::BadChar(' ')),
            ("a:b", NameError::BadChar(':')),
            ("a,b", NameError::BadChar(',')),
            ("../x", NameError::BadChar('/')),
            ("a$b", NameError::BadChar('$')),
            ("a\n", NameError::BadChar('\n')),
            (".", NameError::Dots),
            ("..", NameError::Dots),
            ("$", NameError::Dots),
            ("123", NameError::Numeric),
            ("abcdefghijabcdefghijabcdefghijabc", NameError::TooLong(32)),
        ];
        for (name, want) in cases {
            assert_eq!(check_account_name(name).as_ref(), Err(want), "{name:?}");
        }
        assert_eq!(check_group("999"), Ok(()));
        assert_eq!(check_group("docker"), Ok(()));
        assert_eq!(check_group("-g"), Err(NameError::LeadingDash));
        assert_eq!(check_group(""), Err(NameError::Empty));
    }
}
