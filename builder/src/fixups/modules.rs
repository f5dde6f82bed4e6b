//! The `kernel-modules` fixup: `depmod` in Rust, for each
//! `usr/lib/modules/<kver>/` of the tree (the kernel package's postinst runs
//! `depmod <kver>`).
//!
//! Reads every `*.ko` (and `.ko.xz`, `.ko.zst`, `.ko.gz`) as ELF64: the
//! `.modinfo` strings (`alias=`, `softdep=`) and the `.symtab` (exported
//! `__ksymtab_*` symbols, undefined symbols). Dependencies come from symbol
//! resolution, as kmod's depmod computes them, and are ordered the same way
//! (modules in `modules.order` order, each dependency list topologically
//! sorted so that modprobe loads from the end). Writes what depmod writes:
//! `modules.dep`, `modules.alias`, `modules.softdep`, `modules.symbols`,
//! `modules.devname` and the binary tries libkmod reads (`modules.dep.bin`,
//! `modules.alias.bin`, `modules.symbols.bin`, `modules.builtin.bin`,
//! `modules.builtin.alias.bin`; udev's module autoloading and modprobe use
//! only these). `modules.builtin`, `modules.builtin.modinfo` and
//! `modules.order` are kept as the package ships them.
//!
//! Also writes [`BLACKLIST_FILE`]: drivers udev must not load on a cairn
//! machine (the floppy driver, whose probe of the controller QEMU's default
//! `pc` machine always has fills the console with I/O errors).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use cairn_initrd::modules::module_name;
use rayon::prelude::*;

use super::{put_file, Context, FixupError, Report};
use crate::tree::{Node, Tree};

const NAME: &str = "kernel-modules";
const MODULES_DIR: &str = "usr/lib/modules";

/// modprobe.d file of modules never loaded automatically.
pub const BLACKLIST_FILE: &str = "usr/lib/modprobe.d/cairn.conf";

const BLACKLIST: &str = "\
# Written by cairn build. Drivers that udev does not load on a cairn machine
# (`modprobe NAME` by hand still does).
# floppy: QEMU's default `pc` machine always has a floppy controller, usually
# with no drive; probing it fills the console with I/O errors.
blacklist floppy
";

// ---------------------------------------------------------------- ELF

fn rd16(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?))
}
fn rd32(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?))
}
fn rd64(d: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(o..o + 8)?.try_into().ok()?))
}

struct Section {
    name: String,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
}

/// What depmod needs from one module file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `.modinfo` as (key, value) in file order.
    pub info: Vec<(String, String)>,
    /// Symbols the module exports (`__ksymtab_<name>`).
    pub exports: Vec<String>,
    /// Undefined symbols, in symbol table order.
    pub undefined: Vec<String>,
}

fn cstr(d: &[u8], o: usize) -> Option<String> {
    let s = d.get(o..)?;
    let end = s.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&s[..end]).into_owned())
}

