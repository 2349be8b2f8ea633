//! Message templates (`templates`, `template_syncs`): each WhatsApp Business Account's
//! templates as last synced from the Graph API, per tenant. A template send is checked
//! against them (it exists, it is approved, its parameters fit), and a template's
//! category decides whether it is marketing.

use diesel::prelude::*;

use super::on_backend;
use super::schema::{phone_numbers, template_syncs, templates};
use super::{DbConn, StorageError};
use crate::ids::{PhoneNumberId, TenantId};
use crate::whatsapp::Template;

/// What Meta changed of a synced template.
#[derive(Debug, Clone, Copy)]
pub enum TemplateChange<'a> {
    /// Its status (`APPROVED`, `PAUSED`, ...).
    Status(&'a str),
    /// Its category (`MARKETING`, `UTILITY`, ...).
    Category(&'a str),
}

/// Applies Meta's `change` to template `name` (in `language`, or in every language
/// when Meta names none) of account `waba_id`; how many synced templates it changed
/// (none: the template is not synced yet).
pub fn update_template(
    conn: &mut DbConn,
    waba_id: &str,
    name: &str,
    language: Option<&str>,
    change: TemplateChange<'_>,
) -> Result<usize, StorageError> {
    Ok(on_backend!(conn, c => {
        let mut update = diesel::update(templates::table)
            .filter(templates::waba_id.eq(waba_id))
            .filter(templates::name.eq(name))
            .into_boxed();
        if let Some(language) = language {
            update = update.filter(templates::language.eq(language));
        }
        match change {
            TemplateChange::Status(status) => update.set(templates::status.eq(status)).execute(c),
            TemplateChange::Category(category) => {
                update.set(templates::category.eq(category)).execute(c)
            }
        }
    })?)
}

/// Replaces the templates of `waba_id` with those listed now.
pub fn replace_templates(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    waba_id: &str,
    listed: &[Template],
    now_ms: i64,
) -> Result<(), StorageError> {
    let tenant = tenant_id.as_str();
    on_backend!(conn, c => diesel::delete(templates::table
            .filter(templates::tenant_id.eq(tenant))
            .filter(templates::waba_id.eq(waba_id)))
        .execute(c))?;
    let mut rows = Vec::with_capacity(listed.len());
    let mut seen = std::collections::HashSet::new();
    for t in listed {
        // Meta lists a template once per language; a repeat would break the key.
        if !seen.insert((t.name.as_str(), t.language.as_str())) {
            continue;
        }
        rows.push((
            templates::tenant_id.eq(tenant),
            templates::waba_id.eq(waba_id),
            templates::name.eq(t.name.as_str()),
            templates::language.eq(t.language.as_str()),
            templates::category.eq(t.category.as_str()),
            templates::status.eq(t.status.as_str()),
            templates::components_json.eq(t.components.to_string()),
            templates::synced_at.eq(now_ms),
        ));
    }
    for chunk in rows.chunks(500) {
        on_backend!(conn, c => diesel::insert_into(templates::table)
            .values(chunk)
            .execute(c))?;
    }
    on_backend!(conn, c => diesel::delete(template_syncs::table
            .filter(template_syncs::tenant_id.eq(tenant))
            .filter(template_syncs::waba_id.eq(waba_id)))
        .execute(c))?;
    on_backend!(conn, c => diesel::insert_into(template_syncs::table)
        .values((
            template_syncs::tenant_id.eq(tenant),
            template_syncs::waba_id.eq(waba_id),
            template_syncs::synced_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(())
}

/// What is known of a template a send names.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// The number's account was never synced: Meta judges the send.
    Unsynced,
    Missing,
    Found(Template),
}

/// The template `name` in `language` of the account `phone_number_id` belongs to.
pub fn template_for_number(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    phone_number_id: &PhoneNumberId,
    name: &str,
    language: &str,
) -> Result<Known, StorageError> {
    let tenant = tenant_id.as_str();
    let waba: Option<String> = on_backend!(conn, c => phone_numbers::table
        .find(phone_number_id.as_str())
        .filter(phone_numbers::tenant_id.eq(tenant))
        .select(phone_numbers::waba_id)
        .get_result(c)
        .optional())?;
    let Some(waba) = waba else {
        return Ok(Known::Unsynced);
    };
    let synced: Option<i64> = on_backend!(conn, c => template_syncs::table
        .filter(template_syncs::tenant_id.eq(tenant))
        .filter(template_syncs::waba_id.eq(&waba))
        .select(template_syncs::synced_at)
        .get_result(c)
        .optional())?;
    if synced.is_none() {
        return Ok(Known::Unsynced);
    }
    let found: Option<TemplateRow> = on_backend!(conn, c => templates::table
        .filter(templates::tenant_id.eq(tenant))
        .filter(templates::waba_id.eq(&waba))
        .filter(templates::name.eq(name))
        .filter(templates::language.eq(language))
        .select((templates::name, templates::language, templates::category, templates::status, templates::components_json))
        .get_result(c)
        .optional())?;
    Ok(match found {
        None => Known::Missing,
        Some(row) => Known::Found(template_of(row)?),
    })
}

/// A tenant's templates, every account's, by name and language.
pub fn list_templates(
    conn: &mut DbConn,
    tenant_id: &TenantId,
) -> Result<Vec<Template>, StorageError> {
    let rows: Vec<TemplateRow> = on_backend!(conn, c => templates::table
        .filter(templates::tenant_id.eq(tenant_id.as_str()))
        .order((templates::name.asc(), templates::language.asc(), templates::waba_id.asc()))
        .select((templates::name, templates::language, templates::category, templates::status, templates::components_json))
        .load(c))?;
    rows.into_iter().map(template_of).collect()
}

/// A stored template: (name, language, category, status, components as JSON).
type TemplateRow = (String, String, String, String, String);

fn template_of(
    (name, language, category, status, components): TemplateRow,
) -> Result<Template, StorageError> {
    Ok(Template {
        name,
        language,
        category,
        status,
        components: serde_json::from_str(&components)
            .map_err(|e| StorageError::Corrupt(format!("template components: {e}")))?,
    })
}
