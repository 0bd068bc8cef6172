//! Trace export over OTLP (prompt `opentelemetry`), configured by the standard variables:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://collector:4318`) or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` turns export on (HTTP + protobuf); without either
//!   nothing is exported, and `OTEL_SDK_DISABLED=true` turns it off;
//! - `OTEL_SERVICE_NAME` (default: the project's name), `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` and the batch settings
//!   `OTEL_BSP_*` as the OpenTelemetry SDK reads them.
//!
//! Each request is a server span named `<method> <route>` with the `tenant.id`,
//! `tenant.identifier` and `request_id` attributes; an incoming W3C `traceparent`
//! makes it a child of the caller's span. Spans are sent in batches, and the last ones
//! when the process stops.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_opentelemetry::OpenTelemetryLayer;

/// Sends the spans still buffered when dropped (at the end of `main`).
pub struct Traces(SdkTracerProvider);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(error) = self.0.shutdown() {
            eprintln!("could not send the last traces: {error}");
        }
    }
}

/// The layer that turns spans into OpenTelemetry spans, when export is configured.
pub fn layer<S>() -> Option<(OpenTelemetryLayer<S, Tracer>, Traces)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    // Incoming `traceparent` headers are honoured whether or not spans are exported.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let disabled =
        std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if disabled
        || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("traces are not exported: {error}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(env!("CARGO_PKG_NAME"));
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
    opentelemetry::global::set_tracer_provider(provider.clone());
    Some((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Traces(provider),
    ))
}
