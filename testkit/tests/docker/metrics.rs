//! The daemon's metrics two ways: the OpenTelemetry instruments its sources create (name,
//! kind, unit), and the families a real `/metrics` scrape shows. How the exporter names an
//! instrument is learned from the scrape (per kind and unit), not copied as rules, so an
//! exporter upgrade that renames series shows up here.

use std::collections::{BTreeMap, BTreeSet};

/// One OpenTelemetry instrument found in the sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instrument {
    pub name: String,
    /// counter, up_down_counter, gauge, histogram (observable ones as their plain kind).
    pub kind: String,
    pub unit: String,
    pub file: String,
}

impl Instrument {
    /// The Prometheus type the exporter gives this kind.
    pub fn prom_type(&self) -> &'static str {
        match self.kind.as_str() {
            "counter" => "counter",
            "histogram" => "histogram",
            _ => "gauge",
        }
    }
}

/// The unit as it bears on the name: UCUM annotations (`{request}`, `{row}`) are all
/// dimensionless, so any one of them teaches the naming of the others.
fn unit_class(unit: &str) -> &str {
    if unit.starts_with('{') && unit.ends_with('}') { "{annotation}" } else { unit }
}

/// Any character outside `[A-Za-z0-9_:]` becomes `_` (OpenMetrics names and labels).
pub fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect()
}

/// `const NAME: &str = "value";` of every file: NAME -> [(file, value)].
fn constants(sources: &[(String, String)]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (file, text) in sources {
        for part in text.split("const ").skip(1) {
            let Some((name, rest)) = part.split_once(':') else { continue };
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
                continue;
            }
            let Some(rest) = rest.trim_start().strip_prefix("&str") else { continue };
            let Some(value) =
                rest.trim_start().strip_prefix('=').map(str::trim_start).and_then(|r| r.strip_prefix('"'))
            else {
                continue;
            };
            if let Some(end) = value.find('"') {
                out.entry(name.to_string()).or_default().push((file.clone(), value[..end].to_string()));
            }
        }
    }
    out
}

fn module_of(file: &str) -> String {
    let path = std::path::Path::new(file);
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    if stem == "mod" || stem == "lib" {
        path.parent().and_then(|p| p.file_name()).map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
    } else {
        stem
    }
}

/// The string a constant reference (or literal) in `file` stands for; None if unknown or ambiguous.
fn resolve(
    reference: &str,
    file: &str,
    text: &str,
    consts: &BTreeMap<String, Vec<(String, String)>>,
) -> Option<String> {
    let reference = reference.trim();
    if let Some(lit) = reference.strip_prefix('"') {
        return lit.strip_suffix('"').map(str::to_string);
    }
    let mut path: Vec<&str> = reference.split("::").collect();
    let name = path.pop()?;
    let candidates = consts.get(name)?;
    if path.is_empty() {
        if let Some((_, v)) = candidates.iter().find(|(f, _)| f == file) {
            return Some(v.clone());
        }
        // Imported: `use a::metrics::{.., NAME, ..};` or `use a::metrics::NAME;`.
        for stmt in text.split("use ").skip(1) {
            let stmt = stmt.split(';').next().unwrap_or("");
            let mentions = stmt.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|w| w == name);
            if mentions {
                let module = stmt.split('{').next().unwrap_or(stmt).trim_end_matches(name).trim_end_matches("::");
                path = module.split("::").filter(|s| !s.is_empty()).collect();
                break;
            }
        }
    }
    let values: BTreeSet<&String> = candidates
        .iter()
        .filter(|(f, _)| path.last().is_none_or(|m| module_of(f) == *m || path.len() == 1 && *m == "crate"))
        .map(|(_, v)| v)
        .collect();
    if values.len() == 1 { values.into_iter().next().cloned() } else { None }
}

