//! Just enough POSIX shell reading to find the commands Debian maintainer
//! scripts run: continuation lines joined, comments dropped, words split
//! with quotes removed, `$VAR` expanded from simple assignments in the same
//! script, and simple commands split at `;`, `&&`, `||`, `|`.
//!
//! It never runs anything and does not follow control flow: every command
//! in the text counts, whatever branch it sits in. Callers decide which
//! commands matter and skip (with a debug log) what they cannot read.

use std::collections::BTreeMap;

/// Variables known while reading one script. A variable assigned twice with
/// different values is unknown (its value depends on control flow).
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: BTreeMap<String, Option<String>>,
}

impl Vars {
    /// Collect `NAME=value` assignments (values without command
    /// substitution) from a whole script.
    pub fn from_script(script: &str) -> Vars {
        let mut vars = Vars::default();
        for line in logical_lines(script) {
            for cmd in split_commands(&line) {
                let start = cmd
                    .iter()
                    .take_while(|t| PREFIXES.contains(&t.as_str()))
                    .count();
                for tok in &cmd[start..] {
                    let Some((name, raw)) = assignment(tok) else {
                        break;
                    };
                    let value = if raw.contains("$(") || raw.contains('`') {
                        None
                    } else {
                        expand_word(raw, &vars)
                    };
                    match vars.values.get(name) {
                        Some(prev) if *prev != value => {
                            vars.values.insert(name.to_string(), None);
                        }
                        _ => {
                            vars.values.insert(name.to_string(), value);
                        }
                    }
                }
            }
        }
        vars
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.values
            .insert(name.to_string(), Some(value.to_string()));
    }

    /// The value of `name`: `DPKG_ROOT` is always empty (scripts run on the
    /// real root); unknown or ambiguous variables are `None`.
    pub fn get(&self, name: &str) -> Option<&str> {
        if name == "DPKG_ROOT" {
            return Some("");
        }
        self.values.get(name).and_then(|v| v.as_deref())
    }
}

/// `NAME=value` at the start of a raw token (before quote removal).
fn assignment(tok: &str) -> Option<(&str, &str)> {
    let (name, value) = tok.split_once('=')?;
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    ok.then_some((name, value))
}

/// The script's lines with `\`-newline continuations joined and comment
/// lines (and trailing ` # comments` outside quotes) removed. Here-document
/// bodies are dropped.
pub fn logical_lines(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut heredoc: Option<String> = None;
    for raw in script.lines() {
        if let Some(end) = &heredoc {
            if raw.trim() == end {
                heredoc = None;
            }
            continue;
        }
        if let Some(stripped) = raw.strip_suffix('\\') {
            current.push_str(stripped);
            current.push(' ');
            continue;
        }
        current.push_str(raw);
        let line = strip_comment(&current);
        if let Some(tag) = heredoc_tag(&line) {
            heredoc = Some(tag);
        }
        if !line.trim().is_empty() {
            out.push(line);
        }
        current.clear();
    }
    if !current.trim().is_empty() {
        out.push(strip_comment(&current));
    }
    out
}

/// `cat <<EOF`, `<<-'EOF'`: the terminator word.
fn heredoc_tag(line: &str) -> Option<String> {
    let i = line.find("<<")?;
    let rest = line[i + 2..].trim_start_matches('-').trim_start();
    let tag: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!tag.is_empty()).then_some(tag)
}

fn strip_comment(line: &str) -> String {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            prev_space = false;
            continue;
        }
        match (quote, c) {
            (_, '\\') if quote != Some('\'') => escaped = true,
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return line[..i].to_string(),
            _ => {}
        }
        prev_space = c.is_whitespace() || (quote.is_none() && ";&|(".contains(c));
    }
    line.to_string()
}

