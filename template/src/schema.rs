//! Diesel table definitions.
//!
//! Control tables are schema-qualified (`tenancy.*`). Tenant tables are unqualified on
//! purpose: they resolve only on a `TenantConnection`, whose session is bound to one
//! tenant's schema. To add a tenant table: add a migration under `migrations/tenant/` and
//! its `table!` below (see docs/architecture.md).

diesel::table! {
    tenancy.tenants (id) {
        id -> Uuid,
        identifier -> Text,
        name -> Text,
        status -> Text,
        isolation -> Text,
        metadata -> Jsonb,
        max_connections -> Nullable<Int4>,
        statement_timeout -> Nullable<Int4>,
        rate_limit -> Nullable<Int4>,
        rate_limit_burst -> Nullable<Int4>,
        maintenance -> Text,
        server -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    tenancy.audit (id) {
        id -> Int8,
        at -> Timestamptz,
        actor -> Text,
        tenant_id -> Nullable<Uuid>,
        identifier -> Text,
        operation -> Text,
        params -> Jsonb,
        result -> Text,
        error -> Nullable<Text>,
        duration_ms -> Int8,
    }
}

diesel::table! {
    tenancy.quarantine (identifier) {
        identifier -> Text,
        tenant_id -> Uuid,
        destroyed_at -> Timestamptz,
        until -> Timestamptz,
    }
}

diesel::table! {
    tenancy.jobs (id) {
        id -> Int8,
        tenant_id -> Uuid,
        queue -> Text,
        kind -> Text,
        payload -> Jsonb,
        state -> Text,
        attempts -> Int4,
        max_attempts -> Int4,
        run_at -> Timestamptz,
        lease -> Nullable<Uuid>,
        locked_until -> Nullable<Timestamptz>,
        result -> Nullable<Jsonb>,
        last_error -> Nullable<Text>,
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    tenancy.job_turns (tenant_id) {
        tenant_id -> Uuid,
        ready -> Bool,
        served_at -> Timestamptz,
    }
}

diesel::table! {
    notes (id) {
{%- if isolation == "rls" %}
        tenant_id -> Uuid,
{%- endif %}
        id -> Uuid,
        title -> Text,
        body -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}
