//! A YAML document tree with 1-based line numbers, read with saphyr-parser and resolved with YAML 1.1 rules as goyaml
//! (coreos-cloudinit's parser) had them: `on`/`off`/`yes`/`no`/`y`/`n` are booleans, `0644` is octal, `<<` merges.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};

use crate::decode;

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// A resolved YAML value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str,
    /// A `!!binary` scalar: the decoded bytes (a string to coreos-cloudinit).
    Binary(Vec<u8>),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One node of the document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// 1-based line where the node starts.
    pub line: usize,
    /// A scalar's text as written (after quote and block processing); empty for collections.
    pub text: String,
    pub value: Value,
}

/// One key of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The key with `-` replaced by `_`, as coreos-cloudinit compares keys.
    pub key: String,
    /// 1-based line of the key.
    pub line: usize,
    pub value: Node,
}

/// The Go kind coreos-cloudinit's validator sees for a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Invalid,
    Bool,
    Int,
    Float,
    String,
    Slice,
    Map,
}

impl Node {
    pub(crate) fn kind(&self) -> Kind {
        match self.value {
            Value::Null => Kind::Invalid,
            Value::Bool(_) => Kind::Bool,
            Value::Int(_) => Kind::Int,
            Value::Float(_) => Kind::Float,
            Value::Str | Value::Binary(_) => Kind::String,
            Value::Seq(_) => Kind::Slice,
            Value::Map(_) => Kind::Map,
        }
    }

    /// The entry of a mapping with this (normalised) key; the last one when repeated, as goyaml decodes.
    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().rev().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The value as a Go string field would receive it: the text as written, the bytes of a `!!binary`.
    pub(crate) fn string_bytes(&self) -> Option<Vec<u8>> {
        match &self.value {
            Value::Binary(bytes) => Some(bytes.clone()),
            Value::Str | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
                Some(self.text.as_bytes().to_vec())
            }
            _ => None,
        }
    }

    /// [`Node::string_bytes`] as text (invalid UTF-8 replaced).
    pub(crate) fn string(&self) -> Option<String> {
        self.string_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

/// Parse the first document of `text`. An empty document is an empty mapping at line 1.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        aliases: 0,
        expanded: Weight::default(),
        depth: 0,
        multiline: Vec::new(),
        last_line: 0,
        last_written: last_written_line(text),
    };
    let result = builder.document().map_err(|e| {
        let (line, message) = match e {
            BuildError::Scan(e) => (e.marker().line(), libyaml_wording(e.info())),
            BuildError::Other(line, message) => (line, message),
        };
        SyntaxError {
            line: line.clamp(1, builder.last_written),
            message,
        }
    });
    let limit = match &result {
        Ok(_) => builder.last_line,
        Err(e) => e.line.saturating_sub(1),
    };
    match tab_led_line(text, &builder.multiline, limit) {
        Some(line) => Err(SyntaxError {
            line,
            message: "found character that cannot start any token".to_string(),
        }),
        None => result,
    }
}

/// The 1-based line of the last line with anything but white space on it (1 for a blank text). At the end of the
/// input the scanner's position has moved past the last line: errors there, and the empty nodes that end a document
/// (`? ` with no key, `key:` with no value), name this line instead.
fn last_written_line(text: &str) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(1)
}

/// libyaml refuses a tab at the start of a line in block context, even on a blank or comment-only line, which YAML 1.2
/// (and saphyr) allow. Lines inside a multi-line scalar (`multiline`: first and last line of each) are content.
/// Returns the first such line up to `limit`.
fn tab_led_line(text: &str, multiline: &[(usize, usize)], limit: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .take_while(|(n, _)| *n <= limit)
        .find(|(n, l)| {
            let rest = l.trim_start_matches(' ');
            rest.starts_with('\t')
                && matches!(rest.trim_start().chars().next(), None | Some('#'))
                && !multiline.iter().any(|(a, b)| a < n && n <= b)
        })
        .map(|(n, _)| n)
}

/// libyaml's (and so goyaml's and coreos-cloudinit's) words for the scanner errors whose saphyr wording differs.
fn libyaml_wording(info: &str) -> String {
    if info == "simple key expected" {
        "could not find expected ':'".to_string()
    } else if info.starts_with("unexpected character: ") {
        "found character that cannot start any token".to_string()
    } else {
        info.to_string()
    }
}

