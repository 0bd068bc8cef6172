//! Path resolution: `/t/acme/api/notes` names tenant `acme` (`TENANCY_PATH_PREFIX`,
//! default `/t`), and the request is routed as `/api/notes`: routes are written once,
//! without the prefix.
//!
//! Trust model: whoever writes the URL chooses the tenant. The segment is taken from the
//! raw path and never decoded, so an encoded slash (`%2F`), `..` or any other escape is
//! not a valid identifier (404) and cannot change the tenant; what follows the segment is
//! routed as it is (`/t/acme/../globex/...` stays with `acme` and matches no route).

use actix_web::dev::ServiceRequest;
use actix_web::http::Uri;

use crate::config::Settings;
use crate::domain::TenantIdentifier;
use crate::error::AppError;

pub fn resolve(
    req: &mut ServiceRequest,
    settings: &Settings,
) -> Result<TenantIdentifier, AppError> {
    let (identifier, rest) = split(req.path(), &settings.path_prefix)?;
    let target = match req.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest,
    };
    let uri: Uri = target.parse().map_err(|_| AppError::TenantNotFound {
        detail: "the path after the tenant is not a valid URI".into(),
    })?;
    // Route what follows the tenant, as if the prefix had never been there.
    req.match_info_mut().get_mut().update(&uri);
    req.head_mut().uri = uri;
    Ok(identifier)
}

/// `/t/acme/api/notes` -> (`acme`, `/api/notes`).
pub fn split(path: &str, prefix: &str) -> Result<(TenantIdentifier, String), AppError> {
    let Some(rest) = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return Err(AppError::MissingTenant {
            hint: format!("start the path with {prefix}/<tenant>/"),
        });
    };
    let (segment, remainder) = match rest.split_once('/') {
        Some((segment, remainder)) => (segment, format!("/{remainder}")),
        None => (rest, "/".to_owned()),
    };
    let identifier =
        TenantIdentifier::parse(segment).map_err(|why| AppError::TenantNotFound { detail: why })?;
    Ok((identifier, remainder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tenant(path: &str) -> Option<(String, String)> {
        split(path, "/t")
            .ok()
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
            if let Ok((id, rest)) = split(&path, "/t") {
                prop_assert!(TenantIdentifier::parse(id.as_str()).is_ok());
                prop_assert!(rest.starts_with('/'));
            }
        }
    }
}
