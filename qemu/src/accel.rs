//! Accelerator choice. The default is always TCG (software emulation):
//! on the project's machines `/dev/kvm` exists but opening it hangs, so this
//! crate never opens, probes or stats `/dev/kvm` on its own. KVM is used
//! only when the environment says `CAIRN_ACCEL=kvm`.

use std::fmt;

/// The variable that selects the accelerator.
pub const ACCEL_ENV: &str = "CAIRN_ACCEL";

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Software emulation (`-accel tcg`), the default.
    #[default]
    Tcg,
    /// Hardware virtualisation (`-accel kvm -cpu host`), opt-in only.
    Kvm,
}

impl Accel {
    /// Reads [`ACCEL_ENV`]: `kvm` selects KVM; unset, empty or `tcg` select
    /// TCG; anything else is reported (tracing warning) and gives TCG.
    pub fn from_env() -> Accel {
        Accel::parse(std::env::var(ACCEL_ENV).ok().as_deref())
    }

    /// The decision of [`from_env`](Self::from_env) for a given value.
    pub fn parse(value: Option<&str>) -> Accel {
        match value.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("kvm") => Accel::Kvm,
            None | Some("") => Accel::Tcg,
            Some(v) if v.eq_ignore_ascii_case("tcg") => Accel::Tcg,
            Some(other) => {
                tracing::warn!("{ACCEL_ENV}={other:?} is not kvm or tcg; using tcg");
                Accel::Tcg
            }
        }
    }

    /// The value of QEMU's `-accel` option.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_unless_kvm_is_asked_for() {
        assert_eq!(Accel::parse(None), Accel::Tcg);
        assert_eq!(Accel::parse(Some("")), Accel::Tcg);
        assert_eq!(Accel::parse(Some("tcg")), Accel::Tcg);
        assert_eq!(Accel::parse(Some("hvf")), Accel::Tcg);
        assert_eq!(Accel::parse(Some("kvm")), Accel::Kvm);
        assert_eq!(Accel::parse(Some(" KVM\n")), Accel::Kvm);
        assert_eq!(Accel::default(), Accel::Tcg);
    }
}
