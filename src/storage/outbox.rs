//! The outbox (`outbox`, `idempotency_keys`): outbound sends committed before any call
//! to Meta. Accepting a send writes the message's own row (`messages`, direction
//! outbound, `queued`, its content sealed under the contact's key), its outbox row
//! (Meta's request body, sealed likewise) and its idempotency key, in one transaction.
//! The number's sender then takes due rows in the order they were accepted, one at a
//! time per contact, and records each outcome here: Meta's wamid on the message (a
//! status that came first, kept on a row of its own, is folded in), a retry's next
//! time, or the failure with Meta's error.

use diesel::prelude::*;

use super::apply::{content_place, wamid_place, MessageBundle};
use super::automations::{self, AutomationRun};
use super::contacts::{contact_field, ContactIdentifiers};
use super::conversations::upsert_conversation;
use super::key_store::Vault;
use super::keys::load_data_key;
use super::messages::MessageState;
use super::messaging_limits;
use super::on_backend;
use super::schema::{contacts, conversations, idempotency_keys, messages, outbox, status_events};
use super::usage;
use super::{DbConn, StorageError};
use crate::crypto::{Place, SealKey};
use crate::ids::{ContactId, KeyId, MessageId, PhoneNumberId, TenantId, Wamid};

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

/// Why a send is refused, by the rule's code.
pub const OUTSIDE_WINDOW: &str = "outside_window";
pub const OUTSIDE_WINDOW_MESSAGE: &str = "more than 24 hours since the contact's last message \
    to this number (or none yet): only a template may be sent";
