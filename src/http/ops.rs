//! `/healthz` (the process answers), `/readyz` (database reachable, actor system
//! answering) and `/metrics` (Prometheus text).

use std::time::Duration;

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::actors::registry::Ping;
use crate::error::{ApiError, ErrorCode};
use crate::storage;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let settings = &state.core.settings;
    if let Some(problem) = state
        .core
        .writer
        .health()
        .problem(crate::writer_stall_limit(settings))
    {
        slog::warn!(state.core.log, "readiness: the writer cannot take work"; "problem" => &problem);
        return Err(ApiError::field(ErrorCode::Unavailable, "writer", problem));
    }
    let (pool, vault) = (state.core.pool.clone(), state.core.keyring.clone());
    let started = std::time::Instant::now();
    // A database that accepts connections but never answers would hold the probe for
    // ever: it gets as long as a connection may take to open. A key store database of
    // its own is asked too: without it no new contact can be created.
    let wait = Duration::from_secs(settings.database.connect_timeout_secs);
    let ping = web::block(move || {
        storage::with_conn(&pool, |conn| {
            storage::ping(conn)?;
            vault.with_store(conn, storage::ping)
        })
    });
    tokio::time::timeout(wait, ping)
        .await
        .map_err(|_| ApiError::field(ErrorCode::Unavailable, "database", "database unreachable"))?
        .map_err(|e| ApiError::internal_logged(&state.core.log, &format!("readiness check: {e}")))?
        .map_err(|e| {
            // The driver's message names hosts and users: the log has it, the
            // unauthenticated caller does not.
            slog::warn!(state.core.log, "readiness: database unreachable"; "error" => %e);
            ApiError::field(ErrorCode::Unavailable, "database", "database unreachable")
        })?;
    let db_ms = started.elapsed().as_secs_f64() * 1000.0;
    let tenants = tokio::time::timeout(Duration::from_secs(2), state.registry.send(Ping))
        .await
        .map_err(|_| {
            ApiError::field(
                ErrorCode::Unavailable,
                "actors",
                "the actor system does not answer",
            )
        })?
        .map_err(|_| {
            ApiError::field(
                ErrorCode::Unavailable,
                "actors",
                "the actor system has stopped",
            )
        })?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "status": "ready",
        "database_ms": db_ms,
        "tenant_actors": tenants,
        "writer_queue": state.core.writer.queue_len(),
    })))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.core.metrics.render())
}
