//! The tenant read API under `/v1/`. Every call is authenticated by a tenant API key
//! and scoped to that tenant: another tenant's rows are "not found", never "forbidden",
//! so their existence cannot be detected.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::views::{ContactItem, ConversationItem, MessageItem};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::ids::{ConversationId, TenantId};
use crate::rules::Rule;
use crate::storage::contacts::ContactFilter;
use crate::storage::{self, contact_crm, contacts, conversations, messages, tenants, StorageError};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Read as text, so that any bad value is refused naming `limit`.
    pub(super) limit: Option<String>,
    pub(super) cursor: Option<String>,
}

impl PageQuery {
    pub(super) fn limit(&self) -> Result<i64, ApiError> {
        let Some(limit) = &self.limit else {
            return Ok(DEFAULT_LIMIT);
        };
        match limit.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                Rule::Range,
                "limit",
                format!("limit must be a whole number between 1 and {MAX_LIMIT}"),
            )),
        }
    }

    /// A cursor is a `next_cursor` this API gave out, which is always an id; anything
    /// else is refused here rather than compared in the database.
    pub(super) fn cursor(&self) -> Result<Option<String>, ApiError> {
        match &self.cursor {
            Some(cursor) if !is_id(cursor) => Err(ApiError::invalid(
                Rule::Format,
                "cursor",
                "cursor must be a next_cursor value returned by this API",
            )),
            cursor => Ok(cursor.clone()),
        }
    }
}

/// Whether `text` has the shape of the ids Converra gives rows (UUIDs).
pub(super) fn is_id(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok()
}

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

pub(super) fn page<T>(items: Vec<T>, limit: i64, id: impl Fn(&T) -> &str) -> HttpResponse
where
    T: Serialize,
{
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|i| id(i).to_string()))
        .flatten();
    HttpResponse::Ok().json(Page { items, next_cursor })
}

/// Resolves the bearer key to its tenant.
pub(super) async fn authenticate(
    state: &AppState,
    req: &HttpRequest,
) -> Result<TenantId, ApiError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header is missing (Bearer <api key>)")
        })?;
    let key = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be \"Bearer <api key>\"")
        })?
        .to_string();
    let pool = state.core.pool.clone();
    web::block(move || storage::with_conn(&pool, |conn| tenants::tenant_for_api_key(conn, &key)))
        .await??
        .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))
}

pub(super) async fn read<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut storage::DbConn, &crate::storage::key_store::Vault) -> Result<T, StorageError>
        + Send
        + 'static,
) -> Result<T, ApiError> {
    let pool = state.core.pool.clone();
    let keyring = state.core.keyring.clone();
    Ok(web::block(move || storage::with_conn(&pool, |conn| f(conn, &keyring))).await??)
}

/// The contact listing's query: a page, and what to search by (all must match).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactQuery {
    limit: Option<String>,
    cursor: Option<String>,
    wa_id: Option<String>,
    user_id: Option<String>,
    tag: Option<String>,
    /// `name:value`.
    attribute: Option<String>,
}

pub async fn list_contacts(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ContactQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let query = query.into_inner();
    let paging = PageQuery {
        limit: query.limit.clone(),
        cursor: query.cursor.clone(),
    };
    let limit = paging.limit()?;
    let cursor = paging.cursor()?;
    let keyring = &state.core.keyring;
    // A number as a business writes it (`+49 151 …`) is the wa_id's digits.
    let wa_id = query.wa_id.as_ref().map(|number| {
        number
            .chars()
            .filter(|c| !matches!(c, '+' | ' ' | '-' | '(' | ')'))
            .collect::<String>()
    });
    let ids = contacts::ContactIdentifiers {
        user_id: query.user_id.clone(),
        wa_id,
    }
    .indexes(keyring, &tenant);
    let mut labels = Vec::new();
    if let Some(tag) = &query.tag {
        let tag = contact_crm::normalize_tag(tag)
            .map_err(|_| ApiError::invalid(Rule::Length, "tag", "not a tag"))?;
        labels.push(contact_crm::tag_label(keyring, &tenant, &tag));
    }
    if let Some(attribute) = &query.attribute {
        let (name, value) = attribute
            .split_once(':')
            .ok_or_else(|| ApiError::invalid(Rule::Format, "attribute", "must be name:value"))?;
        labels.push(contact_crm::attribute_label(
            keyring,
            &tenant,
            name.trim(),
            value,
        ));
    }
    let filter = ContactFilter {
        wa_id_bidx: ids.wa_id,
        user_id_bidx: ids.user_id,
        labels,
        id: None,
    };
    let items = read(&state, move |conn, keyring| {
        contacts::list_contacts(conn, keyring, &tenant, &filter, cursor.as_deref(), limit)
    })
    .await?;
    let items: Vec<ContactItem> = items.into_iter().map(ContactItem::from).collect();
    Ok(page(items, limit, |c| c.id.as_str()))
}

pub async fn list_conversations(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let limit = query.limit()?;
    let cursor = query.cursor()?;
    let items = read(&state, move |conn, _| {
        conversations::list_conversations(conn, &tenant, cursor.as_deref(), limit)
    })
    .await?;
    let items: Vec<ConversationItem> = items.into_iter().map(ConversationItem::from).collect();
    Ok(page(items, limit, |c| c.id.as_str()))
}

pub async fn list_messages(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let limit = query.limit()?;
    let cursor = query.cursor()?;
    let conversation_id = ConversationId(path.into_inner());
    if !is_id(conversation_id.as_str()) {
        return Err(ApiError::not_found("conversation"));
    }
    let items = read(&state, move |conn, keyring| {
        if !conversations::conversation_exists(conn, &tenant, &conversation_id)? {
            return Err(StorageError::NotFound);
        }
        messages::list_messages(
            conn,
            keyring,
            &tenant,
            &conversation_id,
            cursor.as_deref(),
            limit,
        )
    })
    .await
    .map_err(|e| match e.code {
        ErrorCode::NotFound => ApiError::not_found("conversation"),
        _ => e,
    })?;
    let items: Vec<MessageItem> = items.into_iter().map(MessageItem::from).collect();
    Ok(page(items, limit, |m| m.id.as_str()))
}
