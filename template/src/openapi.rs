//! The API described: an OpenAPI 3.1 document built from the handlers' own annotations
//! (`#[utoipa::path]`) and types (`ToSchema`), never written by hand. `GET /openapi.json`
//! serves it and `{{project-name}} openapi` prints it; tests/api/openapi.rs fails when a
//! route is not described or `openapi.json` differs from what this builds.
//!
//! Handlers describe their own answers; [`Described`] adds what every route of a kind
//! shares: how a request names its tenant, the error answers of the middleware, and the
//! security schemes.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The media type of every error answer (RFC 9457).
pub const PROBLEM: &str = "application/problem+json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "{{project-name}}",
        description = "A multi-tenant service: every route under `/api` belongs to the tenant the request names ({{resolution}} resolution); errors are `application/problem+json` (RFC 9457) with the request's id. A body is a JSON object, and a member it does not define is refused (400); text is checked as described (lengths in characters, no NUL character); a query value out of range is refused, never clamped; a method a path does not answer gets 405 with `Allow`; a path id that cannot name anything gets 404, as an unknown one does."
    ),
    paths(
        routes::notes::list_notes,
        routes::notes::create_note,
        routes::notes::import_notes,
        routes::notes::get_note,
        routes::notes::update_note,
        routes::notes::delete_note,
{%- if jwt_resolver %}
        routes::notes::me,
{%- endif %}
        routes::jobs::get_job,
        routes::health::health,
        routes::health::live,
        routes::health::ready,
        routes::metrics::metrics,
        openapi_json,
        routes::docs::page,
        routes::docs::script,
{%- if admin_api %}
        routes::admin::create,
        routes::admin::list,
        routes::admin::show,
        routes::admin::delete,
        routes::admin::suspend,
        routes::admin::activate,
        routes::admin::destroy,
        routes::admin::set_limits,
        routes::admin::set_maintenance,
        routes::admin::move_tenant,
        routes::admin::history,
        routes::admin::jobs,
        routes::admin::retry_job,
        routes::admin::cancel_job,
{%- endif %}
    ),
    components(schemas(
        crate::error::Problem,
{%- if admin_api %}
        crate::domain::StorableJson,
{%- endif %}
    )),
    modifiers(&Described),
)]
struct ApiDoc;

/// The document of this service.
pub fn document() -> Document {
    ApiDoc::openapi()
}

/// The document as `GET /openapi.json` serves it and `openapi.json` holds it.
pub fn json() -> String {
    // Serializing the document's own types cannot fail; an empty object says it did.
    document().to_pretty_json().unwrap_or_else(|_| "{}".into())
}

/// The document this service serves, built once: [`json`], with the tenant header and path
/// prefix it is configured with (`openapi.json` and the `openapi` command have the
/// defaults).
pub struct Served(actix_web::web::Bytes);

impl Served {
    pub fn new(settings: &crate::config::Settings) -> Self {
        let {% if header_resolver or resolution == "path" or admin_api %}mut {% endif %}doc = document();
{%- if header_resolver %}
        let header = &settings.tenancy.resolve.header.name;
        if !header.eq_ignore_ascii_case("X-Tenant-ID") {
            for item in doc.paths.paths.values_mut() {
                for operation in operations(item) {
                    for parameter in operation.parameters.iter_mut().flatten() {
                        if let RefOr::T(parameter) = parameter
                            && parameter.name == "X-Tenant-ID"
                        {
                            parameter.name.clone_from(header);
                        }
                    }
                }
            }
        }
{%- endif %}
{%- if resolution == "path" %}
        let prefix = &settings.tenancy.resolve.path.prefix;
        doc.paths.paths = std::mem::take(&mut doc.paths.paths)
            .into_iter()
            .map(|(path, item)| match path.strip_prefix("/t/{tenant}/") {
                Some(rest) => ([prefix, "/{tenant}/", rest].concat(), item),
                None => (path, item),
            })
            .collect();
{%- endif %}
{%- if header_resolver == false and resolution != "path" %}
        let _ = settings; // resolved by host or token: no name to configure
{%- endif %}
{%- if admin_api %}
        let servers = &settings.tenancy.isolation{% if isolation == "hybrid" %}.database{% endif %}{% if tenant_databases %}.servers{% endif %}.servers;
        name_listed_servers(&mut doc, servers);
{%- endif %}
        Self(doc.to_pretty_json().unwrap_or_else(|_| "{}".into()).into())
    }
}
{%- if admin_api %}

/// A request may name only a server of `TENANCY_DATABASE_SERVERS` (any other is refused):
/// the served document lists this deployment's, or null (the placement policy, or the
/// default server), where the built one can only say `host[:port]`.
fn name_listed_servers(doc: &mut Document, servers: &[crate::tenancy::isolation::ServerAddress]) {
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for (component, field) in [("NewTenant", "server"), ("MoveTo", "to")] {
        let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(component) else {
            continue;
        };
        let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field) else {
            continue;
        };
        property.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
        property.pattern = None;
        property.max_length = None;
        property.enum_values = Some(
            servers
                .iter()
                .map(|server| serde_json::Value::from(server.as_str()))
                .chain([serde_json::Value::Null])
                .collect(),
        );
    }
}
{%- endif %}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json(served: actix_web::web::Data<Served>) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .body(served.0.clone()) // a shared buffer: no copy
}

/// What every route of a kind shares.
struct Described;

