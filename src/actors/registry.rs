//! The registry: starts tenant actors (on the HTTP workers' threads, or on arbiters of
//! their own when `actors.arbiters` asks for them; round-robin) and hands them what is
//! addressed to a tenant whose actor is not running yet ([`ToTenant`], events and
//! commands alike; [`send_to_tenant`] goes straight to a running one), and the
//! committed inbox rows; and sweeps the inbox for rows that were never processed: all of them at
//! start-up, and then on the scheduler's timer those older than
//! `actors.sweep_min_age_secs`, as a safety net behind the live dispatch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;

use super::tenant::{RouteInboxRows, TenantActor};
use super::Core;
use crate::ids::TenantId;
use crate::storage::inbox::{self, InboxItem};

/// Committed inbox rows to route.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DispatchInboxRows(pub Vec<InboxItem>);

/// The tenant actors the registry started, readable from any thread, so a webhook's
/// events go straight to their tenant actor instead of through the registry's thread.
#[derive(Default)]
pub struct TenantDirectory {
    actors: RwLock<HashMap<TenantId, Addr<TenantActor>>>,
}

impl TenantDirectory {
    /// The running actor of `tenant_id`, if the registry has started one.
    pub fn get(&self, tenant_id: &TenantId) -> Option<Addr<TenantActor>> {
        let actors = self.actors.read().ok()?;
        actors
            .get(tenant_id)
            .filter(|addr| addr.connected())
            .cloned()
    }

    fn insert(&self, tenant_id: TenantId, addr: Addr<TenantActor>) {
        if let Ok(mut actors) = self.actors.write() {
            actors.insert(tenant_id, addr);
        }
    }

    fn remove(&self, tenant_id: &TenantId) {
        if let Ok(mut actors) = self.actors.write() {
            actors.remove(tenant_id);
        }
    }
}

/// The HTTP workers' threads, where tenant actors run by default: a webhook's events then
/// reach their actor on the thread that parsed them, or one hand-off away, instead of
/// always crossing to a thread of the actors' own, which costs CPU on both sides.
/// Each worker registers its arbiter when it starts, a restarted one too.
#[derive(Default)]
pub struct ActorHosts {
    arbiters: RwLock<Vec<ArbiterHandle>>,
    next: AtomicUsize,
}

impl ActorHosts {
    /// Called on each HTTP worker's thread as it starts.
    pub fn register_current(&self) {
        if let (Some(arbiter), Ok(mut arbiters)) = (Arbiter::try_current(), self.arbiters.write()) {
            arbiters.push(arbiter);
        }
    }

