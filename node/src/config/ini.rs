//! An INI reader that reads what Python's `ConfigParser(strict=False)` reads, the
//! way Barman configures it, and remembers the file and line of every value so
//! that every warning can point at it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<PathBuf>,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A raw option value with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawValue {
    pub value: String,
    pub origin: Origin,
}

/// One section: option names (lower-cased) to raw values, in first-seen order.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub origin: Option<Origin>,
    pub options: Vec<(String, RawValue)>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn set(&mut self, key: String, v: RawValue) {
        match self.options.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => self.options.push((key, v)),
        }
    }
}

/// Everything read so far, merged file after file (later values win).
#[derive(Debug, Clone, Default)]
pub struct Ini {
    pub sections: BTreeMap<String, Section>,
    /// Section names in the order they first appeared.
    pub order: Vec<String>,
    pub defaults: Section,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IniError {
    #[error(
        "{file}:{line}: '{text}' comes before any [section] header; start the file with [barman] or a [server] section"
    )]
    MissingSection { file: String, line: usize, text: String },
    #[error(
        "{file}:{line}: cannot parse '{text}': expected 'option = value', a [section] header or a comment (# or ;)"
    )]
    BadLine { file: String, line: usize, text: String },
    #[error("{file}: cannot be read: {reason}")]
    Unreadable { file: String, reason: String },
}

