//! The partitions of a cairn disk, by GPT label: the ESP, the two root
//! slots and the writable state, and the mark a never-formatted state
//! partition starts with.

/// Label of the EFI system partition (partition 1).
pub const ESP_LABEL: &str = "ESP";
/// Label of root slot A (partition 2).
pub const SLOT_A_LABEL: &str = "cairn-a";
/// Label of root slot B (partition 3).
pub const SLOT_B_LABEL: &str = "cairn-b";
/// Label of the writable state partition (partition 4, the last one).
pub const STATE_LABEL: &str = "cairn-state";

/// The first bytes of a state partition that has never been formatted,
/// written by the disk image. `/init` formats the state partition only when
/// it starts with this mark (and has no ext4 superblock), then erases the
/// mark; a partition with neither (a damaged superblock, a foreign file
/// system) is never formatted, so a machine's data is not wiped by a bad
/// sector.
pub const STATE_NEW_MARK: &[u8; 32] = b"cairn-state: never formatted\n\0\0\0";

/// A root slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The value of `cairn.slot=`.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The GPT partition label.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => SLOT_A_LABEL,
            Slot::B => SLOT_B_LABEL,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The value of `cairn.slot=` as `/init` reads it: `a` or `b`, either
    /// case.
    pub fn from_cmdline_value(v: &str) -> Option<Slot> {
        match v {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }

    /// `a`, `b` (also the labels `cairn-a`, `cairn-b`).
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | SLOT_A_LABEL => Some(Slot::A),
            "b" | SLOT_B_LABEL => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.letter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for s in [Slot::A, Slot::B] {
            assert_eq!(Slot::parse(s.letter()), Some(s));
            assert_eq!(Slot::parse(s.label()), Some(s));
            assert_eq!(s.other().other(), s);
            assert_ne!(s.other(), s);
        }
        assert_eq!(Slot::parse("c"), None);
        assert_eq!(Slot::from_cmdline_value("B"), Some(Slot::B));
        assert_eq!(Slot::from_cmdline_value("cairn-b"), None);
        assert_eq!(Slot::A.to_string(), "a");
    }

    #[test]
    fn the_mark_is_not_a_file_system() {
        // no ext4 magic at 1080, no FAT boot signature: nothing mistakes it
        assert_eq!(STATE_NEW_MARK.len(), 32);
        assert!(STATE_NEW_MARK.starts_with(b"cairn-state"));
    }
}
