//! Privacy enquiries (`privacy_enquiries`): a tenant's question about Converra's
//! processing, answered by the operator. The question and the answer are sealed under
//! the secrets key, bound to their row and column (they may name people); the state
//! and the dates are in clear, for the deadline and its reminder.

use diesel::prelude::*;

use super::key_store::Vault;
use super::on_backend;
use super::schema::privacy_enquiries;
use super::{DbConn, StorageError};
use crate::crypto::Place;
use crate::ids::TenantId;

pub const OPEN: &str = "open";
pub const ANSWERED: &str = "answered";

/// An enquiry, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enquiry {
    pub id: String,
    pub tenant_id: TenantId,
    pub subject: String,
    pub message: String,
    /// `open` or `answered`.
    pub state: String,
    pub received_at: i64,
    /// YYYY-MM-DD.
    pub due_on: String,
    pub answered_at: Option<i64>,
    pub answer: Option<String>,
}

fn place<'a>(tenant_id: &'a str, column: &'static str, id: &'a str) -> Place<'a> {
    Place::new(tenant_id, "privacy_enquiries", column, id)
}

/// Stores a new enquiry, due on `due_on`.
pub fn insert(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    subject: &str,
    message: &str,
    due_on: &str,
    now_ms: i64,
) -> Result<Enquiry, StorageError> {
    let id = uuid::Uuid::now_v7().to_string();
    let tenant = tenant_id.as_str();
    let subject_ct = vault
        .secrets()
        .seal(subject.as_bytes(), &place(tenant, "subject_ct", &id))?;
    let message_ct = vault
        .secrets()
        .seal(message.as_bytes(), &place(tenant, "message_ct", &id))?;
    on_backend!(conn, c => diesel::insert_into(privacy_enquiries::table)
        .values((
            privacy_enquiries::id.eq(&id),
            privacy_enquiries::tenant_id.eq(tenant),
            privacy_enquiries::subject_ct.eq(&subject_ct),
            privacy_enquiries::message_ct.eq(&message_ct),
            privacy_enquiries::state.eq(OPEN),
            privacy_enquiries::received_at.eq(now_ms),
            privacy_enquiries::due_on.eq(due_on),
        ))
        .execute(c))?;
    Ok(Enquiry {
        id,
        tenant_id: tenant_id.clone(),
        subject: subject.to_string(),
        message: message.to_string(),
        state: OPEN.into(),
        received_at: now_ms,
        due_on: due_on.to_string(),
        answered_at: None,
        answer: None,
    })
}

type Row = (
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    String,
    i64,
    String,
    Option<i64>,
    Option<Vec<u8>>,
);

macro_rules! columns {
    () => {
        (
            privacy_enquiries::id,
            privacy_enquiries::tenant_id,
            privacy_enquiries::subject_ct,
            privacy_enquiries::message_ct,
            privacy_enquiries::state,
            privacy_enquiries::received_at,
            privacy_enquiries::due_on,
            privacy_enquiries::answered_at,
            privacy_enquiries::answer_ct,
        )
    };
}

fn open_row(vault: &Vault, row: Row) -> Result<Enquiry, StorageError> {
    let (id, tenant, subject_ct, message_ct, state, received_at, due_on, answered_at, answer_ct) =
        row;
    let open = |ct: &[u8], column: &'static str| -> Result<String, StorageError> {
        Ok(vault
            .secrets()
            .open_string(ct, &place(&tenant, column, &id))?)
    };
    Ok(Enquiry {
        subject: open(&subject_ct, "subject_ct")?,
        message: open(&message_ct, "message_ct")?,
        answer: answer_ct
            .as_deref()
            .map(|ct| open(ct, "answer_ct"))
            .transpose()?,
        tenant_id: TenantId(tenant.clone()),
        id,
        state,
        received_at,
        due_on,
        answered_at,
    })
}

/// The tenant's enquiry `id`, if it is the tenant's.
pub fn get(
    conn: &mut DbConn,
    vault: &Vault,
    tenant_id: &TenantId,
    id: &str,
) -> Result<Option<Enquiry>, StorageError> {
    let row: Option<Row> = on_backend!(conn, c => privacy_enquiries::table
        .find(id)
        .filter(privacy_enquiries::tenant_id.eq(tenant_id.as_str()))
        .select(columns!())
        .get_result(c)
        .optional())?;
    row.map(|row| open_row(vault, row)).transpose()
}

/// Enquiry `id`, whichever tenant's (the operator's view).
pub fn find(conn: &mut DbConn, vault: &Vault, id: &str) -> Result<Option<Enquiry>, StorageError> {
    let row: Option<Row> = on_backend!(conn, c => privacy_enquiries::table
        .find(id)
        .select(columns!())
        .get_result(c)
        .optional())?;
    row.map(|row| open_row(vault, row)).transpose()
}

/// Every open enquiry, the earliest due first (the operator's queue).
pub fn open_enquiries(conn: &mut DbConn, vault: &Vault) -> Result<Vec<Enquiry>, StorageError> {
    let rows: Vec<Row> = on_backend!(conn, c => privacy_enquiries::table
        .filter(privacy_enquiries::state.eq(OPEN))
        .order((privacy_enquiries::due_on.asc(), privacy_enquiries::id.asc()))
        .select(columns!())
        .load(c))?;
    rows.into_iter().map(|row| open_row(vault, row)).collect()
}

/// Open enquiries due on or before `day` (YYYY-MM-DD), without their content: (id,
/// tenant, due day).
pub fn open_due_by(
    conn: &mut DbConn,
    day: &str,
) -> Result<Vec<(String, TenantId, String)>, StorageError> {
    let rows: Vec<(String, String, String)> = on_backend!(conn, c => privacy_enquiries::table
        .filter(privacy_enquiries::state.eq(OPEN))
        .filter(privacy_enquiries::due_on.le(day))
        .order(privacy_enquiries::id.asc())
        .select((privacy_enquiries::id, privacy_enquiries::tenant_id, privacy_enquiries::due_on))
        .load(c))?;
    Ok(rows
        .into_iter()
        .map(|(id, tenant, due)| (id, TenantId(tenant), due))
        .collect())
}

/// Records `answer` to open enquiry `enquiry`; `false` when it was answered before.
pub fn set_answer(
    conn: &mut DbConn,
    vault: &Vault,
    enquiry: &Enquiry,
    answer: &str,
    now_ms: i64,
) -> Result<bool, StorageError> {
    let answer_ct = vault.secrets().seal(
        answer.as_bytes(),
        &place(enquiry.tenant_id.as_str(), "answer_ct", &enquiry.id),
    )?;
    let updated = on_backend!(conn, c => diesel::update(privacy_enquiries::table
        .find(&enquiry.id)
        .filter(privacy_enquiries::state.eq(OPEN)))
        .set((
            privacy_enquiries::state.eq(ANSWERED),
            privacy_enquiries::answered_at.eq(Some(now_ms)),
            privacy_enquiries::answer_ct.eq(Some(&answer_ct)),
        ))
        .execute(c))?;
    Ok(updated > 0)
}
