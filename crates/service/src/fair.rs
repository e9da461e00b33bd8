//! Fair sharing of execution slots between tenants.
//!
//! A slot is one running execution (a jail). Work waits per tenant, in arrival order within a
//! tenant (synchronous requests and queued async executions alike), and a free slot goes to the
//! waiting tenant that was served least recently (round-robin, with a tenant that was idle
//! first): a tenant that queued 500 executions gets one slot, then the next tenant with waiting
//! work gets one, and so on. No tenant may run more than `tenant_max_running`
//! executions at once, so while one tenant floods the server some slots stay free for the
//! others (their work starts at once instead of behind the flood), and none may have more than
//! `tenant_max_queued` waiting.
//!
//! Slots are not cores: a run that only sleeps holds its slot but no CPU. The per-tenant cap is
//! what keeps such runs of one tenant from starving the others; the CPU itself is shared by the
//! kernel between the runs' cgroups, each capped at its own `cpus`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

/// The sizes the scheduler works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairLimits {
    /// Executions running at once (all tenants).
    pub slots: usize,
    /// Executions one tenant may run at once.
    pub tenant_running: usize,
    /// Executions waiting, all tenants together.
    pub max_queued: usize,
    /// Executions one tenant may have waiting.
    pub tenant_queued: usize,
}

/// Why work was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the execution queue is full ({queued} waiting, at most {max}); try again later")]
    QueueFull { queued: usize, max: usize },
    #[error(
        "this API key has {queued} executions waiting, its maximum ({max}); wait for some to \
         finish"
    )]
    TenantQueueFull { queued: usize, max: usize },
}

enum Waiter {
    /// A synchronous request, waiting for its slot.
    Sync(oneshot::Sender<Slot>),
    /// One queued async execution of the tenant (the dispatcher claims the tenant's oldest).
    Async,
}

#[derive(Default)]
struct Tenant {
    running: usize,
    waiting: VecDeque<Waiter>,
    /// Tick of the last slot this tenant got (0: none since it was last idle).
    last_served: u64,
    /// Tick at which its line last became non-empty (ties of `last_served`).
    waiting_since: u64,
}

struct State {
    free: usize,
    /// Tenants running or waiting; an idle tenant is forgotten.
    tenants: HashMap<String, Tenant>,
    queued: usize,
    tick: u64,
}

/// The scheduler (shared; see the module's documentation).
pub struct Fair {
    limits: FairLimits,
    state: Mutex<State>,
    async_grants: mpsc::UnboundedSender<(String, Slot)>,
}

/// A running execution's slot; dropping it frees the slot for the next waiting work.
pub struct Slot {
    fair: Arc<Fair>,
    tenant: String,
    armed: bool,
}

impl Slot {
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            let fair = Arc::clone(&self.fair);
            let mut st = fair.lock();
            release(&mut st, &self.tenant);
            fair.pump(st);
        }
    }
}

fn release(st: &mut State, tenant: &str) {
    st.free += 1;
    if let Some(t) = st.tenants.get_mut(tenant) {
        t.running = t.running.saturating_sub(1);
        if t.running == 0 && t.waiting.is_empty() {
            st.tenants.remove(tenant);
        }
    }
}

/// Where a synchronous request's slot comes from.
pub enum SyncTicket {
    Now(Slot),
    Later(oneshot::Receiver<Slot>),
}

impl SyncTicket {
    /// The slot, once it is this request's turn.
    pub async fn wait(self) -> Option<Slot> {
        match self {
            SyncTicket::Now(s) => Some(s),
            SyncTicket::Later(rx) => rx.await.ok(),
        }
    }
}

/// What the scheduler holds now, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub free: usize,
    pub queued: usize,
    /// (tenant, running, waiting), sorted by tenant.
    pub tenants: Vec<(String, usize, usize)>,
}

impl Fair {
    /// A scheduler and the receiver of slots granted to queued async executions: the
    /// dispatcher claims the named tenant's oldest pending execution for each.
    pub fn new(limits: FairLimits) -> (Arc<Fair>, mpsc::UnboundedReceiver<(String, Slot)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let limits = FairLimits {
            slots: limits.slots.max(1),
            tenant_running: limits.tenant_running.clamp(1, limits.slots.max(1)),
            max_queued: limits.max_queued.max(1),
            tenant_queued: limits.tenant_queued.max(1),
        };
        let fair = Arc::new(Fair {
            limits,
            state: Mutex::new(State {
                free: limits.slots,
                tenants: HashMap::new(),
                queued: 0,
                tick: 0,
            }),
            async_grants: tx,
        });
        (fair, rx)
    }

