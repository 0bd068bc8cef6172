//! Header resolution: the tenant is named by a request header (`TENANCY_TENANT_HEADER`,
//! default `X-Tenant-ID`). Whoever can send the header chooses the tenant: put an
//! authenticating proxy in front, or generate the service with JWT resolution.

use actix_web::dev::ServiceRequest;
use actix_web::http::header::HeaderName;

use super::found::{Found, Rejection};
use crate::settings::{ConfigError, Key, Source};

#[derive(Debug, Clone)]
pub struct HeaderSettings {
    /// The header that names the tenant (`TENANCY_TENANT_HEADER`).
    pub name: String,
}

impl HeaderSettings {
    pub const KEYS: &[Key] = &[("tenant_header", Some("X-Tenant-ID"))];

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let name = src.get("tenant_header");
        if HeaderName::try_from(name.as_str()).is_err() {
            return Err(ConfigError::invalid(
                "tenant_header",
                "not a valid HTTP header name",
            ));
        }
        Ok(Self { name })
    }
}

/// The tenant named by the request's header; nothing without the header; a malformed
/// value is rejected (and answered like an unknown tenant).
pub fn resolve(req: &mut ServiceRequest, settings: &HeaderSettings) -> Found {
    let mut values = req.headers().get_all(settings.name.as_str());
    let Some(value) = values.next() else {
        return Found::Nothing {
            hint: format!("send the tenant identifier in the {} header", settings.name),
        };
    };
    if values.next().is_some() {
        return Found::Rejected(Rejection::Repeated(
            "the request names its tenant in more than one header".into(),
        ));
    }
    match value.to_str() {
        Ok(text) => Found::identifier(text.trim()),
        Err(_) => Found::Rejected(Rejection::Malformed(
            "the tenant header is not visible ASCII".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_name_is_checked() {
        let read =
            |pairs: &[(&str, &str)]| HeaderSettings::read(&Source::of(pairs, HeaderSettings::KEYS));
        assert_eq!(read(&[]).unwrap().name, "X-Tenant-ID");
        let err = read(&[("TENANCY_TENANT_HEADER", "bad header")]).unwrap_err();
        assert!(
            err.to_string().starts_with("TENANCY_TENANT_HEADER:"),
            "{err}"
        );
    }
}
