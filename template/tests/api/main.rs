//! The integration tests, one binary with a module per concern. Each test runs the
//! service against a real PostgreSQL: its own database, created and dropped by
//! `helpers` (`TENANCY_TEST_DATABASE_URL`, default the local server); `TEST_LOG=1` shows
//! the service's logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test is one scenario, read top to bottom: the 80-line limit is for the service's code.
#![allow(clippy::too_many_lines)]

// The crate under test is `svc` in every module: one alias, so that no line's length, and
// so no formatting, depends on the project's name.
extern crate {{crate_name}} as svc;

#[macro_use]
mod helpers;

{% if admin_api -%}
mod admin_api;
{% endif -%}
mod api_rules;
mod audit;
mod bodies;
{% if resolution == "chain" -%}
mod chain;
{% endif -%}
mod cli;
mod cluster;
mod connections;
{% if isolation == "database" -%}
mod database;
{% endif -%}
mod errors;
mod fairness;
{% if header_resolver -%}
mod header;
{% endif -%}
mod health;
{% if isolation == "hybrid" -%}
mod hybrid;
{% endif -%}
mod isolation;
mod jobs;
{% if jwt_resolver -%}
mod jwt;
{% endif -%}
mod lifecycle;
mod metrics;
mod moves;
mod openapi;
{% if opentelemetry -%}
mod otlp;
{% endif -%}
{% if path_resolver -%}
mod path;
{% endif -%}
mod pgbouncer;
mod pooler;
mod rate_limit;
{% if redis_cache -%}
mod redis;
{% endif -%}
mod replicas;
mod resolution;
{% if isolation == "rls" -%}
mod rls;
{% endif -%}
{% if isolation == "schema" -%}
mod schema;
{% endif -%}
mod servers;
{% if subdomain_resolver -%}
mod subdomain;
{% endif -%}
{% if isolation == "hybrid" -%}
mod tiers;
{% endif -%}
mod tls;
