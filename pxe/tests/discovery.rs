//! `cairn serve` with a group that says `etcd_cluster: {size: 3}`: the server makes the group a
//! discovery token once, renders its URL into every member's cloud-config, answers the discovery
//! protocol under `/discovery`, and keeps the same token across a restart on the same state dir.

use std::path::Path;

use cairn_pxe::{Server, ServerConfig};

mod common;
use common::{get, image};

const TEMPLATE: &str = "#cloud-config\ncoreos:\n  etcd2:\n    name: {{ metadata.name }}\n    discovery: {{ etcd_discovery }}\n    initial-advertise-peer-urls: http://$private_ipv4:2380\n";

fn inventory(dir: &Path, size: u32) -> std::path::PathBuf {
    image(dir, "img", "1", 10);
    std::fs::write(dir.join("etcd.yaml.j2"), TEMPLATE).unwrap();
    let inv = format!(
        "profiles:\n  - name: p\n    image: img\n    cloud_config: etcd.yaml.j2\ngroups:\n  - name: etcd\n    profile: p\n    selector: {{rack: r1}}\n    metadata: {{name: member}}\n    etcd_cluster: {{size: {size}}}\n"
    );
    let path = dir.join("inv.yaml");
    std::fs::write(&path, inv).unwrap();
    path
}

fn start(rt: &tokio::runtime::Runtime, config: &Path, state: &Path) -> anyhow::Result<Server> {
    rt.block_on(Server::start(ServerConfig {
        config: config.to_path_buf(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        tftp_addr: None,
        ipxe_dir: config.parent().unwrap().into(),
        public_url: None,
        reload_on_sighup: false,
        state_dir: state.to_path_buf(),
        proxy_dhcp: None,
        store: None,
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
    }))
}

/// The discovery URL in a rendered cloud-config.
fn discovery_url(body: &str) -> String {
    body.lines()
        .find_map(|l| l.trim().strip_prefix("discovery: "))
        .unwrap_or_else(|| panic!("no discovery line in:\n{body}"))
        .to_string()
}

#[test]
fn group_gets_one_discovery_token_that_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = inventory(dir.path(), 3);
    let state = dir.path().join("state");
    let rt = tokio::runtime::Runtime::new().unwrap();

    let server = start(&rt, &config, &state).unwrap();
    let base = format!("http://{}", server.local_addrs().http);
    let a = get(
        &format!("{base}/cloud-config?rack=r1&mac=52:54:00:00:00:01"),
        &[],
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let b = get(
        &format!("{base}/cloud-config?rack=r1&mac=52:54:00:00:00:02"),
        &[],
    );
    let url = discovery_url(&a.text());
    assert_eq!(
        url,
        discovery_url(&b.text()),
        "one token for the whole group"
    );
    let token = url
        .strip_prefix(&format!("{base}/discovery/"))
        .unwrap_or_else(|| panic!("{url} is not under {base}/discovery/"));
    assert_eq!(token.len(), 32, "{token}");
    assert!(token.bytes().all(|c| c.is_ascii_hexdigit()), "{token}");

    // the discovery protocol answers at that URL, as etcd's client reads it
    let size = get(&format!("{url}/_config/size"), &[]);
    assert_eq!(size.status, 200);
    let node: serde_json::Value = serde_json::from_str(&size.text()).unwrap();
    assert_eq!(node["node"]["value"], "3", "{node}");
    let missing = get(&format!("{base}/discovery/{}", "f".repeat(32)), &[]);
    assert_eq!(missing.status, 404);
    rt.block_on(server.shutdown()).unwrap();

    // restarted on the same state dir: the same token
    let server = start(&rt, &config, &state).unwrap();
    let base2 = format!("http://{}", server.local_addrs().http);
    let c = get(&format!("{base2}/cloud-config?rack=r1"), &[]);
    assert_eq!(
        discovery_url(&c.text()),
        format!("{base2}/discovery/{token}")
    );
    rt.block_on(server.shutdown()).unwrap();

    // the group now asks for another size: refused, naming the group and the file
    let config = inventory(dir.path(), 5);
    let err = start(&rt, &config, &state)
        .err()
        .expect("size change refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("etcd_cluster") && msg.contains("inv.yaml") && msg.contains("\"etcd\""),
        "{msg}"
    );
}

#[test]
fn etcd_cluster_needs_a_template_that_uses_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let config = inventory(dir.path(), 3);
    std::fs::write(
        dir.path().join("etcd.yaml.j2"),
        "#cloud-config\nhostname: x\n",
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = start(&rt, &config, &dir.path().join("state"))
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("groups[0].etcd_cluster") && msg.contains("etcd_discovery"),
        "{msg}"
    );
}
