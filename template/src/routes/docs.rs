//! `GET /docs`: a page that shows the API's document (`/openapi.json`) to people, with
//! requests they can try. Off unless `TENANCY_API_DOCS=true` (a 404 like any unknown
//! path). Self-contained: the page and its script (RapiDoc 9.3.8, MIT, vendored in
//! `assets/` with its licence) come from this service, and the page's
//! Content-Security-Policy lets the browser load nothing from anywhere else.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use crate::error::AppError;

/// Whether the page is served (`TENANCY_API_DOCS`).
#[derive(Debug, Clone, Copy)]
pub struct ApiDocs(pub bool);

/// RapiDoc's script, gzipped as its package ships it (217 KB; 863 KB unpacked).
const SCRIPT: &[u8] = include_bytes!("../../assets/rapidoc-min.js.gz");

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>API</title>
<script type="module" src="/docs/rapidoc-min.js"></script>
</head>
<body>
<rapi-doc spec-url="/openapi.json" render-style="read" show-header="false"
  regular-font="system-ui, -apple-system, 'Segoe UI', sans-serif"
  mono-font="ui-monospace, Menlo, Consolas, monospace"></rapi-doc>
</body>
</html>
"#;

/// Nothing but this service: its script, its document, inline styles (the script's web
/// components set them) and no frames.
const POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                      style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; \
                      base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes(cfg: &mut web::ServiceConfig, on: bool) {
    cfg.app_data(web::Data::new(ApiDocs(on)))
        .service(web::resource("/docs").get(page))
        .service(web::resource("/docs/rapidoc-min.js").get(script));
}

impl ApiDocs {
    fn served(&self) -> Result<(), AppError> {
        if self.0 {
            Ok(())
        } else {
            Err(AppError::NotFound("resource"))
        }
    }
}

/// The documentation page (`TENANCY_API_DOCS=true`).
#[utoipa::path(
    get,
    path = "/docs",
    tag = "service",
    responses(
        (status = 200, description = "The page, which reads /openapi.json", body = String, content_type = "text/html"),
        (status = 404, description = "The page is off (`TENANCY_API_DOCS`)", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn page(docs: web::Data<ApiDocs>) -> Result<HttpResponse, AppError> {
    docs.served()?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(PAGE))
}

/// The page's script, gzip-encoded (every browser takes it so).
#[utoipa::path(
    get,
    path = "/docs/rapidoc-min.js",
    tag = "service",
    responses(
        (status = 200, description = "RapiDoc 9.3.8, gzip-encoded", body = String, content_type = "text/javascript"),
        (status = 404, description = "The page is off (`TENANCY_API_DOCS`)", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn script(docs: web::Data<ApiDocs>) -> Result<HttpResponse, AppError> {
    docs.served()?;
    Ok(HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CONTENT_ENCODING, "gzip"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(SCRIPT))
}
