//! The HTTP surface, kept thin: handlers check and translate, then hand the work to
//! the writer or read through the pool; state and ordering live in the actors.

pub mod api;
pub mod ops;
pub mod webhook;

use std::sync::Arc;

use actix::Addr;
use actix_web::{web, HttpResponse};

use crate::actors::registry::Registry;
use crate::actors::Core;
use crate::error::{ApiError, ErrorCode};

pub struct AppState {
    pub core: Arc<Core>,
    pub registry: Addr<Registry>,
}

/// All routes; `main` and the tests build the same app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::field(ErrorCode::InvalidField, "query", err.to_string()).into()
    }))
    .app_data(web::PathConfig::default().error_handler(|err, _req| {
        ApiError::field(ErrorCode::InvalidField, "path", err.to_string()).into()
    }))
    .service(
        web::resource("/webhooks/whatsapp")
            .route(web::get().to(webhook::verify))
            .route(web::post().to(webhook::receive)),
    )
    .route("/healthz", web::get().to(ops::healthz))
    .route("/readyz", web::get().to(ops::readyz))
    .route("/metrics", web::get().to(ops::metrics))
    .service(
        web::scope("/v1")
            .route("/contacts", web::get().to(api::list_contacts))
            .route("/conversations", web::get().to(api::list_conversations))
            .route(
                "/conversations/{id}/messages",
                web::get().to(api::list_messages),
            ),
    )
    .default_service(web::to(not_found));
}

async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint",
    ))
}
