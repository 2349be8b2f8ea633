//! Contacts (`contacts`): who a BSUID or a phone number belongs to. A contact is found
//! by blind index (a keyed hash of the identifier), with reads alone when that is all
//! it takes ([`look_up_contacts`]); created when none is, by the write that applies its
//! first events ([`NewContact`]) or by the writer's resolve; linked to
//! the identifier it lacks when both are seen together, and merged with another when
//! the two turn out to be one person; identifiers and profile names are sealed under
//! the contact's data key ([`super::keys`]). A merge moves the other contact's
//! conversations and messages through [`super::conversations`] and
//! [`super::messages`]. Also the tenant API's contact listing. Lookups and listings are
//! scoped by tenant.

mod listing;
mod lookup;
mod resolve;

pub use listing::{list_contacts, Contact, ContactFilter};
pub use lookup::{contacts_exist, look_up_contacts, ContactQuestion, Lookup};
pub use resolve::resolve_contact;

use std::collections::HashSet;

use diesel::prelude::*;

use super::on_backend;
use super::schema::contacts;
use super::{DbConn, StorageError};
use crate::crypto::{Keyring, NewDataKey, Place, SealKey};
use crate::ids::{ContactId, ConversationId, KeyId, TenantId};

/// Where a contact's sealed `column` lives (see [`Place`]); the conversation actor
/// seals profile updates for it too.
pub fn contact_field<'a>(
    tenant_id: &'a str,
    column: &'static str,
    contact_id: &'a str,
) -> Place<'a> {
    Place::new(tenant_id, "contacts", column, contact_id)
}

/// Contacts not being erased. An erased contact's row loses its identifiers at once
/// (see [`crate::storage::erasure`]) and waits only for its other rows to go; every
/// other contact has at least one identifier.
#[allow(clippy::type_complexity)]
pub fn not_erased() -> diesel::dsl::Or<
    diesel::dsl::IsNotNull<contacts::wa_id_bidx>,
    diesel::dsl::IsNotNull<contacts::user_id_bidx>,
> {
    contacts::wa_id_bidx
        .is_not_null()
        .or(contacts::user_id_bidx.is_not_null())
}

/// What a contact agreed to or asked for, with when: marketing preference, and a
/// restriction or objection in force.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Consents {
    pub marketing_opt_out: bool,
    pub marketing_preference_at: Option<i64>,
    pub restricted_at: Option<i64>,
    pub objected_at: Option<i64>,
}

/// The consents of `contact_id` of `tenant_id`; `None` when no such contact is held.
pub fn consents(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &ContactId,
) -> Result<Option<Consents>, StorageError> {
    type Row = (bool, Option<i64>, Option<i64>, Option<i64>);
    let row: Option<Row> = on_backend!(conn, c => contacts::table
        .find(contact_id.as_str())
        .filter(contacts::tenant_id.eq(tenant_id.as_str()))
        .filter(not_erased())
        .select((contacts::marketing_opt_out, contacts::marketing_pref_at,
                 contacts::restricted_at, contacts::objected_at))
        .get_result(c)
        .optional())?;
    Ok(row.map(
        |(marketing_opt_out, marketing_preference_at, restricted_at, objected_at)| Consents {
            marketing_opt_out,
            marketing_preference_at,
            restricted_at,
            objected_at,
        },
    ))
}

/// A contact as a conversation actor needs it: ids and the unwrapped data key.
#[derive(Debug, Clone)]
pub struct ResolvedContact {
    pub contact_id: ContactId,
    pub key_id: KeyId,
    pub key: SealKey,
    pub user_id: Option<String>,
    pub wa_id: Option<String>,
    /// The contact this resolution merged into the resolved one, and deleted.
    pub merged_away: Option<ContactId>,
}

/// The identifiers a contact is resolved by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactIdentifiers {
    pub user_id: Option<String>,
    pub wa_id: Option<String>,
}

impl ContactIdentifiers {
    /// The blind indexes the database knows them by, in `tenant_id`.
    pub fn indexes(&self, keyring: &Keyring, tenant_id: &TenantId) -> ContactIndexes {
        let tenant = tenant_id.as_str();
        ContactIndexes {
            user_id: self
                .user_id
                .as_deref()
                .map(|v| keyring.blind_index(tenant, "user_id", v)),
            wa_id: self
                .wa_id
                .as_deref()
                .map(|v| keyring.blind_index(tenant, "wa_id", v)),
        }
    }
}

/// A contact's identifiers as blind indexes (keyed hashes, unique per tenant).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContactIndexes {
    /// Of the BSUID (`user_id_bidx`).
    pub user_id: Option<String>,
    /// Of the phone number (`wa_id_bidx`).
    pub wa_id: Option<String>,
}

