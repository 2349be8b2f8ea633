//! The compliance actor: one supervised actor that executes the data-subject requests
//! of every tenant, strictly one at a time per tenant and in the order received
//! ([`crate::compliance::requests`]). Each step (started, then done) is a write in
//! the tenant's lane with its audit entry, so a crash resumes at the step it stopped
//! before. It looks for work when a request is submitted and every few seconds.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::{when_idle, Core, FinishWork};
use crate::compliance::requests;
use crate::ids::TenantId;
use crate::storage::privacy::{self, Request};
use crate::storage::StorageError;

/// How often the actor looks whether a request woke it.
const TICK: Duration = Duration::from_millis(200);
/// How often it looks for open requests without being woken (after a restart, or
/// a step that failed).
const RESCAN_TICKS: u32 = 25;

pub struct ComplianceActor {
    core: Arc<Core>,
    /// Tenants with a request being executed.
    busy: HashSet<TenantId>,
    reading: bool,
    ticks: u32,
    /// Shutdown asked it to start no step ([`FinishWork`]).
    finishing: bool,
}

impl ComplianceActor {
    pub fn new(core: Arc<Core>) -> ComplianceActor {
        ComplianceActor {
            core,
            busy: HashSet::new(),
            reading: false,
            ticks: RESCAN_TICKS,
            finishing: false,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.ticks += 1;
        if self.reading || self.finishing {
            return;
        }
        let woken = self.core.compliance_wanted.swap(false, Ordering::AcqRel);
        if !woken && self.ticks < RESCAN_TICKS {
            return;
        }
        self.ticks = 0;
        self.reading = true;
        let core = self.core.clone();
        let read = async move { core.read(|conn, _| privacy::next_per_tenant(conn)).await };
        ctx.spawn(read.into_actor(self).map(|next, actor, ctx| {
            actor.reading = false;
            match next {
                Ok(next) => {
                    for request in next {
                        if !actor.finishing && actor.busy.insert(request.tenant_id.clone()) {
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

    /// Runs `request`'s remaining steps; the tenant's next request is looked for once
    /// it is done.
    fn execute(&mut self, request: Request, ctx: &mut Context<Self>) {
        let core = self.core.clone();
        let tenant = request.tenant_id.clone();
        let done_tenant = tenant.clone();
        let domain = crate::email::message_domain(&core.settings.email.from);
        let steps = async move {
            let now = core.clock.now_ms();
            let started = core
                .writer
                .write(Some(tenant.clone()), move |conn| {
                    requests::start(conn, &request, now)
                })
                .await?;
            let now = core.clock.now_ms();
            core.writer
                .write(Some(tenant), move |conn| {
                    requests::run(conn, &started, &domain, now)
                })
                .await
        };
        ctx.spawn(steps.into_actor(self).map(
            move |done: Result<Request, StorageError>, actor, _| {
                actor.busy.remove(&done_tenant);
                match done {
                    Ok(request) => {
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
        self.reading = false;
        self.ticks = RESCAN_TICKS;
    }
}

impl Handler<FinishWork> for ComplianceActor {
    type Result = MessageResult<FinishWork>;

    fn handle(&mut self, _msg: FinishWork, ctx: &mut Context<Self>) -> Self::Result {
        self.finishing = true;
        MessageResult(when_idle(ctx, |actor: &ComplianceActor| {
            actor.busy.is_empty() && !actor.reading
        }))
    }
}
