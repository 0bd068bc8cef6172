//! Logging: JSON lines with the request span's fields (`tenant.id`, `tenant.identifier`,
//! `http.*`, `request_id`) on every event. `RUST_LOG` overrides the default filter.
//! Nothing secret is ever a field: a database is logged as `DatabaseSettings::describe` shows it (no password).

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};
use tracing_subscriber::EnvFilter;

/// Installs the global JSON subscriber writing to `writer`{% if opentelemetry %}, and the export of traces
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `otlp`; keep what it returns until the
/// process ends){% endif %}. Call once, at start-up.
pub fn init<W>(default_filter: &str, writer: W){% if opentelemetry %} -> Option<crate::otlp::Traces>{% endif %}
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(writer);
    let subscriber = tracing_subscriber::registry().with(filter).with(logs);
{%- if opentelemetry %}
    let (traces, exporting) = crate::otlp::layer().unzip();
    // A second call (tests) keeps the first subscriber.
    let _ = subscriber.with(traces).try_init();
    exporting
{%- else %}
    // A second call (tests) keeps the first subscriber.
    let _ = subscriber.try_init();
{%- endif %}
}

/// The header that carries a request's id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request's id: the client's `X-Request-Id` when it is 1 to 128 characters of
/// `A-Z a-z 0-9 - _ . :` (a proxy's or a caller's trace id), else a new UUIDv7. It is on
/// the request's span (`request_id`), in the `X-Request-Id` response header and in error
/// bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    const MAX_LEN: usize = 128;

    /// `value` if it is a safe id to log and echo.
    pub fn parse(value: &str) -> Option<Self> {
        let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        (!value.is_empty() && value.len() <= Self::MAX_LEN && value.chars().all(safe))
            .then(|| Self(value.to_owned()))
    }

    /// The client's id when it sent exactly one valid one, else a new one.
    pub fn of(request: &ServiceRequest) -> Self {
        let mut sent = request.headers().get_all(REQUEST_ID_HEADER);
        match (sent.next(), sent.next()) {
            (Some(value), None) => value.to_str().ok().and_then(Self::parse),
            _ => None,
        }
        .unwrap_or_else(|| Self(uuid::Uuid::now_v7().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The request's root span, with its `request_id`, and empty `tenant.*` fields the tenant
/// middleware fills in.
pub struct TenantRootSpan;

impl RootSpanBuilder for TenantRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let span = tracing_actix_web::root_span!(
            request,
            tenant.id = tracing::field::Empty,
            tenant.identifier = tracing::field::Empty
        );
        let id = RequestId::of(request);
        span.record("request_id", id.as_str());
        request.extensions_mut().insert(id);
        span
    }

    fn on_request_end<B: MessageBody>(
        span: Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        DefaultRootSpanBuilder::on_request_end(span.clone(), outcome);
        // The route as matched, after any rewrite (path resolution strips `/t/<tenant>`).
        if let Some(route) = outcome
            .as_ref()
            .ok()
            .and_then(|response| response.request().match_pattern())
        {
            span.record("http.route", route);
        }
        let status = match outcome {
            Ok(response) => response.status().as_u16(),
            Err(error) => error.as_response_error().status_code().as_u16(),
        };
        span.in_scope(|| tracing::info!(http.status = status, "request finished"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_request_ids_are_kept() {
        for good in ["abc", "4bf92f3577b34da6a3ce929d0e0e4736", "req-1_2.3:4"] {
            assert_eq!(RequestId::parse(good).map(|id| id.0), Some(good.to_owned()));
        }
        let long = "a".repeat(129);
        for bad in ["", "a b", "a\nb", "é", "<script>", long.as_str()] {
            assert_eq!(RequestId::parse(bad), None, "{bad:?}");
        }
    }
}
