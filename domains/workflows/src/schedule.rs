//! Schedule triggers: a cron expression in a time zone, or `@every 30s` (`s`, `m`, `h`),
//! robfig/cron's interval form. Missed runs
//! (the daemon was down) are coalesced: at most one run fires for all the times missed, at
//! once on start, and the schedule continues from the current time.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub enum Schedule {
    Cron { cron: Box<croner::Cron>, tz: Tz },
    Every { secs: u64 },
}

/// The cron form the API documents: five fields, each `*`, `*/step` or a comma list of
/// numbers within the field's range (the step within it too).
fn documented_form(expr: &str) -> bool {
    const RANGES: [(u32, u32); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    let fields: Vec<&str> = expr.split(' ').collect();
    let number = |t: &str, (lo, hi): (u32, u32)| {
        !t.is_empty()
            && t.len() <= 2
            && !(t.len() == 2 && t.starts_with('0'))
            && t.bytes().all(|b| b.is_ascii_digit())
            && t.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n))
    };
    fields.len() == 5
        && fields.iter().zip(RANGES).all(|(field, range)| match field.strip_prefix('*') {
            Some("") => true,
            Some(step) => step
                .strip_prefix('/')
                .is_some_and(|s| number(s, (1, if range.1 == 7 { 7 } else { range.1 })) && !s.starts_with('0')),
            None => field.split(',').all(|n| number(n, range)),
        })
}

/// `30s`, `5m`, `2h`: 1-7 digits without a leading zero, then the unit.
fn parse_every(text: &str) -> Option<u64> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 7 || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match unit {
        "s" => Some(n),
        "m" => Some(n * 60),
        "h" => Some(n * 3600),
        _ => None,
    }
}

impl Schedule {
    /// Parses a trigger's `cron` and `timezone`; the error names the field.
    pub fn parse(cron: &str, timezone: &str) -> Result<Schedule, (&'static str, String)> {
        let tz = Tz::from_str(timezone)
            .map_err(|_| ("trigger.timezone", format!("{timezone:?} is not an IANA time zone")))?;
        if let Some(every) = cron.strip_prefix("@every ") {
            return parse_every(every)
                .map(|secs| Schedule::Every { secs })
                .ok_or(("trigger.cron", "@every takes a whole number of s, m or h, e.g. @every 30s".into()));
        }
        if !documented_form(cron) {
            return Err((
                "trigger.cron",
                "five fields (minute hour day-of-month month day-of-week), each *, */step or a list of numbers; or @every 30s".into(),
            ));
        }
        croner::Cron::from_str(cron)
            .map(|c| Schedule::Cron { cron: Box::new(c), tz })
            .map_err(|e| ("trigger.cron", format!("not a cron expression ({e})")))
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, tz } => {
                cron.find_next_occurrence(&after.with_timezone(tz), false).ok().map(|t| t.with_timezone(&Utc))
            }
            Schedule::Every { secs } => Some(after + chrono::Duration::seconds(*secs as i64)),
        }
    }

    /// Given the last time this schedule fired (or the workflow's creation), what fires at
    /// `now`: the latest due time (coalescing any missed before it), if one is due.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut next = self.next_after(last)?;
        if next > now {
            return None;
        }
        // Coalesce: walk to the latest time not after now (bounded, for tiny intervals).
        for _ in 0..10_000 {
            match self.next_after(next) {
                Some(t) if t <= now => next = t,
                _ => break,
            }
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn cron_in_a_time_zone() {
        let s = Schedule::parse("0 9 * * *", "Europe/Lisbon").expect("parse");
        // 09:00 in Lisbon in summer is 08:00 UTC.
        assert_eq!(s.next_after(t("2026-07-01T00:00:00Z")), Some(t("2026-07-01T08:00:00Z")));
        assert!(Schedule::parse("61 * * * *", "UTC").is_err());
        assert!(Schedule::parse("0 9 * * MON", "UTC").is_err(), "only the documented form");
        assert!(Schedule::parse("*/15 0,12 1 */2 1,2,3", "UTC").is_ok());
        assert!(Schedule::parse("*/0 * * * *", "UTC").is_err());
        assert_eq!(Schedule::parse("@every 5s", "Mars/Base").expect_err("bad zone").0, "trigger.timezone");
        assert!(matches!(Schedule::parse("@every 2m", "UTC"), Ok(Schedule::Every { secs: 120 })));
        for bad in ["@every 0s", "@every 5", "@every 05s", "@every 1d"] {
            assert_eq!(Schedule::parse(bad, "UTC").expect_err(bad).0, "trigger.cron");
        }
    }

    #[test]
    fn missed_fires_coalesce_into_one() {
        let s = Schedule::parse("@every 60s", "UTC").expect("parse");
        let last = t("2026-01-01T00:00:00Z");
        assert_eq!(s.due(last, t("2026-01-01T00:00:59Z")), None);
        assert_eq!(s.due(last, t("2026-01-01T00:01:00Z")), Some(t("2026-01-01T00:01:00Z")));
        assert_eq!(s.due(last, t("2026-01-01T00:10:30Z")), Some(t("2026-01-01T00:10:00Z")), "ten missed, one fires");
    }
}