    pub fn limits(&self) -> FairLimits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `tenant` may queue `n` more executions now.
    pub fn check(&self, tenant: &str, n: usize) -> Result<(), Refused> {
        let st = self.lock();
        self.admissible(&st, tenant, n)
    }

    fn admissible(&self, st: &State, tenant: &str, n: usize) -> Result<(), Refused> {
        if st.queued + n > self.limits.max_queued {
            return Err(Refused::QueueFull {
                queued: st.queued,
                max: self.limits.max_queued,
            });
        }
        let mine = st.tenants.get(tenant).map_or(0, |t| t.waiting.len());
        if mine + n > self.limits.tenant_queued {
            return Err(Refused::TenantQueueFull {
                queued: mine,
                max: self.limits.tenant_queued,
            });
        }
        Ok(())
    }

    /// A synchronous request of `tenant`: a slot now if one is free for it and nobody of that
    /// tenant waits ahead, else a place in the tenant's line.
    pub fn enter_sync(self: &Arc<Self>, tenant: &str) -> Result<SyncTicket, Refused> {
        let mut st = self.lock();
        let t = st.tenants.get(tenant);
        let ahead = t.is_some_and(|t| !t.waiting.is_empty());
        let running = t.map_or(0, |t| t.running);
        if st.free > 0 && !ahead && running < self.limits.tenant_running {
            return Ok(SyncTicket::Now(self.take(&mut st, tenant)));
        }
        self.admissible(&st, tenant, 1)?;
        let (tx, rx) = oneshot::channel();
        self.push(&mut st, tenant, Waiter::Sync(tx));
        self.pump(st);
        Ok(SyncTicket::Later(rx))
    }

    /// `n` async executions of `tenant` were queued (stored as pending).
    pub fn queued_async(self: &Arc<Self>, tenant: &str, n: usize) {
        let mut st = self.lock();
        for _ in 0..n {
            self.push(&mut st, tenant, Waiter::Async);
        }
        self.pump(st);
    }