impl Ini {
    /// Reads one file into the merged configuration.
    pub fn read_file(&mut self, path: &Path) -> Result<(), IniError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| IniError::Unreadable { file: path.display().to_string(), reason: e.to_string() })?;
        self.read_str(&text, path)
    }

    /// Parses `text` as if read from `path`, merging it in.
    pub fn read_str(&mut self, text: &str, path: &Path) -> Result<(), IniError> {
        let file = Arc::new(path.to_path_buf());
        let fname = path.display().to_string();
        // The current option being built: (section key or None for DEFAULT, option, lines, origin).
        let mut cur_sect: Option<Option<String>> = None;
        let mut cur_opt: Option<(String, Vec<String>, Origin)> = None;
        let mut indent_level = 0usize;
        let mut pending: Vec<(Option<String>, String, Vec<String>, Origin)> = Vec::new();
        let mut first_error: Option<IniError> = None;

        let flush = |opt: &mut Option<(String, Vec<String>, Origin)>,
                     sect: &Option<Option<String>>,
                     pending: &mut Vec<(Option<String>, String, Vec<String>, Origin)>| {
            if let (Some((name, lines, origin)), Some(s)) = (opt.take(), sect.as_ref()) {
                pending.push((s.clone(), name, lines, origin));
            }
        };

        for (idx, raw_line) in text.lines().enumerate() {
            let lineno = idx + 1;
            let stripped = raw_line.trim();
            let is_comment = stripped.starts_with('#') || stripped.starts_with(';');
            if stripped.is_empty() || is_comment {
                // An empty line (not a comment) inside a value is kept if more
                // continuation lines follow; trailing ones are trimmed at the end.
                if !is_comment && let Some((_, lines, _)) = cur_opt.as_mut() {
                    lines.push(String::new());
                }
                continue;
            }
            let cur_indent = raw_line.len() - raw_line.trim_start().len();
            if cur_opt.is_some() && cur_indent > indent_level {
                if let Some((_, lines, _)) = cur_opt.as_mut() {
                    lines.push(stripped.to_string());
                }
                continue;
            }
            indent_level = cur_indent;
            if let Some(header) = section_header(stripped) {
                flush(&mut cur_opt, &cur_sect, &mut pending);
                let origin = Origin { file: file.clone(), line: lineno };
                if header == "DEFAULT" {
                    cur_sect = Some(None);
                } else {
                    if !self.sections.contains_key(header) {
                        self.order.push(header.to_string());
                        self.sections.insert(header.to_string(), Section { origin: Some(origin), options: Vec::new() });
                    }
                    cur_sect = Some(Some(header.to_string()));
                }
                continue;
            }
            if cur_sect.is_none() {
                return Err(IniError::MissingSection { file: fname, line: lineno, text: raw_line.to_string() });
            }
            flush(&mut cur_opt, &cur_sect, &mut pending);
            match split_option(stripped) {
                Some((name, value)) => {
                    let origin = Origin { file: file.clone(), line: lineno };
                    cur_opt = Some((name.to_lowercase(), vec![value.to_string()], origin));
                }
                None => {
                    // ConfigParser keeps reading and reports bad lines at the end;
                    // we report the first one.
                    if first_error.is_none() {
                        first_error =
                            Some(IniError::BadLine { file: fname.clone(), line: lineno, text: raw_line.to_string() });
                    }
                }
            }
        }
        flush(&mut cur_opt, &cur_sect, &mut pending);
        if let Some(e) = first_error {
            return Err(e);
        }
        for (sect, name, lines, origin) in pending {
            let value = lines.join("\n").trim_end().to_string();
            let rv = RawValue { value, origin };
            match sect {
                None => self.defaults.set(name, rv),
                Some(s) => {
                    if let Some(section) = self.sections.get_mut(&s) {
                        section.set(name, rv);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.get(name)
    }

    /// The raw value of `key` in `section`, falling back to `[DEFAULT]` as
    /// ConfigParser does.
    pub fn raw(&self, section: &str, key: &str) -> Option<&RawValue> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .or_else(|| if self.sections.contains_key(section) { self.defaults.get(key) } else { None })
    }
}

/// `[name]` at the start of a stripped line (ConfigParser matches `\[(.+)\]`
/// without anchoring the end).
fn section_header(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let end = rest.rfind(']')?;
    let name = &rest[..end];
    if name.is_empty() { None } else { Some(name) }
}

/// `name = value` or `name: value`, split at the first delimiter.
fn split_option(line: &str) -> Option<(&str, &str)> {
    let pos = line.find(['=', ':'])?;
    let name = line[..pos].trim();
    if name.is_empty() {
        return None;
    }
    Some((name, line[pos + 1..].trim()))
}

/// One pair of matching surrounding quotes is stripped from every value (Barman's
/// `_QUOTE_RE`).
pub fn strip_quotes(v: &str) -> &str {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] { &v[1..v.len() - 1] } else { v }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InterpolationError {
    #[error("'{key}' refers to %({name})s, which is not set in its section, in [DEFAULT] nor a built-in name")]
    Missing { key: String, name: String },
    #[error("'{key}' has a '%' that is not %%, nor %(name)s; write a literal percent sign as %%")]
    Syntax { key: String },
    #[error("'{key}': interpolation nests more than 10 levels (a reference loop?)")]
    TooDeep { key: String },
}

/// Expands `%(name)s` and `%%` in `value` (Python's BasicInterpolation). `lookup`
/// gives raw values of other names, which are expanded in turn.
pub fn interpolate(
    key: &str,
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, InterpolationError> {
    if depth > 10 {
        return Err(InterpolationError::TooDeep { key: key.to_string() });
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(p) = rest.find('%') {
        out.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        if let Some(r) = after.strip_prefix('%') {
            out.push('%');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            let close = r.find(")s").ok_or_else(|| InterpolationError::Syntax { key: key.to_string() })?;
            let name = r[..close].to_lowercase();
            let raw = lookup(&name)
                .ok_or_else(|| InterpolationError::Missing { key: key.to_string(), name: name.clone() })?;
            out.push_str(&interpolate(&name, &raw, lookup, depth + 1)?);
            rest = &r[close + 2..];
        } else {
            return Err(InterpolationError::Syntax { key: key.to_string() });
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Ini, IniError> {
        let mut ini = Ini::default();
        ini.read_str(text, Path::new("/etc/barman.conf"))?;
        Ok(ini)
    }

    #[test]
    fn reads_sections_options_and_lines() {
        let ini =
            parse("# top\n[barman]\nBarman_Home = /var/lib/barman\n\n[pg]\nconninfo: host=pg user=x\n; c\n").unwrap();
        let v = ini.raw("barman", "barman_home").unwrap();
        assert_eq!(v.value, "/var/lib/barman");
        assert_eq!(v.origin.line, 3);
        assert_eq!(ini.raw("pg", "conninfo").unwrap().value, "host=pg user=x");
        assert_eq!(ini.order, ["barman", "pg"]);
    }

    #[test]
    fn no_inline_comments_and_later_values_win() {
        let ini = parse("[pg]\ncompression = gzip # fast\ncompression = zstd ; x\n[pg]\nactive = off\n").unwrap();
        assert_eq!(ini.raw("pg", "compression").unwrap().value, "zstd ; x");
        assert_eq!(ini.raw("pg", "compression").unwrap().origin.line, 3);
        assert_eq!(ini.raw("pg", "active").unwrap().value, "off");
    }

    #[test]
    fn continuation_lines_join_with_newlines() {
        let ini = parse("[pg]\ndescription = first\n   second\n\n   third\n\nactive = on\n").unwrap();
        assert_eq!(ini.raw("pg", "description").unwrap().value, "first\nsecond\n\nthird");
        assert_eq!(ini.raw("pg", "active").unwrap().value, "on");
    }

    #[test]
    fn empty_values_and_default_section() {
        let ini = parse("[DEFAULT]\nx = 1\n[pg]\nslot_name =\n").unwrap();
        assert_eq!(ini.raw("pg", "slot_name").unwrap().value, "");
        assert_eq!(ini.raw("pg", "x").unwrap().value, "1");
        assert!(ini.raw("nosuch", "x").is_none());
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse("conninfo = x\n").unwrap_err();
        assert!(e.to_string().starts_with("/etc/barman.conf:1:"), "{e}");
        let e = parse("[pg]\nconninfo = x\nthis line is broken\n").unwrap_err();
        assert_eq!(
            e,
            IniError::BadLine { file: "/etc/barman.conf".into(), line: 3, text: "this line is broken".into() }
        );
        assert!(parse("[pg]\n= nothing\n").is_err());
    }

    #[test]
    fn quotes_are_stripped_once() {
        assert_eq!(strip_quotes("\"a b\""), "a b");
        assert_eq!(strip_quotes("'x'"), "x");
        assert_eq!(strip_quotes("\"x'"), "\"x'");
        assert_eq!(strip_quotes("\"\"x\"\""), "\"x\"");
        assert_eq!(strip_quotes("\""), "\"");
    }

    #[test]
    fn interpolation_like_python() {
        let look = |k: &str| match k {
            "barman_home" => Some("/var/lib/barman".to_string()),
            "name" => Some("pg".to_string()),
            "a" => Some("%(b)s".to_string()),
            "b" => Some("%(a)s".to_string()),
            _ => None,
        };
        assert_eq!(interpolate("k", "%(barman_home)s/%(NAME)s", &look, 0).unwrap(), "/var/lib/barman/pg");
        assert_eq!(interpolate("k", "100%%", &look, 0).unwrap(), "100%");
        assert!(matches!(interpolate("k", "50%", &look, 0), Err(InterpolationError::Syntax { .. })));
        assert!(matches!(interpolate("k", "%(nope)s", &look, 0), Err(InterpolationError::Missing { .. })));
        assert!(matches!(interpolate("k", "%(a)s", &look, 0), Err(InterpolationError::TooDeep { .. })));
    }
}
