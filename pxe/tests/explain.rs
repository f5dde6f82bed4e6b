//! `GET /explain` on the operators' listener of a real server: JSON by default, text with
//! `format=text` or `Accept: text/plain`, 400 naming `mac` when it is missing or not a MAC, not
//! served on the machines' listener. The explanation's "next netboot" is what the server then
//! really answers the machine's netboot with, and explaining changes nothing.

use std::net::SocketAddr;

mod common;
use common::{get, image, TestServer};

const MAC: &str = "52:54:00:00:0f:01";

fn lab(dir: &std::path::Path) -> std::path::PathBuf {
    let img = image(dir, "img", "3.0", 1000);
    std::fs::write(img.join("disk.raw"), b"disk").unwrap();
    std::fs::write(
        dir.join("node.j2"),
        "#cloud-config\nhostname: {{ metadata.name }}\n",
    )
    .unwrap();
    let config = dir.join("lab.yaml");
    std::fs::write(
        &config,
        "profiles:\n  - name: diskless\n    image: img\n  - name: installed\n    image: img\n    boot: install\n    cloud_config: node.j2\ngroups:\n  - name: default\n    profile: diskless\n  - name: rack1\n    profile: installed\n    selector: {rack: r1}\n    metadata: {name: r1-node}\n",
    )
    .unwrap();
    config
}

fn explain(admin: SocketAddr, query: &str, headers: &[(&str, &str)]) -> common::Reply {
    get(&format!("http://{admin}/explain?{query}"), headers)
}

#[test]
fn explain_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = lab(dir.path());
    let s = TestServer::start(&config, false, dir.path());
    let admin = s
        .server()
        .local_addrs()
        .admin
        .expect("an operators' listener");
    let q = format!("mac={}&rack=r1", MAC.replace(':', "-"));

    // never netbooted: no record, the installer's first attempt
    let r = explain(admin, &format!("{q}&format=text"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let t = r.text();
    assert!(
        t.contains("  rack1 (line 11, profile installed): MATCHES, 1 of 1 selector(s) match\n"),
        "{t}"
    );
    assert!(t.contains("winner: rack1 (1 selector(s))"), "{t}");
    assert!(t.contains("record: none"), "{t}");
    assert!(
        t.contains("next netboot: the installer of img-3.0 (attempt 1 of 3)\n"),
        "{t}"
    );

    // the machine netboots: the installer, attempt 1
    let boot = get(&s.url(&format!("/ipxe?{q}")), &[]);
    assert!(boot.text().contains("(attempt 1)"), "{}", boot.text());

    // JSON: the record, and the next netboot
    let r = explain(admin, &q, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["verdict"]["outcome"], "won");
    assert_eq!(j["verdict"]["group"], "rack1");
    assert_eq!(j["facts"]["mac"], MAC);
    let groups: Vec<(&str, bool, u64)> = j["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap(),
                g["matches"].as_bool().unwrap(),
                g["matched"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(groups, [("default", true, 0), ("rack1", true, 1)]);
    assert_eq!(j["profile"]["boot"], "install");
    assert_eq!(j["image"]["version"], "3.0");
    assert_eq!(j["cloud_config"]["template"], "node.j2");
    assert_eq!(j["cloud_config"]["renders"], true);
    assert_eq!(j["record"]["phase"]["phase"], "installing");
    assert_eq!(j["record"]["phase"]["attempt"], 1);
    assert_eq!(j["next_netboot"]["answer"], "installer");
    assert_eq!(j["next_netboot"]["attempt"], 2);
    assert_eq!(j["rollout"]["recorded"], false);

    // explaining changes nothing; the prediction is what the server then serves
    let again = explain(admin, &q, &[]);
    assert_eq!(again.body, r.body);
    let boot = get(&s.url(&format!("/ipxe?{q}")), &[]);
    assert!(boot.text().contains("(attempt 2)"), "{}", boot.text());

    // Accept: text/plain
    let r = explain(admin, &q, &[("Accept", "text/plain")]);
    assert_eq!(r.status, 200);
    let t = r.text();
    assert!(t.contains("record: installing (attempt 2 of 3)"), "{t}");
    assert!(
        t.contains("next netboot: the installer of img-3.0 (attempt 3 of 3)\n"),
        "{t}"
    );

    // without the rack fact: the default group, the diskless image
    let r = explain(admin, &format!("mac={MAC}&format=text"), &[]);
    let t = r.text();
    assert!(
        t.contains("    rack=r1: no (the machine sent no rack)\n"),
        "{t}"
    );
    assert!(
        t.contains("next netboot: the diskless image img-3.0 from the network (a trial until the machine reports healthy)\n"),
        "{t}"
    );

    // bad requests name the parameter
    for (query, want) in [
        ("rack=r1", "mac: missing"),
        ("mac=52:54:00", "mac: \"52:54:00\" is not a MAC address"),
        (
            "mac=zz-54-00-00-0f-01",
            "mac: \"zz-54-00-00-0f-01\" is not a MAC address",
        ),
        (
            "mac=52:54:00:00:0f:01&format=xml",
            "format: \"xml\": expected text or json",
        ),
    ] {
        let r = explain(admin, query, &[]);
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        assert!(r.text().contains(want), "{query}: {}", r.text());
    }

    // not on the machines' listener
    let r = get(&s.url(&format!("/explain?{q}")), &[]);
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn explain_update_channel_and_rollout_wave() {
    use cairn_formats::channel::{keygen, rollout::MACHINE_HEADER, Manifest, SecretKey};
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("keys")).unwrap();
    let key = SecretKey::load(&keys.secret).unwrap();
    common::signed_image(dir.path(), "v1", "1.0.0", &key);
    common::signed_image(dir.path(), "v2", "2.0.0", &key);
    let config = dir.path().join("inv.yaml");
    std::fs::write(
        &config,
        "profiles:\n  - name: p\n    image: v1\ngroups:\n  - name: canary\n    profile: p\n    selector:\n      mac: 52:54:00:00:0b:01\n  - name: rest\n    profile: p\nupdates:\n  - v2\nrollouts:\n  - channel: lab\n    version: 2.0.0\n    waves:\n      - name: canary\n        groups: [canary]\n        soak: 1h\n      - name: everyone\n        percent: 100\n",
    )
    .unwrap();
    let s = TestServer::start(&config, false, dir.path());
    let admin = s.server().local_addrs().admin.unwrap();
    let offered = |mac: &str| {
        let r = get(&s.url("/update/v1/lab/manifest"), &[(MACHINE_HEADER, mac)]);
        assert_eq!(r.status, 200, "{}", r.text());
        Manifest::parse(&r.body).unwrap().version
    };
    // (MAC, rollout line, the version the channel then really gives it)
    let table = [
        (
            "52:54:00:00:0b:01",
            "rollout: rollout of 2.0.0 on \"lab\": the machine is in wave 1 (\"canary\"); offered 2.0.0 now\n",
            "2.0.0",
        ),
        (
            "52:54:00:00:0b:02",
            "rollout: rollout of 2.0.0 on \"lab\": the machine is in none of its group waves, and in no percent wave until it reports its machine id; held back:",
            "1.0.0",
        ),
    ];
    for (mac, want, version) in table {
        let r = explain(admin, &format!("mac={mac}&format=text"), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.text();
        assert!(
            t.contains("update: channel \"lab\" offers img 2.0.0 at /update/v1/lab/ (this profile boots 1.0.0)\n"),
            "{t}"
        );
        assert!(t.contains(want), "wanted {want:?} in\n{t}");
        assert_eq!(offered(mac), version, "{mac}");
    }
}
