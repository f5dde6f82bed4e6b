//! [`Positions`]: the line and column of every key path of a YAML
//! document, from saphyr-parser's events (no values are built, aliases are
//! not expanded, so any text indexes in time linear in its size).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// Where each key path of the first document starts. Paths are spelled as
/// serde_path_to_error prints them: `name`, `update.keys[0]`,
/// `groups[2].selector.mac`. A mapping entry is at its key; a sequence
/// item at its first character.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    at: HashMap<String, (usize, usize)>,
}

enum Frame {
    /// A mapping: the path of the mapping, and the key just read (waiting
    /// for its value) if any.
    Map { path: String, key: Option<String> },
    /// A sequence: its path and the index of the next item.
    Seq { path: String, next: usize },
    /// A collection used as a mapping key (`? [a, b]`): nothing in it has
    /// a serde path; its depth inside.
    ComplexKey { depth: usize },
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Positions {
    /// Indexes `text`; a syntax error ends the index where it is (the
    /// typed reading reports it).
    pub fn index(text: &str) -> Positions {
        let mut at = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        let mut documents = 0;
        while let Some(Ok((ev, span))) = parser.next_event() {
            let pos = (span.start.line().max(1), span.start.col() + 1);
            match ev {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        break;
                    }
                    continue;
                }
                Event::StreamStart | Event::Nothing | Event::DocumentEnd => continue,
                Event::StreamEnd => break,
                Event::MappingEnd | Event::SequenceEnd => {
                    match stack.last_mut() {
                        Some(Frame::ComplexKey { depth }) if *depth > 0 => *depth -= 1,
                        Some(Frame::ComplexKey { .. }) => {
                            // the key is complete; its value comes next
                            stack.pop();
                        }
                        _ => {
                            stack.pop();
                            // the collection was the value of its parent's key
                            if let Some(Frame::Map { key, .. }) = stack.last_mut() {
                                *key = None;
                            }
                        }
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(Frame::ComplexKey { depth }) = stack.last_mut() {
                if matches!(ev, Event::MappingStart(..) | Event::SequenceStart(..)) {
                    *depth += 1;
                }
                continue;
            }
            // a node: where does it go?
            let path = match stack.last_mut() {
                None => String::new(),
                Some(Frame::ComplexKey { .. }) => unreachable!("handled above"),
                Some(Frame::Seq { path, next }) => {
                    let p = format!("{path}[{next}]");
                    *next += 1;
                    at.entry(p.clone()).or_insert(pos);
                    p
                }
                Some(Frame::Map { path, key }) => match key.take() {
                    Some(k) => join(path, &k),
                    None => {
                        // this node is a key
                        if let Event::Scalar(text, ..) = &ev {
                            let p = join(path, text);
                            at.entry(p).or_insert(pos);
                            *key = Some(text.to_string());
                        } else {
                            // a complex key: its value has no serde path
                            *key = Some(String::from("?"));
                            if matches!(ev, Event::MappingStart(..) | Event::SequenceStart(..)) {
                                stack.push(Frame::ComplexKey { depth: 0 });
                            }
                        }
                        continue;
                    }
                },
            };
            match ev {
                Event::MappingStart(..) => stack.push(Frame::Map { path, key: None }),
                Event::SequenceStart(..) => stack.push(Frame::Seq { path, next: 0 }),
                _ => {}
            }
        }
        Positions { at }
    }

    /// 1-based (line, column) of `path` if written.
    pub fn get(&self, path: &str) -> Option<(usize, usize)> {
        self.at.get(path).copied()
    }

    /// The line of `path`, else of the nearest enclosing path that is
    /// written (`users[3].uid` not written: `users[3]`), else 1.
    pub fn line(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some(&(line, _)) = self.at.get(p) {
                return line;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_style_paths() {
        let text = "\
name: x
packages:
  - a
  - b
update:
  channel: lab
  keys:
    - k1.pub
groups:
  - name: g
    selector:
      mac: 52-54-00-00-00-01
";
        let p = Positions::index(text);
        assert_eq!(p.get("name"), Some((1, 1)));
        assert_eq!(p.get("packages[1]"), Some((4, 5)));
        assert_eq!(p.get("update.channel"), Some((6, 3)));
        assert_eq!(p.get("update.keys[0]"), Some((8, 7)));
        assert_eq!(p.get("groups[0].name"), Some((10, 5)));
        assert_eq!(p.get("groups[0].selector.mac"), Some((12, 7)));
        assert_eq!(p.line("groups[0].selector.uuid"), 11);
        assert_eq!(p.line("groups[5].name"), 9);
        assert_eq!(p.line("nowhere"), 1);
    }

    #[test]
    fn flow_style_comments_anchors_and_later_documents() {
        let text = "\
# name: not here
base: &b {size: 1G}
disk: *b
users: [{name: a}, {name: b, uid: 7}]
empty:
---
name: second document
";
        let p = Positions::index(text);
        assert_eq!(p.get("name"), None);
        assert_eq!(p.get("base.size"), Some((2, 11)));
        assert_eq!(p.get("disk"), Some((3, 1)));
        assert_eq!(p.get("users[1].uid"), Some((4, 30)));
        assert_eq!(p.get("empty"), Some((5, 1)));
    }

    #[test]
    fn complex_keys_and_bad_yaml_do_not_panic() {
        let p = Positions::index("? [a, b]\n: 1\nc: 2\n");
        assert_eq!(p.get("c"), Some((3, 1)));
        let p = Positions::index("a: 1\nb: [unclosed\n");
        assert_eq!(p.get("a"), Some((1, 1)));
        let deep = "a: ".to_string() + &"[".repeat(10_000);
        let _ = Positions::index(&deep);
    }
}
