//! `GET /v1/audit`: the tenant's audit log, newest first, paged by entry id. Entries
//! name requests, contacts and notices by id, never personal data; nothing here (nor
//! anywhere in the API) changes or deletes one.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::api::{authenticate, page, read, PageQuery};
use super::AppState;
use crate::clock::rfc3339_ms as rfc3339;
use crate::error::ApiError;
use crate::storage::audit::{self, Entry};

#[derive(Serialize)]
struct EntryView {
    id: String,
    at: String,
    actor: String,
    action: String,
    request_id: Option<String>,
    contact_id: Option<String>,
    detail: serde_json::Value,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        EntryView {
            id: e.id,
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            request_id: e.request_id,
            contact_id: e.contact_id,
            detail: e.detail,
        }
    }
}

pub async fn entries(
    state: web::Data<AppState>,
    req: HttpRequest,
    paging: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let (limit, cursor) = (paging.limit()?, paging.cursor()?);
    let items = read(&state, move |conn, _| {
        audit::entries(conn, &tenant, cursor.as_deref(), limit)
    })
    .await?;
    let items: Vec<EntryView> = items.into_iter().map(EntryView::from).collect();
    Ok(page(items, limit, |e| &e.id))
}
