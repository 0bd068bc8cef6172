//! JWT resolution: the tenant is a claim (`TENANCY_JWT_TENANT_CLAIM`, default `tenant_id`)
//! of the bearer token in `Authorization`, after its signature and times are verified.
//!
//! Trust model: whoever holds a valid token for a tenant reaches that tenant, and nobody
//! else can name it: the issuer of the tokens decides. Keys: an HMAC secret
//! (`TENANCY_JWT_SECRET`, at least 32 bytes, HS256/384/512), or a public key
//! (`TENANCY_JWT_PUBLIC_KEY_FILE`, PEM) or key set (`TENANCY_JWT_JWKS_FILE`) for
//! RS*/PS*/ES256/ES384/EdDSA. The accepted algorithms are pinned
//! (`TENANCY_JWT_ALGORITHMS`), and HMAC is never accepted with a public key, so neither
//! `alg: none` nor a public key used as an HMAC secret gets through. `exp` is required;
//! `nbf` is checked when present, `iss` and `aud` when configured, with
//! `TENANCY_JWT_LEEWAY` seconds of clock skew. Every refusal is the same 401 with
//! `WWW-Authenticate: Bearer`; which check failed is told only with
//! `TENANCY_ERROR_DETAILS`.

use std::collections::HashMap;
use std::fmt;
use std::future::{Ready, ready};
use std::str::FromStr;
use std::sync::Arc;

use actix_web::dev::{Payload, ServiceRequest};
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::found::{Found, Rejection};
use crate::error::AppError;
use crate::settings::{ConfigError, Key, Source};

/// HMAC secrets shorter than this are refused (RFC 7518: a key as long as the hash).
const MIN_SECRET_LEN: usize = 32;
/// Longer tokens are refused before they are parsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
const HINT: &str = "send a bearer token (Authorization: Bearer <jwt>)";

/// The JWT settings as read from `TENANCY_JWT_*`, before they are checked.
pub struct JwtConfig<'a> {
    pub secret: Option<&'a str>,
    pub public_key_file: Option<&'a str>,
    pub jwks_file: Option<&'a str>,
    pub algorithms: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub leeway: u64,
    pub tenant_claim: &'a str,
}

enum Keys {
    One(DecodingKey),
    /// By `kid`; a set of one key also verifies tokens without a `kid`.
    Set(HashMap<String, DecodingKey>),
}

/// Verifies tokens: keys, pinned algorithms and claim checks, fixed at start-up.
pub struct Verifier {
    keys: Keys,
    validation: Validation,
    tenant_claim: String,
    source: String,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Verifier")
            .field("keys", &self.source)
            .field("algorithms", &self.validation.algorithms)
            .field("tenant_claim", &self.tenant_claim)
            .finish()
    }
}

/// A refused setting: the `TENANCY_*` key (lowercase, without the prefix) and why.
pub type Refusal = (&'static str, String);

impl Verifier {
    pub const KEYS: &[Key] = &[
        ("jwt_secret", None),
        ("jwt_public_key_file", None),
        ("jwt_jwks_file", None),
        ("jwt_algorithms", None),
        ("jwt_issuer", None),
        ("jwt_audience", None),
        ("jwt_leeway", Some("30")),
        ("jwt_tenant_claim", Some("tenant_id")),
    ];

    /// The verifier `TENANCY_JWT_*` describe.
    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let value = |key| src.optional(key);
        let (secret, public_key_file, jwks_file) = (
            value("jwt_secret"),
            value("jwt_public_key_file"),
            value("jwt_jwks_file"),
        );
        let (algorithms, issuer, audience) = (
            value("jwt_algorithms"),
            value("jwt_issuer"),
            value("jwt_audience"),
        );
        Self::new(JwtConfig {
            secret: secret.as_deref(),
            public_key_file: public_key_file.as_deref(),
            jwks_file: jwks_file.as_deref(),
            algorithms: algorithms.as_deref(),
            issuer: issuer.as_deref(),
            audience: audience.as_deref(),
            leeway: src.number("jwt_leeway", 0, 3600)?,
            tenant_claim: &src.get("jwt_tenant_claim"),
        })
        .map_err(|(key, message)| ConfigError::invalid(key, message))
    }

    pub fn new(config: JwtConfig<'_>) -> Result<Self, Refusal> {
        let algorithms = match config.algorithms {
            Some(list) => parse_algorithms(list)?,
            None if config.secret.is_some() => vec![Algorithm::HS256],
            None => {
                return Err((
                    "jwt_algorithms",
                    "is required with a public key or a JWKS file, e.g. RS256".into(),
                ));
            }
        };
        let (keys, source) = match (config.secret, config.public_key_file, config.jwks_file) {
            (Some(secret), None, None) => (secret_key(secret, &algorithms)?, "secret".to_owned()),
            (None, Some(path), None) => (public_key(path, &algorithms)?, path.to_owned()),
            (None, None, Some(path)) => {
                refuse_hmac(&algorithms)?;
                (key_set(path)?, path.to_owned())
            }
            _ => {
                return Err((
                    "jwt_secret",
                    "set exactly one of TENANCY_JWT_SECRET, TENANCY_JWT_PUBLIC_KEY_FILE and \
                     TENANCY_JWT_JWKS_FILE"
                        .into(),
                ));
            }
        };
        let validation = validation(algorithms, &config);
        if config.tenant_claim.is_empty() {
            return Err(("jwt_tenant_claim", "must not be empty".into()));
        }
        Ok(Self {
            keys,
            validation,
            tenant_claim: config.tenant_claim.to_owned(),
            source,
        })
    }

    /// The claims of `token` if it passes every check; otherwise why not (for logs and
    /// `error_details` only).
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!("the token is longer than {MAX_TOKEN_BYTES} bytes"));
        }
        let key = match &self.keys {
            Keys::One(key) => key,
            Keys::Set(keys) => {
                let kid = jsonwebtoken::decode_header(token)
                    .map_err(|e| e.to_string())?
                    .kid;
                match (kid, keys.len()) {
                    (Some(kid), _) => keys
                        .get(&kid)
                        .ok_or_else(|| format!("no key '{kid}' in the JWKS"))?,
                    (None, 1) => keys.values().next().ok_or("empty JWKS")?,
                    (None, _) => return Err("the token names no key (kid)".into()),
                }
            }
        };
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| e.to_string())
    }
}

