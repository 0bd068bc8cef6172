//! The one mapping from errors to HTTP responses: `application/problem+json` (RFC 9457).
//!
//! Bodies never carry internals (SQL errors, pool state, which check failed) unless
//! `TENANCY_ERROR_DETAILS=true`, in which case [`problem_details`] adds them; they carry
//! the request's id (`request_id`, as in the `X-Request-Id` header and the logs). Internal
//! errors are logged where they are turned into a response.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, ResponseError, web};
use serde::Serialize;

use crate::db::pool::PoolError;
use crate::telemetry::{REQUEST_ID_HEADER, RequestId};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the request names no tenant")]
    MissingTenant { hint: String },
    /// Unknown and malformed identifiers look the same, so tenants cannot be enumerated.
    #[error("tenant not found")]
    TenantNotFound { detail: String },
    /// A suspended tenant, or a request naming two tenants.
    #[error("forbidden")]
    Forbidden { detail: String },
    /// Every refused credential looks the same; `detail` is for `error_details` only.
    #[error("missing or invalid credentials")]
    Unauthorized { detail: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A method the resource does not answer; `allow` lists those it does.
    #[error("method not allowed")]
    MethodNotAllowed { allow: String },
    /// A request body larger than the service reads (bytes).
    #[error("request body too large")]
    BodyTooLarge(usize),
    /// A request body that did not arrive in time (seconds).
    #[error("request body too slow")]
    BodyTimeout(u64),
    /// A write to a tenant that is read-only for maintenance (503).
    #[error("tenant read-only")]
    ReadOnly { detail: String },
    /// The tenant sent more requests than its rate limit allows (429).
    #[error("too many requests")]
    RateLimited {
        /// Seconds until a request would be let through.
        retry_after: u64,
        /// The `RateLimit-Policy` and `RateLimit` headers.
        policy: String,
        state: String,
        detail: String,
    },
{%- if admin_api %}
    #[error("{0}")]
    Conflict(String),
{%- endif %}
    /// A write the database refused for one of its constraints (see [`Constraint`]).
    #[error("{message}")]
    Constraint {
        kind: Constraint,
        message: String,
        detail: String,
    },
    #[error("service unavailable")]
    Unavailable { detail: String },
    #[error("internal error")]
    Internal {
        /// What went wrong, for the logs (and `TENANCY_ERROR_DETAILS`).
        detail: String,
        /// The error itself, as the cause (`Error::source`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AppError {
    /// A bug, or a failure the client cannot act on (500), caused by `error`.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let source = error.into();
        AppError::Internal {
            detail: source.to_string(),
            source,
        }
    }

    /// What went wrong, as the `kind` label of `app_errors_total` (a fixed set).
    pub fn kind(&self) -> &'static str {
        match self {
            AppError::MissingTenant { .. } => "missing_tenant",
            AppError::TenantNotFound { .. } => "tenant_not_found",
            AppError::Forbidden { .. } => "forbidden",
            AppError::Unauthorized { .. } => "unauthorized",
            AppError::BadRequest(_) => "bad_request",
            AppError::NotFound(_) => "not_found",
            AppError::MethodNotAllowed { .. } => "method_not_allowed",
            AppError::BodyTooLarge(_) => "body_too_large",
            AppError::BodyTimeout(_) => "body_timeout",
            AppError::RateLimited { .. } => "rate_limited",
            AppError::ReadOnly { .. } => "read_only",
{%- if admin_api %}
            AppError::Conflict(_) => "conflict",
{%- endif %}
            AppError::Constraint { .. } => "constraint",
            AppError::Unavailable { .. } => "unavailable",
            AppError::Internal { .. } => "internal",
        }
    }

    /// Seconds a client should wait before retrying a 503.
    const RETRY_AFTER_SECONDS: &'static str = "1";

    /// How this error is answered.
    fn answer(&self) -> Answer<'_> {
        let (status, title) = self.status_and_title();
        let (public, internal) = self.details();
        Answer {
            status,
            title,
            public,
            internal,
        }
    }

    /// The status and the problem's title: one arm per variant.
    fn status_and_title(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::MissingTenant { .. } => (StatusCode::BAD_REQUEST, "Tenant required"),
            AppError::TenantNotFound { .. } => (StatusCode::NOT_FOUND, "Tenant not found"),
            AppError::Forbidden { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            AppError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad request"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            AppError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
            }
            AppError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
            AppError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "Request body too slow"),
            AppError::ReadOnly { .. } => (StatusCode::SERVICE_UNAVAILABLE, "Tenant read-only"),
            AppError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
{%- if admin_api %}
            AppError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
{%- endif %}
            AppError::Constraint { kind, .. } => (kind.status(), kind.title()),
            AppError::Unavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "Service unavailable")
            }
            AppError::Internal { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
            }
        }
    }

    /// What the client is told (the problem's `detail`), and what only the logs (and
    /// `TENANCY_ERROR_DETAILS`) show: one arm per variant.
    fn details(&self) -> (Option<String>, Option<&str>) {
        match self {
            AppError::MissingTenant { hint } => (Some(hint.clone()), None),
            AppError::TenantNotFound { detail }
            | AppError::Forbidden { detail }
            | AppError::Unauthorized { detail }
            | AppError::Internal { detail, .. } => (None, Some(detail)),
            AppError::BadRequest(message) => (Some(message.clone()), None),
            AppError::NotFound(what) => (Some(format!("{what} not found")), None),
            AppError::MethodNotAllowed { allow } => {
                (Some(format!("this resource answers {allow}")), None)
            }
            AppError::BodyTooLarge(limit) => (
                Some(format!("the request body may be at most {limit} bytes")),
                None,
            ),
            AppError::BodyTimeout(seconds) => (
                Some(format!(
                    "the request body did not arrive within {seconds} s"
                )),
                None,
            ),
            AppError::ReadOnly { detail } | AppError::RateLimited { detail, .. } => {
                (Some(detail.clone()), None)
            }
{%- if admin_api %}
            AppError::Conflict(message) => (Some(message.clone()), None),
{%- endif %}
            AppError::Constraint {
                message, detail, ..
            } => (Some(message.clone()), Some(detail)),
            AppError::Unavailable { detail } => (Some("try again shortly".into()), Some(detail)),
        }
    }

    /// The response, with internals only when `include_internals`, and the request's id
    /// when known.
    pub fn to_problem(&self, include_internals: bool, request_id: Option<&str>) -> HttpResponse {
        let answer = self.answer();
        let status = answer.status;
        let problem = Problem {
            kind: "about:blank",
            title: answer.title,
            status: status.as_u16(),
            detail: answer.public,
            debug: include_internals.then_some(answer.internal).flatten(),
            request_id,
        };
        let mut response = HttpResponse::build(status);
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        if let AppError::RateLimited {
            retry_after,
            policy,
            state,
            ..
        } = self
        {
            response.insert_header((header::RETRY_AFTER, *retry_after));
            for (name, value) in [(RATE_LIMIT_POLICY, policy), (RATE_LIMIT, state)] {
                if let Ok(value) = HeaderValue::from_str(value) {
                    response.insert_header((name, value));
                }
            }
        }
        if let AppError::MethodNotAllowed { allow } = self
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            response.insert_header((header::ALLOW, value));
        }
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                response.insert_header((
                    header::RETRY_AFTER,
                    HeaderValue::from_static(Self::RETRY_AFTER_SECONDS),
                ));
            }
            StatusCode::UNAUTHORIZED => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            _ => {}
        }
        match serde_json::to_string(&problem) {
            Ok(body) => response.body(body),
            Err(_) => response.finish(),
        }
    }
}

