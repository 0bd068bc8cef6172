//! Path resolution: `/t/acme/api/notes` names tenant `acme` (`TENANCY_PATH_PREFIX`,
//! default `/t`), and the request is routed as `/api/notes`: routes are written once,
//! without the prefix.
//!
//! The prefix is taken off before routing, for every request ([`strip_tenant_prefix`],
//! installed around the whole app); the tenant middleware around `/api` then finds the
//! tenant it named ([`resolve`]). A path without the prefix names no tenant, so
//! `/health` stays where it is.
//!
//! Trust model: whoever writes the URL chooses the tenant. The segment is taken from the
//! raw path and never decoded, so an encoded slash (`%2F`), `..` or any other escape is
//! not a valid identifier (404) and cannot change the tenant; what follows the segment is
//! routed as it is (`/t/acme/../globex/...` stays with `acme` and matches no route).

use actix_web::HttpMessage;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Uri;
use actix_web::middleware::Next;

use super::found::{Found, Rejection};
use crate::domain::TenantIdentifier;
use crate::error::AppError;
use crate::tenancy::Tenancy;

#[derive(Debug, Clone)]
pub struct PathSettings {
    /// Tenant `acme` is served under `<prefix>/acme/` (`TENANCY_PATH_PREFIX`).
    pub prefix: String,
}

/// The tenant a request's path named, kept for [`resolve`] once the prefix is gone.
#[derive(Debug, Clone)]
struct PathTenant(TenantIdentifier);

/// Middleware: routes `/t/acme/api/notes` as `/api/notes`, remembering `acme`. A path
/// under the prefix whose tenant segment is not a valid identifier is not found.
pub async fn strip_tenant_prefix(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let tenancy = match Tenancy::of(req.request()) {
        Ok(tenancy) => tenancy,
        Err(error) => return Ok(req.error_response(error).map_into_right_body()),
    };
    let rerouted = match split(req.path(), &tenancy.settings.resolve.path.prefix) {
        // Not under the prefix: this path names no tenant.
        None => Ok(()),
        Some(Ok((tenant, rest))) => reroute(&mut req, &rest).map(|()| {
            req.extensions_mut().insert(PathTenant(tenant));
        }),
        Some(Err(why)) => Err(Rejection::Malformed(why)),
    };
    match rerouted {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(rejection) => {
            let error = AppError::from(rejection);
            Ok(req.error_response(error).map_into_right_body())
        }
    }
}

/// Routes the request as `rest` (with its query), as if the prefix had never been there.
fn reroute(req: &mut ServiceRequest, rest: &str) -> Result<(), Rejection> {
    let target = match req.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let uri: Uri = target
        .parse()
        .map_err(|_| Rejection::Malformed("the path after the tenant is not a valid URI".into()))?;
    req.match_info_mut().get_mut().update(&uri);
    req.head_mut().uri = uri;
    Ok(())
}

/// The tenant the request's path named (see [`strip_tenant_prefix`]).
pub fn resolve(req: &mut ServiceRequest, settings: &PathSettings) -> Found {
    match req.extensions().get::<PathTenant>() {
        Some(PathTenant(tenant)) => Found::Tenant(tenant.clone()),
        None => Found::Nothing {
            hint: format!("start the path with {}/<tenant>/", settings.prefix),
        },
    }
}

/// `/t/acme/api/notes` -> (`acme`, `/api/notes`); `None` for a path not under the prefix,
/// an error (why) for a tenant segment that is not a valid identifier.
fn split(path: &str, prefix: &str) -> Option<Result<(TenantIdentifier, String), String>> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
    let (segment, remainder) = match rest.split_once('/') {
        Some((segment, remainder)) => (segment, format!("/{remainder}")),
        None => (rest, "/".to_owned()),
    };
    Some(TenantIdentifier::parse(segment).map(|identifier| (identifier, remainder)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tenant(path: &str) -> Option<(String, String)> {
        split(path, "/t")
            .and_then(Result::ok)
            .map(|(id, rest)| (id.to_string(), rest))
    }

    #[test]
    fn paths_are_handled_deliberately() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("/t/acme/api/notes", Some(("acme", "/api/notes"))),
            ("/t/acme", Some(("acme", "/"))),
            ("/t/acme/", Some(("acme", "/"))),
            (
                "/t/acme/../globex/api/notes",
                Some(("acme", "/../globex/api/notes")),
            ),
            ("/t/acme%2Fglobex/api/notes", None),
            ("/t/%61cme/api/notes", None),
            ("/t/../api/notes", None),
            ("/t//api/notes", None),
            ("/t/Acme/api/notes", None),
            ("/api/notes", None),
            ("/tenant/acme/api/notes", None),
            ("/t", None),
        ];
        for (path, expected) in cases {
            let expected = expected.map(|(a, b)| (a.to_owned(), b.to_owned()));
            assert_eq!(tenant(path), expected, "{path}");
        }
    }

    proptest! {
        #[test]
        fn no_path_panics_and_what_is_accepted_is_valid(path in "/t/\\PC{0,80}") {
            if let Some(Ok((id, rest))) = split(&path, "/t") {
                prop_assert!(TenantIdentifier::parse(id.as_str()).is_ok());
                prop_assert!(rest.starts_with('/'));
            }
        }
    }
}
