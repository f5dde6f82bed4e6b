//! Corpus test: every public cloud-config of tests/fixtures/corpus (provenance in its SOURCES.tsv) gives exactly the
//! findings written in the table below, and the typed parser agrees with the validator on each.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_cloudconfig::{parse_user_data, substitute, validate, Addresses, Kind, UserData};

const DEP_ETCD: &str =
    "deprecated key \"etcd\" (etcd 0.4 options; cairn runs etcd 3, configure it with etcd2)";
const NOT_A_TOKEN: &str = "found character that cannot start any token";
const MAP_KEY: &str = "invalid map key: a mapping key must be a scalar, not a collection";

use Kind::{Error as E, Warning as W};

/// File name -> every finding expected (kind, line, message), checked by hand against the file.
fn expected() -> BTreeMap<&'static str, Vec<(Kind, usize, &'static str)>> {
    BTreeMap::from([
        ("coreos+coreos-vagrant__user-data.sample", vec![]),
        ("jimmycuadra+rust-fleet__user-data", vec![(W, 5, DEP_ETCD)]),
        (
            // ${etcd_discovery_url} is not an absolute URI.
            "maxenglander+etcd-terraform-example__etcd_cloud_config.yaml.tpl",
            vec![(W, 6, "discovery URL is not valid")],
        ),
        (
            // line 8: `name: {{ETCD_NODE_NAME}}` is a flow mapping used as a key.
            "coreos+coreos-kubernetes__multi-node_vagrant_etcd-cloud-config.yaml",
            vec![(E, 8, MAP_KEY)],
        ),
        (
            // line 9: `etcd_endpoints: {{ETCD_ENDPOINTS}}`.
            "coreos+coreos-kubernetes__cloud-config_worker-cloud-config.yaml",
            vec![(E, 9, MAP_KEY)],
        ),
        (
            "poseidon+matchbox__examples_etcd-large_cloud_etcd1.yaml",
            vec![],
        ),
        (
            // `proxy: on ` is the text "on" for the string field: valid.
            "poseidon+matchbox__examples_etcd-large_cloud_worker.yaml",
            vec![],
        ),
        (
            "poseidon+matchbox__examples_kubernetes_cloud_etcd.yaml",
            vec![],
        ),
        (
            // line 6: `discovery: #DISCOVERY_URL` is an empty (null) value.
            "deis+deis__contrib_coreos_user-data.example",
            vec![(W, 6, "incorrect type for \"discovery\" (want string)")],
        ),
        (
            // line 21: `version-id: @@OEM_VERSION_ID@@`.
            "coreos+coreos-overlay__coreos-base_oem-vagrant_files_cloud-config.yml",
            vec![(E, 21, NOT_A_TOKEN)],
        ),
        (
            "coreos+coreos-overlay__coreos-base_oem-vmware_files_cloud-config.yml",
            vec![],
        ),
        (
            // line 39: `id: @@OEM_ID@@`.
            "coreos+coreos-overlay__coreos-base_oem-ec2-compat_files_cloud-config.yml",
            vec![(E, 39, NOT_A_TOKEN)],
        ),
        ("coreos+fleet__functional_user-data", vec![]),
        (
            // line 117: `reboot-strategy: ${coreos_reboot_strategy}`.
            "samsung-cnct+kraken-lib__terraform_local_templates_etcd.yaml.tpl",
            vec![(E, 117, "invalid value ${coreos_reboot_strategy}")],
        ),
    ])
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus")
}

struct Source {
    file: String,
    repo: String,
    commit: String,
    note: String,
}

fn sources() -> Vec<Source> {
    let path = corpus_dir().join("SOURCES.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("file\trepo\tpath\tcommit\tnotes"),
        "SOURCES.tsv header"
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(
                cols.len(),
                5,
                "SOURCES.tsv line {}: 5 columns expected",
                i + 2
            );
            assert!(
                cols[3].len() == 40 && cols[3].bytes().all(|b| b.is_ascii_hexdigit()),
                "SOURCES.tsv line {}: commit {:?} is not 40 hex digits",
                i + 2,
                cols[3]
            );
            Source {
                file: cols[0].into(),
                repo: cols[1].into(),
                commit: cols[3].into(),
                note: cols[4].into(),
            }
        })
        .collect()
}

