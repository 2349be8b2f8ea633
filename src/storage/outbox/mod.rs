//! The outbox (`outbox`, `idempotency_keys`): outbound sends committed before any call
//! to Meta. Accepting a send writes the message's own row (`messages`, direction
//! outbound, `queued`, its content sealed under the contact's key), its outbox row
//! (Meta's request body, sealed likewise) and its idempotency key, in one transaction.
//! The number's sender then takes due rows in the order they were accepted, one at a
//! time per contact, and records each outcome here: Meta's wamid on the message (a
//! status that came first, kept on a row of its own, is folded in), a retry's next
//! time, or the failure with Meta's error.

mod outcomes;
mod reads;

pub use outcomes::{
    fail_queued_of_tenant, mark_sending, purge_finished, record_accepted, record_done,
    record_failed, record_marketing_stop, retry_at, Marking,
};
pub use reads::{
    is_pending, pending_sends, row_key, send_record, send_record_opened, OutboxRow, SendRecord,
    SendStage,
};

use diesel::prelude::*;

use super::apply::{content_place, wamid_place, MessageBundle};
use super::automations::{self, AutomationRun};
use super::contacts::{contact_field, ContactIdentifiers};
use super::conversations::upsert_conversation;
use super::key_store::Vault;
use super::keys::load_data_key;
use super::messages::{MessageState, INBOUND, OUTBOUND};
use super::on_backend;
use super::schema::{contacts, conversations, idempotency_keys, messages, outbox};
use super::usage;
use super::{DbConn, StorageError};
use crate::crypto::{Place, SealKey};
use crate::ids::{ContactId, KeyId, MessageId, PhoneNumberId, TenantId, Wamid};
use crate::rules::Conflict;

/// Where a send's Meta request body is sealed.
pub fn request_place<'a>(tenant_id: &'a str, outbox_id: &'a str) -> Place<'a> {
    Place::new(tenant_id, "outbox", "request_ct", outbox_id)
}

/// Where an outbox row stands (its `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    /// Waiting for its turn (or its retry's time).
    Queued,
    /// Handed to Meta; its outcome not yet recorded (unknown after a crash).
    Sending,
    /// Meta accepted it.
    Done,
    /// Meta refused it for good, or its deadline passed.
    Failed,
}

impl OutboxState {
    pub const fn as_str(self) -> &'static str {
        match self {
            OutboxState::Queued => "queued",
            OutboxState::Sending => "sending",
            OutboxState::Done => "done",
            OutboxState::Failed => "failed",
        }
    }

    fn parse(state: &str) -> Result<OutboxState, StorageError> {
        Ok(match state {
            QUEUED => OutboxState::Queued,
            SENDING => OutboxState::Sending,
            DONE => OutboxState::Done,
            FAILED => OutboxState::Failed,
            other => {
                return Err(StorageError::Corrupt(format!(
                    "outbox state {other:?} is none of Converra's"
                )))
            }
        })
    }
}

// The states as the queries write them.
pub(super) const QUEUED: &str = OutboxState::Queued.as_str();
const SENDING: &str = OutboxState::Sending.as_str();
const DONE: &str = OutboxState::Done.as_str();
const FAILED: &str = OutboxState::Failed.as_str();
/// The states a send ends in.
pub(super) const FINISHED: [&str; 2] = [DONE, FAILED];
/// The states of a send not yet finished.
pub(super) const UNFINISHED: [&str; 2] = [QUEUED, SENDING];

/// A send the API has checked, ready to be stored.
pub struct NewSend {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub phone_number_id: PhoneNumberId,
    pub contact_id: ContactId,
    pub key_id: KeyId,
    /// Meta's type name, or `read` for a read receipt (which has no message row).
    pub kind: String,
    /// Whether it may go only inside the contact's customer-service window.
    pub needs_window: bool,
    /// A marketing template, or an automation's reply other than a confirmation: not
    /// to a contact who opted out or objected.
    pub marketing: bool,
    /// Sent by an automation: its run, recorded (and its cooldown checked) here.
    pub automation: Option<AutomationRun>,
    /// The type's object (the message's content) sealed, for the message row.
    pub content_ct: Option<Vec<u8>>,
    /// Meta's request body, sealed.
    pub request_ct: Vec<u8>,
    /// `Idempotency-Key` as a keyed hash, and the request's hash.
    pub idempotency: Option<(String, String)>,
    pub now_ms: i64,
    pub deadline_ms: i64,
}

pub const OUTSIDE_WINDOW_MESSAGE: &str = "more than 24 hours since the contact's last message \
    to this number (or none yet): only a template may be sent";

/// A send accepted now, or the first answer to its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub state: String,
    pub replayed: bool,
}

