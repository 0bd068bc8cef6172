//! Values that are checked once, at the edge, and can only hold safe contents afterwards.
//!
//! Nothing in this crate builds SQL from a tenant value except through the newtypes here.

mod identifier;
mod server;
mod tenant;
mod text;

pub use identifier::{SqlIdentifier, TenantIdentifier};
pub use server::ServerAddress;
pub use tenant::{Bound, Isolation, Limit, Maintenance, Tenant, TenantLimits, TenantStatus};
pub use text::{
    StorableJson, TEXT_PATTERN, VISIBLE_PATTERN, check_json, check_text, check_visible,
    storable_json, storable_text,
};