fn read(name: &str) -> String {
    let path = corpus_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn every_corpus_file_is_listed_with_provenance_and_expectations() {
    let sources = sources();
    let expected = expected();
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SOURCES.tsv")
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = sources.iter().map(|s| s.file.clone()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "files on disk vs SOURCES.tsv");
    let tabled: Vec<String> = expected.keys().map(|k| k.to_string()).collect();
    assert_eq!(tabled, listed, "expectation table vs SOURCES.tsv");
    for s in &sources {
        assert!(
            s.file.starts_with(&s.repo.replace('/', "+")),
            "{}: name does not start with its repo",
            s.file
        );
        assert!(!s.commit.is_empty());
    }
}

#[test]
fn corpus_findings_match_the_table() {
    let expected = expected();
    for source in sources() {
        let text = read(&source.file);
        let report = validate(&text);
        let got: Vec<(Kind, usize, &str)> = report
            .findings
            .iter()
            .map(|f| (f.kind, f.line, f.message.as_str()))
            .collect();
        assert_eq!(got, expected[source.file.as_str()], "{}", source.file);
        // What SOURCES.tsv says about the file holds.
        if source.note.starts_with("valid;") || source.note.starts_with("valid YAML;") {
            let errors: Vec<_> = got.iter().filter(|f| f.0 == E).collect();
            if source.note.contains("'invalid value' error") {
                assert_eq!(errors.len(), 1, "{}: one invalid value error", source.file);
                assert!(
                    errors[0].2.starts_with("invalid value ${"),
                    "{}",
                    source.file
                );
            } else {
                assert!(
                    errors.is_empty(),
                    "{}: note says valid: {errors:?}",
                    source.file
                );
            }
        } else {
            assert!(
                source.note.starts_with("INVALID YAML"),
                "{}: unknown note",
                source.file
            );
            assert_eq!(got.len(), 1, "{}: a single YAML error", source.file);
            assert_eq!(got[0].0, E, "{}", source.file);
        }
    }
}

#[test]
fn typed_parser_agrees_with_the_validator() {
    for source in sources() {
        let text = read(&source.file);
        let report = validate(&text);
        let yaml_error = report
            .findings
            .iter()
            .find(|f| f.kind == E && !f.message.starts_with("invalid value"));
        match (parse_user_data(&text), yaml_error) {
            (Ok(UserData::CloudConfig(_)), None) => {}
            (Err(e), Some(f)) => assert_eq!(
                (e.line, e.message.as_str()),
                (f.line, f.message.as_str()),
                "{}",
                source.file
            ),
            (other, f) => panic!("{}: parser {other:?} but validator {f:?}", source.file),
        }
    }
}

/// Filling the templates' placeholders gives files without errors: the YAML errors came only from the placeholders.
#[test]
fn filled_templates_validate() {
    let filled = |text: &str| {
        let mut out = text.to_string();
        for (open, close) in [("{{", "}}"), ("@@", "@@"), ("${", "}")] {
            while let Some(start) = out.find(open) {
                let end = out[start + open.len()..]
                    .find(close)
                    .map(|e| start + open.len() + e + close.len())
                    .unwrap();
                out.replace_range(start..end, if open == "${" { "off" } else { "filled" });
            }
        }
        out
    };
    for source in sources() {
        let text = filled(&read(&source.file));
        let report = validate(&text);
        assert!(
            !report.has_errors(),
            "{} filled: {:?}",
            source.file,
            report.findings
        );
        assert!(
            matches!(parse_user_data(&text), Ok(UserData::CloudConfig(_))),
            "{}",
            source.file
        );
    }
}

#[test]
fn corpus_models() {
    let parse = |name: &str| match parse_user_data(&read(name)) {
        Ok(UserData::CloudConfig(c)) => c,
        other => panic!("{name}: {other:?}"),
    };
    let worker = parse("poseidon+matchbox__examples_etcd-large_cloud_worker.yaml");
    assert_eq!(
        worker.coreos.etcd2.get("proxy").map(String::as_str),
        Some("on")
    );
    let fleet = parse("jimmycuadra+rust-fleet__user-data");
    assert!(
        fleet.coreos.etcd.contains_key("peer_addr"),
        "{:?}",
        fleet.coreos.etcd
    );
    assert!(fleet.coreos.units.iter().any(|u| !u.drop_ins.is_empty()));
    let functional = parse("coreos+fleet__functional_user-data");
    assert_eq!(
        functional.coreos.update.reboot_strategy.as_deref(),
        Some("off")
    );
    let kraken = parse("samsung-cnct+kraken-lib__terraform_local_templates_etcd.yaml.tpl");
    assert!(kraken.coreos.units.iter().any(|u| u.enable));
    let vmware = parse("coreos+coreos-overlay__coreos-base_oem-vmware_files_cloud-config.yml");
    assert!(
        vmware.coreos.oem.contains_key("bug_report_url"),
        "{:?}",
        vmware.coreos.oem
    );
    assert!(vmware.coreos.oem.contains_key("version_id"));
    let deis = parse("deis+deis__contrib_coreos_user-data.example");
    assert!(!deis.write_files.is_empty());
    for f in &deis.write_files {
        f.decoded_content().unwrap();
        f.mode().unwrap();
    }
}

/// Substituting addresses keeps valid files valid and leaves no `$public_ipv4`-style name behind.
#[test]
fn substituted_corpus_stays_valid() {
    let addrs = Addresses {
        public_ipv4: Some("192.0.2.10".parse().unwrap()),
        private_ipv4: Some("10.0.0.10".parse().unwrap()),
        public_ipv6: Some("2001:db8::10".parse().unwrap()),
        private_ipv6: Some("fd00::10".parse().unwrap()),
    };
    for source in sources() {
        let text = read(&source.file);
        let before = validate(&text);
        let out = substitute(&text, &addrs);
        for v in cairn_cloudconfig::VARIABLES {
            assert!(!out.contains(v), "{}: {v} left", source.file);
        }
        assert_eq!(
            validate(&out).has_errors(),
            before.has_errors(),
            "{}",
            source.file
        );
    }
    let vagrant = substitute(&read("coreos+coreos-vagrant__user-data.sample"), &addrs);
    match parse_user_data(&vagrant) {
        Ok(UserData::CloudConfig(c)) => {
            assert!(
                c.coreos.etcd2.values().any(|v| v.contains("10.0.0.10")),
                "{:?}",
                c.coreos.etcd2
            );
        }
        other => panic!("{other:?}"),
    }
}