pub const RESTRICTED: &str = "restricted";
pub const OPTED_OUT: &str = "opted_out";
pub const OBJECTED: &str = "objected";
/// An automation's cooldown for the contact has not passed, or a welcome was sent
/// already: nothing is stored, and no run recorded.
pub const AUTOMATION_HELD_BACK: &str = "automation_held_back";

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
        return Err(StorageError::Validation {
            field: "Idempotency-Key",
            rule: "idempotency_key_reused",
            message: "this Idempotency-Key was used for another request; nothing was sent".into(),
        });
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
            .select((contacts::restricted_at, contacts::objected_at, contacts::marketing_opt_out))
            .get_result(c)
            .optional())?;
    // Merged into another contact since the caller found it: found again, then retried.
    let Some((restricted, objected, opted_out)) = found else {
        return Err(StorageError::ContactStale(send.contact_id.to_string()));
    };
    if restricted.is_some() {
        return Err(StorageError::Conflict {
            code: RESTRICTED,
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
            code: OBJECTED,
            message: format!("the contact objected to marketing: {what}"),
        });
    }
    if send.marketing && opted_out {
        return Err(StorageError::Conflict {
            code: OPTED_OUT,
            message: format!("the contact stopped marketing messages: {what}"),
        });
    }
    if let Some(run) = &send.automation {
        if automations::held_back(conn, run, &send.contact_id, send.now_ms)? {
            return Err(StorageError::Conflict {
                code: AUTOMATION_HELD_BACK,
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
                code: OUTSIDE_WINDOW,
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
                messages::direction.eq("outbound"),
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

/// A send as the API shows it.
#[derive(Debug, Clone)]
pub struct SendState {
    pub id: String,
    pub state: String,
    pub wamid: Option<String>,
    pub error_json: Option<String>,
}

/// The state of send `id` of `tenant_id`: its message's (sent, delivered, read, ...),
/// or for a read receipt its outbox row's.
pub fn send_state(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &str,
) -> Result<Option<SendState>, StorageError> {
    let row: Option<(String, String, Option<String>)> = on_backend!(conn, c => outbox::table
        .find(id)
        .filter(outbox::tenant_id.eq(tenant_id.as_str()))
        .select((outbox::state, outbox::key_id, outbox::error_json))
        .get_result(c)
        .optional())?;
    let message: Option<(Option<String>, Option<String>, String)> = on_backend!(conn, c => messages::table
        .find(id)
        .filter(messages::tenant_id.eq(tenant_id.as_str()))
        .select((messages::status, messages::error_json, messages::direction))
        .get_result(c)
        .optional())?;
    Ok(match (message, row) {
        // Only sends: an inbound message, or a record a status left, is not one. A
        // finished send whose outbox row has expired is known by its message row.
        (Some((status, error_json, direction)), None) if direction == "outbound" => {
            Some(SendState {
                id: id.to_string(),
                state: status.unwrap_or_else(|| MessageState::Queued.as_str().to_string()),
                wamid: None,
                error_json,
            })
        }
        (_, None) => None,
        (Some((status, error_json, _)), Some(_)) => Some(SendState {
            id: id.to_string(),
            state: status.unwrap_or_else(|| MessageState::Queued.as_str().to_string()),
            wamid: None,
            error_json,
        }),
        (None, Some((state, _, error_json))) => Some(SendState {
            id: id.to_string(),
            state: match state.as_str() {
                DONE => MessageState::Sent.as_str().to_string(),
                SENDING => MessageState::Queued.as_str().to_string(),
                other => other.to_string(),
            },
            wamid: None,
            error_json,
        }),
    })
}

/// [`send_state`] with Meta's wamid opened (under the contact's key).
pub fn send_state_opened(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    id: &str,
) -> Result<Option<SendState>, StorageError> {
    let Some(mut state) = send_state(conn, tenant_id, id)? else {
        return Ok(None);
    };
    let sealed: Option<(Option<Vec<u8>>, String, Option<String>)> = on_backend!(conn, c => messages::table
            .find(id)
            .filter(messages::tenant_id.eq(tenant_id.as_str()))
            .select((messages::wamid_ct, messages::wamid_bidx, messages::key_id))
            .get_result(c)
            .optional())?;
    if let Some((Some(wamid_ct), bidx, Some(key_id))) = sealed {
        if let Some(key) = load_data_key(conn, vault, tenant_id, &key_id)? {
            state.wamid = key
                .open_string(&wamid_ct, &wamid_place(tenant_id.as_str(), &bidx))
                .ok();
        }
    }
    Ok(Some(state))
}

/// An outbox row as the sender takes it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: String,
    pub tenant_id: String,
    pub contact_id: String,
    pub kind: String,
    pub key_id: String,
    pub request_ct: Vec<u8>,
    pub state: OutboxState,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub deadline_at: i64,
    /// It waits for room in its portfolio's messaging limit.
    pub limit_held: bool,
}

/// The number's pending sends (queued, or in flight with their outcome unknown) in
/// the order they were accepted, at most `limit`.
pub fn pending_sends(
    conn: &mut DbConn,
    phone_number_id: &PhoneNumberId,
    limit: i64,
) -> Result<Vec<OutboxRow>, StorageError> {
    type Row = (
        String,
        String,
        String,
        String,
        String,
        Vec<u8>,
        String,
        i32,
        i64,
        i64,
        Option<i64>,
    );
    let rows: Vec<Row> = on_backend!(conn, c => outbox::table
        .filter(outbox::phone_number_id.eq(phone_number_id.as_str()))
        .filter(outbox::state.eq_any(UNFINISHED))
        .order(outbox::id.asc())
        .limit(limit)
        .select((
            outbox::id,
            outbox::tenant_id,
            outbox::contact_id,
            outbox::kind,
            outbox::key_id,
            outbox::request_ct,
            outbox::state,
            outbox::attempts,
            outbox::next_attempt_at,
            outbox::deadline_at,
            outbox::limit_held_since,
        ))
        .load(c))?;
    rows.into_iter()
        .map(
            |(
                id,
                tenant_id,
                contact_id,
                kind,
                key_id,
                request_ct,
                state,
                attempts,
                next,
                deadline,
                limit_held_since,
            )| {
                Ok(OutboxRow {
                    id,
                    tenant_id,
                    contact_id,
                    kind,
                    key_id,
                    request_ct,
                    state: OutboxState::parse(&state)?,
                    attempts,
                    next_attempt_at: next,
                    deadline_at: deadline,
                    limit_held: limit_held_since.is_some(),
                })
            },
        )
        .collect()
}

/// Rows deleted per expiry at most, so one pass never holds the writer long.
const PURGE_ROWS: i64 = 10_000;

/// Deletes finished sends (sent or failed) accepted before `before_ms`, and
/// idempotency keys made before it; how many of each. A deleted send's state stays on
/// its message row, where `GET /v1/messages/{id}` finds it; a read receipt has none.
pub fn purge_finished(conn: &mut DbConn, before_ms: i64) -> Result<(usize, usize), StorageError> {
    let finished: Vec<String> = on_backend!(conn, c => outbox::table
        .filter(outbox::state.eq_any(FINISHED))
        .filter(outbox::accepted_at.lt(before_ms))
        .select(outbox::id)
        .limit(PURGE_ROWS)
        .load(c))?;
    let mut sends = 0;
    for chunk in finished.chunks(500) {
        sends += on_backend!(conn, c => diesel::delete(outbox::table
                .filter(outbox::id.eq_any(chunk)))
            .execute(c))?;
    }
    // A key whose send still waits stays: a client's retry must not send it twice.
    let old: Vec<(String, String, String)> = on_backend!(conn, c => idempotency_keys::table
        .filter(idempotency_keys::created_at.lt(before_ms))
        .select((idempotency_keys::tenant_id, idempotency_keys::key_bidx, idempotency_keys::outbox_id))
        .limit(PURGE_ROWS)
        .load(c))?;
    let mut waiting = std::collections::HashSet::new();
    for chunk in old.chunks(500) {
        let ids: Vec<&str> = chunk.iter().map(|(_, _, id)| id.as_str()).collect();
        let pending: Vec<String> = on_backend!(conn, c => outbox::table
            .filter(outbox::id.eq_any(&ids))
            .filter(outbox::state.eq_any(UNFINISHED))
            .select(outbox::id)
            .load(c))?;
        waiting.extend(pending);
    }
    let mut by_tenant: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for (tenant, bidx, id) in &old {
        if !waiting.contains(id) {
            by_tenant
                .entry(tenant.as_str())
                .or_default()
                .push(bidx.as_str());
        }
    }
    let mut keys = 0;
    for (tenant, bidxs) in by_tenant {
        for chunk in bidxs.chunks(500) {
            keys += on_backend!(conn, c => diesel::delete(idempotency_keys::table
                    .filter(idempotency_keys::tenant_id.eq(tenant))
                    .filter(idempotency_keys::key_bidx.eq_any(chunk)))
                .execute(c))?;
        }
    }
    Ok((sends, keys))
}

/// The data key a row is sealed under (`None` once destroyed: the contact was erased).
pub fn row_key(
    conn: &mut DbConn,
    vault: &Vault,
    row: &OutboxRow,
) -> Result<Option<SealKey>, StorageError> {
    load_data_key(conn, vault, &TenantId(row.tenant_id.clone()), &row.key_id)
}

/// Whether send `id` of `tenant_id` waits for Meta's answer (queued, or sent with its
/// outcome unknown).
pub fn is_pending(conn: &mut DbConn, tenant_id: &TenantId, id: &str) -> Result<bool, StorageError> {
    let state: Option<String> = on_backend!(conn, c => outbox::table
        .find(id)
        .filter(outbox::tenant_id.eq(tenant_id.as_str()))
        .select(outbox::state)
        .get_result(c)
        .optional())?;
    Ok(state.is_some_and(|s| s == QUEUED || s == SENDING))
}

/// What [`mark_sending`] did with the sends it was given.
#[derive(Debug, Default)]
pub struct Marking {
    /// Marked in flight: to send.
    pub marked: Vec<String>,
    /// Left queued: business-initiated, to a user the portfolio's full budget has no
    /// room for (see [`messaging_limits`]).
    pub limited: Vec<String>,
    /// The portfolio whose budget this marking found full for the first time, and its
    /// limit.
    pub reached: Option<(String, i64)>,
}

/// Marks sends `ids` (all of one number) as handed to Meta (and counts the attempt),
/// each only if it is still queued and may still go. A send recorded meanwhile (Meta's
/// echo came first, or it failed) is not sent again; one whose contact was restricted
/// since, or opted out of or objected to marketing (for a marketing send), fails with
/// that rule's code. A template to a user without an open customer-service window uses
/// the portfolio's messaging limit: it is counted, or left queued when the budget is
/// full (failed `messaging_limit` past its deadline).
pub fn mark_sending(
    conn: &mut DbConn,
    ids: &[String],
    now_ms: i64,
) -> Result<Marking, StorageError> {
    let mut marking = Marking {
        marked: Vec::with_capacity(ids.len()),
        ..Marking::default()
    };
    // The number's budget, read at its first business-initiated send.
    let mut budget: Option<messaging_limits::Budget> = None;
    for id in ids {
        // The user this send reaches for its portfolio's budget, and whether they
        // were counted in the window already.
        let mut reaches: Option<(String, String, bool)> = None;
        // The send's tenant, kind, number, contact, deadline and whether it is
        // marketing; the contact's restriction, objection and opt-out.
        type Rules = (
            (String, String, String, String, i64, bool),
            (Option<i64>, Option<i64>, bool),
        );
        let rules: Option<Rules> = on_backend!(conn, c => outbox::table
            .inner_join(contacts::table.on(contacts::id.eq(outbox::contact_id)))
            .filter(outbox::id.eq(id))
            .select(((outbox::tenant_id, outbox::kind, outbox::phone_number_id,
                      outbox::contact_id, outbox::deadline_at, outbox::marketing),
                     (contacts::restricted_at, contacts::objected_at,
                      contacts::marketing_opt_out)))
            .get_result(c)
            .optional())?;
        if let Some(((tenant, kind, number, contact, deadline, marketing), contact_rules)) = rules {
            let (restricted, objected, opted_out) = contact_rules;
            let refused = if restricted.is_some() {
                Some((
                    RESTRICTED,
                    "the contact's processing is restricted: nothing may be sent",
                ))
            } else if marketing && objected.is_some() {
                Some((OBJECTED, "the contact objected to marketing"))
            } else if marketing && opted_out {
                Some((OPTED_OUT, "the contact stopped marketing messages"))
            } else {
                None
            };
            if let Some((code, message)) = refused {
                let error = serde_json::json!({"code": code, "message": message}).to_string();
                record_failed(conn, &TenantId(tenant), id, &error, now_ms)?;
                continue;
            }
            if kind == "template" && budget.is_none() {
                if let Some(portfolio) = messaging_limits::portfolio_of(conn, &number)? {
                    budget = Some(messaging_limits::budget(conn, &portfolio, now_ms)?);
                }
            }
            // Counted while a limit is known and enforced (an unknown or unlimited one
            // costs a send nothing).
            let enforced = budget
                .as_ref()
                .is_some_and(messaging_limits::Budget::enforced);
            if kind == "template"
                && enforced
                && !window_open(conn, &tenant, &number, &contact, now_ms)?
            {
                if let Some(budget) = budget.as_mut() {
                    let portfolio = budget.portfolio_id.clone();
                    let counted = messaging_limits::reached(conn, &portfolio, &contact, now_ms)?;
                    if !counted && budget.full() {
                        if !budget.reached_before {
                            budget.reached_before = true;
                            messaging_limits::note_reached(conn, &portfolio, now_ms)?;
                            marking.reached = Some((portfolio, budget.limit.unwrap_or_default()));
                        }
                        if now_ms >= deadline {
                            let error = serde_json::json!({
                                "code": messaging_limits::MESSAGING_LIMIT,
                                "message": "the business portfolio's messaging limit left no room \
                                    for this user before outbound.retry_deadline_secs",
                            });
                            record_failed(conn, &TenantId(tenant), id, &error.to_string(), now_ms)?;
                        } else {
                            on_backend!(conn, c => diesel::update(outbox::table.find(id))
                                .filter(outbox::limit_held_since.is_null())
                                .set(outbox::limit_held_since.eq(Some(now_ms)))
                                .execute(c))?;
                            marking.limited.push(id.clone());
                        }
                        continue;
                    }
                    reaches = Some((portfolio, contact.clone(), counted));
                }
            }
        }
        let updated = on_backend!(conn, c => diesel::update(outbox::table.find(id))
            .filter(outbox::state.eq(QUEUED))
            .set((outbox::state.eq(SENDING), outbox::attempts.eq(outbox::attempts + 1),
                  outbox::limit_held_since.eq(None::<i64>)))
            .execute(c))?;
        if updated == 1 {
            marking.marked.push(id.clone());
            // Counted once it is certain to go.
            if let (Some((portfolio, contact, counted)), Some(budget)) = (reaches, budget.as_mut())
            {
                messaging_limits::reach(conn, &portfolio, &contact, now_ms)?;
                if !counted {
                    budget.used += 1;
                }
            }
        }
    }
    Ok(marking)
}

/// Whether the contact's customer-service window on the number is open at `now_ms`.
fn window_open(
    conn: &mut DbConn,
    tenant_id: &str,
    phone_number_id: &str,
    contact_id: &str,
    now_ms: i64,
) -> Result<bool, StorageError> {
    let ends: Option<Option<i64>> = on_backend!(conn, c => conversations::table
        .filter(conversations::tenant_id.eq(tenant_id))
        .filter(conversations::phone_number_id.eq(phone_number_id))
        .filter(conversations::contact_id.eq(contact_id))
        .select(conversations::window_ends_at)
        .get_result(c)
        .optional())?;
    Ok(ends.flatten().is_some_and(|ends| ends > now_ms))
}

/// A send Meta accepted without a message of its own (a read receipt).
pub fn record_done(conn: &mut DbConn, id: &str) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(outbox::table.find(id))
        .filter(outbox::state.eq_any(UNFINISHED))
        .set((outbox::state.eq(DONE), outbox::error_json.eq(None::<String>)))
        .execute(c))?;
    Ok(())
}

/// Puts a send back in the queue, due at `next_attempt_at`.
pub fn retry_at(
    conn: &mut DbConn,
    id: &str,
    next_attempt_at: i64,
    error_json: Option<&str>,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(outbox::table.find(id))
        .filter(outbox::state.eq_any(UNFINISHED))
        .set((
            outbox::state.eq(QUEUED),
            outbox::next_attempt_at.eq(next_attempt_at),
            outbox::error_json.eq(error_json),
        ))
        .execute(c))?;
    Ok(())
}