/// The send an idempotency key was first used for: `Ok(None)` when unused; a key
/// used with another body is refused.
pub fn replay(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    key_bidx: &str,
    request_hash: &str,
) -> Result<Option<Accepted>, StorageError> {
    let first: Option<(String, String)> = on_backend!(conn, c => idempotency_keys::table
        .filter(idempotency_keys::tenant_id.eq(tenant_id.as_str()))
        .filter(idempotency_keys::key_bidx.eq(key_bidx))
        .select((idempotency_keys::request_hash, idempotency_keys::outbox_id))
        .get_result(c)
        .optional())?;
    let Some((hash, id)) = first else {
        return Ok(None);
    };
    if hash != request_hash {
        return Err(StorageError::IdempotencyKeyReused);
    }
    // The first response, as it was: the send's state now is GET /v1/messages/{id}'s.
    Ok(Some(Accepted {
        id,
        state: MessageState::Queued.as_str().to_string(),
        replayed: true,
    }))
}

/// Stores an accepted send (see the module's doc), after checking what only the
/// database knows: the contact is not restricted and, for a free-form message, its
/// customer-service window on this number is open.
pub fn accept(conn: &mut DbConn, send: &NewSend) -> Result<Accepted, StorageError> {
    if let Some((key_bidx, hash)) = &send.idempotency {
        if let Some(first) = replay(conn, &send.tenant_id, key_bidx, hash)? {
            return Ok(first);
        }
    }
    let tenant = send.tenant_id.as_str();
    let found: Option<(Option<i64>, Option<i64>, bool)> = on_backend!(conn, c => contacts::table
            .find(send.contact_id.as_str())
            .filter(contacts::tenant_id.eq(tenant))
            .filter(crate::storage::contacts::not_erased())
            .select((contacts::restricted_at, contacts::objected_at, contacts::marketing_opt_out))
            .get_result(c)
            .optional())?;
    // Merged into another contact, or erased, since the caller found it: found again,
    // then retried.
    let Some((restricted, objected, opted_out)) = found else {
        return Err(StorageError::ContactStale(send.contact_id.to_string()));
    };
    if restricted.is_some() {
        return Err(StorageError::Conflict {
            code: Conflict::Restricted,
            message: "the contact's processing is restricted: nothing may be sent".into(),
        });
    }
    let what = if send.automation.is_some() {
        "no automation may answer"
    } else {
        "no marketing template may be sent"
    };
    if send.marketing && objected.is_some() {
        return Err(StorageError::Conflict {
            code: Conflict::Objected,
            message: format!("the contact objected to marketing: {what}"),
        });
    }
    if send.marketing && opted_out {
        return Err(StorageError::Conflict {
            code: Conflict::OptedOut,
            message: format!("the contact stopped marketing messages: {what}"),
        });
    }
    if let Some(run) = &send.automation {
        if automations::held_back(conn, run, &send.contact_id, send.now_ms)? {
            return Err(StorageError::Conflict {
                code: Conflict::AutomationHeldBack,
                message: "the automation ran for this contact within its cooldown".into(),
            });
        }
    }
    if send.needs_window {
        let window_ends_at: Option<Option<i64>> = on_backend!(conn, c => conversations::table
            .filter(conversations::tenant_id.eq(tenant))
            .filter(conversations::phone_number_id.eq(send.phone_number_id.as_str()))
            .filter(conversations::contact_id.eq(send.contact_id.as_str()))
            .select(conversations::window_ends_at)
            .get_result(c)
            .optional())?;
        if window_ends_at
            .flatten()
            .is_none_or(|ends| ends <= send.now_ms)
        {
            return Err(StorageError::Conflict {
                code: Conflict::OutsideWindow,
                message: OUTSIDE_WINDOW_MESSAGE.into(),
            });
        }
    }
    let id = send.id.as_str();
    if let Some(content_ct) = &send.content_ct {
        let conversation_id = upsert_conversation(
            conn,
            &send.tenant_id,
            &send.phone_number_id,
            &send.contact_id,
            None,
            send.now_ms,
        )?;
        on_backend!(conn, c => diesel::insert_into(messages::table)
            .values((
                messages::id.eq(id),
                messages::tenant_id.eq(tenant),
                messages::conversation_id.eq(conversation_id.as_str()),
                messages::contact_id.eq(send.contact_id.as_str()),
                // Known by its own id until Meta gives it a wamid.
                messages::wamid_bidx.eq(pending_wamid(id)),
                messages::direction.eq(OUTBOUND),
                messages::msg_type.eq(&send.kind),
                messages::sent_at.eq(send.now_ms),
                messages::received_at.eq(send.now_ms),
                messages::key_id.eq(send.key_id.as_str()),
                messages::content_ct.eq(content_ct),
                messages::status.eq(MessageState::Queued.as_str()),
                messages::status_at.eq(send.now_ms),
            ))
            .execute(c))?;
    }
    on_backend!(conn, c => diesel::insert_into(outbox::table)
        .values((
            outbox::id.eq(id),
            outbox::tenant_id.eq(tenant),
            outbox::phone_number_id.eq(send.phone_number_id.as_str()),
            outbox::contact_id.eq(send.contact_id.as_str()),
            outbox::kind.eq(&send.kind),
            outbox::key_id.eq(send.key_id.as_str()),
            outbox::request_ct.eq(&send.request_ct),
            outbox::state.eq(QUEUED),
            outbox::attempts.eq(0),
            outbox::next_attempt_at.eq(send.now_ms),
            outbox::accepted_at.eq(send.now_ms),
            outbox::deadline_at.eq(send.deadline_ms),
            outbox::marketing.eq(send.marketing),
        ))
        .execute(c))?;
    usage::add(
        conn,
        tenant,
        send.now_ms,
        &format!("{}{}", usage::OUTBOUND_PREFIX, send.kind),
        1,
    )?;
    if let Some(run) = &send.automation {
        usage::add(conn, tenant, send.now_ms, usage::AUTOMATION_RUNS, 1)?;
        automations::record_run(
            conn,
            &send.tenant_id,
            run,
            &send.contact_id,
            Some(id),
            automations::ACCEPTED,
            send.now_ms,
        )?;
    }
    if let Some((key_bidx, hash)) = &send.idempotency {
        on_backend!(conn, c => diesel::insert_into(idempotency_keys::table)
            .values((
                idempotency_keys::tenant_id.eq(tenant),
                idempotency_keys::key_bidx.eq(key_bidx),
                idempotency_keys::request_hash.eq(hash),
                idempotency_keys::outbox_id.eq(id),
                idempotency_keys::created_at.eq(send.now_ms),
            ))
            .execute(c))?;
    }
    Ok(Accepted {
        id: id.to_string(),
        state: MessageState::Queued.as_str().to_string(),
        replayed: false,
    })
}

