//! Tenants, their API keys (stored hashed) and their WhatsApp business phone numbers
//! (access tokens stored encrypted).

use diesel::prelude::*;
use serde::Serialize;

use super::key_store::Vault;
use super::on_backend;
use super::schema::{api_keys, phone_numbers, tenants};
use super::{inbox, DbConn, StorageError};
use crate::crypto::{self, Place};
use crate::ids::{PhoneNumberId, TenantId};
use crate::rules::Conflict;

#[derive(Debug, Clone, Serialize, Queryable)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub holder_email: String,
    pub created_at: i64,
    /// When the account was closed; its data goes from `purge_after` on.
    pub closed_at: Option<i64>,
    pub purge_after: Option<i64>,
}

/// The columns of a [`Tenant`].
type TenantColumns = (
    tenants::id,
    tenants::name,
    tenants::holder_email,
    tenants::created_at,
    tenants::closed_at,
    tenants::purge_after,
);
const TENANT_COLUMNS: TenantColumns = (
    tenants::id,
    tenants::name,
    tenants::holder_email,
    tenants::created_at,
    tenants::closed_at,
    tenants::purge_after,
);

/// Where a number's sealed access token lives.
pub fn access_token_place<'a>(tenant_id: &'a str, phone_number_id: &'a str) -> Place<'a> {
    Place::new(
        tenant_id,
        "phone_numbers",
        "access_token_ct",
        phone_number_id,
    )
}

/// A tenant just created, with its API key shown this once.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedTenant {
    pub tenant_id: String,
    pub api_key: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Queryable)]
pub struct PhoneNumber {
    pub phone_number_id: String,
    pub tenant_id: String,
    pub display_phone_number: String,
    pub waba_id: String,
    pub created_at: i64,
}

/// A number just registered, and how many updates Meta had sent for it before, stored
/// as unrouted, went to its tenant's inbox.
#[derive(Debug, Serialize)]
pub struct RegisteredNumber {
    #[serde(flatten)]
    pub number: PhoneNumber,
    pub adopted_updates: usize,
}

pub struct NewPhoneNumber<'a> {
    pub tenant_id: &'a str,
    pub phone_number_id: &'a str,
    pub display_phone_number: &'a str,
    pub waba_id: &'a str,
    pub access_token: &'a str,
}

fn validate_email(email: &str) -> Result<(), StorageError> {
    let ok = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(StorageError::Validation {
            field: "holder_email",
            rule: crate::rules::Rule::Format,
            message: format!("{email:?} is not an email address"),
        })
    }
}

pub fn create_tenant(
    conn: &mut DbConn,
    name: &str,
    holder_email: &str,
    now_ms: i64,
) -> Result<CreatedTenant, StorageError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(StorageError::Validation {
            field: "name",
            rule: crate::rules::Rule::Required,
            message: "the tenant name must not be empty".into(),
        });
    }
    validate_email(holder_email)?;
    let tenant_id = TenantId::generate();
    let key = crypto::new_api_key()?;
    super::write_transaction(conn, |conn| {
        let taken: i64 = on_backend!(conn, c => tenants::table
            .filter(tenants::name.eq(name))
            .count()
            .get_result(c))?;
        if taken > 0 {
            return Err(StorageError::Conflict {
                code: Conflict::TenantNameTaken,
                message: format!("a tenant named {name:?} already exists"),
            });
        }
        on_backend!(conn, c => diesel::insert_into(tenants::table)
            .values((
                tenants::id.eq(tenant_id.as_str()),
                tenants::name.eq(name),
                tenants::holder_email.eq(holder_email),
                tenants::created_at.eq(now_ms),
            ))
            .execute(c))?;
        insert_api_key(conn, &tenant_id, &key, now_ms)?;
        Ok(())
    })?;
    Ok(CreatedTenant {
        tenant_id: tenant_id.0,
        api_key: key.secret,
        name: name.to_string(),
    })
}

