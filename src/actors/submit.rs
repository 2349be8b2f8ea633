//! Sends on their way to the outbox, from the API today and from automations alike.
//! [`send`] checks what needs no conversation (the number is the tenant's, the first
//! answer to an idempotency key, a template against the one synced from Meta), then
//! hands the order down registry → tenant → conversation ([`Submit`]) to the actor of
//! the number and the contact. That actor accepts its orders one at a time, in the
//! order they came, so a contact's messages are stored, and leave, in that order;
//! [`accept`] checks the rules only the database knows (restriction, opt-out,
//! objection, the customer-service window) in the write that stores the send, and the
//! number's sender is woken once it is committed.

use std::sync::Arc;

use actix::prelude::*;

use super::registry::{send_to_tenant, Registry};
use super::{sender, Core};
use crate::ids::{MessageId, PhoneNumberId, TenantId, Wamid};
use crate::rules::Conflict;
use crate::rules::{FieldError, Rule};
use crate::storage::automations::AutomationRun;
use crate::storage::contacts::{ContactIdentifiers, ContactQuestion, Lookup, ResolvedContact};
use crate::storage::handoff::{self, Reply};
use crate::storage::outbox::{self, Accepted, NewSend, OutboxRow};
use crate::storage::templates::{self, Known};
use crate::storage::{tenants, StorageError};
use crate::whatsapp::outbound::{self, OutboundKind, Recipient, SendRequest, Target};
use crate::whatsapp::Identity;

/// A checked send, addressed to its conversation.
pub struct SendOrder {
    pub tenant_id: TenantId,
    pub request: SendRequest,
    /// The contact it goes to (for a read receipt, the sender of the message read).
    pub contact: ContactIdentifiers,
    /// `Idempotency-Key` as a keyed hash, and the request's hash.
    pub idempotency: Option<(String, String)>,
    /// A marketing template, or an automation's reply other than a confirmation: not
    /// to a contact who opted out or objected.
    pub marketing: bool,
    /// Sent by an automation: the run to record with it.
    pub automation: Option<AutomationRun>,
}

impl SendOrder {
    /// The contact as an identity, to route the order by.
    pub fn identity(&self) -> Identity {
        Identity {
            user_id: self.contact.user_id.clone(),
            wa_id: self.contact.wa_id.clone(),
            ..Identity::default()
        }
    }

    pub fn phone_number_id(&self) -> PhoneNumberId {
        self.request.from_phone_number_id.clone()
    }
}

/// A send for a conversation's contact, to accept into the outbox after the ones
/// before it. `reply` hears the outcome; dropped unanswered (the actor restarted),
/// nothing was stored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit {
    pub order: SendOrder,
    pub reply: Reply<Result<Accepted, StorageError>>,
}

/// Why a send was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SendRefused {
    /// Meta would refuse it, or the template does not fit the synced one.
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("no phone number of yours has this id")]
    UnknownNumber,
    #[error("no inbound message of yours has this id")]
    UnknownMessage,
    /// A rule of the outbox (`StorageError::Conflict`), a reused idempotency key, or
    /// the database.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Accepts `request` from `tenant_id` into the outbox, through its conversation
