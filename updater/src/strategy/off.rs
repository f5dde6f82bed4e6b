//! `off`: stage only; an operator reboots when they choose.

use super::{Decision, Facts, RebootStrategy};

pub struct Off;

impl RebootStrategy for Off {
    fn name(&self) -> &'static str {
        "off"
    }

    fn before_reboot(&self, _cx: &Facts<'_>) -> Decision {
        Decision::NotNow("REBOOT_STRATEGY=off: reboot by hand".into())
    }
}
