//! Data-subject requests (`privacy_requests`): taken into the tenant's queue (their
//! time-ordered id and `received_at` stamped by the write that stores them), then
//! executed one at a time per tenant by the compliance actor, each state change
//! written with its audit entry and its email to the account holder in one
//! transaction. The subject is kept as the keyed hash of its identifier.

use std::sync::atomic::{AtomicBool, Ordering};

use diesel::prelude::*;

use super::audit::{self, Actor};
use super::inbox::route_index;
use super::on_backend;
use super::schema::{contacts, privacy_requests};
use super::{DbConn, StorageError};
use crate::crypto::Keyring;
use crate::ids::{ContactId, TenantId};

/// The kinds of request the privacy policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Access,
    Portability,
    Rectification,
    Erasure,
    Restriction,
    Objection,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Access,
        Kind::Portability,
        Kind::Rectification,
        Kind::Erasure,
        Kind::Restriction,
        Kind::Objection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Access => "access",
            Kind::Portability => "portability",
            Kind::Rectification => "rectification",
            Kind::Erasure => "erasure",
            Kind::Restriction => "restriction",
            Kind::Objection => "objection",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Received,
    InProgress,
    Completed,
    Rejected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Received => "received",
            State::InProgress => "in_progress",
            State::Completed => "completed",
            State::Rejected => "rejected",
        }
    }

    fn parse(text: &str) -> Result<State, StorageError> {
        match text {
            "received" => Ok(State::Received),
            "in_progress" => Ok(State::InProgress),
            "completed" => Ok(State::Completed),
            "rejected" => Ok(State::Rejected),
            other => Err(StorageError::Corrupt(format!(
                "privacy request state {other}"
            ))),
        }
    }
}

/// A request's subject as keyed hashes: of its identifier (`wa_id_bidx` or
/// `user_id_bidx` of its contact) and of its routing key (its raw inbox rows).
#[derive(Debug, Clone)]
pub struct Subject {
    pub bidx: String,
    /// `None` when the subject is named by its contact (its routing keys are read from
    /// the contact when it is erased).
    pub route_bidx: Option<String>,
}

impl Subject {
    /// The subject known by phone number `wa_id` (digits) in `tenant_id`.
    pub fn of_wa_id(keyring: &Keyring, tenant_id: &TenantId, wa_id: &str) -> Subject {
        Subject {
            bidx: keyring.blind_index(tenant_id.as_str(), "wa_id", wa_id),
            route_bidx: Some(route_index(keyring, tenant_id, &format!("w:{wa_id}"))),
        }
    }

    /// The subject known by BSUID `user_id` in `tenant_id`.
    pub fn of_user_id(keyring: &Keyring, tenant_id: &TenantId, user_id: &str) -> Subject {
        Subject {
            bidx: keyring.blind_index(tenant_id.as_str(), "user_id", user_id),
            route_bidx: Some(route_index(keyring, tenant_id, &format!("u:{user_id}"))),
        }
    }
}

const OPEN: [&str; 2] = ["received", "in_progress"];

/// A request as stored.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub tenant_id: TenantId,
    pub kind: Kind,
    pub state: State,
    pub subject_bidx: String,
    pub contact_id: Option<ContactId>,
    pub received_at: i64,
    pub due_on: String,
    pub extended_due_on: Option<String>,
    pub completed_at: Option<i64>,
    pub reason: Option<String>,
    pub lifted_at: Option<i64>,
    /// The keyed hash of the routing key the request named (`w:` wa_id, `u:` BSUID).
    pub route_bidx: Option<String>,
    /// What the request did, where it says (counts, dates; never content).
    pub outcome: Option<serde_json::Value>,
}

impl Request {
    /// The day it is due: the extended one when there is one.
    pub fn due_on(&self) -> &str {
        self.extended_due_on.as_deref().unwrap_or(&self.due_on)
    }
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn request(row: Row) -> Result<Request, StorageError> {
    let (
        id,
        tenant,
        kind,
        state,
        subject_bidx,
        contact,
        received_at,
        due_on,
        extended,
        done,
        reason,
        lifted,
        route_bidx,
        outcome,
    ) = row;
    let outcome = outcome
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StorageError::Corrupt(format!("privacy request {id}: outcome: {e}")))?;
    Ok(Request {
        kind: Kind::parse(&kind)
            .ok_or_else(|| StorageError::Corrupt(format!("privacy request {id}: kind {kind}")))?,
        state: State::parse(&state)?,
        id,
        tenant_id: TenantId(tenant),
        subject_bidx,
        contact_id: contact.map(ContactId),
        received_at,
        due_on,
        extended_due_on: extended,
        completed_at: done,
        reason,
        lifted_at: lifted,
        route_bidx,
        outcome,
    })
}

