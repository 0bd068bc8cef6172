//! HTTP routes. Only the routes under `/api` belong to a tenant: the tenant middleware
//! wraps that scope alone, so health, metrics and the admin API never need one. Handlers
//! under `/api` are tenant-scoped through extractors and contain no tenancy code of
//! their own; a public route goes outside `/api`.
{%- if admin_api %}

pub mod admin;
{%- endif %}
pub mod docs;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod notes;

use std::fmt;
use std::marker::PhantomData;

use actix_web::dev::Payload;
use actix_web::middleware::from_fn;
use actix_web::{FromRequest, HttpRequest, http::header, web};
use futures_util::future::LocalBoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::tenancy::middleware::resolve_tenant;

/// The tenant-scoped API: every request under `/api` names a known, active tenant, or
/// ends in the middleware with a problem+json error.
pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api")
            .wrap(from_fn(resolve_tenant))
            .configure(notes::routes)
            .configure(jobs::routes),
    );
}

/// Whether the request carries exactly one `Authorization: Bearer <expected>` (compared in
/// constant time). With two Authorization headers, a proxy's and a client's, neither is
/// trusted.
pub(crate) fn bearer_is(req: &HttpRequest, expected: &SecretString) -> bool {
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| {
                bool::from(
                    expected
                        .expose_secret()
                        .as_bytes()
                        .ct_eq(presented.trim().as_bytes()),
                )
            }),
        _ => false,
    }
}

/// A JSON body, or a member of one, that must be an object. serde's derived
/// `Deserialize` also reads a struct written as an array of its members in order
/// (`["title", "body"]` for a note), which the OpenAPI document does not allow and no
/// client means; every request body is extracted as an `Object`, and a struct nested in
/// a body is held in one. As an extractor it is `web::Json` (the same limit and errors).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OnlyMaps<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OnlyMaps<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(OnlyMaps(PhantomData))
            .map(Object)
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Object<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = web::Json::<Self>::from_request(req, payload);
        Box::pin(async move { Ok(json.await?.into_inner()) })
    }
}

#[cfg(test)]
mod tests {
    use super::Object;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Pair {
        a: u8,
        b: Option<u8>,
    }

    #[test]
    fn an_object_is_read_and_an_array_is_not() {
        let read: Object<Pair> = serde_json::from_str(r#"{"a": 1, "b": null}"#).unwrap();
        assert_eq!(read.0, Pair { a: 1, b: None });
        // The derived Deserialize alone takes both.
        assert!(serde_json::from_str::<Pair>("[1, null]").is_ok());
        for refused in ["[1, null]", "[1]", "null", "1", r#""a""#] {
            let err = serde_json::from_str::<Object<Pair>>(refused).unwrap_err();
            assert!(
                err.to_string().contains("expected a JSON object"),
                "{refused}: {err}"
            );
        }
    }
}
