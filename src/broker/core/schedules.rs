//! Schedules: service requests the broker sends in its own name, every so
//! often (`every = "30s"`) or on a cron expression (`cron = "*/5 * * * *"`,
//! in a time zone), read from `mlm_server/schedule/<name>/...`.
//!
//! Due times are wall-clock instants, in milliseconds since the Unix
//! epoch, passed in (nothing here reads a clock):
//! - `every = D`: the multiples of D since the epoch (`every = "30s"` fires
//!   at :00 and :30 of each minute), so a due time is the same whichever
//!   run of the broker computes it.
//! - `cron`: the times the expression matches in the schedule's time zone
//!   (UTC unless `timezone` names one), computed by the `croner` crate.
//!
//! **Exactly once per due time.** A fire queues one request (sender empty,
//! so nobody is answered; tracker `schedule:<name>:<due ms>`) and tells the
//! journal the due time it fired for in the same turn, so durable storage
//! commits both in one batch or neither. After a restart the schedule
//! continues after the last due time stored: a due time already fired is
//! never fired again, one that passed unfired is caught up.
//!
//! **No catch-up storm.** When several due times have passed (the broker
//! was down, or stalled), one fire is made, for the latest of them, and the
//! schedule goes on with the first due time after now.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::{Core, Journal};

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum When {
    /// Every so long, at the multiples of it since the epoch.
    Every(Duration),
    /// On a cron expression, in a time zone.
    Cron {
        /// The expression as written.
        expr: String,
        /// It, parsed.
        cron: Box<croner::Cron>,
        /// The time zone it is read in.
        tz: Tz,
    },
}

