//! The real signal path: a server started with `reload_on_sighup` reloads its inventory when this process
//! gets SIGHUP (its own test binary, so no other test sees the signal), and keeps the old one when the
//! new file is invalid.

mod common;

use std::time::{Duration, Instant};

use cairn_pxe::{Server, ServerConfig};
use common::{get, image};

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_the_inventory() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path(), "img", "1", 10);
    let config = dir.path().join("inv.yaml");
    let inv = |rack: &str| {
        format!("profiles:\n  - name: p\n    image: img\ngroups:\n  - name: g\n    profile: p\n    selector: {{rack: {rack}}}\n")
    };
    std::fs::write(&config, inv("a")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(Server::start(ServerConfig {
            config: config.clone(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            tftp_addr: None,
            ipxe_dir: dir.path().into(),
            public_url: None,
            reload_on_sighup: true,
            state_dir: dir.path().join("state"),
            proxy_dhcp: None,
            store: None,
            admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        }))
        .unwrap();
    let url = |rack: &str| format!("http://{}/metadata?rack={rack}", server.local_addrs().http);
    assert_eq!(get(&url("a"), &[]).status, 200);
    std::fs::write(&config, inv("b")).unwrap();
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).unwrap();
    wait_for("the reload to rack b", || get(&url("b"), &[]).status == 200);
    assert_eq!(get(&url("a"), &[]).status, 404);
    // An invalid file: logged, old inventory kept.
    std::fs::write(&config, "profiles: [\n").unwrap();
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(&url("b"), &[]).status, 200);
    // And a later valid file is picked up again.
    std::fs::write(&config, inv("c")).unwrap();
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).unwrap();
    wait_for("the reload to rack c", || get(&url("c"), &[]).status == 200);
    rt.block_on(server.shutdown()).unwrap();
}
