//! The pool's choices, as pure functions over plain state: which connection serves a
//! checkout ([`choose`], [`fit`]) and, when none is free, which waiting checkout the next
//! free connection goes to ([`WaitQueue`]). `pool` moves the connections; nothing here
//! touches one, so every rule is tested below without a server.
//!
//! - **Scope**: a connection carrying one tenant's scope (and statement timeout) is
//!   handed to that tenant as it is, and to any other only to be re-scoped (or, of
//!   another database or with another timeout that cannot be re-scoped, closed).
//! - **Bounds**: a tenant never holds more than its limit; a checkout at its tenant's
//!   limit waits, whatever is free.
//! - **Fairness**: waiters are served tenant by tenant, round robin over the tenants
//!   that wait, first come first served within one tenant; a tenant at its limit keeps
//!   its turn for when it gives a connection back. A tenant with a thousand waiters
//!   delays another tenant's next waiter by at most one connection.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

/// Where a connection is connected: the database tenants share (on the default server, or
/// on another), or one tenant's own database. Only connections of the same home can serve
/// a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Home {
    Shared,
{%- if isolation != "database" %}
    /// The shared connections to another server (its place in `TENANCY_DATABASE_SERVERS`).
    Server(u16),
{%- endif %}
    Tenant(Uuid),
}

/// What the pool knows of an idle connection when it chooses.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub home: Home,
    /// The tenant whose scope the connection carries (session mode), if any.
    pub scope: Option<Uuid>,
    /// Its session's statement timeout in milliseconds (session mode; 0: set per
    /// transaction).
    pub timeout_ms: u64,
    pub key: Key,
}

impl Slot {
    /// Whether it serves `want` as it is.
    fn serves(&self, want: &Want) -> bool {
        self.home == want.home && self.scope == want.scope && self.timeout_ms == want.timeout_ms
    }
}

/// A connection's own number, from which each tenant ranks the connections it prefers.
///
/// With schema per tenant, a PostgreSQL backend loads each tenant's tables into its
/// catalog caches the first time it serves that tenant, and keeps them for its life. A
/// re-scope therefore takes the idle connection that ranks highest for the tenant
/// (rendezvous hashing): a tenant comes back to the same few backends instead of warming
/// every one, so a pool serving thousands of tenants reaches its steady speed sooner and
/// its backends stay smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub u64);

impl Key {
    /// How much `tenant` prefers this connection (splitmix64 of both).
    pub fn rank(self, tenant: Uuid) -> u64 {
        let (high, low) = tenant.as_u64_pair();
        let mut x = self.0 ^ high ^ low.rotate_left(32);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
}

/// What a checkout asks for.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub tenant: Uuid,
    pub home: Home,
    /// The scope a connection must carry to serve as it is (`None`: carried by none,
    /// set per transaction or not needed).
    pub scope: Option<Uuid>,
    /// The statement timeout a connection must carry, in milliseconds (0: set per
    /// transaction). A re-scope sets it with the scope.
    pub timeout_ms: u64,
    /// Whether an idle connection of the same home can be re-scoped to the tenant.
    pub can_rescope: bool,
    /// Connections the tenant holds now.
    pub in_use: u32,
    /// The most it may hold.
    pub limit: u32,
}

/// How an idle connection serves a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// As it is: it carries the scope asked for.
    Use,
    /// Once re-scoped to the tenant.
    Rescope,
    /// Not at all: of another database, it is closed to make room for a new one.
    Evict,
}

/// What a checkout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Take the idle connection at this index, serving as [`Fit`] says.
    Take(usize, Fit),
    /// Open a new connection.
    Open,
    /// Wait in line: nothing is free, or the tenant holds its limit.
    Wait,
}

/// How `want` is served now: `idle` lists the idle connections, least recently returned
/// first; `can_open` says whether the pool may open one more connection.
pub fn choose<'a, I>(want: &Want, idle: I, can_open: bool) -> Choice
where
    I: IntoIterator<Item = &'a Slot>,
    I::IntoIter: DoubleEndedIterator + ExactSizeIterator + Clone,
{
    if want.in_use >= want.limit {
        return Choice::Wait;
    }
    let idle = idle.into_iter();
    // The most recently returned connection already scoped to the tenant.
    if let Some(i) = idle.clone().rposition(|slot| slot.serves(want)) {
        return Choice::Take(i, Fit::Use);
    }
    let rescope = || {
        preferred(want, idle.clone())
            .filter(|_| want.can_rescope)
            .map(|i| Choice::Take(i, Fit::Rescope))
    };
    let open = || can_open.then_some(Choice::Open);
    // A tenant with requests in flight gets a connection of its own while the pool may
    // grow: re-scoping another's would only move the shortage. A tenant with nothing in
    // flight borrows an idle connection, so quiet tenants open none.
    let served = if want.in_use == 0 || !can_open {
        rescope().or_else(open)
    } else {
        open().or_else(rescope)
    };
    served
        // Another database's least recently used idle connection makes room.
        .or_else(|| (idle.len() > 0).then_some(Choice::Take(0, Fit::Evict)))
        .unwrap_or(Choice::Wait)
}

