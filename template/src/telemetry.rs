//! Logging: JSON lines with the request span's fields (`tenant.id`, `tenant.identifier`,
//! `http.*`, `request_id`) on every event. `RUST_LOG` overrides the default filter.
//! Nothing secret is ever a field: a database is logged as `DatabaseSettings::describe` shows it (no password).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};
use tracing_subscriber::EnvFilter;

/// Installs the global JSON subscriber writing to `writer`. Call once, at start-up.
pub fn init<W>(default_filter: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_env_filter(filter)
        .with_writer(writer);
    // A second call (tests) keeps the first subscriber.
    let _ = subscriber.try_init();
}

/// The request's root span, with empty `tenant.*` fields the tenant middleware fills in.
pub struct TenantRootSpan;

impl RootSpanBuilder for TenantRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        tracing_actix_web::root_span!(
            request,
            tenant.id = tracing::field::Empty,
            tenant.identifier = tracing::field::Empty
        )
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
