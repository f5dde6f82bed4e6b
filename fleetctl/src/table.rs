//! Tables as fleetctl printed them: Go's `text/tabwriter` with fleet's
//! settings (minimum width 0, tab width 8, padding 1, padded with tabs),
//! so columns line up on a terminal and scripts see fleet's bytes; and the
//! cleaning of text read from etcd before it reaches a terminal.

/// Renders rows of cells (every row as long as the first) as fleet's
/// tabwriter did: each cell but the last is followed by enough tabs to
/// reach the column's width (its widest cell plus one, rounded up to a
/// multiple of 8); the last cell is not padded.
pub fn render(rows: &[Vec<String>]) -> String {
    const TAB: usize = 8;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols.saturating_sub(1)];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols.saturating_sub(1)) {
            let w = cell.chars().count();
            if w > 0 {
                widths[i] = widths[i].max(w + 1);
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() && i < widths.len() {
                let cellw = widths[i].div_ceil(TAB) * TAB;
                let pad = cellw.saturating_sub(cell.chars().count());
                for _ in 0..pad.div_ceil(TAB) {
                    out.push('\t');
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Text from etcd made safe for one table cell or one line: control
/// characters (tabs, newlines, terminal escapes) are shown escaped, and a
/// cell is cut at `max` characters.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn as_go_tabwriter_with_tabs() {
        // Go: tabwriter.NewWriter(w, 0, 8, 1, '\t', 0) on the same cells.
        let t = render(&[
            row(&["UNIT", "MACHINE", "ACTIVE", "SUB"]),
            row(&[
                "hello.service",
                "113f16a7.../172.17.8.103",
                "active",
                "running",
            ]),
        ]);
        assert_eq!(
            t,
            "UNIT\t\tMACHINE\t\t\t\tACTIVE\tSUB\nhello.service\t113f16a7.../172.17.8.103\tactive\trunning\n"
        );
        // A cell of exactly 7 characters takes one tab; of 8, two.
        assert_eq!(
            render(&[row(&["abcdefg", "x"]), row(&["a", "y"])]),
            "abcdefg\tx\na\ty\n"
        );
        assert_eq!(
            render(&[row(&["abcdefgh", "x"]), row(&["a", "y"])]),
            "abcdefgh\tx\na\t\ty\n"
        );
        assert_eq!(render(&[row(&["one"]), row(&["two"])]), "one\ntwo\n");
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean("active", 64), "active");
        assert_eq!(clean("a\tb\n\x1b[31m", 64), "a\\tb\\n\\u{1b}[31m");
        assert_eq!(clean("abcdef", 3), "abc...");
    }
}