macro_rules! columns {
    () => {
        (
            privacy_requests::id,
            privacy_requests::tenant_id,
            privacy_requests::kind,
            privacy_requests::state,
            privacy_requests::subject_bidx,
            privacy_requests::contact_id,
            privacy_requests::received_at,
            privacy_requests::due_on,
            privacy_requests::extended_due_on,
            privacy_requests::completed_at,
            privacy_requests::reason,
            privacy_requests::lifted_at,
            privacy_requests::route_bidx,
            privacy_requests::outcome_json,
        )
    };
}

/// Stores a request of `kind` for `subject` at the end of the tenant's queue (its id
/// and `received_at` stamped here, in the order the writes commit), due on `due_on`
/// (YYYY-MM-DD), with what it starts from (`outcome`: a minor's erasure says why) and
/// its audit entry.
pub fn submit(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    kind: Kind,
    subject: &Subject,
    due_on: &str,
    outcome: Option<&serde_json::Value>,
    now_ms: i64,
) -> Result<Request, StorageError> {
    let id = uuid::Uuid::now_v7().to_string();
    on_backend!(conn, c => diesel::insert_into(privacy_requests::table)
        .values((
            privacy_requests::id.eq(&id),
            privacy_requests::tenant_id.eq(tenant_id.as_str()),
            privacy_requests::kind.eq(kind.as_str()),
            privacy_requests::state.eq(State::Received.as_str()),
            privacy_requests::subject_bidx.eq(&subject.bidx),
            privacy_requests::route_bidx.eq(&subject.route_bidx),
            privacy_requests::received_at.eq(now_ms),
            privacy_requests::due_on.eq(due_on),
            privacy_requests::outcome_json.eq(outcome.map(|o| o.to_string())),
        ))
        .execute(c))?;
    let stored = get(conn, tenant_id, &id)?.ok_or(StorageError::NotFound)?;
    record(conn, &stored, Actor::Api, "request_received", now_ms)?;
    Ok(stored)
}

/// The tenant's request `id`.
pub fn get(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &str,
) -> Result<Option<Request>, StorageError> {
    let row: Option<Row> = on_backend!(conn, c => privacy_requests::table
        .filter(privacy_requests::tenant_id.eq(tenant_id.as_str()))
        .filter(privacy_requests::id.eq(id))
        .select(columns!())
        .get_result(c)
        .optional())?;
    row.map(request).transpose()
}

