//! Finding contacts by reads alone: each question's identifiers looked up by blind
//! index within its tenant, batched for the contact readers.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;

use super::{ContactIdentifiers, ContactIndexes, ResolvedContact};
use crate::ids::{ContactId, ConversationId, KeyId, PhoneNumberId, TenantId};
use crate::storage::key_store::Vault;
use crate::storage::keys::load_data_keys;
use crate::storage::on_backend;
use crate::storage::schema::{contacts, conversations};
use crate::storage::{DbConn, StorageError};

/// What a read finds for a contact's identifiers, outside the writer.
pub enum Lookup {
    /// The contact every identifier given names, with its conversation on the number
    /// asked about, if it has one.
    Found(ResolvedContact, Option<ConversationId>),
    /// No contact has any of the identifiers: the caller may create it
    /// ([`NewContact`]).
    Absent,
    /// The identifiers need linking to a contact that lacks one, or name two contacts
    /// to merge: the writer's work ([`resolve_contact`]).
    NeedsWriter,
}

/// A contact a conversation actor asks [`look_up_contacts`] for: its identifiers in a
/// tenant, and the number whose conversation with it is wanted.
#[derive(Debug, Clone)]
pub struct ContactQuestion {
    pub tenant_id: TenantId,
    pub phone_number_id: PhoneNumberId,
    pub ids: ContactIdentifiers,
}

