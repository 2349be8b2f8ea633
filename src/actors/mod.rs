//! The actor system. A supervised [`registry::Registry`] owns one
//! [`tenant::TenantActor`] per tenant (spread over the HTTP workers' threads, or over
//! arbiters of their own); each tenant actor
//! owns one [`conversation::ConversationActor`] per (business number, contact), created
//! on demand and stopped when idle. Actors own ordering and in-memory state; every
//! write goes through the storage writer.
//!
//! Commands travel the same tree as events, registry → tenant → conversation, each a
//! message named after its intent: [`submit::Submit`] (a send, through the registry,
//! which starts the tenant's actor when it is not running), and the compliance
//! actor's [`conversation::RestrictContact`] (waiting sends judged again) and
//! [`conversation::ForgetContact`] (an erased contact dropped, its key with it), which
//! go to the tenant's actor only when it runs (one that does not holds no
//! conversation to tell), and [`registry::CloseTenant`] (a closed account's actors
//! stopped, its routes forgotten).
//!
//! A webhook's events are delivered to their conversation actors as they arrive
//! ([`crate::intake`]); each is acknowledged to Meta only once the write that applies it has
//! committed, or, when delivery fails, once it is in the inbox. An actor that dies
//! loses nothing: a delivery it held goes to the inbox, and inbox rows are re-read by
//! a restarted actor and re-dispatched by the registry's sweeper.

pub mod compliance;
pub mod conversation;
pub mod mailer;
pub mod media;
pub mod registry;
pub mod scheduler;
pub mod sender;
pub mod submit;
pub mod tenant;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::ids::TenantId;
use crate::metrics::Metrics;
use crate::storage::key_store::Vault;
use crate::storage::writer::WriterHandle;
use crate::storage::{Pool, StorageError};

/// A hook run before an event is applied.
#[cfg(feature = "testing")]
pub type EventHook = Arc<dyn Fn(&crate::whatsapp::Event) + Send + Sync>;

/// Test-only injection points: with the `testing` feature (which the integration
/// tests enable) the places where a test makes an actor or a writer fail; without
/// it, nothing, and nothing on the hot path looks for them.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called by a conversation actor before it applies an event; a panic here is
    /// handled exactly like a bug in the actor.
    #[cfg(feature = "testing")]
    pub before_apply: Option<EventHook>,
    /// Called by a writer thread before each write batch; a panic here is handled
    /// exactly like a bug in the writer.
    #[cfg(feature = "testing")]
    pub before_write_batch: Option<crate::storage::writer::BatchHook>,
    /// While set, the compliance actor starts no step: requests stay as submitted.
    #[cfg(feature = "testing")]
    pub hold_compliance: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut hooks = f.debug_struct("Hooks");
        #[cfg(feature = "testing")]
        hooks
            .field("before_apply", &self.before_apply.is_some())
            .field("before_write_batch", &self.before_write_batch.is_some())
            .field("hold_compliance", &self.hold_compliance.is_some());
        hooks.finish()
    }
}

/// Asks an actor whose work calls out (a number's sender, the media fetcher) to start
/// nothing new; the answer is told when the work in its hands has ended, for shutdown
/// to await. What it had not started stays durable and goes at the next start.
#[derive(Message)]
#[rtype(result = "tokio::sync::oneshot::Receiver<()>")]
pub struct FinishWork;

/// How often an actor finishing its work looks whether it has.
const FINISH_POLL: Duration = Duration::from_millis(20);

/// A receiver told once `idle` holds for the actor, which looks every [`FINISH_POLL`].
fn when_idle<A>(ctx: &mut Context<A>, idle: fn(&A) -> bool) -> tokio::sync::oneshot::Receiver<()>
where
    A: Actor<Context = Context<A>>,
{
    let (done, told) = tokio::sync::oneshot::channel();
    let mut done = Some(done);
    ctx.run_interval(FINISH_POLL, move |actor, _| {
        if done.is_some() && idle(actor) {
            if let Some(done) = done.take() {
                let _ = done.send(());
            }
        }
    });
    told
}

/// What every actor shares.
pub struct Core {
    pub settings: Settings,
    pub pool: Pool,
    pub writer: WriterHandle,
    pub keyring: Arc<Vault>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub log: slog::Logger,
    pub hooks: Hooks,
    /// phone_number_id → owning tenant, shared with the writers.
    pub routes: Arc<crate::storage::routes::RouteCache>,
    pub tenants: registry::TenantDirectory,
    /// The HTTP workers' threads, hosts of the tenant actors unless `actors.arbiters`
    /// gives them threads of their own.
    pub hosts: registry::ActorHosts,
    /// Where conversation actors look their contacts up.
    pub readers: crate::storage::readers::ContactReaders,
    /// The business numbers' senders (outbound).
    pub senders: sender::Senders,
    /// Each tenant's automations and settings, loaded once and kept until they change.
    pub automations: crate::automation::AutomationBook,
    /// Set when a write stored media to fetch: the media fetcher looks at once.
    pub media_wanted: std::sync::atomic::AtomicBool,
    /// Set when a privacy request was submitted: the compliance actor looks at once.
    pub compliance_wanted: std::sync::atomic::AtomicBool,
}

impl Core {
    /// A read on the pool, off the async threads.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut crate::storage::DbConn, &Vault) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let pool = self.pool.clone();
        let keyring = self.keyring.clone();
        actix_web::rt::task::spawn_blocking(move || {
            crate::storage::with_conn(&pool, |conn| f(conn, &keyring))
        })
        .await
        .map_err(|e| StorageError::Panicked(e.to_string()))?
    }
}

/// Groups `items` by the tenant each belongs to, keeping their order within a tenant.
pub(crate) fn by_tenant<T>(
    items: Vec<T>,
    tenant: impl Fn(&T) -> &TenantId,
) -> HashMap<TenantId, Vec<T>> {
    let mut groups: HashMap<TenantId, Vec<T>> = HashMap::new();
    for item in items {
        groups.entry(tenant(&item).clone()).or_default().push(item);
    }
    groups
}

/// Parks the inbox rows of a closed tenant: nothing will apply them, and no sweep
/// waits for them (its purge takes them).
pub fn park_for_closed_tenant(core: &Arc<Core>, items: &[crate::storage::inbox::InboxItem]) {
    let rows = items
        .iter()
        .map(|item| (item.id, "the account is closed".to_string()))
        .collect();
    park_inbox_rows(core, rows);
}

/// Parks inbox rows at once, each with its reason: rows that cannot be read back
/// (sealed under another key, damaged), or that keep crashing their actor. They stop
/// coming back to every sweep, and the operator sees them (`converra inbox parked`). Runs in the background; a failure is logged and the next
/// sweep finds the rows again.
pub fn park_inbox_rows(core: &Arc<Core>, rows: Vec<(i64, String)>) {
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    slog::warn!(core.log, "inbox rows parked for the operator"; "ids" => ?ids);
    let writer = core.writer.clone();
    let log = core.log.clone();
    let metrics = core.metrics.clone();
    let now = core.clock.now_ms();
    actix::spawn(async move {
        let parked = writer
            .write(None, move |conn| {
                for (id, reason) in &rows {
                    crate::storage::inbox::record_failure(conn, *id, reason, 0, now)?;
                }
                crate::storage::inbox::parked_count(conn)
            })
            .await;
        match parked {
            Ok(parked) => metrics.inbox_parked.set(parked),
            Err(e) => slog::warn!(log, "parking unreadable inbox rows failed"; "error" => %e),
        }
    });
}