/// The tenant's requests, newest first, before `cursor`; only the open ones
/// (received, in progress) when `open_only`.
pub fn list(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    open_only: bool,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Request>, StorageError> {
    let rows: Vec<Row> = on_backend!(conn, c => {
        let mut query = privacy_requests::table
            .filter(privacy_requests::tenant_id.eq(tenant_id.as_str()))
            .order(privacy_requests::id.desc())
            .limit(limit)
            .select(columns!())
            .into_boxed();
        if open_only {
            query = query.filter(privacy_requests::state.eq_any(OPEN));
        }
        if let Some(cursor) = cursor {
            query = query.filter(privacy_requests::id.lt(cursor));
        }
        query.load(c)
    })?;
    rows.into_iter().map(request).collect()
}

/// The tenant's requests that name contact `contact_id`, oldest first.
pub fn of_contact(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &ContactId,
) -> Result<Vec<Request>, StorageError> {
    let rows: Vec<Row> = on_backend!(conn, c => privacy_requests::table
        .filter(privacy_requests::tenant_id.eq(tenant_id.as_str()))
        .filter(privacy_requests::contact_id.eq(contact_id.as_str()))
        .order(privacy_requests::id.asc())
        .select(columns!())
        .load(c))?;
    rows.into_iter().map(request).collect()
}

/// Every open request due (after any extension) on or before `day` (YYYY-MM-DD).
pub fn open_due_by(conn: &mut DbConn, day: &str) -> Result<Vec<Request>, StorageError> {
    let rows: Vec<Row> = on_backend!(conn, c => privacy_requests::table
        .filter(privacy_requests::state.eq_any(OPEN))
        .order(privacy_requests::id.asc())
        .select(columns!())
        .load(c))?;
    let mut due = Vec::new();
    for row in rows {
        let request = request(row)?;
        if request.due_on() <= day {
            due.push(request);
        }
    }
    Ok(due)
}

/// Each tenant's next request to execute: its oldest open one.
pub fn next_per_tenant(conn: &mut DbConn) -> Result<Vec<Request>, StorageError> {
    let rows: Vec<Row> = on_backend!(conn, c => privacy_requests::table
        .filter(privacy_requests::state.eq_any(OPEN))
        .order(privacy_requests::id.asc())
        .select(columns!())
        .load(c))?;
    let mut next: Vec<Request> = Vec::new();
    for row in rows {
        let request = request(row)?;
        if !next.iter().any(|r| r.tenant_id == request.tenant_id) {
            next.push(request);
        }
    }
    Ok(next)
}

/// The subject that is the tenant's contact `contact_id` (not being erased), by the
/// keyed hash of its BSUID, else of its phone number.
pub fn subject_of_contact(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &str,
) -> Result<Option<Subject>, StorageError> {
    let found: Option<(Option<String>, Option<String>)> = on_backend!(conn, c => contacts::table
        .find(contact_id)
        .filter(contacts::tenant_id.eq(tenant_id.as_str()))
        .select((contacts::user_id_bidx, contacts::wa_id_bidx))
        .get_result(c)
        .optional())?;
    Ok(found
        .and_then(|(user, wa)| user.or(wa))
        .map(|bidx| Subject {
            bidx,
            route_bidx: None,
        }))
}

/// The tenant's contact known by `subject_bidx` (of a wa_id or a BSUID).
pub fn find_subject(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    subject_bidx: &str,
) -> Result<Option<ContactId>, StorageError> {
    let found: Option<String> = on_backend!(conn, c => contacts::table
        .filter(contacts::tenant_id.eq(tenant_id.as_str()))
        .filter(contacts::wa_id_bidx.eq(subject_bidx).or(contacts::user_id_bidx.eq(subject_bidx)))
        .select(contacts::id)
        .limit(1)
        .get_result(c)
        .optional())?;
    Ok(found.map(ContactId))
}

/// Moves `request` to in progress, naming the contact it concerns.
pub fn start(
    conn: &mut DbConn,
    request: &Request,
    contact_id: Option<&ContactId>,
    now_ms: i64,
) -> Result<Request, StorageError> {
    let moved = on_backend!(conn, c => diesel::update(privacy_requests::table.find(&request.id))
        .filter(privacy_requests::state.eq(State::Received.as_str()))
        .set((
            privacy_requests::state.eq(State::InProgress.as_str()),
            privacy_requests::contact_id.eq(contact_id.map(ContactId::as_str)),
        ))
        .execute(c))?;
    let started = get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound)?;
    // Started before (a second look at the same request): recorded once.
    if moved == 1 {
        record(conn, &started, Actor::Compliance, "request_started", now_ms)?;
    }
    Ok(started)
}

/// Restricts or lifts the restriction of the processing of `contact_id`'s data
/// (restriction), or records or lifts its objection to marketing (objection).
pub fn set_contact_flag(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &ContactId,
    kind: Kind,
    since: Option<i64>,
) -> Result<(), StorageError> {
    let contact = contacts::table
        .filter(contacts::tenant_id.eq(tenant_id.as_str()))
        .filter(contacts::id.eq(contact_id.as_str()));
    match kind {
        Kind::Restriction => on_backend!(conn, c => diesel::update(contact)
            .set(contacts::restricted_at.eq(since))
            .execute(c))?,
        Kind::Objection => on_backend!(conn, c => diesel::update(contact)
            .set(contacts::objected_at.eq(since))
            .execute(c))?,
        other => {
            return Err(StorageError::Corrupt(format!(
                "{} is not a flag of the contact",
                other.as_str()
            )))
        }
    };
    Ok(())
}

/// Ends `request`: completed, or rejected with `reason`, with what it did (`outcome`)
/// and its audit entry. `None` when it had ended before (a second look at the same
/// request).
pub fn finish(
    conn: &mut DbConn,
    request: &Request,
    reason: Option<&str>,
    outcome: Option<&serde_json::Value>,
    now_ms: i64,
) -> Result<Option<Request>, StorageError> {
    let state = if reason.is_some() {
        State::Rejected
    } else {
        State::Completed
    };
    let ended = on_backend!(conn, c => diesel::update(privacy_requests::table.find(&request.id))
        .filter(privacy_requests::state.eq_any(OPEN))
        .set((
            privacy_requests::state.eq(state.as_str()),
            privacy_requests::completed_at.eq(Some(now_ms)),
            privacy_requests::reason.eq(reason),
            privacy_requests::outcome_json.eq(outcome.map(|o| o.to_string())),
        ))
        .execute(c))?;
    if ended == 0 {
        return Ok(None);
    }
    let finished = get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound)?;
    let action = match state {
        State::Rejected => "request_rejected",
        _ => "request_completed",
    };
    record(conn, &finished, Actor::Compliance, action, now_ms)?;
    Ok(Some(finished))
}

