//! Unit names: systemd's naming rules as fleet enforced them at submit time
//! (types, characters, length, templates), the template/instance split, and
//! the specifiers (`%n %N %p %i %%`) fleet expanded in `[X-Fleet]` values.

use std::fmt;

use thiserror::Error;

/// systemd's `UNIT_NAME_MAX`, which fleet checked too.
pub const UNIT_NAME_MAX: usize = 256;

/// The unit types fleet schedules (a subset of systemd's).
pub const UNIT_TYPES: &[&str] = &[
    "automount",
    "busname",
    "device",
    "mount",
    "path",
    "scope",
    "service",
    "slice",
    "snapshot",
    "socket",
    "swap",
    "target",
    "timer",
];

/// The unit types a template (`name@.type`) or an instance may have.
pub const TEMPLATE_TYPES: &[&str] = &["path", "service", "socket", "target", "timer"];

/// The types fleetctl recognises on a command-line argument before it
/// appends `.service` (fleet's `RecognizedUnitType`).
const RECOGNIZED_TYPES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "path",
    "device",
    "mount",
    "automount",
];

/// Why a unit name is refused. The messages follow fleet's wording where
/// fleet had one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("unit name cannot be empty")]
    Empty,
    #[error("unit name exceeds maximum length ({UNIT_NAME_MAX}): {len} bytes")]
    TooLong { len: usize },
    #[error("unit name {name:?} must contain \".\" followed by its type (e.g. \".service\")")]
    NoDot { name: String },
    #[error("unit name {name:?} cannot end in \".\"")]
    EndsInDot { name: String },
    #[error("unit name {name:?}: invalid unit type {suffix:?} (valid: {})", UNIT_TYPES.join(", "))]
    BadType { name: String, suffix: String },
    #[error("unit name {name:?}: invalid unit type for template: {suffix:?} (valid: {})", TEMPLATE_TYPES.join(", "))]
    BadTemplateType { name: String, suffix: String },
    #[error(
        "unit name {name:?}: invalid character {ch:?} (allowed: letters, digits and \":_.@-\\\")"
    )]
    BadChar { name: String, ch: char },
    #[error("unit name {name:?} cannot start in \"@\"")]
    StartsWithAt { name: String },
    #[error("unit name {name:?} has nothing before its type")]
    EmptyPrefix { name: String },
}

/// A valid unit name, split as fleet split it: everything after the first
/// `@` and before the last `.` is the instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitName {
    full: String,
    dot: usize,
    at: Option<usize>,
}

