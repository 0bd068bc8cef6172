//! Subdomain resolution: `acme.example.com` names tenant `acme`, with
//! `TENANCY_DOMAIN_SUFFIX=.example.com`.
//!
//! Trust model: whoever controls the Host header chooses the tenant, so DNS and the proxy
//! in front decide which names reach the service. `X-Forwarded-Host` is read only with
//! `TENANCY_TRUST_FORWARDED_HOST=true` (a proxy you run sets it; otherwise any client
//! could), and then its last value, the one the nearest proxy added. An absolute-form
//! request URI's authority wins over `Host`, as RFC 9112 says. Handled deliberately: a port is ignored, case is folded (DNS is
//! case-insensitive), one trailing dot is ignored; the bare domain, a host outside the
//! suffix and an IP address name no tenant (400, and in a chain the next resolver is
//! asked); under the suffix, a nested subdomain (`a.b.example.com`) or a punycode label
//! (`xn--...`, which has '-') is rejected as malformed (404, as an unknown tenant).

use actix_web::dev::ServiceRequest;
use actix_web::http::header;

use super::found::{Found, Rejection};
use crate::settings::{ConfigError, Key, Source};

#[derive(Debug, Clone)]
pub struct SubdomainSettings {
    /// Tenant `acme` is served at `acme<domain_suffix>`; starts with a dot
    /// (`TENANCY_DOMAIN_SUFFIX`).
    pub domain_suffix: String,
    /// Read the host from `X-Forwarded-Host` (only behind a proxy that sets it;
    /// `TENANCY_TRUST_FORWARDED_HOST`).
    pub trust_forwarded_host: bool,
}

impl SubdomainSettings {
    pub const KEYS: &[Key] = &[
        ("domain_suffix", None),
        ("trust_forwarded_host", Some("false")),
    ];

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let domain_suffix = src
            .required(
                "domain_suffix",
                "the domain under which tenants live, e.g. .example.com",
            )?
            .to_ascii_lowercase();
        let valid = domain_suffix.len() > 1
            && domain_suffix.starts_with('.')
            && !domain_suffix.ends_with('.')
            && domain_suffix[1..].split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(ConfigError::invalid(
                "domain_suffix",
                "must look like .example.com (a leading dot, DNS labels, no port)",
            ));
        }
        Ok(Self {
            domain_suffix,
            trust_forwarded_host: src.boolean("trust_forwarded_host")?,
        })
    }
}

pub fn resolve(req: &mut ServiceRequest, settings: &SubdomainSettings) -> Found {
    // Which host the request is for, in this order: the value your proxy added to
    // X-Forwarded-Host (the last one: a proxy that appends puts a client's own value
    // before it), only when trusted; the authority of an absolute-form request URI
    // (`GET http://acme.example.com/...`, which RFC 9112 says wins over Host); Host.
    let forwarded = settings
        .trust_forwarded_host
        .then(|| req.headers().get_all("x-forwarded-host").last())
        .flatten();
    let host = if let Some(value) = forwarded {
        match value.to_str() {
            Ok(value) => Some(value.rsplit(',').next().unwrap_or("").trim().to_owned()),
            Err(_) => return malformed("the host is not visible ASCII"),
        }
    } else if let Some(authority) = req.uri().authority() {
        Some(authority.host().to_owned())
    } else {
        match req.headers().get(header::HOST).map(|value| value.to_str()) {
            Some(Ok(value)) => Some(value.trim().to_owned()),
            Some(Err(_)) => return malformed("the host is not visible ASCII"),
            None => None,
        }
    };
    match host {
        Some(host) if !host.is_empty() => tenant_from_host(&host, &settings.domain_suffix),
        _ => nothing(&settings.domain_suffix),
    }
}

/// The tenant named by `host` under `suffix` (`.example.com`).
fn tenant_from_host(host: &str, suffix: &str) -> Found {
    if host.starts_with('[') {
        // An IPv6 address.
        return nothing(suffix);
    }
    let without_port = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = without_port.to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    if name == suffix.trim_start_matches('.') {
        return nothing(suffix);
    }
    let Some(label) = name.strip_suffix(suffix) else {
        // Another domain, an IPv4 address, `localhost`: not a tenant's address.
        return nothing(suffix);
    };
    if label.contains('.') {
        return malformed("nested subdomains name no tenant");
    }
    Found::identifier(label)
}

fn nothing(suffix: &str) -> Found {
    Found::Nothing {
        hint: format!("address the service as <tenant>{suffix}"),
    }
}

fn malformed(why: &str) -> Found {
    Found::Rejected(Rejection::Malformed(why.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_suffix_is_required_and_checked() {
        let read = |pairs: &[(&str, &str)]| {
            SubdomainSettings::read(&Source::of(pairs, SubdomainSettings::KEYS))
        };
        let settings = read(&[("TENANCY_DOMAIN_SUFFIX", ".Example.COM")]).unwrap();
        assert_eq!(settings.domain_suffix, ".example.com");
        assert!(!settings.trust_forwarded_host);
        for bad in [
            &[][..],
            &[("TENANCY_DOMAIN_SUFFIX", "example.com")],
            &[("TENANCY_DOMAIN_SUFFIX", ".example.com:443")],
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.starts_with("TENANCY_DOMAIN_SUFFIX"), "{err}");
        }
    }
    use crate::domain::TenantIdentifier;
    use proptest::prelude::*;

    const SUFFIX: &str = ".example.com";

    fn tenant(host: &str) -> Option<String> {
        match tenant_from_host(host, SUFFIX) {
            Found::Tenant(tenant) => Some(tenant.to_string()),
            _ => None,
        }
    }

    #[test]
    fn hosts_are_handled_deliberately() {
        let cases: &[(&str, Option<&str>)] = &[
            ("acme.example.com", Some("acme")),
            ("acme.example.com:8443", Some("acme")),
            ("ACME.Example.COM", Some("acme")),
            ("acme.example.com.", Some("acme")),
            ("example.com", None),
            ("acme.example.org", None),
            ("acmeexample.com", None),
            ("a.b.example.com", None),
            ("127.0.0.1", None),
            ("127.0.0.1:8000", None),
            ("[::1]:8000", None),
            ("xn--caf-dma.example.com", None),
            ("ac_me.example.com", Some("ac_me")),
            ("1acme.example.com", None),
            ("", None),
        ];
        for (host, expected) in cases {
            assert_eq!(tenant(host).as_deref(), *expected, "{host}");
        }
    }

    #[test]
    fn hosts_outside_the_suffix_name_no_tenant_and_inside_it_an_unknown_one() {
        for host in [
            "example.com",
            "acme.example.org",
            "127.0.0.1:8000",
            "[::1]:8000",
            "localhost",
        ] {
            assert!(
                matches!(tenant_from_host(host, SUFFIX), Found::Nothing { .. }),
                "{host}"
            );
        }
        for host in [
            "a.b.example.com",
            "xn--caf-dma.example.com",
            "1acme.example.com",
        ] {
            assert!(
                matches!(
                    tenant_from_host(host, SUFFIX),
                    Found::Rejected(Rejection::Malformed(_))
                ),
                "{host}"
            );
        }
    }

    proptest! {
        #[test]
        fn no_host_panics_and_what_is_accepted_is_valid(host in "\\PC{0,80}") {
            if let Found::Tenant(id) = tenant_from_host(&host, SUFFIX) {
                prop_assert!(TenantIdentifier::parse(id.as_str()).is_ok());
            }
        }
    }
}
