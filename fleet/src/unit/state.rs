//! fleet's unit states (inactive -> loaded -> launched) and what each
//! fleetctl verb does to a unit's desired state, as a pure function with
//! the refusals fleet made.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::name::UnitName;

/// A unit's cluster-level state (fleet's `JobState`), desired or reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Known to fleet, on no machine.
    Inactive,
    /// On a machine and loaded into its systemd, not started.
    Loaded,
    /// Loaded and started (`systemctl start`).
    Launched,
}

impl JobState {
    /// The name fleet used (`inactive`, `loaded`, `launched`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Inactive => "inactive",
            JobState::Loaded => "loaded",
            JobState::Launched => "launched",
        }
    }

    /// Whether a unit in this desired state needs a machine.
    pub fn wants_machine(self) -> bool {
        self != JobState::Inactive
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name fleet did not know.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid value {0:?} for JobState (inactive, loaded, launched)")]
pub struct BadState(pub String);

impl FromStr for JobState {
    type Err = BadState;
    fn from_str(s: &str) -> Result<Self, BadState> {
        match s {
            "inactive" => Ok(JobState::Inactive),
            "loaded" => Ok(JobState::Loaded),
            "launched" => Ok(JobState::Launched),
            _ => Err(BadState(s.to_string())),
        }
    }
}

/// The fleetctl verbs that change a unit's desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Submit,
    Load,
    Start,
    Stop,
    Unload,
    Destroy,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Submit => "submit",
            Verb::Load => "load",
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Unload => "unload",
            Verb::Destroy => "destroy",
        }
    }

    /// Whether the verb creates a unit missing from the registry (from a
    /// file or its template), as fleetctl's submit, load and start did.
    pub fn creates(self) -> bool {
        matches!(self, Verb::Submit | Verb::Load | Verb::Start)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verb does to one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The unit is not in the registry: store it (the caller supplies its
    /// text) with this desired state.
    Create { desired: JobState },
    /// Change the desired state.
    SetDesired { from: JobState, to: JobState },
    /// Nothing to do: the desired state is already what the verb asks.
    Unchanged { desired: JobState },
    /// Remove the unit from the registry (its machine stops and unloads it).
    Remove,
}

/// Where fleet refused a verb.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerbError {
    /// load/start of a template (fleet's API: "cannot activate template").
    #[error("cannot activate template {0:?}")]
    Template(String),
    /// stop of a unit that is not loaded anywhere.
    #[error("Unable to stop unit {0} in state inactive")]
    StopInactive(String),
    /// stop, unload or destroy of a unit the registry does not hold
    /// (fleetctl skipped such names, and said "Units not found in
    /// registry" when it found none of them).
    #[error("unit {0} not found in registry")]
    NotFound(String),
    /// `--replace` of a unit whose desired state is past what the verb may
    /// replace (fleetctl only warned and went on).
    #[error("can not replace Unit({name}) in state '{desired}', use the appropriate command")]
    CannotReplace { name: String, desired: JobState },
}

/// What `verb` does to the unit `name` whose desired state in the
/// registry is `desired` (`None`: not in the registry), as fleetctl did it
/// (Documentation/states.md and fleetctl's code):
///
/// | verb | none | inactive | loaded | launched |
/// |---|---|---|---|---|
/// | submit | create inactive | - | - | - |
/// | load | create loaded | loaded | - | loaded |
/// | start | create launched | launched | launched | - |
/// | stop | not found | refused | - | loaded |
/// | unload | not found | - | inactive | inactive |
/// | destroy | not found | remove | remove | remove |
///
/// (`-`: unchanged.) load and start refuse templates. `load` of a launched
/// unit sets it back to loaded, which stops it, as fleet's did. fleet's
/// stop and unload looked at the state the agent had reached, which raced
/// with a start still under way (a stop right after a start was skipped);
/// these look at the desired state. Global units follow the same table.
pub fn transition(
    verb: Verb,
    name: &UnitName,
    desired: Option<JobState>,
) -> Result<Transition, VerbError> {
    use JobState::*;
    let target = match verb {
        Verb::Submit => Inactive,
        Verb::Load => Loaded,
        Verb::Start => Launched,
        Verb::Stop => Loaded,
        Verb::Unload => Inactive,
        Verb::Destroy => {
            return match desired {
                None => Err(VerbError::NotFound(name.to_string())),
                Some(_) => Ok(Transition::Remove),
            }
        }
    };
    if matches!(verb, Verb::Load | Verb::Start) && name.is_template() {
        return Err(VerbError::Template(name.to_string()));
    }
    let Some(from) = desired else {
        return if verb.creates() {
            Ok(Transition::Create { desired: target })
        } else {
            Err(VerbError::NotFound(name.to_string()))
        };
    };
    let to = match (verb, from) {
        // submit never changes an existing unit.
        (Verb::Submit, _) => from,
        (Verb::Stop, Inactive) => return Err(VerbError::StopInactive(name.to_string())),
        _ => target,
    };
    Ok(if to == from {
        Transition::Unchanged { desired: from }
    } else {
        Transition::SetDesired { from, to }
    })
}