enum BuildError {
    Scan(ScanError),
    Other(usize, String),
}

impl From<ScanError> for BuildError {
    fn from(e: ScanError) -> Self {
        BuildError::Scan(e)
    }
}

/// Most alias uses (`*name`) in a document.
pub(crate) const MAX_ALIASES: usize = 1_000;
/// Most nodes that aliases (and `<<` merges of them) may add to a document by copying their anchor's subtree: a
/// billion-laughs document fails here, at its first alias past the budget, long before it uses memory.
pub(crate) const MAX_ALIAS_NODES: usize = 100_000;
/// Most bytes of scalar text (keys included) that aliases may add to a document.
pub(crate) const MAX_ALIAS_BYTES: usize = 4 << 20;
/// Deepest nesting of collections: the builder recurses once per level, and a thread's stack may be 2 MiB (a
/// cloud-config is a handful of levels deep).
pub(crate) const MAX_DEPTH: usize = 64;

/// The size of a subtree: nodes, and bytes of scalar text and keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Weight {
    nodes: usize,
    bytes: usize,
}

impl Weight {
    fn of(node: &Node) -> Weight {
        let mut w = Weight {
            nodes: 1,
            bytes: node.text.len(),
        };
        match &node.value {
            Value::Binary(b) => w.bytes += b.len(),
            Value::Seq(items) => {
                for i in items {
                    w.add(Weight::of(i));
                }
            }
            Value::Map(entries) => {
                for e in entries {
                    w.bytes += e.key.len();
                    w.add(Weight::of(&e.value));
                }
            }
            _ => {}
        }
        w
    }

