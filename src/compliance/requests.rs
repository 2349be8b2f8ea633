//! Data-subject requests, executed: what each kind does to the subject's data, as the
//! writes the compliance actor runs in the tenant's lane, one step each (started,
//! then done), so a crash between two resumes at the second. Every step writes its
//! audit entry, and the account holder's email where there is one, with it.
//!
//! Restriction and objection set the contact's flag that the send and automation
//! paths obey (`restricted` refuses everything, `objected` marketing); lifting the
//! request clears it. A subject the tenant never saw is rejected (`unknown_subject`).
//!
//! Erasure has steps of its own between the two ([`shred`], then [`erase_batch`]
//! until nothing is left; see [`crate::storage::erasure`]); its outcome, written with
//! each step, counts what went. A subject the tenant never saw completes: its raw
//! inbox rows, if any, go all the same.
//!
//! A rectification applies the changes kept on its request
//! ([`crate::storage::rectification`]); the audit names the fields, not the values.
//!
//! Access and portability complete at once: their export is written when it is
//! downloaded ([`crate::http::export`]).

use serde_json::{json, Value};

use super::dates;
use crate::clock::rfc3339_ms as rfc3339;
use crate::email::{self, RequestEvent, RequestFacts};
use crate::ids::TenantId;
use crate::rules::Conflict;
use crate::storage::audit;
use crate::storage::email as storage_email;
use crate::storage::erasure::{self, ErasureRecord, Progress};
use crate::storage::key_store::Vault;
use crate::storage::privacy::{self, Kind, Request, State, Subject};
use crate::storage::rectification;
use crate::storage::{tenants, DbConn, StorageError};

/// `request` as stored now, or `None` when it is no longer in progress (ended
/// meanwhile: looked at twice).
fn in_progress(conn: &mut DbConn, request: &Request) -> Result<Option<Request>, StorageError> {
    let request =
        privacy::get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound)?;
    Ok((request.state == State::InProgress).then_some(request))
}

/// Erasure's first step: the subject unreadable everywhere (see
/// [`erasure::shred`]). Returns the erasure record to delete its rows by, and the
/// rows counted as deleted so far (a crash may have stopped an earlier pass).
pub fn shred(
    conn: &mut DbConn,
    vault: &Vault,
    request: &Request,
    now_ms: i64,
) -> Result<Option<(ErasureRecord, Progress)>, StorageError> {
    let Some(mut request) = in_progress(conn, request)? else {
        return Ok(None);
    };
    // Not recorded yet: the subject's contact as it is now (it may have appeared, or
    // been merged into another, since the request started). Once recorded, the record
    // names it: the subject writing again later is a new contact, not erased.
    if !erasure::recorded(conn, vault, &request.id)? {
        if let Some(found) = privacy::find_subject(conn, &request.tenant_id, &request.subject_bidx)?
        {
            if request.contact_id.as_ref() != Some(&found) {
                privacy::set_contact(conn, &request, &found)?;
                request.contact_id = Some(found);
            }
        }
    }
    let subject = erasure::Subject {
        request_id: &request.id,
        tenant_id: &request.tenant_id,
        contact_id: request.contact_id.as_ref(),
        subject_bidx: &request.subject_bidx,
        route_bidx: request.route_bidx.as_deref(),
    };
    let shredded = erasure::shred(conn, vault, &subject, now_ms)?;
    let mut progress = Progress::default();
    let mut outcome = request.outcome.clone().unwrap_or_else(|| json!({}));
    // Resumed: the counts of the batches that committed before.
    if let Some(deleted) = outcome.get("deleted").and_then(Value::as_object) {
        for (what, rows) in deleted {
            if let (Some(what), Some(rows)) = (erasure::counted(what), rows.as_u64()) {
                progress.deleted.insert(what, rows);
            }
        }
    }
    if outcome.get("keys_destroyed").is_none() {
        outcome["keys_destroyed"] = json!(shredded.keys_destroyed);
        outcome["deleted"] = json!({});
        privacy::set_outcome(conn, &request, &outcome)?;
    }
    Ok(Some((shredded.record, progress)))
}

/// One batch of an erasure's rows (see [`erasure::erase_batch`]), its count written to
/// the request's outcome in the same transaction. Returns whether rows are left.
pub fn erase_batch(
    conn: &mut DbConn,
    request: &Request,
    record: &ErasureRecord,
    progress: &mut Progress,
    limit: i64,
) -> Result<bool, StorageError> {
    let Some(request) = in_progress(conn, request)? else {
        return Ok(false);
    };
    let more = erasure::erase_batch(conn, record, progress, limit)?;
    let mut outcome = request.outcome.clone().unwrap_or_else(|| json!({}));
    outcome["deleted"] = json!(progress.deleted);
    privacy::set_outcome(conn, &request, &outcome)?;
    Ok(more)
}

