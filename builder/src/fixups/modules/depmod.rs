//! depmod in Rust: from the modules of one kernel version to the files
//! depmod writes (`modules.dep`, `.alias`, `.softdep`, `.symbols`,
//! `.devname` and their binary tries), with kmod's dependency resolution
//! and ordering.

use std::collections::{BTreeMap, HashMap};

use cairn_initrd::modules::module_name;
use rayon::prelude::*;

use crate::blob::Blob;

use super::elf::*;
use super::kmod_index::*;

struct Module {
    relpath: String,
    name: String,
    info: ModInfo,
    deps: Vec<usize>,
    users: usize,
    sort_idx: i64,
    dep_sort_idx: i64,
    dep_loop: bool,
}

/// The files depmod writes for one kernel version, by file name.
pub struct DepmodOutput {
    pub files: BTreeMap<&'static str, Vec<u8>>,
    pub modules: usize,
    pub loops: usize,
}

/// Compute depmod's output for the modules `files` (relative path -> raw
/// file content) with the kernel's `modules.order`, `modules.builtin` and
/// `modules.builtin.modinfo` contents.
pub fn depmod(
    files: &[(String, Blob)],
    order: Option<&str>,
    builtin: Option<&str>,
    builtin_modinfo: Option<&[u8]>,
) -> Result<DepmodOutput, (String, String)> {
    let parsed: Vec<Result<(String, ModInfo), (String, String)>> = files
        .par_iter()
        .map(|(rel, data)| {
            decompress(rel, &data.bytes())
                .and_then(|d| parse_module(&d))
                .map(|m| (rel.clone(), m))
                .map_err(|e| (rel.clone(), e))
        })
        .collect();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut mods: Vec<Module> = Vec::new();
    let mut sorted_parsed = parsed.into_iter().collect::<Result<Vec<_>, _>>()?;
    // depmod's default search order: updates/ before the rest.
    sorted_parsed.sort_by_key(|(rel, _)| (!rel.starts_with("updates/"), rel.clone()));
    for (rel, info) in sorted_parsed {
        let name = module_name(&rel);
        if by_name.contains_key(&name) {
            tracing::warn!(module = rel, "duplicate module name, ignored");
            continue;
        }
        by_name.insert(name.clone(), mods.len());
        mods.push(Module {
            relpath: rel,
            name,
            info,
            deps: Vec::new(),
            users: 0,
            sort_idx: 0,
            dep_sort_idx: 0,
            dep_loop: false,
        });
    }
    // Sort by modules.order; modules not listed go last, by path.
    let lines: Vec<&str> = order.map(|o| o.lines().collect()).unwrap_or_default();
    let total = lines.len() as i64 + 1;
    let by_rel: HashMap<&str, usize> = mods
        .iter()
        .enumerate()
        .map(|(i, m)| (m.relpath.as_str(), i))
        .collect();
    let mut idx_of = vec![i64::MAX; mods.len()];
    for (n, l) in lines.iter().enumerate() {
        if let Some(&i) = by_rel.get(l) {
            idx_of[i] = n as i64 + 1 - total;
        }
    }
    for (m, s) in mods.iter_mut().zip(idx_of) {
        m.sort_idx = s;
    }
    mods.sort_by(|a, b| {
        a.sort_idx
            .cmp(&b.sort_idx)
            .then_with(|| a.relpath.cmp(&b.relpath))
    });

    // Symbols: the last module (in order) exporting a name owns it.
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, m) in mods.iter().enumerate() {
        for s in &m.info.exports {
            owner.insert(s.as_str(), i);
        }
    }
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); mods.len()];
    let mut users = vec![0usize; mods.len()];
    for (i, m) in mods.iter().enumerate() {
        for s in &m.info.undefined {
            let Some(&o) = owner.get(s.as_str()) else {
                continue;
            };
            if o == i || deps[i].contains(&o) {
                continue;
            }
            deps[i].push(o);
            users[o] += 1;
        }
    }
    let symbols: Vec<(String, usize)> = owner.iter().map(|(s, &o)| (s.to_string(), o)).collect();
    for (i, m) in mods.iter_mut().enumerate() {
        m.deps = std::mem::take(&mut deps[i]);
        m.users = users[i];
    }

    // Topological sort (modules without users first), as depmod does.
    let n = mods.len();
    let mut left: Vec<usize> = mods.iter().map(|m| m.users).collect();
    let mut roots: Vec<usize> = (0..n).filter(|&i| left[i] == 0).collect();
    let mut sorted = 0i64;
    while let Some(src) = roots.pop() {
        mods[src].dep_sort_idx = sorted;
        sorted += 1;
        for k in 0..mods[src].deps.len() {
            let dst = mods[src].deps[k];
            left[dst] -= 1;
            if left[dst] == 0 {
                roots.push(dst);
            }
        }
    }
    let mut loops = 0;
    for i in 0..n {
        if left[i] > 0 {
            tracing::warn!(module = mods[i].relpath, "module in a dependency cycle");
            mods[i].dep_loop = true;
            mods[i].dep_sort_idx = i64::from(i32::MAX);
            loops += 1;
        }
    }
    let key = |m: &Module| (m.dep_loop, m.dep_sort_idx);
    for i in 0..n {
        let mut d = std::mem::take(&mut mods[i].deps);
        d.sort_by_key(|&x| key(&mods[x]));
        mods[i].deps = d;
    }

    // modules.dep and its index.
    let mut dep_txt = String::new();
    let mut dep_idx = Index::default();
    for (i, m) in mods.iter().enumerate() {
        if m.dep_loop {
            continue;
        }
        let mut all: Vec<usize> = Vec::new();
        fn fill(mods: &[Module], i: usize, all: &mut Vec<usize>) {
            for &d in &mods[i].deps {
                if !all.contains(&d) {
                    all.push(d);
                    fill(mods, d, all);
                }
            }
        }
        fill(&mods, i, &mut all);
        all.sort_by_key(|&x| key(&mods[x]));
        let mut line = format!("{}:", m.relpath);
        for d in all.iter().filter(|&&d| !mods[d].dep_loop) {
            line.push(' ');
            line.push_str(&mods[*d].relpath);
        }
        dep_txt.push_str(&line);
        dep_txt.push('\n');
        dep_idx.insert(&m.name, &line, i as u32);
    }

    let mut alias_txt = String::from("# Aliases extracted from modules themselves.\n");
    let mut alias_idx = Index::default();
    let mut softdep_txt = String::from("# Soft dependencies extracted from modules themselves.\n");
    let mut devname_txt = String::from("# Device nodes to trigger on-demand module loading.\n");
    for (i, m) in mods.iter().enumerate() {
        let mut devname: Option<&str> = None;
        let mut dev: Option<(char, u32, u32)> = None;
        let mut devname_done = false;
        for (k, v) in &m.info.info {
            match k.as_str() {
                "alias" => {
                    alias_txt.push_str(&format!("alias {v} {}\n", m.name));
                    match alias_normalize(v) {
                        Some(a) => {
                            alias_idx.insert(&a, &m.name, i as u32);
                        }
                        None => tracing::warn!(
                            module = m.relpath,
                            alias = v,
                            "unmatched bracket in alias"
                        ),
                    }
                    if devname_done {
                        continue;
                    }
                    if let Some(d) = v.strip_prefix("devname:") {
                        devname = Some(d);
                    } else if let Some(d) = parse_major_minor(v, "char-major-") {
                        dev = Some(('c', d.0, d.1));
                    } else if let Some(d) = parse_major_minor(v, "block-major-") {
                        dev = Some(('b', d.0, d.1));
                    }
                    if let (Some(name), Some((t, maj, min))) = (devname, dev) {
                        devname_txt.push_str(&format!("{} {name} {t}{maj}:{min}\n", m.name));
                        devname_done = true;
                    }
                }
                "softdep" => softdep_txt.push_str(&format!("softdep {} {v}\n", m.name)),
                _ => {}
            }
        }
    }

    let mut symbols_sorted = symbols;
    symbols_sorted.sort();
    let mut sym_txt = String::from("# Aliases for symbols, used by symbol_request().\n");
    let mut sym_idx = Index::default();
    for (s, o) in &symbols_sorted {
        sym_txt.push_str(&format!("alias symbol:{s} {}\n", mods[*o].name));
        sym_idx.insert(&format!("symbol:{s}"), &mods[*o].name, *o as u32);
    }

    let mut builtin_idx = Index::default();
    for l in builtin.unwrap_or("").lines() {
        if l.starts_with(|c: char| c.is_ascii_alphabetic()) {
            builtin_idx.insert(&module_name(l), "", 0);
        }
    }
    let mut builtin_alias_idx = Index::default();
    for entry in builtin_modinfo.unwrap_or(&[]).split(|&b| b == 0) {
        let e = String::from_utf8_lossy(entry);
        let Some((modpart, value)) = e.split_once('=') else {
            continue;
        };
        let Some((module, key)) = modpart.split_once('.') else {
            continue;
        };
        if key == "alias" && !value.is_empty() {
            if let Some(a) = alias_normalize(value) {
                builtin_alias_idx.insert(&a, module, 0);
            }
        }
    }

    let mut files = BTreeMap::new();
    files.insert("modules.dep", dep_txt.into_bytes());
    files.insert("modules.dep.bin", dep_idx.to_bytes());
    files.insert("modules.alias", alias_txt.into_bytes());
    files.insert("modules.alias.bin", alias_idx.to_bytes());
    files.insert("modules.softdep", softdep_txt.into_bytes());
    files.insert("modules.symbols", sym_txt.into_bytes());
    files.insert("modules.symbols.bin", sym_idx.to_bytes());
    files.insert("modules.builtin.bin", builtin_idx.to_bytes());
    files.insert("modules.builtin.alias.bin", builtin_alias_idx.to_bytes());
    files.insert("modules.devname", devname_txt.into_bytes());
    Ok(DepmodOutput {
        files,
        modules: mods.len(),
        loops,
    })
}

fn parse_major_minor(v: &str, prefix: &str) -> Option<(u32, u32)> {
    let rest = v.strip_prefix(prefix)?;
    let (a, b) = rest.split_once('-')?;
    // sscanf("%u-%u") accepts trailing garbage after the minor number.
    let b: String = b.chars().take_while(char::is_ascii_digit).collect();
    Some((a.parse().ok()?, b.parse().ok()?))
}