/// Which idle connection goes to a waiter that was given the next free one, and how it
/// serves: the one carrying its scope, else the one of its home it prefers, else the
/// least recently returned of another home. `None` when there is no idle connection.
pub fn fit<'a, I>(want: &Want, idle: I) -> Option<(usize, Fit)>
where
    I: IntoIterator<Item = &'a Slot>,
    I::IntoIter: DoubleEndedIterator + ExactSizeIterator + Clone,
{
    let idle = idle.into_iter();
    if let Some(i) = idle.clone().rposition(|slot| slot.serves(want)) {
        return Some((i, Fit::Use));
    }
    match preferred(want, idle.clone()) {
        Some(i) if want.can_rescope => Some((i, Fit::Rescope)),
        _ => (idle.len() > 0).then_some((0, Fit::Evict)),
    }
}

/// The idle connection of `want`'s home that its tenant ranks highest.
fn preferred<'a>(want: &Want, idle: impl Iterator<Item = &'a Slot>) -> Option<usize> {
    idle.enumerate()
        .filter(|(_, slot)| slot.home == want.home)
        .max_by_key(|(_, slot)| slot.key.rank(want.tenant))
        .map(|(i, _)| i)
}

/// A place in line.
pub type Ticket = u64;

/// The checkouts waiting for a connection, in the order they will be served: tenant by
/// tenant, round robin, and in arrival order within one tenant.
#[derive(Debug, Default)]
pub struct WaitQueue {
    /// The tenants that wait, in turn order.
    turns: VecDeque<Uuid>,
    waiting: HashMap<Uuid, Line>,
    next_ticket: Ticket,
    len: usize,
}

#[derive(Debug)]
struct Line {
    /// The most connections the tenant may hold (its latest waiter's).
    limit: u32,
    tickets: VecDeque<Ticket>,
}

impl WaitQueue {
    /// Puts a checkout of `tenant`, which may hold `limit` connections, in line.
    pub fn join(&mut self, tenant: Uuid, limit: u32) -> Ticket {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let line = self.waiting.entry(tenant).or_insert_with(|| {
            self.turns.push_back(tenant);
            Line {
                limit,
                tickets: VecDeque::new(),
            }
        });
        line.limit = limit;
        line.tickets.push_back(ticket);
        self.len += 1;
        ticket
    }

    /// Takes a checkout out of line (it gave up); `false` when it is not in line any more
    /// (it was served).
    pub fn leave(&mut self, tenant: Uuid, ticket: Ticket) -> bool {
        let Some(line) = self.waiting.get_mut(&tenant) else {
            return false;
        };
        let Some(i) = line.tickets.iter().position(|t| *t == ticket) else {
            return false;
        };
        line.tickets.remove(i);
        self.len -= 1;
        if line.tickets.is_empty() {
            self.waiting.remove(&tenant);
            self.turns.retain(|t| *t != tenant);
        }
        true
    }

    /// The checkout the next free connection goes to: the first waiter of the first
    /// tenant in turn that holds fewer than its limit (`in_use` tells how many it holds).
    /// That tenant's turn moves to the back of the line.
    pub fn next(&mut self, in_use: impl Fn(Uuid) -> u32) -> Option<(Uuid, Ticket)> {
        let position = self.turns.iter().position(|tenant| {
            self.waiting
                .get(tenant)
                .is_some_and(|line| in_use(*tenant) < line.limit)
        })?;
        let tenant = self.turns.remove(position)?;
        let line = self.waiting.get_mut(&tenant)?;
        let ticket = line.tickets.pop_front()?;
        self.len -= 1;
        if line.tickets.is_empty() {
            self.waiting.remove(&tenant);
        } else {
            self.turns.push_back(tenant);
        }
        Some((tenant, ticket))
    }

