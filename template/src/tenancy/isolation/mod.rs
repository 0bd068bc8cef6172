//! The isolation strategy this service was generated with. Each strategy lives in its own
//! file and provides the same functions: `connect_target`, `migrate_shared`, `migrate`, `destroy`,
//! `check_app_role`, `choose`.

use crate::db::PoolError;
use crate::domain::{Isolation, Tenant};

/// Why a tenant's pool could not be set up (a strategy's `connect_target` error).
pub type Refused = bb8::RunError<PoolError>;

/// A tenant this code must not serve.
pub(crate) fn refused(why: String) -> Refused {
    bb8::RunError::User(PoolError::Isolation(why))
}

/// The isolation of a new tenant for a strategy that offers only `offered`.
pub(crate) fn only(requested: Option<Isolation>, offered: Isolation) -> Result<Isolation, String> {
    match requested {
        None => Ok(offered),
        Some(isolation) if isolation == offered => Ok(offered),
        Some(other) => Err(format!(
            "this service isolates every tenant with '{offered}', not '{other}'"
        )),
    }
}

/// Refuses a tenant whose registry row says it is stored another way than `expected`
/// (a registry shared with a service generated for another strategy).
pub(crate) fn ensure(tenant: &Tenant, expected: Isolation) -> Result<(), String> {
    if tenant.isolation == expected {
        Ok(())
    } else {
        Err(format!(
            "tenant '{}' is stored with {} isolation; this code serves {}",
            tenant.identifier, tenant.isolation, expected
        ))
    }
}
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
{%- if isolation == "hybrid" %}

mod hybrid;
pub mod rls;
pub mod schema;
pub use hybrid::*;
{%- endif %}