/// The instruments the sources build, and the references that resolve to no single string.
pub fn instruments(sources: &[(String, String)]) -> (Vec<Instrument>, Vec<String>) {
    let consts = constants(sources);
    let mut found = Vec::new();
    let mut unresolved = Vec::new();
    for (file, text) in sources {
        for kind in ["up_down_counter", "counter", "gauge", "histogram"] {
            let needle = format!("_{kind}(");
            let mut from = 0;
            while let Some(at) = text[from..].find(&needle) {
                let start = from + at;
                from = start + needle.len();
                // `.u64_counter(` / `.f64_observable_gauge(`: the number type and prefix before.
                let before = &text[..start];
                let before = before.strip_suffix("_observable").unwrap_or(before);
                if !["u64", "i64", "f64"].iter().any(|t| before.ends_with(&format!(".{t}"))) {
                    continue;
                }
                if kind == "counter" && before.ends_with("_up_down") {
                    continue;
                }
                let Some(close) = text[from..].find(')') else { continue };
                let reference = &text[from..from + close];
                let chain_end = text[from..].find(".build()").map(|e| from + e).unwrap_or(from);
                let chain = &text[from..chain_end];
                let unit = chain
                    .split(".with_unit(")
                    .nth(1)
                    .and_then(|u| u.trim_start().strip_prefix('"'))
                    .and_then(|u| u.split('"').next())
                    .unwrap_or("")
                    .to_string();
                match resolve(reference, file, text, &consts) {
                    Some(name) => found.push(Instrument { name, kind: kind.to_string(), unit, file: file.clone() }),
                    None => {
                        unresolved.push(format!("{file}: instrument name {reference} resolves to one string constant"))
                    }
                }
            }
        }
    }
    (found, unresolved)
}

/// Label keys the sources attach (`kv(KEY, ..)`, `KeyValue::new(KEY, ..)`), sanitized.
pub fn source_labels(sources: &[(String, String)]) -> BTreeSet<String> {
    let consts = constants(sources);
    let mut out = BTreeSet::new();
    for (file, text) in sources {
        for opener in ["kv(", "KeyValue::new("] {
            for part in text.split(opener).skip(1) {
                let Some(arg) = part.split(',').next() else { continue };
                if arg.contains(['(', ')', '\n']) && !arg.trim().starts_with('"') {
                    continue;
                }
                if let Some(v) = resolve(arg, file, text, &consts) {
                    out.insert(sanitize(&v));
                }
            }
        }
    }
    out
}

/// A `/metrics` text exposition: families with their type, sample names, label names.
#[derive(Debug, Default)]
pub struct Scrape {
    pub families: BTreeMap<String, String>,
    pub samples: BTreeSet<String>,
    pub labels: BTreeSet<String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    s.families.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            s.samples.insert(line[..name_end].to_string());
            if line[name_end..].starts_with('{') {
                let mut chars = line[name_end + 1..].chars();
                let mut key = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '}' => break,
                        '=' => {
                            s.labels.insert(std::mem::take(&mut key));
                            // The quoted value, escapes included.
                            chars.next();
                            while let Some(c) = chars.next() {
                                if c == '\\' {
                                    chars.next();
                                } else if c == '"' {
                                    break;
                                }
                            }
                        }
                        ',' | ' ' => {}
                        c => key.push(c),
                    }
                }
            }
        }
        s
    }

    /// The sample-name suffixes of each family type (`_bucket`, `_sum`, `_count` for histograms).
    pub fn sample_suffixes(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (family, kind) in &self.families {
            for sample in &self.samples {
                if let Some(rest) = sample.strip_prefix(family.as_str())
                    && (rest.is_empty() || rest.starts_with('_'))
                    && (sample == family || !self.families.contains_key(sample.as_str()))
                {
                    out.entry(kind.clone()).or_default().insert(rest.to_string());
                }
            }
        }
        out
    }
}

/// How the exporter named the instruments: each instrument's family, learned from the scrape
/// where it appears, derived from an instrument of the same kind and unit where it does not.
pub struct Naming {
    /// Instrument name -> Prometheus family name.
    pub family: BTreeMap<String, String>,
    /// Every sample name the instruments can produce, plus the exporter's own.
    pub known: BTreeSet<String>,
    pub problems: Vec<String>,
    /// Instruments absent from the scrape, named by analogy.
    pub derived: Vec<String>,
}

