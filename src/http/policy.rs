//! `GET /v1/policy` (the privacy policy in force and the versions to come) and
//! `GET /v1/privacy/processing` (the record of processing: sub-processors, data
//! locations, and the categories of data held for the tenant with their retention
//! periods).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::api::{authenticate, read};
use super::AppState;
use crate::compliance::{dates, notices};
use crate::config::SubProcessor;
use crate::error::ApiError;
use crate::retention::Category;

/// `GET /v1/policy` → `{"current", "pending": [...]}`.
pub async fn get_policy(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authenticate(&state, &req).await?;
    let today = dates::day_of(state.core.clock.now_ms());
    let view = read(&state, move |conn, _| notices::policy_view(conn, today)).await?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Serialize)]
struct CategoryView {
    category: &'static str,
    description: &'static str,
    /// The period in force for the tenant (`null`: kept while the account is, until
    /// erased).
    retention_days: Option<u32>,
}

#[derive(Serialize)]
struct ProcessingView<'a> {
    /// The business is the controller of its contacts' data, Converra its processor.
    controller: &'static str,
    processor: &'static str,
    sub_processors: &'a [SubProcessor],
    data_locations: &'a [String],
    categories: Vec<CategoryView>,
}

/// `GET /v1/privacy/processing`.
pub async fn get_processing(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let policies = read(&state, move |conn, _| {
        crate::storage::retention::policies(conn, &tenant)
    })
    .await?;
    let settings = &state.core.settings;
    let mut categories = vec![CategoryView {
        category: "contacts",
        description: "your contacts' WhatsApp identities, profile names, tags, attributes \
                      and preferences",
        retention_days: None,
    }];
    categories.extend(Category::ALL.into_iter().map(|category| CategoryView {
        category: category.as_str(),
        description: category.description(),
        retention_days: Some(policies.days(category, settings)),
    }));
    Ok(HttpResponse::Ok().json(ProcessingView {
        controller: "you, the business",
        processor: "Converra",
        sub_processors: &settings.processing.sub_processors,
        data_locations: &settings.processing.data_locations,
        categories,
    }))
}
