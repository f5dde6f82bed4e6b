//! cairn-etcd's throughput against a running etcd, and one-shot commands that do what `etcdctl put`
//! and `etcdctl get --prefix` do, so `etcd/bench/vs-etcdctl.sh` can time both the same way.
//!
//! ```text
//! bench run --endpoint URL [--puts N] [--concurrency C] [--keys K]
//! bench put --endpoint URL KEY VALUE            # one put, like `etcdctl put KEY VALUE`
//! bench get-prefix --endpoint URL PREFIX        # keys and values, one per line, like etcdctl
//! ```

use std::io::Write as _;
use std::time::{Duration, Instant};

use cairn_etcd::{Client, DeleteOptions, GetOptions, PutOptions};

fn usage() -> ! {
    eprintln!(
        "usage: bench run --endpoint URL [--puts N] [--concurrency C] [--keys K]\n       \
         bench put --endpoint URL KEY VALUE\n       bench get-prefix --endpoint URL PREFIX"
    );
    std::process::exit(2)
}

struct Args {
    cmd: String,
    endpoint: String,
    puts: usize,
    concurrency: usize,
    keys: usize,
    rest: Vec<String>,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_else(|| usage());
    let mut a = Args {
        cmd,
        endpoint: "http://127.0.0.1:2379".into(),
        puts: 2000,
        concurrency: 16,
        keys: 10_000,
        rest: Vec::new(),
    };
    while let Some(x) = it.next() {
        let num = |it: &mut dyn Iterator<Item = String>| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match x.as_str() {
            "--endpoint" => a.endpoint = it.next().unwrap_or_else(|| usage()),
            "--puts" => a.puts = num(&mut it),
            "--concurrency" => a.concurrency = num(&mut it).max(1),
            "--keys" => a.keys = num(&mut it),
            _ if x.starts_with("--") => usage(),
            _ => a.rest.push(x),
        }
    }
    a
}

#[tokio::main]
async fn main() {
    let a = args();
    let c = Client::new([a.endpoint.as_str()]).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let r = match a.cmd.as_str() {
        "put" if a.rest.len() == 2 => put(&c, &a.rest[0], &a.rest[1]).await,
        "get-prefix" if a.rest.len() == 1 => get_prefix(&c, &a.rest[0]).await,
        "run" if a.rest.is_empty() => run(&c, &a).await,
        _ => usage(),
    };
    if let Err(e) = r {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

async fn put(c: &Client, key: &str, value: &str) -> Result<(), cairn_etcd::Error> {
    c.put(key, value, PutOptions::new()).await?;
    println!("OK");
    Ok(())
}

async fn get_prefix(c: &Client, prefix: &str) -> Result<(), cairn_etcd::Error> {
    let r = c.get(prefix, GetOptions::new().prefix()).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for kv in &r.kvs {
        let _ = out.write_all(&kv.key);
        let _ = out.write_all(b"\n");
        let _ = out.write_all(&kv.value);
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
    Ok(())
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn run(c: &Client, a: &Args) -> Result<(), cairn_etcd::Error> {
    let st = c.status().await?;
    println!("etcd {} at {}", st.version, a.endpoint);
    let value = "v".repeat(100);

    // puts one after another
    c.delete("/bench/", DeleteOptions::new().prefix()).await?;
    let t = Instant::now();
    for i in 0..a.puts {
        c.put(
            format!("/bench/seq/{i:08}"),
            value.clone(),
            PutOptions::new(),
        )
        .await?;
    }
    let seq = t.elapsed();
    println!(
        "sequential puts: {} in {:.2} s = {:.0} puts/s",
        a.puts,
        seq.as_secs_f64(),
        rate(a.puts, seq)
    );

    // puts with `concurrency` in flight
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let c = c.clone();
        let value = value.clone();
        let (n, k) = (a.puts, a.concurrency);
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(k) {
                c.put(
                    format!("/bench/par/{i:08}"),
                    value.clone(),
                    PutOptions::new(),
                )
                .await?;
            }
            Ok::<_, cairn_etcd::Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("a put task")?;
    }
    let par = t.elapsed();
    println!(
        "concurrent puts ({} in flight): {} in {:.2} s = {:.0} puts/s",
        a.concurrency,
        a.puts,
        par.as_secs_f64(),
        rate(a.puts, par)
    );

    // a range of `keys` keys
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let c = c.clone();
        let value = value.clone();
        let (n, k) = (a.keys, a.concurrency);
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(k) {
                c.put(
                    format!("/bench/range/{i:08}"),
                    value.clone(),
                    PutOptions::new(),
                )
                .await?;
            }
            Ok::<_, cairn_etcd::Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("a put task")?;
    }
    println!(
        "filled {} keys for the range in {:.2} s",
        a.keys,
        t.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let r = c.get("/bench/range/", GetOptions::new().prefix()).await?;
        times.push(t.elapsed());
        assert_eq!(r.kvs.len(), a.keys);
    }
    times.sort();
    println!(
        "range of {} keys (100-byte values), 7 runs: median {:.1} ms, best {:.1} ms",
        a.keys,
        times[3].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0
    );

    // the client's share: decoding an answer of that shape (as etcd writes it)
    let body = synthetic_range(a.keys, &value);
    let t = Instant::now();
    let r: cairn_etcd::GetResponse = serde_json::from_slice(&body).expect("decodes");
    let took = t.elapsed();
    assert_eq!(r.kvs.len(), a.keys);
    println!(
        "of which decoding the {:.1} MB answer in the client: {:.1} ms",
        body.len() as f64 / 1e6,
        took.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// A range answer of `n` keys as the gateway writes it.
fn synthetic_range(n: usize, value: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut out = String::from(
        r#"{"header":{"cluster_id":"1","member_id":"2","revision":"99999","raft_term":"2"},"kvs":["#,
    );
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"key":"{}","create_revision":"{}","mod_revision":"{}","version":"1","value":"{}"}}"#,
            b64(&format!("/bench/range/{i:08}")),
            i + 2,
            i + 2,
            b64(value)
        ));
    }
    out.push_str(&format!(r#"],"count":"{n}"}}"#));
    out.into_bytes()
}
