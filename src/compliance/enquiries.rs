//! Privacy enquiries: a tenant asks about Converra's processing
//! (`POST /v1/privacy/enquiries`); it is due five business days after receipt (the
//! day of receipt not counted, weekends and `compliance.holidays` skipped); the
//! operator answers with `converra enquiry answer`, and the account holder gets the
//! receipt and the answer by email. Each step is audited.

use serde_json::json;

use super::dates;
use crate::email;
use crate::ids::TenantId;
use crate::rules::Conflict;
use crate::storage::audit::{self, Actor};
use crate::storage::email as storage_email;
use crate::storage::enquiries::{self, Enquiry};
use crate::storage::key_store::Vault;
use crate::storage::{tenants, DbConn, StorageError};

/// Queues an email about the account to its holder.
fn tell_holder(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    event: &str,
    subject: &str,
    body: &str,
    message_domain: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let tenant = tenants::get_tenant(conn, tenant_id)?;
    let email = email::account(
        event,
        tenant_id,
        &tenant.name,
        &tenant.holder_email,
        subject,
        body,
    )?;
    storage_email::queue(conn, &email, None, message_domain, now_ms)?;
    Ok(())
}

fn audit_step(
    conn: &mut DbConn,
    enquiry: &Enquiry,
    actor: Actor,
    action: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    audit::append(
        conn,
        &audit::NewEntry {
            tenant_id: &enquiry.tenant_id,
            actor,
            action,
            request_id: Some(&enquiry.id),
            contact_id: None,
            detail: json!({"due_on": enquiry.due_on}),
        },
        now_ms,
    )?;
    Ok(())
}

/// Takes the tenant's enquiry, due five business days later, and tells its holder.
#[allow(clippy::too_many_arguments)]
pub fn submit(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    subject: &str,
    message: &str,
    holidays: &[time::Date],
    message_domain: &str,
    now_ms: i64,
) -> Result<Enquiry, StorageError> {
    crate::storage::write_transaction(conn, |conn| {
        let due = dates::enquiry_due(dates::day_of(now_ms), holidays).to_string();
        let enquiry = enquiries::insert(conn, vault, tenant_id, subject, message, &due, now_ms)?;
        tell_holder(
            conn,
            tenant_id,
            "enquiry_received",
            &format!("Privacy enquiry received: {}", enquiry.id),
            &format!(
                "Converra received your privacy enquiry {} and answers it by {due}.",
                enquiry.id
            ),
            message_domain,
            now_ms,
        )?;
        audit_step(conn, &enquiry, Actor::Api, "enquiry_received", now_ms)?;
        Ok(enquiry)
    })
}

/// The operator's `answer` to enquiry `id`, emailed to the account holder. An enquiry
/// answered before is a conflict; an unknown one `NotFound`.
pub fn answer(
    conn: &mut DbConn,
    vault: &Vault,
    id: &str,
    answer: &str,
    message_domain: &str,
    now_ms: i64,
) -> Result<Enquiry, StorageError> {
    crate::storage::write_transaction(conn, |conn| {
        let enquiry = enquiries::find(conn, vault, id)?.ok_or(StorageError::NotFound)?;
        if !enquiries::set_answer(conn, vault, &enquiry, answer, now_ms)? {
            return Err(StorageError::Conflict {
                code: Conflict::EnquiryAnswered,
                message: format!("enquiry {id} was answered before"),
            });
        }
        tell_holder(
            conn,
            &enquiry.tenant_id,
            "enquiry_answered",
            &format!("Answer to your privacy enquiry {}", enquiry.id),
            answer,
            message_domain,
            now_ms,
        )?;
        audit_step(conn, &enquiry, Actor::Operator, "enquiry_answered", now_ms)?;
        enquiries::find(conn, vault, id)?.ok_or(StorageError::NotFound)
    })
}