/// Split one logical line into simple commands of raw tokens (quotes still
/// in place), at unquoted `;`, `&`, `|`, `(`, `)`, `{`/`}` words and
/// redirections (a redirection and its target are dropped).
pub fn split_commands(line: &str) -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<String>> = Vec::new();
    let mut cmd: Vec<String> = Vec::new();
    let mut tok = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut skip_next = false;
    let mut depth = 0usize; // inside $( ... )
    let push_tok = |tok: &mut String, cmd: &mut Vec<String>, skip_next: &mut bool| {
        if tok.is_empty() {
            return;
        }
        if *skip_next {
            *skip_next = false;
        } else {
            cmd.push(std::mem::take(tok));
        }
        tok.clear();
    };
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if escaped {
            tok.push(c);
            escaped = false;
            i += 1;
            continue;
        }
        match quote {
            Some(q) => {
                tok.push(c);
                if c == q {
                    quote = None;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                }
            }
            None => {
                if depth > 0 {
                    tok.push(c);
                    if c == '(' {
                        depth += 1;
                    } else if c == ')' {
                        depth -= 1;
                    }
                } else if c == '\\' {
                    tok.push(c);
                    escaped = true;
                } else if c == '\'' || c == '"' || c == '`' {
                    tok.push(c);
                    quote = Some(c);
                } else if c == '$' && chars.get(i + 1) == Some(&'(') {
                    tok.push_str("$(");
                    depth = 1;
                    i += 1;
                } else if c.is_whitespace() {
                    push_tok(&mut tok, &mut cmd, &mut skip_next);
                } else if ";&|()".contains(c) {
                    push_tok(&mut tok, &mut cmd, &mut skip_next);
                    if !cmd.is_empty() {
                        cmds.push(std::mem::take(&mut cmd));
                    }
                } else if c == '>' || c == '<' {
                    // `2>/dev/null`, `>>file`, `<<EOF`: drop the operator and its target.
                    let fd_only = !tok.is_empty() && tok.chars().all(|d| d.is_ascii_digit());
                    if fd_only {
                        tok.clear();
                    } else {
                        push_tok(&mut tok, &mut cmd, &mut skip_next);
                    }
                    while i + 1 < chars.len() && "<>&-".contains(chars[i + 1]) {
                        i += 1;
                    }
                    // `2>&1` has its target glued on: swallow digits too.
                    if chars.get(i) == Some(&'&') {
                        while i + 1 < chars.len() && chars[i + 1].is_ascii_digit() {
                            i += 1;
                        }
                    } else {
                        skip_next = true;
                    }
                } else {
                    tok.push(c);
                }
            }
        }
        i += 1;
    }
    push_tok(&mut tok, &mut cmd, &mut skip_next);
    if !cmd.is_empty() {
        cmds.push(cmd);
    }
    cmds
}