pub fn naming(instruments: &[Instrument], scrape: &Scrape) -> Naming {
    let mut family = BTreeMap::new();
    let mut problems = Vec::new();
    // (kind, unit) -> the family name's remainder after the sanitized instrument name.
    let mut rules: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut unseen = Vec::new();
    for i in instruments {
        let base = sanitize(&i.name);
        let hit = scrape
            .families
            .iter()
            .filter(|(f, t)| {
                *t == i.prom_type() && f.strip_prefix(base.as_str()).is_some_and(|r| r.is_empty() || r.starts_with('_'))
            })
            .min_by_key(|(f, _)| f.len());
        match hit {
            Some((f, _)) => {
                let rest = f[base.len()..].to_string();
                let key = (i.kind.clone(), unit_class(&i.unit).to_string());
                if let Some(prev) = rules.get(&key).filter(|p| **p != rest) {
                    problems.push(format!(
                        "instruments of kind {} and unit {:?} are named inconsistently ({prev:?} / {rest:?})",
                        i.kind, i.unit
                    ));
                }
                rules.insert(key, rest);
                family.insert(i.name.clone(), f.clone());
            }
            None => unseen.push(i),
        }
    }
    let mut derived = Vec::new();
    for i in unseen {
        match rules.get(&(i.kind.clone(), unit_class(&i.unit).to_string())) {
            Some(rest) => {
                let f = format!("{}{rest}", sanitize(&i.name));
                derived.push(format!("{} -> {f}", i.name));
                family.insert(i.name.clone(), f);
            }
            None => problems.push(format!(
                "instrument {} ({}, unit {:?}, {}) is not in the scrape, and no instrument of that kind and unit \
                 class is, so its Prometheus name is unknown: exercise one in the scrape (testkit/tests/docker)",
                i.name, i.kind, i.unit, i.file
            )),
        }
    }
    let suffixes = scrape.sample_suffixes();
    let mut known: BTreeSet<String> = scrape.samples.clone();
    for i in instruments {
        let Some(f) = family.get(&i.name) else { continue };
        for s in suffixes.get(i.prom_type()).into_iter().flatten() {
            known.insert(format!("{f}{s}"));
        }
    }
    // Families in the scrape that no instrument of the sources explains (target_info is the
    // exporter's own): a renamed instrument, or a stale rule.
    let explained: BTreeSet<&String> = family.values().collect();
    for f in scrape.families.keys() {
        if f != "target_info" && !explained.contains(f) {
            problems.push(format!("scraped family {f} comes from no instrument found in the sources"));
        }
    }
    Naming { family, known, problems, derived }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# TYPE a_b_seconds histogram\na_b_seconds_bucket{le=\"1\",x=\"y\"} 1\na_b_seconds_sum 1\n\
        a_b_seconds_count 1\n# TYPE c_total counter\nc_total{k=\"v,}\"} 3\n# TYPE target_info gauge\ntarget_info 1\n";

    fn inst(name: &str, kind: &str, unit: &str) -> Instrument {
        Instrument { name: name.into(), kind: kind.into(), unit: unit.into(), file: "x.rs".into() }
    }

    #[test]
    fn the_scrape_teaches_names_for_unexercised_instruments() {
        let s = Scrape::parse(SCRAPE);
        assert_eq!(s.labels, ["k", "le", "x"].iter().map(|s| s.to_string()).collect());
        let n = naming(
            &[
                inst("a.b", "histogram", "s"),
                inst("c", "counter", "{x}"),
                inst("d.e", "histogram", "s"),
                inst("f", "counter", "{y}"),
            ],
            &s,
        );
        assert!(n.problems.is_empty(), "{:?}", n.problems);
        assert!(n.known.contains("d_e_seconds_bucket") && n.known.contains("d_e_seconds_count"));
        assert!(!n.known.contains("d_e_seconds"));
        assert!(n.known.contains("f_total"), "{:?}", n.known);
    }

    #[test]
    fn an_unlearnable_or_orphaned_name_is_a_problem() {
        let n = naming(&[inst("c", "counter", "{x}"), inst("z", "gauge", "By")], &Scrape::parse(SCRAPE));
        assert!(n.problems.iter().any(|p| p.contains("instrument z")), "{:?}", n.problems);
        assert!(
            n.problems.iter().any(|p| p.contains("family a_b_seconds comes from no instrument")),
            "{:?}",
            n.problems
        );
    }

    #[test]
    fn instruments_resolve_through_constants_and_imports() {
        let sources = vec![
            (
                "m/src/metrics.rs".to_string(),
                "pub const HITS: &str = \"x.hits\";\npub(crate) const LAG: &str = \"x.lag\";".to_string(),
            ),
            (
                "m/src/a.rs".to_string(),
                "use crate::metrics::{HITS};\nm.u64_counter(HITS).with_unit(\"{hit}\").build();\n\
                 m.i64_observable_gauge(metrics::LAG).build();\nm.f64_histogram(\"lit.d\").with_unit(\"s\").build();\n\
                 m.u64_counter(NOPE).build();"
                    .to_string(),
            ),
        ];
        let (found, unresolved) = instruments(&sources);
        let names: Vec<(&str, &str, &str)> =
            found.iter().map(|i| (i.name.as_str(), i.kind.as_str(), i.unit.as_str())).collect();
        assert!(names.contains(&("x.hits", "counter", "{hit}")), "{names:?}");
        assert!(names.contains(&("x.lag", "gauge", "")), "{names:?}");
        assert!(names.contains(&("lit.d", "histogram", "s")), "{names:?}");
        assert_eq!(unresolved.len(), 1, "{unresolved:?}");
    }
}
