//! Schedule triggers: a cron expression in a time zone, or a fixed interval. Missed runs
//! (the daemon was down) are coalesced: at most one run fires for all the times missed, at
//! once on start, and the schedule continues from the current time.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub enum Schedule {
    Cron { cron: croner::Cron, tz: Tz },
    Every { secs: u64 },
}

impl Schedule {
    /// Parses a trigger's fields; the error names the field.
    pub fn parse(
        cron: Option<&str>,
        interval_secs: Option<u64>,
        timezone: &str,
    ) -> Result<Schedule, (&'static str, String)> {
        let tz = Tz::from_str(timezone)
            .map_err(|_| ("trigger.timezone", format!("{timezone:?} is not an IANA time zone")))?;
        match (cron, interval_secs) {
            (Some(expr), None) => croner::Cron::from_str(expr)
                .map(|cron| Schedule::Cron { cron, tz })
                .map_err(|e| ("trigger.cron", format!("not a cron expression ({e})"))),
            (None, Some(secs)) if (1..=31_536_000).contains(&secs) => Ok(Schedule::Every { secs }),
            (None, Some(_)) => Err(("trigger.interval_secs", "1 to 31536000".into())),
            _ => Err(("trigger.cron", "give exactly one of cron and interval_secs".into())),
        }
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
        let s = Schedule::parse(Some("0 9 * * *"), None, "Europe/Lisbon").expect("parse");
        // 09:00 in Lisbon in summer is 08:00 UTC.
        assert_eq!(s.next_after(t("2026-07-01T00:00:00Z")), Some(t("2026-07-01T08:00:00Z")));
        assert!(Schedule::parse(Some("61 * * * *"), None, "UTC").is_err());
        assert_eq!(Schedule::parse(None, Some(5), "Mars/Base").unwrap_err().0, "trigger.timezone");
        assert_eq!(Schedule::parse(Some("* * * * *"), Some(5), "UTC").unwrap_err().0, "trigger.cron");
    }

    #[test]
    fn missed_fires_coalesce_into_one() {
        let s = Schedule::parse(None, Some(60), "UTC").expect("parse");
        let last = t("2026-01-01T00:00:00Z");
        assert_eq!(s.due(last, t("2026-01-01T00:00:59Z")), None);
        assert_eq!(s.due(last, t("2026-01-01T00:01:00Z")), Some(t("2026-01-01T00:01:00Z")));
        assert_eq!(s.due(last, t("2026-01-01T00:10:30Z")), Some(t("2026-01-01T00:10:00Z")), "ten missed, one fires");
    }
}
