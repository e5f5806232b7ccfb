//! Registration rules; every problem is reported at once, named by its field.

use chrono::NaiveDate;

use super::Registration;
use crate::Error;
use crate::config::PasswordConfig;
use crate::error::FieldIssue;

pub struct Valid {
    pub email: String,
    pub name: String,
    pub birthday: String,
}

/// Trimmed and lower-cased: `Ann@Example.COM ` and `ann@example.com` are one account.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn email_problem(email: &str) -> Option<&'static str> {
    if email.is_empty() {
        return Some("is required");
    }
    if email.len() > 254 {
        return Some("must be at most 254 characters");
    }
    let Some((local, domain)) = email.split_once('@') else { return Some("must be an email address") };
    let plausible = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    (!plausible).then_some("must be an email address")
}

pub fn registration(form: &Registration, policy: &PasswordConfig) -> Result<Valid, Error> {
    let mut fields = Vec::new();
    let email = normalise_email(&form.email);
    if let Some(problem) = email_problem(&email) {
        fields.push(FieldIssue::new("email", problem));
    }
    let length = form.password.chars().count();
    if length < policy.min_length || length > policy.max_length {
        fields.push(FieldIssue::new(
            "password",
            format!("must be {} to {} characters", policy.min_length, policy.max_length),
        ));
    }
    let name = form.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        fields.push(FieldIssue::new("name", "must be 1 to 100 characters"));
    }
    match NaiveDate::parse_from_str(form.birthday.trim(), "%Y-%m-%d") {
        Ok(date) if date > chrono::Utc::now().date_naive() => {
            fields.push(FieldIssue::new("birthday", "must not be in the future"));
        }
        Ok(date) if date < NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(date) => {
            fields.push(FieldIssue::new("birthday", "must be after 1900-01-01"));
        }
        Ok(_) => {}
        Err(_) => fields.push(FieldIssue::new("birthday", "must be a date as YYYY-MM-DD")),
    }
    if fields.is_empty() {
        Ok(Valid { email, name, birthday: form.birthday.trim().to_string() })
    } else {
        Err(Error::InvalidInput { fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(email: &str, password: &str, name: &str, birthday: &str) -> Registration {
        Registration { email: email.into(), password: password.into(), name: name.into(), birthday: birthday.into() }
    }

    fn problems(r: Result<Valid, Error>) -> Vec<&'static str> {
        match r {
            Err(Error::InvalidInput { fields }) => fields.iter().map(|f| f.field).collect(),
            Err(other) => panic!("unexpected {other}"),
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn accepts_a_good_form_and_normalises_the_email() {
        let ok =
            registration(&form(" Ann@Example.COM ", "long enough", " Ann ", "1990-02-03"), &PasswordConfig::default());
        let ok = ok.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((ok.email.as_str(), ok.name.as_str()), ("ann@example.com", "Ann"));
    }

    #[test]
    fn names_every_bad_field() {
        let policy = PasswordConfig::default();
        assert_eq!(
            problems(registration(&form("nope", "short", "", "someday"), &policy)),
            ["email", "password", "name", "birthday"]
        );
        assert_eq!(problems(registration(&form("a@b", "long enough", "x", "1990-01-01"), &policy)), ["email"]);
        assert_eq!(problems(registration(&form("a@b.c", "long enough", "x", "2999-01-01"), &policy)), ["birthday"]);
        assert_eq!(problems(registration(&form("a b@c.d", "long enough", "x", "1990-01-01"), &policy)), ["email"]);
    }
}
