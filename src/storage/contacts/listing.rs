//! The tenant API's contact listing, filtered and paged, opened with each contact's key.

use std::collections::HashMap;

use diesel::prelude::*;

use super::contact_field;
use crate::ids::TenantId;
use crate::storage::contact_crm::{open_record, ContactRecord};
use crate::storage::key_store::Vault;
use crate::storage::keys::load_keys;
use crate::storage::on_backend;
use crate::storage::schema::{contact_labels, contacts};
use crate::storage::{DbConn, StorageError};

/// A contact as the tenant API reads it: identifiers and names opened (`None` where
/// absent or unreadable), the business's record, times in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub id: String,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub profile_name: Option<String>,
    pub marketing_opt_out: bool,
    pub first_seen_at: i64,
    pub last_seen_at: i64,
    pub record: ContactRecord,
}

/// Which of the tenant's contacts a listing shows: all, or those with every one of
/// these keyed hashes (an identifier, tags, attribute values; see
/// [`super::contact_crm`]).
#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    pub wa_id_bidx: Option<String>,
    pub user_id_bidx: Option<String>,
    pub labels: Vec<String>,
    /// One contact, by id.
    pub id: Option<String>,
}

type ContactRow = (
    String,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    bool,
    i64,
    i64,
    Option<Vec<u8>>,
);

pub fn list_contacts(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
    filter: &ContactFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Contact>, StorageError> {
    let tenant = tenant_id.as_str();
    let rows: Vec<ContactRow> = on_backend!(conn, c => {
        let mut query = contacts::table
            .filter(contacts::tenant_id.eq(tenant))
            .filter(super::not_erased())
            .select((contacts::id, contacts::key_id, contacts::wa_id_ct, contacts::user_id_ct,
                     contacts::username_ct, contacts::profile_name_ct, contacts::marketing_opt_out,
                     contacts::first_seen_at, contacts::last_seen_at, contacts::crm_ct))
            .order(contacts::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(contacts::id.gt(after));
        }
        if let Some(id) = &filter.id {
            query = query.filter(contacts::id.eq(id));
        }
        if let Some(bidx) = &filter.wa_id_bidx {
            query = query.filter(contacts::wa_id_bidx.eq(bidx));
        }
        if let Some(bidx) = &filter.user_id_bidx {
            query = query.filter(contacts::user_id_bidx.eq(bidx));
        }
        for label in &filter.labels {
            query = query.filter(contacts::id.eq_any(contact_labels::table
                .filter(contact_labels::tenant_id.eq(tenant))
                .filter(contact_labels::label_bidx.eq(label))
                .select(contact_labels::contact_id)));
        }
        query.load(c)
    })?;
    let mut keys = HashMap::new();
    load_keys(
        conn,
        keyring,
        tenant_id,
        rows.iter().map(|r| r.1.as_str()),
        &mut keys,
    )?;
    rows.into_iter()
        .map(
            |(id, key_id, wa, user, username, name, opt_out, first, last, crm)| {
                let key = keys.get(&key_id).and_then(Option::as_ref);
                let open = |column, ct: Option<Vec<u8>>| -> Option<String> {
                    let (key, ct) = (key?, ct?);
                    key.open_string(&ct, &contact_field(tenant, column, &id))
                        .ok()
                };
                let record = match (key, crm) {
                    (Some(key), Some(ct)) => open_record(key, tenant, &id, &ct).unwrap_or_default(),
                    _ => ContactRecord::default(),
                };
                Ok(Contact {
                    wa_id: open("wa_id_ct", wa),
                    user_id: open("user_id_ct", user),
                    username: open("username_ct", username),
                    profile_name: open("profile_name_ct", name),
                    marketing_opt_out: opt_out,
                    first_seen_at: first,
                    last_seen_at: last,
                    record,
                    id,
                })
            },
        )
        .collect()
}