/// A contact created by the conversation actor that applies its first events, in the
/// same write (no write of its own first): the row, and its data key wrapped for the
/// key store, which the writer commits before the row. [`NewContact::prepare`] also
/// gives the actor the contact with its key, to seal those events under.
#[derive(Debug, Clone)]
pub struct NewContact {
    pub contact_id: ContactId,
    pub key_id: KeyId,
    pub wrapped_key: Vec<u8>,
    pub indexes: ContactIndexes,
    pub user_id_ct: Option<Vec<u8>>,
    pub wa_id_ct: Option<Vec<u8>>,
    /// The profile (sealed) that came with its first events.
    pub profile_name_ct: Option<Vec<u8>>,
    pub username_ct: Option<Vec<u8>>,
    pub seen_at: i64,
    /// Its conversation on the number of the write's inbound messages, opened by the
    /// same write (they name it), so they go in with the batch's set-based statements.
    pub conversation_id: Option<ConversationId>,
}

impl NewContact {
    /// A new contact for `ids`, with a new data key and a conversation id for its
    /// first conversation.
    pub fn prepare(
        keyring: &Keyring,
        tenant_id: &TenantId,
        ids: &ContactIdentifiers,
        now_ms: i64,
    ) -> Result<(NewContact, ResolvedContact), StorageError> {
        let key_id = KeyId::generate();
        let data_key = keyring.new_data_key(tenant_id.as_str(), key_id.as_str())?;
        let indexes = ids.indexes(keyring, tenant_id);
        let (mut new, contact) =
            NewContact::with_key(tenant_id, ids, indexes, key_id, data_key, now_ms)?;
        new.conversation_id = Some(ConversationId::generate());
        Ok((new, contact))
    }

    fn with_key(
        tenant_id: &TenantId,
        ids: &ContactIdentifiers,
        indexes: ContactIndexes,
        key_id: KeyId,
        data_key: NewDataKey,
        now_ms: i64,
    ) -> Result<(NewContact, ResolvedContact), StorageError> {
        let contact_id = ContactId::generate();
        let seal = |column, v: &Option<String>| -> Result<Option<Vec<u8>>, StorageError> {
            v.as_deref()
                .map(|v| {
                    let place = contact_field(tenant_id.as_str(), column, contact_id.as_str());
                    data_key.key.seal(v.as_bytes(), &place)
                })
                .transpose()
                .map_err(StorageError::from)
        };
        let new = NewContact {
            user_id_ct: seal("user_id_ct", &ids.user_id)?,
            wa_id_ct: seal("wa_id_ct", &ids.wa_id)?,
            contact_id: contact_id.clone(),
            key_id: key_id.clone(),
            wrapped_key: data_key.wrapped,
            indexes,
            profile_name_ct: None,
            username_ct: None,
            seen_at: now_ms,
            conversation_id: None,
        };
        let resolved = ResolvedContact {
            contact_id,
            key_id,
            key: data_key.key,
            user_id: ids.user_id.clone(),
            wa_id: ids.wa_id.clone(),
            merged_away: None,
        };
        Ok((new, resolved))
    }
}

/// Inserts a tenant's new contacts (their data keys are in the key store already),
/// less any whose identifier a contact has already; returns the ids inserted.
pub(in crate::storage) fn insert_contacts(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    new: &[&NewContact],
) -> Result<HashSet<String>, StorageError> {
    if new.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<_> = new
        .iter()
        .map(|c| {
            (
                contacts::id.eq(c.contact_id.as_str()),
                contacts::tenant_id.eq(tenant_id.as_str()),
                contacts::key_id.eq(c.key_id.as_str()),
                contacts::wa_id_bidx.eq(c.indexes.wa_id.as_deref()),
                contacts::user_id_bidx.eq(c.indexes.user_id.as_deref()),
                contacts::wa_id_ct.eq(c.wa_id_ct.as_deref()),
                contacts::user_id_ct.eq(c.user_id_ct.as_deref()),
                contacts::profile_name_ct.eq(c.profile_name_ct.as_deref()),
                contacts::username_ct.eq(c.username_ct.as_deref()),
                contacts::marketing_opt_out.eq(false),
                contacts::first_seen_at.eq(c.seen_at),
                contacts::last_seen_at.eq(c.seen_at),
            )
        })
        .collect();
    let inserted: HashSet<String> = on_backend!(conn, c => diesel::insert_into(contacts::table)
        .values(&rows)
        .on_conflict_do_nothing()
        .returning(contacts::id)
        .get_results::<String>(c))?
    .into_iter()
    .collect();
    // A restriction or objection recorded for a subject not seen before applies from
    // the moment its contact exists.
    if !super::privacy::pending_subjects_may_wait() {
        return Ok(inserted);
    }
    let created: Vec<(&ContactId, [Option<&str>; 2])> = new
        .iter()
        .filter(|c| inserted.contains(c.contact_id.as_str()))
        .map(|c| {
            (
                &c.contact_id,
                [c.indexes.wa_id.as_deref(), c.indexes.user_id.as_deref()],
            )
        })
        .collect();
    let now_ms = new.iter().map(|c| c.seen_at).max().unwrap_or_default();
    super::privacy::apply_pending_subjects(conn, tenant_id, &created, now_ms)?;
    Ok(inserted)
}

// ---------------------------------------------------------------------------------
// Reads for the tenant API

#[cfg(test)]
mod tests;
