//! The error policy of the HTTP API, in one place. Every refusal is a status code and
//! `{"error": {"code", "message", "field"}}` naming what was wrong. Storage errors map
//! as: not found → 404; database unavailable, pool timeout or lock → 503 (retry);
//! anything else → 500 with the details only in the log.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::storage::StorageError;

/// The error codes of the JSON body; one enum so they stay consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    InvalidField,
    PayloadTooLarge,
    /// The client did not send its request within `server.client_timeout_ms`.
    RequestTimeout,
    InvalidSignature,
    NotConfigured,
    Unavailable,
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self.code {
            ErrorCode::Unauthorized | ErrorCode::InvalidSignature => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::InvalidField => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::NotConfigured | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        })
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        match e {
            StorageError::NotFound => ApiError::not_found("resource"),
            e if e.is_transient() => ApiError::new(
                ErrorCode::Unavailable,
                "the database is unavailable; retry later",
            ),
            _ => ApiError::new(ErrorCode::Internal, "internal error"),
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(_: actix_web::error::BlockingError) -> ApiError {
        ApiError::new(ErrorCode::Unavailable, "the server is shutting down")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_a_status_and_json_body() {
        let all = [
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::InvalidField,
            ErrorCode::PayloadTooLarge,
            ErrorCode::RequestTimeout,
            ErrorCode::InvalidSignature,
            ErrorCode::NotConfigured,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ];
        for code in all {
            let err = ApiError::field(code, "x", "m");
            assert!(err.status_code().is_client_error() || err.status_code().is_server_error());
        }
        let transient = ApiError::from(StorageError::Unavailable("down".into()));
        assert_eq!(transient.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            ApiError::from(StorageError::NotFound).status_code(),
            StatusCode::NOT_FOUND
        );
    }
}
