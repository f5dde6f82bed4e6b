//! The binary trie files libkmod reads (`modules.dep.bin`,
//! `modules.alias.bin`, ...): writing them as kmod's depmod does, and a
//! lookup used by the tests to read them back.

use std::collections::BTreeMap;

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