impl Verifier {
    /// The tenant claim of verified `claims`.
    pub fn tenant_of(&self, claims: &Map<String, Value>) -> Found {
        match claims.get(&self.tenant_claim) {
            Some(Value::String(name)) => Found::identifier(name),
            Some(_) => refused(format!(
                "the token's {} claim is not a string",
                self.tenant_claim
            )),
            None => refused(format!("the token has no {} claim", self.tenant_claim)),
        }
    }
}

fn parse_algorithms(list: &str) -> Result<Vec<Algorithm>, Refusal> {
    let algorithms = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|name| {
            Algorithm::from_str(name).map_err(|_| {
                (
                    "jwt_algorithms",
                    format!(
                        "'{name}' is not accepted: use HS256, HS384, HS512, RS256, RS384, RS512, \
                         PS256, PS384, PS512, ES256, ES384 or EdDSA ('none' never is)"
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if algorithms.is_empty() {
        return Err(("jwt_algorithms", "names no algorithm".into()));
    }
    Ok(algorithms)
}

/// What the claims must hold: `exp`, and `iss` and `aud` when configured.
fn validation(algorithms: Vec<Algorithm>, config: &JwtConfig<'_>) -> Validation {
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.leeway = config.leeway;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    match config.issuer {
        Some(issuer) => {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        None => validation.iss = None,
    }
    match config.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// TENANCY_JWT_SECRET: long enough, for HS* only.
fn secret_key(secret: &str, algorithms: &[Algorithm]) -> Result<Keys, Refusal> {
    if secret.len() < MIN_SECRET_LEN {
        return Err((
            "jwt_secret",
            format!("must be at least {MIN_SECRET_LEN} bytes (try: openssl rand -base64 48)"),
        ));
    }
    if algorithms
        .iter()
        .any(|a| a.family() != AlgorithmFamily::Hmac)
    {
        return Err((
            "jwt_algorithms",
            "a secret verifies HS256, HS384 or HS512 only".into(),
        ));
    }
    Ok(Keys::One(DecodingKey::from_secret(secret.as_bytes())))
}

/// TENANCY_JWT_PUBLIC_KEY_FILE: one PEM key, for one family of algorithms.
fn public_key(path: &str, algorithms: &[Algorithm]) -> Result<Keys, Refusal> {
    refuse_hmac(algorithms)?;
    let family = algorithms[0].family();
    if algorithms.iter().any(|a| a.family() != family) {
        return Err((
            "jwt_algorithms",
            "one public key verifies one family of algorithms (RS*/PS*, ES* or EdDSA)".into(),
        ));
    }
    let pem = std::fs::read(path)
        .map_err(|e| ("jwt_public_key_file", format!("cannot read {path}: {e}")))?;
    let key = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
        _ => DecodingKey::from_ed_pem(&pem),
    }
    .map_err(|e| {
        (
            "jwt_public_key_file",
            format!(
                "{path} is not a PEM public key for {:?}: {e}",
                algorithms[0]
            ),
        )
    })?;
    Ok(Keys::One(key))
}

/// TENANCY_JWT_JWKS_FILE: a JWKS of at least one key, by `kid`.
fn key_set(path: &str) -> Result<Keys, Refusal> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ("jwt_jwks_file", format!("cannot read {path}: {e}")))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| ("jwt_jwks_file", format!("{path} is not a JWKS: {e}")))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| ("jwt_jwks_file", format!("key {i} of {path}: {e}")))?;
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err(("jwt_jwks_file", format!("{path} has no keys")));
    }
    Ok(Keys::Set(keys))
}

fn refuse_hmac(algorithms: &[Algorithm]) -> Result<(), Refusal> {
    if algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac)
    {
        return Err((
            "jwt_algorithms",
            "HS* algorithms need TENANCY_JWT_SECRET and are never accepted with a public key \
             (a public key used as an HMAC secret would verify forged tokens)"
                .into(),
        ));
    }
    Ok(())
}

