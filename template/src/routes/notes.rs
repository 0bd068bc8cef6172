{%- if isolation == "rls" -%}
//! The example resource: CRUD on the current tenant's notes. Note what is missing: no
//! tenant lookup, no schema name. The `TenantConnection` extractor hands every handler a
//! connection bound to the request's tenant; each statement still names its tenant
//! (`tenant_notes`), for distributed PostgreSQL to route it to one shard. Importing
//! notes is a background job ([`ImportNotes`]): the `TenantJobs` extractor enqueues it for
//! the request's tenant, and a worker runs it on a connection bound to that tenant.
{%- else -%}
//! The example resource: CRUD on the current tenant's notes. Note what is missing: no
//! tenant lookup, no schema name, no `WHERE tenant_id`. The `TenantConnection` extractor
//! hands every handler a connection bound to the request's tenant. Importing notes is a
//! background job ([`ImportNotes`]): the `TenantJobs` extractor enqueues it for the
//! request's tenant, and a worker runs it on a connection bound to that tenant.
{%- endif %}

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::TenantConnection;
{%- if jwt_resolver %}
use crate::domain::Tenant;
{%- endif %}
use crate::error::AppError;
use crate::jobs::{Enqueue, Job, JobError, TenantJobs};
use crate::schema::notes;
{%- if jwt_resolver %}
use crate::tenancy::resolve::jwt::Claims;
{%- endif %}

use super::Object;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/notes")
            .route(web::get().to(list_notes))
            .route(web::post().to(create_note)),
    )
    .service(web::resource("/notes/import").route(web::post().to(import_notes)))
    .service(
        web::resource("/notes/{id}")
            .route(web::get().to(get_note))
            .route(web::put().to(update_note))
            .route(web::delete().to(delete_note)),
    );
{%- if jwt_resolver %}
    cfg.service(web::resource("/me").route(web::get().to(me)));
{%- endif %}
}
{%- if jwt_resolver %}

/// Who is calling: the tenant and the verified token's subject. The `Claims` extractor
/// gives any handler the token's claims (401 if the request carries no verified token).
#[utoipa::path(
    get,
    path = "/api/me",
    tag = "notes",
    responses((status = 200, description = "The token's tenant and subject", body = Object)),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn me(tenant: Tenant, claims: Claims) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "tenant": tenant.identifier.as_str(),
        "subject": claims.subject(),
    }))
}
{%- endif %}

#[derive(Debug, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = notes, check_for_backend(diesel::pg::Pg))]
pub struct Note {
    /// A UUIDv7: time-ordered, and telling nothing of other tenants' writes.
    pub id: Uuid,
    pub title: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A note as a client sends it. Unknown members are refused, as in every request body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteInput {
    /// 1 to 200 characters, not all white space; stored trimmed.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000d \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub title: String,
    /// At most 100,000 characters, stored as sent; empty if left out.
    #[serde(default)]
    #[schema(max_length = 100000, pattern = r"^[^\u0000]*$")]
    pub body: String,
}

impl NoteInput {
    fn validated(self) -> Result<Self, AppError> {
        self.check().map_err(AppError::BadRequest)?;
        Ok(self)
    }

