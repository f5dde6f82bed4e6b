//! Benchmark (ignored; run with `cargo test -p cairn-updater --release
//! --test bench -- --ignored --nocapture`): slot write throughput of the
//! agent (write, fsync, cache drop, read back and hash) against
//! `dd conv=fsync,notrunc` of the same bytes to the same kind of file, and
//! against dd followed by `sha256sum` of the read-back (the same work as
//! the agent). Prints MiB/s and ratios; asserts nothing about speed.

mod common;

use std::fs;
use std::process::Command;
use std::time::Instant;

use cairn_formats::channel::TrustedKeys;
use cairn_updater::agent::{Agent, Paths, SlotDevices};
use cairn_updater::Config;

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn drop_caches() {
    // best effort (root only); makes read-backs hit the disk
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

#[test]
#[ignore = "benchmark"]
fn slot_write_vs_dd() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .try_init();
    let size: usize = std::env::var("CAIRN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
        << 20;
    let dir = std::env::var("CAIRN_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let t = tempfile::tempdir_in(dir).unwrap();
    let src = t.path().join("rootfs.squashfs");
    fs::write(&src, common::bytes(5, size)).unwrap();
    let sha = common::sha(&fs::read(&src).unwrap());
    let slot = t.path().join("slot");
    let dd_slot = t.path().join("dd-slot");
    for p in [&slot, &dd_slot] {
        fs::write(p, vec![0u8; size]).unwrap();
    }
    let paths = Paths {
        slots: SlotDevices::Fixed {
            a: slot.clone(),
            b: slot.clone(),
        },
        ..Paths::system()
    };
    let agent = Agent::with(paths, Config::default(), TrustedKeys::default());
    let runs = 3;
    let (mut best_agent, mut best_dd, mut best_dd_sum) = (f64::MAX, f64::MAX, f64::MAX);
    let mut best_write = f64::MAX;
    for _ in 0..runs {
        drop_caches();
        let s = Instant::now();
        let (w, _) = agent.write_slot(&src, &slot, size as u64, &sha).unwrap();
        best_write = best_write.min(w);
        best_agent = best_agent.min(s.elapsed().as_secs_f64());

        drop_caches();
        let s = Instant::now();
        let st = Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", dd_slot.display()))
            .args(["bs=1M", "conv=fsync,notrunc", "status=none"])
            .status()
            .expect("dd (Debian package coreutils)");
        assert!(st.success());
        let dd = s.elapsed().as_secs_f64();
        best_dd = best_dd.min(dd);
        drop_caches();
        let s2 = Instant::now();
        let out = Command::new("sha256sum")
            .arg(&dd_slot)
            .output()
            .expect("sha256sum (Debian package coreutils)");
        assert!(out.status.success());
        best_dd_sum = best_dd_sum.min(dd + s2.elapsed().as_secs_f64());
    }
    let mb = size as u64;
    println!(
        "slot write, {} MiB, best of {runs}: agent (write+fsync+read back+hash) {:.0} MiB/s; dd conv=fsync {:.0} MiB/s; dd + sha256sum {:.0} MiB/s",
        size >> 20,
        mib_s(mb, best_agent),
        mib_s(mb, best_dd),
        mib_s(mb, best_dd_sum)
    );
    println!(
        "agent write phase alone (write+fsync) {:.0} MiB/s: ratio write/dd = {:.2}",
        mib_s(mb, best_write),
        best_dd / best_write
    );
    println!(
        "ratio agent/dd = {:.2}; agent/(dd + sha256sum) = {:.2}",
        best_dd / best_agent,
        best_dd_sum / best_agent
    );
}
