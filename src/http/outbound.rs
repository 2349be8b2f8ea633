//! The tenant API's send side: `POST /v1/messages` checks a send against Meta's limits
//! and hands it to [`crate::actors::submit`], which stores it through its conversation
//! actor; `GET /v1/messages/{id}` shows where it stands; `GET /v1/templates` lists the
//! templates synced from Meta.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::api::{authenticate, is_id, read};
use super::views::SendView;
use super::AppState;
use crate::actors::submit;
use crate::error::{ApiError, ErrorCode};
use crate::rules::Rule;
use crate::storage::{outbox, templates};
use crate::whatsapp::outbound;

#[derive(Serialize)]
struct SendAnswer {
    id: String,
    state: String,
}

/// The largest send request taken: far above what Meta's limits let any message be.
const SEND_BODY_MAX: usize = 256 * 1024;

/// The request body, refused with the JSON error shape past [`SEND_BODY_MAX`].
pub(super) async fn read_body(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    use futures_util::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::invalid(
                Rule::Type,
                "body",
                format!("the body could not be read: {e}"),
            )
        })?;
        if body.len() + chunk.len() > SEND_BODY_MAX {
            return Err(ApiError::field(
                ErrorCode::PayloadTooLarge,
                "body",
                format!("the body exceeds the limit of {SEND_BODY_MAX} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The request body as JSON, refused naming `body` when it is not.
pub(super) async fn read_json(payload: web::Payload) -> Result<Value, ApiError> {
    let body = read_body(payload).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(Rule::Type, "body", format!("not JSON: {e}")))
}

pub async fn send_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let value = read_json(payload).await?;
    let request = outbound::parse_send(&value).map_err(ApiError::from)?;
    let idempotency = idempotency_key(&req)?.map(|key| {
        (
            key,
            hex::encode(Sha256::digest(value.to_string().as_bytes())),
        )
    });
    let accepted = submit::send(&state.core, &state.registry, tenant, request, idempotency).await?;
    Ok(HttpResponse::Accepted().json(SendAnswer {
        id: accepted.id,
        state: accepted.state,
    }))
}

#[derive(Serialize)]
struct TemplatePage {
    items: Vec<crate::whatsapp::Template>,
}

/// `GET /v1/templates`: the tenant's templates as last synced from the Graph API.
pub async fn list_templates(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let items = read(&state, move |conn, _| {
        templates::list_templates(conn, &tenant)
    })
    .await?;
    Ok(HttpResponse::Ok().json(TemplatePage { items }))
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(header) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    match header.to_str() {
        Ok(key) if !key.trim().is_empty() && key.len() <= 255 => Ok(Some(key.trim().to_string())),
        _ => Err(ApiError::invalid(
            Rule::Length,
            "Idempotency-Key",
            "must be 1 to 255 visible characters",
        )),
    }
}

pub async fn get_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let id = path.into_inner();
    if !is_id(&id) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no message of yours has this id",
        ));
    }
    let found = read(&state, move |conn, vault| {
        outbox::send_record_opened(conn, vault, &tenant, &id)
    })
    .await?
    .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no message of yours has this id"))?;
    Ok(HttpResponse::Ok().json(SendView::from(found)))
}