/// The placeholder a queued message is known by in `wamid_bidx` (unique, never a
/// keyed hash's 32 hex digits).
fn pending_wamid(id: &str) -> String {
    format!("pending:{id}")
}

/// The wamid as stored: its keyed hash and the id sealed under the contact's key.
pub fn seal_wamid(
    vault: &Vault,
    key: &SealKey,
    tenant_id: &TenantId,
    wamid: &Wamid,
) -> Result<(String, Vec<u8>), StorageError> {
    let tenant = tenant_id.as_str();
    let bidx = vault.wamid_index(tenant, wamid);
    let sealed = key.seal(wamid.as_str().as_bytes(), &wamid_place(tenant, &bidx))?;
    Ok((bidx, sealed))
}

/// Seals a message's content (and the message it replies to) for its row, as an
/// inbound message's is sealed ([`MessageBundle`]).
pub fn seal_content(
    key: &SealKey,
    tenant_id: &TenantId,
    id: &MessageId,
    content: &serde_json::Value,
    context: Option<&serde_json::Value>,
) -> Result<Vec<u8>, StorageError> {
    let bundle = MessageBundle {
        content,
        context,
        referral: None,
        errors: None,
    };
    let json = serde_json::to_vec(&bundle).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    Ok(key.seal(&json, &content_place(tenant_id.as_str(), id.as_str()))?)
}

/// Who sent the inbound message `wamid_bidx` names: its contact's identifiers, opened
/// under the contact's key. A read receipt goes through that contact's conversation.
/// `None` when the tenant has no such inbound message or its contact was erased.
pub fn message_sender(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    wamid_bidx: &str,
) -> Result<Option<ContactIdentifiers>, StorageError> {
    let tenant = tenant_id.as_str();
    // The contact's id and key id, its user id and phone number sealed.
    type Sender = (String, String, Option<Vec<u8>>, Option<Vec<u8>>);
    let found: Option<Sender> = on_backend!(conn, c => messages::table
            .inner_join(contacts::table.on(contacts::id.eq(messages::contact_id)))
            .filter(messages::wamid_bidx.eq(wamid_bidx))
            .filter(messages::tenant_id.eq(tenant))
            .filter(messages::direction.eq(INBOUND))
            .filter(contacts::tenant_id.eq(tenant))
            .select((contacts::id, contacts::key_id, contacts::user_id_ct, contacts::wa_id_ct))
            .get_result(c)
            .optional())?;
    let Some((contact_id, key_id, user_id_ct, wa_id_ct)) = found else {
        return Ok(None);
    };
    let Some(key) = load_data_key(conn, vault, tenant_id, &key_id)? else {
        return Ok(None);
    };
    let open = |column, ct: Option<Vec<u8>>| -> Result<Option<String>, StorageError> {
        ct.map(|ct| key.open_string(&ct, &contact_field(tenant, column, &contact_id)))
            .transpose()
            .map_err(StorageError::from)
    };
    let ids = ContactIdentifiers {
        user_id: open("user_id_ct", user_id_ct)?,
        wa_id: open("wa_id_ct", wa_id_ct)?,
    };
    Ok((ids.user_id.is_some() || ids.wa_id.is_some()).then_some(ids))
}

/// Seals Meta's request body of send `id` for its outbox row.
pub fn seal_request(
    key: &SealKey,
    tenant_id: &TenantId,
    id: &MessageId,
    body: &serde_json::Value,
) -> Result<Vec<u8>, StorageError> {
    Ok(key.seal(
        body.to_string().as_bytes(),
        &request_place(tenant_id.as_str(), id.as_str()),
    )?)
}

#[cfg(test)]
mod tests;
