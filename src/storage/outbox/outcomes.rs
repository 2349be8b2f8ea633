//! The sender's writes: sends marked in flight (counted against the messaging limit,
//! checked against the 24-hour window), each outcome recorded, and finished rows
//! purged.

use diesel::prelude::*;

use super::{DONE, FAILED, FINISHED, QUEUED, SENDING, UNFINISHED};
use crate::ids::{ContactId, MessageId, TenantId};
use crate::rules::Conflict;
use crate::storage::messages::MessageState;
use crate::storage::messaging_limits;
use crate::storage::on_backend;
use crate::storage::schema::{
    contacts, conversations, idempotency_keys, messages, outbox, status_events,
};
use crate::storage::usage;
use crate::storage::{DbConn, StorageError};

/// What [`mark_sending`] did with the sends it was given.
#[derive(Debug, Default)]
pub struct Marking {
    /// Marked in flight: to send.
    pub marked: Vec<MessageId>,
    /// Left queued: business-initiated, to a user the portfolio's full budget has no
    /// room for (see [`messaging_limits`]).
    pub limited: Vec<MessageId>,
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
    ids: &[MessageId],
    now_ms: i64,
) -> Result<Marking, StorageError> {
    let mut marking = Marking {
        marked: Vec::with_capacity(ids.len()),
        ..Marking::default()
    };
    // The number's budget, read at its first business-initiated send.
    let mut budget: Option<messaging_limits::Budget> = None;
    for message_id in ids {
        let id = message_id.as_str();
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
                    Conflict::Restricted.as_str(),
                    "the contact's processing is restricted: nothing may be sent",
                ))
            } else if marketing && objected.is_some() {
                Some((
                    Conflict::Objected.as_str(),
                    "the contact objected to marketing",
                ))
            } else if marketing && opted_out {
                Some((
                    Conflict::OptedOut.as_str(),
                    "the contact stopped marketing messages",
                ))
            } else {
                None
            };
            if let Some((code, message)) = refused {
                let error = serde_json::json!({"code": code, "message": message}).to_string();
                record_failed(conn, &TenantId(tenant), message_id, &error, now_ms)?;
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
                            record_failed(
                                conn,
                                &TenantId(tenant),
                                message_id,
                                &error.to_string(),
                                now_ms,
                            )?;
                        } else {
                            on_backend!(conn, c => diesel::update(outbox::table.find(id))
                                .filter(outbox::limit_held_since.is_null())
                                .set(outbox::limit_held_since.eq(Some(now_ms)))
                                .execute(c))?;
                            marking.limited.push(message_id.clone());
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
            marking.marked.push(message_id.clone());
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
pub fn record_done(conn: &mut DbConn, id: &MessageId) -> Result<(), StorageError> {
    let id = id.as_str();
    on_backend!(conn, c => diesel::update(outbox::table.find(id))
        .filter(outbox::state.eq_any(UNFINISHED))
        .set((outbox::state.eq(DONE), outbox::error_json.eq(None::<String>)))
        .execute(c))?;
    Ok(())
}

/// Puts a send back in the queue, due at `next_attempt_at`.
pub fn retry_at(
    conn: &mut DbConn,
    id: &MessageId,
    next_attempt_at: i64,
    error_json: Option<&str>,
) -> Result<(), StorageError> {
    let id = id.as_str();
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
    id: &MessageId,
    error_json: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let id = id.as_str();
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

/// Fails every queued send of `tenant_id` (its account is being closed): none of them
/// leaves any more, since marking a send in flight takes only a queued one. Returns
/// how many.
pub fn fail_queued_of_tenant(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    error_json: &str,
) -> Result<usize, StorageError> {
    Ok(on_backend!(conn, c => diesel::update(outbox::table
        .filter(outbox::tenant_id.eq(tenant_id.as_str()))
        .filter(outbox::state.eq(QUEUED)))
        .set((outbox::state.eq(FAILED), outbox::error_json.eq(error_json)))
        .execute(c))?)
}

/// Meta accepted send `id` as `wamid`: the outbox row is done and the message takes its
/// wamid and moves to `sent`. A status of that wamid that came first left a row of its
/// own (see [`super::apply`]): its state and status events move to this message, and
/// that row goes. A send already recorded (reconciled from its status webhook) changes
/// nothing.
pub fn record_accepted(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &MessageId,
    wamid_bidx: &str,
    wamid_ct: &[u8],
    now_ms: i64,
) -> Result<(), StorageError> {
    let id = id.as_str();
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

/// Meta refused a send because the user stopped marketing messages (131050): the
/// contact is marked opted out, as Meta's own `user_preferences` webhook would.
pub fn record_marketing_stop(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &ContactId,
    now_ms: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(contacts::table.find(contact_id.as_str()))
        .filter(contacts::tenant_id.eq(tenant_id.as_str()))
        .set((contacts::marketing_opt_out.eq(true), contacts::marketing_pref_at.eq(now_ms)))
        .execute(c))?;
    Ok(())
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
