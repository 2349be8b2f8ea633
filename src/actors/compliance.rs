//! The compliance actor: one supervised actor that executes the data-subject requests
//! of every tenant, strictly one at a time per tenant and in the order received
//! ([`crate::compliance::requests`]). Each step (started, then done) is a write in
//! the tenant's lane with its audit entry, so a crash resumes at the step it stopped
//! before. It looks for work when a request is submitted and every few seconds.
//!
//! It also closes accounts: a tenant the operator closed (`converra tenant close`) is
//! told down the actor tree ([`CloseTenant`]), and from its `purge_after` on its data
//! goes in the same batches as an erasure's, one closed tenant at a time
//! ([`crate::storage::closure`]).
//!
//! An erasure has more steps: the writers are told to refuse the contact, its keys
//! are destroyed, the conversation actor holding it drops it, its rows go in batches
//! (`compliance.erasure_batch_size` at a time, `erasure_batch_pause_ms` apart, in the
//! tenant's lane so other tenants' writes go between), and the database compacts what
//! it freed ([`crate::storage::erasure`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::conversation::{ForgetContact, RestrictContact};
use super::registry::{CloseTenant, Registry};
use super::{when_idle, Core, FinishWork};
use crate::compliance::requests;
use crate::ids::TenantId;
use crate::storage::closure::{self, Closure};
use crate::storage::erasure;
use crate::storage::privacy::{self, Kind, Request, State};
use crate::storage::StorageError;

/// How often the actor looks whether a request woke it.
const TICK: Duration = Duration::from_millis(200);
/// How often it looks for open requests without being woken (after a restart, or
/// a step that failed).
const RESCAN_TICKS: u32 = 25;

pub struct ComplianceActor {
    core: Arc<Core>,
    registry: Addr<Registry>,
    /// Tenants with a request being executed.
    busy: HashSet<TenantId>,
    reading: bool,
    ticks: u32,
    /// Shutdown asked it to start no step ([`FinishWork`]); an erasure stops between
    /// two batches.
    finishing: Arc<AtomicBool>,
    /// Closed tenants whose actors this process has told.
    closed: HashSet<TenantId>,
    /// The closed tenant being purged (one at a time).
    purging: Option<TenantId>,
}