/// Finds the contacts asked about with reads alone, when that is all it takes; see
/// [`Lookup`]. A conversation actor asks this first: a contact that exists costs no
/// write, and one that does not is created by the write of its first events. All the
/// questions are answered with one query per identifier kind, one of the key store and
/// one of conversations, however many they are: on PostgreSQL each query is a round
/// trip, which a question asked alone would pay four times. One answer per question,
/// in order; a key that does not open fails its own question only.
pub fn look_up_contacts(
    conn: &mut DbConn,
    vault: &Vault,
    questions: &[ContactQuestion],
) -> Result<Vec<Result<Lookup, StorageError>>, StorageError> {
    let indexes: Vec<ContactIndexes> = questions
        .iter()
        .map(|q| q.ids.indexes(vault, &q.tenant_id))
        .collect();
    let users: Vec<&str> = indexes
        .iter()
        .filter_map(|i| i.user_id.as_deref())
        .collect();
    let phones: Vec<&str> = indexes.iter().filter_map(|i| i.wa_id.as_deref()).collect();
    // By each identifier's keyed hash alone (see `find_contacts`); tenants are checked
    // below.
    let select = (
        contacts::tenant_id,
        (
            contacts::id,
            contacts::key_id,
            contacts::wa_id_bidx,
            contacts::user_id_bidx,
        ),
    );
    let mut rows: Vec<(String, ContactKeys)> = Vec::new();
    if !users.is_empty() {
        rows.extend(on_backend!(conn, c => contacts::table
            .filter(contacts::user_id_bidx.eq_any(&users))
            .select(select)
            .load::<(String, ContactKeys)>(c))?);
    }
    if !phones.is_empty() {
        rows.extend(on_backend!(conn, c => contacts::table
            .filter(contacts::wa_id_bidx.eq_any(&phones))
            .select(select)
            .load::<(String, ContactKeys)>(c))?);
    }
    let mut by_user: HashMap<(&str, &str), &ContactKeys> = HashMap::new();
    let mut by_phone: HashMap<(&str, &str), &ContactKeys> = HashMap::new();
    for (tenant, contact) in &rows {
        if let Some(user) = contact.user_id_bidx.as_deref() {
            by_user.insert((tenant.as_str(), user), contact);
        }
        if let Some(phone) = contact.wa_id_bidx.as_deref() {
            by_phone.insert((tenant.as_str(), phone), contact);
        }
    }
    let found: Vec<Option<&ContactKeys>> = questions
        .iter()
        .zip(&indexes)
        .map(|(q, indexes)| {
            let tenant = q.tenant_id.as_str();
            let user = indexes
                .user_id
                .as_deref()
                .and_then(|bidx| by_user.get(&(tenant, bidx)).copied());
            let phone = indexes
                .wa_id
                .as_deref()
                .and_then(|bidx| by_phone.get(&(tenant, bidx)).copied());
            match (user, phone) {
                (Some(a), Some(b)) if a.id != b.id => None,
                (Some(found), _) | (None, Some(found)) => Some(found),
                (None, None) => None,
            }
        })
        .collect();
    let wanted_keys: Vec<(&TenantId, &str)> = questions
        .iter()
        .zip(&found)
        .filter_map(|(q, found)| Some((&q.tenant_id, found.as_ref()?.key_id.as_str())))
        .collect();
    let keys = load_data_keys(conn, vault, &wanted_keys)?;
    let contact_ids: Vec<&str> = found.iter().flatten().map(|c| c.id.as_str()).collect();
    let conversations: Vec<(String, String, String, String)> = if contact_ids.is_empty() {
        Vec::new()
    } else {
        on_backend!(conn, c => conversations::table
            .filter(conversations::contact_id.eq_any(&contact_ids))
            .select((
                conversations::contact_id,
                conversations::tenant_id,
                conversations::phone_number_id,
                conversations::id,
            ))
            .load(c))?
    };
    let conversation_of: HashMap<(&str, &str, &str), &str> = conversations
        .iter()
        .map(|(contact, tenant, number, id)| {
            (
                (contact.as_str(), tenant.as_str(), number.as_str()),
                id.as_str(),
            )
        })
        .collect();
    Ok(questions
        .iter()
        .zip(&indexes)
        .zip(&found)
        .map(|((q, indexes), found)| {
            let Some(found) = found else {
                let asked = |bidx: &Option<String>, map: &HashMap<(&str, &str), &ContactKeys>| {
                    bidx.as_deref()
                        .is_some_and(|bidx| map.contains_key(&(q.tenant_id.as_str(), bidx)))
                };
                // Nothing found is a new contact; two found are a merge.
                return Ok(
                    if asked(&indexes.user_id, &by_user) || asked(&indexes.wa_id, &by_phone) {
                        Lookup::NeedsWriter
                    } else {
                        Lookup::Absent
                    },
                );
            };
            let lacks =
                |asked: &Option<String>, known: &Option<String>| asked.is_some() && known.is_none();
            if lacks(&indexes.user_id, &found.user_id_bidx)
                || lacks(&indexes.wa_id, &found.wa_id_bidx)
            {
                return Ok(Lookup::NeedsWriter);
            }
            // Reads are not one snapshot: a contact merged away or erased since the
            // lookup above has no key now, and the writer's resolve sorts it out.
            let key = match keys.get(&(q.tenant_id.0.clone(), found.key_id.clone())) {
                Some(key) => key.clone()?,
                None => return Ok(Lookup::NeedsWriter),
            };
            let conversation = conversation_of
                .get(&(
                    found.id.as_str(),
                    q.tenant_id.as_str(),
                    q.phone_number_id.as_str(),
                ))
                .map(|id| ConversationId(id.to_string()));
            let contact = ResolvedContact {
                contact_id: ContactId(found.id.clone()),
                key_id: KeyId(found.key_id.clone()),
                key,
                user_id: q.ids.user_id.clone(),
                wa_id: q.ids.wa_id.clone(),
                merged_away: None,
            };
            Ok(Lookup::Found(contact, conversation))
        })
        .collect())
}

#[derive(Debug, Clone, Queryable)]
pub(super) struct ContactKeys {
    pub(super) id: String,
    pub(super) key_id: String,
    pub(super) wa_id_bidx: Option<String>,
    pub(super) user_id_bidx: Option<String>,
}