/// Remove quotes from a raw token and expand `$VAR`, `${VAR}`, `${VAR:-x}`
/// from `vars`. `None` when the word depends on anything unknown (an unset
/// variable, `$1`, command substitution).
pub fn expand_word(raw: &str, vars: &Vars) -> Option<String> {
    let mut out = String::new();
    let chars: Vec<char> = raw.chars().collect();
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => out.push(c),
            (None, '\'') => quote = Some('\''),
            (None, '"') => quote = Some('"'),
            (Some('"'), '"') => quote = None,
            (_, '`') => return None,
            (_, '\\') => {
                i += 1;
                if let Some(&n) = chars.get(i) {
                    // Inside double quotes a backslash only escapes $ ` " \.
                    if quote == Some('"') && !"$`\"\\".contains(n) {
                        out.push('\\');
                    }
                    out.push(n);
                }
            }
            (_, '$') => {
                let next = *chars.get(i + 1)?;
                if next == '{' {
                    let end = chars[i..].iter().position(|&c| c == '}')? + i;
                    let inner: String = chars[i + 2..end].iter().collect();
                    let (name, default) = match inner.split_once(":-") {
                        Some((n, d)) => (n.to_string(), Some(d.to_string())),
                        None => match inner.split_once(":+") {
                            // `${DPKG_ROOT:+--root=...}`: empty when the variable is.
                            Some((n, alt)) => {
                                let v = vars.get(n)?;
                                if !v.is_empty() {
                                    out.push_str(&expand_word(alt, vars)?);
                                }
                                i = end + 1;
                                continue;
                            }
                            None => (inner.clone(), None),
                        },
                    };
                    match (vars.get(&name), default) {
                        (Some(v), _) if !v.is_empty() => out.push_str(v),
                        (Some(_), Some(d)) | (None, Some(d)) => {
                            out.push_str(&expand_word(&d, vars)?)
                        }
                        (Some(v), None) => out.push_str(v),
                        (None, None) => return None,
                    }
                    i = end + 1;
                    continue;
                } else if next.is_ascii_alphabetic() || next == '_' {
                    let len = chars[i + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                        .count();
                    let name: String = chars[i + 1..i + 1 + len].iter().collect();
                    out.push_str(vars.get(&name)?);
                    i += 1 + len;
                    continue;
                } else {
                    // $1, $@, $(...), $?: unknown.
                    return None;
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

/// Shell keywords and wrappers that may precede the command proper.
const PREFIXES: &[&str] = &[
    "if",
    "then",
    "else",
    "elif",
    "do",
    "while",
    "until",
    "!",
    "{",
    "}",
    "in_sysroot",
    "command",
    "exec",
    "time",
];

/// Every simple command of `script`, words expanded (`None` for a word that
/// could not be expanded), with leading keywords, wrappers and `VAR=x`
/// prefixes removed. Function definitions `name() {` are skipped.
pub fn commands(script: &str, vars: &Vars) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    for line in logical_lines(script) {
        for cmd in split_commands(&line) {
            let mut start = 0;
            while start < cmd.len() {
                let t = cmd[start].as_str();
                if PREFIXES.contains(&t) || assignment(t).is_some() {
                    start += 1;
                } else {
                    break;
                }
            }
            if start >= cmd.len() {
                continue;
            }
            // An unquoted expansion to nothing (`${DPKG_ROOT:+--root=...}`)
            // is no word at all.
            out.push(
                cmd[start..]
                    .iter()
                    .map(|t| (t, expand_word(t, vars)))
                    .filter(|(t, w)| w.as_deref() != Some("") || t.contains(['"', '\'']))
                    .map(|(_, w)| w)
                    .collect(),
            );
        }
    }
    out
}

/// Commands of `script` whose first word is one of `names` (the script's own
/// variables expanded).
pub fn find_commands(script: &str, names: &[&str]) -> Vec<Vec<Option<String>>> {
    let vars = Vars::from_script(script);
    commands(script, &vars)
        .into_iter()
        .filter(|c| {
            c.first()
                .and_then(|w| w.as_deref())
                .is_some_and(|w| names.contains(&w.rsplit('/').next().unwrap_or(w)))
        })
        .collect()
}

/// Render a command for log messages (`?` for unexpandable words).
pub fn display(cmd: &[Option<String>]) -> String {
    cmd.iter()
        .map(|w| w.as_deref().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_heredocs() {
        let s = "#!/bin/sh\n# comment\nfoo a \\\n   b # trailing\ncat <<EOF\nnot a command\nEOF\necho 'x # y'\n";
        let l = logical_lines(s);
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(l[0].starts_with("foo a ") && l[0].contains(" b"), "{l:?}");
        assert!(!l[0].contains("trailing"));
        assert!(l[1].starts_with("cat"));
        assert_eq!(l[2], "echo 'x # y'");
    }

    #[test]
    fn words_quotes_and_variables() {
        let s = "MESSAGEUSER=messagebus\nNAME=\"a b\"\nin_sysroot adduser --system --home \"$DPKG_ROOT/x\" \"$MESSAGEUSER\" ${NAME} 2>/dev/null || true\n";
        let vars = Vars::from_script(s);
        let cmds = commands(s, &vars);
        let add: Vec<_> = cmds
            .iter()
            .find(|c| c[0].as_deref() == Some("adduser"))
            .unwrap()
            .iter()
            .map(|w| w.clone().unwrap())
            .collect();
        assert_eq!(
            add,
            ["adduser", "--system", "--home", "/x", "messagebus", "a b"]
        );
        assert!(cmds.iter().any(|c| c[0].as_deref() == Some("true")));
    }

    #[test]
    fn unknown_and_ambiguous_variables_are_none() {
        let s = "X=1\nif a; then X=2; fi\nfoo \"$X\" \"$1\" $(uname) ${Y:-dflt} ${DPKG_ROOT:+--root=$DPKG_ROOT}\n";
        let vars = Vars::from_script(s);
        let foo = commands(s, &vars)
            .into_iter()
            .find(|c| c[0].as_deref() == Some("foo"))
            .unwrap();
        assert_eq!(foo[1], None);
        assert_eq!(foo[2], None);
        assert_eq!(foo[3], None);
        assert_eq!(foo[4].as_deref(), Some("dflt"));
        assert_eq!(
            foo.len(),
            5,
            "unquoted empty expansions are no words: {foo:?}"
        );
    }

    #[test]
    fn redirections_are_dropped() {
        let c = split_commands("deb-systemd-helper enable 'x.service' >/dev/null 2>&1 || true");
        assert_eq!(c[0], ["deb-systemd-helper", "enable", "'x.service'"]);
        assert_eq!(c[1], ["true"]);
    }
}