/// The IETF rate-limit headers (draft-ietf-httpapi-ratelimit-headers): the policy, and
/// what is left of it.
pub const RATE_LIMIT_POLICY: &str = "ratelimit-policy";
pub const RATE_LIMIT: &str = "ratelimit";

/// What a client is told of an error, and what only `error_details` adds.
struct Answer<'a> {
    status: StatusCode,
    title: &'static str,
    public: Option<String>,
    internal: Option<&'a str>,
}

/// An error answer (RFC 9457), as `application/problem+json`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// Always `about:blank`: the status says what kind of error it is.
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    /// What went wrong, for the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// Internals, only with `TENANCY_ERROR_DETAILS=true` (never in production).
    #[serde(skip_serializing_if = "Option::is_none")]
    debug: Option<&'a str>,
    /// The request's id, to find its log lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        self.answer().status
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        if let AppError::Internal { detail, .. } = self {
            tracing::error!(error.detail = %detail, "internal error");
        }
        self.to_problem(false, None)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match error {
            Error::NotFound => AppError::NotFound("resource"),
            // The connection died (PostgreSQL restarted or went away), or PostgreSQL ended
            // the statement: an outage to retry after, not a bug.
            Error::DatabaseError(
                DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
                info,
            ) => AppError::Unavailable {
                detail: format!("database connection lost: {}", info.message()),
            },
            Error::DatabaseError(_, info) if is_outage(info.message()) => AppError::Unavailable {
                detail: info.message().to_owned(),
            },
            Error::DatabaseError(kind, info) => match Constraint::of(&kind) {
                Some(kind) => AppError::Constraint {
                    kind,
                    message: info
                        .constraint_name()
                        .and_then(constraint_message)
                        .unwrap_or(kind.message())
                        .to_owned(),
                    detail: info.message().to_owned(),
                },
                None => AppError::internal(Error::DatabaseError(kind, info)),
            },
            other => AppError::internal(other),
        }
    }
}

