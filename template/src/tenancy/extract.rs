//! Extractors: what a handler asks for to work on the current tenant.
//!
//! `Tenant` is the resolved tenant; `TenantConnection` a connection bound to it. A
//! handler that takes either on a route without a resolved tenant gets an error, never
//! an unscoped connection.

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::future::LocalBoxFuture;

use super::Tenancy;
use crate::db::{RequestTransactions, TenantConnection};
use crate::domain::Tenant;
use crate::error::AppError;

/// Set on a request whose tenant connection waited in line (`/metrics` counts it).
#[derive(Clone, Copy)]
pub struct WaitedForConnection;

/// The service's `Tenancy`, registered as app data by `startup::app`.
pub(crate) fn tenancy(req: &HttpRequest) -> Result<web::Data<Tenancy>, AppError> {
    req.app_data::<web::Data<Tenancy>>()
        .cloned()
        .ok_or_else(|| AppError::internal("Tenancy is not registered as app data"))
}

fn current_tenant(req: &HttpRequest) -> Result<Arc<Tenant>, AppError> {
    req.extensions()
        .get::<Arc<Tenant>>()
        .cloned()
        .ok_or_else(|| {
            AppError::internal(format!(
                "no tenant was resolved for {}: is the route outside the /api scope?",
                req.path()
            ))
        })
}

impl FromRequest for Tenant {
    type Error = AppError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(current_tenant(req).map(|tenant| Tenant::clone(&tenant)))
    }
}

impl FromRequest for TenantConnection {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let tenant = current_tenant(req);
        let tenancy = tenancy(req);
        // Transaction mode: the tenant middleware finishes its transaction.
        let request = req.extensions().get::<RequestTransactions>().cloned();
        let req = req.clone();
        Box::pin(async move {
            let (tenant, tenancy) = (tenant?, tenancy?);
            let conn = tenancy.tenant_connection_in(&tenant, request).await?;
            if conn.waited() {
                req.extensions_mut().insert(WaitedForConnection);
            }
            Ok(conn)
        })
    }
}
