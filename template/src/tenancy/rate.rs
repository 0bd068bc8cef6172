//! Per-tenant request rate limits: a tenant may send `rate` requests a second, `burst` of
//! them at once (GCRA: the generic cell rate algorithm, a leaky bucket without a timer).
//! `TENANCY_RATE_LIMIT` sets it for every tenant; a tenant's own limit in the registry
//! (`tenant limits --rate-limit`) overrides it.
//!
//! The limit is checked once the tenant is known and active (unknown tenants never create
//! any state here), before the request's body is read.{% if redis_cache %} It holds across every replica:
//! Redis keeps each tenant's state and one script, using Redis's own clock, decides
//! atomically (`TAKE`). When Redis cannot say, the
//! request passes (`TENANCY_RATE_LIMIT_REDIS_DOWN=open`, the default) or gets 503
//! (`closed`), and `/health` says so.{% else %} It holds per process (`governor`): with
//! N replicas a tenant may send up to N times the limit.{% endif %}

{% if redis_cache -%}
use std::sync::Arc;
{% else -%}
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
{% endif -%}
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
{% unless redis_cache %}
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultDirectRateLimiter, Quota};
{%- endunless %}
use uuid::Uuid;

{% if redis_cache -%}
use super::shared_cache::SharedCache;
{% endif -%}
use crate::domain::Tenant;
use crate::settings::{ConfigError, Key, Source};
{%- if redis_cache %}

/// GCRA on one tenant's key, by Redis's clock: the key holds the theoretical arrival time
/// (µs) of the next request; a request is let through unless that lies more than the
/// burst ahead. ARGV: the interval between requests (µs), the burst. Returns (1, requests
/// left at once, µs until the bucket is full) or (0, 0, µs to wait).
const TAKE: &str = r"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - burst * interval
if allowed_at > now then
    return {0, 0, allowed_at - now}
end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000) + 1)
return {1, math.floor((now - allowed_at) / interval), next_tat - now}
";
{%- endif %}

#[derive(Debug, Clone)]
pub struct RateSettings {
    /// Requests a second one tenant may send (`TENANCY_RATE_LIMIT`; none: no limit but a
    /// tenant's own).
    pub rate: Option<u32>,
    /// Requests one tenant may send at once (`TENANCY_RATE_LIMIT_BURST`; default: one
    /// second's worth).
    pub burst: Option<u32>,
{%- if redis_cache %}
    /// Whether requests pass when Redis cannot say (`TENANCY_RATE_LIMIT_REDIS_DOWN`).
    pub fail_open: bool,
{%- endif %}
}

/// The most requests a second (and at once) a limit may allow.
pub const MAX_RATE: u32 = 1_000_000;

impl RateSettings {
    pub const KEYS: &[Key] = &[
        ("rate_limit", None),       // none: no limit but a tenant's own
        ("rate_limit_burst", None), // none: one second's worth
{%- if redis_cache %}
        ("rate_limit_redis_down", Some("open")),
{%- endif %}
    ];

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let optional = |key: &str| match src.optional(key) {
            Some(_) => src.number(key, 1, MAX_RATE).map(Some),
            None => Ok(None),
        };
        Ok(Self {
            rate: optional("rate_limit")?,
            burst: optional("rate_limit_burst")?,
{%- if redis_cache %}
            fail_open: match src.get("rate_limit_redis_down").as_str() {
                "open" => true,
                "closed" => false,
                _ => {
                    return Err(ConfigError::invalid(
                        "rate_limit_redis_down",
                        "must be open (requests pass while Redis cannot say) or closed \
                         (they get 503)",
                    ));
                }
            },
{%- endif %}
        })
    }
}

/// One tenant's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// `tenant`'s limit: its own, else the setting's; `None`: it has none.
    pub fn of(settings: &RateSettings, tenant: &Tenant) -> Option<Self> {
        let own = tenant.limits.rate_limit.map(|n| n.get());
        let per_second = own.or(settings.rate)?;
        let burst = (tenant.limits.rate_limit_burst.map(|n| n.get()))
            .or(own.is_none().then_some(settings.burst).flatten())
            .unwrap_or(per_second);
        Some(Self { per_second, burst })
    }

    /// The time one request takes from the bucket.
    pub fn interval(self) -> Duration {
        Duration::from_secs(1) / self.per_second
    }

    /// The `RateLimit-Policy` header: `burst` requests in the seconds it takes to refill.
    pub fn policy(self) -> String {
        let window = u64::from(self.burst).div_ceil(u64::from(self.per_second));
        format!("\"tenant\";q={};w={}", self.burst, window.max(1))
    }
}

/// What the limiter says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Served; `remaining` more may follow at once, the bucket is full again in `reset`.
    Allowed { remaining: u32, reset: Duration },
    /// Over the limit: 429, to be retried after `retry_after`.
    Limited { retry_after: Duration },
{%- if redis_cache %}
    /// Redis could not say and the limit fails closed: 503.
    Unknown,
{%- endif %}
}

impl Verdict {
    /// The `RateLimit` header.
    pub fn state(self) -> String {
        let (remaining, reset) = match self {
            Verdict::Allowed { remaining, reset } => (remaining, reset),
            Verdict::Limited { retry_after } => (0, retry_after),
{%- if redis_cache %}
            Verdict::Unknown => (0, Duration::from_secs(1)),
{%- endif %}
        };
        format!("\"tenant\";r={remaining};t={}", seconds(reset))
    }
}