/// What a client is told when a write breaks the constraint named `name`. Add your
/// tables' constraints here; others get their kind's message. Constraint names are
/// internals: a client sees them only with `TENANCY_ERROR_DETAILS=true`.
fn constraint_message(name: &str) -> Option<&'static str> {
    match name {
        "notes_title_check" => Some("title must have 1 to 200 characters"),
        _ => None,
    }
}

/// The constraints PostgreSQL enforces on a write, by what they mean for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// The row would duplicate a unique key or overlap another (exclusion): 409.
    Unique,
    /// The row refers to a missing row, or is referred to: 409.
    ForeignKey,
    /// A value breaks a check or is missing: 422.
    Check,
}

impl Constraint {
    fn of(kind: &diesel::result::DatabaseErrorKind) -> Option<Self> {
        use diesel::result::DatabaseErrorKind as Kind;
        match kind {
            Kind::UniqueViolation | Kind::ExclusionViolation => Some(Self::Unique),
            Kind::ForeignKeyViolation | Kind::RestrictViolation => Some(Self::ForeignKey),
            Kind::CheckViolation | Kind::NotNullViolation => Some(Self::Check),
            _ => None,
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::Unique | Self::ForeignKey => StatusCode::CONFLICT,
            Self::Check => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn title(self) -> &'static str {
        match self.status() {
            StatusCode::CONFLICT => "Conflict",
            _ => "Unprocessable content",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Unique => "it conflicts with an existing record",
            Self::ForeignKey => {
                "it refers to a record that does not exist, or one still refers to it"
            }
            Self::Check => "a value is not allowed",
        }
    }
}

/// PostgreSQL's messages for SQLSTATE 57014 (statement timeout) and class 57 (operator
/// intervention: shutdown, crash, start-up). diesel does not expose the SQLSTATE of an
/// error, so these messages stand for it: in English, and in the server's own language as
/// learned at start-up (`db::outages`). Then PgBouncer's own (always English), when it
/// cannot give a client a server connection in time (the server down, or refusing
/// log-ins).
fn is_outage(message: &str) -> bool {
    const OUTAGES: &[&str] = &[
        "canceling statement due to statement timeout",
        "terminating connection due to administrator command",
        "terminating connection because of crash of another server process",
        "terminating connection due to unexpected postmaster exit",
        "the database system is",
        "query_wait_timeout",
        "server login has been failing",
        "pgbouncer cannot connect to server",
{%- if isolation == "schema" or isolation == "rls" %}
        // A tenant's old place once it moved to another server (its move seals it): a
        // request sent before this replica heard of the move.
        "tenant moved to another server",
{%- endif %}
{%- if isolation == "hybrid" %}
        // The shared tables' own (migrations/tenant_rls): a request for a tenant that moved
        // to another tier, sent before this replica heard of it.
        "tenant moved to another tier",
{%- endif %}
    ];
    OUTAGES.iter().any(|outage| message.starts_with(outage)) || crate::db::outages::learned(message)
}

impl From<PoolError> for AppError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Isolation(detail) => AppError::internal(detail),
            // An outage (503) or a bug (500), as for any query.
            PoolError::Query(error) => AppError::from(error),
            other => AppError::Unavailable {
                detail: other.to_string(),
            },
        }
    }
}

