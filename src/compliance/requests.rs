//! Data-subject requests, executed: what each kind does to the subject's data, as the
//! writes the compliance actor runs in the tenant's lane, one step each (started,
//! then done), so a crash between two resumes at the second. Every step writes its
//! audit entry, and the account holder's email where there is one, with it.
//!
//! Restriction and objection set the contact's flag that the send and automation
//! paths obey (`restricted` refuses everything, `objected` marketing); lifting the
//! request clears it. A subject the tenant never saw is rejected (`unknown_subject`).
//! Access, portability, rectification and erasure are refused when submitted: they
//! are not built yet.

use super::dates;
use crate::clock::rfc3339_ms as rfc3339;
use crate::email::{self, RequestEvent, RequestFacts};
use crate::ids::TenantId;
use crate::storage::email as storage_email;
use crate::storage::privacy::{self, Kind, Request, State};
use crate::storage::{tenants, DbConn, StorageError};

/// The kinds Converra executes today.
pub fn executes(kind: Kind) -> bool {
    matches!(kind, Kind::Restriction | Kind::Objection)
}

/// Queues the account holder's email about `event` of `request`.
fn tell_holder(
    conn: &mut DbConn,
    request: &Request,
    event: RequestEvent,
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
        reason: request.reason.as_deref(),
    };
    let email = email::request_event(
        &request.tenant_id,
        &tenant.name,
        &tenant.holder_email,
        event,
        &facts,
    )
    // A template that does not render is a bug of this build: the write cannot succeed.
    .map_err(|e| StorageError::Rejected(e.to_string()))?;
    storage_email::queue(conn, &email, None, message_domain, now_ms)?;
    Ok(())
}

/// Takes a request of `kind` for the subject known by `subject_bidx` into the
/// tenant's queue, due one calendar month later on a working day.
pub fn submit(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    kind: Kind,
    subject_bidx: String,
    holidays: &[time::Date],
    message_domain: &str,
    now_ms: i64,
) -> Result<Request, StorageError> {
    let due_on = dates::request_due(dates::day_of(now_ms), holidays).to_string();
    let request = privacy::submit(conn, tenant_id, kind, &subject_bidx, &due_on, now_ms)?;
    tell_holder(
        conn,
        &request,
        RequestEvent::Received,
        message_domain,
        now_ms,
    )?;
    Ok(request)
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

/// The second step of `request` (in progress): its kind's work, then completed or
/// rejected with the account holder told.
pub fn run(
    conn: &mut DbConn,
    request: &Request,
    message_domain: &str,
    now_ms: i64,
) -> Result<Request, StorageError> {
    // As stored now: a request ended meanwhile (looked at twice) is left as it is.
    let request =
        &privacy::get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound)?;
    if request.state != State::InProgress {
        return Ok(request.clone());
    }
    let reason = match (&request.contact_id, request.kind) {
        (None, _) => Some("unknown_subject"),
        (Some(contact), kind @ (Kind::Restriction | Kind::Objection)) => {
            privacy::set_contact_flag(conn, &request.tenant_id, contact, kind, Some(now_ms))?;
            None
        }
        (Some(_), _) => Some("not_supported"),
    };
    let event = match reason {
        Some(_) => RequestEvent::Rejected,
        None => RequestEvent::Completed,
    };
    match privacy::finish(conn, request, reason, now_ms)? {
        Some(finished) => {
            tell_holder(conn, &finished, event, message_domain, now_ms)?;
            Ok(finished)
        }
        None => privacy::get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound),
    }
}
