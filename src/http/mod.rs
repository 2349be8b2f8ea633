//! The HTTP surface, kept thin: handlers check and translate, then hand the work to
//! the writer or read through the pool; state and ordering live in the actors.

pub mod api;
pub mod audit;
pub mod automations;
pub mod crm;
pub mod enquiries;
pub mod export;
pub mod media;
pub mod ops;
pub mod outbound;
pub mod policy;
pub mod privacy;
mod request_id;
pub mod retention;
pub mod usage;
pub mod views;
pub mod webhook;

use std::sync::Arc;

use actix::Addr;
use actix_web::{web, HttpResponse};

use crate::actors::registry::Registry;
use crate::actors::Core;
use crate::error::{ApiError, ErrorCode};
use crate::rules::Rule;

pub struct AppState {
    pub core: Arc<Core>,
    pub registry: Addr<Registry>,
}

/// All routes; `main` and the tests build the same app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::invalid(Rule::Unknown, "query", err.to_string()).into()
    }))
    .app_data(
        web::PathConfig::default().error_handler(|err, _req| {
            ApiError::invalid(Rule::Format, "path", err.to_string()).into()
        }),
    )
    .service(
        resource("/webhooks/whatsapp")
            .route(web::get().to(webhook::verify))
            .route(web::post().to(webhook::receive)),
    )
    .service(resource("/healthz").route(web::get().to(ops::healthz)))
    .service(resource("/readyz").route(web::get().to(ops::readyz)))
    .service(resource("/metrics").route(web::get().to(ops::metrics)))
    .service(
        web::scope("/v1")
            // The webhook path stays without it (it answers its own 500 with an id).
            .wrap(actix_web::middleware::from_fn(request_id::request_ids))
            .service(resource("/contacts").route(web::get().to(api::list_contacts)))
            .service(
                resource("/contacts/{id}")
                    .route(web::get().to(crm::get_contact))
                    .route(web::patch().to(crm::update_contact)),
            )
            .service(resource("/contacts/{id}/minor").route(web::post().to(privacy::mark_minor)))
            .service(
                resource("/conversations/{id}/close")
                    .route(web::post().to(crm::close_conversation)),
            )
            .service(
                resource("/conversations/{id}/reopen")
                    .route(web::post().to(crm::reopen_conversation)),
            )
            .service(resource("/messages").route(web::post().to(outbound::send_message)))
            .service(resource("/messages/{id}").route(web::get().to(outbound::get_message)))
            .service(resource("/messages/{id}/media").route(web::get().to(media::get_media)))
            .service(resource("/templates").route(web::get().to(outbound::list_templates)))
            .service(resource("/usage").route(web::get().to(usage::get_usage)))
            .service(
                resource("/automations")
                    .route(web::get().to(automations::list))
                    .route(web::post().to(automations::create)),
            )
            // Before `/automations/{id}`, which would take "runs" for an id.
            .service(resource("/automations/runs").route(web::get().to(automations::runs)))
            .service(
                resource("/automations/{id}")
                    .route(web::get().to(automations::get))
                    .route(web::put().to(automations::replace))
                    .route(web::delete().to(automations::delete)),
            )
            .service(
                resource("/retention")
                    .route(web::get().to(retention::get_policies))
                    .route(web::put().to(retention::put_policies)),
            )
            .service(resource("/retention/runs").route(web::get().to(retention::runs)))
            .service(resource("/audit").route(web::get().to(audit::entries)))
            .service(
                resource("/privacy/requests")
                    .route(web::get().to(privacy::list))
                    .route(web::post().to(privacy::submit)),
            )
            .service(resource("/privacy/requests/{id}").route(web::get().to(privacy::get)))
            .service(resource("/privacy/enquiries").route(web::post().to(enquiries::submit)))
            .service(resource("/privacy/enquiries/{id}").route(web::get().to(enquiries::get)))
            .service(resource("/privacy/processing").route(web::get().to(policy::get_processing)))
            .service(resource("/policy").route(web::get().to(policy::get_policy)))
            .service(resource("/privacy/requests/{id}/lift").route(web::post().to(privacy::lift)))
            .service(
                resource("/privacy/requests/{id}/extend").route(web::post().to(privacy::extend)),
            )
            .service(
                resource("/privacy/requests/{id}/export").route(web::get().to(export::download)),
            )
            .service(
                resource("/settings")
                    .route(web::get().to(automations::get_settings))
                    .route(web::put().to(automations::put_settings)),
            )
            .service(resource("/conversations").route(web::get().to(api::list_conversations)))
            .service(
                resource("/conversations/{id}/messages").route(web::get().to(api::list_messages)),
            ),
    )
    .default_service(web::to(not_found));
}

/// An endpoint; a method it does not take is a 405 with the JSON error body.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: actix_web::HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} {} is not allowed", req.method(), req.path()),
    ))
}

async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint",
    ))
}
