//! How a build shows its phases: indicatif bars and spinners on a terminal,
//! and, where nothing is drawn (a pipe, a CI log), one line per finished
//! phase with its time, so a log shows where a slow build spent it.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// A bar of `len` steps named `prefix`.
pub fn bar(mp: &MultiProgress, len: u64, prefix: &str) -> ProgressBar {
    let b = mp.add(ProgressBar::new(len));
    b.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_prefix(prefix.to_string());
    b
}

/// A bar of `len` bytes named `prefix`, with the rate.
pub fn bytes_bar(mp: &MultiProgress, len: u64, prefix: &str) -> ProgressBar {
    let b = mp.add(ProgressBar::new(len));
    b.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    b.set_prefix(prefix.to_string());
    b
}

/// A spinner named `prefix` saying `msg`, with the time so far.
pub fn spinner(mp: &MultiProgress, prefix: &str, msg: &str) -> ProgressBar {
    let b = mp.add(ProgressBar::new_spinner());
    b.set_style(
        ProgressStyle::with_template("{prefix:>10} {spinner} {msg} {elapsed}")
            .expect("valid template"),
    );
    b.set_prefix(prefix.to_string());
    b.set_message(msg.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(200));
    b
}

/// Ends a phase: clears its bar and, when no bar is drawn, prints
/// `PREFIX done in S s: DETAIL` on stderr (`detail` defaults to the bar's
/// message, with `pos/len` for a bar of steps).
pub fn finish(mp: &MultiProgress, b: &ProgressBar, detail: Option<String>) {
    b.finish_and_clear();
    if mp.is_hidden() {
        eprintln!("{}", line(b, detail));
    }
}

fn line(b: &ProgressBar, detail: Option<String>) -> String {
    let detail = detail.unwrap_or_else(|| {
        let msg = b.message();
        match b.length() {
            Some(len) if len > 0 => format!("{}/{len} {msg}", b.position()),
            _ => msg,
        }
    });
    format!(
        "{:>10} done in {:.1} s: {}",
        b.prefix(),
        b.elapsed().as_secs_f64(),
        detail.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::ProgressDrawTarget;

    #[test]
    fn a_finished_phase_says_what_and_how_long() {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
        assert!(mp.is_hidden());
        let b = bar(&mp, 170, "unpack");
        b.inc(170);
        let l = line(&b, None);
        assert!(
            l.starts_with("    unpack done in ") && l.ends_with(" s: 170/170"),
            "{l}"
        );
        let s = spinner(&mp, "squashfs", "10893 entries");
        let l = line(&s, None);
        assert!(
            l.contains("squashfs done in") && l.ends_with(": 10893 entries"),
            "{l}"
        );
        let l = line(&s, Some("263.0 MiB".into()));
        assert!(l.ends_with(": 263.0 MiB"), "{l}");
        finish(&mp, &s, None);
        assert!(s.is_finished());
    }
}
