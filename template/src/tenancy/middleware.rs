//! Resolves the tenant of a request once, before its handler: installed around the `/api`
//! scope only (`routes::api`), so routes outside it never need a tenant.
//!
//! The tenant must be named, known and active, or the request ends here with a
//! problem+json error. The tenant is put in the request extensions and on the request's
//! root span (`tenant.id`, `tenant.identifier`).
//!
//! A tenant that is read-only for maintenance gets 503 (with `Retry-After`) for every
//! request that may write (any method but GET, HEAD, OPTIONS and TRACE).
//!
//! A tenant with a request rate limit (see `rate`) is held to it here, before its
//! request's body is read: over the limit, 429 with `Retry-After`; every answer carries
//! the `RateLimit-Policy` and `RateLimit` headers.
//!
//! A request's body is read whole here, before its handler runs (at most [`BodyRead`]'s
//! limit, within its timeout): a handler takes its tenant connection as it starts, and a
//! client sending its body slowly must not hold one of the shared connections meanwhile.
//!
//! Behind a transaction pooler (`TENANCY_POOLER=transaction`) each tenant connection of the
//! request is a transaction: once the handler has answered, they are committed if the
//! answer is a success (2xx, 3xx) and rolled back otherwise; a commit that fails turns the
//! answer into that error, so a client is never told of a write that did not happen.

use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use futures_util::StreamExt;
use tracing_actix_web::RootSpan;

use super::TenantError;
use super::rate::{self, Verdict};
use super::resolve::{self, Found, Rejection};
use crate::db::RequestTransactions;
use crate::domain::Maintenance;
use crate::error::{AppError, RATE_LIMIT, RATE_LIMIT_POLICY};

pub async fn resolve_tenant(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let tenancy = match super::extract::tenancy(req.request()) {
        Ok(tenancy) => tenancy,
        Err(error) => return Ok(req.error_response(error).map_into_right_body()),
    };
    let tenant = match resolve::resolve(&mut req, &tenancy.settings.resolve) {
        Found::Tenant(identifier) => tenancy
            .active_tenant(&identifier)
            .await
            .map_err(AppError::from),
        Found::Nothing { hint } => Err(AppError::MissingTenant { hint }),
        Found::Rejected(rejection) => Err(rejection.into()),
    };
    let tenant = match tenant {
        Ok(tenant) => tenant,
        Err(error) => return Ok(req.error_response(error).map_into_right_body()),
    };
    if let Some(span) = req.extensions().get::<RootSpan>() {
        span.record("tenant.id", tracing::field::display(tenant.id));
        span.record("tenant.identifier", tenant.identifier.as_str());
    }
    // Before the limit is checked: a 429 counts for its tenant (`tenant_requests_total`).
    req.extensions_mut().insert(tenant.clone());
    let rate_headers = match tenancy.rate.check(&tenant).await {
        None => None,
        Some((rate, verdict @ Verdict::Allowed { .. })) => Some((rate.policy(), verdict.state())),
        Some((rate, verdict @ Verdict::Limited { retry_after })) => {
            let error = AppError::RateLimited {
                retry_after: rate::seconds(retry_after).max(1),
                policy: rate.policy(),
                state: verdict.state(),
                detail: format!(
                    "this tenant's request rate limit is {}/s, {} at once",
                    rate.per_second, rate.burst
                ),
            };
            return Ok(req.error_response(error).map_into_right_body());
        }
{%- if redis_cache %}
        Some((_, Verdict::Unknown)) => {
            let error = AppError::Unavailable {
                detail: "the rate limit cannot be checked while Redis is unavailable \
                         (TENANCY_RATE_LIMIT_REDIS_DOWN=closed)"
                    .into(),
            };
            return Ok(req.error_response(error).map_into_right_body());
        }
{%- endif %}
    };
    if !tenant.maintenance.takes_writes() && !req.method().is_safe() {
        let why = match tenant.maintenance {
            Maintenance::Migrating => "while its storage is migrated",
            Maintenance::Moving => "while its data moves to another server",
            _ => "for maintenance",
        };
        let error = AppError::ReadOnly {
            detail: format!(
                "tenant '{}' is read-only {why}: writes are refused until it ends",
                tenant.identifier
            ),
        };
        return Ok(req.error_response(error).map_into_right_body());
    }
    let read = req
        .app_data::<web::Data<BodyRead>>()
        .map_or_else(BodyRead::default, |read| *read.get_ref());
    let response = serve(req, read, tenancy.per_transaction(), next).await?;
    Ok(match rate_headers {
        Some((policy, state)) => with_rate_headers(response, policy, state),
        None => response,
    })
}