/// actor; `idempotency` is the `Idempotency-Key` and the hash of the request it came
/// with.
pub async fn send(
    core: &Arc<Core>,
    registry: &Addr<Registry>,
    tenant_id: TenantId,
    request: SendRequest,
    idempotency: Option<(String, String)>,
) -> Result<Accepted, SendRefused> {
    let idempotency = idempotency.map(|(key, hash)| {
        let bidx = core
            .keyring
            .blind_index(tenant_id.as_str(), "idempotency_key", &key);
        (bidx, hash)
    });
    // What needs the database, in one read: the number is the tenant's (unless the
    // route cache knows), an idempotency key's first answer, the synced template.
    let number = request.from_phone_number_id.clone();
    let now = core.clock.now_ms();
    let cached_owner = core.routes.cached([number.clone()], now).0.remove(&number);
    if cached_owner
        .as_ref()
        .is_some_and(|owner| *owner != tenant_id)
    {
        return Err(SendRefused::UnknownNumber);
    }
    let template = template_named(&request);
    let checked = if cached_owner.is_none() || idempotency.is_some() || template.is_some() {
        let (tenant, idempotency, template) =
            (tenant_id.clone(), idempotency.clone(), template.clone());
        let owner_known = cached_owner.is_some();
        core.read(move |conn, _| {
            if !owner_known && !tenants::owns_number(conn, &tenant, &number)? {
                return Ok(Checked::UnknownNumber);
            }
            if let Some((bidx, hash)) = &idempotency {
                if let Some(first) = outbox::replay(conn, &tenant, bidx, hash)? {
                    return Ok(Checked::Replayed(first));
                }
            }
            let known = match &template {
                Some((name, language)) => Some(templates::template_for_number(
                    conn, &tenant, &number, name, language,
                )?),
                None => None,
            };
            Ok(Checked::New(known))
        })
        .await?
    } else {
        Checked::New(None)
    };
    let marketing = match checked {
        Checked::UnknownNumber => return Err(SendRefused::UnknownNumber),
        Checked::Replayed(first) => return Ok(first),
        Checked::New(Some(known)) => judge_template(&request, known)?,
        Checked::New(None) => false,
    };
    let contact = match &request.to {
        Target::Recipient(Recipient::WaId(wa_id)) => ContactIdentifiers {
            user_id: None,
            wa_id: Some(wa_id.clone()),
        },
        Target::Recipient(Recipient::UserId(user_id)) => ContactIdentifiers {
            user_id: Some(user_id.clone()),
            wa_id: None,
        },
        Target::ReadReceipt { message_id } => {
            let bidx = core
                .keyring
                .wamid_index(tenant_id.as_str(), &Wamid(message_id.clone()));
            let tenant = tenant_id.clone();
            core.read(move |conn, vault| outbox::message_sender(conn, vault, &tenant, &bidx))
                .await?
                .ok_or(SendRefused::UnknownMessage)?
        }
    };
    let order = SendOrder {
        tenant_id: tenant_id.clone(),
        request,
        contact,
        idempotency,
        marketing,
        automation: None,
    };
    let (reply, answer) = handoff::channel();
    send_to_tenant(core, registry, tenant_id, Submit { order, reply });
    let accepted = answer.await.map_err(|_| {
        StorageError::Unavailable(
            "the send's conversation stopped before it answered: the send may or may not be \
             stored; retry with the same Idempotency-Key"
                .into(),
        )
    })??;
    Ok(accepted)
}

/// What the database says of a send before it goes to its conversation.
enum Checked {
    UnknownNumber,
    /// The first answer to its idempotency key.
    Replayed(Accepted),
    /// A new send, with the template it names as synced (for a template send).
    New(Option<Known>),
}

/// The name and language of the template a template send names.
fn template_named(request: &SendRequest) -> Option<(String, String)> {
    if request.kind != OutboundKind::Template {
        return None;
    }
    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_string();
    Some((
        text(&request.message["name"]),
        text(&request.message["language"]["code"]),
    ))
}

/// A template send against the template synced for the number's account: it exists,
/// is approved, and gets its parameters. Whether it is marketing. Before the first
/// sync Meta judges the rest, and the template counts as marketing.
fn judge_template(request: &SendRequest, known: Known) -> Result<bool, SendRefused> {
    let (name, language) = template_named(request).unwrap_or_default();
    let invalid = |rule: Rule, message: String| FieldError {
        field: "template.name".into(),
        rule,
        message,
    };
    let template = match known {
        // Its category is unknown until the account is synced: judged as marketing,
        // so that nothing unknown reaches a contact who opted out or objected.
        Known::Unsynced => return Ok(true),
        Known::Missing => {
            return Err(invalid(
                Rule::Unknown,
                format!("the number's account has no template {name:?} in {language:?}"),
            )
            .into())
        }
        Known::Found(template) => template,
    };
    if template.status != "APPROVED" {
        return Err(invalid(
            Rule::OneOf,
            format!("template {name:?} is {}, not APPROVED", template.status),
        )
        .into());
    }
    outbound::check_template_fits(&request.message, &template.components)?;
    Ok(template.category.eq_ignore_ascii_case("MARKETING"))
}

