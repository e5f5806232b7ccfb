//! Templates and conditions, rendered by minijinja (Jinja syntax): `{{ input.data.id }}`,
//! `{{ steps.lookup.body.email | tojson }}`, `steps.lookup.status == 200`. Undefined
//! variables are errors, so a typo fails the step instead of sending an empty string.

use std::sync::LazyLock;

use minijinja::{Environment, UndefinedBehavior, Value};

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Bodies are JSON or text, never HTML: no escaping behind the author's back.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
});

/// Why a template or expression is unusable (syntax at save time, data at run time).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl From<minijinja::Error> for TemplateError {
    fn from(e: minijinja::Error) -> Self {
        let mut text = e.to_string();
        if let Some(detail) = e.detail()
            && !text.contains(detail)
        {
            text = format!("{text}: {detail}");
        }
        TemplateError(text)
    }
}

pub fn check_template(source: &str) -> Result<(), String> {
    ENV.template_from_str(source).map(|_| ()).map_err(|e| TemplateError::from(e).0)
}

pub fn check_expression(source: &str) -> Result<(), String> {
    ENV.compile_expression(source).map(|_| ()).map_err(|e| TemplateError::from(e).0)
}

pub fn render(source: &str, context: &serde_json::Value) -> Result<String, TemplateError> {
    Ok(ENV.render_str(source, Value::from_serialize(context))?)
}

pub fn truthy(source: &str, context: &serde_json::Value) -> Result<bool, TemplateError> {
    let expr = ENV.compile_expression(source)?;
    Ok(expr.eval(Value::from_serialize(context))?.is_true())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_evaluates_over_the_context() {
        let ctx = serde_json::json!({"input": {"id": "u1", "n": 3}, "steps": {"a": {"status": 200, "body": {"email": "a@b"}}}});
        assert_eq!(render("/users/{{ input.id }}", &ctx).expect("render"), "/users/u1");
        assert_eq!(render(r#"{"e": {{ steps.a.body.email | tojson }}}"#, &ctx).expect("render"), r#"{"e": "a@b"}"#);
        assert!(truthy("steps.a.status == 200 and input.n > 2", &ctx).expect("eval"));
        assert!(!truthy("input.n > 5", &ctx).expect("eval"));
        assert!(render("{{ input.missing }}", &ctx).is_err(), "undefined is an error, not an empty string");
        assert!(check_template("{{ unclosed").is_err() && check_expression("1 +").is_err());
    }
}
