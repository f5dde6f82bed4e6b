//! [`Checker`]: what every check of the inventory needs: the file's name
//! as shown, where each key is written ([`cairn_yaml::Positions`]), and the
//! folder relative paths start from; it turns a finding about
//! `section[i].key` into an [`cairn_yaml::Error::Invalid`] at that key's line.

use std::path::Path;

use cairn_yaml::Positions;

use super::InventoryError;

pub(super) struct Checker<'a> {
    pub shown: String,
    pub positions: Positions,
    pub base: &'a Path,
}

impl<'a> Checker<'a> {
    pub fn new(path: &'a Path, positions: Positions) -> Checker<'a> {
        Checker {
            shown: path.display().to_string(),
            positions,
            base: path.parent().unwrap_or(Path::new(".")),
        }
    }

    /// The line of a key path (`groups[2]`, `updates`), or of the nearest
    /// enclosing one written.
    pub fn line(&self, key: &str) -> usize {
        self.positions.line(key)
    }

    /// `FILE:LINE: section[i].key: message`, at the key's line.
    pub fn invalid(&self, section: &str, i: usize, key: &str, message: String) -> InventoryError {
        let key = if key.is_empty() {
            format!("{section}[{i}]")
        } else {
            format!("{section}[{i}].{key}")
        };
        InventoryError::Yaml(cairn_yaml::Error::Invalid {
            file: self.shown.clone(),
            line: self.line(&key),
            key,
            message,
        })
    }
}
