//! Contacts, conversations, messages and their statuses: the CRM state the
//! conversation actors build from the inbox, and the reads of the tenant API. Every
//! query is scoped by tenant. Contacts are found by blind index (a keyed hash of the
//! BSUID or phone number); identifiers, profile names and message content are sealed
//! under the contact's data key, kept in the key store.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use serde::Serialize;
use serde_json::Value;

use super::fixed::{fixed_statement, Bind, ReturnedId, Sql};
use super::inbox::FreshRow;
use super::schema::{contacts, conversations, data_keys, messages, status_events};
use super::{DbConn, StorageError};
use crate::clock::rfc3339;
use crate::crypto::{Keyring, NewDataKey, SealKey};
use crate::ids::{ContactId, ConversationId, KeyId, MessageId, TenantId};
use crate::on_backend;

/// The customer-service window Meta opens with each inbound message.
pub const SERVICE_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

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

/// One unit of CRM work produced by a conversation actor; the writer applies a batch
/// of them in one transaction, in order.
#[derive(Debug, Clone)]
pub enum ApplyOp {
    Inbound(NewInbound),
    Status(NewStatus),
    Preference(NewPreference),
    Profile(ProfileUpdate),
    /// An event that needed nothing else (its inbox row is kept until purged).
    Done {
        origin: Origin,
    },
}

/// Where the event an op applies came from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A committed inbox row, marked processed in the transaction that applies it.
    Inbox(i64),
    /// An event applied as it arrives. Its inbox row is inserted already processed in
    /// the same transaction, and when that row exists already (a redelivery) the op is
    /// skipped; an inbound message has no such row (see
    /// [`ApplyOp::inbox_row_to_insert`]): its message row collides instead.
    Fresh(FreshRow),
}

impl ApplyOp {
    /// The contact the op writes to; `None` for an op that writes none.
    pub fn contact_id(&self) -> Option<&ContactId> {
        match self {
            ApplyOp::Inbound(m) => Some(&m.contact_id),
            ApplyOp::Status(s) => Some(&s.contact_id),
            ApplyOp::Preference(p) => Some(&p.contact_id),
            ApplyOp::Profile(p) => Some(&p.contact_id),
            ApplyOp::Done { .. } => None,
        }
    }

