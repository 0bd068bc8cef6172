//! The isolation strategy this service was generated with. Each strategy lives in its own
//! file and provides the same functions: `connect_config`, `migrate`, `destroy`.
{%- if isolation == "schema" %}

mod schema;
pub use schema::*;
{%- endif %}
