//! The metric and label names a PromQL expression refers to, from a small tokenizer (strings,
//! label matchers and ranges skipped; function calls and keywords are no metric names).

use std::collections::BTreeSet;

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "inf",
    "nan",
    "Inf",
    "NaN",
];
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Grafana variables (`$var`, `${var}`, `$__rate_interval`) removed.
fn strip_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
            }
        } else {
            while chars.peek().is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_') {
                chars.next();
            }
        }
    }
    out
}

/// Label names of a matcher block's text (`a="x", b=~"y"`).
fn matcher_labels(block: &str, labels: &mut BTreeSet<String>) {
    let mut chars = block.chars().peekable();
    let mut ident = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                skip_string(c, &mut chars);
                ident.clear();
            }
            c if is_ident(c) => ident.push(c),
            '=' | '!' => {
                if !ident.is_empty() {
                    labels.insert(std::mem::take(&mut ident));
                }
            }
            _ => {
                if !c.is_whitespace() {
                    ident.clear();
                }
            }
        }
    }
}

fn skip_string(quote: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        if c == '\\' && quote != '`' {
            chars.next();
        } else if c == quote {
            break;
        }
    }
}

/// (metric names, label names) `expr` refers to.
pub fn refs(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let e = strip_variables(expr);
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut chars = e.chars().peekable();
    // The previous identifier, when it opens a label list with its next `(`.
    let mut pending_list = false;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => skip_string(c, &mut chars),
            '{' => {
                let mut block = String::new();
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                    block.push(c);
                }
                matcher_labels(&block, &mut labels);
            }
            '[' => {
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                }
            }
            '(' if pending_list => {
                pending_list = false;
                let mut list = String::new();
                for c in chars.by_ref() {
                    if c == ')' {
                        break;
                    }
                    list.push(c);
                }
                labels.extend(list.split(',').map(str::trim).filter(|l| !l.is_empty()).map(str::to_string));
            }
            c if c.is_ascii_digit() || (c == '.' && chars.peek().is_some_and(char::is_ascii_digit)) => {
                // A number or a duration (5m, 1e3, 0x1f): digits, letters and dots.
                while chars.peek().is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.') {
                    chars.next();
                }
            }
            c if is_ident_start(c) => {
                let mut ident = c.to_string();
                while chars.peek().is_some_and(|c| is_ident(*c)) {
                    ident.extend(chars.next());
                }
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if LABEL_LISTS.contains(&ident.as_str()) {
                    pending_list = true;
                } else if KEYWORDS.contains(&ident.as_str()) || chars.peek() == Some(&'(') {
                    // An aggregation or a function call.
                } else {
                    names.insert(ident);
                }
            }
            _ => {}
        }
    }
    (names, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_and_labels_of_a_dashboard_query() {
        let (n, l) = refs(
            r#"histogram_quantile(0.99, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket{instance=~"$instance",a!="x{y}"}[$__rate_interval])))"#,
        );
        assert_eq!(n, set(&["http_server_request_duration_seconds_bucket"]));
        assert_eq!(l, set(&["a", "http_route", "instance", "le"]));
    }

    #[test]
    fn binary_operators_and_vector_literals() {
        let (n, _) = refs("sum(increase(a_total[5m])) or vector(0) / (b + c_sum offset 1h) > bool 1e3");
        assert_eq!(n, set(&["a_total", "b", "c_sum"]));
    }
}
