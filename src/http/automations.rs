//! The tenant API's automations (`/v1/automations`: keyword rules, the welcome, the
//! away message), their runs (`/v1/automations/runs`) and the tenant's settings
//! (`/v1/settings`: time zone, business hours, opt-out and opt-in keywords and
//! replies). A change takes effect with the next inbound message: the conversation
//! actors' copy of the tenant's automations is forgotten once it is stored.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::{authenticate, is_id, page, read, PageQuery};
use super::AppState;
use crate::automation::{rules, Definition, TenantSettings};
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::ids::TenantId;
use crate::rules::Rule;
use crate::storage::automations::{self, RunRecord, StoredAutomation};

#[derive(Serialize)]
struct AutomationView {
    id: String,
    name: String,
    enabled: bool,
    position: i64,
    trigger: rules::Trigger,
    reply: Value,
    cooldown_secs: u64,
    created_at: String,
    updated_at: String,
}

impl From<StoredAutomation> for AutomationView {
    fn from(a: StoredAutomation) -> Self {
        AutomationView {
            id: a.id.0,
            name: a.definition.name,
            enabled: a.definition.enabled,
            position: a.position,
            trigger: a.definition.trigger,
            reply: a.definition.reply,
            cooldown_secs: a.definition.cooldown_secs,
            created_at: rfc3339(a.created_at),
            updated_at: rfc3339(a.updated_at),
        }
    }
}

#[derive(Serialize)]
struct AutomationList {
    items: Vec<AutomationView>,
}

/// A checked automation body and the position it asks for.
async fn definition(payload: web::Payload) -> Result<(Definition, Option<i64>), ApiError> {
    let value = super::outbound::read_json(payload).await?;
    let definition = Definition::from_json(&value)?;
    let position = rules::position(&value)?;
    Ok((definition, position))
}

/// `GET /v1/automations`: all of the tenant's, by position.
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let items = read(&state, move |conn, _| automations::list(conn, &tenant)).await?;
    Ok(HttpResponse::Ok().json(AutomationList {
        items: items.into_iter().map(AutomationView::from).collect(),
    }))
}

/// `POST /v1/automations`.
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let (definition, position) = definition(payload).await?;
    let now = state.core.clock.now_ms();
    let written = tenant.clone();
    let created = state
        .core
        .writer
        .write(Some(tenant.clone()), move |conn| {
            automations::create(conn, &written, &definition, position, now)
        })
        .await?;
    state.core.automations.forget(&tenant);
    Ok(HttpResponse::Created().json(AutomationView::from(created)))
}

fn not_found() -> ApiError {
    ApiError::not_found("automation")
}

/// The automation id of the path; anything not shaped like one is "not found".
fn automation_id(path: web::Path<String>) -> Result<String, ApiError> {
    let id = path.into_inner();
    if is_id(&id) {
        Ok(id)
    } else {
        Err(not_found())
    }
}

/// `GET /v1/automations/{id}`.
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let id = automation_id(path)?;
    let found = read(&state, move |conn, _| automations::get(conn, &tenant, &id))
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(AutomationView::from(found)))
}

/// `PUT /v1/automations/{id}`: replaces it (its position stays unless given).
pub async fn replace(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let id = automation_id(path)?;
    let (definition, position) = definition(payload).await?;
    let now = state.core.clock.now_ms();
    let written = tenant.clone();
    let replaced = state
        .core
        .writer
        .write(Some(tenant.clone()), move |conn| {
            automations::replace(conn, &written, &id, &definition, position, now)
        })
        .await?
        .ok_or_else(not_found)?;
    state.core.automations.forget(&tenant);
    Ok(HttpResponse::Ok().json(AutomationView::from(replaced)))
}

/// `DELETE /v1/automations/{id}`: its runs stay, as usage data.
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let id = automation_id(path)?;
    let written = tenant.clone();
    let deleted = state
        .core
        .writer
        .write(Some(tenant.clone()), move |conn| {
            automations::delete(conn, &written, &id)
        })
        .await?;
    if !deleted {
        return Err(not_found());
    }
    state.core.automations.forget(&tenant);
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    automation_id: Option<String>,
    contact_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
pub(super) struct RunView {
    id: String,
    /// None for an opt-out or opt-in confirmation.
    automation_id: Option<String>,
    kind: String,
    contact_id: String,
    /// The reply stored (`GET /v1/messages/{id}` follows it).
    message_id: Option<String>,
    /// `accepted`, or the rule that refused the reply (`opted_out`, `restricted`, ...).
    outcome: String,
    ran_at: String,
}

impl From<RunRecord> for RunView {
    fn from(r: RunRecord) -> Self {
        RunView {
            id: r.id,
            automation_id: r.automation_id,
            kind: r.kind,
            contact_id: r.contact_id,
            message_id: r.message_id,
            outcome: r.outcome,
            ran_at: rfc3339(r.ran_at),
        }
    }
}

/// `GET /v1/automations/runs`: newest first, optionally of one automation or contact.
pub async fn runs(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<RunQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let query = query.into_inner();
    let paging = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let (limit, cursor) = (paging.limit()?, paging.cursor()?);
    for (field, id) in [
        ("automation_id", &query.automation_id),
        ("contact_id", &query.contact_id),
    ] {
        if id.as_deref().is_some_and(|id| !is_id(id)) {
            return Err(ApiError::invalid(
                Rule::Format,
                field,
                format!("{field} must be an id this API gave out"),
            ));
        }
    }
    let items = read(&state, move |conn, _| {
        automations::runs(
            conn,
            &tenant,
            query.automation_id.as_deref(),
            query.contact_id.as_deref(),
            cursor.as_deref(),
            limit,
        )
    })
    .await?;
    let items: Vec<RunView> = items.into_iter().map(RunView::from).collect();
    Ok(page(items, limit, |r| &r.id))
}

async fn settings_view(state: &AppState, tenant: TenantId) -> Result<HttpResponse, ApiError> {
    let stored = read(state, move |conn, _| automations::settings(conn, &tenant)).await?;
    Ok(HttpResponse::Ok().json(stored.to_json(state.core.automations.defaults())))
}

/// `GET /v1/settings`: every setting in effect (the operator's where the tenant set
/// none).
pub async fn get_settings(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    settings_view(&state, tenant).await
}

/// `PUT /v1/settings`: replaces the tenant's settings; one left out (or null) is the
/// operator's again.
pub async fn put_settings(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let value = super::outbound::read_json(payload).await?;
    let settings = TenantSettings::from_json(&value)?;
    let now = state.core.clock.now_ms();
    let written = tenant.clone();
    state
        .core
        .writer
        .write(Some(tenant.clone()), move |conn| {
            automations::put_settings(conn, &written, &settings, now)
        })
        .await?;
    state.core.automations.forget(&tenant);
    settings_view(&state, tenant).await
}