/// Parse a (decompressed) ELF64 little-endian kernel module.
pub fn parse_module(d: &[u8]) -> Result<ModInfo, String> {
    if d.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if d[4] != 2 || d[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let bad = || "truncated ELF header or section table".to_string();
    let shoff = rd64(d, 0x28).ok_or_else(bad)? as usize;
    let shentsize = rd16(d, 0x3a).ok_or_else(bad)? as usize;
    let shnum = rd16(d, 0x3c).ok_or_else(bad)? as usize;
    let shstrndx = rd16(d, 0x3e).ok_or_else(bad)? as usize;
    let mut raw = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let o = shoff + i * shentsize;
        raw.push((
            rd32(d, o).ok_or_else(bad)? as usize,
            rd32(d, o + 4).ok_or_else(bad)?,
            rd64(d, o + 24).ok_or_else(bad)? as usize,
            rd64(d, o + 32).ok_or_else(bad)? as usize,
            rd32(d, o + 40).ok_or_else(bad)?,
        ));
    }
    let strtab_off = raw.get(shstrndx).map(|s| s.2).ok_or_else(bad)?;
    let sections: Vec<Section> = raw
        .iter()
        .map(|&(n, kind, offset, size, link)| Section {
            name: cstr(d, strtab_off + n).unwrap_or_default(),
            kind,
            offset,
            size,
            link,
        })
        .collect();
    let body = |s: &Section| d.get(s.offset..s.offset + s.size).ok_or_else(bad);
    let mut m = ModInfo::default();
    if let Some(s) = sections.iter().find(|s| s.name == ".modinfo") {
        for kv in body(s)?.split(|&b| b == 0).filter(|x| !x.is_empty()) {
            let kv = String::from_utf8_lossy(kv);
            if let Some((k, v)) = kv.split_once('=') {
                m.info.push((k.to_string(), v.to_string()));
            }
        }
    }
    const SHT_SYMTAB: u32 = 2;
    if let Some(sym) = sections.iter().find(|s| s.kind == SHT_SYMTAB) {
        let strs = sections.get(sym.link as usize).ok_or_else(bad)?;
        let syms = body(sym)?;
        let strdata = body(strs)?;
        for i in 1..syms.len() / 24 {
            let e = &syms[i * 24..i * 24 + 24];
            let name_off = u32::from_le_bytes(e[0..4].try_into().unwrap_or_default()) as usize;
            let shndx = u16::from_le_bytes(e[6..8].try_into().unwrap_or_default());
            let Some(name) = cstr(strdata, name_off) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            if let Some(x) = name.strip_prefix("__ksymtab_") {
                m.exports.push(x.to_string());
            } else if shndx == 0 {
                m.undefined.push(name);
            }
        }
    }
    Ok(m)
}

fn decompress(path: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let r = if path.ends_with(".ko.xz") {
        liblzma::read::XzDecoder::new(data).read_to_end(&mut out)
    } else if path.ends_with(".ko.zst") {
        zstd::stream::read::Decoder::new(data).and_then(|mut z| z.read_to_end(&mut out))
    } else if path.ends_with(".ko.gz") {
        flate2::read::GzDecoder::new(data).read_to_end(&mut out)
    } else {
        return Ok(data.to_vec());
    };
    r.map(|_| out).map_err(|e| format!("decompressing: {e}"))
}

fn is_module(path: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|e| path.ends_with(e))
}

/// kmod's `alias_normalize`: `-` becomes `_` outside `[...]`.
pub fn alias_normalize(alias: &str) -> Option<String> {
    let mut out = String::with_capacity(alias.len());
    let mut in_bracket = false;
    for c in alias.chars() {
        match c {
            '[' if !in_bracket => {
                in_bracket = true;
                out.push(c);
            }
            ']' if in_bracket => {
                in_bracket = false;
                out.push(c);
            }
            ']' => return None,
            '-' if !in_bracket => out.push('_'),
            c => out.push(c),
        }
    }
    (!in_bracket).then_some(out)
}

// ---------------------------------------------------------------- index (trie)

/// libkmod's on-disk index: a radix trie, written post-order exactly as
/// depmod's `index_write` does (same bytes for the same insertions).
#[derive(Debug, Default)]
pub struct Index {
    root: IndexNode,
}

#[derive(Debug, Clone)]
struct IndexNode {
    prefix: Vec<u8>,
    /// (priority, value), kept sorted by priority; equal priorities put the
    /// newest first.
    values: Vec<(u32, Vec<u8>)>,
    first: u8,
    last: u8,
    children: BTreeMap<u8, Box<IndexNode>>,
}

impl Default for IndexNode {
    fn default() -> Self {
        IndexNode {
            prefix: Vec::new(),
            values: Vec::new(),
            first: 128,
            last: 0,
            children: BTreeMap::new(),
        }
    }
}

const INDEX_MAGIC: u32 = 0xB007_F457;
const INDEX_VERSION: u32 = 0x0002_0001;
const NODE_PREFIX: u32 = 0x8000_0000;
const NODE_VALUES: u32 = 0x4000_0000;
const NODE_CHILDS: u32 = 0x2000_0000;

