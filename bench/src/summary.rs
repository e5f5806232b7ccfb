//! `summary`: one table of every ratio the benchmarks wrote. Each `bench/results/<name>.json`
//! may carry a top-level `"summary"` array of
//! `{"name", "conveyor", "baseline", "ratio", "target", "unit"}` rows; this reads them all
//! (a missing or unreadable file is named and skipped), prints the table and writes it as
//! markdown to `summary.md` in the same directory for the README to include.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use crate::report::{self, thousands};

/// The benchmarks, in the order `scripts/bench.sh all` runs them.
const BENCHES: [&str; 5] = ["keys", "ingest", "processing", "webhooks", "ordered"];

#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// Where the JSON files are (default: bench/results, or CONVEYOR_BENCH_RESULTS).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Also put the table into this markdown file, between `<!-- summary:begin -->` and
    /// `<!-- summary:end -->` (scripts/bench.sh all passes README.md).
    #[arg(long)]
    pub readme: Option<std::path::PathBuf>,
}

const BEGIN: &str = "<!-- summary:begin -->";
const END: &str = "<!-- summary:end -->";

/// `doc` with the text between the summary markers replaced by `table`; `None` without
/// both markers in order.
pub fn splice(doc: &str, table: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = start + doc[start..].find(END)?;
    Some(format!("{}\n{}{}", &doc[..start], table.trim_end_matches('\n').to_string() + "\n", &doc[end..]))
}

/// One row of a benchmark's `"summary"` array.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub bench: String,
    pub name: String,
    pub conveyor: Option<f64>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    pub target: Option<f64>,
    pub unit: String,
}

impl Row {
    /// Met, missed, or no target. A row with a ratio must reach its target; a row without
    /// one (a latency, a count of violations) must stay at or below it.
    fn verdict(&self) -> &'static str {
        let met = match (self.ratio, self.conveyor, self.target) {
            (Some(r), _, Some(t)) => r >= t,
            (None, Some(c), Some(t)) => c <= t,
            _ => return "",
        };
        if met { "yes" } else { "NO" }
    }
}

/// A row for a bench JSON's `"summary"` array.
pub fn row(name: &str, conveyor: f64, baseline: f64, target: Option<f64>, unit: &str) -> Value {
    let ratio = if baseline > 0.0 { Some(report::round(conveyor / baseline, 4)) } else { None };
    json!({
        "name": name,
        "conveyor": report::round(conveyor, 3),
        "baseline": report::round(baseline, 3),
        "ratio": ratio,
        "target": target,
        "unit": unit,
    })
}

/// The rows of one bench's JSON document.
pub fn rows_of(bench: &str, doc: &Value) -> Vec<Row> {
    let Some(items) = doc.get("summary").and_then(Value::as_array) else { return Vec::new() };
    items
        .iter()
        .map(|item| Row {
            bench: bench.to_string(),
            name: item.get("name").and_then(Value::as_str).unwrap_or("?").to_string(),
            conveyor: item.get("conveyor").and_then(Value::as_f64),
            baseline: item.get("baseline").and_then(Value::as_f64),
            ratio: item.get("ratio").and_then(Value::as_f64),
            target: item.get("target").and_then(Value::as_f64),
            unit: item.get("unit").and_then(Value::as_str).unwrap_or_default().to_string(),
        })
        .collect()
}

fn number(n: Option<f64>) -> String {
    match n {
        None => "–".into(),
        Some(n) if n.abs() >= 100.0 => thousands(n),
        Some(n) => format!("{n:.3}"),
    }
}

fn cells(r: &Row) -> Vec<String> {
    vec![
        r.bench.clone(),
        r.name.clone(),
        number(r.conveyor),
        number(r.baseline),
        r.unit.clone(),
        r.ratio.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into()),
        match (r.ratio, r.target) {
            (Some(_), Some(t)) => format!("≥ {t}"),
            (None, Some(t)) => format!("≤ {t}"),
            _ => String::new(),
        },
        r.verdict().to_string(),
    ]
}

const HEADER: [&str; 8] = ["bench", "measure", "conveyor", "baseline", "unit", "ratio", "target", "met"];