    fn add(&mut self, other: Weight) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

struct Builder<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    /// Each anchor's node and its weight.
    anchors: HashMap<usize, (Node, Weight)>,
    /// Alias uses so far.
    aliases: usize,
    /// What aliases have added so far.
    expanded: Weight,
    /// Collections open around the current node.
    depth: usize,
    /// First and last line of each scalar that spans lines.
    multiline: Vec<(usize, usize)>,
    /// Line of the last event read.
    last_line: usize,
    /// [`last_written_line`] of the text: no node starts after it.
    last_written: usize,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), BuildError> {
        match self.parser.next_event() {
            Some(r) => {
                let (ev, span) = r?;
                self.last_line = self.last_line.max(span.end.line());
                if matches!(ev, Event::Scalar(..)) && span.end.line() > span.start.line() {
                    self.multiline.push((span.start.line(), span.end.line()));
                }
                Ok((ev, span))
            }
            None => Ok((Event::StreamEnd, Span::default())),
        }
    }

    fn document(&mut self) -> Result<Node, BuildError> {
        let empty = Node {
            line: 1,
            text: String::new(),
            value: Value::Map(Vec::new()),
        };
        loop {
            let (ev, _) = self.next()?;
            match ev {
                Event::StreamStart | Event::Nothing => continue,
                Event::DocumentStart(_) => break,
                _ => return Ok(empty),
            }
        }
        let (ev, span) = self.next()?;
        let root = match ev {
            Event::DocumentEnd => return Ok(empty),
            ev => self.node(ev, span)?.0,
        };
        // Scan to the end of this document so that a syntax error inside it is reported.
        loop {
            match self.next()?.0 {
                Event::DocumentEnd | Event::StreamEnd => break,
                _ => continue,
            }
        }
        Ok(match root.value {
            Value::Null => empty,
            _ => root,
        })
    }

    /// The node that starts with `ev`, and its weight (aliases expanded).
    fn node(&mut self, ev: Event<'a>, span: Span) -> Result<(Node, Weight), BuildError> {
        let line = span.start.line().clamp(1, self.last_written);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let node = scalar(text.into_owned(), style, tag.as_deref(), line)?;
                let weight = Weight::of(&node);
                self.remember(anchor, &node, weight);
                Ok((node, weight))
            }
            Event::Alias(id) => {
                let &(ref anchored, weight) = self.anchors.get(&id).ok_or_else(|| {
                    BuildError::Other(line, "unknown anchor referenced".to_string())
                })?;
                self.aliases += 1;
                self.expanded.add(weight);
                let too_many = if self.aliases > MAX_ALIASES {
                    Some(format!("more than {MAX_ALIASES} aliases"))
                } else if self.expanded.nodes > MAX_ALIAS_NODES {
                    Some(format!(
                        "aliases expand to more than {MAX_ALIAS_NODES} nodes"
                    ))
                } else if self.expanded.bytes > MAX_ALIAS_BYTES {
                    Some(format!(
                        "aliases expand to more than {MAX_ALIAS_BYTES} bytes of text"
                    ))
                } else {
                    None
                };
                if let Some(what) = too_many {
                    return Err(BuildError::Other(
                        line,
                        format!("excessive aliasing: {what} (an alias bomb?)"),
                    ));
                }
                let mut node = anchored.clone();
                node.line = line;
                Ok((node, weight))
            }
            Event::SequenceStart(anchor, _) => {
                self.enter(line)?;
                let mut items = Vec::new();
                let mut weight = Weight { nodes: 1, bytes: 0 };
                loop {
                    let (ev, span) = self.next()?;
                    match ev {
                        Event::SequenceEnd => break,
                        Event::StreamEnd => {
                            return Err(BuildError::Other(line, "unexpected end of input".into()))
                        }
                        ev => {
                            let (item, w) = self.node(ev, span)?;
                            weight.add(w);
                            items.push(item);
                        }
                    }
                }
                self.depth -= 1;
                let node = Node {
                    line,
                    text: String::new(),
                    value: Value::Seq(items),
                };
                self.remember(anchor, &node, weight);
                Ok((node, weight))
            }
            Event::MappingStart(anchor, _) => {
                self.enter(line)?;
                let mut entries: Vec<Entry> = Vec::new();
                let mut merged: Vec<Entry> = Vec::new();
                let mut weight = Weight { nodes: 1, bytes: 0 };
                loop {
                    let (ev, kspan) = self.next()?;
                    let key = match ev {
                        Event::MappingEnd => break,
                        Event::StreamEnd => {
                            return Err(BuildError::Other(line, "unexpected end of input".into()))
                        }
                        ev => self.node(ev, kspan)?.0,
                    };
                    let (ev, vspan) = self.next()?;
                    let (value, vweight) = self.node(ev, vspan)?;
                    if key.text == "<<" && key.value == Value::Str {
                        merge_into(&mut merged, &value);
                        continue;
                    }
                    let name =
                        match key.value {
                            Value::Seq(_) | Value::Map(_) => return Err(BuildError::Other(
                                key.line,
                                "invalid map key: a mapping key must be a scalar, not a collection"
                                    .to_string(),
                            )),
                            Value::Binary(ref b) => String::from_utf8_lossy(b).into_owned(),
                            _ => key.text.clone(),
                        };
                    weight.bytes = weight.bytes.saturating_add(name.len());
                    weight.add(vweight);
                    entries.push(Entry {
                        key: name.replace('-', "_"),
                        line: key.line,
                        value,
                    });
                }
                for m in merged {
                    if !entries.iter().any(|e| e.key == m.key) {
                        weight.bytes = weight.bytes.saturating_add(m.key.len());
                        weight.add(Weight::of(&m.value));
                        entries.push(m);
                    }
                }
                self.depth -= 1;
                let node = Node {
                    line,
                    text: String::new(),
                    value: Value::Map(entries),
                };
                self.remember(anchor, &node, weight);
                Ok((node, weight))
            }
            Event::StreamEnd | Event::DocumentEnd => Ok((
                Node {
                    line,
                    text: String::new(),
                    value: Value::Null,
                },
                Weight { nodes: 1, bytes: 0 },
            )),
            _ => Err(BuildError::Other(line, "unexpected YAML event".to_string())),
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node, weight: Weight) {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), weight));
        }
    }

    /// One more level of nesting, refused past [`MAX_DEPTH`].
    fn enter(&mut self, line: usize) -> Result<(), BuildError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(BuildError::Other(
                line,
                format!("collections nested more than {MAX_DEPTH} deep"),
            ));
        }
        Ok(())
    }
}

