//! Markdown tables and number formatting for the report.

use std::fmt::Write as _;

/// A Markdown table with a heading and notes under it.
#[derive(Debug, Clone)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### {}\n", self.title);
        let _ = writeln!(s, "| {} |", self.headers.join(" | "));
        let aligns: Vec<&str> =
            self.headers.iter().enumerate().map(|(i, _)| if i == 0 { "---" } else { "---:" }).collect();
        let _ = writeln!(s, "| {} |", aligns.join(" | "));
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        // One paragraph per note.
        for n in &self.notes {
            let _ = write!(s, "\n{n}\n");
        }
        s
    }
}

/// Milliseconds with a precision that suits their size.
pub fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Seconds, with the same precision rule as [`fmt_ms`].
pub fn fmt_secs(v: f64) -> String {
    fmt_ms(v)
}

/// A ratio such as `1.34×`.
pub fn fmt_ratio(v: f64) -> String {
    if v.is_nan() || v.is_infinite() { "—".into() } else { format!("{v:.2}×") }
}

pub fn fmt_mib(v: f64) -> String {
    if v.is_nan() || v == 0.0 { "—".into() } else { format!("{v:.1}") }
}

pub fn fmt_rate(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// "met" or "NOT met" for a goal.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**NOT met**" }
}
