//! Fuzz target: cloud-config user-data as `cairn validate`, the inventory check and cairn-cloudinit at
//! boot read it: gzip detection, `$public_ipv4` substitution, the validator and the typed parse, then
//! every accessor cloudinit applies (content decoding, modes, the settings' environment, names).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cairn_cloudconfig::{
    check_account_name, check_group, check_hostname, decompress_user_data, environment,
    format_findings, parse_user_data, substitute, validate, Addresses, Kind, UserData,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // What fetching or reading user-data does first: gunzip when it starts with the gzip magic.
    let Ok(plain) = decompress_user_data(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(&plain) else {
        return;
    };

    let report = validate(text);
    let parsed = parse_user_data(text);
    match &parsed {
        // A text that does not parse is also one the validator reports, with the same line and words.
        Err(e) => assert!(
            report
                .findings
                .iter()
                .any(|f| f.kind == Kind::Error && f.line == e.line && f.message == e.message),
            "parse error {e:?} not among the validator's findings {:?}",
            report.findings
        ),
        Ok(ud) => {
            // A successful parse serialises (the status file and `cairn validate --json` do that).
            serde_json::to_string(ud).expect("user-data serialises");
        }
    }
    // Findings are ordered by line and name lines of the text.
    let lines = text.split('\n').count().max(1);
    for pair in report.findings.windows(2) {
        assert!(pair[0].line <= pair[1].line, "{:?}", report.findings);
    }
    for f in &report.findings {
        assert!(f.line >= 1 && f.line <= lines, "{f:?} in {lines} lines");
    }
    let _ = format_findings("user-data", &report);
    serde_json::to_string(&report).expect("report serialises");

    // What cloudinit does at boot: substitute the machine's addresses, then parse and apply.
    let addrs = Addresses {
        public_ipv4: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        private_ipv4: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        public_ipv6: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
        private_ipv6: None,
    };
    let substituted = substitute(text, &addrs);
    let Ok(UserData::CloudConfig(c)) = parse_user_data(&substituted) else {
        return;
    };
    if let Some(h) = &c.hostname {
        let _ = check_hostname(h);
    }
    for u in &c.users {
        let _ = check_account_name(&u.name);
        for g in &u.groups {
            let _ = check_group(g);
        }
        if let Some(g) = &u.primary_group {
            let _ = check_group(g);
        }
    }
    for f in &c.write_files {
        let _ = f.decoded_content();
        if let Ok(Some(mode)) = f.mode() {
            assert!(mode <= 0o7777, "mode {mode:o} of {f:?}");
        }
    }
    for u in &c.coreos.units {
        let _ = u.is_network_unit();
    }
    for (section, map) in [
        ("etcd2", &c.coreos.etcd2),
        ("etcd", &c.coreos.etcd),
        ("fleet", &c.coreos.fleet),
        ("flannel", &c.coreos.flannel),
        ("locksmith", &c.coreos.locksmith),
    ] {
        for (k, _) in environment(section, map) {
            assert!(!k.is_empty() && !k.contains('='), "variable {k:?}");
        }
    }
});
