//! Validate files (default: the corpus under tests/fixtures/corpus) and print the findings and the time per file.
//! `cargo run --release -p cairn-cloudconfig --example bench_validate [FILE...]`

use std::time::Instant;

fn main() {
    let mut files: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    if files.is_empty() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus");
        files = std::fs::read_dir(&dir)
            .expect("reading the corpus directory")
            .map(|e| e.expect("reading a corpus entry").path())
            .filter(|p| p.file_name().is_some_and(|n| n != "SOURCES.tsv"))
            .collect();
        files.sort();
    }
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    for (name, text) in &texts {
        print!(
            "{}",
            cairn_cloudconfig::format_findings(name, &cairn_cloudconfig::validate(text))
        );
    }
    let rounds = 200;
    let start = Instant::now();
    let mut findings = 0;
    for _ in 0..rounds {
        for (_, text) in &texts {
            findings += cairn_cloudconfig::validate(text).findings.len();
        }
    }
    let elapsed = start.elapsed();
    let bytes: usize = texts.iter().map(|(_, t)| t.len()).sum();
    println!(
        "{} files, {} bytes, {} rounds: {:.3} ms per file, {:.1} MB/s ({} findings per round)",
        texts.len(),
        bytes,
        rounds,
        elapsed.as_secs_f64() * 1000.0 / (rounds * texts.len()) as f64,
        (bytes * rounds) as f64 / elapsed.as_secs_f64() / 1e6,
        findings / rounds
    );
}
