//! Each tenant's automations (`automations`), the record of their runs
//! (`automation_runs`) and the tenant's own settings (`tenant_settings`). A run is
//! recorded in the write that stores its reply (see [`super::outbox::accept`]), where
//! its cooldown is checked, so two messages close together cannot both pass it.

use diesel::prelude::*;

use super::messages::INBOUND;
use super::on_backend;
use super::schema::{automation_runs, automations, messages, tenant_settings};
use super::{DbConn, StorageError};
use crate::automation::{Definition, Rule, TenantSettings};
use crate::ids::{AutomationId, ContactId, TenantId};
use crate::rules::Conflict;

/// The most automations one tenant keeps: each inbound message may be matched
/// against all of them.
pub const MAX_PER_TENANT: i64 = 200;

/// Outcome of a run whose reply was stored in the outbox (what became of the send
/// itself is its message's state).
pub const ACCEPTED: &str = "accepted";

/// A stored automation.
#[derive(Debug, Clone)]
pub struct StoredAutomation {
    pub id: AutomationId,
    pub position: i64,
    pub definition: Definition,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A run the outbox's write records with its reply.
#[derive(Debug, Clone)]
pub struct AutomationRun {
    /// The rule; none for an opt-out or opt-in confirmation.
    pub automation_id: Option<AutomationId>,
    /// [`crate::automation::RunKind`]'s name.
    pub kind: &'static str,
    /// The least time since the rule's last run for the contact (0: none).
    pub cooldown_ms: i64,
    /// At most once per contact (the welcome).
    pub once: bool,
}

/// A run as `GET /v1/automations/runs` shows it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: String,
    pub automation_id: Option<String>,
    pub kind: String,
    pub contact_id: String,
    pub message_id: Option<String>,
    pub outcome: String,
    pub ran_at: i64,
}

type Row = (String, i64, String, i64, i64);

fn stored(row: Row) -> Result<StoredAutomation, StorageError> {
    let (id, position, definition, created_at, updated_at) = row;
    let definition = serde_json::from_str(&definition)
        .map_err(|e| StorageError::Corrupt(format!("automation {id}: {e}")))?;
    Ok(StoredAutomation {
        id: AutomationId(id),
        position,
        definition,
        created_at,
        updated_at,
    })
}

/// The tenant's automations by position.
pub fn list(
    conn: &mut DbConn,
    tenant_id: &TenantId,
) -> Result<Vec<StoredAutomation>, StorageError> {
    let rows: Vec<Row> = on_backend!(conn, c => automations::table
        .filter(automations::tenant_id.eq(tenant_id.as_str()))
        .order((automations::position.asc(), automations::id.asc()))
        .select((automations::id, automations::position, automations::definition_json,
                 automations::created_at, automations::updated_at))
        .load(c))?;
    rows.into_iter().map(stored).collect()
}

pub fn get(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &str,
) -> Result<Option<StoredAutomation>, StorageError> {
    let row: Option<Row> = on_backend!(conn, c => automations::table
        .find(id)
        .filter(automations::tenant_id.eq(tenant_id.as_str()))
        .select((automations::id, automations::position, automations::definition_json,
                 automations::created_at, automations::updated_at))
        .get_result(c)
        .optional())?;
    row.map(stored).transpose()
}

fn definition_json(definition: &Definition) -> Result<String, StorageError> {
    serde_json::to_string(definition).map_err(|e| StorageError::Corrupt(e.to_string()))
}