impl Modify for Described {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
{%- if admin_api %}
        components.add_security_scheme(
            "admin_token",
            bearer("`TENANCY_ADMIN_TOKEN`; without it every admin request is refused"),
        );
{%- endif %}
        components.add_security_scheme(
            "metrics_token",
            bearer("`TENANCY_METRICS_TOKEN`, when it is set"),
        );
{%- if jwt_resolver %}
        components.add_security_scheme(
            "tenant_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A token of your issuer naming the tenant in its `tenant_id` claim \
                         (`TENANCY_JWT_TENANT_CLAIM`)",
                    ))
                    .build(),
            ),
        );
{%- endif %}
        let tenant_paths: Vec<String> = doc
            .paths
            .paths
            .keys()
            .filter(|path| path.starts_with("/api/"))
            .cloned()
            .collect();
        for path in tenant_paths {
            let Some(mut item) = doc.paths.paths.remove(&path) else {
                continue;
            };
            for operation in operations(&mut item) {
                name_the_tenant(operation);
                for (status, description) in TENANT_ERRORS {
                    add_problem(operation, status, description);
                }
{%- if jwt_resolver %}
                add_problem(
                    operation,
                    "401",
                    "The bearer token is missing, invalid or expired (`WWW-Authenticate: Bearer`)",
                );
{%- endif %}
            }
{%- if resolution == "path" %}
            // `TENANCY_PATH_PREFIX`, by default `/t`: `/t/acme/api/notes` is tenant acme's.
            doc.paths
                .paths
                .insert(["/t/", "{tenant}", &path].concat(), item);
{%- else %}
            doc.paths.paths.insert(path, item);
{%- endif %}
        }
{%- if admin_api %}
        for (path, item) in doc.paths.paths.iter_mut() {
            if path.starts_with("/admin/") {
                for operation in operations(item) {
                    for (status, description) in ADMIN_ERRORS {
                        add_problem(operation, status, description);
                    }
                }
            }
        }
{%- endif %}
    }
}

/// The errors any tenant route may answer before its handler runs, or from it.
const TENANT_ERRORS: [(&str, &str); 8] = [
    (
        "400",
        "The request names no tenant, or its input is invalid",
    ),
    (
        "403",
        "The tenant is suspended, or the request names two tenants",
    ),
    (
        "404",
        "No such tenant (unknown and malformed identifiers look the same), or no such record",
    ),
    (
        "408",
        "The request body did not arrive in time (`TENANCY_BODY_TIMEOUT`)",
    ),
    ("413", "The request body is larger than the service reads"),
    (
        "429",
        "The tenant is over its rate limit; `Retry-After` says when to try again",
    ),
    (
        "500",
        "An internal error (its details are in the logs, under the request id)",
    ),
    (
        "503",
        "The database is unavailable, or the tenant is read-only for maintenance; `Retry-After` is set",
    ),
];
{%- if admin_api %}

/// The errors any admin route may answer.
const ADMIN_ERRORS: [(&str, &str); 5] = [
    ("400", "Invalid input"),
    ("401", "Missing or wrong admin token"),
    ("404", "No such tenant"),
    (
        "500",
        "An internal error (its details are in the logs, under the request id)",
    ),
    ("503", "The database is unavailable; `Retry-After` is set"),
];
{%- endif %}

/// Every operation of a path.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Adds a problem+json answer for `status`, unless the operation describes its own.
fn add_problem(operation: &mut Operation, status: &str, description: &str) {
    if operation.responses.responses.contains_key(status) {
        return;
    }
    let response: Response = ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM,
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .build();
    operation
        .responses
        .responses
        .insert(status.to_owned(), RefOr::T(response));
}

/// How a request names its tenant, on a tenant route.
fn name_the_tenant(operation: &mut Operation) {
{%- if header_resolver or resolution == "path" %}
    use utoipa::openapi::Required;
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
{%- endif %}
{%- if header_resolver %}
    // `TENANCY_TENANT_HEADER`, by default `X-Tenant-ID`.
    let header = ParameterBuilder::new()
        .name("X-Tenant-ID")
        .parameter_in(ParameterIn::Header)
        .required({% if resolution == "header" %}Required::True{% else %}Required::False{% endif %})
        .description(Some("The tenant's identifier"))
        .schema(Some(identifier_schema()))
        .build();
    add_parameter(operation, header);
{%- endif %}
{%- if resolution == "path" %}
    let tenant = ParameterBuilder::new()
        .name("tenant")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some("The tenant's identifier"))
        .schema(Some(identifier_schema()))
        .build();
    add_parameter(operation, tenant);
{%- endif %}
{%- if jwt_resolver %}
    let token =
        utoipa::openapi::security::SecurityRequirement::new("tenant_token", Vec::<String>::new());
{%- if resolution == "jwt" %}
    operation.security = Some(vec![token]);
{%- else %}
    // Or another resolver of the chain.
    operation.security = Some(vec![token, Default::default()]);
{%- endif %}
{%- endif %}
{%- if subdomain_resolver %}
    let note = "The tenant is the first label of the request's host: `acme.example.com` is \
                tenant `acme` (`TENANCY_DOMAIN_SUFFIX`).";
    operation.description = Some(match operation.description.take() {
        Some(text) => format!("{text}\n\n{note}"),
        None => note.to_owned(),
    });
{%- endif %}
}
{%- if header_resolver or resolution == "path" %}

fn add_parameter(operation: &mut Operation, parameter: utoipa::openapi::path::Parameter) {
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .insert(0, RefOr::T(parameter));
}

/// What a tenant identifier may be.
fn identifier_schema() -> RefOr<utoipa::openapi::schema::Schema> {
    RefOr::T(utoipa::openapi::schema::Schema::Object(
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[a-z][a-z0-9_]*$"))
            .max_length(Some(crate::domain::TenantIdentifier::MAX_LEN))
            .build(),
    ))
}
{%- endif %}