    fn check(&self) -> Result<(), String> {
        crate::domain::check_visible("title", &self.title, 200)?;
        if self.body.chars().count() > 100_000 {
            return Err("body must have at most 100000 characters".into());
        }
        crate::domain::check_text("body", &self.body)
    }
}

{%- if isolation == "rls" %}

/// The tenant's notes. Row-Level Security already keeps every statement to the
/// connection's tenant; naming `tenant_id` as well lets distributed PostgreSQL (Citus,
/// which shards the shared tables by `tenant_id`) send each statement to that tenant's
/// shard alone, where a policy's condition would not.
fn tenant_notes(
    conn: &TenantConnection,
) -> diesel::dsl::Filter<notes::table, diesel::dsl::Eq<notes::tenant_id, Uuid>> {
    notes::table.filter(notes::tenant_id.eq(conn.tenant()))
}
{%- else %}

/// The tenant's notes: the connection reaches its tenant's tables alone.
fn tenant_notes(_conn: &TenantConnection) -> notes::table {
    notes::table
}
{%- endif %}

/// Adds a note on the tenant's connection.
async fn insert(conn: &mut TenantConnection, input: &NoteInput) -> QueryResult<Note> {
    diesel::insert_into(notes::table)
        .values((
{%- if isolation == "rls" %}
            notes::tenant_id.eq(conn.tenant()),
{%- endif %}
            notes::id.eq(Uuid::now_v7()),
            notes::title.eq(input.title.trim()),
            notes::body.eq(&input.body),
        ))
        .returning(Note::as_returning())
        .get_result(conn)
        .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100 (else 400); default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Only notes with a smaller id, i.e. older ones (keyset pagination).
    pub before: Option<Uuid>,
}

/// The tenant's notes, newest first (keyset pages: `before` the last id of a page).
#[utoipa::path(
    get,
    path = "/api/notes",
    tag = "notes",
    params(ListQuery),
    responses((status = 200, description = "The notes, newest first", body = Vec<Note>)),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_notes(
    mut conn: TenantConnection,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(AppError::BadRequest("limit must be 1 to 100".into()));
    }
    let mut select = tenant_notes(&conn)
        .select(Note::as_select())
        .order(notes::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(before) = query.before {
        select = select.filter(notes::id.lt(before));
    }
    let found: Vec<Note> = select.load(&mut conn).await?;
    Ok(HttpResponse::Ok().json(found))
}

/// Adds a note.
#[utoipa::path(
    post,
    path = "/api/notes",
    tag = "notes",
    request_body = NoteInput,
    responses((status = 201, description = "The note", body = Note)),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn create_note(
    mut conn: TenantConnection,
    Object(input): Object<NoteInput>,
) -> Result<HttpResponse, AppError> {
    let input = input.validated()?;
    let note = insert(&mut conn, &input).await?;
    Ok(HttpResponse::Created().json(note))
}

/// Notes imported at once, in the background.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportNotes {
    /// 1 to 1000 notes.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<NoteInput>)]
    pub notes: Vec<Object<NoteInput>>,
}

impl ImportNotes {
    pub const MAX: usize = 1000;
}

impl Job for ImportNotes {
    const KIND: &'static str = "import_notes";

    /// Adds every note in one transaction (all or none), and counts the tenant's notes.
    async fn run(self, conn: &mut TenantConnection) -> Result<serde_json::Value, JobError> {
        for (n, Object(note)) in self.notes.iter().enumerate() {
            note.check()
                .map_err(|why| JobError::Failed(format!("note {n}: {why}")))?;
        }
        let notes = &self.notes;
        let total = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                for Object(note) in notes {
                    insert(conn, note).await?;
                }
                tenant_notes(conn).count().get_result::<i64>(conn).await
            })
            .await?;
        Ok(serde_json::json!({ "imported": notes.len(), "notes": total }))
    }
}