/// Stores a new automation at `position`, or after the tenant's last.
pub fn create(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    definition: &Definition,
    position: Option<i64>,
    now_ms: i64,
) -> Result<StoredAutomation, StorageError> {
    let (count, last): (i64, Option<i64>) = on_backend!(conn, c => automations::table
        .filter(automations::tenant_id.eq(tenant_id.as_str()))
        .select((diesel::dsl::count_star(), diesel::dsl::max(automations::position)))
        .get_result(c))?;
    if count >= MAX_PER_TENANT {
        return Err(StorageError::Conflict {
            code: Conflict::TooManyAutomations,
            message: format!("a tenant keeps at most {MAX_PER_TENANT} automations"),
        });
    }
    let id = AutomationId::generate();
    let position = position.unwrap_or_else(|| last.map_or(0, |p| p + 1));
    let json = definition_json(definition)?;
    on_backend!(conn, c => diesel::insert_into(automations::table)
        .values((
            automations::id.eq(id.as_str()),
            automations::tenant_id.eq(tenant_id.as_str()),
            automations::position.eq(position),
            automations::definition_json.eq(&json),
            automations::created_at.eq(now_ms),
            automations::updated_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(StoredAutomation {
        id,
        position,
        definition: definition.clone(),
        created_at: now_ms,
        updated_at: now_ms,
    })
}

/// Replaces automation `id` of the tenant (keeping its position unless given); `None`
/// if the tenant has no such automation.
pub fn replace(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    id: &str,
    definition: &Definition,
    position: Option<i64>,
    now_ms: i64,
) -> Result<Option<StoredAutomation>, StorageError> {
    let Some(current) = get(conn, tenant_id, id)? else {
        return Ok(None);
    };
    let position = position.unwrap_or(current.position);
    let json = definition_json(definition)?;
    on_backend!(conn, c => diesel::update(automations::table.find(id))
        .set((
            automations::position.eq(position),
            automations::definition_json.eq(&json),
            automations::updated_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(Some(StoredAutomation {
        position,
        definition: definition.clone(),
        updated_at: now_ms,
        ..current
    }))
}

/// Deletes automation `id` of the tenant (its runs stay, as usage data); whether it
/// existed.
pub fn delete(conn: &mut DbConn, tenant_id: &TenantId, id: &str) -> Result<bool, StorageError> {
    let deleted = on_backend!(conn, c => diesel::delete(automations::table
            .find(id)
            .filter(automations::tenant_id.eq(tenant_id.as_str())))
        .execute(c))?;
    Ok(deleted > 0)
}

/// The tenant's settings as stored (empty: the operator's defaults throughout).
pub fn settings(conn: &mut DbConn, tenant_id: &TenantId) -> Result<TenantSettings, StorageError> {
    let json: Option<String> = on_backend!(conn, c => tenant_settings::table
        .find(tenant_id.as_str())
        .select(tenant_settings::settings_json)
        .get_result(c)
        .optional())?;
    match json {
        None => Ok(TenantSettings::default()),
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| StorageError::Corrupt(format!("settings of tenant {tenant_id}: {e}"))),
    }
}

/// Replaces the tenant's settings.
pub fn put_settings(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    settings: &TenantSettings,
    now_ms: i64,
) -> Result<(), StorageError> {
    let json = serde_json::to_string(settings).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    on_backend!(conn, c => diesel::insert_into(tenant_settings::table)
        .values((
            tenant_settings::tenant_id.eq(tenant_id.as_str()),
            tenant_settings::settings_json.eq(&json),
            tenant_settings::updated_at.eq(now_ms),
        ))
        .on_conflict(tenant_settings::tenant_id)
        .do_update()
        .set((
            tenant_settings::settings_json.eq(&json),
            tenant_settings::updated_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(())
}

/// What the conversation actors match messages against: the tenant's settings and
/// its automations, compiled, with the ids of those that could not be read (left out,
/// so that one unreadable row never holds up the tenant's messages).
pub fn load(
    conn: &mut DbConn,
    tenant_id: &TenantId,
) -> Result<(TenantSettings, Vec<Rule>, Vec<String>), StorageError> {
    let mut unreadable = Vec::new();
    let settings = match settings(conn, tenant_id) {
        Ok(settings) => settings,
        Err(StorageError::Corrupt(_)) => {
            unreadable.push("settings".to_string());
            TenantSettings::default()
        }
        Err(e) => return Err(e),
    };
    let rows: Vec<Row> = on_backend!(conn, c => automations::table
        .filter(automations::tenant_id.eq(tenant_id.as_str()))
        .order((automations::position.asc(), automations::id.asc()))
        .select((automations::id, automations::position, automations::definition_json,
                 automations::created_at, automations::updated_at))
        .load(c))?;
    let mut rules = Vec::new();
    for row in rows {
        let id = row.0.clone();
        match stored(row)
            .ok()
            .and_then(|a| Rule::compile(a.id.0, a.definition))
        {
            Some(rule) => rules.push(rule),
            None => unreadable.push(id),
        }
    }
    Ok((settings, rules, unreadable))
}

/// Whether `run` may not run for the contact now: its cooldown since the rule's last
/// accepted run has not passed, or (a welcome) the contact was welcomed already.
pub fn held_back(
    conn: &mut DbConn,
    run: &AutomationRun,
    contact_id: &ContactId,
    now_ms: i64,
) -> Result<bool, StorageError> {
    if !run.once && run.cooldown_ms <= 0 {
        return Ok(false);
    }
    let since = if run.once {
        i64::MIN
    } else {
        now_ms.saturating_sub(run.cooldown_ms)
    };
    let query = automation_runs::table
        .filter(automation_runs::contact_id.eq(contact_id.as_str()))
        .filter(automation_runs::kind.eq(run.kind))
        .filter(automation_runs::ran_at.gt(since))
        .filter(automation_runs::outcome.eq(ACCEPTED))
        .select(automation_runs::automation_id);
    let ids: Vec<Option<String>> = on_backend!(conn, c => query.load(c))?;
    // A welcome is once per contact whichever rule sent it; a cooldown is the rule's.
    Ok(ids.iter().any(|id| {
        run.once || id.as_deref() == run.automation_id.as_ref().map(AutomationId::as_str)
    }))
}

/// Records a run of the tenant's automation for a contact.
pub fn record_run(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    run: &AutomationRun,
    contact_id: &ContactId,
    message_id: Option<&str>,
    outcome: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    on_backend!(conn, c => diesel::insert_into(automation_runs::table)
        .values((
            automation_runs::id.eq(uuid::Uuid::now_v7().to_string()),
            automation_runs::tenant_id.eq(tenant_id.as_str()),
            automation_runs::automation_id.eq(run.automation_id.as_ref().map(AutomationId::as_str)),
            automation_runs::kind.eq(run.kind),
            automation_runs::contact_id.eq(contact_id.as_str()),
            automation_runs::message_id.eq(message_id),
            automation_runs::outcome.eq(outcome),
            automation_runs::ran_at.eq(now_ms),
        ))
        .execute(c))?;
    Ok(())
}

/// Whether the contact had an inbound message that arrived before `before_ms`: the
/// welcome answers only the first.
pub fn wrote_before(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    contact_id: &ContactId,
    before_ms: i64,
) -> Result<bool, StorageError> {
    let query = messages::table
        .filter(messages::contact_id.eq(contact_id.as_str()))
        .filter(messages::tenant_id.eq(tenant_id.as_str()))
        .filter(messages::direction.eq(INBOUND))
        .filter(messages::received_at.lt(before_ms))
        .select(messages::id)
        .limit(1);
    let found: Option<String> = on_backend!(conn, c => query.get_result(c).optional())?;
    Ok(found.is_some())
}

/// The tenant's runs, newest first, optionally of one automation or one contact,
/// after `cursor` (a run id given out before).
pub fn runs(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    automation_id: Option<&str>,
    contact_id: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<RunRecord>, StorageError> {
    type RunRow = (
        String,
        Option<String>,
        String,
        String,
        Option<String>,
        String,
        i64,
    );
    let rows: Vec<RunRow> = on_backend!(conn, c => {
        let mut query = automation_runs::table
            .filter(automation_runs::tenant_id.eq(tenant_id.as_str()))
            .order(automation_runs::id.desc())
            .limit(limit)
            .select((
                automation_runs::id,
                automation_runs::automation_id,
                automation_runs::kind,
                automation_runs::contact_id,
                automation_runs::message_id,
                automation_runs::outcome,
                automation_runs::ran_at,
            ))
            .into_boxed();
        if let Some(id) = automation_id {
            query = query.filter(automation_runs::automation_id.eq(id));
        }
        if let Some(id) = contact_id {
            query = query.filter(automation_runs::contact_id.eq(id));
        }
        if let Some(cursor) = cursor {
            query = query.filter(automation_runs::id.lt(cursor));
        }
        query.load(c)
    })?;
    Ok(rows
        .into_iter()
        .map(
            |(id, automation_id, kind, contact_id, message_id, outcome, ran_at)| RunRecord {
                id,
                automation_id,
                kind,
                contact_id,
                message_id,
                outcome,
                ran_at,
            },
        )
        .collect())
}
