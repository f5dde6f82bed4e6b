//! Fuzz target: the kernel command line, as `/init` reads it (`cairn_initrd::cmdline::parse`, with the
//! kernel's quoting) and as cairn-cloudinit looks for `cloud-config-url=` in it.
#![no_main]

use cairn_initrd::cmdline::{parse, split_words, StateSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let words = split_words(text);
    for w in &words {
        assert!(!w.contains('"'), "quotes are removed: {w:?}");
    }
    if let Ok(c) = parse(text) {
        assert!(c.init.starts_with('/'), "{c:?}");
        assert!(c.timeout.as_secs() <= 86_400, "{c:?}");
        if let StateSource::Label(l) = &c.state {
            assert!(!l.is_empty() && l.encode_utf16().count() <= 36, "{c:?}");
        }
        for u in &c.unknown {
            assert!(u.starts_with("cairn."), "{c:?}");
        }
    }
    if let Some(url) = cairn_cloudinit::cmdline::cloud_config_url(text) {
        assert!(!url.is_empty());
        assert!(
            words.iter().any(|w| w.ends_with(url.as_str())),
            "{url:?} from {words:?}"
        );
    }
});
