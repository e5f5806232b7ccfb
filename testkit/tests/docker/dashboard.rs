//! The Grafana dashboard against the provisioned datasources and the daemon's real metrics.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::metrics::{Instrument, Naming};
use crate::report::{Report, items, text};

/// Labels the exporter (`le`, `otel_scope_name`) and Prometheus (`job`, `instance`) add.
pub const ADDED_LABELS: &[&str] = &["le", "otel_scope_name", "job", "instance", "quantile"];

fn panels(list: &Value, out: &mut Vec<Value>) {
    for p in items(list) {
        out.push(p.clone());
        panels(&p["panels"], out);
    }
}

/// `label_values(expr, label)` -> (expr, label).
fn label_values(q: &str) -> Option<(String, String)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (expr, label) = inner.rsplit_once(',')?;
    let label = label.trim();
    let ok = label.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| (expr.trim().to_string(), label.to_string()))
}

pub fn check(
    report: &mut Report,
    dash: &Value,
    datasource_uids: &BTreeSet<String>,
    instruments: &[Instrument],
    naming: &Naming,
    labels: &BTreeSet<String>,
) {
    report.check(
        dash["title"] == "Conveyor",
        "the dashboard is titled \"Conveyor\"",
        format!("title {}", dash["title"]),
    );
    report.check(
        dash["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "the dashboard has a fixed uid (stable links across restarts)",
        "",
    );
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    let ids: Vec<&Value> = all.iter().map(|p| &p["id"]).collect();
    let unique: BTreeSet<String> = ids.iter().map(|v| v.to_string()).collect();
    report.check(
        unique.len() == ids.len() && ids.iter().all(|v| !v.is_null()),
        format!("the dashboard's {} panel ids are unique", ids.len()),
        "",
    );
    let mut queries: Vec<(String, String)> = Vec::new();
    for p in all.iter().filter(|p| p["type"] != "row") {
        let at = format!("panel {}", p["title"]);
        report.check(!p["gridPos"].is_null(), format!("{at} has a gridPos"), "");
        let targets = items(&p["targets"]);
        report.check(!targets.is_empty(), format!("{at} has queries"), "");
        for t in targets {
            let ds = if t["datasource"].is_object() { &t["datasource"] } else { &p["datasource"] };
            let uid = text(&ds["uid"]);
            report.check(
                datasource_uids.contains(&uid),
                format!("{at} query {} uses a provisioned datasource", t["refId"]),
                format!("uid {uid:?}, provisioned {datasource_uids:?}"),
            );
            queries.push((format!("{at} query {}", t["refId"]), text(&t["expr"])));
        }
    }
    for v in items(&dash["templating"]["list"]) {
        let q = if v["query"].is_object() { text(&v["query"]["query"]) } else { text(&v["query"]) };
        if v["type"] != "query" || q.is_empty() {
            continue;
        }
        let at = format!("variable ${}", text(&v["name"]));
        match label_values(&q) {
            Some((expr, label)) => {
                report.check(labels.contains(&label), format!("{at} reads a known label ({label})"), "");
                queries.push((at, expr));
            }
            None => queries.push((at, q)),
        }
    }
    let mut used = BTreeSet::new();
    for (at, expr) in &queries {
        if !report.check(!expr.trim().is_empty(), format!("{at} has an expression"), "") {
            continue;
        }
        let (names, query_labels) = crate::promql::refs(expr);
        let unknown: Vec<&String> = names.iter().filter(|n| !naming.known.contains(*n)).collect();
        report.check(
            !names.is_empty() && unknown.is_empty(),
            format!("{at} uses metrics the daemon serves ({})", names.iter().cloned().collect::<Vec<_>>().join(", ")),
            if unknown.is_empty() { "no metric name found".to_string() } else { format!("unknown: {unknown:?}") },
        );
        let bad: Vec<&String> = query_labels.iter().filter(|l| !labels.contains(*l)).collect();
        report.check(bad.is_empty(), format!("{at} uses known labels"), format!("unknown: {bad:?}"));
        used.extend(names);
    }
    // Every instrument is on the dashboard somewhere (process uptime is in a stat).
    let uncharted: BTreeSet<&String> = instruments
        .iter()
        .filter(|i| {
            let Some(f) = naming.family.get(&i.name) else { return false };
            !used.iter().any(|n| n == f || n.starts_with(&format!("{f}_")))
        })
        .map(|i| &i.name)
        .collect();
    report.check(
        uncharted.is_empty(),
        "every instrument in the sources is charted on the dashboard",
        format!("not charted: {uncharted:?}"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Scrape, naming};
    use serde_json::json;

    const SCRAPE: &str = "# TYPE a_total counter\na_total{k=\"v\"} 1\n# TYPE b_seconds histogram\nb_seconds_bucket{le=\"1\"} 1\nb_seconds_sum 1\nb_seconds_count 1\n";

    fn run(dash: &Value) -> Report {
        let instruments = vec![
            Instrument { name: "a".into(), kind: "counter".into(), unit: "".into(), file: "x.rs".into() },
            Instrument { name: "b".into(), kind: "histogram".into(), unit: "s".into(), file: "x.rs".into() },
        ];
        let scrape = Scrape::parse(SCRAPE);
        let n = naming(&instruments, &scrape);
        let mut labels: BTreeSet<String> = scrape.labels.clone();
        labels.extend(ADDED_LABELS.iter().map(|s| s.to_string()));
        let uids = ["prometheus".to_string()].into_iter().collect();
        let mut r = Report::default();
        check(&mut r, dash, &uids, &instruments, &n, &labels);
        r
    }

    fn dash(exprs: &[&str]) -> Value {
        let targets: Vec<Value> =
            exprs.iter().map(|e| json!({"refId": "A", "expr": e, "datasource": {"uid": "prometheus"}})).collect();
        json!({"title": "Conveyor", "uid": "c", "panels": [{"id": 1, "title": "p", "gridPos": {}, "targets": targets}]})
    }

    #[test]
    fn a_good_dashboard_passes() {
        run(&dash(&[
            "sum by (k) (rate(a_total[5m]))",
            "histogram_quantile(0.9, rate(b_seconds_bucket[$__rate_interval]))",
        ]))
        .assert_clean();
    }

    #[test]
    fn an_unknown_metric_fails() {
        let r = run(&dash(&["rate(a_total[5m])", "rate(b_second_bucket[5m])"]));
        assert!(r.failed("unknown: [\"b_second_bucket\"]"), "{:?}", r.failures);
    }

    #[test]
    fn an_unknown_label_fails() {
        let r = run(&dash(&["sum by (nope) (rate(a_total[5m]))", "b_seconds_count"]));
        assert!(r.failed("uses known labels: unknown: [\"nope\"]"), "{:?}", r.failures);
    }

    #[test]
    fn an_uncharted_instrument_fails() {
        let r = run(&dash(&["a_total"]));
        assert!(r.failed("not charted: {\"b\"}"), "{:?}", r.failures);
    }

    #[test]
    fn unprovisioned_datasources_duplicate_ids_and_empty_queries_fail() {
        let mut d = dash(&["a_total", "b_seconds_sum", ""]);
        d["panels"][0]["targets"][0]["datasource"]["uid"] = json!("other");
        if let Some(p) = d["panels"].as_array_mut() {
            p.push(json!({"id": 1, "type": "row"}));
        }
        let r = run(&d);
        assert!(r.failed("uses a provisioned datasource"), "{:?}", r.failures);
        assert!(r.failed("panel ids are unique"), "{:?}", r.failures);
        assert!(r.failed("has an expression"), "{:?}", r.failures);
    }

    #[test]
    fn a_variable_reads_a_known_label() {
        let mut d = dash(&["a_total", "b_seconds_sum"]);
        d["templating"] =
            json!({"list": [{"name": "i", "type": "query", "query": {"query": "label_values(a_total, nope)"}}]});
        assert!(run(&d).failed("reads a known label (nope)"));
    }
}
