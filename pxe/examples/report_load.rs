//! Load generator for the machines' reports to `cairn serve` (`POST /lifecycle/v1/report`), for
//! `bench/lifecycle-reports.sh`: N diskless machines (MACs `52:54:00:xx:xx:xx`) netboot
//! (`GET /ipxe?mac=..&platform=efi`, which makes their records) and then report `booted` (from
//! RAM) and `healthy`, as `cairn-update health` does, from C concurrent clients (keep-alive
//! connections, one per client). Prints what it sent, requests/s (wall), p50/p99/max latency and
//! the errors (any non-200 answer or transport error; the run exits 1 if there was one).
//!
//! ```text
//! cargo run --release -p cairn-pxe --example report_load -- \
//!     --url http://127.0.0.1:8080 --image img --version 1.0.0 [--machines 10000] \
//!     [--concurrency 32] [--phase all|netboot|report]
//! ```
//!
//! `--phase netboot` only netboots, `--phase report` only reports (the machines must have
//! netbooted in an earlier run): the script runs them apart to measure the server between them.
//!
//! `report_load --make-image DIR --image NAME --version VERSION [--channel CHANNEL]` writes a
//! small image folder instead (manifest, kernel, initrd, root image) and, with `--channel`, a
//! signed update bundle on that channel (a fresh key in `DIR/keys`), so that an inventory can
//! run a rollout of the version: every `healthy` report then counts in it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_formats::lifecycle::{BootSource, Event, Report, REPORT_PATH};

/// At most this many machines (the MACs' last three bytes).
const MAX_MACHINES: usize = 1 << 24;
/// At most this many clients.
const MAX_CONCURRENCY: usize = 4096;
/// The first few error messages kept for the summary.
const ERRORS_SHOWN: usize = 5;

struct Args {
    url: String,
    image: String,
    version: String,
    machines: usize,
    concurrency: usize,
    netboot: bool,
    report: bool,
    make_image: Option<std::path::PathBuf>,
    channel: Option<String>,
}

fn usage() -> &'static str {
    "usage: report_load --url http://HOST:PORT --image NAME --version VERSION \
     [--machines N (10000)] [--concurrency C (32)] [--phase all|netboot|report]\n   \
     or: report_load --make-image DIR --image NAME --version VERSION [--channel CHANNEL]"
}

/// Writes image folder `dir` of `name` `version` (what `cairn serve` reads of a `boot: ram`
/// image, small: the cost measured is the records'), with a signed bundle on `channel` if given.
fn make_image(
    dir: &std::path::Path,
    name: &str,
    version: &str,
    channel: Option<&str>,
) -> anyhow::Result<()> {
    use cairn_formats::channel::{keygen, write_bundle, BundleInput, SecretKey};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let manifest =
        serde_json::to_string(&cairn_formats::image_dir::Manifest::named(name, version))?;
    let files: [(&str, &[u8]); 5] = [
        ("manifest.json", manifest.as_bytes()),
        ("vmlinuz", &[0x4b; 4096]),
        ("pxe-initrd.img", &[0x49; 4096]),
        ("initrd.img", &[0x69; 1024]),
        ("rootfs.squashfs", &[0x52; 8192]),
    ];
    for (f, data) in files {
        let p = dir.join(f);
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    }
    let Some(channel) = channel else {
        return Ok(());
    };
    let keys =
        keygen(&dir.join("keys")).with_context(|| format!("a signing key in {}", dir.display()))?;
    let key = SecretKey::load(&keys.secret)
        .with_context(|| format!("reading {}", keys.secret.display()))?;
    write_bundle(
        dir,
        &BundleInput {
            name,
            version,
            channel,
            rootfs: &dir.join("rootfs.squashfs"),
            kernel: &dir.join("vmlinuz"),
            initrd: &dir.join("initrd.img"),
            created: cairn_pxe::lifecycle::now(),
            validity_secs: 3600 * 24 * 365,
            verity: None,
        },
        &key,
    )
    .with_context(|| format!("the update bundle of {}", dir.display()))?;
    Ok(())
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: String::new(),
        image: String::new(),
        version: String::new(),
        machines: 10_000,
        concurrency: 32,
        netboot: true,
        report: true,
        make_image: None,
        channel: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{}", usage());
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag}: a value is missing; {}", usage()))?;
        match flag.as_str() {
            "--url" => a.url = value.trim_end_matches('/').to_owned(),
            "--image" => a.image = value,
            "--version" => a.version = value,
            "--machines" => {
                a.machines = value
                    .parse()
                    .with_context(|| format!("--machines {value:?}"))?
            }
            "--concurrency" => {
                a.concurrency = value
                    .parse()
                    .with_context(|| format!("--concurrency {value:?}"))?
            }
            "--make-image" => a.make_image = Some(value.into()),
            "--channel" => a.channel = Some(value),
            "--phase" => {
                (a.netboot, a.report) = match value.as_str() {
                    "all" => (true, true),
                    "netboot" => (true, false),
                    "report" => (false, true),
                    _ => bail!("--phase {value:?}: expected all, netboot or report"),
                }
            }
            _ => bail!("unknown argument {flag:?}; {}", usage()),
        }
    }
    if a.image.is_empty() || a.version.is_empty() || (a.url.is_empty() && a.make_image.is_none()) {
        bail!("--url, --image and --version are needed; {}", usage());
    }
    if a.machines == 0 || a.machines > MAX_MACHINES {
        bail!("--machines {}: expected 1..={MAX_MACHINES}", a.machines);
    }
    if a.concurrency == 0 || a.concurrency > MAX_CONCURRENCY {
        bail!(
            "--concurrency {}: expected 1..={MAX_CONCURRENCY}",
            a.concurrency
        );
    }
    Ok(a)
}

