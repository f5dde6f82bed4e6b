//! Fuzz target: the `cairn serve` inventory (`Inventory::parse`: YAML schema, names, selectors, templates,
//! each group's cloud-config rendered and validated), then what a request does with it: the facts of a
//! query string (`Facts::from_query`), group selection, template rendering and the iPXE scripts.
//!
//! Input: the inventory text, optionally followed by a NUL byte and a request's query string. The image
//! folders and the template the examples name exist in a fixture folder made once per process
//! (`examples/lab.yaml` loads as it is).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use cairn_pxe::{ipxe, Facts, Inventory, RenderContext};
use libfuzzer_sys::fuzz_target;

const TEMPLATE: &str = include_str!("../../examples/cloud/node.yaml.j2");

/// `FIXTURE/sub/inventory.yaml`: `../out/default` and `img` are image folders, `cloud/node.yaml.j2` the
/// example template.
fn inventory_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cairn-fuzz-inventory-{}", std::process::id()));
        for (image, name) in [("out/default", "default"), ("sub/img", "img")] {
            let d = dir.join(image);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("manifest.json"),
                serde_json::to_string(&cairn_formats::image_dir::Manifest::named(name, "1.0"))
                    .unwrap(),
            )
            .unwrap();
            std::fs::write(d.join("vmlinuz"), b"kernel").unwrap();
            std::fs::write(d.join("pxe-initrd.img"), b"initrd").unwrap();
        }
        std::fs::create_dir_all(dir.join("sub/cloud")).unwrap();
        std::fs::write(dir.join("sub/cloud/node.yaml.j2"), TEMPLATE).unwrap();
        dir.join("sub/inventory.yaml")
    })
}

fuzz_target!(|data: &[u8]| {
    let (text, query) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let inv = match Inventory::parse(inventory_path(), text) {
        Ok(inv) => inv,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let Some(query) = query.and_then(|q| std::str::from_utf8(q).ok()) else {
        return;
    };
    let facts = Facts::from_query(query);
    let _ = facts.describe();
    let _ = facts.machine_key("192.0.2.9");
    let _ = ipxe::facts_query(&facts);
    let _ = ipxe::no_match_script(&facts, "http://192.0.2.1:8080/boot.ipxe");
    let Some(group) = inv.select(&facts) else {
        return;
    };
    assert!(group.matches(&facts));
    // The cloud-config URL carries the facts as `facts_query` writes them: the same group must win.
    let again = Facts::from_query(&ipxe::facts_query(&facts));
    assert_eq!(
        inv.select(&again).map(|g| &g.name),
        Some(&group.name),
        "facts {facts:?} re-read from their query as {again:?}"
    );
    let profile = inv.profile_of(group);
    let _ = profile.cmdline_args();
    let endpoints = ipxe::Endpoints {
        public_url: "http://192.0.2.1:8080".into(),
        tftp: Some("192.0.2.1:69".into()),
    };
    let _ = ipxe::machine_script(&inv, group, &facts, &endpoints);
    let ctx = RenderContext {
        facts,
        ip: "192.0.2.9".into(),
        public_url: "http://192.0.2.1:8080".into(),
        etcd_discovery: None,
    };
    if let Ok(text) = inv.render_cloud_config(group, &ctx) {
        let _ = cairn_cloudconfig::validate(&text);
    }
});