/// Queues the account holder's email about `event` of `request`, with `reason` (a
/// rejection's, an extension's) where there is one.
pub(crate) fn tell_holder(
    conn: &mut DbConn,
    request: &Request,
    event: RequestEvent,
    reason: Option<&str>,
    message_domain: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let tenant = tenants::get_tenant(conn, &request.tenant_id)?;
    let received = rfc3339(request.received_at);
    let facts = RequestFacts {
        request_id: &request.id,
        kind: request.kind.as_str(),
        received: &received,
        due: request.due_on(),
        reason,
    };
    let email = email::request_event(
        &request.tenant_id,
        &tenant.name,
        &tenant.holder_email,
        event,
        &facts,
    )?;
    storage_email::queue(conn, &email, None, message_domain, now_ms)?;
    Ok(())
}

/// Takes a request of `kind` for `subject` into the
/// tenant's queue, due one calendar month later on a working day.
pub fn submit(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    kind: Kind,
    subject: &Subject,
    holidays: &[time::Date],
    message_domain: &str,
    now_ms: i64,
) -> Result<Request, StorageError> {
    submit_with(
        conn,
        tenant_id,
        kind,
        subject,
        None,
        holidays,
        message_domain,
        now_ms,
    )
}

/// Erases the tenant's contact `contact_id`, marked a minor for `reason`: an erasure
/// request of its own, through the same path, its outcome saying why. `NotFound`
/// when there is no such contact.
pub fn erase_minor(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &str,
    reason: &str,
    holidays: &[time::Date],
    message_domain: &str,
    now_ms: i64,
) -> Result<Request, StorageError> {
    let subject =
        privacy::subject_of_contact(conn, tenant_id, contact_id)?.ok_or(StorageError::NotFound)?;
    let why = json!({"minor": {"reason": reason}});
    submit_with(
        conn,
        tenant_id,
        Kind::Erasure,
        &subject,
        Some(&why),
        holidays,
        message_domain,
        now_ms,
    )
}

/// Takes a rectification of `subject`'s contact fields into the tenant's queue, its
/// `changes` (checked by [`rectification::Changes::from_json`]) kept sealed under the contact's key
/// until it runs.
#[allow(clippy::too_many_arguments)]
pub fn submit_rectification(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    subject: &Subject,
    changes: &Value,
    holidays: &[time::Date],
    message_domain: &str,
    now_ms: i64,
) -> Result<Request, StorageError> {
    let request = submit_with(
        conn,
        tenant_id,
        Kind::Rectification,
        subject,
        None,
        holidays,
        message_domain,
        now_ms,
    )?;
    rectification::keep_changes(conn, vault, &request, changes)?;
    Ok(request)
}

#[allow(clippy::too_many_arguments)]
fn submit_with(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    kind: Kind,
    subject: &Subject,
    outcome: Option<&Value>,
    holidays: &[time::Date],
    message_domain: &str,
    now_ms: i64,
) -> Result<Request, StorageError> {
    let due_on = dates::request_due(dates::day_of(now_ms), holidays).to_string();
    let request = privacy::submit(conn, tenant_id, kind, subject, &due_on, outcome, now_ms)?;
    tell_holder(
        conn,
        &request,
        RequestEvent::Received,
        None,
        message_domain,
        now_ms,
    )?;
    Ok(request)
}

/// Extends the deadline of the tenant's request `id` by `months` (1 or 2, checked by
/// the caller), as GDPR art. 12(3) allows: once, while it is open and its original
/// due day has not passed; the account holder is told, with `reason`.
#[allow(clippy::too_many_arguments)]
pub fn extend(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &str,
    months: u32,
    reason: &str,
    holidays: &[time::Date],
    message_domain: &str,
    now_ms: i64,
) -> Result<Request, StorageError> {
    let request = privacy::get(conn, tenant_id, id)?.ok_or(StorageError::NotFound)?;
    let refused = |code: Conflict, message: String| StorageError::Conflict { code, message };
    if !matches!(request.state, State::Received | State::InProgress) {
        return Err(refused(
            Conflict::NotOpen,
            format!(
                "the request is {}: only an open request can be extended",
                request.state.as_str()
            ),
        ));
    }
    if request.extended_due_on.is_some() {
        return Err(refused(
            Conflict::AlreadyExtended,
            "the request was extended before: a request is extended once".into(),
        ));
    }
    if dates::day_of(now_ms).to_string() > request.due_on {
        return Err(refused(
            Conflict::ExtensionTooLate,
            format!(
                "a request is extended before its original due day ({}) has passed",
                request.due_on
            ),
        ));
    }
    let extended_due = dates::extended_due(dates::day_of(request.received_at), months, holidays);
    let Some(extended) =
        privacy::extend(conn, &request, &extended_due.to_string(), months, now_ms)?
    else {
        return Err(refused(
            Conflict::AlreadyExtended,
            "the request was extended or ended meanwhile".into(),
        ));
    };
    tell_holder(
        conn,
        &extended,
        RequestEvent::Extended,
        Some(reason),
        message_domain,
        now_ms,
    )?;
    Ok(extended)
}