/// The verified claims of the request's token, for handlers:
/// `async fn me(claims: Claims)`. A request whose tenant came without a token (another
/// resolver of a chain) has none: the extractor then answers 401.
#[derive(Debug, Clone)]
pub struct Claims(Arc<Map<String, Value>>);

impl Claims {
    /// The token's subject (`sub`), if it has a string one.
    pub fn subject(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }
}

impl FromRequest for Claims {
    type Error = AppError;
    type Future = Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Claims>()
                .cloned()
                .ok_or_else(|| unauthorized("this request carries no verified token")),
        )
    }
}

fn unauthorized(detail: impl Into<String>) -> AppError {
    AppError::Unauthorized {
        detail: detail.into(),
    }
}

fn refused(why: impl Into<String>) -> Found {
    Found::Rejected(Rejection::Credentials(why.into()))
}

/// The tenant named by the request's token; nothing without `Authorization` (refused
/// when JWT is the only resolver, see `resolve::resolve`); the credentials are refused
/// for a token that fails a check or has no string tenant claim; a claim that is not a
/// valid identifier is rejected as malformed (answered like an unknown tenant).
pub fn resolve(req: &mut ServiceRequest, verifier: &Verifier) -> Found {
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let Some(value) = values.next() else {
        return Found::Nothing { hint: HINT.into() };
    };
    if values.next().is_some() {
        return Found::Rejected(Rejection::Repeated(
            "the request carries more than one Authorization header".into(),
        ));
    }
    let bearer = value.to_str().ok().and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    });
    let Some(token) = bearer.map(str::trim) else {
        return refused("the Authorization header is not a bearer token");
    };
    let claims = match verifier.verify(token) {
        Ok(claims) => claims,
        Err(why) => return refused(why),
    };
    let found = verifier.tenant_of(&claims);
    if let Found::Tenant(_) = found {
        req.extensions_mut().insert(Claims(Arc::new(claims)));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantIdentifier;

    fn config(
        secret: Option<&'static str>,
        algorithms: Option<&'static str>,
    ) -> JwtConfig<'static> {
        JwtConfig {
            secret,
            public_key_file: None,
            jwks_file: None,
            algorithms,
            issuer: None,
            audience: None,
            leeway: 0,
            tenant_claim: "tenant_id",
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn settings_that_would_weaken_verification_are_refused() {
        let refused = |c| Verifier::new(c).err().map(|(key, _)| key);
        assert_eq!(refused(config(Some("short"), None)), Some("jwt_secret"));
        assert_eq!(
            refused(config(Some(SECRET), Some("none"))),
            Some("jwt_algorithms")
        );
        assert_eq!(
            refused(config(Some(SECRET), Some("RS256"))),
            Some("jwt_algorithms")
        );
        assert_eq!(
            refused(config(Some(SECRET), Some(""))),
            Some("jwt_algorithms")
        );
        assert_eq!(refused(config(None, None)), Some("jwt_algorithms"));
        assert_eq!(refused(config(None, Some("RS256"))), Some("jwt_secret"));
        assert!(Verifier::new(config(Some(SECRET), Some("HS256,HS512"))).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn no_token_panics_the_verifier(token in "\\PC{0,300}") {
            let verifier = Verifier::new(config(Some(SECRET), None)).unwrap();
            proptest::prop_assert!(verifier.verify(&token).is_err());
        }

        #[test]
        fn what_is_accepted_from_a_claim_is_the_claim_and_valid(claim in "\\PC{0,80}") {
            let verifier = Verifier::new(config(Some(SECRET), None)).unwrap();
            let mut claims = Map::new();
            claims.insert("tenant_id".into(), Value::String(claim.clone()));
            if let Found::Tenant(tenant) = verifier.tenant_of(&claims) {
                proptest::prop_assert_eq!(tenant.as_str(), claim.as_str());
                proptest::prop_assert!(TenantIdentifier::parse(tenant.as_str()).is_ok());
            }
        }
    }
}