/// `<<: *anchor` or `<<: [*a, *b]`: keys of the merged mappings that the mapping does not set itself.
fn merge_into(merged: &mut Vec<Entry>, value: &Node) {
    match &value.value {
        Value::Map(entries) => {
            for e in entries {
                if !merged.iter().any(|m| m.key == e.key) {
                    merged.push(e.clone());
                }
            }
        }
        Value::Seq(items) => {
            for item in items {
                merge_into(merged, item);
            }
        }
        _ => {}
    }
}

fn scalar(
    text: String,
    style: ScalarStyle,
    tag: Option<&Tag>,
    line: usize,
) -> Result<Node, BuildError> {
    let core_suffix = tag
        .filter(|t| t.is_yaml_core_schema())
        .map(|t| t.suffix.as_str());
    let value = match core_suffix {
        Some("str") => Value::Str,
        Some("binary") => match decode::decode_base64(text.as_bytes()) {
            Ok(bytes) => Value::Binary(bytes),
            Err(_) => {
                return Err(BuildError::Other(
                    line,
                    "!!binary value contains invalid base64 data".to_string(),
                ))
            }
        },
        Some("null") => Value::Null,
        Some(_) => resolve(&text),
        None if tag.is_some() => Value::Str,
        None if style == ScalarStyle::Plain => resolve(&text),
        None => Value::Str,
    };
    Ok(Node { line, text, value })
}

