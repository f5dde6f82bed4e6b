//! Fuzz target: a config drive's `openstack/latest/meta_data.json` as cairn-cloudinit reads it
//! (`metadata::parse`): whatever it accepts is a checked hostname and one-line keys.
#![no_main]

use cairn_cloudinit::metadata::{parse, MAX_META_DATA};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(md) = parse(data, "meta_data.json") else {
        return;
    };
    assert!(data.len() as u64 <= MAX_META_DATA);
    if let Some(h) = &md.hostname {
        assert!(cairn_cloudconfig::check_hostname(h).is_ok(), "{h:?}");
    }
    for pair in md.public_keys.windows(2) {
        assert!(pair[0] <= pair[1], "keys are sorted: {:?}", md.public_keys);
    }
    for (name, key) in &md.public_keys {
        assert!(!key.is_empty() && key.trim() == key, "{name}: {key:?}");
        assert!(!key.contains(['\n', '\r']), "{name}: {key:?}");
    }
});