impl ComplianceActor {
    pub fn new(core: Arc<Core>, registry: Addr<Registry>) -> ComplianceActor {
        ComplianceActor {
            core,
            registry,
            busy: HashSet::new(),
            reading: false,
            ticks: RESCAN_TICKS,
            finishing: Arc::new(AtomicBool::new(false)),
            closed: HashSet::new(),
            purging: None,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.ticks += 1;
        if self.reading || self.finishing.load(Ordering::Acquire) {
            return;
        }
        #[cfg(feature = "testing")]
        if let Some(hold) = &self.core.hooks.hold_compliance {
            if hold.load(Ordering::Acquire) {
                return;
            }
        }
        let woken = self.core.compliance_wanted.swap(false, Ordering::AcqRel);
        if !woken && self.ticks < RESCAN_TICKS {
            return;
        }
        self.ticks = 0;
        self.reading = true;
        let core = self.core.clone();
        let read = async move {
            core.read(|conn, _| Ok((privacy::next_per_tenant(conn)?, closure::closures(conn)?)))
                .await
        };
        ctx.spawn(read.into_actor(self).map(|next, actor, ctx| {
            actor.reading = false;
            actor
                .core
                .metrics
                .timed_duties
                .with_label_values(&["compliance_scan"])
                .inc();
            match next {
                Ok((next, closures)) => {
                    actor.close_tenants(closures, ctx);
                    for request in next {
                        if !actor.finishing.load(Ordering::Acquire)
                            && actor.purging.as_ref() != Some(&request.tenant_id)
                            && actor.busy.insert(request.tenant_id.clone())
                        {
                            actor.execute(request, ctx);
                        }
                    }
                }
                Err(e) => {
                    slog::warn!(actor.core.log, "reading open privacy requests failed"; "error" => %e)
                }
            }
        }));
    }

    /// Tells the actor tree of each tenant closed since this process looked, and
    /// starts purging the first one whose `purge_after` has come.
    fn close_tenants(&mut self, closures: Vec<Closure>, ctx: &mut Context<Self>) {
        let now = self.core.clock.now_ms();
        for closure in &closures {
            if self.closed.insert(closure.tenant_id.clone()) {
                self.registry
                    .do_send(CloseTenant(closure.tenant_id.clone()));
            }
        }
        if self.purging.is_some() || self.finishing.load(Ordering::Acquire) {
            return;
        }
        // Strictly one piece of work a tenant at a time: a tenant with a request in
        // hand is purged once the request is done.
        let due = closures
            .into_iter()
            .find(|c| c.purge_after <= now && !self.busy.contains(&c.tenant_id));
        if let Some(due) = due {
            self.purging = Some(due.tenant_id.clone());
            let (core, finishing) = (self.core.clone(), self.finishing.clone());
            let tenant = due.tenant_id;
            ctx.spawn(purge(core, tenant.clone(), finishing).into_actor(self).map(
                move |done, actor, _| {
                    actor.purging = None;
                    match done {
                        Ok(true) => {
                            slog::info!(actor.core.log, "closed tenant purged"; "tenant" => &tenant);
                            actor.core.compliance_wanted.store(true, Ordering::Release);
                        }
                        Ok(false) => slog::info!(actor.core.log, "tenant purge paused for shutdown";
                            "tenant" => &tenant),
                        Err(e) => slog::warn!(actor.core.log, "a tenant purge's batch failed; the next rescan goes on";
                            "tenant" => &tenant, "error" => %e),
                    }
                },
            ));
        }
    }

    /// Runs `request`'s remaining steps; the tenant's next request is looked for once
    /// it is done.
    fn execute(&mut self, request: Request, ctx: &mut Context<Self>) {
        let core = self.core.clone();
        let tenant = request.tenant_id.clone();
        let done_tenant = tenant.clone();
        let domain = crate::email::message_domain(&core.settings.email.from);
        let finishing = self.finishing.clone();
        let steps = async move {
            let now = core.clock.now_ms();
            let started = core
                .writer
                .write(Some(tenant.clone()), move |conn| {
                    requests::start(conn, &request, now)
                })
                .await?;
            if started.kind == Kind::Erasure && !erase(&core, &started, &finishing).await? {
                return Ok(None);
            }
            let now = core.clock.now_ms();
            let keep_raw_days = core.settings.inbox.keep_raw_days;
            let vault = core.keyring.clone();
            let done = core
                .writer
                .write(Some(tenant.clone()), move |conn| {
                    requests::run(conn, &vault, &started, &domain, keep_raw_days, now)
                })
                .await?;
            if matches!(done.kind, Kind::Restriction | Kind::Objection)
                && done.state == State::Completed
            {
                if let (Some(contact), Some(addr)) = (&done.contact_id, core.tenants.get(&tenant)) {
                    addr.do_send(RestrictContact(contact.clone()));
                }
            }
            Ok(Some(done))
        };
        ctx.spawn(steps.into_actor(self).map(
            move |done: Result<Option<Request>, StorageError>, actor, _| {
                actor.busy.remove(&done_tenant);
                match done {
                    // Stopped between two batches by shutdown: resumed at the next start.
                    Ok(None) => slog::info!(actor.core.log, "privacy request paused for shutdown";
                        "tenant" => &done_tenant),
                    Ok(Some(request)) => {
                        slog::info!(actor.core.log, "privacy request done";
                            "request" => &request.id, "kind" => request.kind.as_str(),
                            "state" => request.state.as_str());
                        // The tenant's next request, at once.
                        actor.core.compliance_wanted.store(true, Ordering::Release);
                    }
                    // Tried again at the next rescan, from the step it stopped at.
                    Err(e) => slog::warn!(actor.core.log, "a privacy request's step failed";
                        "tenant" => &done_tenant, "error" => %e),
                }
            },
        ));
    }
}

/// An erasure's steps after the first (see the module's doc). Returns whether it
/// ran to the end; `false` when shutdown stopped it between two batches.
async fn erase(
    core: &Arc<Core>,
    request: &Request,
    finishing: &AtomicBool,
) -> Result<bool, StorageError> {
    let tenant = request.tenant_id.clone();
    if let Some(contact) = &request.contact_id {
        // Before its keys go: a write from an actor still holding it fails from now on.
        core.writer.contact_gone(contact);
    }
    let vault = core.keyring.clone();
    let now = core.clock.now_ms();
    let shredding = request.clone();
    let began = std::time::Instant::now();
    let shredded = core
        .writer
        .write(Some(tenant.clone()), move |conn| {
            requests::shred(conn, &vault, &shredding, now)
        })
        .await?;
    let Some((record, mut progress)) = shredded else {
        return Ok(true);
    };
    slog::info!(core.log, "erasure: the subject's keys are destroyed";
        "request" => &request.id, "tenant" => &tenant, "ms" => began.elapsed().as_millis());
    // The contact the record names: the request's, or the one it was merged into.
    if let Some(contact) = &record.contact_id {
        core.writer.contact_gone(contact);
        if let Some(addr) = core.tenants.get(&tenant) {
            addr.do_send(ForgetContact(contact.clone()));
        }
    }
    let batch = i64::from(core.settings.compliance.erasure_batch_size);
    let pause = Duration::from_millis(core.settings.compliance.erasure_batch_pause_ms);
    let record = Arc::new(record);
    loop {
        if finishing.load(Ordering::Acquire) {
            return Ok(false);
        }
        let (erasing, record, before) = (request.clone(), record.clone(), progress.clone());
        let (more, after) = core
            .writer
            .write(Some(tenant.clone()), move |conn| {
                let mut progress = before.clone();
                let more = requests::erase_batch(conn, &erasing, &record, &mut progress, batch)?;
                Ok((more, progress))
            })
            .await?;
        progress = after;
        if !more {
            break;
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    compact(core, "erasure").await;
    Ok(true)
}

/// Purges a closed tenant's data, a batch at a time in its lane with the erasure's
/// pause between batches, then compacts the database. Returns whether it ran to the
/// end; `false` when shutdown stopped it between two batches.
async fn purge(
    core: Arc<Core>,
    tenant: TenantId,
    finishing: Arc<AtomicBool>,
) -> Result<bool, StorageError> {
    let batch = i64::from(core.settings.compliance.erasure_batch_size);
    let pause = Duration::from_millis(core.settings.compliance.erasure_batch_pause_ms);
    let mut deleted: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut progress = 0;
    loop {
        if finishing.load(Ordering::Acquire) {
            return Ok(false);
        }
        let (vault, purged, now) = (core.keyring.clone(), tenant.clone(), core.clock.now_ms());
        let (step, reached) = core
            .writer
            .write(Some(tenant.clone()), move |conn| {
                let mut reached = progress;
                let step = closure::purge_batch(conn, &vault, &purged, &mut reached, batch, now)?;
                Ok((step, reached))
            })
            .await?;
        progress = reached;
        let Some((table, rows)) = step else { break };
        *deleted.entry(table).or_default() += rows;
        if table == "tenants" {
            break;
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    slog::info!(core.log, "closed tenant's data deleted"; "tenant" => &tenant, "rows" => ?deleted);
    compact(&core, "tenant purge").await;
    Ok(true)
}

/// What deletes freed still sits in SQLite's WAL or PostgreSQL's dead rows. Readers
/// can hold a checkpoint back for a moment: a few tries, then the regular checkpoints
/// and autovacuum take it over.
async fn compact(core: &Arc<Core>, after: &str) {
    let compacting = std::time::Instant::now();
    for attempt in 1..=3 {
        match core.read(erasure::compact).await {
            Ok(()) => {
                slog::info!(core.log, "the database is compacted"; "after" => after,
                    "ms" => compacting.elapsed().as_millis());
                break;
            }
            Err(e) if attempt == 3 => {
                slog::warn!(core.log, "compacting the database failed"; "after" => after, "error" => %e)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl Actor for ComplianceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |actor, ctx| actor.tick(ctx));
    }
}

impl Supervised for ComplianceActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // What was in hand is read again from its stored state.
        self.busy.clear();
        self.purging = None;
        self.reading = false;
        self.ticks = RESCAN_TICKS;
    }
}

impl Handler<FinishWork> for ComplianceActor {
    type Result = MessageResult<FinishWork>;

    fn handle(&mut self, _msg: FinishWork, ctx: &mut Context<Self>) -> Self::Result {
        self.finishing.store(true, Ordering::Release);
        MessageResult(when_idle(ctx, |actor: &ComplianceActor| {
            actor.busy.is_empty() && !actor.reading && actor.purging.is_none()
        }))
    }
}
