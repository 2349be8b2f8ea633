//! The tenant API's retention (`/v1/retention`: how long each category of the tenant's
//! data is kept) and the record of the sweeps that enforce it
//! (`/v1/retention/runs`: counts, never content).

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::api::{authenticate, page, read, PageQuery};
use super::AppState;
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::ids::TenantId;
use crate::retention::{Bounds, Category, Policies};
use crate::storage::retention::{self, RunRecord};

#[derive(Serialize)]
struct Period {
    /// The tenant's own period; null: the operator's default (`default_days`).
    days: Option<u32>,
    default_days: u32,
    /// The period in force.
    effective_days: u32,
}

#[derive(Serialize)]
struct PoliciesView {
    categories: BTreeMap<&'static str, Period>,
}

async fn policies_view(state: &AppState, tenant: TenantId) -> Result<HttpResponse, ApiError> {
    let policies = read(state, move |conn, _| retention::policies(conn, &tenant)).await?;
    let settings = &state.core.settings;
    let categories = Category::ALL
        .into_iter()
        .map(|category| {
            let period = Period {
                days: policies.days.get(&category).copied(),
                default_days: category.operator_default(&settings.retention),
                effective_days: policies.days(category, settings),
            };
            (category.as_str(), period)
        })
        .collect();
    Ok(HttpResponse::Ok().json(PoliciesView { categories }))
}

/// `GET /v1/retention`: every category, with the tenant's period, the default and the
/// one in force.
pub async fn get_policies(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    policies_view(&state, tenant).await
}

/// `PUT /v1/retention`: sets the categories given (null: back to the default); the
/// others stay. Answers with all of them.
pub async fn put_policies(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let value = super::outbound::read_json(payload).await?;
    let bounds = Bounds::from_settings(&state.core.settings);
    let changes = Policies::changes_from_json(&value, &bounds).map_err(ApiError::from)?;
    let now = state.core.clock.now_ms();
    let (written, changed) = (tenant.clone(), changes.clone());
    state
        .core
        .writer
        .write(Some(tenant.clone()), move |conn| {
            retention::change_policies(conn, &written, &changed, now)
        })
        .await?;
    let changed: Vec<String> = changes
        .iter()
        .map(|(category, days)| match days {
            Some(days) => format!("{}={days}", category.as_str()),
            None => format!("{}=default", category.as_str()),
        })
        .collect();
    slog::info!(state.core.log, "retention policy changed";
        "tenant" => tenant.as_str(), "categories" => changed.join(","));
    policies_view(&state, tenant).await
}

#[derive(Serialize)]
struct RunView {
    id: String,
    started_at: String,
    /// Null while the sweep runs (or until the next one finishes it after a crash).
    finished_at: Option<String>,
    dry_run: bool,
    deleted: BTreeMap<String, u64>,
}

impl From<RunRecord> for RunView {
    fn from(r: RunRecord) -> Self {
        RunView {
            id: r.id,
            started_at: rfc3339(r.started_at),
            finished_at: r.finished_at.map(rfc3339),
            dry_run: r.dry_run,
            deleted: r.deleted.0,
        }
    }
}

/// `GET /v1/retention/runs`: the tenant's sweeps, newest first.
pub async fn runs(
    state: web::Data<AppState>,
    req: HttpRequest,
    paging: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let (limit, cursor) = (paging.limit()?, paging.cursor()?);
    let items = read(&state, move |conn, _| {
        retention::runs(conn, &tenant, cursor.as_deref(), limit)
    })
    .await?;
    let items: Vec<RunView> = items.into_iter().map(RunView::from).collect();
    Ok(page(items, limit, |r| &r.id))
}