    /// Checkouts in line.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checkouts in line per tenant.
    pub fn per_tenant(&self) -> impl Iterator<Item = (Uuid, usize)> + '_ {
        self.waiting
            .iter()
            .map(|(tenant, line)| (*tenant, line.tickets.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn want(n: u128, in_use: u32) -> Want {
        Want {
            tenant: tenant(n),
            home: Home::Shared,
            scope: Some(tenant(n)),
            timeout_ms: 30_000,
            can_rescope: true,
            in_use,
            limit: 2,
        }
    }

    fn slot(scope: Option<u128>, key: u64) -> Slot {
        Slot {
            home: Home::Shared,
            scope: scope.map(tenant),
            timeout_ms: 30_000,
            key: Key(key),
        }
    }

    #[test]
    fn a_connection_scoped_to_one_tenant_serves_no_other_as_it_is() {
        let idle = [slot(Some(1), 1), slot(Some(2), 2), slot(None, 3)];
        assert_eq!(choose(&want(2, 0), &idle, true), Choice::Take(1, Fit::Use));
        for n in [3, 4] {
            let Choice::Take(i, fit) = choose(&want(n, 0), &idle, true) else {
                panic!("an idle connection serves tenant {n}");
            };
            assert_eq!(fit, Fit::Rescope, "tenant {n} got connection {i}");
        }
        // Every tenant, every pool state: `Use` only with the tenant's own scope.
        for n in 1..=5 {
            for in_use in 0..2 {
                for can_open in [false, true] {
                    for timeout_ms in [2_000, 30_000] {
                        let w = Want {
                            timeout_ms,
                            ..want(n, in_use)
                        };
                        if let Choice::Take(i, Fit::Use) = choose(&w, &idle, can_open) {
                            assert_eq!(
                                (idle[i].scope, idle[i].timeout_ms),
                                (Some(w.tenant), timeout_ms)
                            );
                        }
                        if let Some((i, Fit::Use)) = fit(&w, &idle) {
                            assert_eq!(
                                (idle[i].scope, idle[i].timeout_ms),
                                (Some(w.tenant), timeout_ms)
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn without_re_scoping_only_a_connection_of_the_tenants_home_is_used() {
        let own = Home::Tenant(tenant(1));
        let other = Slot {
            home: Home::Tenant(tenant(2)),
            scope: None,
            timeout_ms: 30_000,
            key: Key(1),
        };
        let mine = Slot { home: own, ..other };
        let w = Want {
            home: own,
            scope: None,
            can_rescope: false,
            ..want(1, 0)
        };
        assert_eq!(choose(&w, &[other, mine], false), Choice::Take(1, Fit::Use));
        assert_eq!(choose(&w, &[other], true), Choice::Open);
        assert_eq!(choose(&w, &[other], false), Choice::Take(0, Fit::Evict));
        assert_eq!(fit(&w, &[other]), Some((0, Fit::Evict)));
        assert_eq!(fit(&w, &[other, mine]), Some((1, Fit::Use)));
        // Of its home, with another statement timeout: closed, not used.
        let stale = Slot {
            timeout_ms: 5_000,
            ..mine
        };
        assert_eq!(choose(&w, &[stale], true), Choice::Open);
        assert_eq!(choose(&w, &[stale], false), Choice::Take(0, Fit::Evict));
        assert_eq!(fit(&w, &[stale]), Some((0, Fit::Evict)));
    }

    #[test]
    fn a_connection_with_another_statement_timeout_is_re_scoped_before_use() {
        let idle = [slot(Some(1), 1)];
        let shorter = Want {
            timeout_ms: 2_000,
            ..want(1, 0)
        };
        assert_eq!(choose(&shorter, &idle, true), Choice::Take(0, Fit::Rescope));
        assert_eq!(fit(&shorter, &idle), Some((0, Fit::Rescope)));
        assert_eq!(choose(&want(1, 0), &idle, true), Choice::Take(0, Fit::Use));
    }

    #[test]
    fn a_tenant_at_its_limit_waits_whatever_is_free() {
        let idle = [slot(Some(1), 1), slot(None, 2)];
        assert_eq!(choose(&want(1, 2), &idle, true), Choice::Wait);
        assert_eq!(choose(&want(1, 1), &idle, true), Choice::Take(0, Fit::Use));
        assert_eq!(choose(&want(2, 0), &[], false), Choice::Wait);
    }

    #[test]
    fn a_busy_tenant_opens_while_the_pool_may_grow_and_a_quiet_one_borrows() {
        let idle = [slot(Some(1), 1)];
        assert_eq!(choose(&want(2, 1), &idle, true), Choice::Open);
        assert_eq!(
            choose(&want(2, 0), &idle, true),
            Choice::Take(0, Fit::Rescope)
        );
        assert_eq!(
            choose(&want(2, 1), &idle, false),
            Choice::Take(0, Fit::Rescope)
        );
    }

    #[test]
    fn a_tenant_comes_back_to_the_connections_it_ranks_highest() {
        let idle: Vec<Slot> = (1..=8).map(|key| slot(Some(99), key)).collect();
        let w = want(7, 0);
        let best = (0..idle.len())
            .max_by_key(|i| idle[*i].key.rank(w.tenant))
            .unwrap();
        assert_eq!(choose(&w, &idle, true), Choice::Take(best, Fit::Rescope));
        assert_eq!(fit(&w, &idle), Some((best, Fit::Rescope)));
    }

    /// Serves `served` connections one at a time, none given back.
    fn serve(queue: &mut WaitQueue, served: usize, in_use: &mut HashMap<Uuid, u32>) -> Vec<Uuid> {
        (0..served)
            .map_while(|_| {
                let counts = in_use.clone();
                let (tenant, _) = queue.next(|t| counts.get(&t).copied().unwrap_or(0))?;
                *in_use.entry(tenant).or_default() += 1;
                Some(tenant)
            })
            .collect()
    }

    #[test]
    fn waiters_are_served_tenant_by_tenant_not_in_arrival_order() {
        let mut queue = WaitQueue::default();
        for _ in 0..1000 {
            queue.join(tenant(1), u32::MAX);
        }
        queue.join(tenant(2), u32::MAX);
        queue.join(tenant(3), u32::MAX);
        let order = serve(&mut queue, 4, &mut HashMap::new());
        assert_eq!(order, [tenant(1), tenant(2), tenant(3), tenant(1)]);
        assert_eq!(queue.len(), 998);
    }

    #[test]
    fn within_one_tenant_the_first_to_wait_is_the_first_served() {
        let mut queue = WaitQueue::default();
        let tickets: Vec<Ticket> = (0..5).map(|_| queue.join(tenant(1), 10)).collect();
        let served: Vec<Ticket> =
            std::iter::from_fn(|| queue.next(|_| 0).map(|(_, t)| t)).collect();
        assert_eq!(served, tickets);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_tenant_at_its_limit_is_skipped_and_keeps_its_turn() {
        let mut queue = WaitQueue::default();
        queue.join(tenant(1), 2);
        queue.join(tenant(2), 2);
        queue.join(tenant(2), 2);
        let mut in_use = HashMap::from([(tenant(1), 2)]);
        let order = serve(&mut queue, 1, &mut in_use);
        assert_eq!(order, [tenant(2)]);
        // Tenant 1 gave one back: it is first again.
        in_use.insert(tenant(1), 1);
        let order = serve(&mut queue, 2, &mut in_use);
        assert_eq!(order, [tenant(1), tenant(2)]);
    }

    #[test]
    fn no_tenant_ever_holds_more_than_its_limit() {
        let mut queue = WaitQueue::default();
        for n in 1..=4 {
            for _ in 0..10 {
                queue.join(tenant(n), n as u32);
            }
        }
        let mut in_use = HashMap::new();
        let order = serve(&mut queue, 100, &mut in_use);
        assert_eq!(order.len(), 1 + 2 + 3 + 4);
        for n in 1..=4 {
            assert_eq!(in_use[&tenant(n)], n as u32);
        }
    }

    #[test]
    fn every_waiter_is_served_in_the_end_whatever_arrives_meanwhile() {
        // A flooding tenant joins two waiters for every one served; a quiet tenant's one
        // waiter is served within the number of tenants waiting.
        let mut queue = WaitQueue::default();
        let mut served = 0;
        let quiet = queue.join(tenant(2), 1);
        let mut quiet_served_at = None;
        for round in 0..100 {
            queue.join(tenant(1), 100);
            queue.join(tenant(1), 100);
            if let Some((t, ticket)) = queue.next(|_| 0) {
                served += 1;
                if ticket == quiet {
                    assert_eq!(t, tenant(2));
                    quiet_served_at = Some(round);
                }
            }
        }
        assert_eq!(served, 100);
        assert!(
            quiet_served_at.is_some_and(|round| round <= 1),
            "{quiet_served_at:?}"
        );
    }

    #[test]
    fn a_waiter_that_gave_up_is_never_served() {
        let mut queue = WaitQueue::default();
        let gone = queue.join(tenant(1), 5);
        let kept = queue.join(tenant(1), 5);
        let other = queue.join(tenant(2), 5);
        assert!(queue.leave(tenant(1), gone));
        assert!(!queue.leave(tenant(1), gone));
        assert_eq!(queue.next(|_| 0), Some((tenant(1), kept)));
        assert!(!queue.leave(tenant(1), kept), "served already");
        assert!(queue.leave(tenant(2), other));
        assert!(queue.is_empty());
        assert_eq!(queue.next(|_| 0), None);
        assert_eq!(queue.per_tenant().count(), 0);
    }
}
