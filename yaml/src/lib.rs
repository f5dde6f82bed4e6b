//! cairn-yaml: YAML for cairn's own files (image definitions, the `cairn
//! serve` inventory). One shape for every error in them:
//! `FILE:LINE:COLUMN: key.path: message` when the YAML does not fit the
//! schema, `FILE:LINE: key.path: message` for a check made afterwards,
//! at the line where that key is written ([`Positions`], from the parser's
//! events, so flow style, comments and repeated names elsewhere do not
//! mislead it).
//!
//! Typed reading is serde (`deny_unknown_fields` is the callers') through
//! serde_norway and serde_path_to_error; positions come from saphyr-parser,
//! the parser cloud-config's own tree (`cairn_cloudconfig`) is built with.
//! Cloud-config keeps that tree: it must read YAML 1.1 as coreos-cloudinit
//! did, while cairn's files are YAML 1.2.

mod positions;

pub use positions::Positions;

use serde::de::DeserializeOwned;

/// A YAML file that could not be read as what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// YAML that is malformed or does not fit the schema.
    #[error("{file}:{line}:{column}: {key}{message}")]
    Syntax {
        /// The file as named to the user.
        file: String,
        /// 1-based.
        line: usize,
        /// 1-based.
        column: usize,
        /// `key.path: ` naming the offending key, or empty.
        key: String,
        message: String,
    },
    /// Well-formed YAML whose meaning is wrong.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        /// 1-based line of `key`.
        line: usize,
        /// The key path, e.g. `groups[2].profile`.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

/// A document read as `T`, with where each key is.
#[derive(Debug)]
pub struct Document<T> {
    pub value: T,
    pub positions: Positions,
    /// The file as named in errors.
    pub file: String,
}

impl<T> Document<T> {
    /// An [`Error::Invalid`] about `key` (a path as serde names it:
    /// `users[2].uid`, `update.keys[0]`), at its line.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> Error {
        Error::Invalid {
            file: self.file.clone(),
            line: self.positions.line(key),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Reads `text` (the file `file`, as errors name it) as `T`.
pub fn from_str<T: DeserializeOwned>(file: &str, text: &str) -> Result<Document<T>, Error> {
    let de = serde_norway::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let loc = inner.location();
        let mut message = inner.to_string();
        // serde_norway appends " at line L column C": printed up front.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // ... and may prefix the path of the map it was in
        // ("profiles[0]: unknown field"): the full path is printed already.
        if let Some((head, rest)) = message.split_once(": ") {
            if !head.contains(' ') && !key.is_empty() && key.starts_with(head) {
                message = rest.to_string();
            }
        }
        Error::Syntax {
            file: file.to_string(),
            line: loc.as_ref().map_or(1, |l| l.line()),
            column: loc.as_ref().map_or(1, |l| l.column()),
            key: if key.is_empty() || key == "." {
                String::new()
            } else {
                format!("{key}: ")
            },
            message,
        }
    })?;
    Ok(Document {
        value,
        positions: Positions::index(text),
        file: file.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Def {
        name: String,
        #[serde(default)]
        users: Vec<User>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct User {
        name: String,
        #[serde(default)]
        uid: Option<u32>,
    }

    #[test]
    fn schema_errors_name_file_line_column_and_key() {
        let text = "name: x\nusers:\n  - name: a\n  - name: b\n    uid: many\n";
        let e = from_str::<Def>("def.yaml", text).unwrap_err().to_string();
        assert!(
            e.starts_with("def.yaml:5:10: users[1].uid: invalid type"),
            "{e}"
        );
        let e = from_str::<Def>("def.yaml", "name: x\nusers:\n  - name: a\n    shell: sh\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("def.yaml:4:5: users[0].shell: unknown field `shell`"),
            "{e}"
        );
        let e = from_str::<Def>("def.yaml", "name: [x\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("def.yaml:"), "{e}");
    }

    #[test]
    fn later_checks_point_at_the_key() {
        // `name:` appears three times; flow style on one line
        let text = "name: x\n# name: in a comment\nusers: [{name: a}, {name: b, uid: 7}]\n";
        let d = from_str::<Def>("def.yaml", text).unwrap();
        let e = d.invalid("users[1].uid", "7 is taken").to_string();
        assert_eq!(e, "def.yaml:3: users[1].uid: 7 is taken");
        assert_eq!(
            d.invalid("name", "bad").to_string(),
            "def.yaml:1: name: bad"
        );
    }
}