/// A send Meta refused for good (or past its deadline): the outbox row and the
/// message fail with `error_json`.
pub fn record_failed(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &str,
    error_json: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let failed = on_backend!(conn, c => diesel::update(outbox::table.find(id))
        .filter(outbox::state.eq_any(UNFINISHED))
        .set((outbox::state.eq(FAILED), outbox::error_json.eq(error_json)))
        .execute(c))?;
    if failed == 0 {
        // Recorded as accepted meanwhile (Meta's echo): that stands.
        return Ok(());
    }
    usage::add(conn, tenant_id.as_str(), now_ms, usage::FAILURES, 1)?;
    on_backend!(conn, c => diesel::update(messages::table.find(id))
        .filter(messages::status.eq(MessageState::Queued.as_str()))
        .set((
            messages::status.eq(MessageState::Failed.as_str()),
            messages::status_at.eq(now_ms),
            messages::error_json.eq(error_json),
        ))
        .execute(c))?;
    Ok(())
}

/// Meta accepted send `id` as `wamid`: the outbox row is done and the message takes its
/// wamid and moves to `sent`. A status of that wamid that came first left a row of its
/// own (see [`super::apply`]): its state and status events move to this message, and
/// that row goes. A send already recorded (reconciled from its status webhook) changes
/// nothing.
pub fn record_accepted(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &str,
    wamid_bidx: &str,
    wamid_ct: &[u8],
    now_ms: i64,
) -> Result<(), StorageError> {
    let tenant = tenant_id.as_str();
    on_backend!(conn, c => diesel::update(outbox::table.find(id))
        .set((outbox::state.eq(DONE), outbox::error_json.eq(None::<String>)))
        .execute(c))?;
    let ours: Option<(String, Option<String>)> = on_backend!(conn, c => messages::table
        .find(id)
        .filter(messages::tenant_id.eq(tenant))
        .select((messages::wamid_bidx, messages::status))
        .get_result(c)
        .optional())?;
    let Some((current_bidx, status)) = ours else {
        // A read receipt: no message of its own.
        return Ok(());
    };
    if current_bidx == wamid_bidx {
        return Ok(());
    }
    // (id, status, status_at, error_json)
    type EarlyRow = (String, Option<String>, Option<i64>, Option<String>);
    let early: Option<EarlyRow> = on_backend!(conn, c => messages::table
            .filter(messages::tenant_id.eq(tenant))
            .filter(messages::wamid_bidx.eq(wamid_bidx))
            .select((messages::id, messages::status, messages::status_at, messages::error_json))
            .get_result(c)
            .optional())?;
    let mut state = MessageState::after(
        status.as_deref().and_then(MessageState::parse),
        MessageState::Sent,
    )
    .or_else(|| status.as_deref().and_then(MessageState::parse))
    .unwrap_or(MessageState::Sent);
    let mut state_at = now_ms;
    let mut error = None;
    if let Some((early_id, early_status, early_at, early_error)) = early {
        if let Some(next) = MessageState::after(
            Some(state),
            early_status
                .as_deref()
                .and_then(MessageState::parse)
                .unwrap_or(state),
        ) {
            state = next;
            state_at = early_at.unwrap_or(now_ms);
            error = early_error;
        }
        on_backend!(conn, c => diesel::update(status_events::table
                .filter(status_events::message_id.eq(&early_id)))
            .set(status_events::message_id.eq(id))
            .execute(c))?;
        on_backend!(conn, c => diesel::delete(messages::table.find(&early_id)).execute(c))?;
    }
    on_backend!(conn, c => diesel::update(messages::table.find(id))
        .set((
            messages::wamid_bidx.eq(wamid_bidx),
            messages::wamid_ct.eq(wamid_ct),
            messages::status.eq(state.as_str()),
            messages::status_at.eq(state_at),
            messages::error_json.eq(error),
        ))
        .execute(c))?;
    Ok(())
}