    /// The next running worker's arbiter, round-robin; None when every worker has
    /// stopped (while the server shuts down, the registry's own thread takes over).
    fn next_running(&self) -> Option<ArbiterHandle> {
        let mut arbiters = self.arbiters.write().ok()?;
        // A stopped arbiter refuses work: forget it.
        arbiters.retain(|arbiter| arbiter.spawn(async {}));
        if arbiters.is_empty() {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % arbiters.len();
        arbiters.get(index).cloned()
    }
}

/// Any message a tenant actor handles, for the registry to hand to that tenant's actor,
/// starting it first if need be.
pub struct ToTenant<M> {
    pub tenant_id: TenantId,
    pub message: M,
}

impl<M> Message for ToTenant<M> {
    type Result = ();
}

/// Hands `message` to `tenant_id`'s actor: directly when it is running, else through
/// the registry, which starts it: how a webhook's events and the API's sends reach
/// a tenant from outside the actors.
pub fn send_to_tenant<M>(core: &Core, registry: &Addr<Registry>, tenant_id: TenantId, message: M)
where
    M: Message<Result = ()> + Send + 'static,
    TenantActor: Handler<M>,
{
    match core.tenants.get(&tenant_id) {
        Some(tenant) => tenant.do_send(message),
        None => registry.do_send(ToTenant { tenant_id, message }),
    }
}

/// Liveness probe: answered with the number of tenant actors.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Ping;

/// A sweep of the inbox finished: the next may start.
#[derive(Message)]
#[rtype(result = "()")]
struct SweepDone;

/// Inbox rows a sweep could not read, to park.
#[derive(Message)]
#[rtype(result = "()")]
struct ParkUnreadable(Vec<(i64, String)>);

/// Rows a sweep reads at once.
const SWEEP_PAGE: i64 = 1_000;
/// How long a sweep waits for the actors to work through what it dispatched before it
/// stops (the next sweep goes on from the start).
const SWEEP_PATIENCE: Duration = Duration::from_secs(60);

/// Waits (blocking) until at most a page of the rows dispatched so far is still
/// unprocessed; `false` when that does not happen within [`SWEEP_PATIENCE`], the
/// database cannot be asked, or the daemon is stopping (`halted`).
fn wait_for_progress(core: &Core, through_id: i64, before: i64, halted: &AtomicBool) -> bool {
    let deadline = std::time::Instant::now() + SWEEP_PATIENCE;
    loop {
        if halted.load(Ordering::Relaxed) {
            return false;
        }
        let waiting = core
            .pool
            .get()
            .map_err(Into::into)
            .and_then(|mut conn| inbox::unprocessed_through(&mut conn, through_id, before));
        match waiting {
            Ok(n) if n <= SWEEP_PAGE => return true,
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => return false,
        }
    }
}

pub struct Registry {
    core: Arc<Core>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    tenants: HashMap<TenantId, Addr<TenantActor>>,
    /// Tenants whose account is closed: nothing is handed to them any more (their
    /// inbox rows wait for the purge).
    closed: std::collections::HashSet<TenantId>,
    sweeping: bool,
    /// The sweep running now, which shutdown awaits ([`StopSweeping`]).
    sweep_task: Option<actix_web::rt::task::JoinHandle<()>>,
    /// Set at shutdown: no sweep starts, and a running one stops after its page.
    halted: Arc<AtomicBool>,
    /// The first sweep after start takes every pending row, whatever its age.
    recovered: bool,
}

impl Registry {
    pub fn new(core: Arc<Core>, arbiters: Vec<ArbiterHandle>) -> Registry {
        Registry {
            core,
            arbiters,
            next_arbiter: 0,
            tenants: HashMap::new(),
            closed: Default::default(),
            sweeping: false,
            sweep_task: None,
            halted: Arc::new(AtomicBool::new(false)),
            recovered: false,
        }
    }

    fn tenant(&mut self, tenant_id: &TenantId) -> Addr<TenantActor> {
        if let Some(addr) = self.tenants.get(tenant_id) {
            if addr.connected() {
                return addr.clone();
            }
        }
        let core = self.core.clone();
        let id = tenant_id.clone();
        let host = if self.arbiters.is_empty() {
            self.core.hosts.next_running()
        } else {
            self.next_arbiter += 1;
            self.arbiters
                .get(self.next_arbiter % self.arbiters.len())
                .cloned()
        };
        let addr = match host {
            Some(arbiter) => {
                Supervisor::start_in_arbiter(&arbiter, move |_| TenantActor::new(core, id))
            }
            None => Supervisor::start(move |_| TenantActor::new(core, id)),
        };
        self.tenants.insert(tenant_id.clone(), addr.clone());
        addr
    }

    /// Makes a tenant actor reachable without the registry, after forwarding what the
    /// registry had for it. (Webhooks in flight at the same time have no order between
    /// them, at Meta's end either; one sent after another was answered finds the
    /// other's events applied already.)
    fn publish(&self, tenant_id: TenantId, tenant: Addr<TenantActor>) {
        if self.core.tenants.get(&tenant_id).is_none() {
            self.core.tenants.insert(tenant_id, tenant);
        }
    }

    /// Hands `message` to the tenant's actor, started if need be.
    fn hand<M>(&mut self, tenant_id: TenantId, message: M)
    where
        M: Message<Result = ()> + Send + 'static,
        TenantActor: Handler<M>,
    {
        if self.closed.contains(&tenant_id) {
            return;
        }
        let tenant = self.tenant(&tenant_id);
        tenant.do_send(message);
        self.publish(tenant_id, tenant);
    }