/// goyaml's implicit typing of a plain scalar (YAML 1.1).
pub(crate) fn resolve(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return Value::Str;
    }
    let plain = text.replace('_', "");
    if let Some(i) = parse_go_int(&plain) {
        return Value::Int(i);
    }
    if plain
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
    {
        if let Ok(f) = plain.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, then `0x` hex, `0b` binary, `0o`/leading `0` octal or decimal.
fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(d) = body.strip_prefix("0x").or(body.strip_prefix("0X")) {
        (16, d)
    } else if let Some(d) = body.strip_prefix("0b").or(body.strip_prefix("0B")) {
        (2, d)
    } else if let Some(d) = body.strip_prefix("0o").or(body.strip_prefix("0O")) {
        (8, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn yaml11_resolution_like_goyaml() {
        let cases: &[(&str, Value)] = &[
            ("yes", Value::Bool(true)),
            ("Yes", Value::Bool(true)),
            ("on", Value::Bool(true)),
            ("ON", Value::Bool(true)),
            ("y", Value::Bool(true)),
            ("true", Value::Bool(true)),
            ("no", Value::Bool(false)),
            ("off", Value::Bool(false)),
            ("n", Value::Bool(false)),
            ("False", Value::Bool(false)),
            ("~", Value::Null),
            ("null", Value::Null),
            ("0744", Value::Int(0o744)),
            ("744", Value::Int(744)),
            ("0x1F", Value::Int(31)),
            ("-12", Value::Int(-12)),
            ("+7", Value::Int(7)),
            ("1_000", Value::Int(1000)),
            ("0b101", Value::Int(5)),
            ("1.5", Value::Float(1.5)),
            ("08", Value::Float(8.0)),
            ("1e3", Value::Float(1000.0)),
            (".inf", Value::Float(f64::INFINITY)),
            ("-.inf", Value::Float(f64::NEG_INFINITY)),
            ("off2", Value::Str),
            ("yes please", Value::Str),
            ("1.2.3.4", Value::Str),
            ("-", Value::Str),
            ("$public_ipv4:2379", Value::Str),
            ("12:30", Value::Str),
        ];
        for (text, want) in cases {
            assert_eq!(resolve(text), *want, "{text}");
        }
        assert!(matches!(resolve(".nan"), Value::Float(f) if f.is_nan()));
    }

    fn doc(text: &str) -> Node {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
    }

    #[test]
    fn quoting_and_tags_decide_the_type() {
        let n = doc("a: 'on'\nb: \"0644\"\nc: !!str yes\nd: !!binary aGVsbG8K\ne: |\n  on\nf: on\ng: !!int 12\nh: !custom on\n");
        let kind = |k: &str| n.get(k).unwrap().value.kind();
        assert_eq!(kind("a"), Kind::String);
        assert_eq!(kind("b"), Kind::String);
        assert_eq!(kind("c"), Kind::String);
        assert_eq!(
            n.get("d").unwrap().value.value,
            Value::Binary(b"hello\n".to_vec())
        );
        assert_eq!(n.get("d").unwrap().value.string().unwrap(), "hello\n");
        assert_eq!(kind("e"), Kind::String);
        assert_eq!(n.get("e").unwrap().value.text, "on\n");
        assert_eq!(kind("f"), Kind::Bool);
        assert_eq!(n.get("f").unwrap().value.string().unwrap(), "on");
        assert_eq!(n.get("g").unwrap().value.value, Value::Int(12));
        assert_eq!(kind("h"), Kind::String);
        let e = parse("a: !!binary '%%%'\n").unwrap_err();
        assert_eq!(
            e,
            SyntaxError {
                line: 1,
                message: "!!binary value contains invalid base64 data".into()
            }
        );
    }

    #[test]
    fn lines_keys_and_normalisation() {
        let n = doc("#cloud-config\n\ncoreos:\n  etcd2:\n    listen-client-urls: x\n  units:\n    - name: a\n\n    -\n      name: b\n");
        let coreos = n.get("coreos").unwrap();
        assert_eq!(coreos.line, 3);
        let etcd2 = coreos.value.get("etcd2").unwrap();
        assert_eq!(etcd2.line, 4);
        let url = etcd2.value.get("listen_client_urls").unwrap();
        assert_eq!((url.line, url.value.text.as_str()), (5, "x"));
        let Value::Seq(units) = &coreos.value.get("units").unwrap().value.value else {
            panic!("units is a sequence")
        };
        assert_eq!(units[0].line, 7);
        assert_eq!(units[0].get("name").unwrap().line, 7);
        assert_eq!(units[1].get("name").unwrap().line, 10);
    }

    #[test]
    fn anchors_merges_and_documents() {
        let n = doc("base: &b\n  enable: true\n  name: x\nunit:\n  <<: *b\n  name: y\nref: *b\n---\nsecond: document\n");
        let unit = &n.get("unit").unwrap().value;
        assert_eq!(unit.get("name").unwrap().value.text, "y");
        assert_eq!(unit.get("enable").unwrap().value.value, Value::Bool(true));
        assert_eq!(
            n.get("ref").unwrap().value.get("name").unwrap().value.text,
            "x"
        );
        assert!(n.get("second").is_none());
        assert_eq!(doc("---\n").value, Value::Map(Vec::new()));
        assert_eq!(doc("").value, Value::Map(Vec::new()));
        assert_eq!(doc("# only a comment\n").value, Value::Map(Vec::new()));
        assert_eq!(doc("--- \nhostname: a\n").get("hostname").unwrap().line, 2);
        // Tabs inside scalars and after tokens are content or separation, not indentation.
        assert_eq!(
            doc("a: |\n  x\n  \ty\nb: \"p\n  \t\n  q\"\n")
                .get("a")
                .unwrap()
                .value
                .text,
            "x\n\ty\n"
        );
        assert_eq!(
            doc("a: 1 \t# comment\n").get("a").unwrap().value.value,
            Value::Int(1)
        );
    }

    /// The classic billion laughs: nine levels of nine aliases, 10^9 strings once expanded.
    pub(crate) fn billion_laughs() -> String {
        let mut text = String::from("#cloud-config\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            let refs = vec![format!("*{prev}"); 9].join(",");
            text.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        text
    }

    #[test]
    fn alias_bombs_fail_fast_at_the_alias_that_breaks_the_budget() {
        let start = std::time::Instant::now();
        let bomb = billion_laughs();
        assert!(bomb.len() < 400, "{}", bomb.len());
        // f's first *e brings the copies past 100000 nodes (b..e made 74718)
        assert_eq!(
            parse(&bomb).unwrap_err(),
            SyntaxError {
                line: 7,
                message:
                    "excessive aliasing: aliases expand to more than 100000 nodes (an alias bomb?)"
                        .into()
            }
        );
        // long text copied many times
        let big = format!(
            "a: &a \"{}\"\nb: [{}]\n",
            "x".repeat(100_000),
            vec!["*a"; 50].join(",")
        );
        assert_eq!(
            parse(&big).unwrap_err(),
            SyntaxError {
                line: 2,
                message: format!(
                    "excessive aliasing: aliases expand to more than {MAX_ALIAS_BYTES} bytes of text (an alias bomb?)"
                )
            }
        );
        // many cheap aliases
        let many = format!("a: &a x\nb:\n{}", "  - *a\n".repeat(MAX_ALIASES + 1));
        assert_eq!(
            parse(&many).unwrap_err(),
            SyntaxError {
                line: MAX_ALIASES + 3,
                message: format!(
                    "excessive aliasing: more than {MAX_ALIASES} aliases (an alias bomb?)"
                )
            }
        );
        // merges count too
        let mut merges = String::from("a: &a {k: [1,2,3,4,5,6,7,8,9]}\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g"])
        {
            let refs = vec![format!("*{prev}"); 9].join(",");
            merges.push_str(&format!("{name}: &{name} {{<<: *{prev}, l: [{refs}]}}\n"));
        }
        assert!(
            parse(&merges)
                .unwrap_err()
                .message
                .starts_with("excessive aliasing"),
            "merges"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn ordinary_aliases_still_expand() {
        let mut text = String::from("base: &b\n  enable: true\n  command: start\nunits:\n");
        for i in 0..500 {
            text.push_str(&format!("  - <<: *b\n    name: u{i}.service\n"));
        }
        let n = doc(&text);
        let Value::Seq(units) = &n.get("units").unwrap().value.value else {
            panic!("units is a sequence")
        };
        assert_eq!(units.len(), 500);
        assert_eq!(units[499].get("name").unwrap().value.text, "u499.service");
        assert_eq!(units[499].get("command").unwrap().value.text, "start");
        assert_eq!(
            units[499].get("enable").unwrap().value.value,
            Value::Bool(true)
        );
        // a chain of aliases within the budget
        let three = "a: &a [x, y]\nb: &b [*a, *a]\nc: [*b, *b, *b]\n";
        let n = doc(three);
        let Value::Seq(c) = &n.get("c").unwrap().value.value else {
            panic!("c is a sequence")
        };
        assert_eq!(c.len(), 3);
        assert_eq!(c[2].line, 3);
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}x\n", "- ".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let deep = format!("{}x\n", "- ".repeat(100_000));
        assert_eq!(
            parse(&deep).unwrap_err(),
            SyntaxError {
                line: 1,
                message: format!("collections nested more than {MAX_DEPTH} deep")
            }
        );
    }

    #[test]
    fn syntax_error_lines() {
        for (text, line) in [
            ("a:\na", 2),
            ("a:\na\n\n\n", 2),
            ("x: 1\ny: [1, 2\n", 2),
            ("x: 1\ny: \"open\n", 2),
            ("a: 1\n  b: 2\n", 2),
            ("a: @x", 1),
            ("a: *nope", 1),
            ("a: 1\n\t# tab-led comment\n", 2),
            ("a:\n  b: 1\n\t\n  c: 2\n", 3),
            ("\t\n", 1),
            ("  \t\nx: [\n", 1),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e:?}");
            assert!(!e.message.is_empty());
        }
    }

    /// Found by fuzzing (fuzz/fuzz_targets/cloud_config.rs): an empty key at the end of the text (`? ` and then
    /// only a comment) was reported one line past the end of the file.
    #[test]
    fn empty_nodes_at_the_end_are_on_the_last_written_line() {
        for (text, key_line) in [
            ("? # c", 1),
            ("a: 1\n?\n\n", 2),
            ("coreos:\n  etcd1:\n? # c", 3),
        ] {
            let root = doc(text);
            let Value::Map(entries) = &root.value else {
                panic!("{text:?}: {root:?}")
            };
            let empty = entries.iter().find(|e| e.key.is_empty()).unwrap();
            assert_eq!(empty.line, key_line, "{text:?}: {root:?}");
        }
        let text = "#cloud-config\ncoreos:\n  etcd1:\n? # c";
        let lines: Vec<usize> = crate::validate(text)
            .findings
            .iter()
            .map(|f| f.line)
            .collect();
        assert_eq!(lines, [3, 4], "{text:?}");
    }
}
