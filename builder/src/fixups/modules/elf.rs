//! Reading kernel modules: a `.ko` (ELF64 relocatable, possibly xz, zstd
//! or gzip compressed) to its `.modinfo` strings and its exported and
//! undefined symbols, and kmod's alias normalisation.

use std::io::Read;

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

pub(super) fn decompress(path: &str, data: &[u8]) -> Result<Vec<u8>, String> {
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

pub(super) fn is_module(path: &str) -> bool {
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
