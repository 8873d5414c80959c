//! Time arithmetic that cannot panic.
//!
//! `Instant + Duration` panics when the sum does not fit, and
//! `Duration::from_secs_f64` panics on a value too large (or NaN, or
//! negative); a duration that comes from a script (`alaska.retry(math.huge)`),
//! a child (`"after_ms": 1e22`), a header (`Retry-After`) or a
//! configuration file must never get there. Every deadline in the project
//! is computed with [`after`] (and [`before`]); every duration read from
//! outside is checked with [`from_ms_f64`] or refused beyond
//! [`MAX_DURATION`] where it is read. A test in this module scans the
//! sources (outside tests) for the patterns that bypass these functions, so
//! a `now + d` added back fails CI.

use std::time::{Duration, Instant};

/// The longest duration any setting, script, child or peer may ask for:
/// one year. Longer values are clamped (scripts, children, headers) or
/// refused with an error naming the key (configuration).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// What "never" means for a deadline: far beyond anything this process
/// will see, small enough to add to any `Instant` of a running system.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + d`, or a deadline that never comes when that does not fit.
pub fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(FOREVER))
        .unwrap_or(at)
}

/// `at - d`, or `at` when that would go before the clock's start.
pub fn before(at: Instant, d: Duration) -> Instant {
    at.checked_sub(d).unwrap_or(at)
}

/// Milliseconds given as a float (Lua numbers, JSON): `None` for NaN or a
/// negative value; otherwise the duration, clamped to [`MAX_DURATION`]
/// (`math.huge` and `1e22` included).
pub fn from_ms_f64(ms: f64) -> Option<Duration> {
    if ms.is_nan() || ms < 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(ms / 1000.0)
            .unwrap_or(MAX_DURATION)
            .min(MAX_DURATION),
    )
}

/// Seconds given as a float, as [`from_ms_f64`].
pub fn from_secs_f64(s: f64) -> Option<Duration> {
    from_ms_f64(s * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_never_panics() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        let far = after(now, Duration::MAX);
        assert!(far > after(now, MAX_DURATION));
        assert_eq!(before(now, Duration::MAX), now);
    }

    #[test]
    fn float_durations_are_clamped_or_refused() {
        assert_eq!(from_ms_f64(1500.0), Some(Duration::from_millis(1500)));
        assert_eq!(from_ms_f64(f64::INFINITY), Some(MAX_DURATION));
        assert_eq!(from_ms_f64(1e22), Some(MAX_DURATION));
        assert_eq!(from_ms_f64(f64::NAN), None);
        assert_eq!(from_ms_f64(-1.0), None);
        assert_eq!(from_secs_f64(1e22), Some(MAX_DURATION));
    }

    /// The sources outside tests add or subtract time only through this
    /// module: a line that does `now + d`, `Instant::now() + d`,
    /// `deadline - d` (and the like, by the names time is kept in here) or
    /// calls `Duration::from_secs_f64` is reported with its place. Tests
    /// (after a file's `#[cfg(test)]`, and `*_tests.rs`) may do as they like.
    #[test]
    fn no_unchecked_time_arithmetic_in_the_sources() {
        let names = "now|deadline|until|since|started|start|at|heard|last_heard|opening_since|touched|next|due|t|quiet_until|not_before|expires|expiry_at";
        let lhs = regex::Regex::new(&format!(
            r"(?:\bInstant::now\(\)|\b(?:{names})\b|\*t\b)\s*[+-]\s*[A-Za-z(]"
        ))
        .unwrap();
        let dur = regex::Regex::new(r"[+-]\s*Duration::|[^_]from_secs_f(?:64|32)\(").unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        let mut dirs = vec![root.join("src"), root.join("tools")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                if !name.ends_with(".rs")
                    || name.ends_with("_tests.rs")
                    || p.ends_with("src/time.rs")
                {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                for (i, line) in text.lines().enumerate() {
                    if line.trim_start().starts_with("#[cfg(test)]") {
                        break;
                    }
                    let code = line.split("//").next().unwrap_or("");
                    if code.contains("saturating") || code.contains("checked_") {
                        continue;
                    }
                    if lhs.is_match(code) || dur.is_match(code) {
                        found.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "time arithmetic that can panic (use alaska::time::after/before/from_ms_f64):\n{}",
            found.join("\n")
        );
    }
}