impl UnitName {
    /// Checks `name` against fleet's rules (systemd's `unit_name_is_valid`
    /// with fleet's subset of types): at most 256 bytes, `string.type` or
    /// `string@instance.type`, the string and instance made of
    /// `[a-zA-Z0-9:_.@\-\\]`, templates and instances only of the types in
    /// [`TEMPLATE_TYPES`].
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let len = name.len();
        if len == 0 {
            return Err(NameError::Empty);
        }
        if len > UNIT_NAME_MAX {
            return Err(NameError::TooLong { len });
        }
        let owned = || name.to_string();
        let Some(dot) = name.rfind('.') else {
            return Err(NameError::NoDot { name: owned() });
        };
        if dot == len - 1 {
            return Err(NameError::EndsInDot { name: owned() });
        }
        let suffix = &name[dot + 1..];
        if !UNIT_TYPES.contains(&suffix) {
            return Err(NameError::BadType {
                name: owned(),
                suffix: suffix.to_string(),
            });
        }
        if name.contains('@') && !TEMPLATE_TYPES.contains(&suffix) {
            return Err(NameError::BadTemplateType {
                name: owned(),
                suffix: suffix.to_string(),
            });
        }
        if let Some(ch) = name[..dot].chars().find(|c| !valid_char(*c)) {
            return Err(NameError::BadChar { name: owned(), ch });
        }
        if name.starts_with('@') {
            return Err(NameError::StartsWithAt { name: owned() });
        }
        if dot == 0 {
            return Err(NameError::EmptyPrefix { name: owned() });
        }
        let at = name[..dot].find('@');
        Ok(UnitName {
            full: name.to_string(),
            dot,
            at,
        })
    }

    /// The instance `instance` of this template (`foo@.service` +
    /// `1` -> `foo@1.service`); `None` when this is not a template.
    pub fn instantiate(&self, instance: &str) -> Option<Result<UnitName, NameError>> {
        if !self.is_template() {
            return None;
        }
        Some(UnitName::parse(&format!(
            "{}@{}.{}",
            self.prefix(),
            instance,
            self.unit_type()
        )))
    }

    /// The full name (`%n`), e.g. `foo@bar.service`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The name without its type (`%N`), e.g. `foo@bar`.
    pub fn without_type(&self) -> &str {
        &self.full[..self.dot]
    }

    /// The part before the first `@` (`%p`), e.g. `foo`; the whole name
    /// without its type when there is no `@`.
    pub fn prefix(&self) -> &str {
        match self.at {
            Some(at) => &self.full[..at],
            None => self.without_type(),
        }
    }

    /// The instance (`%i`): what lies between the first `@` and the type;
    /// empty for a template and for a unit without `@`.
    pub fn instance(&self) -> &str {
        match self.at {
            Some(at) => &self.full[at + 1..self.dot],
            None => "",
        }
    }

    /// The unit type, e.g. `service`.
    pub fn unit_type(&self) -> &str {
        &self.full[self.dot + 1..]
    }

    /// `foo@.service`: a template, never scheduled itself.
    pub fn is_template(&self) -> bool {
        self.at.is_some() && self.instance().is_empty()
    }

    /// `foo@bar.service`: an instance of a template.
    pub fn is_instance(&self) -> bool {
        self.at.is_some() && !self.instance().is_empty()
    }

    /// The template a unit with `@` belongs to (`foo@bar.service` ->
    /// `foo@.service`; a template returns itself).
    pub fn template(&self) -> Option<String> {
        self.at
            .map(|_| format!("{}@.{}", self.prefix(), self.unit_type()))
    }

    /// Expands the specifiers fleet supported in `[X-Fleet]` values:
    /// `%n` the full name, `%N` the name without its type, `%p` the prefix,
    /// `%i` the instance, and `%%` a literal `%` (systemd's meaning; fleet
    /// itself did not know `%%`). Any other specifier is refused: fleet
    /// left it in place, which could only make the option match nothing.
    pub fn expand(&self, value: &str) -> Result<String, SpecifierError> {
        if !value.contains('%') {
            return Ok(value.to_string());
        }
        let mut out = String::with_capacity(value.len() + self.full.len());
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push_str(self.as_str()),
                Some('N') => out.push_str(self.without_type()),
                Some('p') => out.push_str(self.prefix()),
                Some('i') => out.push_str(self.instance()),
                Some('%') => out.push('%'),
                Some(other) => return Err(SpecifierError::Unknown(other)),
                None => return Err(SpecifierError::Trailing),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl AsRef<str> for UnitName {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

/// A `%` specifier fleet did not expand.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecifierError {
    #[error("unsupported specifier %{0} (fleet expands %n, %N, %p, %i and %%)")]
    Unknown(char),
    #[error("a lone % at the end (write %% for a percent sign)")]
    Trailing,
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ":-_.\\@".contains(c)
}

/// fleetctl's treatment of a command-line unit argument: a name that does
/// not end in a recognised type gets `.service` appended (`hello` ->
/// `hello.service`, `hello.socket` unchanged).
pub fn with_default_type(arg: &str) -> String {
    let recognized = RECOGNIZED_TYPES
        .iter()
        .any(|t| arg.strip_suffix(t).is_some_and(|rest| rest.ends_with('.')));
    if recognized {
        arg.to_string()
    } else {
        format!("{arg}.service")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_and_their_parts() {
        // name, %N, %p, %i, template?, instance?, template name
        type Row<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            bool,
            bool,
            Option<&'a str>,
        );
        let table: &[Row<'_>] = &[
            ("foo.service", "foo", "foo", "", false, false, None),
            (
                "foo@bar.service",
                "foo@bar",
                "foo",
                "bar",
                false,
                true,
                Some("foo@.service"),
            ),
            (
                "foo@.service",
                "foo@",
                "foo",
                "",
                true,
                false,
                Some("foo@.service"),
            ),
            ("a.b.socket", "a.b", "a.b", "", false, false, None),
            (
                "web@1.2.service",
                "web@1.2",
                "web",
                "1.2",
                false,
                true,
                Some("web@.service"),
            ),
            (
                "x@y@z.timer",
                "x@y@z",
                "x",
                "y@z",
                false,
                true,
                Some("x@.timer"),
            ),
            (
                "dev-sda\\x2d1.device",
                "dev-sda\\x2d1",
                "dev-sda\\x2d1",
                "",
                false,
                false,
                None,
            ),
            ("home.mount", "home", "home", "", false, false, None),
            (
                "x:y_z-1.target",
                "x:y_z-1",
                "x:y_z-1",
                "",
                false,
                false,
                None,
            ),
        ];
        for &(name, n, p, i, tmpl, inst, template) in table {
            let u = UnitName::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(u.as_str(), name);
            assert_eq!(u.without_type(), n, "{name} %N");
            assert_eq!(u.prefix(), p, "{name} %p");
            assert_eq!(u.instance(), i, "{name} %i");
            assert_eq!(u.is_template(), tmpl, "{name} template");
            assert_eq!(u.is_instance(), inst, "{name} instance");
            assert_eq!(u.template().as_deref(), template, "{name} template name");
        }
    }

    #[test]
    fn refused_names_with_their_messages() {
        let long = format!("{}.service", "a".repeat(250));
        let table: &[(&str, &str)] = &[
            ("", "unit name cannot be empty"),
            (&long, "unit name exceeds maximum length (256): 258 bytes"),
            (
                "foo",
                "unit name \"foo\" must contain \".\" followed by its type",
            ),
            ("foo.", "unit name \"foo.\" cannot end in \".\""),
            ("foo.txt", "invalid unit type \"txt\""),
            ("foo.Service", "invalid unit type \"Service\""),
            ("foo@.mount", "invalid unit type for template: \"mount\""),
            (
                "foo@bar.device",
                "invalid unit type for template: \"device\"",
            ),
            ("foo bar.service", "invalid character ' '"),
            ("foo/bar.service", "invalid character '/'"),
            ("f%i.service", "invalid character '%'"),
            ("@foo.service", "cannot start in \"@\""),
            (".service", "has nothing before its type"),
        ];
        for &(name, want) in table {
            let err = UnitName::parse(name).expect_err(name).to_string();
            assert!(err.contains(want), "{name:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn specifiers_expand_as_fleet_did() {
        let inst = UnitName::parse("foo@bar.service").unwrap();
        let plain = UnitName::parse("foo.socket").unwrap();
        let tmpl = UnitName::parse("web@.service").unwrap();
        let table: &[(&UnitName, &str, &str)] = &[
            (&inst, "%n", "foo@bar.service"),
            (&inst, "%N", "foo@bar"),
            (&inst, "%p", "foo"),
            (&inst, "%i", "bar"),
            (&inst, "%p.socket", "foo.socket"),
            (&inst, "db@%i.service", "db@bar.service"),
            (&inst, "%p-%i-%N-%n", "foo-bar-foo@bar-foo@bar.service"),
            (&inst, "100%%", "100%"),
            (&inst, "%%i", "%i"),
            (&inst, "no specifiers", "no specifiers"),
            (&plain, "%p.service", "foo.service"),
            (&plain, "[%i]", "[]"),
            (&tmpl, "%p@*.service", "web@*.service"),
            (&tmpl, "%n", "web@.service"),
        ];
        for &(name, value, want) in table {
            assert_eq!(name.expand(value).unwrap(), want, "{name} {value}");
        }
        assert_eq!(inst.expand("%H"), Err(SpecifierError::Unknown('H')));
        assert_eq!(inst.expand("50%"), Err(SpecifierError::Trailing));
        assert!(inst
            .expand("%m")
            .unwrap_err()
            .to_string()
            .contains("unsupported specifier %m"));
    }

    #[test]
    fn instantiate_templates() {
        let t = UnitName::parse("web@.service").unwrap();
        assert_eq!(
            t.instantiate("3").unwrap().unwrap().as_str(),
            "web@3.service"
        );
        assert!(t.instantiate("a b").unwrap().is_err());
        let plain = UnitName::parse("web.service").unwrap();
        assert!(plain.instantiate("3").is_none());
        let inst = UnitName::parse("web@1.service").unwrap();
        assert!(inst.instantiate("3").is_none());
    }

    #[test]
    fn default_type_for_arguments() {
        for (arg, want) in [
            ("hello", "hello.service"),
            ("hello.service", "hello.service"),
            ("hello.socket", "hello.socket"),
            ("web@1", "web@1.service"),
            ("a.b", "a.b.service"),
            (".service", ".service"),
            ("x.automount", "x.automount"),
        ] {
            assert_eq!(with_default_type(arg), want, "{arg}");
        }
    }
}