    fn route(&mut self, items: Vec<InboxItem>) {
        for (tenant_id, items) in super::by_tenant(items, |item| &item.tenant_id) {
            if self.closed.contains(&tenant_id) {
                super::park_for_closed_tenant(&self.core, &items);
                continue;
            }
            self.hand(tenant_id, RouteInboxRows(items));
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.sweeping || self.halted.load(Ordering::Relaxed) {
            return;
        }
        self.sweeping = true;
        let halted = self.halted.clone();
        let core = self.core.clone();
        let min_age_ms = if self.recovered {
            (core.settings.actors.sweep_min_age_secs * 1000) as i64
        } else {
            0
        };
        let me = ctx.address();
        // Reading and decrypting rows blocks: do it off the actor's thread. A page at a
        // time, the next one only once the actors have worked through most of the
        // last: after an outage of hours the backlog may hold millions of rows, and
        // they must not all be in memory at once.
        let task = actix_web::rt::task::spawn_blocking(move || {
            let before = core.clock.now_ms() - min_age_ms;
            let mut after_id = 0;
            let (mut total, mut unreadable) = (0usize, 0usize);
            loop {
                if halted.load(Ordering::Relaxed) {
                    break;
                }
                if after_id > 0 && !wait_for_progress(&core, after_id, before, &halted) {
                    slog::info!(core.log, "inbox sweep paused: rows it dispatched are still being applied";
                        "rows" => total);
                    break;
                }
                let page = core.pool.get().map_err(Into::into).and_then(|mut conn| {
                    inbox::pending(&mut conn, &core.keyring, after_id, before, SWEEP_PAGE)
                });
                match page {
                    Ok(page) => {
                        let Some(last_id) = page.last_id else {
                            break;
                        };
                        after_id = last_id;
                        total += page.items.len();
                        unreadable += page.unreadable.len();
                        if !page.unreadable.is_empty() {
                            me.do_send(ParkUnreadable(page.unreadable));
                        }
                        if !page.items.is_empty() {
                            me.do_send(DispatchInboxRows(page.items));
                        }
                    }
                    Err(e) => {
                        slog::warn!(core.log, "inbox sweep failed"; "error" => %e);
                        break;
                    }
                }
            }
            if total > 0 || unreadable > 0 {
                slog::info!(core.log, "re-dispatched unprocessed inbox rows";
                    "rows" => total, "unreadable_parked" => unreadable);
            }
            me.do_send(SweepDone);
        });
        self.sweep_task = Some(task);
        self.recovered = true;
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    /// Learns which tenants are closed before anything is routed (nothing is handed
    /// to them), then sweeps: the first sweep takes every pending row at once; the
    /// scheduler asks for the next ones ([`SweepInbox`]).
    fn started(&mut self, ctx: &mut Context<Self>) {
        let core = self.core.clone();
        let closed = async move {
            core.read(|conn, _| crate::storage::closure::closures(conn))
                .await
        };
        ctx.wait(closed.into_actor(self).map(|closed, registry, ctx| {
            match closed {
                Ok(closures) => registry
                    .closed
                    .extend(closures.into_iter().map(|c| c.tenant_id)),
                // The compliance actor's scan tells it again (CloseTenant).
                Err(e) => slog::warn!(registry.core.log, "reading the closed tenants failed"; "error" => %e),
            }
            registry.sweep(ctx);
        }));
    }
}

/// Sweep the inbox for rows never processed, unless a sweep runs already (the
/// scheduler's timer, every `actors.sweep_interval_secs`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SweepInbox;

impl Handler<SweepInbox> for Registry {
    type Result = ();
    fn handle(&mut self, _msg: SweepInbox, ctx: &mut Context<Self>) {
        self.sweep(ctx);
    }
}

impl Supervised for Registry {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.sweeping = false;
        self.recovered = false;
    }
}

/// Shutdown: no sweep starts any more, a running one stops after its page; answered
/// with the running sweep's task, for shutdown to await.
#[derive(Message)]
#[rtype(result = "Option<actix_web::rt::task::JoinHandle<()>>")]
pub struct StopSweeping;

impl Handler<StopSweeping> for Registry {
    type Result = Option<actix_web::rt::task::JoinHandle<()>>;
    fn handle(&mut self, _msg: StopSweeping, _ctx: &mut Context<Self>) -> Self::Result {
        self.halted.store(true, Ordering::Relaxed);
        self.sweep_task.take()
    }
}

/// A tenant's account is closed (its keys and numbers are gone from the database):
/// its actor leaves the directory, so nothing reaches it any more, its numbers leave
/// the route cache, it stops its conversation actors ([`super::tenant::StopConversations`]),
/// and nothing is handed to it any more.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseTenant(pub TenantId);

impl Handler<CloseTenant> for Registry {
    type Result = ();
    fn handle(&mut self, msg: CloseTenant, _ctx: &mut Context<Self>) {
        self.core.tenants.remove(&msg.0);
        self.core.routes.forget_tenant(&msg.0);
        if let Some(tenant) = self.tenants.remove(&msg.0) {
            tenant.do_send(super::tenant::StopConversations);
        }
        self.closed.insert(msg.0);
    }
}

impl Handler<DispatchInboxRows> for Registry {
    type Result = ();
    fn handle(&mut self, msg: DispatchInboxRows, _ctx: &mut Context<Self>) {
        self.route(msg.0);
    }
}

impl<M> Handler<ToTenant<M>> for Registry
where
    M: Message<Result = ()> + Send + 'static,
    TenantActor: Handler<M>,
{
    type Result = ();
    fn handle(&mut self, msg: ToTenant<M>, _ctx: &mut Context<Self>) {
        self.hand(msg.tenant_id, msg.message);
    }
}

impl Handler<Ping> for Registry {
    type Result = usize;
    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) -> usize {
        self.tenants.len()
    }
}

impl Handler<ParkUnreadable> for Registry {
    type Result = ();
    fn handle(&mut self, msg: ParkUnreadable, _ctx: &mut Context<Self>) {
        super::park_inbox_rows(&self.core, msg.0);
    }
}

impl Handler<SweepDone> for Registry {
    type Result = ();
    fn handle(&mut self, _msg: SweepDone, _ctx: &mut Context<Self>) {
        self.sweeping = false;
        self.core
            .metrics
            .timed_duties
            .with_label_values(&["inbox_sweep"])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tenant actors go to the running workers in turn; a stopped worker is skipped, and
    /// with none left the registry's own thread takes them (None).
    #[test]
    fn actor_hosts_take_running_workers_in_turn_and_forget_stopped_ones() {
        let _system = actix_rt::System::new();
        let hosts = Arc::new(ActorHosts::default());
        let workers: Vec<Arbiter> = (0..2).map(|_| Arbiter::new()).collect();
        let (registered, done) = std::sync::mpsc::channel();
        for worker in &workers {
            let (hosts, registered) = (hosts.clone(), registered.clone());
            worker.spawn_fn(move || {
                hosts.register_current();
                let _ = registered.send(());
            });
        }
        for _ in &workers {
            done.recv_timeout(Duration::from_secs(5))
                .expect("each worker registers");
        }
        // Which thread a host runs tasks on.
        let thread_of = |arbiter: &ArbiterHandle| {
            let (tx, rx) = std::sync::mpsc::channel();
            arbiter.spawn_fn(move || {
                let _ = tx.send(std::thread::current().id());
            });
            rx.recv_timeout(Duration::from_secs(5)).expect("runs")
        };
        let first = hosts.next_running().expect("a host");
        let second = hosts.next_running().expect("a host");
        assert_ne!(thread_of(&first), thread_of(&second), "in turn");

        let mut workers = workers.into_iter();
        let stopped = workers.next().expect("two workers");
        let stopped_thread = thread_of(&stopped.handle());
        stopped.stop();
        assert!(stopped.join().is_ok());
        for _ in 0..3 {
            let host = hosts.next_running().expect("the running worker");
            assert_ne!(
                thread_of(&host),
                stopped_thread,
                "a stopped worker is skipped"
            );
        }

        let last = workers.next().expect("two workers");
        last.stop();
        assert!(last.join().is_ok());
        assert!(hosts.next_running().is_none(), "no worker left");
    }
}
