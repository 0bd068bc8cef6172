//! The example resource: CRUD on the current tenant's notes. Note what is missing: no
//! tenant lookup, no schema name, no `WHERE tenant_id`. The `TenantConnection` extractor
//! hands every handler a connection bound to the request's tenant.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::TenantConnection;
{%- if jwt_resolver %}
use crate::domain::Tenant;
{%- endif %}
use crate::error::AppError;
use crate::schema::notes;
{%- if jwt_resolver %}
use crate::tenancy::resolve::jwt::Claims;
{%- endif %}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/notes")
            .route(web::get().to(list_notes))
            .route(web::post().to(create_note)),
    )
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
#[tracing::instrument(skip_all)]
async fn me(tenant: Tenant, claims: Claims) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "tenant": tenant.identifier.as_str(),
        "subject": claims.subject(),
    }))
}
{%- endif %}

#[derive(Debug, Serialize, Queryable, Selectable)]
#[diesel(table_name = notes, check_for_backend(diesel::pg::Pg))]
pub struct Note {
    /// A UUIDv7: time-ordered, and telling nothing of other tenants' writes.
    pub id: Uuid,
    pub title: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
pub struct NoteInput {
    pub title: String,
    #[serde(default)]
    pub body: String,
}

impl NoteInput {
    fn validated(self) -> Result<Self, AppError> {
        let chars = self.title.trim().chars().count();
        if chars == 0 || chars > 200 {
            return Err(AppError::BadRequest(
                "title must have 1 to 200 characters".into(),
            ));
        }
        if self.body.len() > 100_000 {
            return Err(AppError::BadRequest(
                "body must be at most 100000 bytes".into(),
            ));
        }
        crate::domain::check_text("title", &self.title)
            .and_then(|()| crate::domain::check_text("body", &self.body))
            .map_err(AppError::BadRequest)?;
        Ok(self)
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// At most 100; default 20.
    pub limit: Option<i64>,
    /// Only notes with a smaller id, i.e. older ones (keyset pagination).
    pub before: Option<Uuid>,
}

#[tracing::instrument(skip_all)]
async fn list_notes(
    mut conn: TenantConnection,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let mut select = notes::table
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

#[tracing::instrument(skip_all)]
async fn create_note(
    mut conn: TenantConnection,
    input: web::Json<NoteInput>,
) -> Result<HttpResponse, AppError> {
    let input = input.into_inner().validated()?;
    let note: Note = diesel::insert_into(notes::table)
        .values((
            notes::id.eq(Uuid::now_v7()),
            notes::title.eq(input.title.trim()),
            notes::body.eq(&input.body),
        ))
        .returning(Note::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Created().json(note))
}

#[tracing::instrument(skip_all, fields(note.id = %*id))]
async fn get_note(
    mut conn: TenantConnection,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, AppError> {
    let note: Note = notes::table
        .find(*id)
        .select(Note::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or(AppError::NotFound("note"))?;
    Ok(HttpResponse::Ok().json(note))
}

#[tracing::instrument(skip_all, fields(note.id = %*id))]
async fn update_note(
    mut conn: TenantConnection,
    id: web::Path<Uuid>,
    input: web::Json<NoteInput>,
) -> Result<HttpResponse, AppError> {
    let input = input.into_inner().validated()?;
    let note: Note = diesel::update(notes::table.find(*id))
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

#[tracing::instrument(skip_all, fields(note.id = %*id))]
async fn delete_note(
    mut conn: TenantConnection,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, AppError> {
    let deleted = diesel::delete(notes::table.find(*id))
        .execute(&mut conn)
        .await?;
    if deleted == 0 {
        return Err(AppError::NotFound("note"));
    }
    Ok(HttpResponse::NoContent().finish())
}