/// The first step of `request`: in progress, its subject found (or not).
pub fn start(conn: &mut DbConn, request: &Request, now_ms: i64) -> Result<Request, StorageError> {
    let request =
        &privacy::get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound)?;
    if request.state != State::Received {
        return Ok(request.clone());
    }
    let contact = privacy::find_subject(conn, &request.tenant_id, &request.subject_bidx)?;
    privacy::start(conn, request, contact.as_ref(), now_ms)
}

/// The last step of `request` (in progress): its kind's work (an erasure's was done
/// by the steps before), then completed or rejected with the account holder told.
/// `keep_raw_days` is how long raw payloads stay readable under their day's key.
pub fn run(
    conn: &mut DbConn,
    vault: &Vault,
    request: &Request,
    message_domain: &str,
    keep_raw_days: u32,
    now_ms: i64,
) -> Result<Request, StorageError> {
    // As stored now: a request ended meanwhile (looked at twice) is left as it is.
    let Some(request) = &in_progress(conn, request)? else {
        return privacy::get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound);
    };
    let mut outcome = request.outcome.clone();
    let reason = match (&request.contact_id, request.kind) {
        (_, Kind::Erasure) => {
            // Raw payloads that name no subject (unrouted updates) are not found by
            // it: they become unreadable when their day's key is destroyed.
            let unreadable_by =
                dates::day_of(now_ms) + time::Duration::days(i64::from(keep_raw_days) + 1);
            let outcome = outcome.get_or_insert_with(|| json!({}));
            outcome["raw_payloads_unreadable_by"] = json!(unreadable_by.to_string());
            None
        }
        // The export is written when it is downloaded, from the data as it then is
        // (`crate::http::export`); a subject never seen gets an empty one.
        (_, Kind::Access | Kind::Portability) => None,
        // A subject the tenant has not seen: recorded by its keyed hash, and applied
        // when its contact appears (`privacy::apply_pending_subjects`).
        (None, kind @ (Kind::Restriction | Kind::Objection)) => {
            // The contact may have appeared since the request started.
            match privacy::find_subject(conn, &request.tenant_id, &request.subject_bidx)? {
                Some(found) => {
                    privacy::set_contact(conn, request, &found)?;
                    privacy::set_contact_flag(
                        conn,
                        &request.tenant_id,
                        &found,
                        kind,
                        Some(now_ms),
                    )?;
                }
                None => {
                    privacy::note_pending_subject();
                    outcome = Some(json!({"pending_contact": true}));
                }
            }
            None
        }
        (None, _) => Some("unknown_subject"),
        (Some(contact), Kind::Rectification) => {
            let applied = erasure::overwriting_freed(conn, |conn| {
                rectification::apply(conn, vault, request, contact)
            })?;
            match applied {
                Some(fields) => {
                    audit::append(
                        conn,
                        &audit::NewEntry {
                            tenant_id: &request.tenant_id,
                            actor: audit::Actor::Compliance,
                            action: "contact_rectified",
                            request_id: Some(&request.id),
                            contact_id: Some(contact.as_str()),
                            detail: json!({"fields": fields}),
                        },
                        now_ms,
                    )?;
                    None
                }
                // Never kept (the contact appeared after the request), or sealed under
                // a key destroyed since (the contact was erased).
                None => Some("changes_unreadable"),
            }
        }
        (Some(contact), kind @ (Kind::Restriction | Kind::Objection)) => {
            privacy::set_contact_flag(conn, &request.tenant_id, contact, kind, Some(now_ms))?;
            None
        }
    };
    let event = match reason {
        Some(_) => RequestEvent::Rejected,
        None => RequestEvent::Completed,
    };
    match privacy::finish(conn, request, reason, outcome.as_ref(), now_ms)? {
        Some(finished) => {
            let reason = finished.reason.clone();
            tell_holder(
                conn,
                &finished,
                event,
                reason.as_deref(),
                message_domain,
                now_ms,
            )?;
            Ok(finished)
        }
        None => privacy::get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound),
    }
}
