//! deb822 control-file syntax: paragraphs of `Field: value` lines, as used by
//! `Packages`, `Release`, `*.sources` and `DEBIAN/control`.
//!
//! Owns only the syntax (paragraph splitting, continuation lines, field
//! lookup, line numbers); the meaning of each field belongs to the modules
//! that read them.

use std::fmt;

/// One field of a paragraph: its name as written, its value and the 1-based
/// line where the field starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The value with continuation lines joined by `\n`; the leading space of
    /// each continuation line is removed and a lone `.` stands for an empty line.
    pub value: String,
    pub line: usize,
}

/// A paragraph: fields in file order plus the line where it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paragraph {
    pub fields: Vec<Field>,
    pub line: usize,
}

impl Paragraph {
    /// The value of field `name` (field names are case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.field(name).map(|f| f.value.as_str())
    }

    /// The whole field, with its line number.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// A syntax error, with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parse a deb822 document into paragraphs. Lines starting with `#` are
/// comments (allowed in `.sources`, harmless elsewhere).
pub fn parse(text: &str) -> Result<Vec<Paragraph>, SyntaxError> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some(last) = cur.fields.last_mut() else {
                return Err(SyntaxError {
                    line: line_no,
                    message: "continuation line before any field".into(),
                });
            };
            let cont = &line[1..];
            // A `Field:` whose value starts on the next line (SHA256: in
            // Release) keeps an empty first line; a lone `.` is an empty line.
            last.value.push('\n');
            if cont.trim() != "." {
                last.value.push_str(cont);
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(SyntaxError {
                line: line_no,
                message: format!("expected `Field: value`, found {line:?}"),
            });
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(SyntaxError {
                line: line_no,
                message: format!("invalid field name {name:?}"),
            });
        }
        if cur.fields.is_empty() {
            cur.line = line_no;
        }
        cur.fields.push(Field {
            name: name.to_string(),
            value: value.trim().to_string(),
            line: line_no,
        });
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

impl fmt::Display for Paragraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for field in &self.fields {
            write!(f, "{}:", field.name)?;
            for (i, l) in field.value.split('\n').enumerate() {
                if i == 0 {
                    if !l.is_empty() {
                        write!(f, " {l}")?;
                    }
                } else if l.is_empty() {
                    write!(f, "\n .")?;
                } else {
                    write!(f, "\n {l}")?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_fields_and_continuations() {
        let text =
            "Package: a\nVersion: 1.0\nDescription: short\n long line\n .\n more\n\n\nPackage: b\n";
        let ps = parse(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("package"), Some("a"));
        assert_eq!(ps[0].get("Description"), Some("short\nlong line\n\nmore"));
        assert_eq!(ps[1].line, 9);
        assert_eq!(ps[1].field("Package").unwrap().line, 9);
    }

    #[test]
    fn value_starting_on_next_line() {
        let ps = parse("SHA256:\n abc 12 main/x\n def 3 main/y\n").unwrap();
        assert_eq!(ps[0].get("SHA256"), Some("\nabc 12 main/x\ndef 3 main/y"));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("Package: a\nno colon here\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse(" leading\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn comments_are_skipped() {
        let ps = parse("# c\nTypes: deb\n# inside\nURIs: x\n").unwrap();
        assert_eq!(ps[0].fields.len(), 2);
        assert_eq!(ps[0].line, 2);
    }

    #[test]
    fn display_round_trips() {
        let text = "Package: a\nDescription: short\n long\n .\n more\n";
        let ps = parse(text).unwrap();
        assert_eq!(ps[0].to_string(), text);
        assert_eq!(parse(&ps[0].to_string()).unwrap(), ps);
    }
}