impl When {
    /// A cron expression (five fields, or six with seconds first) in the
    /// time zone `timezone` (an IANA name such as `Europe/Paris`; UTC when
    /// `None`).
    pub fn cron(expr: &str, timezone: Option<&str>) -> Result<When, String> {
        let cron =
            croner::Cron::from_str(expr).map_err(|e| format!("cron expression {expr:?}: {e}"))?;
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                format!("unknown time zone {name:?} (want an IANA name such as Europe/Paris)")
            })?,
        };
        Ok(When::Cron {
            expr: expr.to_string(),
            cron: Box::new(cron),
            tz,
        })
    }

    /// The first due time strictly after `ms`, if any.
    pub fn next_after(&self, ms: u64) -> Option<u64> {
        match self {
            When::Every(d) => {
                let every = u64::try_from(d.as_millis()).ok().filter(|&e| e > 0)?;
                (ms / every).checked_add(1)?.checked_mul(every)
            }
            When::Cron { cron, tz, .. } => {
                let t = tz.from_utc_datetime(&utc(ms)?.naive_utc());
                let next = cron.find_next_occurrence(&t, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }

    /// The latest due time at or before `ms`, if any.
    pub fn latest_at(&self, ms: u64) -> Option<u64> {
        match self {
            When::Every(d) => {
                let every = u64::try_from(d.as_millis()).ok().filter(|&e| e > 0)?;
                Some(ms / every * every)
            }
            When::Cron { cron, tz, .. } => {
                let t = tz.from_utc_datetime(&utc(ms)?.naive_utc());
                let prev = cron.find_previous_occurrence(&t, true).ok()?;
                u64::try_from(prev.timestamp_millis()).ok()
            }
        }
    }
}

fn utc(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// One schedule as configured.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    /// Its name (`mlm_server/schedule/<name>`).
    pub name: String,
    /// When it fires.
    pub when: When,
    /// The service each fire sends a request to.
    pub address: String,
    /// The request's subject.
    pub subject: String,
    /// The request's one content frame.
    pub content: String,
}

impl ScheduleSpec {
    /// `every` or `cron` (exactly one), the time zone (cron only), where to
    /// and what; `Err` says what is wrong, for the configuration error.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        every: Option<Duration>,
        cron: Option<&str>,
        timezone: Option<&str>,
        address: Option<&str>,
        subject: Option<&str>,
        content: Option<&str>,
    ) -> Result<ScheduleSpec, String> {
        let when = match (every, cron) {
            (Some(_), Some(_)) => return Err("has both every and cron: give one".into()),
            (None, None) => {
                return Err("needs every (e.g. \"30s\") or cron (e.g. \"*/5 * * * *\")".into())
            }
            (Some(d), None) => {
                if timezone.is_some() {
                    return Err("timezone is for cron schedules only".into());
                }
                if d < Duration::from_millis(1) {
                    return Err("every must be at least 1ms".into());
                }
                When::Every(d)
            }
            (None, Some(expr)) => When::cron(expr, timezone)?,
        };
        let need = |v: Option<&str>, key: &str| match v {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(format!("needs {key} (the service request's {key})")),
        };
        let spec = ScheduleSpec {
            name: name.to_string(),
            address: need(address, "address")?,
            subject: need(subject, "subject")?,
            content: content.unwrap_or_default().to_string(),
            when,
        };
        // A tracker is a wire string (at most 255 bytes).
        if spec.tracker(u64::MAX).len() > crate::mlm::codec::MAX_STRING {
            return Err("its name is too long".into());
        }
        if spec.when.next_after(0).is_none() {
            return Err("never fires".into());
        }
        Ok(spec)
    }

    /// The tracker of the request fired for `due_ms`.
    pub fn tracker(&self, due_ms: u64) -> String {
        format!("schedule:{}:{due_ms}", self.name)
    }
}

/// One schedule and where it is.
#[derive(Debug, Clone)]
pub struct ScheduleState {
    /// As configured.
    pub spec: ScheduleSpec,
    /// The due time of its last fire (stored across restarts), ms since
    /// the epoch.
    pub last: Option<u64>,
    /// Its next due time, once the broker has seen the wall clock.
    pub next: Option<u64>,
    /// Fires since the broker started.
    pub fires: u64,
}

impl ScheduleState {
    /// A schedule that has not fired yet.
    pub fn new(spec: ScheduleSpec) -> Self {
        ScheduleState {
            spec,
            last: None,
            next: None,
            fires: 0,
        }
    }

    /// Its next due time, worked out the first time it is asked: after the
    /// last fire stored, so one missed while the broker was down is caught
    /// up; a new schedule starts with its first due time after `now_ms`.
    pub fn next_due(&mut self, now_ms: u64) -> Option<u64> {
        if self.next.is_none() {
            self.next = self.spec.when.next_after(self.last.unwrap_or(now_ms));
        }
        self.next
    }

    /// Whether it fires at `now_ms`, and for which due time; moves `next`
    /// on either way. At most one fire however many due times passed: the
    /// latest of them.
    pub fn due(&mut self, now_ms: u64) -> Option<u64> {
        let next = self.next_due(now_ms)?;
        if next > now_ms {
            return None;
        }
        let fire = self.spec.when.latest_at(now_ms).unwrap_or(next).max(next);
        self.next = self.spec.when.next_after(now_ms.max(fire));
        self.last = Some(fire);
        self.fires += 1;
        Some(fire)
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl<J: Journal> Core<J> {
    /// Fires the schedules due at the wall-clock time `now_ms`.
    pub(super) fn run_schedules(&mut self, now_ms: u64) {
        for i in 0..self.schedules.len() {
            let missed_from = self.schedules[i].next_due(now_ms);
            let Some(due) = self.schedules[i].due(now_ms) else {
                continue;
            };
            let spec = self.schedules[i].spec.clone();
            if let Some(first) = missed_from.filter(|&m| m < due) {
                tracing::info!(
                    "schedule {:?}: due times from {first} to {due} (unix ms) passed while the \
                     broker was down or stalled; firing once, for {due}",
                    spec.name
                );
            }
            let tracker = spec.tracker(due);
            // Told first: the fire and its request are in the same batch.
            self.journal.schedule_fired(&spec.name, due);
            match self.inject(
                &spec.address,
                &spec.subject,
                "",
                &tracker,
                vec![spec.content.into_bytes()],
            ) {
                Ok(_) => tracing::debug!("schedule {:?} fired for {due}", spec.name),
                Err(e) => tracing::warn!(
                    "schedule {:?}: the request for {due} was not queued: {e}",
                    spec.name
                ),
            }
            self.counters.schedule_fires += 1;
        }
    }

    /// The wall-clock time (ms) of the next schedule fire, if any is known.
    pub(super) fn next_schedule_ms(&self) -> Option<u64> {
        self.schedules.iter().filter_map(|s| s.next).min()
    }

    /// The schedules and where they are.
    pub fn schedules(&self) -> &[ScheduleState] {
        &self.schedules
    }

    /// Puts back the due time of the last fire of schedule `name` read
    /// from storage (a schedule no longer configured is ignored). Call it
    /// before the first [`Core::set_wall_clock`]: the schedule then goes
    /// on after that fire, catching up once if due times were missed.
    pub fn restore_schedule(&mut self, name: &str, last_ms: u64) {
        if let Some(s) = self.schedules.iter_mut().find(|s| s.spec.name == name) {
            s.last = Some(last_ms);
            s.next = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::core::{CoreConfig, HeldId, Kind, Removal};
    use crate::mlm::Message;
    use std::time::Instant;

    /// Records the schedule fires and requests the core tells.
    #[derive(Default)]
    struct Rec(Vec<String>);

    impl Journal for Rec {
        fn stored(&mut self, _: Kind, holder: &str, held: &crate::broker::core::Held, _: bool) {
            self.0.push(format!("stored {holder} {}", held.tracker));
        }
        fn removed(&mut self, _: Kind, _: HeldId, _: Removal) {}
        fn mailbox_touched(&mut self, _: &str, _: Instant) {}
        fn mailbox_gone(&mut self, _: &str) {}
        fn schedule_fired(&mut self, name: &str, due_ms: u64) {
            self.0.push(format!("fired {name} {due_ms}"));
        }
    }

    #[test]
    fn the_core_fires_a_request_in_its_own_name_and_journals_the_fire_with_it() {
        let spec = ScheduleSpec::new(
            "beat",
            Some(Duration::from_secs(1)),
            None,
            None,
            Some("svc"),
            Some("tick"),
            Some("{}"),
        )
        .unwrap();
        let cfg = CoreConfig {
            schedules: vec![spec],
            ..CoreConfig::default()
        };
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_millis(1_700_000_000_400);
        let mut core = Core::with_journal(cfg, t0, Rec::default());
        // The last fire stored was 3 s ago: one catch-up at start.
        core.restore_schedule("beat", 1_699_999_997_000);
        core.set_wall_clock(t0, wall);
        assert_eq!(
            core.journal().0,
            [
                "fired beat 1700000000000",
                "stored svc schedule:beat:1700000000000"
            ]
        );
        // Next at ...01.000, 600 ms on.
        let due = crate::time::after(t0, Duration::from_millis(600));
        assert!(core.next_deadline().is_some_and(|d| d <= due));
        core.tick(crate::time::after(t0, Duration::from_millis(599)));
        assert_eq!(core.journal().0.len(), 2, "not before");
        core.tick(due);
        assert_eq!(core.journal().0[2], "fired beat 1700000001000");
        // A worker gets them in the broker's name.
        core.handle(
            b"w",
            None,
            Message::ConnectionOpen {
                address: "w".into(),
            },
            due,
        );
        core.handle(
            b"w",
            None,
            Message::ServiceOffer {
                address: "svc".into(),
                pattern: ".*".into(),
            },
            due,
        );
        let mut out = Vec::new();
        core.flush(due, &mut out);
        let got: Vec<(String, String)> = out
            .into_iter()
            .filter_map(|o| match o.msg {
                Message::ServiceDeliver {
                    sender, tracker, ..
                } => Some((sender, tracker)),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            [
                (String::new(), "schedule:beat:1700000000000".to_string()),
                (String::new(), "schedule:beat:1700000001000".to_string())
            ]
        );
        assert_eq!(core.schedules()[0].fires, 2);
        assert_eq!(core.counters().schedule_fires, 2);
    }

    const MIN: u64 = 60_000;

    fn every(ms: u64) -> ScheduleState {
        ScheduleState::new(
            ScheduleSpec::new(
                "tick",
                Some(Duration::from_millis(ms)),
                None,
                None,
                Some("svc"),
                Some("s"),
                None,
            )
            .unwrap(),
        )
    }

    #[test]
    fn every_fires_on_its_multiples_once_each() {
        let mut s = every(1000);
        let t0 = 1_700_000_000_250;
        assert_eq!(
            s.due(t0),
            None,
            "a new schedule waits for its first due time"
        );
        assert_eq!(s.next, Some(1_700_000_001_000));
        assert_eq!(s.due(1_700_000_000_999), None);
        assert_eq!(s.due(1_700_000_001_000), Some(1_700_000_001_000));
        assert_eq!(s.due(1_700_000_001_500), None, "once per due time");
        assert_eq!(s.due(1_700_000_002_010), Some(1_700_000_002_000));
        assert_eq!(s.fires, 2);
    }

    #[test]
    fn after_an_outage_one_missed_fire_runs_then_it_goes_on_from_now() {
        let mut s = every(1000);
        // The last fire stored was at ...5000; the broker comes back at
        // ...9300: one fire (for ...9000), then ...10000.
        s.last = Some(1_700_000_005_000);
        assert_eq!(s.due(1_700_000_009_300), Some(1_700_000_009_000));
        assert_eq!(s.due(1_700_000_009_400), None);
        assert_eq!(s.next, Some(1_700_000_010_000));
        assert_eq!(s.fires, 1);
        // Back before the next due time: nothing is fired twice.
        let mut s = every(1000);
        s.last = Some(1_700_000_005_000);
        assert_eq!(s.due(1_700_000_005_700), None);
        assert_eq!(s.due(1_700_000_006_000), Some(1_700_000_006_000));
    }

    #[test]
    fn cron_is_read_in_its_time_zone() {
        // 2026-12-05T20:41:00Z is a Saturday; 09:30 every weekday in Paris
        // (UTC+1 in December) is next on Monday 2026-12-07 at 08:30Z.
        let now = 1_796_503_260_000; // 2026-12-05T20:41:00Z
        let when = When::cron("30 9 * * MON-FRI", Some("Europe/Paris")).unwrap();
        assert_eq!(when.next_after(now), Some(1_796_632_200_000));
        let utc = When::cron("*/5 * * * *", None).unwrap();
        assert_eq!(utc.next_after(now), Some(now + 4 * MIN));
        assert_eq!(utc.latest_at(now), Some(now - MIN));
        assert!(When::cron("61 * * * *", None).is_err());
        assert!(When::cron("* * * * *", Some("Mars/Olympus")).is_err());
        // Catch-up with cron: one fire for the latest missed due time.
        let mut s = ScheduleState::new(
            ScheduleSpec::new(
                "c",
                None,
                Some("*/5 * * * *"),
                None,
                Some("a"),
                Some("s"),
                None,
            )
            .unwrap(),
        );
        s.last = Some(now - 60 * MIN);
        assert_eq!(s.due(now), Some(now - MIN));
        assert_eq!(s.next, Some(now + 4 * MIN));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let d = Some(Duration::from_secs(1));
        let err = |r: Result<ScheduleSpec, String>| r.unwrap_err();
        assert!(err(ScheduleSpec::new(
            "x",
            d,
            Some("* * * * *"),
            None,
            Some("a"),
            Some("s"),
            None
        ))
        .contains("both"));
        assert!(err(ScheduleSpec::new(
            "x",
            None,
            None,
            None,
            Some("a"),
            Some("s"),
            None
        ))
        .contains("every"));
        assert!(
            err(ScheduleSpec::new("x", d, None, None, None, Some("s"), None)).contains("address")
        );
        assert!(
            err(ScheduleSpec::new("x", d, None, None, Some("a"), None, None)).contains("subject")
        );
        assert!(err(ScheduleSpec::new(
            "x",
            None,
            Some("nonsense"),
            None,
            Some("a"),
            Some("s"),
            None
        ))
        .contains("cron"));
        assert!(err(ScheduleSpec::new(
            "x",
            d,
            None,
            Some("UTC"),
            Some("a"),
            Some("s"),
            None
        ))
        .contains("timezone"));
    }
}
