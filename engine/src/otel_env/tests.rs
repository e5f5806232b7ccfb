//! Every variable as the spec writes it, and a clear refusal of what it does not allow.

use std::collections::HashMap;

use super::*;

fn parse(vars: &[(&str, &str)]) -> Result<OtelEnv, BadConfig> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    OtelEnv::parse(|name| map.get(name).cloned())
}

fn refused(vars: &[(&str, &str)]) -> String {
    parse(vars).err().map(|e| e.key).unwrap_or_else(|| panic!("{vars:?} was accepted"))
}

#[test]
fn nothing_set_is_the_default_and_empty_means_unset() {
    assert_eq!(parse(&[]).ok(), Some(OtelEnv::default()));
    assert_eq!(parse(&[(SDK_DISABLED, ""), (TRACES_SAMPLER, " "), (ENDPOINT, "")]).ok(), Some(OtelEnv::default()));
}

#[test]
fn sdk_disabled_is_a_boolean() {
    assert!(parse(&[(SDK_DISABLED, "TRUE")]).is_ok_and(|o| o.disabled));
    assert!(parse(&[(SDK_DISABLED, "false")]).is_ok_and(|o| !o.disabled));
    assert_eq!(refused(&[(SDK_DISABLED, "yes")]), SDK_DISABLED);
}

#[test]
fn every_sampler_of_the_spec_and_its_argument() {
    let s = |name: &str, arg: Option<&str>| {
        let mut vars = vec![(TRACES_SAMPLER, name)];
        vars.extend(arg.map(|a| (TRACES_SAMPLER_ARG, a)));
        parse(&vars).ok().and_then(|o| o.sampler)
    };
    assert_eq!(s("always_on", None), Some(SamplerChoice::AlwaysOn));
    assert_eq!(s("always_off", None), Some(SamplerChoice::AlwaysOff));
    assert_eq!(s("traceidratio", Some("0.25")), Some(SamplerChoice::TraceIdRatio(0.25)));
    assert_eq!(s("traceidratio", None), Some(SamplerChoice::TraceIdRatio(1.0)), "the spec's default argument");
    assert_eq!(s("parentbased_always_on", None), Some(SamplerChoice::ParentBasedAlwaysOn));
    assert_eq!(s("parentbased_always_off", None), Some(SamplerChoice::ParentBasedAlwaysOff));
    assert_eq!(s("parentbased_traceidratio", Some("0")), Some(SamplerChoice::ParentBasedTraceIdRatio(0.0)));
    // An argument beside a sampler that takes none is ignored, as the spec says.
    assert_eq!(s("always_on", Some("0.5")), Some(SamplerChoice::AlwaysOn));
    assert_eq!(refused(&[(TRACES_SAMPLER, "jaeger_remote")]), TRACES_SAMPLER);
    assert_eq!(refused(&[(TRACES_SAMPLER, "AlwaysOn")]), TRACES_SAMPLER);
    assert_eq!(refused(&[(TRACES_SAMPLER, "traceidratio"), (TRACES_SAMPLER_ARG, "1.5")]), TRACES_SAMPLER_ARG);
    assert_eq!(
        refused(&[(TRACES_SAMPLER, "parentbased_traceidratio"), (TRACES_SAMPLER_ARG, "half")]),
        TRACES_SAMPLER_ARG
    );
}

#[test]
fn the_generic_endpoint_is_a_base_and_a_signal_endpoint_is_used_as_given() {
    let o = parse(&[(ENDPOINT, "http://collector:4318/")]).unwrap_or_default();
    assert_eq!(o.traces_endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
    assert_eq!(o.metrics_endpoint.as_deref(), Some("http://collector:4318/v1/metrics"));
    let o = parse(&[(ENDPOINT, "https://c:4318/otlp"), (TRACES_ENDPOINT, "https://t:4318/custom")]).unwrap_or_default();
    assert_eq!(o.traces_endpoint.as_deref(), Some("https://t:4318/custom"));
    assert_eq!(o.metrics_endpoint.as_deref(), Some("https://c:4318/otlp/v1/metrics"));
    let o = parse(&[(METRICS_ENDPOINT, "http://m:4318/v1/metrics")]).unwrap_or_default();
    assert_eq!((o.traces_endpoint, o.metrics_endpoint.as_deref()), (None, Some("http://m:4318/v1/metrics")));
    assert_eq!(refused(&[(ENDPOINT, "collector:4318")]), ENDPOINT);
    assert_eq!(refused(&[(TRACES_ENDPOINT, "ftp://c/x")]), TRACES_ENDPOINT);
    assert_eq!(refused(&[(PROTOCOL, "grpc")]), PROTOCOL);
    assert!(parse(&[(TRACES_PROTOCOL, "http/protobuf")]).is_ok());
}

#[test]
fn headers_are_percent_decoded_and_a_signal_list_replaces_the_generic_one() {
    let o = parse(&[(HEADERS, "api-key=s%20cret, x-tenant=a")]).unwrap_or_default();
    let expected = vec![("api-key".to_string(), "s cret".to_string()), ("x-tenant".to_string(), "a".to_string())];
    assert_eq!(o.traces_headers, expected);
    assert_eq!(o.metrics_headers, expected);
    let o = parse(&[(HEADERS, "a=1"), (TRACES_HEADERS, "b=2")]).unwrap_or_default();
    assert_eq!(o.traces_headers, vec![("b".to_string(), "2".to_string())]);
    assert_eq!(o.metrics_headers, vec![("a".to_string(), "1".to_string())]);
    assert_eq!(refused(&[(HEADERS, "novalue")]), HEADERS);
    assert_eq!(refused(&[(HEADERS, "bad header=1")]), HEADERS);
    assert_eq!(refused(&[(HEADERS, "k=%zz")]), HEADERS);
}

#[test]
fn a_refused_header_never_prints_its_value() {
    let err = parse(&[(HEADERS, "authorization=Bearer%0Ahunter2")]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(HEADERS) && !err.contains("hunter2"), "{err}");
}

#[test]
fn service_name_wins_over_the_resource_attribute_and_defaults_to_conveyor() {
    let names = |o: &OtelEnv| -> Vec<String> {
        o.resource_attributes()
            .into_iter()
            .filter(|kv| kv.key.as_str() == "service.name")
            .map(|kv| kv.value.to_string())
            .collect()
    };
    assert_eq!(names(&OtelEnv::default()), vec!["conveyor"]);
    let o =
        parse(&[(RESOURCE_ATTRIBUTES, "service.name=from-attrs,deployment.environment=prod%2Ceu")]).unwrap_or_default();
    assert_eq!(names(&o), vec!["from-attrs"]);
    assert!(
        o.resource_attributes()
            .iter()
            .any(|kv| kv.key.as_str() == "deployment.environment" && kv.value.to_string() == "prod,eu")
    );
    let o = parse(&[(RESOURCE_ATTRIBUTES, "service.name=from-attrs"), (SERVICE_NAME, "edge-1")]).unwrap_or_default();
    assert_eq!(names(&o), vec!["edge-1"]);
    assert_eq!(refused(&[(RESOURCE_ATTRIBUTES, "=x")]), RESOURCE_ATTRIBUTES);
}