/// Machine `i`'s MAC (lower case, colons).
fn mac(i: usize) -> String {
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

/// What one phase's clients saw.
#[derive(Default)]
struct Tally {
    /// Latency of every request that was answered 200, in microseconds.
    latencies: Vec<u64>,
    errors: usize,
    first_errors: Vec<String>,
    bytes_sent: u64,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_errors.len() < ERRORS_SHOWN {
            self.first_errors.push(what);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        for e in other.first_errors {
            if self.first_errors.len() < ERRORS_SHOWN {
                self.first_errors.push(e);
            }
        }
        self.bytes_sent += other.bytes_sent;
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // loopback: never through a proxy from the environment
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections(1)
        .max_idle_connections_per_host(1)
        .build()
        .into()
}

/// One request; `Ok(latency)` when the answer was 200 and `check` accepts its body.
fn request(
    req: impl FnOnce() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    check: impl FnOnce(&str) -> bool,
    what: &str,
) -> Result<Duration, String> {
    let t = Instant::now();
    let mut resp = req().map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| format!("{what}: reading the answer: {e}"))?;
    let took = t.elapsed();
    if status != 200 {
        return Err(format!("{what}: {status} {}", body.trim()));
    }
    if !check(&body) {
        return Err(format!("{what}: unexpected answer {:?}", body.trim()));
    }
    Ok(took)
}

/// Runs `work(agent, machine, tally)` for every machine from `clients` threads (machines are
/// handed out in order from a shared counter); returns the tally and the wall time.
fn run_phase(
    machines: usize,
    clients: usize,
    work: impl Fn(&ureq::Agent, usize, &mut Tally) + Sync,
) -> (Tally, Duration) {
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Tally::default());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let agent = agent();
                let mut mine = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= machines {
                        break;
                    }
                    work(&agent, i, &mut mine);
                }
                total.lock().unwrap_or_else(|p| p.into_inner()).merge(mine);
            });
        }
    });
    let wall = t.elapsed();
    (total.into_inner().unwrap_or_else(|p| p.into_inner()), wall)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// Prints one phase's line (machine-readable `key=value` words) and returns its error count.
fn summary(phase: &str, mut t: Tally, wall: Duration) -> usize {
    t.latencies.sort_unstable();
    let ok = t.latencies.len();
    let secs = wall.as_secs_f64();
    println!(
        "phase={phase} requests={} ok={ok} errors={} wall_s={secs:.3} per_s={:.0} \
         p50_ms={:.2} p99_ms={:.2} max_ms={:.2} sent_bytes={}",
        ok + t.errors,
        t.errors,
        ok as f64 / secs,
        percentile(&t.latencies, 0.50),
        percentile(&t.latencies, 0.99),
        percentile(&t.latencies, 1.0),
        t.bytes_sent,
    );
    for e in &t.first_errors {
        eprintln!("report_load: {phase}: {e}");
    }
    t.errors
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    if let Some(dir) = &a.make_image {
        return make_image(dir, &a.image, &a.version, a.channel.as_deref());
    }
    println!(
        "machines={} first_mac={} last_mac={} concurrency={} image={} version={} url={}",
        a.machines,
        mac(0),
        mac(a.machines - 1),
        a.concurrency,
        a.image,
        a.version,
        a.url
    );
    let mut errors = 0;
    if a.netboot {
        let (t, wall) = run_phase(a.machines, a.concurrency, |agent, i, t| {
            let m = mac(i);
            let url = format!("{}/ipxe?mac={}&platform=efi", a.url, m.replace(':', "-"));
            // a diskless script names where to report: the machine's record was made
            let r = request(
                || agent.get(&url).call(),
                |b| b.contains("cairn.report="),
                &format!("GET /ipxe {m}"),
            );
            match r {
                Ok(d) => t.latencies.push(d.as_micros() as u64),
                Err(e) => t.error(e),
            }
        });
        errors += summary("netboot", t, wall);
    }
    if a.report {
        let url = format!("{}{REPORT_PATH}", a.url);
        let (t, wall) = run_phase(a.machines, a.concurrency, |agent, i, t| {
            let m = mac(i);
            let events = [
                Event::Booted {
                    image: a.image.clone(),
                    version: a.version.clone(),
                    source: BootSource::Ram,
                },
                Event::Healthy {
                    version: a.version.clone(),
                },
            ];
            for event in events {
                let body = Report {
                    mac: m.clone(),
                    machine_id: Some(format!("{:032x}", i + 1)),
                    event,
                }
                .to_json();
                t.bytes_sent += body.len() as u64;
                let r = request(
                    || {
                        agent
                            .post(&url)
                            .header("content-type", "application/json")
                            .send(body.as_str())
                    },
                    |b| b.trim() == "ok",
                    &format!("POST report {m}"),
                );
                match r {
                    Ok(d) => t.latencies.push(d.as_micros() as u64),
                    Err(e) => t.error(e),
                }
            }
        });
        errors += summary("report", t, wall);
    }
    if errors > 0 {
        bail!("{errors} request(s) failed");
    }
    Ok(())
}
