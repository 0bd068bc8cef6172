//! Chain resolution: several resolvers, tried in the order chosen at generation
//! ({% for r in resolvers %}{% if forloop.first == false %}, {% endif %}`{{r}}`{% endfor %}).
//!
//! The first resolver that finds what it looks for in the request names the tenant; a
//! resolver that finds it malformed or invalid (a bad token, a malformed header) ends the
//! request with its own error, so a rejected credential never falls through to the next
//! resolver. Every other resolver that also names a tenant must name the same one, or the
//! request gets 403: with a token in the chain, a client can never reach a tenant its
//! token was not issued for by adding a header, a host or a path. A request that names no
//! tenant gets 400 listing what it could send.

use actix_web::dev::ServiceRequest;

use super::found::{Found, Rejection};
use super::settings::ResolveSettings;
{% assign sorted = resolvers | sort -%}
use super::{{ "{" }}{{ sorted | join: ", " }}};
use crate::domain::TenantIdentifier;

pub fn resolve(req: &mut ServiceRequest, settings: &ResolveSettings) -> Found {
    // Each resolver's name with what it found, in the order they are tried.
    let found = [
{%- for r in resolvers %}
        ("{{r}}", {{r}}::resolve(req, &settings.{{r}})),
{%- endfor %}
    ];
    let mut named: Option<(&str, TenantIdentifier)> = None;
    let mut hints = Vec::new();
    for (resolver, found) in found {
        match found {
            Found::Nothing { hint } => hints.push(hint),
            rejected @ Found::Rejected(_) => return rejected,
            Found::Tenant(tenant) => match &named {
                None => named = Some((resolver, tenant)),
                Some((first, chosen)) if *chosen != tenant => {
                    return Found::Rejected(Rejection::Disagreement(format!(
                        "{first} names tenant '{chosen}' but {resolver} names '{tenant}'"
                    )));
                }
                Some(_) => {}
            },
        }
    }
    match named {
        Some((_, tenant)) => Found::Tenant(tenant),
        None => Found::Nothing {
            hint: hints.join(", or "),
        },
    }
}
