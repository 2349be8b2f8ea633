//! `GET /v1/messages/{id}/media`: the file of an inbound media message, as fetched from
//! Meta, with its MIME type. While it is being fetched the answer is 409
//! `media_pending`; a fetch given up is 409 `media_failed` with Meta's error.

use actix_web::{web, HttpRequest, HttpResponse};

use super::api::{authenticate, is_id, read};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::rules::Conflict;
use crate::storage::media::{self, DONE, PENDING};

pub async fn get_media(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let id = path.into_inner();
    let not_found = || ApiError::new(ErrorCode::NotFound, "no media message of yours has this id");
    if !is_id(&id) {
        return Err(not_found());
    }
    let stored = read(&state, move |conn, vault| {
        media::stored_media(conn, vault, &tenant, &crate::ids::MessageId(id))
    })
    .await?
    .ok_or_else(not_found)?;
    match (stored.state.as_str(), stored.content) {
        // Served as a download, never rendered by a browser as the type a user claimed.
        (DONE, Some(content)) => Ok(HttpResponse::Ok()
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .insert_header(("Content-Disposition", "attachment"))
            .content_type(
                stored
                    .mime_type
                    .filter(|m| {
                        m.contains('/') && actix_web::http::header::HeaderValue::from_str(m).is_ok()
                    })
                    .unwrap_or_else(|| "application/octet-stream".into()),
            )
            .body(content)),
        (DONE, None) => Err(ApiError::new(
            ErrorCode::Conflict(Conflict::MediaUnreadable),
            "the media's key is gone (its contact was erased)",
        )),
        (PENDING, _) => Err(ApiError::new(
            ErrorCode::Conflict(Conflict::MediaPending),
            "the media is being fetched from Meta; try again shortly",
        )),
        _ => Err(ApiError::new(
            ErrorCode::Conflict(Conflict::MediaFailed),
            format!(
                "the media could not be fetched from Meta: {}",
                stored.error_json.unwrap_or_default()
            ),
        )),
    }
}
