//! `reboot` (and `best-effort`, which cairn treats alike): reboot as soon
//! as the update is staged, inside the reboot window when one is set.

use super::{Decision, Facts, RebootStrategy};

pub struct Immediate {
    pub name: &'static str,
}

impl RebootStrategy for Immediate {
    fn name(&self) -> &'static str {
        self.name
    }

    fn before_reboot(&self, cx: &Facts<'_>) -> Decision {
        super::by_the_clock(cx)
    }
}