/// Whole seconds, rounded up: what `Retry-After` and `RateLimit` carry.
pub fn seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The limits of every tenant that sent a request.
pub struct RateLimiter {
    settings: RateSettings,
{%- if redis_cache %}
    shared: Arc<SharedCache>,
{%- else %}
    /// One GCRA state per tenant seen, with the rate it was made for.
    local: Mutex<HashMap<Uuid, (Rate, DefaultDirectRateLimiter<StateInformationMiddleware>)>>,
{%- endif %}
    /// Requests answered 429.
    limited: AtomicU64,
}

impl RateLimiter {
{%- if redis_cache %}
    pub fn new(settings: RateSettings, shared: Arc<SharedCache>) -> Self {
        Self {
            settings,
            shared,
            limited: AtomicU64::new(0),
        }
    }
{%- else %}
    pub fn new(settings: RateSettings) -> Self {
        Self {
            settings,
            local: Mutex::default(),
            limited: AtomicU64::new(0),
        }
    }
{%- endif %}

    /// Takes one request of `tenant` from its bucket; `None` when it has no limit.
    pub async fn check(&self, tenant: &Tenant) -> Option<(Rate, Verdict)> {
        let rate = Rate::of(&self.settings, tenant)?;
{%- if redis_cache %}
        let verdict = match self.take(tenant.id, rate).await {
            Some(verdict) => verdict,
            None if self.settings.fail_open => return None,
            None => Verdict::Unknown,
        };
{%- else %}
        let verdict = self.take(tenant.id, rate);
{%- endif %}
        if let Verdict::Limited { .. } = verdict {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        Some((rate, verdict))
    }
{%- if redis_cache %}

    /// Takes one request of `tenant` from its bucket in Redis, for every replica at once;
    /// `None` when Redis cannot say.
    async fn take(&self, tenant: Uuid, rate: Rate) -> Option<Verdict> {
        let interval = rate.interval().as_micros().max(1);
        let args = vec![interval.to_string(), rate.burst.to_string()];
        let (allowed, remaining, wait) = self
            .shared
            .rate_script::<(i64, i64, i64)>(TAKE, tenant, args)
            .await?;
        let micros = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
        Some(if allowed == 1 {
            Verdict::Allowed {
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset: micros,
            }
        } else {
            Verdict::Limited {
                retry_after: micros,
            }
        })
    }
{%- else %}

    fn take(&self, tenant: Uuid, rate: Rate) -> Verdict {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let limiter = match local.get(&tenant) {
            Some((made_for, limiter)) if *made_for == rate => limiter,
            // First seen, or its limit changed: a full bucket.
            _ => {
                let quota = Quota::with_period(rate.interval())
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN));
                let limiter = DefaultDirectRateLimiter::direct(quota)
                    .with_middleware::<StateInformationMiddleware>();
                &local
                    .entry(tenant)
                    .insert_entry((rate, limiter))
                    .into_mut()
                    .1
            }
        };
        match limiter.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                Verdict::Allowed {
                    remaining,
                    reset: rate.interval() * (rate.burst - remaining.min(rate.burst)),
                }
            }
            Err(not_until) => Verdict::Limited {
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            },
        }
    }

    /// Tenants with a bucket in this process.
    pub fn tracked(&self) -> usize {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
{%- endif %}

    /// Requests answered 429 since start.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// What `/health` shows.
    pub fn stats(&self) -> RateStats {
        RateStats {
            rate: self.settings.rate,
            burst: self.settings.burst,
            limited: self.limited(),
{%- if redis_cache %}
            held_in: "redis",
            when_redis_is_down: if self.settings.fail_open {
                "open"
            } else {
                "closed"
            },
            degraded: self.shared.stats().degraded.map(|why| {
                let then = match self.settings.fail_open {
                    true => "requests pass unlimited",
                    false => "limited tenants' requests get 503",
                };
                format!("Redis cannot say ({why}): {then}")
            }),
{%- else %}
            held_in: "process",
{%- endif %}
        }
    }
}

/// What `/health` shows of the rate limits.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RateStats {
    /// The setting (`None`: only tenants with a limit of their own are limited).
    pub rate: Option<u32>,
    pub burst: Option<u32>,
    /// Requests answered 429 since start.
    pub limited: u64,
    /// Where the buckets are: `process` (each replica its own) or `redis` (shared).
    pub held_in: &'static str,
{%- if redis_cache %}
    /// `open` or `closed` (`TENANCY_RATE_LIMIT_REDIS_DOWN`).
    pub when_redis_is_down: &'static str,
    /// Why limits are not applied as set now, if they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
{%- endif %}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_say_the_policy_and_what_is_left() {
        let rate = Rate {
            per_second: 10,
            burst: 25,
        };
        assert_eq!(rate.policy(), "\"tenant\";q=25;w=3");
        assert_eq!(rate.interval(), Duration::from_millis(100));
        let allowed = Verdict::Allowed {
            remaining: 4,
            reset: Duration::from_millis(2100),
        };
        assert_eq!(allowed.state(), "\"tenant\";r=4;t=3");
        let limited = Verdict::Limited {
            retry_after: Duration::from_millis(100),
        };
        assert_eq!(limited.state(), "\"tenant\";r=0;t=1");
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_secs(2)), 2);
    }
}
