//! The recorded sessions of `docs/usage.md` ("First steps"): a ```console
//! block after a `<!-- transcript: NAME -->` line. `$ ` lines are commands,
//! the lines after one its expected output: `...` alone is a gap (any
//! lines), `<...>` inside a line any text. Tests run the commands and check
//! that every expected line appears in what came back, so the document
//! cannot drift from what cairn does.

use std::path::Path;

/// One command and the output lines it must produce.
#[derive(Debug, Clone)]
pub struct Step {
    pub command: String,
    pub expect: Vec<String>,
}

impl Step {
    /// The command's words, split as a POSIX shell would.
    pub fn argv(&self) -> Vec<String> {
        shlex::split(&self.command)
            .unwrap_or_else(|| panic!("unbalanced quotes in {:?}", self.command))
    }

    /// Panics naming the first expected line that `output` lacks.
    pub fn check(&self, output: &str) {
        for want in &self.expect {
            assert!(
                output.lines().any(|l| matches(want, l.trim_end())),
                "`{}`: no output line matches {want:?}; output:\n{output}",
                self.command
            );
        }
    }
}

/// Whether `line` matches `pattern` (`<...>` is any text, the rest literal).
pub fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("<...>").collect();
    if parts.len() == 1 {
        return line == pattern;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || line.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &line[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The steps of transcript `name` in `docs/usage.md`.
pub fn load(name: &str) -> Vec<Step> {
    let path = super::repo_root().join("docs/usage.md");
    parse(&std::fs::read_to_string(&path).unwrap(), name, &path)
}

fn parse(text: &str, name: &str, path: &Path) -> Vec<Step> {
    let marker = format!("<!-- transcript: {name} -->");
    let after = text
        .split_once(&marker)
        .unwrap_or_else(|| panic!("{}: no {marker}", path.display()))
        .1;
    let block = after
        .trim_start()
        .strip_prefix("```console\n")
        .unwrap_or_else(|| panic!("{}: {marker} is not followed by ```console", path.display()));
    let block = block.split("\n```").next().unwrap();
    let mut steps: Vec<Step> = Vec::new();
    for line in block.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: cmd.to_owned(),
                expect: Vec::new(),
            });
        } else if line.trim() != "..." && !line.trim().is_empty() {
            steps
                .last_mut()
                .unwrap_or_else(|| panic!("{}: output before a command", path.display()))
                .expect
                .push(line.to_owned());
        }
    }
    steps
}
