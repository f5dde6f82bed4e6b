//! fleet's unit model, pure and I/O-free: unit names, unit files (text,
//! options, hash), the `[X-Fleet]` requirements, and unit states with what
//! each fleetctl verb does to them.

pub mod file;
pub mod glob;
pub mod name;
pub mod state;
pub mod xfleet;

use thiserror::Error;

pub use file::{ParseError, UnitFile, UnitHash, UnitOption};
pub use glob::{Glob, GlobError, GlobIndex};
pub use name::{NameError, SpecifierError, UnitName};
pub use state::{may_replace, transition, JobState, Transition, Verb, VerbError};
pub use xfleet::{FleetKey, Problem, Requirements, XFleetError};

/// Why a unit was refused at submit time.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{name}: {source}")]
    Parse { name: String, source: ParseError },
    #[error("{name}: {source}")]
    XFleet { name: String, source: XFleetError },
}

/// A unit as fleet knows it: its name, its file, and what its `[X-Fleet]`
/// section asks of the scheduler (specifiers expanded for this name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: UnitName,
    pub file: UnitFile,
    pub requirements: Requirements,
}

impl Unit {
    /// Everything fleet checked at submit time, and more: the name, the
    /// file, the `[X-Fleet]` options and their combinations. For an
    /// instance (`web@1.service`) `text` is the template's text; the
    /// specifiers expand for the instance.
    pub fn parse(name: &str, text: impl Into<String>) -> Result<Unit, UnitError> {
        let name = UnitName::parse(name)?;
        let file = UnitFile::parse(text).map_err(|source| UnitError::Parse {
            name: name.to_string(),
            source,
        })?;
        Unit::new(name, file)
    }

    /// As [`Unit::parse`] for a file already read.
    pub fn new(name: UnitName, file: UnitFile) -> Result<Unit, UnitError> {
        let requirements =
            Requirements::from_file(&name, &file).map_err(|source| UnitError::XFleet {
                name: name.to_string(),
                source,
            })?;
        Ok(Unit {
            name,
            file,
            requirements,
        })
    }

    /// The unit's hash (see [`UnitFile::hash`]).
    pub fn hash(&self) -> UnitHash {
        self.file.hash()
    }

    /// Whether the unit is global (`Global=true`).
    pub fn is_global(&self) -> bool {
        self.requirements.global
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_time_errors_name_the_unit() {
        let e = Unit::parse("a.service", "[X-Fleet]\nMachineOf=b\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a.service: line 2: [X-Fleet] MachineOf: \"b\" is no unit name"),
            "{e}"
        );
        let e = Unit::parse("a.service", "[X-Fleet\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.service: line 1: unable to find end of section (\"]\")"
        );
        let e = Unit::parse("a.txt", "").unwrap_err();
        assert!(
            matches!(e, UnitError::Name(NameError::BadType { .. })),
            "{e}"
        );
    }

    #[test]
    fn instance_from_template_text() {
        let text = "[Service]\nExecStart=/bin/web %i\n\n[X-Fleet]\nConflicts=%p@*.service\n";
        let t = Unit::parse("web@.service", text).unwrap();
        let i = Unit::parse("web@2.service", text).unwrap();
        assert_eq!(t.hash(), i.hash());
        assert_eq!(i.requirements.conflicts, ["web@*.service"]);
        assert!(!i.is_global());
    }

    #[test]
    fn the_issues_myapp_unit() {
        let text = "[Unit]\nDescription=MyApp\nAfter=docker.service\nRequires=docker.service\n\n[Service]\nTimeoutStartSec=0\nExecStartPre=-/usr/bin/docker kill busybox1\nExecStartPre=-/usr/bin/docker rm busybox1\nExecStartPre=/usr/bin/docker pull busybox\nExecStart=/usr/bin/docker run --name busybox1 busybox /bin/sh -c \"trap 'exit 0' INT TERM; while true; do echo Hello World; sleep 1; done\"\n";
        let u = Unit::parse("myapp.service", text).unwrap();
        assert_eq!(u.file.description().as_deref(), Some("MyApp"));
        assert_eq!(u.file.get("Service", "ExecStartPre").count(), 3);
        assert!(u.requirements.is_empty());
        assert_eq!(u.file.text(), text);
    }
}
