//! docker/prometheus/alerts.yml: loaded by the Prometheus config, mounted by compose, every
//! rule well formed, every expression well formed and naming only metrics and labels the
//! daemon exports (checked against the live scrape, like the dashboard's queries).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::compose::{Compose, compose_rel};
use crate::metrics::Naming;
use crate::report::{Report, items, text};

pub const ALERTS: &str = "docker/prometheus/alerts.yml";

/// Series Prometheus makes itself for every target (not in the daemon's scrape).
const SYNTHETIC: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];

/// What the rules must watch, between them: (metric, why).
const COVERED: &[(&str, &str)] = &[
    ("conveyor_partition_lag", "lag growing"),
    ("conveyor_breaker_state", "a breaker open"),
    ("conveyor_dlq_records_written_total", "dead letters rising"),
    ("conveyor_actor_restarts_total", "a subsystem restarting"),
];

/// Where the expression's brackets, braces, parentheses or quotes do not pair up, if anywhere.
pub fn unbalanced(expr: &str) -> Option<String> {
    let mut open = Vec::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let mut closed = false;
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Some(format!("unterminated string {c}"));
                }
            }
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(want) {
                    return Some(format!("unmatched {c}"));
                }
            }
            _ => {}
        }
    }
    open.last().map(|c| format!("unclosed {c}"))
}

/// An alert's expression is a condition: a comparison outside label matchers and strings.
pub fn compares(expr: &str) -> bool {
    let mut depth = 0usize;
    let mut prev = ' ';
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '"' | '\'' | '`' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
            }
            '>' | '<' if depth == 0 => return true,
            '=' if depth == 0 && (prev == '=' || prev == '!') => return true,
            _ => {}
        }
        prev = c;
    }
    false
}

pub fn check(
    report: &mut Report,
    c: &Compose,
    promcfg: &Value,
    rules: &Value,
    naming: &Naming,
    labels: &BTreeSet<String>,
) {
    // Loaded and mounted where Prometheus looks.
    let files: Vec<String> = items(&promcfg["rule_files"]).iter().map(text).collect();
    let mount = c.mounts("prometheus").into_iter().find(|m| m.bind && compose_rel(&m.source) == ALERTS);
    match mount {
        Some(m) => {
            report.check(
                files.contains(&m.target),
                format!("prometheus.yml rule_files loads {ALERTS} (mounted at {})", m.target),
                format!("rule_files {files:?}"),
            );
            report.check(m.read_only, "the alert rules are mounted read-only", "");
        }
        None => report.fail(format!("prometheus mounts {ALERTS}")),
    }

    let mut names = BTreeSet::new();
    let mut used = BTreeSet::new();
    let groups = items(&rules["groups"]);
    report.check(!groups.is_empty(), format!("{ALERTS} has rule groups"), "");
    for group in groups {
        for rule in items(&group["rules"]) {
            let name = text(&rule["alert"]);
            let at = format!("alert {name:?}");
            if !report.check(!name.is_empty(), format!("{at} has a name"), "a recording rule has no place here") {
                continue;
            }
            report.check(names.insert(name.clone()), format!("{at} is named once"), "");
            let expr = text(&rule["expr"]);
            report.check(!expr.trim().is_empty(), format!("{at} has an expression"), "");
            let balance = unbalanced(&expr);
            report.check(
                balance.is_none(),
                format!("{at}: the expression is well formed"),
                balance.unwrap_or_default(),
            );
            report.check(compares(&expr), format!("{at}: the expression is a condition (a comparison)"), &expr);
            let (metrics, query_labels) = crate::promql::refs(&expr);
            let unknown: Vec<&String> =
                metrics.iter().filter(|n| !naming.known.contains(*n) && !SYNTHETIC.contains(&n.as_str())).collect();
            report.check(
                !metrics.is_empty() && unknown.is_empty(),
                format!(
                    "{at} uses metrics the daemon serves ({})",
                    metrics.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
                if unknown.is_empty() { "no metric name found".to_string() } else { format!("unknown: {unknown:?}") },
            );
            let bad: Vec<&String> = query_labels.iter().filter(|l| !labels.contains(*l)).collect();
            report.check(bad.is_empty(), format!("{at} uses known labels"), format!("unknown: {bad:?}"));
            used.extend(metrics);
            if !rule["for"].is_null() {
                let d = text(&rule["for"]);
                report.check(crate::prometheus::seconds(&d).is_some(), format!("{at}: for {d} is a duration"), "");
            }
            let severity = text(&rule["labels"]["severity"]);
            report.check(
                ["critical", "warning", "info"].contains(&severity.as_str()),
                format!("{at} has a severity (critical, warning or info)"),
                format!("severity {severity:?}"),
            );
            report.check(!text(&rule["annotations"]["summary"]).is_empty(), format!("{at} has a summary"), "");
        }
    }
    for (metric, why) in COVERED {
        report.check(used.contains(*metric), format!("an alert watches {why} ({metric})"), "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_expressions_are_named() {
        assert_eq!(unbalanced("sum(rate(x[5m])) > 0"), None);
        assert_eq!(unbalanced("sum(rate(x{a=\")\"}[5m])) > 0"), None);
        assert_eq!(unbalanced("sum(rate(x[5m]) > 0").as_deref(), Some("unclosed ("));
        assert_eq!(unbalanced("x{a=\"b}").as_deref(), Some("unterminated string \""));
        assert_eq!(unbalanced("x]").as_deref(), Some("unmatched ]"));
        assert!(compares("x > 1") && compares("x == 2") && compares("x != 0"));
        assert!(!compares("x{a=\"b\"}") && !compares("x{a=~\"b\"}") && !compares("rate(x[5m])"));
    }

    #[test]
    fn an_alert_on_an_unknown_metric_or_one_not_loaded_fails() {
        let root = crate::repo_root();
        let (c, _) = crate::compose::real();
        let promcfg = crate::compose::load_yaml(&root, crate::compose::PROM_CONFIG);
        let rules = serde_json::json!({"groups": [{"name": "g", "rules": [
            {"alert": "A", "expr": "conveyor_nope_total > 0", "labels": {"severity": "warning"}, "annotations": {"summary": "s"}},
            {"alert": "B", "expr": "sum(up", "labels": {}, "annotations": {}},
        ]}]});
        let naming = Naming {
            family: Default::default(),
            known: ["conveyor_partition_lag".to_string()].into_iter().collect(),
            problems: vec![],
            derived: vec![],
        };
        let mut r = Report::default();
        check(&mut r, &c, &promcfg, &rules, &naming, &BTreeSet::new());
        assert!(r.failed("unknown: [\"conveyor_nope_total\"]"), "{:?}", r.failures);
        assert!(r.failed("alert \"B\": the expression is well formed"), "{:?}", r.failures);
        assert!(r.failed("alert \"B\" has a severity"), "{:?}", r.failures);
        assert!(r.failed("an alert watches a breaker open"), "{:?}", r.failures);
        let unloaded = serde_json::json!({"rule_files": []});
        let mut r = Report::default();
        check(&mut r, &c, &unloaded, &rules, &naming, &BTreeSet::new());
        assert!(r.failed("rule_files loads"), "{:?}", r.failures);
    }
}
