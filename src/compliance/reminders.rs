//! Reminders of deadlines, run by the scheduler: a data-subject request due within
//! [`REQUEST_DAYS`] days and not completed reminds its account holder (once per due
//! day, so an extension earns another; none for a closed account); an enquiry due
//! within [`ENQUIRY_DAYS`] days and not answered reminds the operator
//! (`compliance.operator_email`, else the address of `email.from`; with neither, a
//! warning in the log). Each is sent once, recorded with its email in one
//! transaction; one that fails is tried again at the next round and holds up no other.

use std::collections::HashSet;

use time::Duration;

use super::dates;
use super::requests::tell_holder;
use crate::email::{self, RequestEvent};
use crate::ids::TenantId;
use crate::storage::email as storage_email;
use crate::storage::{enquiries, privacy, reminders, tenants, DbConn, StorageError};

/// A request is due this many days ahead when its holder is reminded.
pub const REQUEST_DAYS: i64 = 7;
/// An enquiry is due this many days ahead when the operator is reminded.
pub const ENQUIRY_DAYS: i64 = 2;

/// What one round of reminders did.
#[derive(Debug, Default)]
pub struct Reminded {
    pub requests: usize,
    pub enquiries: usize,
    /// Enquiries due soon that no operator address could be told of.
    pub enquiries_untold: Vec<String>,
    /// Items whose reminder failed (tried again at the next round), with why.
    pub failed: Vec<(String, StorageError)>,
}

fn day_plus(now_ms: i64, days: i64) -> String {
    (dates::day_of(now_ms) + Duration::days(days)).to_string()
}

/// Sends the reminders due at `now_ms` not sent before.
pub fn send_due(
    conn: &mut DbConn,
    operator_email: &str,
    message_domain: &str,
    now_ms: i64,
) -> Result<Reminded, StorageError> {
    let mut done = Reminded::default();
    let closed: HashSet<TenantId> = tenants::list_tenants(conn)?
        .into_iter()
        .filter(|t| t.closed_at.is_some())
        .map(|t| TenantId(t.id))
        .collect();
    for request in privacy::open_due_by(conn, &day_plus(now_ms, REQUEST_DAYS))? {
        // A closed account's holder hears nothing after the closure's confirmation.
        if closed.contains(&request.tenant_id) {
            continue;
        }
        // Once per due day: an extension after a reminder earns another.
        let item = format!("{}:{}", request.id, request.due_on());
        let sent = crate::storage::write_transaction(conn, |conn| {
            if !reminders::record(conn, &item, &request.tenant_id, now_ms)? {
                return Ok(false);
            }
            tell_holder(
                conn,
                &request,
                RequestEvent::Reminder,
                None,
                message_domain,
                now_ms,
            )?;
            Ok(true)
        });
        match sent {
            Ok(sent) => done.requests += usize::from(sent),
            Err(e) => done.failed.push((item, e)),
        }
    }
    for (id, tenant_id, due) in enquiries::open_due_by(conn, &day_plus(now_ms, ENQUIRY_DAYS))? {
        if operator_email.is_empty() {
            done.enquiries_untold.push(id);
            continue;
        }
        let sent = crate::storage::write_transaction(conn, |conn| {
            if !reminders::record(conn, &id, &tenant_id, now_ms)? {
                return Ok(false);
            }
            remind_operator(
                conn,
                &id,
                &tenant_id,
                &due,
                operator_email,
                message_domain,
                now_ms,
            )?;
            Ok(true)
        });
        match sent {
            Ok(sent) => done.enquiries += usize::from(sent),
            Err(e) => done.failed.push((id, e)),
        }
    }
    Ok(done)
}

fn remind_operator(
    conn: &mut DbConn,
    id: &str,
    tenant_id: &TenantId,
    due: &str,
    operator_email: &str,
    message_domain: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let email = email::to_operator(
        "enquiry_reminder",
        tenant_id,
        operator_email,
        &format!("Privacy enquiry reminder: {id} is due by {due}"),
        &format!(
            "The privacy enquiry {id} of the account {tenant_id} is due by {due} and not \
             answered yet: converra enquiry answer --id {id} --answer-file PATH."
        ),
    )?;
    storage_email::queue(conn, &email, None, message_domain, now_ms)?;
    Ok(())
}
