//! The resolver this service was generated with: it reads a request and names the
//! tenant, or says why it cannot. It never looks the tenant up; the middleware does.
{%- if resolution == "header" %}

mod header;
pub use header::*;
{%- endif %}
{%- if resolution == "subdomain" %}

mod subdomain;
pub use subdomain::*;
{%- endif %}
{%- if resolution == "path" %}

mod path;
pub use path::*;
{%- endif %}