/// The contacts of a tenant known by a BSUID's or a phone number's blind index: (the
/// one with the BSUID, the one with the phone number), which may be the same contact,
/// or two that turn out to be one person.
pub(super) fn find_contacts(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    by_user_id: Option<&str>,
    by_wa_id: Option<&str>,
) -> Result<(Option<ContactKeys>, Option<ContactKeys>), StorageError> {
    // One lookup per identifier, by its keyed hash alone: each hash is keyed by its
    // tenant, so the index of that identifier is the only one a planner can use (an
    // `OR` of both columns, or the tenant beside the hash, let SQLite and PostgreSQL
    // read the tenant's contacts one by one instead). The tenant is checked here.
    let by = |conn: &mut DbConn, user: Option<&str>, wa: Option<&str>| {
        let rows: Vec<(String, ContactKeys)> = on_backend!(conn, c => {
            let query = contacts::table
                .select((
                    contacts::tenant_id,
                    (contacts::id, contacts::key_id, contacts::wa_id_bidx, contacts::user_id_bidx),
                ))
                .into_boxed();
            let query = match (user, wa) {
                (Some(user), _) => query.filter(contacts::user_id_bidx.eq(user)),
                (None, Some(wa)) => query.filter(contacts::wa_id_bidx.eq(wa)),
                (None, None) => return Ok(None),
            };
            query.load(c)
        })?;
        Ok::<_, StorageError>(
            rows.into_iter()
                .find(|(tenant, _)| tenant == tenant_id.as_str())
                .map(|(_, contact)| contact),
        )
    };
    let by_user = match by_user_id {
        Some(user) => by(conn, Some(user), None)?,
        None => None,
    };
    let by_wa = match by_wa_id {
        // The contact found by its BSUID may be the one with this phone number too.
        Some(wa) if by_user.as_ref().and_then(|c| c.wa_id_bidx.as_deref()) == Some(wa) => {
            by_user.clone()
        }
        Some(wa) => by(conn, None, Some(wa))?,
        None => None,
    };
    Ok((by_user, by_wa))
}

/// Per entry of `wanted` (a tenant and a contact's identifiers): whether resolving it
/// finds a contact that exists, so that the writer can create and commit the data
/// keys of the new ones first.
pub fn contacts_exist(
    conn: &mut DbConn,
    keyring: &Vault,
    wanted: &[(&TenantId, &ContactIdentifiers)],
) -> Result<Vec<bool>, StorageError> {
    let indexes: Vec<ContactIndexes> = wanted
        .iter()
        .map(|(tenant_id, ids)| ids.indexes(keyring, tenant_id))
        .collect();
    let asked: Vec<(&TenantId, &ContactIndexes)> = wanted
        .iter()
        .zip(&indexes)
        .map(|((tenant_id, _), indexes)| (*tenant_id, indexes))
        .collect();
    indexes_exist(conn, &asked)
}

/// Per entry of `wanted` (a tenant and a contact's blind indexes): whether a contact
/// has any of them. Two queries per tenant at most.
fn indexes_exist(
    conn: &mut DbConn,
    wanted: &[(&TenantId, &ContactIndexes)],
) -> Result<Vec<bool>, StorageError> {
    let mut asked: HashMap<&str, (Vec<&str>, Vec<&str>)> = HashMap::new();
    for (tenant_id, indexes) in wanted {
        let (users, phones) = asked.entry(tenant_id.as_str()).or_default();
        users.extend(indexes.user_id.as_deref());
        phones.extend(indexes.wa_id.as_deref());
    }
    // One query per identifier column, by the keyed hashes alone (see
    // `find_contacts`); the tenant is checked here.
    let mut known: HashMap<&str, HashSet<String>> = HashMap::new();
    for (tenant, (users, phones)) in asked {
        let mut found: Vec<(String, Option<String>)> = Vec::new();
        if !users.is_empty() {
            found.extend(on_backend!(conn, c => contacts::table
                .filter(contacts::user_id_bidx.eq_any(&users))
                .select((contacts::tenant_id, contacts::user_id_bidx))
                .load::<(String, Option<String>)>(c))?);
        }
        if !phones.is_empty() {
            found.extend(on_backend!(conn, c => contacts::table
                .filter(contacts::wa_id_bidx.eq_any(&phones))
                .select((contacts::tenant_id, contacts::wa_id_bidx))
                .load::<(String, Option<String>)>(c))?);
        }
        known.entry(tenant).or_default().extend(
            found
                .into_iter()
                .filter(|(of, _)| of == tenant)
                .filter_map(|(_, bidx)| bidx),
        );
    }
    Ok(wanted
        .iter()
        .map(|(tenant_id, indexes)| {
            known.get(tenant_id.as_str()).is_some_and(|of_tenant| {
                [&indexes.user_id, &indexes.wa_id]
                    .into_iter()
                    .flatten()
                    .any(|bidx| of_tenant.contains(bidx))
            })
        })
        .collect())
}
