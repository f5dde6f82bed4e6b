//! Where things are in the inventory file: line lookup for block-style
//! YAML (the item of a top-level list, a key inside it), and [`Checker`],
//! which turns a finding about `section[i].key` into an
//! [`InventoryError::Invalid`] at that line.

use std::path::Path;

use super::InventoryError;

/// What every check needs: the file's name as shown, its lines, and the
/// folder relative paths start from.
pub(super) struct Checker<'a> {
    pub shown: String,
    pub lines: Lines<'a>,
    pub base: &'a Path,
}

impl<'a> Checker<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Checker<'a> {
        Checker {
            shown: path.display().to_string(),
            lines: Lines::new(text),
            base: path.parent().unwrap_or(Path::new(".")),
        }
    }

    /// `FILE:LINE: section[i].key: message`, at the key's line.
    pub fn invalid(&self, section: &str, i: usize, key: &str, message: String) -> InventoryError {
        let line = self.lines.key_line(section, i, key);
        let key = if key.is_empty() {
            format!("{section}[{i}]")
        } else {
            format!("{section}[{i}].{key}")
        };
        InventoryError::Invalid {
            path: self.shown.clone(),
            line,
            key,
            message,
        }
    }
}

/// Line lookup for block-style YAML: where each item of a top-level list starts and where its keys are.
pub(super) struct Lines<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        Lines {
            lines: text.lines().collect(),
        }
    }

    /// 0-based index of the top-level `section:` line.
    pub fn section(&self, section: &str) -> Option<usize> {
        let head = format!("{section}:");
        self.lines.iter().position(|l| l.starts_with(&head))
    }

    /// 0-based line indices of the items of a top-level list.
    fn items(&self, section: &str) -> Vec<usize> {
        let Some(start) = self.section(section) else {
            return Vec::new();
        };
        let mut indent = None;
        let mut out = Vec::new();
        for (n, l) in self.lines.iter().enumerate().skip(start + 1) {
            let t = l.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let ind = l.len() - t.len();
            if ind == 0 && !t.starts_with('-') {
                break;
            }
            if t.starts_with("- ") || t == "-" {
                match indent {
                    None => {
                        indent = Some(ind);
                        out.push(n);
                    }
                    Some(i) if i == ind => out.push(n),
                    _ => {}
                }
            }
        }
        out
    }

    /// 1-based line of item `i` of `section` (the section's line when unknown).
    pub fn item_line(&self, section: &str, i: usize) -> usize {
        self.items(section)
            .get(i)
            .map(|n| n + 1)
            .or_else(|| self.section(section).map(|n| n + 1))
            .unwrap_or(1)
    }

    /// 1-based line of `key:` inside item `i` of `section` (the item's line when not found).
    pub fn key_line(&self, section: &str, i: usize, key: &str) -> usize {
        let items = self.items(section);
        let Some(&start) = items.get(i) else {
            return self.item_line(section, i);
        };
        let end = items.get(i + 1).copied().unwrap_or(self.lines.len());
        let head = format!("{key}:");
        (start..end)
            .find(|&n| {
                self.lines[n]
                    .trim_start()
                    .trim_start_matches("- ")
                    .starts_with(&head)
            })
            .unwrap_or(start)
            + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_items() {
        let text = "profiles:\n  - name: a\n    image: x\n\n  - name: b\n    image: y\ngroups:\n- name: g\n  profile: a\n";
        let l = Lines::new(text);
        assert_eq!(l.items("profiles"), vec![1, 4]);
        assert_eq!(l.key_line("profiles", 1, "image"), 6);
        assert_eq!(l.item_line("groups", 0), 8);
        assert_eq!(l.key_line("groups", 0, "profile"), 9);
    }
}
