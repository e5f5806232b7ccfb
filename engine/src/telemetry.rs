//! Logs (tracing: JSON lines or text), metrics (OpenTelemetry SDK, exported as Prometheus
//! text at `/metrics` and optionally pushed over OTLP) with process metrics read from
//! `/proc`, and traces (OTLP when configured).

use std::io::IsTerminal;
use std::sync::Arc;

use conveyor_actors::config::{LogFormat, TelemetryConfig};
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use prometheus::{Encoder, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::otel_env::OtelEnv;

pub const PROCESS_CPU_TIME: &str = "process.cpu.time";
pub const PROCESS_MEMORY_USAGE: &str = "process.memory.usage";
pub const PROCESS_THREADS: &str = "process.thread.count";
pub const PROCESS_UPTIME: &str = "process.uptime";
/// Always 1; its labels say what is running (`conveyor_build_info` in Prometheus).
pub const BUILD_INFO: &str = "conveyor.build.info";

/// Installs the log subscriber. Logs go to stderr; stdout carries only the listening line.
pub fn init_logs(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
}

/// The installed meter provider and a renderer for `/metrics`.
pub struct Metrics {
    pub provider: SdkMeterProvider,
    pub tracer: SdkTracerProvider,
    pub render: Arc<dyn Fn() -> String + Send + Sync>,
}

impl Metrics {
    /// Flushes what the OTLP exporters still hold.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "metrics provider shutdown failed");
        }
        if let Err(err) = self.tracer.shutdown() {
            tracing::warn!(error = %err, "tracer provider shutdown failed");
        }
    }
}

/// `service.version` and the SDK's own attributes, then what `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_SERVICE_NAME` say (read by [`OtelEnv`], not by the SDK's detector, so a malformed
/// value stops the start instead of being dropped), `service.name` defaulting to `conveyor`.
fn resource(otel: &OtelEnv) -> Resource {
    Resource::builder_empty()
        .with_detector(Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector))
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(otel.resource_attributes())
        .build()
}

/// Where spans and metrics are pushed: the `OTEL_EXPORTER_OTLP_*` variables first, then
/// `telemetry.otlp_endpoint`; nowhere when `OTEL_SDK_DISABLED=true`.
struct Destinations {
    traces: Option<String>,
    metrics: Option<String>,
}

fn destinations(config: &TelemetryConfig, otel: &OtelEnv) -> Destinations {
    if otel.disabled {
        return Destinations { traces: None, metrics: None };
    }
    let base = config.otlp_endpoint.trim_end_matches('/');
    let configured = |path: &str| (!base.is_empty()).then(|| format!("{base}/{path}"));
    Destinations {
        traces: otel.traces_endpoint.clone().or_else(|| configured("v1/traces")),
        metrics: otel.metrics_endpoint.clone().or_else(|| configured("v1/metrics")),
    }
}

/// Which spans are recorded. Without an exporter none is: an unsampled span still gets a
/// real trace id (carried through the log and into the logs) but records no attributes and
/// reaches no processor, so tracing costs a few random numbers per request. With one, a
/// request continues its caller's decision (`traceparent`'s sampled flag) and a new trace is
/// kept with probability `trace_sample_ratio`, unless `OTEL_TRACES_SAMPLER` names another sampler.
fn sampler(config: &TelemetryConfig, otel: &OtelEnv, exporting: bool) -> Sampler {
    if !exporting {
        return Sampler::AlwaysOff;
    }
    match otel.sampler {
        Some(choice) => choice.sampler(),
        None => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.trace_sample_ratio))),
    }
}