/// Whether `fleetctl VERB --replace` may put new contents in place of a
/// unit whose desired state is `desired` (fleetctl's
/// `checkReplaceUnitState`): submit replaces inactive units, load
/// inactive or loaded ones, start any; other verbs never replace.
pub fn may_replace(verb: Verb, name: &UnitName, desired: JobState) -> Result<(), VerbError> {
    let allowed: &[JobState] = match verb {
        Verb::Submit => &[JobState::Inactive],
        Verb::Load => &[JobState::Inactive, JobState::Loaded],
        Verb::Start => &[JobState::Inactive, JobState::Loaded, JobState::Launched],
        _ => &[],
    };
    if allowed.contains(&desired) {
        Ok(())
    } else {
        Err(VerbError::CannotReplace {
            name: name.to_string(),
            desired,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;
    use Transition::*;

    fn n(s: &str) -> UnitName {
        UnitName::parse(s).unwrap()
    }

    #[test]
    fn verbs_on_every_state() {
        let u = n("hello.service");
        type Row = (Verb, Option<JobState>, Result<Transition, &'static str>);
        let table: &[Row] = &[
            (Verb::Submit, None, Ok(Create { desired: Inactive })),
            (
                Verb::Submit,
                Some(Inactive),
                Ok(Unchanged { desired: Inactive }),
            ),
            (
                Verb::Submit,
                Some(Loaded),
                Ok(Unchanged { desired: Loaded }),
            ),
            (
                Verb::Submit,
                Some(Launched),
                Ok(Unchanged { desired: Launched }),
            ),
            (Verb::Load, None, Ok(Create { desired: Loaded })),
            (
                Verb::Load,
                Some(Inactive),
                Ok(SetDesired {
                    from: Inactive,
                    to: Loaded,
                }),
            ),
            (Verb::Load, Some(Loaded), Ok(Unchanged { desired: Loaded })),
            (
                Verb::Load,
                Some(Launched),
                Ok(SetDesired {
                    from: Launched,
                    to: Loaded,
                }),
            ),
            (Verb::Start, None, Ok(Create { desired: Launched })),
            (
                Verb::Start,
                Some(Inactive),
                Ok(SetDesired {
                    from: Inactive,
                    to: Launched,
                }),
            ),
            (
                Verb::Start,
                Some(Loaded),
                Ok(SetDesired {
                    from: Loaded,
                    to: Launched,
                }),
            ),
            (
                Verb::Start,
                Some(Launched),
                Ok(Unchanged { desired: Launched }),
            ),
            (
                Verb::Stop,
                None,
                Err("unit hello.service not found in registry"),
            ),
            (
                Verb::Stop,
                Some(Inactive),
                Err("Unable to stop unit hello.service in state inactive"),
            ),
            (Verb::Stop, Some(Loaded), Ok(Unchanged { desired: Loaded })),
            (
                Verb::Stop,
                Some(Launched),
                Ok(SetDesired {
                    from: Launched,
                    to: Loaded,
                }),
            ),
            (
                Verb::Unload,
                None,
                Err("unit hello.service not found in registry"),
            ),
            (
                Verb::Unload,
                Some(Inactive),
                Ok(Unchanged { desired: Inactive }),
            ),
            (
                Verb::Unload,
                Some(Loaded),
                Ok(SetDesired {
                    from: Loaded,
                    to: Inactive,
                }),
            ),
            (
                Verb::Unload,
                Some(Launched),
                Ok(SetDesired {
                    from: Launched,
                    to: Inactive,
                }),
            ),
            (
                Verb::Destroy,
                None,
                Err("unit hello.service not found in registry"),
            ),
            (Verb::Destroy, Some(Inactive), Ok(Remove)),
            (Verb::Destroy, Some(Loaded), Ok(Remove)),
            (Verb::Destroy, Some(Launched), Ok(Remove)),
        ];
        for (verb, desired, want) in table {
            let got = transition(*verb, &u, *desired).map_err(|e| e.to_string());
            assert_eq!(got, (*want).map_err(String::from), "{verb} on {desired:?}");
        }
    }

    #[test]
    fn templates() {
        let t = n("web@.service");
        assert_eq!(
            transition(Verb::Submit, &t, None),
            Ok(Create { desired: Inactive })
        );
        for verb in [Verb::Load, Verb::Start] {
            for desired in [None, Some(Inactive)] {
                assert_eq!(
                    transition(verb, &t, desired).unwrap_err().to_string(),
                    "cannot activate template \"web@.service\""
                );
            }
        }
        assert_eq!(transition(Verb::Destroy, &t, Some(Inactive)), Ok(Remove));
        assert_eq!(
            transition(Verb::Unload, &t, Some(Inactive)),
            Ok(Unchanged { desired: Inactive })
        );
        // Instances are ordinary units.
        assert_eq!(
            transition(Verb::Start, &n("web@1.service"), None),
            Ok(Create { desired: Launched })
        );
    }

    #[test]
    fn replace_rules() {
        let u = n("a.service");
        let table = [
            (Verb::Submit, Inactive, true),
            (Verb::Submit, Loaded, false),
            (Verb::Submit, Launched, false),
            (Verb::Load, Inactive, true),
            (Verb::Load, Loaded, true),
            (Verb::Load, Launched, false),
            (Verb::Start, Inactive, true),
            (Verb::Start, Loaded, true),
            (Verb::Start, Launched, true),
            (Verb::Stop, Launched, false),
            (Verb::Destroy, Inactive, false),
        ];
        for (verb, desired, ok) in table {
            assert_eq!(
                may_replace(verb, &u, desired).is_ok(),
                ok,
                "{verb} {desired}"
            );
        }
        assert_eq!(
            may_replace(Verb::Submit, &u, Launched)
                .unwrap_err()
                .to_string(),
            "can not replace Unit(a.service) in state 'launched', use the appropriate command"
        );
    }

    #[test]
    fn state_names() {
        for s in [Inactive, Loaded, Launched] {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("running".parse::<JobState>().is_err());
        assert!(!Inactive.wants_machine());
        assert!(Loaded.wants_machine() && Launched.wants_machine());
    }
}
