//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one `v1,…`
//! per secret, space-separated (during a rotation both secrets sign).

use base64::Engine;
use hmac::{KeyInit, Mac};
use rand::RngCore;

const PREFIX: &str = "whsec_";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A new secret: `whsec_` and 32 random bytes in base64 (Svix's format).
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("{PREFIX}{}", B64.encode(key))
}

/// Reading secrets as other Standard Webhooks implementations do: padding optional, unused
/// trailing bits ignored.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The HMAC key inside a `whsec_` secret.
fn key(secret: &str) -> Option<Vec<u8>> {
    LENIENT.decode(secret.strip_prefix(PREFIX)?).ok().filter(|k| !k.is_empty())
}

/// True for a secret this module can sign with (a user may bring their own).
pub fn valid_secret(secret: &str) -> bool {
    key(secret).is_some_and(|k| (24..=64).contains(&k.len()))
}

/// `v1,<signature>` for one secret.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key(secret)?).ok()?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header value: one signature per secret.
pub fn signature_header(secrets: &[&str], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().filter_map(|s| sign(s, msg_id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// True when one of the `v1,…` signatures in a `webhook-signature` header is this secret's
/// signature of the message: what a receiver checks (also `conveyor webhook listen`).
pub fn verify(secret: &str, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Some(expected) = sign(secret, msg_id, timestamp, body) else { return false };
    header.split(' ').any(|candidate| constant_time_eq(candidate.as_bytes(), expected.as_bytes()))
}

/// Compares two secrets in time that does not depend on where they differ (nor, since
/// both are MACed first, on their lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mac = |data: &[u8]| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"conveyor-compare").expect("any key length");
        mac.update(data);
        mac
    };
    mac(a).verify_slice(&mac(b).finalize().into_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's test vectors.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn generated_secrets_sign_and_rotations_sign_twice() {
        let (a, b) = (generate_secret(), generate_secret());
        assert!(a.starts_with("whsec_") && valid_secret(&a) && a != b);
        let header = signature_header(&[&a, &b], "msg", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|s| s.starts_with("v1,")));
        assert!(!valid_secret("whsec_") && !valid_secret("nope") && sign("nope", "m", 1, b"").is_none());
    }

    #[test]
    fn verifies_any_of_the_signatures_and_nothing_else() {
        let (a, b) = (generate_secret(), generate_secret());
        let header = signature_header(&[&b, &a], "msg", 7, b"{}");
        assert!(verify(&a, "msg", 7, b"{}", &header) && verify(&b, "msg", 7, b"{}", &header));
        assert!(!verify(&a, "msg", 8, b"{}", &header), "another timestamp");
        assert!(!verify(&a, "msg", 7, b"{ }", &header), "another body");
        assert!(!verify(&generate_secret(), "msg", 7, b"{}", &header), "another secret");
        assert!(!verify("nope", "msg", 7, b"{}", &header));
    }

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"admin:admin", b"admin:admin"));
        assert!(!constant_time_eq(b"admin:admin", b"admin:admim"));
        assert!(!constant_time_eq(b"admin", b"admin:admin"));
    }
}