    /// Makes each tenant's count of queued async executions `counts` (the database's, which
    /// other nodes add to), adding places at the end of a tenant's line or removing its last
    /// async ones; tenants not in `counts` have none.
    pub fn sync_async(self: &Arc<Self>, counts: &[(String, usize)]) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut names: Vec<String> = st.tenants.keys().cloned().collect();
        for (t, _) in counts {
            if !st.tenants.contains_key(t) {
                names.push(t.clone());
            }
        }
        for name in names {
            let want = counts
                .iter()
                .find(|(t, _)| *t == name)
                .map_or(0, |(_, n)| *n);
            let have = st.tenants.get(&name).map_or(0, |t| {
                t.waiting
                    .iter()
                    .filter(|w| matches!(w, Waiter::Async))
                    .count()
            });
            if want > have {
                for _ in have..want {
                    self.push(st, &name, Waiter::Async);
                }
            } else if have > want
                && let Some(t) = st.tenants.get_mut(&name)
            {
                for _ in want..have {
                    if let Some(i) = t.waiting.iter().rposition(|w| matches!(w, Waiter::Async)) {
                        t.waiting.remove(i);
                        st.queued -= 1;
                    }
                }
                if t.waiting.is_empty() && t.running == 0 {
                    st.tenants.remove(&name);
                }
            }
        }
        self.pump(guard);
    }

    /// One queued async execution of `tenant` left the queue without running (cancelled).
    pub fn dequeued_async(&self, tenant: &str) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(t) = st.tenants.get_mut(tenant) else {
            return;
        };
        let Some(i) = t.waiting.iter().rposition(|w| matches!(w, Waiter::Async)) else {
            return;
        };
        t.waiting.remove(i);
        let idle = t.waiting.is_empty() && t.running == 0;
        st.queued -= 1;
        if idle {
            st.tenants.remove(tenant);
        }
    }

    /// Puts back a granted async slot whose execution could not be claimed because of an
    /// error (the execution is still pending): its place is at the front of the tenant's line.
    pub fn retry_async(self: &Arc<Self>, mut slot: Slot) {
        slot.armed = false;
        let mut st = self.lock();
        release(&mut st, &slot.tenant);
        st.queued += 1;
        st.tick += 1;
        let tick = st.tick;
        let t = st.tenants.entry(slot.tenant.clone()).or_default();
        if t.waiting.is_empty() {
            t.waiting_since = tick;
        }
        t.waiting.push_front(Waiter::Async);
        // No pump: the caller retries after a pause, and the next release pumps anyway.
    }

    /// Work waiting, all tenants.
    pub fn queued(&self) -> usize {
        self.lock().queued
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let mut tenants: Vec<(String, usize, usize)> = st
            .tenants
            .iter()
            .map(|(k, t)| (k.clone(), t.running, t.waiting.len()))
            .collect();
        tenants.sort();
        Snapshot {
            free: st.free,
            queued: st.queued,
            tenants,
        }
    }

    /// Hands out free slots again, after a wait elsewhere (see [`Fair::retry_async`]).
    pub fn kick(self: &Arc<Self>) {
        let st = self.lock();
        self.pump(st);
    }

    fn take(self: &Arc<Self>, st: &mut State, tenant: &str) -> Slot {
        st.free -= 1;
        st.tick += 1;
        let tick = st.tick;
        let t = st.tenants.entry(tenant.to_string()).or_default();
        t.running += 1;
        t.last_served = tick;
        Slot {
            fair: Arc::clone(self),
            tenant: tenant.to_string(),
            armed: true,
        }
    }

    fn push(&self, st: &mut State, tenant: &str, w: Waiter) {
        st.queued += 1;
        st.tick += 1;
        let tick = st.tick;
        let t = st.tenants.entry(tenant.to_string()).or_default();
        if t.waiting.is_empty() {
            t.waiting_since = tick;
        }
        t.waiting.push_back(w);
    }

    /// Grants free slots to waiting work: each to the waiting tenant under its cap that was
    /// served least recently.
    fn pump(self: &Arc<Self>, mut guard: MutexGuard<'_, State>) {
        let st = &mut *guard;
        while st.free > 0 {
            let cap = self.limits.tenant_running;
            let Some(name) = st
                .tenants
                .iter()
                .filter(|(_, t)| !t.waiting.is_empty() && t.running < cap)
                .min_by_key(|(_, t)| (t.last_served, t.waiting_since))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let Some(waiter) = st
                .tenants
                .get_mut(&name)
                .and_then(|t| t.waiting.pop_front())
            else {
                break;
            };
            st.queued -= 1;
            let slot = self.take(st, &name);
            match waiter {
                Waiter::Sync(tx) => {
                    if let Err(mut slot) = tx.send(slot) {
                        // The request went away: its slot is free again, without recursion.
                        slot.armed = false;
                        release(st, &name);
                    }
                }
                Waiter::Async => {
                    if let Err(e) = self.async_grants.send((name.clone(), slot)) {
                        let (_, mut slot) = e.0;
                        slot.armed = false;
                        release(st, &name);
                        // No dispatcher: async work cannot run; stop granting to it.
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(slots: usize, tenant_running: usize) -> FairLimits {
        FairLimits {
            slots,
            tenant_running,
            max_queued: 100,
            tenant_queued: 10,
        }
    }

    #[test]
    fn the_queue_follows_the_databases_counts() {
        // No free slot: what is queued stays visible.
        let (fair, _grants) = Fair::new(limits(1, 1));
        let _busy = match fair.enter_sync("x").unwrap() {
            SyncTicket::Now(s) => s,
            SyncTicket::Later(_) => panic!("a free slot"),
        };
        fair.queued_async("a", 3);
        // Other nodes queued 2 for b; a's line is down to 1 (claimed elsewhere).
        fair.sync_async(&[("a".into(), 1), ("b".into(), 2)]);
        let snap = fair.snapshot();
        assert_eq!(snap.queued, 3);
        assert_eq!(
            snap.tenants,
            [("a".into(), 0, 1), ("b".into(), 0, 2), ("x".into(), 1, 0)]
        );
        // Nothing queued anywhere: the lines empty, the running tenant stays.
        fair.sync_async(&[]);
        let snap = fair.snapshot();
        assert_eq!(snap.queued, 0);
        assert_eq!(snap.tenants, [("x".into(), 1, 0)]);
    }

    fn now(t: SyncTicket) -> Slot {
        match t {
            SyncTicket::Now(s) => s,
            SyncTicket::Later(_) => panic!("expected a slot at once"),
        }
    }

    fn later(t: SyncTicket) -> oneshot::Receiver<Slot> {
        match t {
            SyncTicket::Now(_) => panic!("expected to wait"),
            SyncTicket::Later(rx) => rx,
        }
    }

    #[test]
    fn a_flooding_tenant_leaves_slots_for_others() {
        let (fair, _rx) = Fair::new(limits(4, 3));
        let a: Vec<Slot> = (0..3).map(|_| now(fair.enter_sync("a").unwrap())).collect();
        // A's fourth waits although a slot is free: it is kept for others.
        let mut a4 = later(fair.enter_sync("a").unwrap());
        let b = now(fair.enter_sync("b").unwrap());
        assert_eq!(fair.snapshot().free, 0);
        assert!(a4.try_recv().is_err());
        drop(b);
        // B's slot is free again, but A is at its cap: its waiter waits for A's own slots.
        assert!(a4.try_recv().is_err());
        assert_eq!(fair.snapshot().free, 1);
        let mut a = a;
        drop(a.pop());
        let a4 = a4.try_recv().expect("A's waiter got a slot");
        assert_eq!(a4.tenant(), "a");
        drop(a);
        drop(a4);
        assert_eq!(fair.snapshot().free, 4);
        assert!(fair.snapshot().tenants.is_empty());
    }

    #[test]
    fn waiting_tenants_are_served_round_robin() {
        let (fair, _rx) = Fair::new(limits(2, 2));
        let s1 = now(fair.enter_sync("a").unwrap());
        let s2 = now(fair.enter_sync("a").unwrap());
        let mut a: Vec<_> = (0..5)
            .map(|_| later(fair.enter_sync("a").unwrap()))
            .collect();
        let mut b = later(fair.enter_sync("b").unwrap());
        let mut c = later(fair.enter_sync("c").unwrap());
        // A was served last: B, then C, then A, then A again (nobody else waits).
        drop(s1);
        let g1 = b.try_recv().expect("b first");
        drop(s2);
        let g2 = c.try_recv().expect("then c");
        assert!(a[0].try_recv().is_err(), "a waits for its turn");
        drop(g1);
        let g3 = a[0].try_recv().expect("then a");
        drop(g2);
        let _g4 = a[1].try_recv().expect("then a again");
        drop(g3);
        let _g5 = a[2].try_recv().expect("and again");
        assert_eq!(fair.snapshot().queued, 2);
        assert_eq!(fair.snapshot().tenants, [("a".to_string(), 2, 2)]);
    }

    #[test]
    fn queue_caps_refuse_per_tenant_and_overall() {
        let (fair, _rx) = Fair::new(FairLimits {
            slots: 1,
            tenant_running: 1,
            max_queued: 3,
            tenant_queued: 2,
        });
        let _s = now(fair.enter_sync("a").unwrap());
        let _w: Vec<_> = (0..2).map(|_| fair.enter_sync("a").unwrap()).collect();
        assert!(matches!(
            fair.enter_sync("a"),
            Err(Refused::TenantQueueFull { queued: 2, max: 2 })
        ));
        assert!(matches!(
            fair.check("a", 1),
            Err(Refused::TenantQueueFull { .. })
        ));
        fair.check("b", 1).unwrap();
        let _b = fair.enter_sync("b").unwrap();
        assert!(matches!(
            fair.check("c", 1),
            Err(Refused::QueueFull { queued: 3, max: 3 })
        ));
    }

    #[tokio::test]
    async fn async_work_is_granted_to_the_dispatcher_in_turn() {
        let (fair, mut rx) = Fair::new(limits(1, 1));
        fair.queued_async("a", 3);
        fair.queued_async("b", 1);
        let (t1, s1) = rx.recv().await.unwrap();
        assert_eq!(t1, "a");
        assert!(rx.try_recv().is_err(), "one slot, one grant");
        drop(s1);
        let (t2, s2) = rx.recv().await.unwrap();
        assert_eq!(t2, "b", "b's turn after a's first");
        // A cancelled pending execution leaves the line.
        fair.dequeued_async("a");
        drop(s2);
        let (t3, s3) = rx.recv().await.unwrap();
        assert_eq!(t3, "a");
        drop(s3);
        assert!(
            rx.try_recv().is_err(),
            "a had 3, one ran, one was cancelled, one ran"
        );
        assert_eq!(fair.snapshot().queued, 0);
    }

    #[test]
    fn an_abandoned_sync_waiter_gives_its_slot_to_the_next() {
        let (fair, _rx) = Fair::new(limits(1, 1));
        let s = now(fair.enter_sync("a").unwrap());
        let gone = later(fair.enter_sync("b").unwrap());
        let mut next = later(fair.enter_sync("c").unwrap());
        drop(gone);
        drop(s);
        assert_eq!(next.try_recv().expect("c got it").tenant(), "c");
    }
}
