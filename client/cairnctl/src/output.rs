//! How cairnctl prints: aligned tables, JSON, or plain lines.

use cairn_client::KeyValue;
use serde_json::{json, Value};

/// The output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header row.
    Table,
    /// One JSON document per result (one line per watch batch).
    Json,
    /// Plain lines, easy to use in scripts (like etcdctl's default).
    Simple,
}

/// A table: a header and rows of cells, printed with aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(&widths) {
                s.push(' ');
                s.push_str(c);
                s.push_str(&" ".repeat(w - c.chars().count()));
                s.push_str(" |");
            }
            s.push('\n');
            s
        };
        let rule = {
            let mut s = String::from("+");
            for w in &widths {
                s.push_str(&"-".repeat(w + 2));
                s.push('+');
            }
            s.push('\n');
            s
        };
        let mut out = rule.clone();
        out.push_str(&line(&self.header));
        out.push_str(&rule);
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out.push_str(&rule);
        out
    }
}

/// Bytes as text: UTF-8 as is, anything else as `0x` and hex.
pub fn text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("0x");
            for x in b {
                s.push_str(&format!("{x:02x}"));
            }
            s
        }
    }
}

/// A pair as JSON.
pub fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

/// Pairs as a table; with `rev_info` the revision columns too.
pub fn kv_table(kvs: &[KeyValue], keys_only: bool, rev_info: bool) -> Table {
    let mut h = vec!["KEY"];
    if !keys_only {
        h.push("VALUE");
    }
    if rev_info {
        h.extend(["CREATE REV", "MOD REV", "VERSION"]);
    }
    let mut t = Table::new(&h);
    for kv in kvs {
        let mut r = vec![text(&kv.key)];
        if !keys_only {
            r.push(text(&kv.value));
        }
        if rev_info {
            r.extend([
                kv.create_revision.to_string(),
                kv.mod_revision.to_string(),
                kv.version.to_string(),
            ]);
        }
        t.row(r);
    }
    t
}

/// Bytes as a human size.
pub fn size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        let r = t.render();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{r}");
        assert_eq!(lines[1], "| A         | LONGER |");
    }

    #[test]
    fn text_and_sizes() {
        assert_eq!(text(b"abc"), "abc");
        assert_eq!(text(&[0xff, 0x01]), "0xff01");
        assert_eq!(size(12), "12 B");
        assert_eq!(size(1536), "1.5 KiB");
    }
}