/// Enqueues an import of up to 1000 notes and answers 202 with the job, which
/// `GET /api/jobs/{id}` follows. An `Idempotency-Key` header makes a repeated request
/// return the job of the first.
#[utoipa::path(
    post,
    path = "/api/notes/import",
    tag = "notes",
    request_body = ImportNotes,
    params((
        "Idempotency-Key" = Option<String>,
        Header,
        description = "1 to 200 visible ASCII characters: a repeated request with the same key answers the job of the first",
        min_length = 1,
        max_length = 200,
        pattern = "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$",
    )),
    responses((
        status = 202,
        description = "The job, queued; `Location` is where to follow it",
        body = super::jobs::JobStatus,
        headers(("Location" = String, description = "`/api/jobs/{id}`")),
    )),
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn import_notes(
    req: HttpRequest,
    jobs: TenantJobs,
    Object(import): Object<ImportNotes>,
) -> Result<HttpResponse, AppError> {
    if import.notes.is_empty() || import.notes.len() > ImportNotes::MAX {
        return Err(AppError::BadRequest(format!(
            "notes must hold 1 to {} notes",
            ImportNotes::MAX
        )));
    }
    for (n, Object(note)) in import.notes.iter().enumerate() {
        note.check()
            .map_err(|why| AppError::BadRequest(format!("notes[{n}]: {why}")))?;
    }
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .map(|value| idempotency_key(value.as_bytes()))
        .transpose()?;
    let options = Enqueue {
        idempotency_key,
        ..Enqueue::default()
    };
    let (job, _) = jobs.enqueue(&import, options).await?;
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/api/jobs/{}", job.id)))
        .json(super::jobs::JobStatus::from(job)))
}

/// An `Idempotency-Key` as documented: 1 to 200 visible ASCII characters, spaces only
/// between them (a tab, which HTTP allows in a header, is not one of them).
fn idempotency_key(value: &[u8]) -> Result<String, AppError> {
    let visible = |byte: &u8| (0x21..=0x7e).contains(byte);
    if value.len() <= 200
        && value.first().is_some_and(visible)
        && value.last().is_some_and(visible)
        && value.iter().all(|byte| *byte == b' ' || visible(byte))
    {
        Ok(String::from_utf8_lossy(value).into_owned())
    } else {
        Err(AppError::BadRequest(
            "Idempotency-Key must be 1 to 200 visible ASCII characters".into(),
        ))
    }
}

/// One note.
#[utoipa::path(
    get,
    path = "/api/notes/{id}",
    tag = "notes",
    params(("id" = Uuid, Path, description = "The note's id (anything else is not found)")),
    responses((status = 200, description = "The note", body = Note)),
)]
#[tracing::instrument(skip_all, fields(note.id = %*id))]
pub(crate) async fn get_note(
    mut conn: TenantConnection,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, AppError> {
    let note: Note = tenant_notes(&conn)
        .find(*id)
        .select(Note::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or(AppError::NotFound("note"))?;
    Ok(HttpResponse::Ok().json(note))
}

/// Replaces a note's title and body.
#[utoipa::path(
    put,
    path = "/api/notes/{id}",
    tag = "notes",
    params(("id" = Uuid, Path, description = "The note's id (anything else is not found)")),
    request_body = NoteInput,
    responses((status = 200, description = "The note", body = Note)),
)]
#[tracing::instrument(skip_all, fields(note.id = %*id))]
pub(crate) async fn update_note(
    mut conn: TenantConnection,
    id: web::Path<Uuid>,
    Object(input): Object<NoteInput>,
) -> Result<HttpResponse, AppError> {
    let input = input.validated()?;
    let note: Note = diesel::update(tenant_notes(&conn).find(*id))
        .set((
            notes::title.eq(input.title.trim()),
            notes::body.eq(&input.body),
            notes::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Note::as_returning())
        .get_result(&mut conn)
        .await
        .optional()?
        .ok_or(AppError::NotFound("note"))?;
    Ok(HttpResponse::Ok().json(note))
}

/// Deletes a note.
#[utoipa::path(
    delete,
    path = "/api/notes/{id}",
    tag = "notes",
    params(("id" = Uuid, Path, description = "The note's id (anything else is not found)")),
    responses((status = 204, description = "Deleted")),
)]
#[tracing::instrument(skip_all, fields(note.id = %*id))]
pub(crate) async fn delete_note(
    mut conn: TenantConnection,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, AppError> {
    let deleted = diesel::delete(tenant_notes(&conn).find(*id))
        .execute(&mut conn)
        .await?;
    if deleted == 0 {
        return Err(AppError::NotFound("note"));
    }
    Ok(HttpResponse::NoContent().finish())
}
