//! Python literals as Barman writes them into `backup.info` (`repr()` of str,
//! int, float, None, bool, list, tuple and dict) and reads them back
//! (`ast.literal_eval` of the same subset).

use super::pyjson::py_float;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    Tuple(Vec<PyValue>),
    /// Insertion order, as a Python dict keeps it.
    Dict(Vec<(PyValue, PyValue)>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a Python literal at byte {at}: {why}")]
pub struct LiteralError {
    pub at: usize,
    pub why: String,
}

impl PyValue {
    /// Python's `repr()`.
    /// The value as Python's `json.dumps` sees it (tuples as lists, dict keys as `str()`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Value, json};
        match self {
            PyValue::None => Value::Null,
            PyValue::Bool(b) => json!(b),
            PyValue::Int(i) => json!(i),
            PyValue::Float(f) => json!(f),
            PyValue::Str(s) => json!(s),
            PyValue::List(l) | PyValue::Tuple(l) => Value::Array(l.iter().map(PyValue::to_json).collect()),
            PyValue::Dict(d) => Value::Object(d.iter().map(|(k, v)| (k.to_py_str(), v.to_json())).collect()),
        }
    }

    /// A JSON value as Python's `json.loads` gives it (integers stay integers).
    pub fn from_json(v: &serde_json::Value) -> PyValue {
        use serde_json::Value;
        match v {
            Value::Null => PyValue::None,
            Value::Bool(b) => PyValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => PyValue::Int(i),
                None => PyValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => PyValue::Str(s.clone()),
            Value::Array(a) => PyValue::List(a.iter().map(PyValue::from_json).collect()),
            Value::Object(o) => {
                PyValue::Dict(o.iter().map(|(k, v)| (PyValue::Str(k.clone()), PyValue::from_json(v))).collect())
            }
        }
    }

    /// Python's `str()`.
    pub fn to_py_str(&self) -> String {
        match self {
            PyValue::Str(s) => s.clone(),
            other => other.repr(),
        }
    }

    pub fn repr(&self) -> String {
        let mut s = String::new();
        self.write_repr(&mut s);
        s
    }

    fn write_repr(&self, out: &mut String) {
        match self {
            PyValue::None => out.push_str("None"),
            PyValue::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
            PyValue::Int(i) => {
                let _ = write!(out, "{i}");
            }
            PyValue::Float(f) => out.push_str(&py_float(*f)),
            PyValue::Str(s) => out.push_str(&repr_str(s)),
            PyValue::List(v) => {
                out.push('[');
                write_items(out, v);
                out.push(']');
            }
            PyValue::Tuple(v) => {
                out.push('(');
                write_items(out, v);
                if v.len() == 1 {
                    out.push(',');
                }
                out.push(')');
            }
            PyValue::Dict(v) => {
                out.push('{');
                for (i, (k, val)) in v.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    val.write_repr(out);
                }
                out.push('}');
            }
        }
    }

    /// `ast.literal_eval` of the subset above.
    pub fn parse(text: &str) -> Result<PyValue, LiteralError> {
        let mut p = Parser { s: text.as_bytes(), text, i: 0 };
        let v = p.value()?;
        p.blank();
        if p.i != p.s.len() {
            return Err(p.err("unexpected text after the value"));
        }
        Ok(v)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            PyValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The items of a list or tuple.
    pub fn items(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::List(v) | PyValue::Tuple(v) => Some(v),
            _ => None,
        }
    }
}

fn write_items(out: &mut String, v: &[PyValue]) {
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        x.write_repr(out);
    }
}