/// Whether responses may carry internal details (`TENANCY_ERROR_DETAILS`): app data, for
/// handlers that report internals of their own (the health check).
#[derive(Debug, Clone, Copy)]
pub struct ErrorDetails(pub bool);

/// Middleware around every request: re-renders `AppError` responses with the request's id
/// (see `telemetry::RequestId`), and with their internal detail when `error_details` is
/// on, and answers a method a resource lacks as an `AppError` too; every response gets
/// the `X-Request-Id` header.
pub async fn problem_details(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = req.extensions().get::<RequestId>().cloned();
    let internals = req
        .app_data::<web::Data<ErrorDetails>>()
        .is_some_and(|details| details.0);
    let mut response = next.call(req).await?.map_into_boxed_body();
    // A resource's answer to a method it lacks: an empty 405 with its `Allow` header.
    if response.status() == StatusCode::METHOD_NOT_ALLOWED && response.response().error().is_none()
    {
        let allow = response
            .headers()
            .get(header::ALLOW)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let (request, _) = response.into_parts();
        response = ServiceResponse::from_err(AppError::MethodNotAllowed { allow }, request);
    }
    let rendered = response
        .response()
        .error()
        .and_then(|e| e.as_error::<AppError>())
        .map(|e| e.to_problem(internals, id.as_ref().map(RequestId::as_str)));
    // The same status and headers with the new body; the error stays on the response
    // for the middleware outside (logs, metrics).
    let mut response = match rendered {
        Some(problem) => {
            let (_, body) = problem.into_parts();
            response.map_body(|_, _| body)
        }
        None => response,
    };
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body_of(response: HttpResponse) -> String {
        String::from_utf8(to_bytes(response.into_body()).await.unwrap().to_vec()).unwrap()
    }

    #[actix_web::test]
    async fn internals_stay_out_of_bodies_unless_debugging() {
        let error = AppError::internal("relation \"secret_table\" does not exist");
        let plain = body_of(error.to_problem(false, None)).await;
        assert!(!plain.contains("secret_table"), "{plain}");
        assert!(plain.contains("\"status\":500"));
        let debug = body_of(error.to_problem(true, None)).await;
        assert!(debug.contains("secret_table"), "{debug}");
    }

    #[test]
    fn outages_of_the_server_or_the_pooler_are_unavailable_and_other_errors_internal() {
        use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error};
        let from = |message: &str| {
            let info: Box<dyn DatabaseErrorInformation + Send + Sync> =
                Box::new(message.to_owned());
            AppError::from(Error::DatabaseError(DatabaseErrorKind::Unknown, info))
        };
        for outage in [
            "canceling statement due to statement timeout",
            "the database system is shutting down",
            "query_wait_timeout",
            "server login has been failing, try again later (server_login_retry)",
            "pgbouncer cannot connect to server",
        ] {
            assert!(
                matches!(from(outage), AppError::Unavailable { .. }),
                "{outage}"
            );
        }
        let bug = from("relation \"notes\" does not exist");
        assert!(matches!(bug, AppError::Internal { .. }), "{bug:?}");
    }

    #[actix_web::test]
    async fn unavailable_says_when_to_retry() {
        let response = AppError::Unavailable {
            detail: "cap".into(),
        }
        .to_problem(false, None);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/problem+json"
        );
    }
}
