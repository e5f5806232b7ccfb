//! Every check says what it checked; the failures are listed together at the end, so one run
//! shows every mismatch (as scripts/check-docker.sh did).

use std::fmt::Display;

#[derive(Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub passed: usize,
}

impl Report {
    pub fn check(&mut self, cond: bool, msg: impl Display, why: impl Display) -> bool {
        if cond {
            self.passed += 1;
            println!("ok   {msg}");
        } else {
            let why = why.to_string();
            let line = if why.is_empty() { msg.to_string() } else { format!("{msg}: {why}") };
            println!("FAIL {line}");
            self.failures.push(line);
        }
        cond
    }

    pub fn fail(&mut self, msg: impl Display) {
        self.check(false, msg, "");
    }

    /// Panics with every failure, for the test's verdict.
    pub fn assert_clean(&self) {
        assert!(
            self.failures.is_empty(),
            "{} Docker check(s) failed ({} passed):\n  - {}",
            self.failures.len(),
            self.passed,
            self.failures.join("\n  - ")
        );
    }

    /// For the negative tests: whether some failure mentions `needle`.
    #[cfg(test)]
    pub fn failed(&self, needle: &str) -> bool {
        self.failures.iter().any(|f| f.contains(needle))
    }
}

/// `v` as a string the way compose and YAML mean it (numbers and booleans too); "" for null.
pub fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The items of a sequence (none for anything else).
pub fn items(v: &serde_json::Value) -> &[serde_json::Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}
