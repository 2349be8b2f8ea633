//! The email outbox (`email_outbox`) and the operator's notices (`notices`): every
//! email to an account holder is committed, rendered, before it is sent, with its
//! Message-ID fixed then, so a retry is the same email. The mailer takes due rows,
//! records each delivery (`sent`), a retry's time, or a refusal for good (`failed`).
//! A notice's deliveries are its rows, counted by state.

use diesel::prelude::*;

use super::audit::{self, Actor};
use super::on_backend;
use super::schema::{email_outbox, notices, tenants};
use super::{DbConn, StorageError};
use crate::ids::TenantId;

pub const QUEUED: &str = "queued";
pub const SENT: &str = "sent";
pub const FAILED: &str = "failed";
/// Rows the retention sweep may delete: their delivery is over.
pub const FINISHED: [&str; 2] = [SENT, FAILED];

/// An email to queue, rendered.
pub struct NewEmail {
    pub tenant_id: TenantId,
    /// What it tells (`notice`, ...), for the operator's counts.
    pub event: String,
    pub recipient: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
}

/// An email due for a delivery attempt.
#[derive(Debug, Clone)]
pub struct DueEmail {
    pub id: String,
    pub recipient: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    pub message_id: String,
    pub attempts: i32,
}

/// Queues `email` (of `notice_id`, when it is one's); its Message-ID is
/// `<id@message_domain>`. Returns its id.
pub fn queue(
    conn: &mut DbConn,
    email: &NewEmail,
    notice_id: Option<&str>,
    message_domain: &str,
    now_ms: i64,
) -> Result<String, StorageError> {
    let id = uuid::Uuid::now_v7().to_string();
    let message_id = format!("<{id}@{message_domain}>");
    on_backend!(conn, c => diesel::insert_into(email_outbox::table)
        .values((
            email_outbox::id.eq(&id),
            email_outbox::tenant_id.eq(email.tenant_id.as_str()),
            email_outbox::notice_id.eq(notice_id),
            email_outbox::event.eq(&email.event),
            email_outbox::recipient.eq(&email.recipient),
            email_outbox::subject.eq(&email.subject),
            email_outbox::text_body.eq(&email.text_body),
            email_outbox::html_body.eq(&email.html_body),
            email_outbox::message_id.eq(&message_id),
            email_outbox::state.eq(QUEUED),
            email_outbox::attempts.eq(0),
            email_outbox::next_attempt_at.eq(now_ms),
            email_outbox::created_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(id)
}

/// Up to `limit` queued emails due by `now_ms`, oldest first.
pub fn due(conn: &mut DbConn, now_ms: i64, limit: i64) -> Result<Vec<DueEmail>, StorageError> {
    type Row = (String, String, String, String, String, String, i32);
    let rows: Vec<Row> = on_backend!(conn, c => email_outbox::table
        .filter(email_outbox::state.eq(QUEUED))
        .filter(email_outbox::next_attempt_at.le(now_ms))
        .order(email_outbox::id.asc())
        .limit(limit)
        .select((email_outbox::id, email_outbox::recipient, email_outbox::subject,
                 email_outbox::text_body, email_outbox::html_body, email_outbox::message_id,
                 email_outbox::attempts))
        .load(c))?;
    Ok(rows
        .into_iter()
        .map(
            |(id, recipient, subject, text_body, html_body, message_id, attempts)| DueEmail {
                id,
                recipient,
                subject,
                text_body,
                html_body,
                message_id,
                attempts,
            },
        )
        .collect())
}

/// The SMTP server accepted email `id`: it is not sent again.
pub fn record_sent(conn: &mut DbConn, id: &str, now_ms: i64) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(email_outbox::table.find(id))
        .filter(email_outbox::state.eq(QUEUED))
        .set((
            email_outbox::state.eq(SENT),
            email_outbox::attempts.eq(email_outbox::attempts + 1),
            email_outbox::sent_at.eq(Some(now_ms)),
            email_outbox::last_error.eq(None::<String>),
        ))
        .execute(c))?;
    Ok(())
}

/// An attempt failed for now: tried again at `next_attempt_at`, or (`None`) never:
/// the server refused it for good.
pub fn record_attempt_failed(
    conn: &mut DbConn,
    id: &str,
    error: &str,
    next_attempt_at: Option<i64>,
) -> Result<(), StorageError> {
    let state = if next_attempt_at.is_some() {
        QUEUED
    } else {
        FAILED
    };
    on_backend!(conn, c => diesel::update(email_outbox::table.find(id))
        .filter(email_outbox::state.eq(QUEUED))
        .set((
            email_outbox::state.eq(state),
            email_outbox::attempts.eq(email_outbox::attempts + 1),
            email_outbox::next_attempt_at.eq(next_attempt_at.unwrap_or(0)),
            email_outbox::last_error.eq(Some(error)),
        ))
        .execute(c))?;
    Ok(())
}

/// The account holder of every active (not closed) tenant: (tenant, email).
pub fn account_holders(conn: &mut DbConn) -> Result<Vec<(TenantId, String)>, StorageError> {
    let rows: Vec<(String, String)> = on_backend!(conn, c => tenants::table
        .filter(tenants::closed_at.is_null())
        .order(tenants::id.asc())
        .select((tenants::id, tenants::holder_email))
        .load(c))?;
    Ok(rows
        .into_iter()
        .map(|(tenant, email)| (TenantId(tenant), email))
        .collect())
}

/// Records notice `subject` and queues its `emails` (one per account holder), each
/// tenant's audit log noting it, in one transaction. Returns the notice's id.
pub fn queue_notice(
    conn: &mut DbConn,
    subject: &str,
    emails: &[NewEmail],
    message_domain: &str,
    now_ms: i64,
) -> Result<String, StorageError> {
    super::write_transaction(conn, |conn| {
        let notice_id = uuid::Uuid::now_v7().to_string();
        on_backend!(conn, c => diesel::insert_into(notices::table)
            .values((
                notices::id.eq(&notice_id),
                notices::subject.eq(subject),
                notices::created_at.eq(now_ms),
            ))
            .execute(c))?;
        for email in emails {
            let email_id = queue(conn, email, Some(&notice_id), message_domain, now_ms)?;
            audit::append(
                conn,
                &audit::NewEntry {
                    tenant_id: &email.tenant_id,
                    actor: Actor::Operator,
                    action: "notice_queued",
                    request_id: None,
                    contact_id: None,
                    detail: serde_json::json!({"notice_id": notice_id, "email_id": email_id}),
                },
                now_ms,
            )?;
        }
        Ok(notice_id)
    })
}

/// A notice and where its emails stand.
#[derive(Debug, Clone)]
pub struct NoticeDeliveries {
    pub id: String,
    pub subject: String,
    pub created_at: i64,
    pub queued: i64,
    pub sent: i64,
    pub failed: i64,
}

/// Every notice, newest first, with its emails counted by state.
pub fn notices(conn: &mut DbConn) -> Result<Vec<NoticeDeliveries>, StorageError> {
    let rows: Vec<(String, String, i64)> = on_backend!(conn, c => notices::table
        .order(notices::id.desc())
        .select((notices::id, notices::subject, notices::created_at))
        .load(c))?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, subject, created_at) in rows {
        let states: Vec<String> = on_backend!(conn, c => email_outbox::table
            .filter(email_outbox::notice_id.eq(&id))
            .select(email_outbox::state)
            .load(c))?;
        let count = |wanted: &str| states.iter().filter(|s| *s == wanted).count() as i64;
        out.push(NoticeDeliveries {
            queued: count(QUEUED),
            sent: count(SENT),
            failed: count(FAILED),
            id,
            subject,
            created_at,
        });
    }
    Ok(out)
}
