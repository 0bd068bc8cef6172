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

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Uri;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};

use super::found::{Found, Rejection};
use crate::error::AppError;
use crate::settings::{ConfigError, Key, Source};

#[derive(Debug, Clone)]
pub struct PathSettings {
    /// Tenant `acme` is served under `<prefix>/acme/` (`TENANCY_PATH_PREFIX`).
    pub prefix: String,
}

impl PathSettings {
    pub const KEYS: &[Key] = &[("path_prefix", Some("/t"))];

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let prefix = src.get("path_prefix");
        let valid = prefix.len() > 1
            && prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_/".contains(&b));
        if !valid {
            return Err(ConfigError::invalid(
                "path_prefix",
                "must look like /t (a leading slash, no trailing one)",
            ));
        }
        Ok(Self { prefix })
    }
}

/// The tenant segment of a request's path, kept for [`resolve`] once the prefix is gone.
#[derive(Debug, Clone)]
struct PathTenant(String);

/// Middleware: routes `/t/acme/api/notes` as `/api/notes`, remembering `acme` (checked by
/// [`resolve`], so a malformed segment is refused like any malformed tenant).
pub async fn strip_tenant_prefix(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(settings) = req.app_data::<web::Data<PathSettings>>().cloned() else {
        let error = AppError::internal("PathSettings are not registered as app data");
        return Ok(req.error_response(error).map_into_right_body());
    };
    let rerouted = match split(req.path(), &settings.prefix) {
        // Not under the prefix: this path names no tenant.
        None => Ok(()),
        Some((tenant, rest)) => reroute(&mut req, &rest).map(|()| {
            req.extensions_mut().insert(PathTenant(tenant));
        }),
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
        Some(PathTenant(segment)) => Found::identifier(segment),
        None => Found::Nothing {
            hint: format!("start the path with {}/<tenant>/", settings.prefix),
        },
    }
}

/// `/t/acme/api/notes` -> (`acme`, `/api/notes`): the tenant segment, raw, and the rest;
/// `None` for a path not under the prefix.
fn split(path: &str, prefix: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
    Some(match rest.split_once('/') {
        Some((segment, remainder)) => (segment.to_owned(), format!("/{remainder}")),
        None => (rest.to_owned(), "/".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantIdentifier;
    use proptest::prelude::*;

    #[test]
    fn the_prefix_is_checked() {
        let read =
            |pairs: &[(&str, &str)]| PathSettings::read(&Source::of(pairs, PathSettings::KEYS));
        assert_eq!(read(&[]).unwrap().prefix, "/t");
        for bad in ["t", "/t/", "/"] {
            let err = read(&[("TENANCY_PATH_PREFIX", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("TENANCY_PATH_PREFIX:"), "{err}");
        }
    }

    /// The tenant a path names, as `resolve` will see it, and the path it is routed as.
    fn tenant(path: &str) -> Option<(String, String)> {
        let (segment, rest) = split(path, "/t")?;
        match Found::identifier(&segment) {
            Found::Tenant(id) => Some((id.to_string(), rest)),
            _ => None,
        }
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
            if let Some((id, rest)) = tenant(&path) {
                prop_assert!(TenantIdentifier::parse(&id).is_ok());
                prop_assert!(rest.starts_with('/'));
            }
        }
    }
}
