//! `GET /webhooks/whatsapp`: Meta's verification handshake. `POST`: signature check on
//! the raw bytes, parse, and hand over to the intake; 200 only once everything the
//! webhook carried is durable, 503 when the database cannot take it (Meta retries).

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;

use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::intake::{self, IntakeError};
use crate::rules::Rule;
use crate::whatsapp::{signature, webhook};

#[derive(Deserialize)]
pub struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

pub async fn verify(
    state: web::Data<AppState>,
    query: web::Query<Handshake>,
) -> Result<HttpResponse, ApiError> {
    let expected = &state.core.settings.whatsapp.verify_token;
    if expected.is_empty() {
        return Err(ApiError::field(
            ErrorCode::NotConfigured,
            "whatsapp.verify_token",
            "the verify token is not configured",
        ));
    }
    if query.mode.as_deref() != Some("subscribe") {
        return Err(ApiError::field(
            ErrorCode::Forbidden,
            "hub.mode",
            "hub.mode must be \"subscribe\"",
        ));
    }
    let given = query.verify_token.as_deref().unwrap_or_default();
    if !signature::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::field(
            ErrorCode::Forbidden,
            "hub.verify_token",
            "the verify token does not match",
        ));
    }
    // Echoed as Meta asks; `nosniff` keeps a browser from reading it as anything but
    // text, whatever the caller put in it.
    let challenge = query.challenge.clone().unwrap_or_default();
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(challenge))
}

pub async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let core = &state.core;
    let arrived = std::time::Instant::now();
    let outcome = |name: &str| core.metrics.webhooks.with_label_values(&[name]).inc();
    let secret = core.settings.whatsapp.app_secret.as_bytes();
    if secret.is_empty() {
        outcome("not_configured");
        return Err(ApiError::field(
            ErrorCode::NotConfigured,
            "whatsapp.app_secret",
            "the Meta app secret is not configured, so webhooks cannot be verified",
        ));
    }
    let limit = core.settings.server.max_body_bytes;
    let too_large = || {
        ApiError::field(
            ErrorCode::PayloadTooLarge,
            "body",
            format!("the body exceeds the limit of {limit} bytes"),
        )
    };
    // Refused before the body is read: an unsigned POST costs no memory.
    if req.headers().get("X-Hub-Signature-256").is_none() {
        core.metrics.signature_failures.inc();
        outcome("unsigned");
        return Err(ApiError::field(
            ErrorCode::InvalidSignature,
            "X-Hub-Signature-256",
            signature::SignatureError::Missing.to_string(),
        ));
    }
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        outcome("too_large");
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    let read_by =
        tokio::time::Instant::now() + Duration::from_millis(core.settings.server.client_timeout_ms);
    loop {
        let next = match tokio::time::timeout_at(read_by, payload.next()).await {
            Ok(next) => next,
            Err(_) => {
                outcome("too_slow");
                return Err(ApiError::field(
                    ErrorCode::RequestTimeout,
                    "body",
                    format!(
                        "the body did not arrive within {} ms (server.client_timeout_ms)",
                        core.settings.server.client_timeout_ms
                    ),
                ));
            }
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(|e| {
            ApiError::invalid(Rule::Type, "body", format!("reading the body failed: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            outcome("too_large");
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    // A header that is not text is present and wrong, not missing.
    let header = req
        .headers()
        .get("X-Hub-Signature-256")
        .map(|v| v.to_str().unwrap_or_default());
    if let Err(e) = signature::verify(secret, &body, header) {
        core.metrics.signature_failures.inc();
        outcome(if header.is_none() {
            "unsigned"
        } else {
            "forged"
        });
        return Err(ApiError::field(
            ErrorCode::InvalidSignature,
            "X-Hub-Signature-256",
            e.to_string(),
        ));
    }
    let parsed = webhook::parse(&body);
    // A database that does not answer must not hold Meta's request open: past the
    // connect timeout the webhook is answered 503 and Meta retries. What was still
    // committed meanwhile is recognised as a duplicate then.
    let wait = Duration::from_secs(core.settings.database.connect_timeout_secs);
    let received =
        match tokio::time::timeout(wait, intake::receive(core, &state.registry, parsed)).await {
            Ok(received) => received,
            Err(_) => Err(IntakeError::Storage(
                crate::storage::StorageError::Unavailable(format!(
                    "no commit within {} s",
                    wait.as_secs()
                )),
            )),
        };
    core.metrics
        .webhook_seconds
        .observe(arrived.elapsed().as_secs_f64());
    match received {
        Ok(receipt) => {
            outcome("accepted");
            Ok(HttpResponse::Ok().json(&receipt))
        }
        Err(e @ IntakeError::Unroutable(_)) => {
            outcome("unpreparable");
            Err(ApiError::internal_logged(&core.log, &e.to_string()))
        }
        Err(IntakeError::Storage(e)) if !e.is_transient() => {
            // Not the database being away: a 500 whose cause is logged with the
            // request id it carries (Meta retries it all the same).
            outcome("failed");
            Err(ApiError::internal_logged(
                &core.log,
                &format!("webhook not committed: {e}"),
            ))
        }
        Err(IntakeError::Storage(e)) => {
            outcome("unavailable");
            slog::warn!(core.log, "webhook not committed; answered 503 so Meta retries"; "error" => %e);
            Err(ApiError::new(
                ErrorCode::Unavailable,
                "the inbox is unavailable; retry later",
            ))
        }
    }
}