/// Moves the deadline of `request` (open, not extended before) to `extended_due_on`
/// (YYYY-MM-DD), `months` after its original one, with its audit entry. `None` when
/// it was extended or ended meanwhile.
pub fn extend(
    conn: &mut DbConn,
    request: &Request,
    extended_due_on: &str,
    months: u32,
    now_ms: i64,
) -> Result<Option<Request>, StorageError> {
    let moved = on_backend!(conn, c => diesel::update(privacy_requests::table.find(&request.id))
        .filter(privacy_requests::tenant_id.eq(request.tenant_id.as_str()))
        .filter(privacy_requests::state.eq_any(OPEN))
        .filter(privacy_requests::extended_due_on.is_null())
        .set(privacy_requests::extended_due_on.eq(Some(extended_due_on)))
        .execute(c))?;
    if moved == 0 {
        return Ok(None);
    }
    let extended = get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound)?;
    audit::append(
        conn,
        &audit::NewEntry {
            tenant_id: &extended.tenant_id,
            actor: Actor::Api,
            action: "request_extended",
            request_id: Some(&extended.id),
            contact_id: extended.contact_id.as_ref().map(ContactId::as_str),
            detail: serde_json::json!({"kind": extended.kind.as_str(), "months": months,
                "extended_due_on": extended_due_on}),
        },
        now_ms,
    )?;
    Ok(Some(extended))
}

/// Names `contact_id` as the contact `request` concerns (the one it named was merged
/// into it since).
pub fn set_contact(
    conn: &mut DbConn,
    request: &Request,
    contact_id: &ContactId,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(privacy_requests::table.find(&request.id))
        .filter(privacy_requests::tenant_id.eq(request.tenant_id.as_str()))
        .set(privacy_requests::contact_id.eq(Some(contact_id.as_str())))
        .execute(c))?;
    Ok(())
}

/// Writes what `request` (in progress) has done so far.
pub fn set_outcome(
    conn: &mut DbConn,
    request: &Request,
    outcome: &serde_json::Value,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(privacy_requests::table.find(&request.id))
        .filter(privacy_requests::tenant_id.eq(request.tenant_id.as_str()))
        .set(privacy_requests::outcome_json.eq(Some(outcome.to_string())))
        .execute(c))?;
    Ok(())
}

/// Whether a completed restriction or objection may wait for its subject to appear
/// (one for a wa_id or BSUID the tenant had not seen): while none does, a contact's
/// creation costs no look for one. Set when one completes and at start from the
/// database; never cleared while the process runs, which costs a look per batch of
/// new contacts at most.
static PENDING_SUBJECTS: AtomicBool = AtomicBool::new(false);

/// Notes that a restriction or objection waits for its subject.
pub fn note_pending_subject() {
    PENDING_SUBJECTS.store(true, Ordering::Release);
}

/// Whether a restriction or objection may wait for its subject: the callers that
/// create contacts look for one ([`apply_pending_subjects`]) only then.
pub fn pending_subjects_may_wait() -> bool {
    PENDING_SUBJECTS.load(Ordering::Acquire)
}

/// At start: notes whether any restriction or objection waits for its subject.
pub fn load_pending_subjects(conn: &mut DbConn) -> Result<(), StorageError> {
    let waiting: i64 = on_backend!(conn, c => privacy_requests::table
        .filter(privacy_requests::contact_id.is_null())
        .filter(privacy_requests::kind.eq_any([Kind::Restriction.as_str(), Kind::Objection.as_str()]))
        .filter(privacy_requests::state.eq(State::Completed.as_str()))
        .filter(privacy_requests::lifted_at.is_null())
        .count()
        .get_result(c))?;
    if waiting > 0 {
        note_pending_subject();
    }
    Ok(())
}

