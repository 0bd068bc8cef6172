//! Logging: JSON lines with the request span's fields (`tenant.id`, `tenant.identifier`,
//! `http.*`, `request_id`) on every event. `RUST_LOG` overrides the default filter.
//! Nothing secret is ever a field: a database is logged as `DatabaseSettings::describe` shows it (no password).

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer};

/// Installs the global JSON subscriber writing to `writer`{% if opentelemetry %}, and the export of traces
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `otlp`; keep what it returns until the
/// process ends){% endif %}. Call once, at start-up.
pub fn init<W>(default_filter: &str, writer: W){% if opentelemetry %} -> Option<crate::otlp::Traces>{% endif %}
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let directives = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|value| EnvFilter::try_new(value).is_ok())
        .unwrap_or_else(|| default_filter.to_owned());
    let mut filter = EnvFilter::new(&directives);
    // Malformed requests are counted (see `MalformedRequests`) even when logs are off.
    if !directives.contains("actix_http")
        && let Ok(directive) = format!("{PARSE_ERROR_TARGET}=error").parse()
    {
        filter = filter.add_directive(directive);
    }
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(writer);
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(MalformedRequests)
        .with(logs);
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

/// Where actix-http logs the requests it could not parse.
const PARSE_ERROR_TARGET: &str = "actix_http::h1::dispatcher";
/// How many requests this process could not parse (`http_malformed_requests_total`).
static MALFORMED_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// How many requests this process could not parse: a control character in a header, a
/// broken request line. actix-http answers them `400` with an empty body before any of
/// this service's code runs (it has no hook for that answer, so no problem+json and no
/// request id), and would log each at ERROR: any client could flood the error log.
pub fn malformed_requests() -> u64 {
    MALFORMED_REQUESTS.load(Ordering::Relaxed)
}

/// Counts actix-http's parse errors instead of logging each at ERROR; actix-http logs them
/// at TRACE too (`RUST_LOG=info,actix_http::h1=trace` shows each).
struct MalformedRequests;

impl<S: tracing::Subscriber> Layer<S> for MalformedRequests {
    fn event_enabled(&self, event: &tracing::Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if meta.target() != PARSE_ERROR_TARGET || *meta.level() != tracing::Level::ERROR {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if !message.0.starts_with("stream error: request parse error: ") {
            return true;
        }
        // An event logged from here would not be dispatched (tracing does not re-enter).
        MALFORMED_REQUESTS.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// An event's message.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
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
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// The level and target of every event that reaches the logs.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<(tracing::Level, String)>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let meta = event.metadata();
            if let Ok(mut seen) = self.0.lock() {
                seen.push((*meta.level(), meta.target().to_owned()));
            }
        }
    }

    #[test]
    fn parse_errors_are_counted_not_logged_other_errors_stay() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(MalformedRequests)
            .with(seen.clone());
        let before = malformed_requests();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(
                target: "actix_http::h1::dispatcher",
                "stream error: request parse error: invalid Header provided"
            );
            tracing::error!(target: "actix_http::h1::dispatcher", "write zero; closing");
        });
        assert!(malformed_requests() > before);
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            [(tracing::Level::ERROR, PARSE_ERROR_TARGET.to_owned())]
        );
    }

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