    /// Where the op's event came from; `None` for work of the actor's own.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ApplyOp::Inbound(m) => Some(&m.origin),
            ApplyOp::Status(s) => Some(&s.origin),
            ApplyOp::Preference(p) => Some(&p.origin),
            ApplyOp::Done { origin } => Some(origin),
            ApplyOp::Profile(_) => None,
        }
    }

    /// The inbox row this op completes, if it came from one.
    pub fn inbox_id(&self) -> Option<i64> {
        match self.origin() {
            Some(Origin::Inbox(id)) => Some(*id),
            _ => None,
        }
    }

    /// The inbox row of the op's event, if the event is fresh.
    pub fn fresh_row(&self) -> Option<&FreshRow> {
        match self.origin() {
            Some(Origin::Fresh(row)) => Some(row),
            _ => None,
        }
    }

    /// The processed inbox row to write with this op. A fresh inbound message needs
    /// none: its own key, (tenant, wamid), already catches a redelivery, so the row
    /// would only cost a write.
    pub fn inbox_row_to_insert(&self) -> Option<&FreshRow> {
        match self {
            ApplyOp::Inbound(_) => None,
            _ => self.fresh_row(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewInbound {
    pub origin: Origin,
    pub phone_number_id: String,
    pub contact_id: ContactId,
    /// The conversation, when the actor already knows it (saves a lookup).
    pub conversation_id: Option<String>,
    pub message_id: MessageId,
    pub wamid: String,
    pub msg_type: String,
    /// Meta's timestamp, milliseconds, as sent.
    pub sent_at: i64,
    /// The same, never after the webhook's arrival: what the conversation's window
    /// counts from.
    pub inbound_at: i64,
    pub key_id: KeyId,
    /// Sealed [`MessageBundle`], bound to `message_id`.
    pub content_ct: Vec<u8>,
    pub ref_wamid: Option<String>,
    pub is_revoke: bool,
}

#[derive(Debug, Clone)]
pub struct NewStatus {
    pub origin: Origin,
    pub phone_number_id: String,
    pub contact_id: ContactId,
    pub wamid: String,
    pub status: String,
    pub occurred_at: i64,
    /// Meta's first error, `{"code","title","message"}`, for failed messages.
    pub error_json: Option<String>,
    /// Errors, pricing and conversation objects of the event (no identifiers).
    pub detail_json: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewPreference {
    pub origin: Origin,
    pub contact_id: ContactId,
    pub marketing_opt_out: Option<bool>,
    pub occurred_at: i64,
}

#[derive(Debug, Clone)]
pub struct ProfileUpdate {
    pub contact_id: ContactId,
    pub profile_name_ct: Option<Vec<u8>>,
    pub username_ct: Option<Vec<u8>>,
    pub seen_at: i64,
}

/// What is sealed as a message's content: the type's object as Meta sent it, and the
/// reply context, ad referral and errors that came with it. Sealed from borrowed
/// values (`MessageBundle<&Value>`), opened into owned ones.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct MessageBundle<V = Value> {
    pub content: V,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<V>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<V>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<V>,
}

/// The order of message states; `failed` is handled apart.
fn status_rank(status: Option<&str>) -> Option<u8> {
    match status {
        None | Some("queued") => Some(0),
        Some("sent") => Some(1),
        Some("delivered") => Some(2),
        Some("read") => Some(3),
        Some("played") => Some(4),
        _ => None,
    }
}

/// The state a message moves to when `incoming` arrives, or `None` to stay: states
/// only move forward (read never becomes delivered), `failed` is final, and a
/// message that got past `sent` does not become failed.
pub fn next_status(current: Option<&str>, incoming: &str) -> Option<String> {
    if current == Some("failed") {
        return None;
    }
    let current_rank = status_rank(current)?;
    if incoming == "failed" {
        return (current_rank <= 1).then(|| "failed".to_string());
    }
    let incoming_rank = status_rank(Some(incoming))?;
    (incoming_rank > current_rank).then(|| incoming.to_string())
}

// ---------------------------------------------------------------------------------
// Keys

pub fn insert_data_key(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    key_id: &KeyId,
    wrapped: &[u8],
    now_ms: i64,
) -> Result<(), StorageError> {
    insert_data_keys(conn, &[(tenant_id, key_id, wrapped)], now_ms)
}

/// Stores wrapped data keys, all in one statement.
pub fn insert_data_keys(
    conn: &mut DbConn,
    keys: &[(&TenantId, &KeyId, &[u8])],
    now_ms: i64,
) -> Result<(), StorageError> {
    if keys.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = keys
        .iter()
        .map(|(tenant_id, key_id, wrapped)| {
            (
                data_keys::id.eq(key_id.as_str()),
                data_keys::tenant_id.eq(tenant_id.as_str()),
                data_keys::wrapped_key.eq(*wrapped),
                data_keys::created_at.eq(now_ms),
            )
        })
        .collect();
    on_backend!(conn, c => diesel::insert_into(data_keys::table)
        .values(&rows)
        .execute(c))?;
    Ok(())
}

pub fn load_data_key(
    conn: &mut DbConn,
    keyring: &Keyring,
    key_id: &str,
) -> Result<Option<SealKey>, StorageError> {
    let wrapped: Option<Option<Vec<u8>>> = on_backend!(conn, c => data_keys::table
        .find(key_id)
        .select(data_keys::wrapped_key)
        .first::<Option<Vec<u8>>>(c)
        .optional())?;
    match wrapped.flatten() {
        Some(wrapped) => Ok(Some(keyring.unwrap_data_key(key_id, &wrapped)?)),
        None => Ok(None),
    }
}

/// Loads (and caches in `cache`) the keys named by `key_ids`; destroyed keys are absent.
fn load_keys<'a>(
    conn: &mut DbConn,
    keyring: &Keyring,
    key_ids: impl Iterator<Item = &'a str>,
    cache: &mut HashMap<String, Option<SealKey>>,
) -> Result<(), StorageError> {
    for key_id in key_ids {
        if !cache.contains_key(key_id) {
            let key = load_data_key(conn, keyring, key_id)?;
            cache.insert(key_id.to_string(), key);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Contacts

#[derive(Debug, Clone, Queryable)]
struct ContactKeys {
    id: String,
    key_id: String,
    wa_id_bidx: Option<String>,
    user_id_bidx: Option<String>,
}

/// The contacts of a tenant known by a BSUID's or a phone number's blind index, in
/// one query: (the one with the BSUID, the one with the phone number), which may be
/// the same contact, or two that turn out to be one person.
fn find_contacts(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    by_user_id: Option<&str>,
    by_wa_id: Option<&str>,
) -> Result<(Option<ContactKeys>, Option<ContactKeys>), StorageError> {
    let columns = (
        contacts::id,
        contacts::key_id,
        contacts::wa_id_bidx,
        contacts::user_id_bidx,
    );
    let rows: Vec<ContactKeys> = on_backend!(conn, c => {
        let query = contacts::table
            .filter(contacts::tenant_id.eq(tenant_id.as_str()))
            .select(columns)
            .into_boxed();
        let query = match (by_user_id, by_wa_id) {
            (Some(user), Some(wa)) => query.filter(
                contacts::user_id_bidx
                    .eq(user)
                    .or(contacts::wa_id_bidx.eq(wa)),
            ),
            (Some(user), None) => query.filter(contacts::user_id_bidx.eq(user)),
            (None, Some(wa)) => query.filter(contacts::wa_id_bidx.eq(wa)),
            (None, None) => return Ok((None, None)),
        };
        // Each blind index is unique per tenant: two rows at most.
        query.limit(2).load::<ContactKeys>(c)
    })?;
    let with = |bidx: Option<&str>, of: fn(&ContactKeys) -> Option<&str>| {
        bidx.and_then(|bidx| rows.iter().find(|row| of(row) == Some(bidx)).cloned())
    };
    Ok((
        with(by_user_id, |row| row.user_id_bidx.as_deref()),
        with(by_wa_id, |row| row.wa_id_bidx.as_deref()),
    ))
}

/// Per entry of `wanted` (a tenant and a contact's identifiers): whether resolving it
/// finds a contact that exists, so that the writer can create and commit the data
/// keys of the new ones first. One query per tenant.
pub fn contacts_exist(
    conn: &mut DbConn,
    keyring: &Keyring,
    wanted: &[(&TenantId, &ContactIdentifiers)],
) -> Result<Vec<bool>, StorageError> {
    let bidx = |tenant_id: &TenantId, field: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| keyring.blind_index(tenant_id.as_str(), field, v))
    };
    let indexes: Vec<(Option<String>, Option<String>)> = wanted
        .iter()
        .map(|(tenant_id, ids)| {
            (
                bidx(tenant_id, "user_id", &ids.user_id),
                bidx(tenant_id, "wa_id", &ids.wa_id),
            )
        })
        .collect();
    // Each tenant's blind indexes, asked for in one query per tenant.
    let mut asked: HashMap<&str, (Vec<&str>, Vec<&str>)> = HashMap::new();
    for ((tenant_id, _), (user, phone)) in wanted.iter().zip(&indexes) {
        let (users, phones) = asked.entry(tenant_id.as_str()).or_default();
        users.extend(user.as_deref());
        phones.extend(phone.as_deref());
    }
    let mut known: HashMap<&str, HashSet<String>> = HashMap::new();
    for (tenant, (users, phones)) in asked {
        if users.is_empty() && phones.is_empty() {
            continue;
        }
        let found: Vec<(Option<String>, Option<String>)> = on_backend!(conn, c => contacts::table
            .filter(contacts::tenant_id.eq(tenant))
            .filter(
                contacts::user_id_bidx
                    .eq_any(&users)
                    .or(contacts::wa_id_bidx.eq_any(&phones)),
            )
            .select((contacts::user_id_bidx, contacts::wa_id_bidx))
            .load(c))?;
        known.entry(tenant).or_default().extend(
            found
                .into_iter()
                .flat_map(|(user, phone)| user.into_iter().chain(phone)),
        );
    }
    Ok(wanted
        .iter()
        .zip(&indexes)
        .map(|((tenant_id, _), (user, phone))| {
            known.get(tenant_id.as_str()).is_some_and(|of_tenant| {
                [user, phone]
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
    keyring: &Keyring,
    tenant_id: &TenantId,
    ids: &ContactIdentifiers,
    new_key: Option<(KeyId, NewDataKey)>,
    now_ms: i64,
) -> Result<ResolvedContact, StorageError> {
    let tenant = tenant_id.as_str();
    let user_bidx = ids
        .user_id
        .as_deref()
        .map(|v| keyring.blind_index(tenant, "user_id", v));
    let wa_bidx = ids
        .wa_id
        .as_deref()
        .map(|v| keyring.blind_index(tenant, "wa_id", v));
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
                    let data_key = keyring.new_data_key(key_id.as_str())?;
                    insert_data_key(conn, tenant_id, &key_id, &data_key.wrapped, now_ms)?;
                    (key_id, data_key)
                }
            };
            let contact_id = ContactId::generate();
            let seal = |v: &Option<String>| -> Result<Option<Vec<u8>>, StorageError> {
                v.as_deref()
                    .map(|v| {
                        data_key
                            .key
                            .seal(v.as_bytes(), contact_id.as_str().as_bytes())
                    })
                    .transpose()
                    .map_err(StorageError::from)
            };
            let wa_ct = seal(&ids.wa_id)?;
            let user_ct = seal(&ids.user_id)?;
            on_backend!(conn, c => diesel::insert_into(contacts::table)
                .values((
                    contacts::id.eq(contact_id.as_str()),
                    contacts::tenant_id.eq(tenant),
                    contacts::key_id.eq(key_id.as_str()),
                    contacts::wa_id_bidx.eq(wa_bidx.as_deref()),
                    contacts::user_id_bidx.eq(user_bidx.as_deref()),
                    contacts::wa_id_ct.eq(wa_ct.as_deref()),
                    contacts::user_id_ct.eq(user_ct.as_deref()),
                    contacts::marketing_opt_out.eq(false),
                    contacts::first_seen_at.eq(now_ms),
                    contacts::last_seen_at.eq(now_ms),
                ))
                .execute(c))?;
            return Ok(ResolvedContact {
                contact_id,
                key_id,
                key: data_key.key,
                user_id: ids.user_id.clone(),
                wa_id: ids.wa_id.clone(),
                merged_away: None,
            });
        }
    };
    let key = load_data_key(conn, keyring, &survivor.key_id)?
        .ok_or_else(|| StorageError::Corrupt(format!("contact {} has no data key", survivor.id)))?;
    let contact_aad = survivor.id.clone();
    if survivor.user_id_bidx.is_none() {
        if let (Some(bidx), Some(value)) = (&user_bidx, &ids.user_id) {
            let ct = key.seal(value.as_bytes(), contact_aad.as_bytes())?;
            on_backend!(conn, c => diesel::update(contacts::table.find(&survivor.id))
                .set((contacts::user_id_bidx.eq(bidx), contacts::user_id_ct.eq(&ct)))
                .execute(c))?;
        }
    }
    if survivor.wa_id_bidx.is_none() {
        if let (Some(bidx), Some(value)) = (&wa_bidx, &ids.wa_id) {
            let ct = key.seal(value.as_bytes(), contact_aad.as_bytes())?;
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
        .first::<ContactDetails>(c))?)
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
    keyring: &Keyring,
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
            .first::<String>(c)
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
    // Deleted first: its blind indexes are unique and may pass to the survivor.
    on_backend!(conn, c => diesel::delete(contacts::table.find(from)).execute(c))?;
    let mut reseal = |sealed: &Option<Vec<u8>>| -> Result<Option<Vec<u8>>, StorageError> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let (Some(old_key), Some(new_key)) = (
            load_data_key(conn, keyring, &removed.key_id)?,
            load_data_key(conn, keyring, &survivor.key_id)?,
        ) else {
            return Ok(None);
        };
        let plain = old_key.open(sealed, from.as_bytes())?;
        Ok(Some(new_key.seal(&plain, into.as_bytes())?))
    };
    let profile_name_ct = match kept.profile_name_ct {
        Some(own) => Some(own),
        None => reseal(&gone.profile_name_ct)?,
    };
    let username_ct = match kept.username_ct {
        Some(own) => Some(own),
        None => reseal(&gone.username_ct)?,
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

/// Gives conversation `target` the times of both: opened at the earlier, its last
/// inbound message, window and last message at the later.
fn join_conversation_times(
    conn: &mut DbConn,
    source: &str,
    target: &str,
) -> Result<(), StorageError> {
    type Times = (i64, Option<i64>, Option<i64>, i64);
    let times = |conn: &mut DbConn, id: &str| -> Result<Times, StorageError> {
        Ok(on_backend!(conn, c => conversations::table
            .find(id)
            .select((
                conversations::opened_at,
                conversations::last_inbound_at,
                conversations::window_ends_at,
                conversations::last_message_at,
            ))
            .first::<Times>(c))?)
    };
    let (s, t) = (times(conn, source)?, times(conn, target)?);
    let later = |x: Option<i64>, y: Option<i64>| x.max(y);
    on_backend!(conn, c => diesel::update(conversations::table.find(target))
        .set((
            conversations::opened_at.eq(s.0.min(t.0)),
            conversations::last_inbound_at.eq(later(s.1, t.1)),
            conversations::window_ends_at.eq(later(s.2, t.2)),
            conversations::last_message_at.eq(s.3.max(t.3)),
        ))
        .execute(c))?;
    Ok(())
}

/// Gives every message of `conversation_id` the conversation `target` and the contact
/// `contact`. On SQLite the messages of a conversation are found through
/// `conversation_messages` and the unindexed tail (see [`super::conversation_index`]);
/// a trigger moves their index rows.
fn move_conversation_messages(
    conn: &mut DbConn,
    conversation_id: &str,
    target: &str,
    contact: &str,
) -> Result<(), StorageError> {
    use diesel::sql_types::Text;
    match conn {
        DbConn::Sqlite(c) => {
            for found_by in [
                "id IN (SELECT message_id FROM conversation_messages WHERE conversation_id = ?3)",
                "rowid > (SELECT indexed_through FROM conversation_index_state) \
                 AND conversation_id = ?3",
            ] {
                diesel::sql_query(format!(
                    "UPDATE messages SET conversation_id = ?1, contact_id = ?2 WHERE {found_by}"
                ))
                .bind::<Text, _>(target)
                .bind::<Text, _>(contact)
                .bind::<Text, _>(conversation_id)
                .execute(c)?;
            }
        }
        DbConn::Pg(c) => {
            diesel::update(messages::table.filter(messages::conversation_id.eq(conversation_id)))
                .set((
                    messages::conversation_id.eq(target),
                    messages::contact_id.eq(contact),
                ))
                .execute(c)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Applying actor work

/// Finds or opens the conversation of `contact_id` on `phone_number_id`; an inbound
/// message at `inbound_at` moves the customer-service window (never backwards).
fn upsert_conversation(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    phone_number_id: &str,
    contact_id: &ContactId,
    inbound_at: Option<i64>,
    now_ms: i64,
) -> Result<String, StorageError> {
    let tenant = tenant_id.as_str();
    let existing: Option<(String, Option<i64>, i64)> = on_backend!(conn, c => conversations::table
        .filter(conversations::tenant_id.eq(tenant))
        .filter(conversations::phone_number_id.eq(phone_number_id))
        .filter(conversations::contact_id.eq(contact_id.as_str()))
        .select((conversations::id, conversations::last_inbound_at, conversations::last_message_at))
        .first(c)
        .optional())?;
    let message_at = inbound_at.unwrap_or(now_ms);
    match existing {
        Some((id, last_inbound, last_message)) => {
            let last_inbound = match (last_inbound, inbound_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            on_backend!(conn, c => diesel::update(conversations::table.find(&id))
                .set((
                    conversations::last_inbound_at.eq(last_inbound),
                    conversations::window_ends_at.eq(last_inbound.map(|t| t.saturating_add(SERVICE_WINDOW_MS))),
                    conversations::last_message_at.eq(last_message.max(message_at)),
                ))
                .execute(c))?;
            Ok(id)
        }
        None => {
            let id = ConversationId::generate().0;
            on_backend!(conn, c => diesel::insert_into(conversations::table)
                .values((
                    conversations::id.eq(&id),
                    conversations::tenant_id.eq(tenant),
                    conversations::phone_number_id.eq(phone_number_id),
                    conversations::contact_id.eq(contact_id.as_str()),
                    conversations::opened_at.eq(now_ms),
                    conversations::last_inbound_at.eq(inbound_at),
                    conversations::window_ends_at.eq(inbound_at.map(|t| t.saturating_add(SERVICE_WINDOW_MS))),
                    conversations::last_message_at.eq(message_at),
                ))
                .execute(c))?;
            Ok(id)
        }
    }
}

fixed_statement!(
    TouchOne = "UPDATE conversations SET \
    last_inbound_at = max(coalesce(last_inbound_at, ?), ?), \
    window_ends_at = max(coalesce(last_inbound_at, ?), ?) + ?, \
    last_message_at = max(last_message_at, ?) \
    WHERE id = ? AND tenant_id = ?"
);

// Rows whose window does not move are left alone: on PostgreSQL an update that changes
// nothing still writes a new row version and its WAL (measured: 7% of the WAL bytes per
// message). Every conversation that exists is returned, moved or not.
fixed_statement!(
    TouchManyPg = "WITH v AS (SELECT * FROM unnest(?::text[], ?::text[], ?::bigint[]) \
        AS v (id, tenant, at)), \
    moved AS (UPDATE conversations AS c SET \
        last_inbound_at = GREATEST(c.last_inbound_at, v.at), \
        window_ends_at = GREATEST(c.last_inbound_at, v.at) + ?, \
        last_message_at = GREATEST(c.last_message_at, v.at) \
        FROM v WHERE c.id = v.id AND c.tenant_id = v.tenant \
        AND (c.last_inbound_at IS NULL OR c.last_inbound_at < v.at OR c.last_message_at < v.at)) \
    SELECT c.id FROM conversations AS c JOIN v ON c.id = v.id AND c.tenant_id = v.tenant"
);

/// One known conversation's window moved for an inbound message.
struct Touch<'a> {
    tenant_id: &'a str,
    conversation_id: &'a str,
    inbound_at: i64,
}

/// Moves known conversations' windows for inbound messages (never backwards); returns
/// the conversations that exist (one merged away is missing, and the caller falls back
/// to [`upsert_conversation`]). Each conversation appears once in `touches`.
fn touch_conversations(
    conn: &mut DbConn,
    touches: &[Touch<'_>],
) -> Result<HashSet<String>, StorageError> {
    let mut existing = HashSet::with_capacity(touches.len());
    if touches.is_empty() {
        return Ok(existing);
    }
    match conn {
        DbConn::Sqlite(c) => {
            // A row rewritten with the values it holds is left as it was: SQLite
            // compares an overwritten cell before it dirties the page, so a window that
            // does not move costs no write.
            for t in touches {
                let at = t.inbound_at;
                let moved = TouchOne::with(vec![
                    Bind::BigInt(at),
                    Bind::BigInt(at),
                    Bind::BigInt(at),
                    Bind::BigInt(at),
                    Bind::BigInt(SERVICE_WINDOW_MS),
                    Bind::BigInt(at),
                    Bind::Text(t.conversation_id),
                    Bind::Text(t.tenant_id),
                ])
                .execute(c)?;
                if moved == 1 {
                    existing.insert(t.conversation_id.to_string());
                }
            }
        }
        DbConn::Pg(c) => {
            let rows: Vec<ReturnedId> = TouchManyPg::with(vec![
                Bind::TextArray(touches.iter().map(|t| t.conversation_id).collect()),
                Bind::TextArray(touches.iter().map(|t| t.tenant_id).collect()),
                Bind::BigIntArray(touches.iter().map(|t| t.inbound_at).collect()),
                Bind::BigInt(SERVICE_WINDOW_MS),
            ])
            .load(c)?;
            existing.extend(rows.into_iter().map(|row| row.id));
        }
    }
    Ok(existing)
}

fixed_statement!(
    InsertInboundOne = "INSERT INTO messages \
    (id, tenant_id, conversation_id, contact_id, wamid, direction, msg_type, sent_at, \
     received_at, key_id, content_ct, ref_wamid) \
    VALUES (?, ?, ?, ?, ?, 'inbound', ?, ?, ?, ?, ?, ?) \
    ON CONFLICT (tenant_id, wamid) DO NOTHING"
);

fixed_statement!(
    InsertInboundManyPg = "INSERT INTO messages \
    (id, tenant_id, conversation_id, contact_id, wamid, direction, msg_type, sent_at, \
     received_at, key_id, content_ct, ref_wamid) \
    SELECT i, t, cv, ct, w, 'inbound', ty, s, ?, k, c, r \
    FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], \
                ?::bigint[], ?::text[], ?::bytea[], ?::text[]) \
        AS v (i, t, cv, ct, w, ty, s, k, c, r) \
    ON CONFLICT (tenant_id, wamid) DO NOTHING RETURNING id"
);

/// An inbound message row, with the conversation it goes to.
struct InboundRow<'a> {
    tenant_id: &'a str,
    conversation_id: &'a str,
    message: &'a NewInbound,
}

/// Inserts inbound messages; a redelivered one collides on (tenant, wamid) and changes
/// nothing. Returns the ids of the messages inserted.
fn insert_inbound(
    conn: &mut DbConn,
    rows: &[InboundRow<'_>],
    now_ms: i64,
) -> Result<HashSet<String>, StorageError> {
    let mut inserted = HashSet::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(inserted);
    }
    match conn {
        DbConn::Sqlite(c) => {
            for row in rows {
                let m = row.message;
                let count = InsertInboundOne::with(vec![
                    Bind::Text(m.message_id.as_str()),
                    Bind::Text(row.tenant_id),
                    Bind::Text(row.conversation_id),
                    Bind::Text(m.contact_id.as_str()),
                    Bind::Text(&m.wamid),
                    Bind::Text(&m.msg_type),
                    Bind::BigInt(m.sent_at),
                    Bind::BigInt(now_ms),
                    Bind::Text(m.key_id.as_str()),
                    Bind::Blob(&m.content_ct),
                    Bind::OptText(m.ref_wamid.as_deref()),
                ])
                .execute(c)?;
                if count == 1 {
                    inserted.insert(m.message_id.0.clone());
                }
            }
        }
        DbConn::Pg(c) => {
            let messages = || rows.iter().map(|row| row.message);
            let returned: Vec<ReturnedId> = InsertInboundManyPg::with(vec![
                Bind::BigInt(now_ms),
                Bind::TextArray(messages().map(|m| m.message_id.as_str()).collect()),
                Bind::TextArray(rows.iter().map(|row| row.tenant_id).collect()),
                Bind::TextArray(rows.iter().map(|row| row.conversation_id).collect()),
                Bind::TextArray(messages().map(|m| m.contact_id.as_str()).collect()),
                Bind::TextArray(messages().map(|m| m.wamid.as_str()).collect()),
                Bind::TextArray(messages().map(|m| m.msg_type.as_str()).collect()),
                Bind::BigIntArray(messages().map(|m| m.sent_at).collect()),
                Bind::TextArray(messages().map(|m| m.key_id.as_str()).collect()),
                Bind::BlobArray(messages().map(|m| &m.content_ct[..]).collect()),
                Bind::OptTextArray(messages().map(|m| m.ref_wamid.as_deref()).collect()),
            ])
            .load(c)?;
            inserted.extend(returned.into_iter().map(|row| row.id));
        }
    }
    Ok(inserted)
}

/// An inbound message that collided: rarely a duplicate, sometimes a tombstone (see
/// [`apply`]), which learns what kind of message it stands for, never its content.
fn complete_tombstone(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    m: &NewInbound,
) -> Result<usize, StorageError> {
    let tenant = tenant_id.as_str();
    Ok(on_backend!(conn, c => diesel::update(messages::table
        .filter(messages::tenant_id.eq(tenant))
        .filter(messages::wamid.eq(&m.wamid))
        .filter(messages::msg_type.is_null())
        .filter(messages::revoked_at.is_not_null()))
        .set((messages::msg_type.eq(&m.msg_type), messages::sent_at.eq(m.sent_at)))
        .execute(c))?)
}

/// Applies the ops of several actor jobs, in one transaction; returns, per job, the
/// conversation its inbound messages went to (for the actor to cache) and which of
/// them were stored already.
///
/// Nearly every op is a plain inbound message to a conversation its actor already
/// knows: those take set-based statements, a few for the whole batch. Every other op
/// is applied one by one, in its job's order, after them. That keeps each
/// conversation's order: the plain messages of a conversation are either all in the
/// set (when it exists) or all applied one by one; messages list by their
/// time-ordered ids, not by insertion; and the ops that refer to another message
/// (revokes) come after the messages they refer to.
pub fn apply_batch(
    conn: &mut DbConn,
    jobs: &[(&TenantId, Vec<&ApplyOp>)],
    now_ms: i64,
) -> Result<Vec<JobApplied>, StorageError> {
    // The latest inbound time of each known conversation.
    let mut latest: HashMap<(&str, &str), i64> = HashMap::new();
    for (tenant_id, ops) in jobs {
        for op in ops.iter().copied() {
            if let ApplyOp::Inbound(m) = op {
                if let (Some(conversation), false) = (&m.conversation_id, m.is_revoke) {
                    let at = latest
                        .entry((tenant_id.as_str(), conversation))
                        .or_insert(m.inbound_at);
                    *at = (*at).max(m.inbound_at);
                }
            }
        }
    }
    let touches: Vec<Touch<'_>> = latest
        .iter()
        .map(|((tenant_id, conversation_id), at)| Touch {
            tenant_id,
            conversation_id,
            inbound_at: *at,
        })
        .collect();
    let existing = touch_conversations(conn, &touches)?;
    // The conversation of an op that goes in the set.
    fn in_set<'o>(op: &'o ApplyOp, existing: &HashSet<String>) -> Option<&'o String> {
        match op {
            ApplyOp::Inbound(m) if !m.is_revoke => m
                .conversation_id
                .as_ref()
                .filter(|id| existing.contains(*id)),
            _ => None,
        }
    }
    let rows: Vec<InboundRow<'_>> = jobs
        .iter()
        .flat_map(|(tenant_id, ops)| ops.iter().map(move |op| (tenant_id, *op)))
        .filter_map(|(tenant_id, op)| match (op, in_set(op, &existing)) {
            (ApplyOp::Inbound(message), Some(conversation_id)) => Some(InboundRow {
                tenant_id: tenant_id.as_str(),
                conversation_id,
                message,
            }),
            _ => None,
        })
        .collect();
    let inserted = insert_inbound(conn, &rows, now_ms)?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    for (tenant_id, ops) in jobs {
        let mut outcome = JobApplied {
            conversation: None,
            redelivered: Vec::with_capacity(ops.len()),
        };
        for op in ops.iter().copied() {
            let applied = match (op, in_set(op, &existing)) {
                (ApplyOp::Inbound(m), Some(conversation_id)) => {
                    let redelivered = !inserted.contains(m.message_id.as_str())
                        && complete_tombstone(conn, tenant_id, m)? == 0;
                    Applied {
                        conversation: Some(conversation_id.clone()),
                        redelivered,
                    }
                }
                _ => apply(conn, tenant_id, op, now_ms)?,
            };
            if applied.conversation.is_some() {
                outcome.conversation = applied.conversation;
            }
            outcome.redelivered.push(applied.redelivered);
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// What applying one job's ops did.
#[derive(Debug, Default)]
pub struct JobApplied {
    /// The conversation its inbound messages went to, for the actor to cache.
    pub conversation: Option<String>,
    /// Per op: an inbound message that was stored already (a redelivery).
    pub redelivered: Vec<bool>,
}

/// What applying one op did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The conversation an inbound message went to.
    pub conversation: Option<String>,
    /// An inbound message that was stored already.
    pub redelivered: bool,
}

/// Applies one op; idempotent, so a redelivered or re-dispatched event changes nothing.
/// The op's inbox row is marked processed (or inserted) by the caller, in the same
/// transaction ([`ApplyOp::origin`]).
pub fn apply(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    op: &ApplyOp,
    now_ms: i64,
) -> Result<Applied, StorageError> {
    let tenant = tenant_id.as_str();
    match op {
        ApplyOp::Inbound(m) => {
            let known = match &m.conversation_id {
                Some(id) => {
                    let touch = Touch {
                        tenant_id: tenant,
                        conversation_id: id,
                        inbound_at: m.inbound_at,
                    };
                    touch_conversations(conn, &[touch])?.into_iter().next()
                }
                None => None,
            };
            let conversation_id = match known {
                Some(id) => id,
                None => upsert_conversation(
                    conn,
                    tenant_id,
                    &m.phone_number_id,
                    &m.contact_id,
                    Some(m.inbound_at),
                    now_ms,
                )?,
            };
            // A redelivered message collides on (tenant, wamid) and changes nothing; so
            // does a message its sender deleted before we saw it, whose tombstone (see
            // below) holds the place without content.
            let row = InboundRow {
                tenant_id: tenant,
                conversation_id: &conversation_id,
                message: m,
            };
            let inserted = insert_inbound(conn, &[row], now_ms)?.len();
            let redelivered = inserted == 0 && complete_tombstone(conn, tenant_id, m)? == 0;
            if let (1, true, Some(original)) = (inserted, m.is_revoke, &m.ref_wamid) {
                let none: Option<Vec<u8>> = None;
                let erased = on_backend!(conn, c => diesel::update(messages::table
                    .filter(messages::tenant_id.eq(tenant))
                    .filter(messages::wamid.eq(original)))
                    .set((messages::content_ct.eq(&none), messages::revoked_at.eq(Some(m.sent_at))))
                    .execute(c))?;
                if erased == 0 {
                    // Deleted before we saw it: a tombstone keeps the fact and makes the
                    // late original collide instead of storing its content.
                    on_backend!(conn, c => diesel::insert_into(messages::table)
                        .values((
                            messages::id.eq(MessageId::generate().as_str()),
                            messages::tenant_id.eq(tenant),
                            messages::conversation_id.eq(&conversation_id),
                            messages::contact_id.eq(m.contact_id.as_str()),
                            messages::wamid.eq(original),
                            messages::direction.eq("inbound"),
                            messages::sent_at.eq(m.sent_at),
                            messages::received_at.eq(now_ms),
                            messages::revoked_at.eq(Some(m.sent_at)),
                        ))
                        .on_conflict((messages::tenant_id, messages::wamid))
                        .do_nothing()
                        .execute(c))?;
                }
            }
            Ok(Applied {
                conversation: Some(conversation_id),
                redelivered,
            })
        }
        ApplyOp::Status(s) => {
            let found: Option<(String, Option<String>)> = on_backend!(conn, c => messages::table
                .filter(messages::tenant_id.eq(tenant))
                .filter(messages::wamid.eq(&s.wamid))
                .select((messages::id, messages::status))
                .first(c)
                .optional())?;
            let (message_id, current) = match found {
                Some(found) => found,
                None => {
                    // A status can arrive before (or without) the message it is about:
                    // keep an outbound record so the state is not lost.
                    let conversation_id = upsert_conversation(
                        conn,
                        tenant_id,
                        &s.phone_number_id,
                        &s.contact_id,
                        None,
                        now_ms,
                    )?;
                    let id = MessageId::generate().0;
                    on_backend!(conn, c => diesel::insert_into(messages::table)
                        .values((
                            messages::id.eq(&id),
                            messages::tenant_id.eq(tenant),
                            messages::conversation_id.eq(&conversation_id),
                            messages::contact_id.eq(s.contact_id.as_str()),
                            messages::wamid.eq(&s.wamid),
                            messages::direction.eq("outbound"),
                            messages::sent_at.eq(s.occurred_at),
                            messages::received_at.eq(now_ms),
                        ))
                        .execute(c))?;
                    (id, None)
                }
            };
            if let Some(next) = next_status(current.as_deref(), &s.status) {
                let error = if next == "failed" {
                    s.error_json.as_deref()
                } else {
                    None
                };
                on_backend!(conn, c => diesel::update(messages::table.find(&message_id))
                    .set((
                        messages::status.eq(&next),
                        messages::status_at.eq(s.occurred_at),
                        messages::error_json.eq(error),
                    ))
                    .execute(c))?;
            }
            let event_id = uuid::Uuid::now_v7().to_string();
            on_backend!(conn, c => diesel::insert_into(status_events::table)
                .values((
                    status_events::id.eq(&event_id),
                    status_events::tenant_id.eq(tenant),
                    status_events::message_id.eq(&message_id),
                    status_events::status.eq(&s.status),
                    status_events::occurred_at.eq(s.occurred_at),
                    status_events::detail_json.eq(s.detail_json.as_deref()),
                ))
                .on_conflict((status_events::message_id, status_events::status, status_events::occurred_at))
                .do_nothing()
                .execute(c))?;
            Ok(Applied::default())
        }
        ApplyOp::Preference(p) => {
            if let Some(opt_out) = p.marketing_opt_out {
                on_backend!(conn, c => diesel::update(contacts::table
                    .filter(contacts::id.eq(p.contact_id.as_str()))
                    .filter(contacts::tenant_id.eq(tenant))
                    .filter(contacts::marketing_pref_at.is_null()
                        .or(contacts::marketing_pref_at.le(p.occurred_at))))
                    .set((
                        contacts::marketing_opt_out.eq(opt_out),
                        contacts::marketing_pref_at.eq(p.occurred_at),
                    ))
                    .execute(c))?;
            }
            Ok(Applied::default())
        }
        ApplyOp::Profile(p) => {
            // One statement: the writer's clock only moves forward, so `seen_at` is the
            // latest sighting.
            let id = p.contact_id.as_str();
            match (&p.profile_name_ct, &p.username_ct) {
                (None, None) => on_backend!(conn, c => diesel::update(contacts::table.find(id))
                    .set(contacts::last_seen_at.eq(p.seen_at))
                    .execute(c))?,
                (Some(name), None) => {
                    on_backend!(conn, c => diesel::update(contacts::table.find(id))
                    .set((contacts::last_seen_at.eq(p.seen_at), contacts::profile_name_ct.eq(name)))
                    .execute(c))?
                }
                (None, Some(username)) => {
                    on_backend!(conn, c => diesel::update(contacts::table.find(id))
                    .set((contacts::last_seen_at.eq(p.seen_at), contacts::username_ct.eq(username)))
                    .execute(c))?
                }
                (Some(name), Some(username)) => {
                    on_backend!(conn, c => diesel::update(contacts::table.find(id))
                    .set((
                        contacts::last_seen_at.eq(p.seen_at),
                        contacts::profile_name_ct.eq(name),
                        contacts::username_ct.eq(username),
                    ))
                    .execute(c))?
                }
            };
            Ok(Applied::default())
        }
        ApplyOp::Done { .. } => Ok(Applied::default()),
    }
}

// ---------------------------------------------------------------------------------
// Reads for the tenant API

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContactView {
    pub id: String,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub profile_name: Option<String>,
    pub marketing_opt_out: bool,
    pub first_seen_at: String,
    pub last_seen_at: String,
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
);

pub fn list_contacts(
    conn: &mut DbConn,
    keyring: &Keyring,
    tenant_id: &TenantId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ContactView>, StorageError> {
    let rows: Vec<ContactRow> = on_backend!(conn, c => {
        let mut query = contacts::table
            .filter(contacts::tenant_id.eq(tenant_id.as_str()))
            .select((contacts::id, contacts::key_id, contacts::wa_id_ct, contacts::user_id_ct,
                     contacts::username_ct, contacts::profile_name_ct, contacts::marketing_opt_out,
                     contacts::first_seen_at, contacts::last_seen_at))
            .order(contacts::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(contacts::id.gt(after));
        }
        query.load(c)
    })?;
    let mut keys = HashMap::new();
    load_keys(conn, keyring, rows.iter().map(|r| r.1.as_str()), &mut keys)?;
    rows.into_iter()
        .map(
            |(id, key_id, wa, user, username, name, opt_out, first, last)| {
                let key = keys.get(&key_id).and_then(Option::as_ref);
                let open = |ct: Option<Vec<u8>>| -> Option<String> {
                    let (key, ct) = (key?, ct?);
                    key.open_string(&ct, id.as_bytes()).ok()
                };
                Ok(ContactView {
                    wa_id: open(wa),
                    user_id: open(user),
                    username: open(username),
                    profile_name: open(name),
                    marketing_opt_out: opt_out,
                    first_seen_at: rfc3339(first),
                    last_seen_at: rfc3339(last),
                    id,
                })
            },
        )
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConversationView {
    pub id: String,
    pub contact_id: String,
    pub phone_number_id: String,
    pub opened_at: String,
    pub last_inbound_at: Option<String>,
    pub window_ends_at: Option<String>,
    pub last_message_at: String,
}

type ConversationRow = (String, String, String, i64, Option<i64>, Option<i64>, i64);

fn conversation_view(row: ConversationRow) -> ConversationView {
    let (id, contact_id, phone_number_id, opened, last_inbound, window, last_message) = row;
    ConversationView {
        id,
        contact_id,
        phone_number_id,
        opened_at: rfc3339(opened),
        last_inbound_at: last_inbound.map(rfc3339),
        window_ends_at: window.map(rfc3339),
        last_message_at: rfc3339(last_message),
    }
}

pub fn list_conversations(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ConversationView>, StorageError> {
    let rows: Vec<ConversationRow> = on_backend!(conn, c => {
        let mut query = conversations::table
            .filter(conversations::tenant_id.eq(tenant_id.as_str()))
            .select((conversations::id, conversations::contact_id, conversations::phone_number_id,
                     conversations::opened_at, conversations::last_inbound_at,
                     conversations::window_ends_at, conversations::last_message_at))
            .order(conversations::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(conversations::id.gt(after));
        }
        query.load(c)
    })?;
    Ok(rows.into_iter().map(conversation_view).collect())
}

/// Whether the conversation exists for this tenant (another tenant's is "not found").
pub fn conversation_exists(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    conversation_id: &str,
) -> Result<bool, StorageError> {
    let n: i64 = on_backend!(conn, c => conversations::table
        .filter(conversations::tenant_id.eq(tenant_id.as_str()))
        .filter(conversations::id.eq(conversation_id))
        .count()
        .get_result(c))?;
    Ok(n > 0)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageView {
    pub id: String,
    pub wamid: String,
    pub direction: String,
    #[serde(rename = "type")]
    pub msg_type: Option<String>,
    pub timestamp: String,
    pub status: Option<String>,
    pub content: Option<Value>,
    pub context: Option<Value>,
    pub referral: Option<Value>,
    pub errors: Option<Value>,
    pub error: Option<Value>,
    pub revoked: bool,
}

type MessageRow = (
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
);

/// SQLite: a conversation's messages after a cursor, from the conversation index and
/// the unindexed tail in one statement (one snapshot: a bulk that moves messages from
/// the tail into the index between two statements would otherwise show them twice or
/// not at all). UNION, not UNION ALL: a bulk's slices are indexed before its mark
/// moves, so a message can be in both parts. ?1 conversation, ?2 cursor, ?3 limit,
/// ?4 tenant.
const LIST_MESSAGES_SQLITE: &str = "\
    SELECT id, wamid, direction, msg_type, sent_at, status, key_id, content_ct, error_json, revoked_at \
    FROM (SELECT m.id, m.wamid, m.direction, m.msg_type, m.sent_at, m.status, m.key_id, \
                 m.content_ct, m.error_json, m.revoked_at \
          FROM conversation_messages AS cm JOIN messages AS m ON m.id = cm.message_id \
          WHERE cm.conversation_id = ?1 AND cm.message_id > ?2 AND m.tenant_id = ?4 \
          ORDER BY cm.message_id LIMIT ?3) \
    UNION \
    SELECT id, wamid, direction, msg_type, sent_at, status, key_id, content_ct, error_json, revoked_at \
    FROM messages \
    WHERE rowid > (SELECT indexed_through FROM conversation_index_state) \
      AND conversation_id = ?1 AND id > ?2 AND tenant_id = ?4 \
    ORDER BY id LIMIT ?3";

#[derive(QueryableByName)]
struct ListedMessage {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    wamid: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    direction: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    msg_type: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    sent_at: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    status: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    key_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    content_ct: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    error_json: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    revoked_at: Option<i64>,
}

impl ListedMessage {
    fn into_row(self) -> MessageRow {
        (
            self.id,
            self.wamid,
            self.direction,
            self.msg_type,
            self.sent_at,
            self.status,
            self.key_id,
            self.content_ct,
            self.error_json,
            self.revoked_at,
        )
    }
}

pub fn list_messages(
    conn: &mut DbConn,
    keyring: &Keyring,
    tenant_id: &TenantId,
    conversation_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<MessageView>, StorageError> {
    let rows: Vec<MessageRow> = match conn {
        DbConn::Sqlite(c) => {
            use diesel::sql_types::{BigInt, Text};
            diesel::sql_query(LIST_MESSAGES_SQLITE)
                .bind::<Text, _>(conversation_id)
                .bind::<Text, _>(after.unwrap_or(""))
                .bind::<BigInt, _>(limit)
                .bind::<Text, _>(tenant_id.as_str())
                .load::<ListedMessage>(c)?
                .into_iter()
                .map(ListedMessage::into_row)
                .collect()
        }
        DbConn::Pg(c) => {
            let mut query = messages::table
                .filter(messages::tenant_id.eq(tenant_id.as_str()))
                .filter(messages::conversation_id.eq(conversation_id))
                .select((
                    messages::id,
                    messages::wamid,
                    messages::direction,
                    messages::msg_type,
                    messages::sent_at,
                    messages::status,
                    messages::key_id,
                    messages::content_ct,
                    messages::error_json,
                    messages::revoked_at,
                ))
                .order(messages::id.asc())
                .limit(limit)
                .into_boxed();
            if let Some(after) = after {
                query = query.filter(messages::id.gt(after));
            }
            query.load(c)?
        }
    };
    let mut keys = HashMap::new();
    load_keys(
        conn,
        keyring,
        rows.iter().filter_map(|r| r.6.as_deref()),
        &mut keys,
    )?;
    rows.into_iter()
        .map(
            |(
                id,
                wamid,
                direction,
                msg_type,
                sent_at,
                status,
                key_id,
                content_ct,
                error_json,
                revoked_at,
            )| {
                let bundle: Option<MessageBundle> = match (
                    key_id.and_then(|k| keys.get(&k).cloned().flatten()),
                    content_ct,
                ) {
                    (Some(key), Some(ct)) => {
                        let plain = key.open(&ct, id.as_bytes())?;
                        Some(
                            serde_json::from_slice(&plain)
                                .map_err(|e| StorageError::Corrupt(format!("message {id}: {e}")))?,
                        )
                    }
                    _ => None,
                };
                let error = error_json.and_then(|e| serde_json::from_str(&e).ok());
                let bundle = bundle.unwrap_or_default();
                let has_content = !bundle.content.is_null();
                Ok(MessageView {
                    id,
                    wamid,
                    direction,
                    msg_type,
                    timestamp: rfc3339(sent_at),
                    status,
                    content: has_content.then_some(bundle.content),
                    context: bundle.context,
                    referral: bundle.referral,
                    errors: bundle.errors,
                    error,
                    revoked: revoked_at.is_some(),
                })
            },
        )
        .collect()
}

/// Statuses recorded for a message (by wamid), oldest first; for tests and operators.
pub fn status_history(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    wamid: &str,
) -> Result<Vec<(String, i64)>, StorageError> {
    Ok(on_backend!(conn, c => status_events::table
        .inner_join(messages::table.on(messages::id.eq(status_events::message_id)))
        .filter(messages::tenant_id.eq(tenant_id.as_str()))
        .filter(messages::wamid.eq(wamid))
        .select((status_events::status, status_events::occurred_at))
        .order(status_events::occurred_at.asc())
        .load(c))?)
}

/// Total stored messages of a tenant.
pub fn count_messages(conn: &mut DbConn, tenant_id: &TenantId) -> Result<i64, StorageError> {
    Ok(on_backend!(conn, c => messages::table
        .filter(messages::tenant_id.eq(tenant_id.as_str()))
        .count()
        .get_result(c))?)
}

#[cfg(test)]
mod tests {
    use super::next_status;

    #[test]
    fn statuses_only_move_forward() {
        assert_eq!(next_status(None, "sent").as_deref(), Some("sent"));
        assert_eq!(next_status(Some("sent"), "read").as_deref(), Some("read"));
        assert_eq!(next_status(Some("read"), "delivered"), None);
        assert_eq!(
            next_status(Some("read"), "played").as_deref(),
            Some("played")
        );
        assert_eq!(
            next_status(Some("sent"), "failed").as_deref(),
            Some("failed")
        );
        assert_eq!(next_status(Some("delivered"), "failed"), None);
        assert_eq!(next_status(Some("failed"), "read"), None);
        assert_eq!(next_status(Some("sent"), "deleted"), None);
    }
}
