//! Intake: a verified webhook's content on its way in; not an actor, but the bridge from
//! the HTTP handler to the actors and the writer. Events for numbers a tenant
//! owns are delivered to their conversation actors, which apply them and answer once
//! the write is durable; everything else (numbers no tenant owns, content that is not
//! an event, and any event whose delivery failed) is committed to the inbox by the
//! writer. Either way the webhook is answered only once all of it is durable.

use std::collections::HashMap;
use std::sync::Arc;

use actix::Addr;

use crate::actors::conversation::Delivery;
use crate::actors::registry::{send_to_tenant, Registry};
use crate::actors::{tenant, Core};
use crate::ids::{PhoneNumberId, TenantId};
use crate::storage::handoff;
use crate::storage::inbox::FreshEvent;
use crate::storage::writer::Delivered;
use crate::storage::StorageError;
use crate::whatsapp::ParsedWebhook;

/// What a webhook carried and what became of it; also the webhook's response body.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    pub received: usize,
    pub new: usize,
    pub duplicates: usize,
    pub unrouted: usize,
    pub stored_raw: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// An event that names no contact (no phone number, no BSUID): it cannot be routed.
    #[error("a {0} event names no contact, so it cannot be routed")]
    Unroutable(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The owners of `numbers`: from the shared route cache, and from the database (off
/// the async threads) for those it does not hold.
async fn owners(
    core: &Arc<Core>,
    numbers: Vec<PhoneNumberId>,
) -> Result<HashMap<PhoneNumberId, TenantId>, StorageError> {
    let now = core.clock.now_ms();
    let (mut found, missing) = core.routes.cached(numbers, now);
    if missing.is_empty() {
        return Ok(found);
    }
    let core_for_lookup = core.clone();
    let looked_up = actix_web::rt::task::spawn_blocking(move || {
        let mut conn = core_for_lookup.pool.get()?;
        core_for_lookup.routes.look_up(&mut conn, &missing, now)
    })
    .await
    .map_err(|e| StorageError::Panicked(e.to_string()))??;
    found.extend(looked_up);
    Ok(found)
}

/// Hands deliveries to their tenant actors.
fn deliver(core: &Core, registry: &Addr<Registry>, deliveries: Vec<Delivery>) {
    for (tenant_id, deliveries) in crate::actors::by_tenant(deliveries, |d| &d.tenant_id) {
        send_to_tenant(core, registry, tenant_id, tenant::RouteArrivals(deliveries));
    }
}

/// Takes in a verified webhook; resolves once everything it carried is durable.
pub async fn receive(
    core: &Arc<Core>,
    registry: &Addr<Registry>,
    parsed: ParsedWebhook,
) -> Result<Receipt, IntakeError> {
    let mut receipt = Receipt {
        received: parsed.events.len(),
        ..Receipt::default()
    };
    let events = parsed
        .events
        .into_iter()
        .map(|event| {
            let kind = event.kind.as_str();
            FreshEvent::new(event).ok_or(IntakeError::Unroutable(kind))
        })
        .collect::<Result<Vec<FreshEvent>, IntakeError>>()?;
    let mut numbers: Vec<PhoneNumberId> = events
        .iter()
        .map(|e| e.keys.phone_number_id.clone())
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let owners = owners(core, numbers).await?;

    let mut deliveries = Vec::new();
    let mut waiting = Vec::new();
    let mut for_inbox = Vec::new();
    for event in events {
        match owners.get(&event.keys.phone_number_id) {
            Some(tenant_id) => {
                let (reply, answer) = handoff::channel();
                deliveries.push(Delivery {
                    tenant_id: tenant_id.clone(),
                    event: event.clone(),
                    reply,
                });
                waiting.push((event, answer));
            }
            // The writer stores it as unrouted (or routes it, if the number was
            // registered meanwhile).
            None => for_inbox.push(event),
        }
    }
    deliver(core, registry, deliveries);
    for (event, answer) in waiting {
        match answer.await {
            Ok(Delivered::New) => receipt.new += 1,
            Ok(Delivered::Duplicate) => receipt.duplicates += 1,
            // The actor panicked on it or its write failed: the inbox takes it.
            Err(_) => for_inbox.push(event),
        }
    }

    if !parsed.account.is_empty() {
        // Applied before the webhook is answered: a failure makes Meta send it again.
        crate::actors::sender::apply_account_updates(core, parsed.account).await?;
    }
    if for_inbox.is_empty() && parsed.others.is_empty() {
        return Ok(receipt);
    }
    let day = core
        .writer
        .day_key(&core.keyring, core.clock.now_ms())
        .await?;
    for other in &parsed.others {
        slog::warn!(core.log, "signed webhook content stored raw";
            "reason" => other.reason, "field" => other.field.as_deref().unwrap_or("-"));
    }
    let stored = core.writer.ingest(day, for_inbox, parsed.others).await?;
    receipt.new += stored.accepted.len();
    receipt.duplicates += stored.duplicates;
    receipt.unrouted += stored.unrouted;
    receipt.stored_raw += stored.others;
    Ok(receipt)
}
