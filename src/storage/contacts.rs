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

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;

use super::contact_crm::{merge_records, open_record, store_record, ContactRecord};
use super::conversations::join_conversation_times;
use super::key_store::Vault;
use super::keys::{insert_data_key, load_data_key, load_data_keys, load_keys};
use super::messages::move_conversation_messages;
use super::on_backend;
use super::schema::{
    automation_runs, contact_labels, contacts, conversations, outbox, portfolio_reach,
};
use super::{DbConn, StorageError};
use crate::crypto::{Keyring, NewDataKey, Place, SealKey};
use crate::ids::{ContactId, ConversationId, KeyId, PhoneNumberId, TenantId};

/// Where a contact's sealed `column` lives (see [`Place`]); the conversation actor
/// seals profile updates for it too.
pub fn contact_field<'a>(
    tenant_id: &'a str,
    column: &'static str,
    contact_id: &'a str,
) -> Place<'a> {
    Place::new(tenant_id, "contacts", column, contact_id)
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
    let inserted: Vec<String> = on_backend!(conn, c => diesel::insert_into(contacts::table)
        .values(&rows)
        .on_conflict_do_nothing()
        .returning(contacts::id)
        .get_results(c))?;
    Ok(inserted.into_iter().collect())
}

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
struct ContactKeys {
    id: String,
    key_id: String,
    wa_id_bidx: Option<String>,
    user_id_bidx: Option<String>,
}

