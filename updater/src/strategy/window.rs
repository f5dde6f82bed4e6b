//! `window`: reboot only inside the reboot window (`REBOOT_WINDOW_START`,
//! `REBOOT_WINDOW_LENGTH`), which `update.conf` must then set.

use super::{Decision, Facts, RebootStrategy};

pub struct InWindow;

impl RebootStrategy for InWindow {
    fn name(&self) -> &'static str {
        "window"
    }

    fn before_reboot(&self, cx: &Facts<'_>) -> Decision {
        super::by_the_clock(cx)
    }
}
