//! The writer's resolve: a contact found, created, linked to the identifier it
//! lacked, or merged with another that turns out to be the same person.

use diesel::prelude::*;

use super::lookup::{find_contacts, ContactKeys};
use super::{contact_field, insert_contacts, ContactIdentifiers, NewContact, ResolvedContact};
use crate::crypto::NewDataKey;
use crate::ids::{ContactId, ConversationId, KeyId, TenantId};
use crate::storage::contact_crm::{merge_records, open_record, store_record};
use crate::storage::conversations::join_conversation_times;
use crate::storage::key_store::Vault;
use crate::storage::keys::{insert_data_key, load_data_key};
use crate::storage::messages::move_conversation_messages;
use crate::storage::on_backend;
use crate::storage::schema::{
    automation_runs, contacts, conversations, outbox, portfolio_reach, privacy_requests,
};
use crate::storage::{DbConn, StorageError};

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
    // The identifiers the contact learns now: a restriction or objection waiting for
    // either applies from now on, as it would to a contact created with it.
    let mut linked: [Option<&str>; 2] = [None, None];
    if survivor.user_id_bidx.is_none() {
        if let (Some(bidx), Some(value)) = (&user_bidx, &ids.user_id) {
            linked[1] = Some(bidx.as_str());
            let place = contact_field(tenant, "user_id_ct", &survivor.id);
            let ct = key.seal(value.as_bytes(), &place)?;
            on_backend!(conn, c => diesel::update(contacts::table.find(&survivor.id))
                .set((contacts::user_id_bidx.eq(bidx), contacts::user_id_ct.eq(&ct)))
                .execute(c))?;
        }
    }
    if survivor.wa_id_bidx.is_none() {
        if let (Some(bidx), Some(value)) = (&wa_bidx, &ids.wa_id) {
            linked[0] = Some(bidx.as_str());
            let place = contact_field(tenant, "wa_id_ct", &survivor.id);
            let ct = key.seal(value.as_bytes(), &place)?;
            on_backend!(conn, c => diesel::update(contacts::table.find(&survivor.id))
                .set((contacts::wa_id_bidx.eq(bidx), contacts::wa_id_ct.eq(&ct)))
                .execute(c))?;
        }
    }
    let contact_id = ContactId(survivor.id);
    if linked.iter().any(Option::is_some) && crate::storage::privacy::pending_subjects_may_wait() {
        crate::storage::privacy::apply_pending_subjects(
            conn,
            tenant_id,
            &[(&contact_id, linked)],
            now_ms,
        )?;
    }
    Ok(ResolvedContact {
        contact_id,
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
    restricted_at: Option<i64>,
    objected_at: Option<i64>,
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
            contacts::restricted_at,
            contacts::objected_at,
        ))
        .get_result::<ContactDetails>(c))?)
}

/// The earlier of two instants either of which may be absent.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Two contacts that turn out to be one person (a BSUID and a phone number first seen
/// apart) become one. The older contact survives, so the id a business saw first stays
/// valid; the other one's conversations and messages move to it (a conversation on a
/// number both had is joined into the survivor's, its window and times combined), its
/// profile fills what the survivor lacks (sealed again under the survivor's key), the
/// later marketing preference holds, a restriction or objection of either holds the
/// survivor, and its row is deleted. Its data key stays in the
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
        let moved = ConversationId(conversation_id.clone());
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
                let target = ConversationId(target);
                move_conversation_messages(conn, &moved, &target, &ContactId(into.to_string()))?;
                on_backend!(conn, c => diesel::delete(conversations::table.find(&conversation_id))
                    .execute(c))?;
            }
            None => {
                on_backend!(conn, c => diesel::update(conversations::table.find(&conversation_id))
                    .set(conversations::contact_id.eq(into))
                    .execute(c))?;
                move_conversation_messages(conn, &moved, &moved, &ContactId(into.to_string()))?;
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
    // The data-subject requests that named it name the contact it became.
    on_backend!(conn, c => diesel::update(privacy_requests::table
        .filter(privacy_requests::contact_id.eq(from)))
        .set(privacy_requests::contact_id.eq(into))
        .execute(c))?;
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
            // A restriction or objection of either holds the one person, from the
            // earlier (their requests move to the survivor with the merge).
            contacts::restricted_at.eq(earliest(kept.restricted_at, gone.restricted_at)),
            contacts::objected_at.eq(earliest(kept.objected_at, gone.objected_at)),
        ))
        .execute(c))?;
    Ok((survivor, removed.id))
}