/// Stores `order` in the outbox (run by its conversation actor, one order at a time),
/// under `known`, the contact the actor holds when it is the order's and stored; else
/// the contact is looked up, or created for a template. Counts a refusal by its rule
/// and hands the send to the number's sender. With the answer, the contact it was
/// stored under, for the actor to keep.
pub(super) async fn accept(
    core: Arc<Core>,
    order: SendOrder,
    known: Option<Arc<ResolvedContact>>,
) -> (Result<Accepted, StorageError>, Option<Arc<ResolvedContact>>) {
    use futures_util::FutureExt;
    let number = order.phone_number_id();
    let stored = std::panic::AssertUnwindSafe(async {
        let mut known = known;
        // Twice at most: a contact held may have been merged into another meanwhile.
        for _ in 0..2 {
            let contact = match known.take() {
                Some(contact) => contact,
                None => Arc::new(find_contact(&core, &order).await?),
            };
            match store(&core, &order, &contact).await {
                Ok((accepted, fresh)) => return Ok((accepted, fresh, contact)),
                Err(StorageError::ContactStale(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StorageError::ContactStale(
            "the contact changed twice while the send was stored".into(),
        ))
    })
    .catch_unwind()
    .await;
    match stored {
        Ok(Ok((accepted, fresh, contact))) => {
            if !accepted.replayed {
                sender::queue(&core, fresh, &number);
            }
            (Ok(accepted), Some(contact))
        }
        Ok(Err(e)) => (Err(refused(&core, e)), None),
        Err(panic) => {
            let cause = crate::storage::panic_message(&panic);
            slog::error!(core.log, "storing a send panicked"; "cause" => &cause);
            (Err(StorageError::Panicked(cause)), None)
        }
    }
}

/// Counts a refusal by its rule (an automation held back by its cooldown was not
/// refused: it did not run).
fn refused(core: &Core, e: StorageError) -> StorageError {
    if let StorageError::Conflict { code, .. } = &e {
        if *code == Conflict::AutomationHeldBack {
            return e;
        }
        core.metrics
            .outbound_refusals
            .with_label_values(&[code.as_str()])
            .inc();
    }
    e
}

/// The send stored, and as its number's sender takes it.
async fn store(
    core: &Core,
    order: &SendOrder,
    contact: &ResolvedContact,
) -> Result<(Accepted, sender::Fresh), StorageError> {
    let (send, fresh) = new_send(core, order, contact)?;
    let accepted = core
        .writer
        .write(Some(order.tenant_id.clone()), move |conn| {
            outbox::accept(conn, &send)
        })
        .await?;
    Ok((accepted, fresh))
}

/// The order's contact: found, or created for a template (a contact never seen on the
/// number has no window, so nothing else may open a conversation with them).
async fn find_contact(core: &Core, order: &SendOrder) -> Result<ResolvedContact, StorageError> {
    let question = ContactQuestion {
        tenant_id: order.tenant_id.clone(),
        phone_number_id: order.phone_number_id(),
        ids: order.contact.clone(),
    };
    match core.readers.look_up(question).await? {
        Lookup::Found(contact, _) => Ok(contact),
        Lookup::Absent if order.request.kind.needs_window() => Err(StorageError::Conflict {
            code: Conflict::OutsideWindow,
            message: outbox::OUTSIDE_WINDOW_MESSAGE.into(),
        }),
        Lookup::Absent | Lookup::NeedsWriter => {
            core.writer
                .resolve(order.tenant_id.clone(), order.contact.clone())
                .await
        }
    }
}

/// The send as stored (Meta's body and the content, sealed under the contact's key),
/// and as its sender will take it once stored.
fn new_send(
    core: &Core,
    order: &SendOrder,
    contact: &ResolvedContact,
) -> Result<(NewSend, sender::Fresh), StorageError> {
    let request = &order.request;
    let tenant_id = &order.tenant_id;
    let id = MessageId::generate();
    let body = outbound::graph_body(request, id.as_str());
    let request_ct = outbox::seal_request(&contact.key, tenant_id, &id, &body)?;
    let content_ct = match request.kind {
        OutboundKind::Read => None,
        _ => Some(outbox::seal_content(
            &contact.key,
            tenant_id,
            &id,
            &request.message,
            request.context.as_ref(),
        )?),
    };
    let now = core.clock.now_ms();
    let deadline = now + (core.settings.outbound.retry_deadline_secs * 1000) as i64;
    let fresh = sender::Fresh {
        row: OutboxRow {
            id: id.clone(),
            tenant_id: tenant_id.clone(),
            contact_id: contact.contact_id.clone(),
            kind: request.kind.as_str().to_string(),
            key_id: contact.key_id.to_string(),
            // Opened already: `body`.
            request_ct: Vec::new(),
            state: outbox::OutboxState::Queued,
            attempts: 0,
            next_attempt_at: now,
            deadline_at: deadline,
            limit_held: false,
        },
        key: contact.key.clone(),
        body,
    };
    let send = NewSend {
        id,
        tenant_id: tenant_id.clone(),
        phone_number_id: order.phone_number_id(),
        contact_id: contact.contact_id.clone(),
        key_id: contact.key_id.clone(),
        kind: request.kind.as_str().to_string(),
        needs_window: request.kind.needs_window(),
        marketing: order.marketing,
        automation: order.automation.clone(),
        content_ct,
        request_ct,
        idempotency: order.idempotency.clone(),
        now_ms: now,
        deadline_ms: deadline,
    };
    Ok((send, fresh))
}