fn add_value(values: &mut Vec<(u32, Vec<u8>)>, value: &[u8], priority: u32) {
    let at = values
        .iter()
        .position(|(p, _)| *p >= priority)
        .unwrap_or(values.len());
    values.insert(at, (priority, value.to_vec()));
}

impl Index {
    /// Insert `key` -> `value`; keys and values must be 7-bit ASCII.
    pub fn insert(&mut self, key: &str, value: &str, priority: u32) -> bool {
        if !key.is_ascii() || !value.is_ascii() {
            return false;
        }
        let key = key.as_bytes();
        let mut node = &mut self.root;
        let mut i = 0;
        loop {
            // Split the node when its prefix is not a prefix of key[i..].
            let mut j = 0;
            while j < node.prefix.len() {
                let ch = node.prefix[j];
                if key.get(i + j) != Some(&ch) {
                    let mut child = std::mem::take(node);
                    let tail = child.prefix.split_off(j + 1);
                    child.prefix.truncate(j);
                    let head = std::mem::take(&mut child.prefix);
                    child.prefix = tail;
                    node.prefix = head;
                    node.first = ch;
                    node.last = ch;
                    node.children.insert(ch, Box::new(child));
                    break;
                }
                j += 1;
            }
            i += j;
            let Some(&ch) = key.get(i) else {
                add_value(&mut node.values, value.as_bytes(), priority);
                return true;
            };
            if !node.children.contains_key(&ch) {
                node.first = node.first.min(ch);
                node.last = node.last.max(ch);
                let mut child = IndexNode {
                    prefix: key[i + 1..].to_vec(),
                    ..IndexNode::default()
                };
                add_value(&mut child.values, value.as_bytes(), priority);
                node.children.insert(ch, Box::new(child));
                return true;
            }
            node = node.children.get_mut(&ch).expect("child exists");
            i += 1;
        }
    }

