//! Progress of a long run on a terminal: one line on stderr, rewritten in
//! place at most every [`Progress::EVERY`], only when stderr is a terminal
//! (nothing at all when it is a pipe or a file, so logs and scripts see
//! the same output as before). Used by `alaska-bench` and `alas --lines`.
//!
//! Time is passed in, and the sink is any writer, so the rules are
//! unit-tested without a terminal or a clock.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A progress line.
pub struct Progress<W: Write> {
    out: Option<W>,
    label: String,
    total: Option<u64>,
    started: Instant,
    last: Option<Instant>,
    width: usize,
}

impl Progress<std::io::Stderr> {
    /// A progress line on stderr, shown only if stderr is a terminal.
    /// `total` is what `done` counts up to, when known.
    pub fn stderr(label: &str, total: Option<u64>, now: Instant) -> Self {
        let err = std::io::stderr();
        let out = err.is_terminal().then_some(err);
        Progress::new(out, label, total, now)
    }
}

impl<W: Write> Progress<W> {
    /// How often the line is rewritten, at most.
    pub const EVERY: Duration = Duration::from_millis(250);

    /// A progress line written to `out` (`None`: shown nowhere).
    pub fn new(out: Option<W>, label: &str, total: Option<u64>, now: Instant) -> Self {
        Progress {
            out,
            label: label.to_string(),
            total,
            started: now,
            last: None,
            width: 0,
        }
    }

    /// Whether anything is shown.
    pub fn shown(&self) -> bool {
        self.out.is_some()
    }

    /// Says that `done` units are done at `now`; rewrites the line if the
    /// last one is older than [`Self::EVERY`].
    pub fn update(&mut self, done: u64, now: Instant) {
        if self.out.is_none() {
            return;
        }
        if let Some(last) = self.last {
            if now.saturating_duration_since(last) < Self::EVERY {
                return;
            }
        }
        self.last = Some(now);
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let line = match self.total {
            Some(t) if t > 0 => format!(
                "{}: {done}/{t} ({:.0}%), {rate:.0}/s, {secs:.1} s",
                self.label,
                done as f64 * 100.0 / t as f64
            ),
            _ => format!("{}: {done}, {rate:.0}/s, {secs:.1} s", self.label),
        };
        self.write_line(&line);
    }

    /// Clears the line (call before printing the results).
    pub fn finish(&mut self) {
        if self.width > 0 {
            let blank = " ".repeat(self.width);
            if let Some(out) = self.out.as_mut() {
                let _ = write!(out, "\r{blank}\r");
                let _ = out.flush();
            }
            self.width = 0;
        }
    }

    fn write_line(&mut self, line: &str) {
        let Some(out) = self.out.as_mut() else { return };
        // Pad over a longer previous line so nothing of it is left.
        let pad = self.width.saturating_sub(line.len());
        let _ = write!(out, "\r{line}{}", " ".repeat(pad));
        let _ = out.flush();
        self.width = line.len();
    }
}

impl<W: Write> Drop for Progress<W> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_at_most_every_quarter_second_and_clears() {
        let t0 = Instant::now();
        let mut buf = Vec::new();
        {
            let mut p = Progress::new(Some(&mut buf), "sent", Some(100), t0);
            p.update(10, t0 + Duration::from_secs(1));
            p.update(11, t0 + Duration::from_millis(1100)); // too soon: nothing
            p.update(50, t0 + Duration::from_secs(2));
            p.finish();
        }
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains("\rsent: 10/100 (10%), 10/s, 1.0 s"),
            "{text:?}"
        );
        assert!(!text.contains("11/100"), "{text:?}");
        assert!(
            text.contains("\rsent: 50/100 (50%), 25/s, 2.0 s"),
            "{text:?}"
        );
        assert!(
            text.ends_with('\r'),
            "the line is cleared at the end: {text:?}"
        );
    }

    #[test]
    fn nothing_without_a_terminal() {
        let t0 = Instant::now();
        let mut p: Progress<Vec<u8>> = Progress::new(None, "x", None, t0);
        p.update(1, t0 + Duration::from_secs(5));
        assert!(!p.shown());
    }

    #[test]
    fn unknown_total_counts_up() {
        let t0 = Instant::now();
        let mut buf = Vec::new();
        let mut p = Progress::new(Some(&mut buf), "lines", None, t0);
        p.update(7, t0 + Duration::from_secs(7));
        drop(p);
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("lines: 7, 1/s, 7.0 s"), "{text:?}");
    }
}
