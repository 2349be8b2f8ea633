//! The tenant API's CRM writes: a contact's own record (display name, tags,
//! attributes), one contact read back, and closing or opening a conversation. Writes go
//! through the writer in the tenant's lane; every call is scoped to the caller's
//! tenant, and another tenant's rows are "not found".

use actix_web::{web, HttpRequest, HttpResponse};

use super::api::{authenticate, is_id, read};
use super::views::{ContactItem, ConversationItem};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::ids::{ConversationId, TenantId};
use crate::storage::contact_crm::{self, RecordChange};
use crate::storage::contacts::{list_contacts, ContactFilter};
use crate::storage::conversations;

/// The contact `id` of `tenant` as the API shows it.
async fn contact_item(
    state: &AppState,
    tenant: TenantId,
    id: String,
) -> Result<ContactItem, ApiError> {
    let filter = ContactFilter {
        id: Some(id),
        ..ContactFilter::default()
    };
    read(state, move |conn, keyring| {
        list_contacts(conn, keyring, &tenant, &filter, None, 1)
    })
    .await?
    .into_iter()
    .next()
    .map(ContactItem::from)
    .ok_or_else(|| ApiError::not_found("contact"))
}

/// `GET /v1/contacts/{id}`.
pub async fn get_contact(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let id = path.into_inner();
    if !is_id(&id) {
        return Err(ApiError::not_found("contact"));
    }
    Ok(HttpResponse::Ok().json(contact_item(&state, tenant, id).await?))
}

/// `PATCH /v1/contacts/{id}` with any of `{"display_name", "tags", "attributes"}`:
/// each one given replaces the stored one.
pub async fn update_contact(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let id = path.into_inner();
    if !is_id(&id) {
        return Err(ApiError::not_found("contact"));
    }
    let value = super::outbound::read_json(payload).await?;
    let change = RecordChange::from_json(&value)?;
    let keyring = state.core.keyring.clone();
    let (written_tenant, written_id) = (tenant.clone(), id.clone());
    state
        .core
        .writer
        .write(Some(tenant.clone()), move |conn| {
            contact_crm::update_record(conn, &keyring, &written_tenant, &written_id, &change)
        })
        .await
        .map_err(|e| match ApiError::from(e) {
            e if e.code == ErrorCode::NotFound => ApiError::not_found("contact"),
            e => e,
        })?;
    Ok(HttpResponse::Ok().json(contact_item(&state, tenant, id).await?))
}

/// `POST /v1/conversations/{id}/close`.
pub async fn close_conversation(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let now = state.core.clock.now_ms();
    set_closed(state, req, path, Some(now)).await
}

/// `POST /v1/conversations/{id}/reopen`.
pub async fn reopen_conversation(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_closed(state, req, path, None).await
}

async fn set_closed(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    closed_at: Option<i64>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let id = ConversationId(path.into_inner());
    if !is_id(id.as_str()) {
        return Err(ApiError::not_found("conversation"));
    }
    let changed = state
        .core
        .writer
        .write(Some(tenant.clone()), move |conn| {
            conversations::set_closed(conn, &tenant, &id, closed_at)
        })
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    Ok(HttpResponse::Ok().json(ConversationItem::from(changed)))
}
