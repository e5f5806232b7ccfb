//! The defaults are valid, cross-field rules name their key, and secrets never print.

use super::*;

#[test]
fn defaults_are_valid() {
    assert_eq!(Config::default().validate(), Ok(()));
}

#[test]
fn cross_field_rules_name_the_key() {
    let mut c = Config::default();
    c.log.backend = LogBackendKind::Kafka;
    c.log.kafka.security_protocol = SecurityProtocol::SaslSsl;
    assert_eq!(c.validate().map_err(|e| e.key), Err("log.kafka.sasl_username"));

    let mut c = Config::default();
    c.retry.base_ms = 120_000;
    assert_eq!(c.validate().map_err(|e| e.key), Err("retry.base_ms"));

    let mut c = Config::default();
    c.log.topics.events_dlq = c.log.topics.events_input.clone();
    assert_eq!(c.validate().map_err(|e| e.key), Err("log.topics.events_dlq"));

    let mut c = Config::default();
    c.http.addr = "localhost".into();
    assert_eq!(c.validate().map_err(|e| e.key), Err("http.addr"));
}

#[test]
fn secrets_never_print() {
    let mut c = Config::default();
    c.auth.jwt_secret = Secret::new("hunter2");
    assert!(!format!("{c:?}").contains("hunter2"));
    let json = serde_json::to_string(&c).unwrap_or_default();
    assert!(!json.contains("hunter2"));
    assert!(json.contains("[redacted]"));
}

#[test]
fn url_passwords_are_masked() {
    assert_eq!(masked_url("postgres://u:hunter2@db:5432/x"), "postgres://u:***@db:5432/x");
    assert_eq!(masked_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    assert_eq!(masked_url("memory"), "memory");
    let mut c = Config::default();
    c.store.url = "postgres://u:hunter2@db/x".into();
    assert!(!serde_json::to_string(&c).unwrap_or_default().contains("hunter2"));
}

#[test]
fn default_store_is_sqlite_in_data_dir() {
    assert_eq!(Config::default().store_url(), "sqlite://./data/conveyor.db?mode=rwc");
}

#[test]
fn cache_tls_files_need_rediss_and_come_in_pairs() {
    let mut c = Config::default();
    c.cache.tls_ca_file = "/etc/ca.pem".into();
    assert_eq!(c.validate().map_err(|e| e.key), Err("cache.tls_ca_file"), "a CA file with the memory cache");
    c.cache.url = "rediss://cache:6380".into();
    assert_eq!(c.validate(), Ok(()));
    c.cache.tls_cert_file = "/etc/client.pem".into();
    assert_eq!(c.validate().map_err(|e| e.key), Err("cache.tls_cert_file"), "a certificate without its key");
    c.cache.tls_key_file = "/etc/client.key".into();
    assert_eq!(c.validate(), Ok(()));
}