/// Applies to `created` (contacts just inserted: id, and the keyed hashes of its
/// BSUID and phone number) the restrictions and objections of the tenant that waited
/// for them, in force from when each completed; each request then names its contact,
/// and the audit log says so. Returns how many it applied. Worth calling only while
/// [`pending_subjects_may_wait`].
pub fn apply_pending_subjects(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    created: &[(&ContactId, [Option<&str>; 2])],
    now_ms: i64,
) -> Result<usize, StorageError> {
    let hashes: Vec<&str> = created
        .iter()
        .flat_map(|(_, hashes)| hashes.iter().flatten().copied())
        .collect();
    if hashes.is_empty() {
        return Ok(0);
    }
    let rows: Vec<Row> = on_backend!(conn, c => privacy_requests::table
        .filter(privacy_requests::tenant_id.eq(tenant_id.as_str()))
        .filter(privacy_requests::contact_id.is_null())
        .filter(privacy_requests::kind.eq_any([Kind::Restriction.as_str(), Kind::Objection.as_str()]))
        .filter(privacy_requests::state.eq(State::Completed.as_str()))
        .filter(privacy_requests::lifted_at.is_null())
        .filter(privacy_requests::subject_bidx.eq_any(&hashes))
        .order(privacy_requests::id.asc())
        .select(columns!())
        .load(c))?;
    let mut applied = 0;
    for row in rows {
        let waiting = request(row)?;
        let Some((contact, _)) = created
            .iter()
            .find(|(_, hashes)| hashes.contains(&Some(waiting.subject_bidx.as_str())))
        else {
            continue;
        };
        // Only while it still waits: a lift or another writer's apply in between wins.
        let outcome = serde_json::json!({"pending_contact": false, "applied_at": now_ms});
        let claimed = on_backend!(conn, c => diesel::update(privacy_requests::table
            .find(&waiting.id)
            .filter(privacy_requests::contact_id.is_null())
            .filter(privacy_requests::lifted_at.is_null())
            .filter(privacy_requests::state.eq(State::Completed.as_str())))
            .set((
                privacy_requests::contact_id.eq(Some(contact.as_str())),
                privacy_requests::outcome_json.eq(Some(outcome.to_string())),
            ))
            .execute(c))?;
        if claimed == 0 {
            continue;
        }
        let since = waiting.completed_at.unwrap_or(now_ms);
        set_contact_flag(conn, tenant_id, contact, waiting.kind, Some(since))?;
        let applied_to = Request {
            contact_id: Some((*contact).clone()),
            outcome: Some(outcome),
            ..waiting
        };
        record(
            conn,
            &applied_to,
            Actor::Compliance,
            "request_applied_to_new_contact",
            now_ms,
        )?;
        applied += 1;
    }
    Ok(applied)
}

/// Lifts a completed restriction or objection: the contact is processed as before,
/// unless another completed request of the same kind, not lifted, still holds it.
pub fn lift(conn: &mut DbConn, request: &Request, now_ms: i64) -> Result<Request, StorageError> {
    if let Some(contact) = &request.contact_id {
        let others: i64 = on_backend!(conn, c => privacy_requests::table
            .filter(privacy_requests::tenant_id.eq(request.tenant_id.as_str()))
            .filter(privacy_requests::contact_id.eq(contact.as_str()))
            .filter(privacy_requests::kind.eq(request.kind.as_str()))
            .filter(privacy_requests::state.eq(State::Completed.as_str()))
            .filter(privacy_requests::lifted_at.is_null())
            .filter(privacy_requests::id.ne(&request.id))
            .count()
            .get_result(c))?;
        if others == 0 {
            set_contact_flag(conn, &request.tenant_id, contact, request.kind, None)?;
        }
    }
    on_backend!(conn, c => diesel::update(privacy_requests::table.find(&request.id))
        .filter(privacy_requests::lifted_at.is_null())
        .set(privacy_requests::lifted_at.eq(Some(now_ms)))
        .execute(c))?;
    let lifted = get(conn, &request.tenant_id, &request.id)?.ok_or(StorageError::NotFound)?;
    record(conn, &lifted, Actor::Api, "request_lifted", now_ms)?;
    Ok(lifted)
}

fn record(
    conn: &mut DbConn,
    request: &Request,
    actor: Actor,
    action: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    audit::append(
        conn,
        &audit::NewEntry {
            tenant_id: &request.tenant_id,
            actor,
            action,
            request_id: Some(&request.id),
            contact_id: request.contact_id.as_ref().map(ContactId::as_str),
            detail: serde_json::json!({"kind": request.kind.as_str(), "state": request.state.as_str()}),
        },
        now_ms,
    )?;
    Ok(())
}
