//! A reader for ZPL, the ZeroMQ Property Language (ZeroMQ RFC 4), the
//! indented `name = "value"` format of CZMQ's zconfig that `alaska.cfg` and
//! `malamute.cfg` are written in.
//!
//! The rules followed: one entry per line; nesting by indentation of four
//! spaces per level; a name is letters, digits and `$-_@.&+/`; a value is
//! quoted (`"…"` or `'…'`) or runs to the end of the line or a `#`; `#`
//! starts a comment; blank lines are ignored. An entry may have a value and
//! children at once. [`parse`] gives the entries with a value as
//! slash-separated paths; [`Zpl`] plugs the same tree into the `config`
//! crate as nested tables, so ZPL files layer with defaults and the
//! environment like any other format.

use std::fmt;

/// One entry that has a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Slash-separated path from the root, e.g. `worker/pool/size`.
    pub path: String,
    /// The value, unquoted.
    pub value: String,
    /// 1-based line number, for messages.
    pub line: usize,
}

/// A ZPL syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZplError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ZplError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ZplError {}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "$-_@.&+/".contains(c)
}

/// Parses ZPL text into its valued entries, in file order.
pub fn parse(text: &str) -> Result<Vec<Entry>, ZplError> {
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    // RFC 4 counts a bare CR as a line ending too, not only LF and CRLF.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let err = |message: String| ZplError { line, message };
        let trimmed = raw.trim_start_matches(' ');
        if trimmed.starts_with('\t') {
            return Err(err(
                "tabs are not allowed for indentation; use 4 spaces".into()
            ));
        }
        let content = trimmed.trim_end();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        if indent % 4 != 0 {
            return Err(err(format!(
                "indentation of {indent} spaces is not a multiple of 4"
            )));
        }
        let level = indent / 4;
        if level > stack.len() {
            return Err(err(format!(
                "indented {} levels under a parent {} deep",
                level,
                stack.len()
            )));
        }
        stack.truncate(level);
        let name_end = content
            .find(|c: char| !valid_name_char(c))
            .unwrap_or(content.len());
        let name = &content[..name_end];
        if name.is_empty() {
            return Err(err(format!("expected a name, found {content:?}")));
        }
        let rest = content[name_end..].trim_start();
        let value = if rest.is_empty() || rest.starts_with('#') {
            None
        } else if let Some(after) = rest.strip_prefix('=') {
            Some(parse_value(after.trim_start()).map_err(err)?)
        } else {
            return Err(err(format!(
                "expected '=' or end of line after {name:?}, found {rest:?}"
            )));
        };
        stack.push(name.to_string());
        if let Some(value) = value {
            out.push(Entry {
                path: stack.join("/"),
                value,
                line,
            });
        }
    }
    Ok(out)
}

fn parse_value(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    match chars.next() {
        Some(q @ ('"' | '\'')) => {
            let body = &s[1..];
            let Some(end) = body.find(q) else {
                return Err(format!("unterminated {q}-quoted value"));
            };
            let tail = body[end + 1..].trim_start();
            if !(tail.is_empty() || tail.starts_with('#')) {
                return Err(format!("unexpected text after quoted value: {tail:?}"));
            }
            Ok(body[..end].to_string())
        }
        _ => {
            let end = s.find('#').unwrap_or(s.len());
            Ok(s[..end].trim_end().to_string())
        }
    }
}

/// ZPL as a `config` crate format: each path becomes nested tables of
/// string values (`worker/pool/size` → `worker.pool.size`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Zpl;

impl config::Format for Zpl {
    fn parse(
        &self,
        uri: Option<&String>,
        text: &str,
    ) -> Result<config::Map<String, config::Value>, Box<dyn std::error::Error + Send + Sync>> {
        use config::{Map, Value, ValueKind};
        let entries = parse(text)?;
        let mut root: Map<String, Value> = Map::new();
        for e in entries {
            let parts: Vec<&str> = e.path.split('/').collect();
            insert(
                &mut root,
                &parts,
                Value::new(uri, ValueKind::String(e.value)),
                uri,
            );
        }
        fn insert(
            table: &mut config::Map<String, config::Value>,
            parts: &[&str],
            value: config::Value,
            uri: Option<&String>,
        ) {
            let key = parts[0].to_lowercase();
            if parts.len() == 1 {
                // A section may also carry a value; the children win.
                if !matches!(table.get(&key).map(|v| &v.kind), Some(ValueKind::Table(_))) {
                    table.insert(key, value);
                }
                return;
            }
            let entry = table
                .entry(key)
                .or_insert_with(|| Value::new(uri, ValueKind::Table(Map::new())));
            if !matches!(entry.kind, ValueKind::Table(_)) {
                *entry = Value::new(uri, ValueKind::Table(Map::new()));
            }
            if let ValueKind::Table(t) = &mut entry.kind {
                insert(t, &parts[1..], value, uri);
            }
        }
        Ok(root)
    }
}

impl config::FileStoredFormat for Zpl {
    fn file_extensions(&self) -> &'static [&'static str] {
        &["cfg", "zpl"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_sections_quotes_and_comments() {
        let text = "# top comment\nworker\n    background = \"0\"   # trailing\n    pool\n        size = 4\n    service\n        filter = '.*'\n        address = \"a # b\"\nother = x\n";
        let e = parse(text).unwrap();
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.path.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("worker/background", "0"),
                ("worker/pool/size", "4"),
                ("worker/service/filter", ".*"),
                ("worker/service/address", "a # b"),
                ("other", "x"),
            ]
        );
        assert_eq!(e[1].line, 5);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("a\n   b = 1\n").unwrap_err().line, 2);
        assert_eq!(parse("a = \"open\n").unwrap_err().line, 1);
        assert_eq!(parse("a\n        b = 1\n").unwrap_err().line, 2);
        assert_eq!(parse("a ? b\n").unwrap_err().line, 1);
        assert!(parse("a\n\tb = 1\n").is_err());
    }

    #[test]
    fn cr_lf_and_bare_cr_line_endings() {
        for text in ["a\r\n    b = 1\r\nc = 2\r\n", "a\r    b = 1\rc = 2\r"] {
            let e = parse(text).unwrap();
            let got: Vec<(&str, &str, usize)> = e
                .iter()
                .map(|e| (e.path.as_str(), e.value.as_str(), e.line))
                .collect();
            assert_eq!(got, [("a/b", "1", 2), ("c", "2", 3)], "{text:?}");
        }
    }

    #[test]
    fn plugs_into_the_config_crate() {
        let c = config::Config::builder()
            .add_source(config::File::from_str(
                "worker\n    pool\n        size = \"8\"\n",
                Zpl,
            ))
            .build()
            .unwrap();
        assert_eq!(c.get_string("worker.pool.size").unwrap(), "8");
        assert_eq!(c.get_int("worker.pool.size").unwrap(), 8);
    }
}