    fn write_node(node: &IndexNode, out: &mut Vec<u8>) -> u32 {
        let has_children = node.first < 128;
        let mut child_offs = Vec::new();
        if has_children {
            for c in node.first..=node.last {
                let off = node
                    .children
                    .get(&c)
                    .map_or(0, |ch| Self::write_node(ch, out));
                child_offs.push(off);
            }
        }
        let mut offset = out.len() as u32;
        if !node.prefix.is_empty() {
            out.extend_from_slice(&node.prefix);
            out.push(0);
            offset |= NODE_PREFIX;
        }
        if has_children {
            out.push(node.first);
            out.push(node.last);
            for o in child_offs {
                out.extend_from_slice(&o.to_be_bytes());
            }
            offset |= NODE_CHILDS;
        }
        if !node.values.is_empty() {
            out.extend_from_slice(&(node.values.len() as u32).to_be_bytes());
            for (p, v) in &node.values {
                out.extend_from_slice(&p.to_be_bytes());
                out.extend_from_slice(v);
                out.push(0);
            }
            offset |= NODE_VALUES;
        }
        offset
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
        out.extend_from_slice(&INDEX_VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        let root = Self::write_node(&self.root, &mut out);
        out[8..12].copy_from_slice(&root.to_be_bytes());
        out
    }
}

/// Exact-key lookup in a written index (used by tests and checks).
pub fn index_lookup(data: &[u8], key: &str) -> Vec<String> {
    fn be(d: &[u8], o: usize) -> Option<u32> {
        Some(u32::from_be_bytes(d.get(o..o + 4)?.try_into().ok()?))
    }
    let mut off = match be(data, 8) {
        Some(o) => o,
        None => return Vec::new(),
    };
    let key = key.as_bytes();
    let mut i = 0;
    loop {
        let mut p = (off & 0x0fff_ffff) as usize;
        if off & NODE_PREFIX != 0 {
            let end = p + data[p..].iter().position(|&b| b == 0).unwrap_or(0);
            let prefix = &data[p..end];
            if key.get(i..i + prefix.len()) != Some(prefix) {
                return Vec::new();
            }
            i += prefix.len();
            p = end + 1;
        }
        let (mut first, mut last) = (128u8, 0u8);
        let mut children_at = p;
        if off & NODE_CHILDS != 0 {
            first = data[p];
            last = data[p + 1];
            children_at = p + 2;
            p += 2 + 4 * (last as usize - first as usize + 1);
        }
        if i == key.len() {
            let mut out = Vec::new();
            if off & NODE_VALUES != 0 {
                let n = be(data, p).unwrap_or(0);
                p += 4;
                for _ in 0..n {
                    p += 4;
                    let end = p + data[p..].iter().position(|&b| b == 0).unwrap_or(0);
                    out.push(String::from_utf8_lossy(&data[p..end]).into_owned());
                    p = end + 1;
                }
            }
            return out;
        }
        let ch = key[i];
        if off & NODE_CHILDS == 0 || ch < first || ch > last {
            return Vec::new();
        }
        off = be(data, children_at + 4 * (ch - first) as usize).unwrap_or(0);
        if off == 0 {
            return Vec::new();
        }
        i += 1;
    }
}

// ---------------------------------------------------------------- depmod

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
    files: &[(String, &[u8])],
    order: Option<&str>,
    builtin: Option<&str>,
    builtin_modinfo: Option<&[u8]>,
) -> Result<DepmodOutput, (String, String)> {
    let parsed: Vec<Result<(String, ModInfo), (String, String)>> = files
        .par_iter()
        .map(|(rel, data)| {
            decompress(rel, data)
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

/// Run depmod for kernel version directory `kdir` (e.g. `usr/lib/modules/6.1.0-1-amd64`).
pub fn depmod_tree(tree: &mut Tree, kdir: &str) -> Result<DepmodOutput, FixupError> {
    let prefix = format!("{kdir}/");
    let mut files: Vec<(String, &[u8])> = Vec::new();
    for (k, e) in tree.iter() {
        let Some(rel) = k.strip_prefix(&prefix) else {
            continue;
        };
        if rel.starts_with("build/") || rel.starts_with("source/") || !is_module(rel) {
            continue;
        }
        if let Node::File(d) = &e.node {
            files.push((rel.to_string(), d.as_slice()));
        }
    }
    let order = tree.read_text(&format!("{kdir}/modules.order"));
    let builtin = tree.read_text(&format!("{kdir}/modules.builtin"));
    let bmi = tree
        .read(&format!("{kdir}/modules.builtin.modinfo"))
        .map(<[u8]>::to_vec);
    let out = depmod(&files, order.as_deref(), builtin.as_deref(), bmi.as_deref())
        .map_err(|(rel, e)| FixupError::invalid(NAME, format!("{kdir}/{rel}"), e))?;
    for (name, data) in &out.files {
        put_file(
            tree,
            NAME,
            &format!("{kdir}/{name}"),
            data.clone(),
            0o644,
            (0, 0),
        )?;
    }
    Ok(out)
}

pub fn apply(tree: &mut Tree, _ctx: &Context<'_>) -> Result<Report, FixupError> {
    let Some(dir) = tree.resolve(MODULES_DIR) else {
        return Ok(Report::new(NAME, "no kernel modules"));
    };
    let kvers: Vec<String> = tree
        .children(&dir)
        .filter(|(_, e)| e.is_dir())
        .map(|(k, _)| k.clone())
        .collect();
    let mut parts = Vec::new();
    for k in kvers {
        let out = depmod_tree(tree, &k)?;
        let kver = k.rsplit('/').next().unwrap_or(&k).to_string();
        tracing::info!(kver, modules = out.modules, loops = out.loops, "depmod");
        parts.push(format!("{kver}: {} modules", out.modules));
    }
    if parts.is_empty() {
        return Ok(Report::new(NAME, "no kernel modules"));
    }
    put_file(tree, NAME, BLACKLIST_FILE, BLACKLIST, 0o644, (0, 0))?;
    Ok(Report::new(NAME, parts.join("; ")))
}

#[cfg(test)]
pub(crate) mod testing {
    //! A minimal ELF64 relocatable with `.modinfo` and `.symtab`, enough
    //! for depmod: the layout the kernel's modpost leaves.

    pub fn make_ko(modinfo: &[&str], exports: &[&str], undefined: &[&str]) -> Vec<u8> {
        let mut info = Vec::new();
        for s in modinfo {
            info.extend_from_slice(s.as_bytes());
            info.push(0);
        }
        let mut strtab = vec![0u8];
        let mut syms = vec![0u8; 24]; // null symbol
        let mut add_sym = |name: &str, shndx: u16, bind: u8| {
            let off = strtab.len() as u32;
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            let mut e = [0u8; 24];
            e[0..4].copy_from_slice(&off.to_le_bytes());
            e[4] = bind << 4;
            e[6..8].copy_from_slice(&shndx.to_le_bytes());
            syms.extend_from_slice(&e);
        };
        for x in exports {
            add_sym(&format!("__ksymtab_{x}"), 1, 0);
            add_sym(x, 1, 1);
        }
        for u in undefined {
            add_sym(u, 0, 1);
        }
        let shstr = b"\0.modinfo\0.symtab\0.strtab\0.shstrtab\0".to_vec();
        let mut out = vec![0u8; 64];
        let place = |data: &[u8], out: &mut Vec<u8>| {
            let off = out.len();
            out.extend_from_slice(data);
            (off, data.len())
        };
        let (info_off, info_len) = place(&info, &mut out);
        let (sym_off, sym_len) = place(&syms, &mut out);
        let (str_off, str_len) = place(&strtab, &mut out);
        let (shs_off, shs_len) = place(&shstr, &mut out);
        let shoff = out.len();
        let sh = |name: u32, kind: u32, off: usize, len: usize, link: u32, out: &mut Vec<u8>| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(len as u64).to_le_bytes());
            h[40..44].copy_from_slice(&link.to_le_bytes());
            out.extend_from_slice(&h);
        };
        sh(0, 0, 0, 0, 0, &mut out);
        sh(1, 1, info_off, info_len, 0, &mut out);
        sh(10, 2, sym_off, sym_len, 3, &mut out);
        sh(18, 3, str_off, str_len, 0, &mut out);
        sh(26, 3, shs_off, shs_len, 0, &mut out);
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&5u16.to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&4u16.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::make_ko;
    use super::*;
    use crate::fixups::testutil::*;
    use crate::tree::Entry;

    const K: &str = "usr/lib/modules/6.1.0-9-amd64";

    fn ko(t: &mut Tree, rel: &str, data: Vec<u8>) {
        t.insert(
            &format!("{K}/{rel}"),
            Entry::file(data, 0o644, &"linux-image".into()),
        )
        .unwrap();
    }

    fn kernel_tree() -> Tree {
        let mut t = Tree::new_merged_usr();
        // ext4 -> jbd2 -> crc16-ish chain; mbcache leaf; fuse with devname.
        ko(
            &mut t,
            "kernel/lib/crc16.ko",
            make_ko(&["license=GPL", "name=crc16"], &["crc16"], &["printk"]),
        );
        ko(
            &mut t,
            "kernel/fs/mbcache.ko",
            make_ko(&["name=mbcache"], &["mb_cache_create"], &[]),
        );
        ko(
            &mut t,
            "kernel/fs/jbd2/jbd2.ko",
            make_ko(
                &["softdep=pre: crypto-crc32c", "name=jbd2"],
                &["jbd2_start"],
                &["crc16"],
            ),
        );
        ko(
            &mut t,
            "kernel/fs/ext4/ext4.ko",
            make_ko(
                &[
                    "softdep=pre: crypto-crc32c",
                    "alias=fs-ext4",
                    "alias=ext3",
                    "depends=jbd2,mbcache,crc16",
                    "name=ext4",
                ],
                &[],
                &["jbd2_start", "mb_cache_create", "crc16", "printk"],
            ),
        );
        ko(
            &mut t,
            "kernel/fs/fuse/fuse.ko",
            make_ko(
                &[
                    "alias=devname:fuse",
                    "alias=char-major-10-229",
                    "alias=fs-fuse",
                    "name=fuse",
                ],
                &[],
                &[],
            ),
        );
        let xz = {
            use std::io::Write;
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&make_ko(
                &[
                    "alias=pci:v00008086d*sv*sd*bc*sc*i*",
                    "alias=snd-x[a-b]-y",
                    "name=snd_hda_intel",
                ],
                &[],
                &["jbd2_start"],
            ))
            .unwrap();
            e.finish().unwrap()
        };
        ko(&mut t, "kernel/sound/snd-hda-intel.ko.xz", xz);
        file(
            &mut t,
            &format!("{K}/modules.order"),
            "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/fs/mbcache.ko\nkernel/lib/crc16.ko\nkernel/fs/fuse/fuse.ko\n",
        );
        file(
            &mut t,
            &format!("{K}/modules.builtin"),
            "kernel/drivers/tty/vt.ko\nkernel/fs/binfmt-misc.ko\n",
        );
        t.insert(
            &format!("{K}/modules.builtin.modinfo"),
            Entry::file(
                b"vt.license=GPL\0binfmt_misc.alias=fs-binfmt_misc\0".to_vec(),
                0o644,
                &"linux-image".into(),
            ),
        )
        .unwrap();
        t
    }

    #[test]
    fn parses_a_generated_module() {
        let m = parse_module(&make_ko(&["alias=a", "depends=b"], &["x"], &["y", "z"])).unwrap();
        assert_eq!(
            m.info,
            [
                ("alias".to_string(), "a".to_string()),
                ("depends".into(), "b".into())
            ]
        );
        assert_eq!(m.exports, ["x"]);
        assert_eq!(m.undefined, ["y", "z"]);
        assert!(parse_module(b"not elf").is_err());
        assert_eq!(
            module_name("kernel/sound/snd-hda-intel.ko.xz"),
            "snd_hda_intel"
        );
        assert_eq!(alias_normalize("snd-x[a-b]-y").unwrap(), "snd_x[a-b]_y");
        assert!(alias_normalize("a]").is_none());
    }

    #[test]
    fn depmod_files_match_the_format() {
        let mut t = kernel_tree();
        let d = def("");
        let r = apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(r.summary, "6.1.0-9-amd64: 6 modules");
        let blacklist = t.read_text(BLACKLIST_FILE).unwrap();
        assert!(blacklist.contains("\nblacklist floppy\n"), "{blacklist}");
        let dep = t.read_text(&format!("{K}/modules.dep")).unwrap();
        assert_eq!(
            dep,
            "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n\
             kernel/fs/jbd2/jbd2.ko: kernel/lib/crc16.ko\n\
             kernel/fs/mbcache.ko:\n\
             kernel/lib/crc16.ko:\n\
             kernel/fs/fuse/fuse.ko:\n\
             kernel/sound/snd-hda-intel.ko.xz: kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n"
        );
        // Load order check: every dependency comes before (to the left of) its own dependencies.
        for line in dep.lines() {
            let (_, ds) = line.split_once(':').unwrap();
            let ds: Vec<&str> = ds.split_whitespace().collect();
            for (i, d) in ds.iter().enumerate() {
                let own = dep
                    .lines()
                    .find(|l| l.starts_with(&format!("{d}:")))
                    .unwrap();
                for dd in own.split_once(':').unwrap().1.split_whitespace() {
                    assert!(ds[i + 1..].contains(&dd), "{line}: {dd} must follow {d}");
                }
            }
        }
        let alias = t.read_text(&format!("{K}/modules.alias")).unwrap();
        assert!(alias.starts_with("# Aliases extracted from modules themselves.\nalias fs-ext4 ext4\nalias ext3 ext4\n"), "{alias}");
        assert!(alias.contains("alias pci:v00008086d*sv*sd*bc*sc*i* snd_hda_intel\n"));
        let soft = t.read_text(&format!("{K}/modules.softdep")).unwrap();
        assert_eq!(soft, "# Soft dependencies extracted from modules themselves.\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n");
        let devname = t.read_text(&format!("{K}/modules.devname")).unwrap();
        assert_eq!(
            devname,
            "# Device nodes to trigger on-demand module loading.\nfuse fuse c10:229\n"
        );
        let sym = t.read_text(&format!("{K}/modules.symbols")).unwrap();
        assert!(sym.contains("alias symbol:jbd2_start jbd2\n"));

        // The binary indexes answer the lookups libkmod makes.
        let bin = |n: &str| t.read(&format!("{K}/{n}")).unwrap().to_vec();
        assert_eq!(
            &bin("modules.dep.bin")[..8],
            &[0xb0, 0x07, 0xf4, 0x57, 0, 2, 0, 1]
        );
        assert_eq!(
            index_lookup(&bin("modules.dep.bin"), "ext4"),
            ["kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko"]
        );
        assert_eq!(
            index_lookup(&bin("modules.dep.bin"), "snd_hda_intel").len(),
            1
        );
        assert!(index_lookup(&bin("modules.dep.bin"), "ext").is_empty());
        assert_eq!(index_lookup(&bin("modules.alias.bin"), "fs_ext4"), ["ext4"]);
        assert_eq!(
            index_lookup(&bin("modules.alias.bin"), "snd_x[a-b]_y"),
            ["snd_hda_intel"]
        );
        assert_eq!(
            index_lookup(&bin("modules.symbols.bin"), "symbol:crc16"),
            ["crc16"]
        );
        assert_eq!(
            index_lookup(&bin("modules.builtin.bin"), "binfmt_misc"),
            [""]
        );
        assert_eq!(
            index_lookup(&bin("modules.builtin.alias.bin"), "fs_binfmt_misc"),
            ["binfmt_misc"]
        );
        // shipped files are kept
        assert!(t
            .read_text(&format!("{K}/modules.order"))
            .unwrap()
            .starts_with("kernel/fs/ext4"));
    }

    #[test]
    fn index_trie_splits_and_orders_values() {
        let mut idx = Index::default();
        for (k, v, p) in [
            ("once", "1", 3),
            ("one", "2", 1),
            ("on", "3", 2),
            ("ask", "4", 0),
            ("ate", "5", 0),
            ("on", "6", 2),
            ("on", "7", 1),
        ] {
            assert!(idx.insert(k, v, p));
        }
        let b = idx.to_bytes();
        assert_eq!(index_lookup(&b, "once"), ["1"]);
        assert_eq!(index_lookup(&b, "one"), ["2"]);
        // priority order; equal priorities newest first
        assert_eq!(index_lookup(&b, "on"), ["7", "6", "3"]);
        assert_eq!(index_lookup(&b, "ask"), ["4"]);
        assert_eq!(index_lookup(&b, "ate"), ["5"]);
        assert!(index_lookup(&b, "o").is_empty());
        assert!(index_lookup(&b, "onc").is_empty());
        assert!(!idx.insert("n\u{e9}", "x", 0));
    }

    #[test]
    fn dependency_cycles_are_left_out() {
        let files = [
            ("a.ko".to_string(), make_ko(&[], &["fa"], &["fb"])),
            ("b.ko".to_string(), make_ko(&[], &["fb"], &["fa"])),
            ("c.ko".to_string(), make_ko(&[], &[], &["fa"])),
        ];
        let refs: Vec<(String, &[u8])> = files
            .iter()
            .map(|(n, d)| (n.clone(), d.as_slice()))
            .collect();
        let out = depmod(&refs, None, None, None).unwrap();
        assert_eq!(out.loops, 2);
        assert_eq!(
            String::from_utf8(out.files["modules.dep"].clone()).unwrap(),
            "c.ko:\n"
        );
    }
}
