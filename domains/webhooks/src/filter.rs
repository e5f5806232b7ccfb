//! Which notifications an endpoint receives: event-type patterns and projects.

use conveyor_actors::error::FieldError;

/// Conveyor's own domain events carry types under this prefix; only admins' endpoints get them.
pub const DOMAIN_PREFIX: &str = "conveyor.";

/// An endpoint's subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exact types or `prefix.*`; empty = every type.
    pub event_types: Vec<String>,
    /// Empty = every project.
    pub projects: Vec<String>,
    /// Admins' endpoints may receive `conveyor.*` domain events.
    pub admin: bool,
}

impl Filter {
    pub fn matches(&self, event_type: &str, project: Option<&str>) -> bool {
        if event_type.starts_with(DOMAIN_PREFIX) && !self.admin {
            return false;
        }
        let type_ok = self.event_types.is_empty() || self.event_types.iter().any(|p| pattern_matches(p, event_type));
        let project_ok = self.projects.is_empty() || project.is_some_and(|p| self.projects.iter().any(|q| q == p));
        type_ok && project_ok
    }
}

/// `a.b` matches exactly; `a.*` matches `a.b` and `a.b.c` but not `a`; `*` matches everything.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => event_type.len() > prefix.len() && event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Checks a list of type patterns for the endpoint API.
pub fn validate_patterns(field: &'static str, patterns: &[String]) -> Result<(), FieldError> {
    if patterns.len() > 100 {
        return Err(FieldError::new(field, "at most 100 entries"));
    }
    for p in patterns {
        let body = p.strip_suffix(".*").or_else(|| (p == "*").then_some("")).unwrap_or(p);
        let ok = !p.is_empty()
            && p.chars().count() <= 256
            && !body.contains('*')
            && body.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
        if !ok {
            return Err(FieldError::new(
                field,
                format!("{p:?} is not an event type or a `prefix.*` pattern (letters, digits, . _ - : /)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("subscription.*", "subscription.updated"));
        assert!(pattern_matches("subscription.*", "subscription.a.b"));
        assert!(!pattern_matches("subscription.*", "subscription"));
        assert!(!pattern_matches("subscription.*", "subscriptions.updated"));
        assert!(pattern_matches("tax.created", "tax.created"));
        assert!(!pattern_matches("tax.created", "tax.created.x"));
        assert!(pattern_matches("*", "anything"));
    }

    #[test]
    fn projects_and_domain_events() {
        let f = Filter { event_types: vec!["payment.*".into()], projects: vec!["dev".into()], admin: false };
        assert!(f.matches("payment.succeeded", Some("dev")));
        assert!(!f.matches("payment.succeeded", Some("prod")));
        assert!(!f.matches("payment.succeeded", None));
        let everything = Filter::default();
        assert!(!everything.matches("conveyor.resource.updated", None));
        assert!(Filter { admin: true, ..Filter::default() }.matches("conveyor.resource.updated", None));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(validate_patterns("event_types", &["a.*".into(), "*".into(), "b.c".into()]).is_ok());
        for bad in ["", "a*", "a.*.b", "a b", "*.x"] {
            assert!(validate_patterns("event_types", &[bad.to_string()]).is_err(), "{bad:?}");
        }
    }
}
