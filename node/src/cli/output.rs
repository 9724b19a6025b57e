//! Barman's output writers: console (info on stdout, warnings and errors on
//! stderr), JSON (everything collected, printed once with sorted keys) and
//! Nagios (for `check --nagios`). Passwords are redacted from every message.

use crate::catalog::pyjson;
use serde_json::{Map, Value, json};
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Console,
    Json,
    Nagios,
    /// Prints nothing (what a command runs silently on the side).
    Null,
}

/// One result of `check`.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub server: String,
    pub check: String,
    pub ok: bool,
    pub hint: Option<String>,
    pub perfdata: Option<u64>,
}

pub struct Output {
    pub writer: Writer,
    pub quiet: bool,
    debug: bool,
    color: bool,
    /// An error was reported: the process exits non-zero.
    pub error_occurred: bool,
    /// The exit code for errors (Barman: 1, get-wal may set 3, Nagios 2).
    pub error_exit_code: i32,
    json: Map<String, Value>,
    pub checks: Vec<CheckRecord>,
    current_check_active: bool,
}

/// Masks passwords in `key=value` conninfo strings and in postgresql:// URIs.
/// `password=value` comes out as Barman writes it (`password=*REDACTED*`); we also
/// catch what Barman's pattern lets through: any case, blanks around `=`.
pub fn redact_passwords(text: &str) -> String {
    const KEY: &str = "password";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(p) = lower[at..].find(KEY).map(|p| at + p) {
        let blank = |c: char| c == ' ' || c == '\t';
        let after_key = &text[p + KEY.len()..];
        let Some(value) = after_key.trim_start_matches(blank).strip_prefix('=') else {
            out.push_str(&text[at..p + KEY.len()]);
            at = p + KEY.len();
            continue;
        };
        let value = value.trim_start_matches(blank);
        let value_start = text.len() - value.len();
        out.push_str(&text[at..value_start]);
        out.push_str("*REDACTED*");
        at = value_start + value_len(value);
    }
    out.push_str(&text[at..]);
    redact_uri(&out)
}

/// Length of a conninfo value: a quoted one ends after its closing quote.
fn value_len(v: &str) -> usize {
    let Some(q) = v.strip_prefix('\'') else {
        return v.find(|c: char| c.is_whitespace() || c == '\'' || c == '"').unwrap_or(v.len());
    };
    let b = q.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'\'' => break,
            _ => i += 1,
        }
    }
    (i + 2).min(v.len())
}