/// The response with the tenant's rate-limit headers.
fn with_rate_headers<B>(
    mut response: ServiceResponse<B>,
    policy: String,
    state: String,
) -> ServiceResponse<B> {
    for (name, value) in [(RATE_LIMIT_POLICY, policy), (RATE_LIMIT, state)] {
        if let Ok(value) = HeaderValue::try_from(value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

/// Reads the body, then runs the handler (in transaction mode: and ends the request's
/// transactions).
async fn serve(
    mut req: ServiceRequest,
    read: BodyRead,
    per_transaction: bool,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Err(error) = read_body(&mut req, read).await {
        return Ok(req.error_response(error).map_into_right_body());
    }
    if !per_transaction {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let transactions = RequestTransactions::default();
    req.extensions_mut().insert(transactions.clone());
    let response = match next.call(req).await {
        Ok(response) => response,
        Err(error) => {
            let _ = transactions.finish(false).await;
            return Err(error);
        }
    };
    let status = response.status();
    let commit = status.is_success() || status.is_redirection();
    match transactions.finish(commit).await {
        Ok(()) => Ok(response.map_into_left_body()),
        Err(error) if commit => {
            let request = response.request().clone();
            Ok(ServiceResponse::from_err(AppError::from(error), request).map_into_right_body())
        }
        // A rollback that failed closed its connection: the answer stands.
        Err(_) => Ok(response.map_into_left_body()),
    }
}

/// How the bodies of tenant requests are read before their handler runs.
#[derive(Debug, Clone, Copy)]
pub struct BodyRead {
    /// Bytes at most (413 beyond).
    pub limit: usize,
    /// The whole body must have arrived by then (408 after), counted from when its
    /// tenant was resolved.
    pub timeout: Duration,
}

impl BodyRead {
    /// The largest body a tenant request may have (the JSON extractor's limit too).
    pub const LIMIT: usize = 256 * 1024;
}

impl Default for BodyRead {
    fn default() -> Self {
        Self {
            limit: Self::LIMIT,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Reads the request's body whole, then gives it back to the request for the handler.
async fn read_body(req: &mut ServiceRequest, read: BodyRead) -> Result<(), AppError> {
    let mut payload = req.take_payload();
    if matches!(payload, Payload::None) {
        return Ok(());
    }
    let mut body = web::BytesMut::new();
    let whole = async {
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| AppError::BadRequest(format!("invalid request body: {e}")))?;
            if body.len() + chunk.len() > read.limit {
                return Err(AppError::BodyTooLarge(read.limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(read.timeout, whole).await {
        Ok(result) => result?,
        Err(_) => return Err(AppError::BodyTimeout(read.timeout.as_secs())),
    }
    req.set_payload(Payload::from(body.freeze()));
    Ok(())
}

/// How a request whose tenant is not served is answered.
impl From<TenantError> for AppError {
    fn from(error: TenantError) -> Self {
        match error {
            TenantError::Unknown(detail) => AppError::TenantNotFound { detail },
            TenantError::Inactive(detail) => AppError::Forbidden { detail },
            TenantError::Pool(e) => e.into(),
            TenantError::Registry(e) => e.into(),
        }
    }
}

/// How a rejected request is answered.
impl From<Rejection> for AppError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Malformed(detail) => AppError::TenantNotFound { detail },
{%- if header_resolver or jwt_resolver %}
            Rejection::Repeated(message) => AppError::BadRequest(message),
{%- endif %}
{%- if jwt_resolver %}
            Rejection::Credentials(detail) => AppError::Unauthorized { detail },
{%- endif %}
{%- if resolution == "chain" %}
            Rejection::Disagreement(detail) => AppError::Forbidden { detail },
{%- endif %}
        }
    }
}