/// Python 3's `repr()` of a str: single quotes unless the text holds a single
/// quote and no double quote; backslash escapes for the quote, `\\`, `\t`,
/// `\n`, `\r` and other control characters; printable non-ASCII kept as is.
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x7f => out.push(c),
            c if printable(c) => out.push(c),
            c if (c as u32) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable()` for one non-ASCII character, without Unicode
/// tables: controls, separators and the common format characters are not.
fn printable(c: char) -> bool {
    let u = c as u32;
    !(c.is_control()
        || c.is_whitespace()
        || u == 0xad
        || (0x200b..=0x200f).contains(&u)
        || (0x202a..=0x202e).contains(&u)
        || (0x2060..=0x206f).contains(&u)
        || u == 0xfeff
        || (0xe000..=0xf8ff).contains(&u)
        || (0xfff9..=0xfffb).contains(&u))
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn err(&self, why: &str) -> LiteralError {
        LiteralError { at: self.i, why: why.to_string() }
    }

    fn blank(&mut self) {
        while self.s.get(self.i).is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Result<PyValue, LiteralError> {
        self.blank();
        match self.s.get(self.i) {
            None => Err(self.err("missing value")),
            Some(b'\'' | b'"') => Ok(PyValue::Str(self.string()?)),
            Some(b'[') => Ok(PyValue::List(self.seq(b']')?)),
            Some(b'(') => self.tuple(),
            Some(b'{') => self.dict(),
            Some(b'-' | b'+' | b'0'..=b'9' | b'.') => self.number(),
            Some(_) => {
                let start = self.i;
                while self.s.get(self.i).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
                    self.i += 1;
                }
                match &self.text[start..self.i] {
                    "None" => Ok(PyValue::None),
                    "True" => Ok(PyValue::Bool(true)),
                    "False" => Ok(PyValue::Bool(false)),
                    _ => {
                        self.i = start;
                        Err(self.err("expected a literal"))
                    }
                }
            }
        }
    }

    fn number(&mut self) -> Result<PyValue, LiteralError> {
        let start = self.i;
        if matches!(self.s.get(self.i), Some(b'-' | b'+')) {
            self.i += 1;
        }
        while self.s.get(self.i).is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-')) {
            // A sign belongs to the number only right after an exponent mark.
            if matches!(self.s[self.i], b'+' | b'-') && !matches!(self.s[self.i - 1], b'e' | b'E') {
                break;
            }
            self.i += 1;
        }
        let t = self.text[start..self.i].replace('_', "");
        if let Ok(i) = t.parse::<i64>() {
            return Ok(PyValue::Int(i));
        }
        match t.as_str() {
            "inf" | "+inf" => return Ok(PyValue::Float(f64::INFINITY)),
            "-inf" => return Ok(PyValue::Float(f64::NEG_INFINITY)),
            _ => {}
        }
        t.parse::<f64>().map(PyValue::Float).map_err(|_| LiteralError { at: start, why: format!("bad number {t:?}") })
    }

    fn string(&mut self) -> Result<String, LiteralError> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(&b) = self.s.get(self.i) else { return Err(self.err("unterminated string")) };
            if b == quote {
                self.i += 1;
                return Ok(out);
            }
            if b == b'\n' {
                return Err(self.err("newline inside a string"));
            }
            if b != b'\\' {
                let c = self.text[self.i..].chars().next().ok_or_else(|| self.err("bad UTF-8"))?;
                out.push(c);
                self.i += c.len_utf8();
                continue;
            }
            self.i += 1;
            let Some(&e) = self.s.get(self.i) else { return Err(self.err("unterminated escape")) };
            self.i += 1;
            match e {
                b'\\' => out.push('\\'),
                b'\'' => out.push('\''),
                b'"' => out.push('"'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'a' => out.push('\x07'),
                b'b' => out.push('\x08'),
                b'f' => out.push('\x0c'),
                b'v' => out.push('\x0b'),
                b'0'..=b'7' => {
                    let start = self.i - 1;
                    while self.i < start + 3 && self.s.get(self.i).is_some_and(|d| (b'0'..=b'7').contains(d)) {
                        self.i += 1;
                    }
                    out.push(self.code_point(&self.text[start..self.i], 8)?);
                }
                b'x' => out.push(self.hex(2)?),
                b'u' => out.push(self.hex(4)?),
                b'U' => out.push(self.hex(8)?),
                b'\n' => {}
                other => {
                    out.push('\\');
                    out.push(other as char);
                }
            }
        }
    }

    fn hex(&mut self, n: usize) -> Result<char, LiteralError> {
        let digits = self.text.get(self.i..self.i + n).ok_or_else(|| self.err("short escape"))?;
        self.i += n;
        self.code_point(digits, 16)
    }

    fn code_point(&self, digits: &str, radix: u32) -> Result<char, LiteralError> {
        u32::from_str_radix(digits, radix).ok().and_then(char::from_u32).ok_or_else(|| self.err("bad escape"))
    }

    /// Items up to `close`, with an optional trailing comma.
    fn seq(&mut self, close: u8) -> Result<Vec<PyValue>, LiteralError> {
        self.i += 1;
        let mut v = Vec::new();
        loop {
            self.blank();
            if self.s.get(self.i) == Some(&close) {
                self.i += 1;
                return Ok(v);
            }
            v.push(self.value()?);
            self.blank();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(&c) if c == close => {}
                _ => return Err(self.err("expected ',' or the closing bracket")),
            }
        }
    }

    fn tuple(&mut self) -> Result<PyValue, LiteralError> {
        let start = self.i;
        let v = self.seq(b')')?;
        // `(x)` is x itself; `(x,)` a 1-tuple.
        if v.len() == 1 && !self.text[start..self.i].trim_end_matches(')').trim_end().ends_with(',') {
            return Ok(v.into_iter().next().unwrap_or(PyValue::None));
        }
        Ok(PyValue::Tuple(v))
    }

    fn dict(&mut self) -> Result<PyValue, LiteralError> {
        self.i += 1;
        let mut v = Vec::new();
        loop {
            self.blank();
            if self.s.get(self.i) == Some(&b'}') {
                self.i += 1;
                return Ok(PyValue::Dict(v));
            }
            let k = self.value()?;
            self.blank();
            if self.s.get(self.i) != Some(&b':') {
                return Err(self.err("expected ':'"));
            }
            self.i += 1;
            let val = self.value()?;
            v.push((k, val));
            self.blank();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python() {
        // Each checked against Python 3.11's repr().
        assert_eq!(repr_str("it's"), "\"it's\"");
        assert_eq!(repr_str("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(repr_str("START WAL\nx\\y\t\x01é"), "'START WAL\\nx\\\\y\\t\\x01é'");
        assert_eq!(repr_str("\u{a0}\u{200b}"), "'\\xa0\\u200b'");
        let ts = PyValue::List(vec![PyValue::Tuple(vec![
            PyValue::Str("tbs1".into()),
            PyValue::Int(16387),
            PyValue::Str("/srv/tbs1".into()),
        ])]);
        assert_eq!(ts.repr(), "[('tbs1', 16387, '/srv/tbs1')]");
        let d = PyValue::Dict(vec![
            (PyValue::Str("copy_time".into()), PyValue::Float(1.2)),
            (PyValue::Str("total_time".into()), PyValue::Float(3.0)),
        ]);
        assert_eq!(d.repr(), "{'copy_time': 1.2, 'total_time': 3.0}");
        assert_eq!(PyValue::Tuple(vec![PyValue::Int(1)]).repr(), "(1,)");
    }

    #[test]
    fn parse_round_trips_and_refuses_junk() {
        for text in [
            "[('tbs1', 16387, '/srv/tbs1'), ('t2', 1, \"it's\")]",
            "{'copy_time': 1.2, 'total_time': 3.0, 'n': None, 'b': True}",
            "'START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\\nCHECKPOINT LOCATION: 0/2000060\\n'",
            "(1,)",
            "[]",
            "-5",
            "1e-05",
        ] {
            let v = PyValue::parse(text).unwrap();
            assert_eq!(v.repr(), text, "{v:?}");
        }
        assert_eq!(PyValue::parse("( 1 )").unwrap(), PyValue::Int(1));
        assert_eq!(PyValue::parse("[1, 2,]").unwrap().repr(), "[1, 2]");
        assert_eq!(PyValue::parse("'\\u00e9\\x41\\101'").unwrap(), PyValue::Str("éAA".into()));
        for bad in ["", "[1, 2", "'abc", "os.system('x')", "{1 2}", "1 2"] {
            assert!(PyValue::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