fn redact_uri(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(p) = rest.find("postgresql://") {
        let start = p + "postgresql://".len();
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let userinfo_end = after.find([' ', '@']).filter(|&i| after.as_bytes().get(i) == Some(&b'@'));
        match (userinfo_end, after.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&after[..=colon]);
                out.push_str("*REDACTED*@");
                rest = &after[at + 1..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

impl Output {
    pub fn new(writer: Writer, quiet: bool, debug: bool, color: bool) -> Output {
        Output {
            writer,
            quiet,
            debug,
            color,
            error_occurred: false,
            error_exit_code: 1,
            json: Map::new(),
            checks: Vec::new(),
            current_check_active: true,
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }

    fn push_json(&mut self, field: &str, msg: String) {
        let e = self.json.entry(field.to_string()).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = e {
            a.push(Value::String(msg));
        }
    }

    pub fn info(&mut self, msg: impl AsRef<str>) {
        let msg = redact_passwords(msg.as_ref());
        match self.writer {
            Writer::Console if !self.quiet => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{msg}");
                let _ = out.flush();
            }
            Writer::Json => self.push_json("_INFO", msg),
            _ => {}
        }
    }

    pub fn debug(&mut self, msg: impl AsRef<str>) {
        if !self.debug {
            return;
        }
        let msg = redact_passwords(msg.as_ref());
        match self.writer {
            Writer::Console => eprintln!("DEBUG: {msg}"),
            Writer::Json => self.push_json("_DEBUG", msg),
            Writer::Nagios | Writer::Null => {}
        }
    }

    pub fn warning(&mut self, msg: impl AsRef<str>) {
        let msg = redact_passwords(msg.as_ref());
        tracing::warn!(target: "barman_output", "{msg}");
        match self.writer {
            Writer::Console => eprintln!("{}", self.paint("33", &format!("WARNING: {msg}"))),
            Writer::Json => self.push_json("_WARNING", msg),
            Writer::Nagios | Writer::Null => {}
        }
    }

    pub fn error(&mut self, msg: impl AsRef<str>) {
        let msg = redact_passwords(msg.as_ref());
        tracing::error!(target: "barman_output", "{msg}");
        self.error_occurred = true;
        match self.writer {
            Writer::Console => eprintln!("{}", self.paint("31", &format!("ERROR: {msg}"))),
            Writer::Json => self.push_json("_ERROR", msg),
            Writer::Nagios | Writer::Null => {}
        }
    }

    /// An error with a specific exit code (get-wal's 3).
    pub fn error_code(&mut self, msg: impl AsRef<str>, code: i32) {
        self.error(msg);
        self.error_exit_code = code;
    }

    /// Whether the output is JSON (`--format json`).
    pub fn is_json(&self) -> bool {
        matches!(self.writer, Writer::Json)
    }

    /// Puts a result under `key` in the JSON output.
    pub fn json_set(&mut self, key: &str, v: Value) {
        self.json.insert(key.to_string(), v);
    }

    pub fn json_entry(&mut self, key: &str) -> &mut Map<String, Value> {
        let e = self.json.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !e.is_object() {
            *e = Value::Object(Map::new());
        }
        match e {
            Value::Object(m) => m,
            _ => unreachable!("just made an object"),
        }
    }

    /// `Server <name>:` header of check/status/show-servers.
    pub fn server_header(&mut self, name: &str, suffix: Option<&str>) {
        match suffix {
            Some(s) => self.info(format!("Server {name} {s}:")),
            None => self.info(format!("Server {name}:")),
        }
    }

    pub fn init_check(&mut self, server: &str, active: bool, disabled: bool) {
        self.current_check_active = active;
        match self.writer {
            Writer::Json => {
                self.json.insert(server.to_string(), Value::Object(Map::new()));
            }
            _ => {
                let mut name = server.to_string();
                if !active {
                    name.push_str(" (inactive)");
                } else if disabled {
                    name.push_str(" (WARNING: disabled)");
                }
                self.info(format!("Server {name}:"));
            }
        }
    }

    pub fn check_result(&mut self, server: &str, check: &str, ok: bool, hint: Option<&str>, perfdata: Option<u64>) {
        self.checks.push(CheckRecord {
            server: server.to_string(),
            check: check.to_string(),
            ok,
            hint: hint.map(str::to_string),
            perfdata,
        });
        if !ok && self.current_check_active {
            self.error_occurred = true;
        }
        match self.writer {
            Writer::Json => {
                let key = check.to_lowercase().replace([' ', '-'], "_").replace('.', "");
                let status = if ok { "OK" } else { "FAILED" };
                self.json_entry(server).insert(key, json!({"status": status, "hint": hint.unwrap_or("")}));
            }
            _ => {
                let word = if ok { self.paint("32", "OK") } else { self.paint("31", "FAILED") };
                match hint {
                    Some(h) => self.info(format!("\t{check}: {word} ({h})")),
                    None => self.info(format!("\t{check}: {word}")),
                }
            }
        }
    }

    /// The check results recorded so far.
    pub fn take_checks(&mut self) -> Vec<CheckRecord> {
        std::mem::take(&mut self.checks)
    }

    /// Prints what is collected and returns the process exit code.
    pub fn close(mut self) -> i32 {
        match self.writer {
            Writer::Console | Writer::Null => {}
            Writer::Json => {
                if !self.quiet {
                    // Barman's JSON writer does not redact; ours does, as its console does.
                    let text =
                        redact_passwords(&pyjson::dumps(&Value::Object(std::mem::take(&mut self.json)), None, true));
                    let mut out = std::io::stdout().lock();
                    let _ = write!(out, "{text}");
                    let _ = out.flush();
                }
            }
            Writer::Nagios => return self.close_nagios(),
        }
        if self.error_occurred { self.error_exit_code } else { 0 }
    }

    fn close_nagios(self) -> i32 {
        let mut servers: Vec<String> = Vec::new();
        let mut issues: Vec<String> = Vec::new();
        let mut perf: Vec<String> = Vec::new();
        for c in &self.checks {
            if !servers.contains(&c.server) {
                servers.push(c.server.clone());
            }
            if !c.ok && !issues.contains(&c.server) {
                issues.push(c.server.clone());
            }
            if c.check == "backup minimum size" {
                perf.push(format!("{}={}B", c.server, c.perfdata.unwrap_or(0)));
            }
            if c.check == "wal size" {
                perf.push(format!("{}_wals={}B", c.server, c.perfdata.unwrap_or(0)));
            }
        }
        let perf_msg = if perf.is_empty() { String::new() } else { format!("|{}", perf.join(" ")) };
        if issues.is_empty() && self.error_occurred {
            println!("BARMAN CRITICAL - Global configuration errors");
            return 2;
        }
        if !issues.is_empty() && self.error_occurred {
            let mut summary = Vec::new();
            let mut details = Vec::new();
            for s in &issues {
                let failed: Vec<&str> =
                    self.checks.iter().filter(|c| &c.server == s && !c.ok).map(|c| c.check.as_str()).collect();
                summary.push(format!("{s} FAILED: {}", failed.join(", ")));
                for c in self.checks.iter().filter(|c| &c.server == s && !c.ok) {
                    match &c.hint {
                        Some(h) => details.push(format!("{s}.{}: FAILED ({h})", c.check)),
                        None => details.push(format!("{s}.{}: FAILED", c.check)),
                    }
                }
            }
            if servers.len() == 1 {
                println!("BARMAN CRITICAL - server {} has issues * {}{perf_msg}", servers[0], summary.join(" * "));
            } else {
                println!(
                    "BARMAN CRITICAL - {} server out of {} have issues * {}{perf_msg}",
                    issues.len(),
                    servers.len(),
                    summary.join(" * ")
                );
            }
            for d in details {
                println!("{d}");
            }
            return 2;
        }
        let ignoring: String = issues.iter().map(|i| format!(" * IGNORING: {i}")).collect();
        let good: Vec<&String> = servers.iter().filter(|s| !issues.contains(s)).collect();
        match good.len() {
            0 => println!("BARMAN OK - No server configured{ignoring}"),
            1 => println!("BARMAN OK - Ready to serve the Espresso backup for {}{ignoring}{perf_msg}", good[0]),
            n => println!(
                "BARMAN OK - Ready to serve the Espresso backup for {n} servers * {}{ignoring}{perf_msg}",
                good.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" * ")
            ),
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_passwords("host=x password=secret user=y"), "host=x password=*REDACTED* user=y");
        assert_eq!(redact_passwords("password='a b\\' c' port=5"), "password=*REDACTED* port=5");
        assert_eq!(redact_passwords("postgresql://me:pw@host/db"), "postgresql://me:*REDACTED*@host/db");
        assert_eq!(redact_passwords("nothing here"), "nothing here");
        // Forms Barman's own pattern misses.
        assert_eq!(redact_passwords("host=x password = s3cret user=y"), "host=x password = *REDACTED* user=y");
        assert_eq!(redact_passwords("PASSWORD=s3cret"), "PASSWORD=*REDACTED*");
        assert_eq!(redact_passwords("a password is needed"), "a password is needed");
    }
}