/// Metrics (Prometheus text, plus OTLP push when configured) and traces: spans leave the
/// process, and are recorded at all, only when a traces endpoint is configured ([`sampler`]).
pub fn init_metrics(config: &TelemetryConfig, otel: &OtelEnv) -> anyhow::Result<Metrics> {
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter().with_registry(registry.clone()).build()?;
    let resource = resource(otel);
    let mut meters = SdkMeterProvider::builder().with_resource(resource.clone()).with_reader(exporter);
    let mut tracer = SdkTracerProvider::builder().with_resource(resource);
    let to = destinations(config, otel);
    tracer = tracer.with_sampler(sampler(config, otel, to.traces.is_some()));
    // Nothing is recorded without an exporter (or with always_off): the runtime then skips
    // the spans it would make inside a trace that already has its id (consumer, store,
    // produce). With one, even a ratio of 0 records traces whose caller sampled them
    // (parent-based), so spans stay on.
    conveyor_actors::trace::set_recording(to.traces.is_some() && otel.sampler.is_none_or(|s| s.may_record()));
    let interval = Duration::from_millis(config.otlp_interval_ms);
    if let Some(endpoint) = to.metrics {
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_headers(otel.metrics_headers.iter().cloned().collect())
            .build()?;
        meters = meters.with_reader(PeriodicReader::builder(metrics).with_interval(interval).build());
    }
    if let Some(endpoint) = to.traces {
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_headers(otel.traces_headers.iter().cloned().collect())
            .build()?;
        let batch = BatchConfigBuilder::default().with_scheduled_delay(interval).build();
        tracer = tracer.with_span_processor(BatchSpanProcessor::builder(spans).with_batch_config(batch).build());
    }
    let provider = meters.build();
    let tracer = tracer.build();
    opentelemetry::global::set_meter_provider(provider.clone());
    opentelemetry::global::set_tracer_provider(tracer.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    register_process_metrics();
    let render = Arc::new(move || {
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&registry.gather(), &mut out) {
            tracing::warn!(error = %err, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    });
    Ok(Metrics { provider, tracer, render })
}

fn register_process_metrics() {
    let meter = opentelemetry::global::meter("conveyor.process");
    let build = [
        opentelemetry::KeyValue::new("version", crate::build_info::VERSION),
        opentelemetry::KeyValue::new("commit", crate::build_info::COMMIT),
        opentelemetry::KeyValue::new("rustc", crate::build_info::RUSTC),
    ];
    let _ = meter
        .i64_observable_gauge(BUILD_INFO)
        .with_description("The running build: version, commit and compiler as labels; always 1")
        .with_callback(move |o| o.observe(1, &build))
        .build();
    let started = std::time::Instant::now();
    // Observable instruments live as long as the provider; dropping the handles is fine.
    let _ = meter
        .f64_observable_counter(PROCESS_CPU_TIME)
        .with_unit("s")
        .with_description("CPU time used by the process")
        .with_callback(|o| {
            if let Some(s) = proc_stat() {
                o.observe(s.cpu_seconds, &[]);
            }
        })
        .build();
    let _ = meter
        .i64_observable_gauge(PROCESS_MEMORY_USAGE)
        .with_unit("By")
        .with_description("Resident memory of the process")
        .with_callback(|o| {
            if let Some(s) = proc_stat() {
                o.observe(s.rss_bytes, &[]);
            }
        })
        .build();
    let _ = meter
        .i64_observable_gauge(PROCESS_THREADS)
        .with_unit("{thread}")
        .with_callback(|o| {
            if let Some(s) = proc_stat() {
                o.observe(s.threads, &[]);
            }
        })
        .build();
    let _ = meter
        .f64_observable_gauge(PROCESS_UPTIME)
        .with_unit("s")
        .with_callback(move |o| o.observe(started.elapsed().as_secs_f64(), &[]))
        .build();
}

struct ProcStat {
    cpu_seconds: f64,
    rss_bytes: i64,
    threads: i64,
}

/// Reads `/proc/self/stat` (fields 14, 15: utime, stime in clock ticks; 20: threads; 24: rss pages).
fn proc_stat() -> Option<ProcStat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; fields after its closing parenthesis are fixed.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ is 100 on every Linux we target.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let threads: i64 = f.get(17)?.parse().ok()?;
    let rss_pages: i64 = f.get(21)?.parse().ok()?;
    Some(ProcStat { cpu_seconds: (utime + stime) / ticks, rss_bytes: rss_pages * 4096, threads })
}

#[cfg(test)]
mod tests {
    use conveyor_actors::config::TelemetryConfig;
    use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use crate::otel_env::{OtelEnv, SamplerChoice};

    fn span_flags(config: &TelemetryConfig, exporting: bool) -> (bool, bool) {
        span_flags_with(config, &OtelEnv::default(), exporting)
    }

    fn span_flags_with(config: &TelemetryConfig, otel: &OtelEnv, exporting: bool) -> (bool, bool) {
        let provider = SdkTracerProvider::builder().with_sampler(super::sampler(config, otel, exporting)).build();
        let tracer = provider.tracer("test");
        let span = tracer.start("request");
        let cx = opentelemetry::Context::current_with_span(span);
        let sc = cx.span().span_context().clone();
        (sc.is_valid(), cx.span().is_recording())
    }

    #[test]
    fn without_an_exporter_spans_get_trace_ids_but_record_nothing() {
        assert_eq!(span_flags(&TelemetryConfig::default(), false), (true, false));
    }

    #[test]
    fn with_an_exporter_the_default_records_every_trace_and_zero_records_none() {
        assert_eq!(span_flags(&TelemetryConfig::default(), true), (true, true));
        let none = TelemetryConfig { trace_sample_ratio: 0.0, ..TelemetryConfig::default() };
        assert_eq!(span_flags(&none, true), (true, false));
    }

    #[test]
    fn the_environment_sampler_wins_over_the_configured_ratio() {
        let none = TelemetryConfig { trace_sample_ratio: 0.0, ..TelemetryConfig::default() };
        let on = OtelEnv { sampler: Some(SamplerChoice::AlwaysOn), ..OtelEnv::default() };
        assert_eq!(span_flags_with(&none, &on, true), (true, true));
        let off = OtelEnv { sampler: Some(SamplerChoice::AlwaysOff), ..OtelEnv::default() };
        assert_eq!(span_flags_with(&TelemetryConfig::default(), &off, true), (true, false));
        // Still nothing recorded without an exporter, whatever the sampler.
        assert_eq!(span_flags_with(&none, &on, false), (true, false));
    }

    #[test]
    fn destinations_prefer_the_environment_and_stop_when_disabled() {
        let config = TelemetryConfig { otlp_endpoint: "http://file:4318/".into(), ..TelemetryConfig::default() };
        let to = super::destinations(&config, &OtelEnv::default());
        assert_eq!(to.traces.as_deref(), Some("http://file:4318/v1/traces"));
        assert_eq!(to.metrics.as_deref(), Some("http://file:4318/v1/metrics"));
        let env = OtelEnv { traces_endpoint: Some("http://env:4318/t".into()), ..OtelEnv::default() };
        let to = super::destinations(&config, &env);
        assert_eq!(to.traces.as_deref(), Some("http://env:4318/t"));
        assert_eq!(to.metrics.as_deref(), Some("http://file:4318/v1/metrics"));
        let to = super::destinations(&config, &OtelEnv { disabled: true, ..env });
        assert_eq!((to.traces, to.metrics), (None, None));
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let s = super::proc_stat();
        assert!(s.as_ref().is_some_and(|s| s.rss_bytes > 0 && s.threads >= 1));
    }
}