/// The contacts of a tenant known by a BSUID's or a phone number's blind index: (the
/// one with the BSUID, the one with the phone number), which may be the same contact,
/// or two that turn out to be one person.
fn find_contacts(
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

/// Finds or creates the contact for `ids`, linking a BSUID and a phone number seen
/// together and merging two contacts that turn out to be one person. `new_key` is used
/// when a contact is created (the writer commits it to the key store beforehand).
pub fn resolve_contact(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
    ids: &ContactIdentifiers,
    new_key: Option<(KeyId, NewDataKey)>,
    now_ms: i64,
) -> Result<ResolvedContact, StorageError> {
    let tenant = tenant_id.as_str();
    let indexes = ids.indexes(keyring, tenant_id);
    let (user_bidx, wa_bidx) = (indexes.user_id.clone(), indexes.wa_id.clone());
    let (by_user, by_wa) =
        find_contacts(conn, tenant_id, user_bidx.as_deref(), wa_bidx.as_deref())?;
    let mut merged_away = None;
    let survivor = match (by_user, by_wa) {
        (Some(a), Some(b)) if a.id != b.id => {
            let (survivor, removed) = merge_contacts(conn, keyring, tenant_id, a, b)?;
            merged_away = Some(ContactId(removed));
            survivor
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => {
            let (key_id, data_key) = match new_key {
                Some(prepared) => prepared,
                None => {
                    let key_id = KeyId::generate();
                    let data_key = keyring.new_data_key(tenant, key_id.as_str())?;
                    insert_data_key(conn, keyring, tenant_id, &key_id, &data_key.wrapped, now_ms)?;
                    (key_id, data_key)
                }
            };
            let (new, resolved) =
                NewContact::with_key(tenant_id, ids, indexes, key_id, data_key, now_ms)?;
            if insert_contacts(conn, tenant_id, &[&new])?.is_empty() {
                // Another writer created it since the lookup above (PostgreSQL runs
                // several): the caller resolves again.
                return Err(StorageError::ContactStale(new.contact_id.to_string()));
            }
            return Ok(resolved);
        }
    };
    let key = load_data_key(conn, keyring, tenant_id, &survivor.key_id)?
        .ok_or_else(|| StorageError::Corrupt(format!("contact {} has no data key", survivor.id)))?;
    if survivor.user_id_bidx.is_none() {
        if let (Some(bidx), Some(value)) = (&user_bidx, &ids.user_id) {
            let place = contact_field(tenant, "user_id_ct", &survivor.id);
            let ct = key.seal(value.as_bytes(), &place)?;
            on_backend!(conn, c => diesel::update(contacts::table.find(&survivor.id))
                .set((contacts::user_id_bidx.eq(bidx), contacts::user_id_ct.eq(&ct)))
                .execute(c))?;
        }
    }
    if survivor.wa_id_bidx.is_none() {
        if let (Some(bidx), Some(value)) = (&wa_bidx, &ids.wa_id) {
            let place = contact_field(tenant, "wa_id_ct", &survivor.id);
            let ct = key.seal(value.as_bytes(), &place)?;
            on_backend!(conn, c => diesel::update(contacts::table.find(&survivor.id))
                .set((contacts::wa_id_bidx.eq(bidx), contacts::wa_id_ct.eq(&ct)))
                .execute(c))?;
        }
    }
    Ok(ResolvedContact {
        contact_id: ContactId(survivor.id),
        key_id: KeyId(survivor.key_id),
        key,
        user_id: ids.user_id.clone(),
        wa_id: ids.wa_id.clone(),
        merged_away,
    })
}

/// What a merge carries from one contact to the other, besides its identifiers.
#[derive(Queryable)]
struct ContactDetails {
    profile_name_ct: Option<Vec<u8>>,
    username_ct: Option<Vec<u8>>,
    marketing_opt_out: bool,
    marketing_pref_at: Option<i64>,
    first_seen_at: i64,
}

fn contact_details(conn: &mut DbConn, id: &str) -> Result<ContactDetails, StorageError> {
    Ok(on_backend!(conn, c => contacts::table
        .find(id)
        .select((
            contacts::profile_name_ct,
            contacts::username_ct,
            contacts::marketing_opt_out,
            contacts::marketing_pref_at,
            contacts::first_seen_at,
        ))
        .get_result::<ContactDetails>(c))?)
}

/// Two contacts that turn out to be one person (a BSUID and a phone number first seen
/// apart) become one. The older contact survives, so the id a business saw first stays
/// valid; the other one's conversations and messages move to it (a conversation on a
/// number both had is joined into the survivor's, its window and times combined), its
/// profile fills what the survivor lacks (sealed again under the survivor's key), the
/// later marketing preference holds, and its row is deleted. Its data key stays in the
/// key store: the messages sealed under it still name it (`messages.key_id`), so a
/// contact's keys are its own plus those its messages name. Returns the survivor (the
/// caller gives it the identifiers it lacks) and the id of the contact merged away.
fn merge_contacts(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &TenantId,
    a: ContactKeys,
    b: ContactKeys,
) -> Result<(ContactKeys, String), StorageError> {
    let tenant = tenant_id.as_str();
    if let DbConn::Pg(c) = conn {
        // The other writer may be adding a message to one of these conversations right
        // now: the merge waits for it (its insert holds the conversation's key) and then
        // sees the message, instead of deleting the conversation under it, which would
        // take the acknowledged message with it. Conversations first, then the
        // contacts, the order the other writer's statements take them in.
        conversations::table
            .filter(conversations::tenant_id.eq(tenant))
            .filter(conversations::contact_id.eq_any([a.id.as_str(), b.id.as_str()]))
            .select(conversations::id)
            .for_update()
            .load::<String>(c)?;
        // Two merges of the same contacts by two writers take their turns.
        contacts::table
            .filter(contacts::id.eq_any([a.id.as_str(), b.id.as_str()]))
            .select(contacts::id)
            .for_update()
            .load::<String>(c)?;
    }
    let (a_details, b_details) = (contact_details(conn, &a.id)?, contact_details(conn, &b.id)?);
    let a_first = (a_details.first_seen_at, &a.id) <= (b_details.first_seen_at, &b.id);
    let ((survivor, kept), (removed, gone)) = if a_first {
        ((a, a_details), (b, b_details))
    } else {
        ((b, b_details), (a, a_details))
    };
    let from = removed.id.as_str();
    let into = survivor.id.as_str();
    let from_conversations: Vec<(String, String)> = on_backend!(conn, c => conversations::table
        .filter(conversations::tenant_id.eq(tenant))
        .filter(conversations::contact_id.eq(from))
        .select((conversations::id, conversations::phone_number_id))
        .load(c))?;
    for (conversation_id, phone_number_id) in from_conversations {
        let existing: Option<String> = on_backend!(conn, c => conversations::table
            .filter(conversations::tenant_id.eq(tenant))
            .filter(conversations::contact_id.eq(into))
            .filter(conversations::phone_number_id.eq(&phone_number_id))
            .select(conversations::id)
            .get_result::<String>(c)
            .optional())?;
        match existing {
            // Messages are found through their conversation: messages.contact_id has
            // no index of its own.
            Some(target) => {
                join_conversation_times(conn, &conversation_id, &target)?;
                move_conversation_messages(conn, &conversation_id, &target, into)?;
                on_backend!(conn, c => diesel::delete(conversations::table.find(&conversation_id))
                    .execute(c))?;
            }
            None => {
                on_backend!(conn, c => diesel::update(conversations::table.find(&conversation_id))
                    .set(conversations::contact_id.eq(into))
                    .execute(c))?;
                move_conversation_messages(conn, &conversation_id, &conversation_id, into)?;
            }
        }
    }
    // The business's records of both, read before the other's row (and its labels) go.
    let records: Vec<(String, Option<Vec<u8>>)> = on_backend!(conn, c => contacts::table
        .filter(contacts::id.eq_any([into, from]))
        .select((contacts::id, contacts::crm_ct))
        .load(c))?;
    // Its sends, pending or finished, are the survivor's now (they stay sealed under
    // the key they were sealed with, which the key store keeps).
    on_backend!(conn, c => diesel::update(outbox::table.filter(outbox::contact_id.eq(from)))
        .set(outbox::contact_id.eq(into))
        .execute(c))?;
    // The budgets that reached both count one user, reached when either was last.
    let reached: Vec<(String, i64)> = on_backend!(conn, c => portfolio_reach::table
        .filter(portfolio_reach::contact_id.eq(from))
        .select((portfolio_reach::portfolio_id, portfolio_reach::reached_at))
        .load(c))?;
    for (portfolio, reached_at) in &reached {
        on_backend!(conn, c => diesel::update(portfolio_reach::table
                .find((portfolio, into))
                .filter(portfolio_reach::reached_at.lt(reached_at)))
            .set(portfolio_reach::reached_at.eq(reached_at))
            .execute(c))?;
    }
    let survivors: Vec<String> = on_backend!(conn, c => portfolio_reach::table
        .filter(portfolio_reach::contact_id.eq(into))
        .select(portfolio_reach::portfolio_id)
        .load(c))?;
    on_backend!(conn, c => diesel::delete(portfolio_reach::table
            .filter(portfolio_reach::contact_id.eq(from))
            .filter(portfolio_reach::portfolio_id.eq_any(&survivors)))
        .execute(c))?;
    on_backend!(conn, c => diesel::update(portfolio_reach::table
            .filter(portfolio_reach::contact_id.eq(from)))
        .set(portfolio_reach::contact_id.eq(into))
        .execute(c))?;
    // Its automation runs too: a welcome already sent, a cooldown running, stay so.
    on_backend!(conn, c => diesel::update(automation_runs::table
            .filter(automation_runs::contact_id.eq(from)))
        .set(automation_runs::contact_id.eq(into))
        .execute(c))?;
    // Deleted first: its blind indexes are unique and may pass to the survivor.
    on_backend!(conn, c => diesel::delete(contacts::table.find(from)).execute(c))?;
    let sealed_record = |id: &str| {
        records
            .iter()
            .find(|(of, _)| of == id)
            .and_then(|(_, ct)| ct.clone())
    };
    if let Some(gone_ct) = sealed_record(from) {
        let keys = (
            load_data_key(conn, keyring, tenant_id, &removed.key_id)?,
            load_data_key(conn, keyring, tenant_id, &survivor.key_id)?,
        );
        if let (Some(old_key), Some(new_key)) = keys {
            let gone = open_record(&old_key, tenant, from, &gone_ct).unwrap_or_default();
            let kept = sealed_record(into)
                .and_then(|ct| open_record(&new_key, tenant, into, &ct))
                .unwrap_or_default();
            let merged = merge_records(kept, gone);
            store_record(conn, keyring, tenant_id, into, &new_key, &merged)?;
        }
    }
    let mut reseal = |column, sealed: &Option<Vec<u8>>| -> Result<Option<Vec<u8>>, StorageError> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let (Some(old_key), Some(new_key)) = (
            load_data_key(conn, keyring, tenant_id, &removed.key_id)?,
            load_data_key(conn, keyring, tenant_id, &survivor.key_id)?,
        ) else {
            return Ok(None);
        };
        let plain = old_key.open(sealed, &contact_field(tenant, column, from))?;
        Ok(Some(
            new_key.seal(&plain, &contact_field(tenant, column, into))?,
        ))
    };
    let profile_name_ct = match kept.profile_name_ct {
        Some(own) => Some(own),
        None => reseal("profile_name_ct", &gone.profile_name_ct)?,
    };
    let username_ct = match kept.username_ct {
        Some(own) => Some(own),
        None => reseal("username_ct", &gone.username_ct)?,
    };
    let (marketing_opt_out, marketing_pref_at) = if gone.marketing_pref_at.unwrap_or(i64::MIN)
        > kept.marketing_pref_at.unwrap_or(i64::MIN)
    {
        (gone.marketing_opt_out, gone.marketing_pref_at)
    } else {
        (kept.marketing_opt_out, kept.marketing_pref_at)
    };
    on_backend!(conn, c => diesel::update(contacts::table.find(into))
        .set((
            contacts::profile_name_ct.eq(profile_name_ct),
            contacts::username_ct.eq(username_ct),
            contacts::marketing_opt_out.eq(marketing_opt_out),
            contacts::marketing_pref_at.eq(marketing_pref_at),
            contacts::first_seen_at.eq(kept.first_seen_at.min(gone.first_seen_at)),
        ))
        .execute(c))?;
    Ok((survivor, removed.id))
}

// ---------------------------------------------------------------------------------
// Reads for the tenant API

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conversations::upsert_conversation;
    use crate::storage::schema::data_keys;
    use crate::storage::tenants;

    fn wa(number: &str) -> ContactIdentifiers {
        ContactIdentifiers {
            user_id: None,
            wa_id: Some(number.into()),
        }
    }

    /// One batch of questions from two tenants gets each its own answer, in order: a
    /// contact with its conversation on the number asked about (and without one on
    /// another number), a contact unknown to the tenant asking (though another tenant
    /// has the number), identifiers to link or to merge, a contact whose key is gone.
    #[test]
    fn a_batch_of_look_ups_answers_each_question_as_a_look_up_of_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (vault, pool) = crate::storage::test_storage(dir.path());
        let mut conn = pool.get().expect("connection");
        let tenant = |conn: &mut DbConn, name: &str| {
            TenantId(
                tenants::create_tenant(conn, name, "owner@t.example", 1)
                    .expect("tenant")
                    .tenant_id,
            )
        };
        let (a, b) = (tenant(&mut conn, "a"), tenant(&mut conn, "b"));
        let resolve = |conn: &mut DbConn, ids: &ContactIdentifiers| {
            resolve_contact(conn, &vault, &a, ids, None, 1).expect("contact")
        };
        let known = resolve(&mut conn, &wa("4915100000001"));
        let number = PhoneNumberId("100".into());
        let conversation =
            upsert_conversation(&mut conn, &a, &number, &known.contact_id, Some(1), 1)
                .expect("conversation");
        let by_user = resolve(
            &mut conn,
            &ContactIdentifiers {
                user_id: Some("US.1".into()),
                wa_id: None,
            },
        );
        resolve(&mut conn, &wa("4915100000003"));
        let keyless = resolve(&mut conn, &wa("4915100000004"));
        vault
            .with_store(&mut conn, |conn| {
                on_backend!(conn, c => diesel::update(data_keys::table.find(keyless.key_id.as_str()))
                    .set(data_keys::wrapped_key.eq(None::<Vec<u8>>))
                    .execute(c))?;
                Ok(())
            })
            .expect("key destroyed");

        // A contact of B's that names A's key (damaged data) is not given A's key.
        let borrower = resolve_contact(&mut conn, &vault, &b, &wa("4915100000009"), None, 1)
            .expect("contact of b");
        on_backend!(&mut *conn, c => diesel::update(contacts::table.find(borrower.contact_id.as_str()))
            .set(contacts::key_id.eq(known.key_id.as_str()))
            .execute(c))
        .expect("key id replaced");
        let ask = |tenant_id: &TenantId, number: &str, ids: ContactIdentifiers| ContactQuestion {
            tenant_id: tenant_id.clone(),
            phone_number_id: PhoneNumberId(number.into()),
            ids,
        };
        let questions = [
            ask(&a, "100", wa("4915100000001")),
            ask(&a, "200", wa("4915100000001")),
            ask(&b, "100", wa("4915100000001")),
            ask(&a, "100", wa("4915100000002")),
            // The known contact's number with a BSUID it lacks: to link.
            ask(
                &a,
                "100",
                ContactIdentifiers {
                    user_id: Some("US.9".into()),
                    wa_id: Some("4915100000001".into()),
                },
            ),
            // One contact's BSUID and another's number: to merge.
            ask(
                &a,
                "100",
                ContactIdentifiers {
                    user_id: Some("US.1".into()),
                    wa_id: Some("4915100000003".into()),
                },
            ),
            ask(&a, "100", wa("4915100000004")),
            ask(
                &a,
                "100",
                ContactIdentifiers {
                    user_id: Some("US.1".into()),
                    wa_id: None,
                },
            ),
            ask(&b, "100", wa("4915100000009")),
        ];
        let answers: Vec<Lookup> = look_up_contacts(&mut conn, &vault, &questions)
            .expect("look-ups")
            .into_iter()
            .map(|answer| answer.expect("every key that exists opens"))
            .collect();
        let described: Vec<String> = answers
            .iter()
            .map(|answer| match answer {
                Lookup::Found(contact, conversation) => format!(
                    "found {} in {}",
                    contact.contact_id.as_str(),
                    conversation.as_ref().map_or("none", |c| c.as_str())
                ),
                Lookup::Absent => "absent".into(),
                Lookup::NeedsWriter => "writer".into(),
            })
            .collect();
        let found = |contact: &ResolvedContact, conversation: &str| {
            format!("found {} in {conversation}", contact.contact_id.as_str())
        };
        assert_eq!(
            described,
            vec![
                found(&known, conversation.as_str()),
                found(&known, "none"),
                "absent".into(),
                "absent".into(),
                "writer".into(),
                "writer".into(),
                "writer".into(),
                found(&by_user, "none"),
                "writer".into(),
            ]
        );
        let Lookup::Found(contact, _) = &answers[0] else {
            unreachable!("checked above")
        };
        let place = contact_field(a.as_str(), "test", "x");
        let sealed = known.key.seal(b"under the key", &place).expect("sealed");
        assert_eq!(
            contact.key.open(&sealed, &place).expect("the same key"),
            b"under the key"
        );
    }
}