fn insert_api_key(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    key: &crypto::NewApiKey,
    now_ms: i64,
) -> Result<(), StorageError> {
    let id = uuid::Uuid::now_v7().to_string();
    on_backend!(conn, c => diesel::insert_into(api_keys::table)
        .values((
            api_keys::id.eq(&id),
            api_keys::tenant_id.eq(tenant_id.as_str()),
            api_keys::key_hash.eq(&key.hash),
            api_keys::prefix.eq(&key.prefix),
            api_keys::created_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(())
}

/// Issues another API key for a tenant (the old ones stay valid until revoked).
pub fn create_api_key(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    now_ms: i64,
) -> Result<String, StorageError> {
    let key = crypto::new_api_key()?;
    super::write_transaction(conn, |conn| {
        get_tenant(conn, tenant_id)?;
        insert_api_key(conn, tenant_id, &key, now_ms)
    })?;
    Ok(key.secret)
}

pub fn get_tenant(conn: &mut DbConn, tenant_id: &TenantId) -> Result<Tenant, StorageError> {
    on_backend!(conn, c => tenants::table
        .find(tenant_id.as_str())
        .select(TENANT_COLUMNS)
        .get_result::<Tenant>(c)
        .optional())?
    .ok_or(StorageError::NotFound)
}

pub fn list_tenants(conn: &mut DbConn) -> Result<Vec<Tenant>, StorageError> {
    Ok(on_backend!(conn, c => tenants::table
        .select(TENANT_COLUMNS)
        .order(tenants::id.asc())
        .load::<Tenant>(c))?)
}

/// The tenant an API key belongs to, if it is valid and not revoked.
pub fn tenant_for_api_key(
    conn: &mut DbConn,
    secret: &str,
) -> Result<Option<TenantId>, StorageError> {
    let hash = crypto::hash_api_key(secret);
    let found: Option<String> = on_backend!(conn, c => api_keys::table
        .filter(api_keys::key_hash.eq(&hash))
        .filter(api_keys::revoked_at.is_null())
        .select(api_keys::tenant_id)
        .get_result::<String>(c)
        .optional())?;
    Ok(found.map(TenantId))
}

/// Registers a business phone number for a tenant (its access token sealed), and gives
/// the tenant what Meta sent for the number before it was registered.
pub fn add_phone_number(
    conn: &mut DbConn,
    keyring: &Vault,
    number: &NewPhoneNumber<'_>,
    now_ms: i64,
) -> Result<RegisteredNumber, StorageError> {
    for (field, value) in [
        ("phone_number_id", number.phone_number_id),
        ("display_phone_number", number.display_phone_number),
        ("waba_id", number.waba_id),
        ("access_token", number.access_token),
    ] {
        if value.trim().is_empty() {
            return Err(StorageError::Validation {
                field,
                rule: crate::rules::Rule::Required,
                message: format!("{field} must not be empty"),
            });
        }
    }
    let tenant_id = TenantId(number.tenant_id.to_string());
    super::write_transaction(conn, |conn| {
        get_tenant(conn, &tenant_id).map_err(|e| match e {
            StorageError::NotFound => StorageError::Validation {
                field: "tenant",
                rule: crate::rules::Rule::Unknown,
                message: format!("no tenant with id {}", number.tenant_id),
            },
            other => other,
        })?;
        let owner: Option<String> = on_backend!(conn, c => phone_numbers::table
            .find(number.phone_number_id)
            .select(phone_numbers::tenant_id)
            .get_result::<String>(c)
            .optional())?;
        if let Some(owner) = owner {
            let whose = if owner == number.tenant_id {
                "this tenant"
            } else {
                "another tenant"
            };
            return Err(StorageError::Conflict {
                code: Conflict::NumberRegistered,
                message: format!(
                    "phone number id {} is already registered to {whose}",
                    number.phone_number_id
                ),
            });
        }
        let token_ct = keyring.secrets().seal(
            number.access_token.as_bytes(),
            &access_token_place(number.tenant_id, number.phone_number_id),
        )?;
        on_backend!(conn, c => diesel::insert_into(phone_numbers::table)
            .values((
                phone_numbers::phone_number_id.eq(number.phone_number_id),
                phone_numbers::tenant_id.eq(number.tenant_id),
                phone_numbers::display_phone_number.eq(number.display_phone_number),
                phone_numbers::waba_id.eq(number.waba_id),
                phone_numbers::access_token_ct.eq(&token_ct),
                phone_numbers::created_at.eq(now_ms),
            ))
            .execute(c))?;
        // Meta may have sent updates for the number before it was registered here:
        // they were stored as unrouted and acknowledged, so Meta will not send them
        // again. The new owner gets them.
        let adopted_updates =
            inbox::adopt_unrouted(conn, keyring, &tenant_id, number.phone_number_id)?;
        Ok(RegisteredNumber {
            number: PhoneNumber {
                phone_number_id: number.phone_number_id.to_string(),
                tenant_id: number.tenant_id.to_string(),
                display_phone_number: number.display_phone_number.to_string(),
                waba_id: number.waba_id.to_string(),
                created_at: now_ms,
            },
            adopted_updates,
        })
    })
}

pub fn list_phone_numbers(
    conn: &mut DbConn,
    tenant: Option<&TenantId>,
) -> Result<Vec<PhoneNumber>, StorageError> {
    let columns = (
        phone_numbers::phone_number_id,
        phone_numbers::tenant_id,
        phone_numbers::display_phone_number,
        phone_numbers::waba_id,
        phone_numbers::created_at,
    );
    Ok(on_backend!(conn, c => {
        let mut query = phone_numbers::table.select(columns).into_boxed();
        if let Some(tenant) = tenant {
            query = query.filter(phone_numbers::tenant_id.eq(tenant.as_str()));
        }
        query.order(phone_numbers::phone_number_id.asc()).load::<PhoneNumber>(c)
    })?)
}

/// The tenant owning each of `phone_number_ids` (those no tenant owns are absent).
pub fn owners_of_numbers(
    conn: &mut DbConn,
    phone_number_ids: &[&str],
) -> Result<Vec<(String, String)>, StorageError> {
    Ok(on_backend!(conn, c => phone_numbers::table
        .filter(phone_numbers::phone_number_id.eq_any(phone_number_ids))
        .select((phone_numbers::phone_number_id, phone_numbers::tenant_id))
        .load::<(String, String)>(c))?)
}

/// A number as its sender needs it: its tenant and its access token, opened.
pub struct SendingNumber {
    pub tenant_id: TenantId,
    pub waba_id: String,
    pub access_token: String,
    /// Messages a second Meta allows it, when Meta said (else the configured default).
    pub throughput_mps: Option<i32>,
    /// When its sender paused for its token or account (until the number is updated).
    pub paused_at: Option<i64>,
    /// Meta's spam limit: nothing goes before this time.
    pub held_until: Option<i64>,
}

/// Records that the sender of `phone_number_id` paused at `paused_at` (`None`: it
/// goes on).
pub fn set_number_paused(
    conn: &mut DbConn,
    phone_number_id: &PhoneNumberId,
    paused_at: Option<i64>,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(phone_numbers::table.find(phone_number_id.as_str()))
        .set(phone_numbers::paused_at.eq(paused_at))
        .execute(c))?;
    Ok(())
}

/// Records that nothing leaves `phone_number_id` before `held_until`.
pub fn set_number_held(
    conn: &mut DbConn,
    phone_number_id: &PhoneNumberId,
    held_until: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::update(phone_numbers::table.find(phone_number_id.as_str()))
        .set(phone_numbers::held_until.eq(Some(held_until)))
        .execute(c))?;
    Ok(())
}

/// The tenant and opened access token of `phone_number_id`; `None` when no tenant
/// has registered it.
pub fn sending_number(
    conn: &mut DbConn,
    keyring: &crypto::Keyring,
    phone_number_id: &PhoneNumberId,
) -> Result<Option<SendingNumber>, StorageError> {
    type Row = (
        String,
        String,
        Vec<u8>,
        Option<i32>,
        Option<i64>,
        Option<i64>,
    );
    let row: Option<Row> = on_backend!(conn, c => phone_numbers::table
        .find(phone_number_id.as_str())
        .select((phone_numbers::tenant_id, phone_numbers::waba_id, phone_numbers::access_token_ct,
                 phone_numbers::throughput_mps, phone_numbers::paused_at, phone_numbers::held_until))
        .get_result(c)
        .optional())?;
    let Some((tenant_id, waba_id, token_ct, throughput_mps, paused_at, held_until)) = row else {
        return Ok(None);
    };
    let access_token = keyring.secrets().open_string(
        &token_ct,
        &access_token_place(&tenant_id, phone_number_id.as_str()),
    )?;
    Ok(Some(SendingNumber {
        tenant_id: TenantId(tenant_id),
        waba_id,
        access_token,
        throughput_mps,
        paused_at,
        held_until,
    }))
}

/// Meta's throughput for the number of account `waba_id` shown as
/// `display_phone_number` (compared by its digits: Meta sends `15550783881`, an
/// operator may have written `+1 555 078 3881`); the ids of the numbers changed.
pub fn set_throughput(
    conn: &mut DbConn,
    waba_id: &str,
    display_phone_number: &str,
    mps: i32,
) -> Result<Vec<String>, StorageError> {
    let digits = |shown: &str| -> String { shown.chars().filter(char::is_ascii_digit).collect() };
    let wanted = digits(display_phone_number);
    let numbers: Vec<(String, String)> = on_backend!(conn, c => phone_numbers::table
        .filter(phone_numbers::waba_id.eq(waba_id))
        .select((phone_numbers::phone_number_id, phone_numbers::display_phone_number))
        .load(c))?;
    let ids: Vec<String> = numbers
        .into_iter()
        .filter(|(_, shown)| !wanted.is_empty() && digits(shown) == wanted)
        .map(|(id, _)| id)
        .collect();
    if !ids.is_empty() {
        on_backend!(conn, c => diesel::update(phone_numbers::table
                .filter(phone_numbers::phone_number_id.eq_any(&ids)))
            .set(phone_numbers::throughput_mps.eq(mps))
            .execute(c))?;
    }
    Ok(ids)
}

/// Whether `phone_number_id` is registered to `tenant_id`.
pub fn owns_number(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    phone_number_id: &PhoneNumberId,
) -> Result<bool, StorageError> {
    let found: Option<String> = on_backend!(conn, c => phone_numbers::table
        .find(phone_number_id.as_str())
        .filter(phone_numbers::tenant_id.eq(tenant_id.as_str()))
        .select(phone_numbers::phone_number_id)
        .get_result(c)
        .optional())?;
    Ok(found.is_some())
}

/// Replaces the access token of `phone_number_id` of `tenant_id` (sealed as when the
/// number was added). The running daemon's sender reads it at its next look at the
/// outbox; a sender paused for its token resumes with it.
pub fn replace_access_token(
    conn: &mut DbConn,
    keyring: &Vault,
    tenant_id: &str,
    phone_number_id: &str,
    access_token: &str,
) -> Result<(), StorageError> {
    if access_token.trim().is_empty() {
        return Err(StorageError::Validation {
            field: "access_token",
            rule: crate::rules::Rule::Required,
            message: "the access token file is empty".into(),
        });
    }
    let token_ct = keyring.secrets().seal(
        access_token.trim().as_bytes(),
        &access_token_place(tenant_id, phone_number_id),
    )?;
    // Updating the number resumes its sender: the operator dealt with what paused it.
    let updated = on_backend!(conn, c => diesel::update(phone_numbers::table
            .find(phone_number_id)
            .filter(phone_numbers::tenant_id.eq(tenant_id)))
        .set((phone_numbers::access_token_ct.eq(&token_ct), phone_numbers::paused_at.eq(None::<i64>)))
        .execute(c))?;
    match updated {
        0 => Err(StorageError::NotFound),
        _ => Ok(()),
    }
}