/// The markdown table (with the files that were missing, and where each came from).
pub fn markdown(rows: &[Row], missing: &[String], dates: &[(String, String)]) -> String {
    let mut out = String::from("| ");
    out.push_str(&HEADER.join(" | "));
    out.push_str(" |\n|");
    out.push_str(&"---|".repeat(HEADER.len()));
    out.push('\n');
    for r in rows {
        out.push_str("| ");
        out.push_str(&cells(r).join(" | "));
        out.push_str(" |\n");
    }
    if !dates.is_empty() {
        out.push('\n');
        let runs: Vec<String> = dates.iter().map(|(b, d)| format!("{b} {d}")).collect();
        out.push_str(&format!("Measured: {}.\n", runs.join("; ")));
    }
    if !missing.is_empty() {
        out.push_str(&format!("\nNo summary from: {}.\n", missing.join(", ")));
    }
    out
}

fn read(dir: &Path, bench: &str) -> anyhow::Result<Value> {
    let path = dir.join(format!("{bench}.json"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn run(args: SummaryArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(report::results_dir);
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let mut dates = Vec::new();
    for bench in BENCHES {
        match read(&dir, bench) {
            Ok(doc) => {
                let found = rows_of(bench, &doc);
                if found.is_empty() {
                    missing.push(format!("{bench} (no \"summary\" in its JSON)"));
                } else {
                    let date = doc.pointer("/machine/date").and_then(Value::as_str).unwrap_or("?");
                    let load = doc.pointer("/machine/loadavg_1_5_15_at_write").and_then(Value::as_str).unwrap_or("?");
                    dates.push((bench.to_string(), format!("{date} (load {load})")));
                }
                rows.extend(found);
            }
            Err(err) => missing.push(format!("{bench} ({err:#})")),
        }
    }
    println!();
    println!("summary: every ratio in {}", dir.display());
    let table_rows: Vec<Vec<String>> = rows.iter().map(cells).collect();
    report::table(&HEADER, &table_rows);
    for m in &missing {
        println!("  (no summary from {m})");
    }
    let path = dir.join("summary.md");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let table = markdown(&rows, &missing, &dates);
    std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    println!("  wrote {}", path.display());
    if let Some(readme) = args.readme {
        let doc = std::fs::read_to_string(&readme).with_context(|| format!("reading {}", readme.display()))?;
        let Some(updated) = splice(&doc, &table) else {
            anyhow::bail!("{} has no {BEGIN} … {END} block", readme.display());
        };
        std::fs::write(&readme, updated).with_context(|| format!("writing {}", readme.display()))?;
        println!("  updated the table in {}", readme.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_and_marks_targets() {
        let doc = json!({"summary": [
            row("req/s vs raw hyper", 30.0, 100.0, Some(0.3), "req/s"),
            row("req/s vs raw hyper (kafka)", 10.0, 100.0, Some(0.2), "req/s"),
            {"name": "order violations", "conveyor": 0, "baseline": null, "ratio": null, "target": 0, "unit": "count"},
            {"name": "p99", "conveyor": 7.5, "baseline": null, "ratio": null, "target": 5.0, "unit": "ms"},
        ]});
        let rows = rows_of("ingest", &doc);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].ratio, Some(0.3));
        assert_eq!(rows[0].verdict(), "yes");
        assert_eq!(rows[1].verdict(), "NO");
        assert_eq!(rows[2].verdict(), "yes");
        assert_eq!(rows[3].verdict(), "NO");
        let md = markdown(&rows, &["webhooks (missing)".into()], &[]);
        assert!(md.contains("| ingest | req/s vs raw hyper | 30.000 | 100 | req/s | 0.300 | ≥ 0.3 | yes |"));
        assert!(md.contains("No summary from: webhooks (missing)."));
    }

    #[test]
    fn the_table_replaces_only_the_marked_block() {
        let doc = "# R\n<!-- summary:begin -->\nold\n<!-- summary:end -->\nafter\n";
        let out = splice(doc, "| new |\n").expect("markers");
        assert_eq!(out, "# R\n<!-- summary:begin -->\n| new |\n<!-- summary:end -->\nafter\n");
        assert_eq!(splice(&out, "| newer |").expect("markers").matches("summary:begin").count(), 1);
        assert_eq!(splice("no markers", "| t |"), None);
    }

    #[test]
    fn a_document_without_summary_has_no_rows() {
        assert!(rows_of("keys", &json!({"runs": []})).is_empty());
    }
}