/// The wamid as stored: its keyed hash and the id sealed under the contact's key.
pub fn seal_wamid(
    vault: &Vault,
    key: &SealKey,
    tenant_id: &TenantId,
    wamid: &str,
) -> Result<(String, Vec<u8>), StorageError> {
    let tenant = tenant_id.as_str();
    let bidx = vault.wamid_index(tenant, &Wamid(wamid.to_string()));
    let sealed = key.seal(wamid.as_bytes(), &wamid_place(tenant, &bidx))?;
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
            .filter(messages::direction.eq("inbound"))
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

/// Meta refused a send because the user stopped marketing messages (131050): the
/// contact is marked opted out, as Meta's own `user_preferences` webhook would.
pub fn record_marketing_stop(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(contacts::table.find(contact_id))
        .filter(contacts::tenant_id.eq(tenant_id.as_str()))
        .set((contacts::marketing_opt_out.eq(true), contacts::marketing_pref_at.eq(now_ms)))
        .execute(c))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::contacts::{resolve_contact, ContactIdentifiers};
    use crate::storage::tenants;

    /// The sender reads a number's pending sends in the order they were accepted, with
    /// their due times; a send is marked in flight once, and a finished one is no
    /// longer pending.
    #[test]
    fn pending_sends_come_in_acceptance_order_and_are_marked_in_flight_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (vault, pool) = crate::storage::test_storage(dir.path());
        let mut conn = pool.get().expect("connection");
        let tenant = TenantId(
            tenants::create_tenant(&mut conn, "t", "owner@t.example", 1)
                .expect("tenant")
                .tenant_id,
        );
        let number = PhoneNumberId("100".into());
        let contact = |conn: &mut DbConn, wa: &str| {
            let ids = ContactIdentifiers {
                user_id: None,
                wa_id: Some(wa.into()),
            };
            resolve_contact(conn, &vault, &tenant, &ids, None, 1).expect("contact")
        };
        let (x, y) = (
            contact(&mut conn, "4915100000001"),
            contact(&mut conn, "4915100000002"),
        );
        let queue = |conn: &mut DbConn, of: &ContactId, key: &KeyId, due: i64| {
            let id = MessageId::generate();
            let send = NewSend {
                id: id.clone(),
                tenant_id: tenant.clone(),
                phone_number_id: number.clone(),
                contact_id: of.clone(),
                key_id: key.clone(),
                kind: "read".into(),
                needs_window: false,
                marketing: false,
                automation: None,
                content_ct: None,
                request_ct: vec![1],
                idempotency: None,
                now_ms: 10,
                deadline_ms: 1_000_000,
            };
            accept(conn, &send).expect("accepted");
            retry_at(conn, id.as_str(), due, None).expect("due time");
            id
        };
        let x_first = queue(&mut conn, &x.contact_id, &x.key_id, 500);

        let x_second = queue(&mut conn, &x.contact_id, &x.key_id, 100);
        let y_first = queue(&mut conn, &y.contact_id, &y.key_id, 100);
        let y_second = queue(&mut conn, &y.contact_id, &y.key_id, 100);
        let other_number = PhoneNumberId("200".into());
        assert!(pending_sends(&mut conn, &other_number, 10)
            .expect("pending")
            .is_empty());

        let rows = pending_sends(&mut conn, &number, 10).expect("pending");
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let order = [&x_first, &x_second, &y_first, &y_second].map(|id| id.as_str());
        assert_eq!(ids, order);
        let due: Vec<i64> = rows.iter().map(|r| r.next_attempt_at).collect();
        assert_eq!(due, vec![500, 100, 100, 100]);
        assert_eq!(
            pending_sends(&mut conn, &number, 2).expect("pending").len(),
            2
        );

        let both = vec![y_first.to_string(), y_second.to_string()];
        assert_eq!(
            mark_sending(&mut conn, &both, 50).expect("marked").marked,
            both
        );
        assert!(
            mark_sending(&mut conn, &both, 50)
                .expect("not twice")
                .marked
                .is_empty(),
            "a send already in flight is not marked again"
        );
        record_done(&mut conn, y_first.as_str()).expect("done");
        let rows = pending_sends(&mut conn, &number, 10).expect("pending");
        let states: Vec<(&str, OutboxState, i32)> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.state, r.attempts))
            .collect();
        assert_eq!(
            states,
            vec![
                (x_first.as_str(), OutboxState::Queued, 0),
                (x_second.as_str(), OutboxState::Queued, 0),
                (y_second.as_str(), OutboxState::Sending, 1)
            ]
        );
    }

    /// A finished send leaves the outbox after its time, and its state is still read
    /// from its message; a send still queued stays, with its key, and so does a newer
    /// key.
    #[test]
    fn finished_sends_and_old_idempotency_keys_expire() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (vault, pool) = crate::storage::test_storage(dir.path());
        let mut conn = pool.get().expect("connection");
        let tenant = TenantId(
            tenants::create_tenant(&mut conn, "t", "owner@t.example", 1)
                .expect("tenant")
                .tenant_id,
        );
        let ids = ContactIdentifiers {
            user_id: None,
            wa_id: Some("4915100000001".into()),
        };
        let contact = resolve_contact(&mut conn, &vault, &tenant, &ids, None, 1).expect("contact");
        let send = |conn: &mut DbConn, at: i64, key: &str| {
            let id = MessageId::generate();
            let new = NewSend {
                id: id.clone(),
                tenant_id: tenant.clone(),
                phone_number_id: PhoneNumberId("100".into()),
                contact_id: contact.contact_id.clone(),
                key_id: contact.key_id.clone(),
                kind: "template".into(),
                needs_window: false,
                marketing: false,
                automation: None,
                content_ct: Some(vec![1]),
                request_ct: vec![1],
                idempotency: Some((key.to_string(), "hash".into())),
                now_ms: at,
                deadline_ms: at + 1_000,
            };
            accept(conn, &new).expect("accepted");
            id
        };
        let old_done = send(&mut conn, 10, "k1");
        let old_queued = send(&mut conn, 20, "k2");
        let new_done = send(&mut conn, 500, "k3");
        record_failed(&mut conn, &tenant, old_done.as_str(), "{}", 30).expect("failed");
        record_failed(&mut conn, &tenant, new_done.as_str(), "{}", 510).expect("failed");

        // k2's send still waits: its key stays, so a client's retry sends nothing twice.
        assert_eq!(purge_finished(&mut conn, 100).expect("purged"), (1, 1));
        assert!(replay(&mut conn, &tenant, "k2", "hash")
            .expect("replay")
            .is_some());
        let pending = pending_sends(&mut conn, &PhoneNumberId("100".into()), 10).expect("rows");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, old_queued.as_str());
        let state = send_state(&mut conn, &tenant, old_done.as_str())
            .expect("read")
            .expect("still a send");
        assert_eq!(state.state, "failed");
        // The newer key still answers; the expired one is free again.
        assert!(replay(&mut conn, &tenant, "k3", "hash")
            .expect("replay")
            .is_some());
        assert!(replay(&mut conn, &tenant, "k1", "hash")
            .expect("replay")
            .is_none());
    }
}
