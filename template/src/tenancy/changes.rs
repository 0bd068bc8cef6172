//! Every replica hears of every change to the tenant registry within a second, whoever
//! made it (this process, another replica, the CLI, plain SQL): a trigger on
//! `tenancy.tenants` announces each change with `NOTIFY` when its transaction commits
//! (control migration `notify_tenant_changes`), and each replica keeps one connection
//! that listens and applies the announcements to its cache.
//!
//! That connection counts against PostgreSQL's `max_connections` (one per replica) and
//! needs a direct connection or a session-mode pooler: `LISTEN` does not work through
//! PgBouncer in transaction mode. While it is down the cache trusts its entries for at
//! most a second and `/health` says `degraded`; it reconnects by itself and then starts
//! from an empty cache, so an announcement missed meanwhile leaves nothing stale.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::cache::{Change, TenantCache};
{%- if redis_cache %}
use super::shared_cache::SharedCache;
{%- endif %}
use crate::db::connect;
use crate::db::tls::PgConfig;

/// The channel the registry's trigger announces changes on.
pub const CHANNEL: &str = "tenancy_tenant_changes";
/// How often the listening connection is checked, and how long it may take to answer.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_LIMIT: Duration = Duration::from_secs(2);
/// Waits between attempts to listen again: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_LAST: Duration = Duration::from_secs(2);

/// Listens until `stop` is cancelled, on the database runtime. Returns once the first
/// attempt to listen has succeeded or failed (it keeps trying in the background).
pub async fn watch(
    config: PgConfig,
    cache: Arc<TenantCache>,
{%- if redis_cache %}
    shared: Arc<SharedCache>,
{%- endif %}
    runtime: &Handle,
    stop: CancellationToken,
) {
    let (first, first_done) = tokio::sync::oneshot::channel();
    let task_runtime = runtime.clone();
    runtime.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = listen_forever(config, &cache, {% if redis_cache %}&shared, {% endif %}&task_runtime, first) => {}
        }
        cache.watching_stopped();
    });
    let _ = first_done.await;
}

async fn listen_forever(
    config: PgConfig,
    cache: &TenantCache,
{%- if redis_cache %}
    shared: &Arc<SharedCache>,
{%- endif %}
    runtime: &Handle,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut retry = RETRY_FIRST;
    let mut failing = false;
    loop {
        match connect::listen(config.clone(), runtime, CHANNEL).await {
            Ok(mut listener) => {
{%- if redis_cache %}
                // Changes made while no replica listened reached nobody: Redis starts
                // empty too (its reads wait until this is done).
                shared.forget_all().await;
{%- endif %}
                cache.watching_started();
                if failing {
                    tracing::info!("tenant changes are received again; the cache starts empty");
                }
                retry = RETRY_FIRST;
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
                let why = receive(&mut listener, cache{% if redis_cache %}, shared{% endif %}).await;
                cache.watching_stopped();
                tracing::warn!(
                    error = %why,
                    "tenant changes are not received: cache entries are trusted for 1 s \
                     until they are"
                );
                failing = true;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        error = %error,
                        "cannot listen for tenant changes: cache entries are trusted for 1 s \
                         until it can"
                    );
                }
                failing = true;
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_LAST);
    }
}

/// Applies announcements until the connection fails; returns why it stopped.
{%- if redis_cache %}
async fn receive(
    listener: &mut connect::Listener,
    cache: &TenantCache,
    shared: &Arc<SharedCache>,
) -> String {
{%- else %}
async fn receive(listener: &mut connect::Listener, cache: &TenantCache) -> String {
{%- endif %}
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            payload = listener.notifications.recv() => match payload {
                Some(payload) => match Change::parse(&payload) {
                    Some(change) => {
{%- if redis_cache %}
                        // Redis first: a request between the two must not find the old
                        // state there and bring it back into this process's cache.
                        shared.forget(&change).await;
{%- endif %}
                        cache.apply(&change);
                    }
                    None => {
                        tracing::warn!(payload = %payload, "unreadable tenant change: the cache starts again");
                        cache.forget_all();
                    }
                },
                None => return "the listening connection closed".into(),
            },
            _ = ping.tick() => {
                if let Err(why) = listener.ping(PING_LIMIT).await {
                    return why;
                }
            }
        }
    }
}
