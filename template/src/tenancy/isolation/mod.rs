//! The isolation strategy this service was generated with. Each strategy lives in its own
//! file and provides the same functions: `connect_target`, `migrate_shared`, `migrate`, `destroy`,
//! `check_app_role`.
{%- if isolation == "schema" %}

mod schema;
pub use schema::*;
{%- endif %}
{%- if isolation == "rls" %}

mod rls;
pub use rls::*;
{%- endif %}
{%- if isolation == "database" %}

mod database;
pub use database::*;
{%- endif %}
