//! Fuzz target: what the update agent downloads from a channel: `manifest.json` (`Manifest::parse`) and
//! `manifest.sig` (`DetachedSignature::parse`), both through `verify`, the gate every manifest passes;
//! the bundle `cairn serve` offers is the same pair of files. Also the trusted-keys file format and the
//! systemd-boot version order the agent decides "newer" with.
//!
//! Input: the manifest bytes, optionally followed by a NUL byte and a signature file's text. The
//! manifest is also signed with a fixed key here, so that inputs get past the signature to the content.
#![no_main]

use std::cmp::Ordering;
use std::path::Path;

use cairn_formats::channel::manifest::{sign, DetachedSignature};
use cairn_formats::channel::timestamp::{parse_rfc3339, rfc3339};
use cairn_formats::channel::{verify, version, Expect, Manifest, PartKind, SecretKey, TrustedKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (bytes, sig) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let key = SecretKey::from_seed([7; 32]);
    let trusted = TrustedKeys::new(vec![key.public()]);

    if let Some(sig) = sig {
        let _ = DetachedSignature::parse(sig);
        if let Ok(text) = std::str::from_utf8(sig) {
            let _ = TrustedKeys::parse(text, Path::new("update.pub"));
            // The fields of a manifest are versions and dates: their orders must be orders.
            let mut words = text.split_whitespace();
            if let (Some(a), Some(b)) = (words.next(), words.next()) {
                assert_eq!(version::compare(a, a), Ordering::Equal, "{a:?}");
                assert_eq!(
                    version::compare(a, b),
                    version::compare(b, a).reverse(),
                    "{a:?} vs {b:?}"
                );
                if let Some(t) = parse_rfc3339(a) {
                    assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{a:?}");
                }
            }
        }
        let expect = Expect {
            name: "default",
            running_version: "1.0",
            channel: Some("stable"),
            now: 1_764_208_000,
        };
        let _ = verify(bytes, sig, &trusted, &expect);
    }

    let parsed = Manifest::parse(bytes);
    let signature = sign(bytes, &key);
    let Ok(m) = parsed else {
        let expect = Expect {
            name: "default",
            running_version: "1.0",
            channel: None,
            now: 0,
        };
        assert!(verify(bytes, signature.as_bytes(), &trusted, &expect).is_err());
        return;
    };
    m.check().expect("a parsed manifest passes its checks");
    for kind in PartKind::ALL {
        assert_eq!(m.part(kind).kind, kind);
    }
    assert!(m.created_secs() < m.expires_secs(), "{m:?}");
    // The canonical form `cairn build --sign` writes reads back as the same manifest.
    let canonical = m.to_bytes();
    assert_eq!(
        Manifest::parse(&canonical).expect("canonical bytes parse"),
        m
    );
    assert_eq!(version::compare(&m.version, &m.version), Ordering::Equal);

    // Signed by a trusted key, valid now, of the expected name and channel: verify says yes exactly
    // when the version is newer than the running one.
    let expect = Expect {
        name: &m.name,
        running_version: "",
        channel: Some(&m.channel),
        now: m.created_secs(),
    };
    let verified = verify(bytes, signature.as_bytes(), &trusted, &expect);
    assert_eq!(
        verified.is_ok(),
        version::is_newer(&m.version, ""),
        "{verified:?}"
    );
    if let Ok(v) = verified {
        assert_eq!(v, m);
    }
});
