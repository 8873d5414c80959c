//! A strict parser of the Prometheus text exposition format (0.0.4), for
//! tests: every line must be a `# HELP`, a `# TYPE`, a comment or a
//! well-formed sample; every sample must belong to a family declared with
//! `# TYPE` before it; no series twice; histogram buckets cumulative with
//! `+Inf` equal to `_count`. Anything else is an error naming the line.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

/// Label name to value.
pub type Labels = BTreeMap<String, String>;

/// A parsed scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Family name to type (`counter`, `gauge`, `histogram`, ...).
    pub types: HashMap<String, String>,
    /// (sample name, labels) to value.
    pub samples: BTreeMap<(String, Labels), f64>,
}

impl Scrape {
    /// The value of the series `name{labels}`, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let l: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), l)).copied()
    }

    /// The value of the series, or 0 when it does not exist yet (a counter
    /// with labels appears on first use).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The type a family was declared with.
    pub fn type_of(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Parses `name{a="b",...}` at the start of `s`; returns the rest.
fn parse_series(s: &str) -> Result<(String, Labels, &str), String> {
    let end = s.find(['{', ' ']).ok_or("sample without value")?;
    let name = &s[..end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = Labels::new();
    let mut rest = &s[end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let lname = &rest[..eq];
            if !valid_label_name(lname) {
                return Err(format!("bad label name {lname:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, '\n')) => return Err("newline in label value".into()),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.insert(lname.to_string(), value).is_some() {
                return Err(format!("label {lname} twice"));
            }
            rest = &rest[close + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
    }
    Ok((name.to_string(), labels, rest))
}

/// The family a sample name belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            match types.get(base).map(String::as_str) {
                Some("histogram") => return Some(base),
                Some("summary") if suffix != "_bucket" => return Some(base),
                _ => {}
            }
        }
    }
    None
}

/// Parses a whole scrape strictly.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut out = Scrape::default();
    let mut helps: HashMap<String, ()> = HashMap::new();
    let mut seen_samples: HashMap<String, ()> = HashMap::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), _) => {
                    if !valid_metric_name(name) {
                        return Err(err("bad name in HELP".into()));
                    }
                    if helps.insert(name.into(), ()).is_some() {
                        return Err(err("second HELP".into()));
                    }
                }
                (Some("TYPE"), Some(name), Some(ty)) => {
                    if !valid_metric_name(name) {
                        return Err(err("bad name in TYPE".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                        return Err(err(format!("unknown type {ty}")));
                    }
                    if seen_samples.contains_key(name) {
                        return Err(err("TYPE after samples of its family".into()));
                    }
                    if out.types.insert(name.into(), ty.into()).is_some() {
                        return Err(err("second TYPE".into()));
                    }
                }
                (Some("HELP" | "TYPE"), _, _) => return Err(err("incomplete".into())),
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = parse_series(line).map_err(err)?;
        let mut fields = rest.split(' ').filter(|s| !s.is_empty());
        let value =
            parse_value(fields.next().ok_or_else(|| err("no value".into()))?).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| err(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = family_of(&name, &out.types)
            .ok_or_else(|| err("sample of a family without TYPE".into()))?
            .to_string();
        let ty = out.types[&family].clone();
        if ty == "counter" && (value.is_nan() || value < 0.0) {
            return Err(err("negative or NaN counter".into()));
        }
        if name.ends_with("_bucket") && ty == "histogram" && !labels.contains_key("le") {
            return Err(err("bucket without le".into()));
        }
        seen_samples.insert(family, ());
        if out.samples.insert((name, labels), value).is_some() {
            return Err(err("series twice".into()));
        }
    }
    check_histograms(&out)?;
    Ok(out)
}

fn check_histograms(s: &Scrape) -> Result<(), String> {
    for (family, ty) in &s.types {
        if ty != "histogram" {
            continue;
        }
        // Group buckets by their labels without `le`.
        let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for ((name, labels), v) in &s.samples {
            if *name == format!("{family}_bucket") {
                let mut base = labels.clone();
                let le = parse_value(&base.remove("le").unwrap_or_default())?;
                groups.entry(base).or_default().push((le, *v));
            }
        }
        for (base, mut buckets) in groups {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{base:?}: buckets not cumulative"));
            }
            let inf = buckets
                .last()
                .filter(|b| b.0 == f64::INFINITY)
                .ok_or(format!("{family}{base:?}: no +Inf bucket"))?
                .1;
            let count = s
                .samples
                .get(&(format!("{family}_count"), base.clone()))
                .ok_or(format!("{family}{base:?}: no _count"))?;
            if *count != inf {
                return Err(format!(
                    "{family}{base:?}: +Inf bucket {inf} != count {count}"
                ));
            }
            if !s
                .samples
                .contains_key(&(format!("{family}_sum"), base.clone()))
            {
                return Err(format!("{family}{base:?}: no _sum"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn accepts_well_formed_text() {
        let t = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 3\n\
                 # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
        let s = parse(t).unwrap();
        assert_eq!(s.get("a_total", &[("x", "1"), ("y", "q\"\\\n")]), Some(3.0));
        assert_eq!(s.get("h_count", &[]), Some(2.0));
        assert_eq!(s.type_of("h"), Some("histogram"));
    }

    #[test]
    fn rejects_what_is_not() {
        for bad in [
            "a 1\n",                                              // no TYPE
            "# TYPE a counter\na{x=1} 1\n",                       // unquoted
            "# TYPE a counter\na 1\na 2\n",                       // twice
            "# TYPE a counter\na one\n",                          // value
            "# TYPE a counter\na -1\n",                           // negative counter
            "# TYPE a counter\na 1",                              // no final newline
            "# TYPE 1a counter\n",                                // name
            "# TYPE a counter\n# TYPE a gauge\n",                 // second TYPE
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", // inf != count
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# TYPE a gauge\na{x=\"\\t\"} 1\n",                   // bad escape
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
