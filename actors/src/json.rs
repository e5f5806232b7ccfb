//! JSON numbers as JSON Schema sees them: `3.0` is an integer. serde's integer types refuse
//! it, so request fields typed as integers (and documented as such) read through these.

use serde::{Deserialize, Deserializer, de::Error};

fn integral<'de, D: Deserializer<'de>>(value: serde_json::Number) -> Result<i64, D::Error> {
    number_integer(&value).ok_or_else(|| D::Error::custom(format!("{value} is not a 64-bit integer")))
}

fn number_integer(value: &serde_json::Number) -> Option<i64> {
    value.as_i64().or_else(|| value.as_f64().and_then(float_integer))
}

fn float_integer(f: f64) -> Option<i64> {
    // Exclusive bounds: past ±2^63 an f64 cannot say which integer it was.
    (f.is_finite() && f.fract() == 0.0 && f > i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

/// A JSON value read field by field (to name every bad one) as JSON Schema sees it:
/// `8491.0` is an integer, `1.5` and `"3"` are not.
pub fn value_integer(value: &serde_json::Value) -> Option<i64> {
    value.as_number().and_then(number_integer)
}

/// A query-string integer as JSON Schema sees it: `42`, `42.0` and `-1e3` are integers.
pub fn parse_integer(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().or_else(|| float_integer(text.parse().ok()?))
}

/// A `u64` field that also accepts integral floats.
pub fn integer_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = integer(d)?;
    u64::try_from(n).map_err(|_| D::Error::custom(format!("{n} is out of range")))
}

/// An `Option<u64>` field that also accepts integral floats.
pub fn optional_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match optional_integer(d)? {
        None => Ok(None),
        Some(n) => u64::try_from(n).map(Some).map_err(|_| D::Error::custom(format!("{n} is out of range"))),
    }
}

/// An `i64` field that also accepts integral floats (`42.0`).
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    integral::<D>(serde_json::Number::deserialize(d)?)
}

/// An `Option<i64>` field that also accepts integral floats.
pub fn optional_integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<serde_json::Number>::deserialize(d)?.map(integral::<D>).transpose()
}

/// An `Option<u32>` field that also accepts integral floats.
pub fn optional_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match optional_integer(d)? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| D::Error::custom(format!("{n} is out of range"))),
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct T {
        #[serde(deserialize_with = "super::integer")]
        a: i64,
        #[serde(default, deserialize_with = "super::optional_integer")]
        b: Option<i64>,
    }

    #[test]
    fn query_integers() {
        assert_eq!(super::parse_integer("42"), Some(42));
        assert_eq!(super::parse_integer("-10000000000001.0"), Some(-10_000_000_000_001));
        assert_eq!(super::parse_integer("1e3"), Some(1000));
        assert_eq!(super::parse_integer("1.5"), None);
        assert_eq!(super::parse_integer("NaN"), None);
        assert_eq!(super::parse_integer("x"), None);
    }

    #[test]
    fn value_integers() {
        use serde_json::json;
        assert_eq!(super::value_integer(&json!(8491.0)), Some(8491));
        assert_eq!(super::value_integer(&json!(-3)), Some(-3));
        assert_eq!(super::value_integer(&json!(1.5)), None);
        assert_eq!(super::value_integer(&json!(1e300)), None);
        assert_eq!(super::value_integer(&json!("3")), None);
    }

    #[test]
    fn integral_floats_are_integers_and_fractions_are_not() {
        let t: Result<T, _> = serde_json::from_str(r#"{"a": 3.0, "b": -7}"#);
        assert_eq!(t.ok(), Some(T { a: 3, b: Some(-7) }));
        assert!(serde_json::from_str::<T>(r#"{"a": 3.5}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"a": 1e300}"#).is_err());
        assert_eq!(serde_json::from_str::<T>(r#"{"a": 1, "b": null}"#).ok(), Some(T { a: 1, b: None }));
    }
}
