//! The error policy of the HTTP API, in one place. Every refusal is a status code and
//! `{"error": {"code", "message", "field"}}` naming what was wrong. Storage errors map
//! as: not found → 404; a value breaking a rule → 422 `invalid_field` naming the field
//! and the [`Rule`] it broke; a clash with what is stored → 409 with a code naming the rule; database
//! unavailable, pool timeout or lock → 503 (retry); anything else → 500, its cause in
//! the log under a request id that the response carries too (`request_id` in the body
//! and the `X-Request-Id` header).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::rules::{Conflict, Rule};
use crate::storage::StorageError;

/// The error codes of the JSON body; one enum so they stay consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// 422: a field breaks a rule of its own; the body names the field and the rule.
    InvalidField(Rule),
    /// 422: an `Idempotency-Key` given again with another request.
    IdempotencyKeyReused,
    PayloadTooLarge,
    /// The client did not send its request within `server.client_timeout_ms`.
    RequestTimeout,
    InvalidSignature,
    NotConfigured,
    Unavailable,
    Internal,
    /// 409: valid, but against a rule of what is stored; the code names the rule.
    Conflict(Conflict),
    /// 410: what was there is gone for good (an expired export); the code says why.
    Gone(&'static str),
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::InvalidField(_) => "invalid_field",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::NotConfigured => "not_configured",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Conflict(rule) => rule.as_str(),
            ErrorCode::Gone(rule) => rule,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// What went wrong, for the log only (a 500's cause).
    pub cause: Option<String>,
    /// The id a 500's cause is logged under, shown to the caller.
    pub request_id: Option<String>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<Rule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
            cause: None,
            request_id: None,
        }
    }

    pub fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: Some(field.to_string()),
            cause: None,
            request_id: None,
        }
    }

    /// A 422: `field` (a dotted path) breaks `rule`; `message` says how.
    pub fn invalid(rule: Rule, field: &str, message: impl Into<String>) -> ApiError {
        ApiError::field(ErrorCode::InvalidField(rule), field, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    /// A 500 whose cause the `/v1` scope's middleware logs under the request id it
    /// gives the answer.
    pub fn internal(cause: impl Into<String>) -> ApiError {
        ApiError {
            cause: Some(cause.into()),
            ..ApiError::new(ErrorCode::Internal, "internal error")
        }
    }

    /// A 500 whose cause `log` records under a new request id, which the answer
    /// carries too (for handlers outside the `/v1` scope's middleware).
    pub fn internal_logged(log: &slog::Logger, cause: &str) -> ApiError {
        let id = uuid::Uuid::now_v7().to_string();
        slog::error!(log, "request failed"; "request_id" => &id, "cause" => cause);
        ApiError {
            cause: Some(cause.to_string()),
            request_id: Some(id),
            ..ApiError::new(ErrorCode::Internal, "internal error")
        }
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
            ErrorCode::InvalidField(_) | ErrorCode::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::NotConfigured | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Conflict(_) => StatusCode::CONFLICT,
            ErrorCode::Gone(_) => StatusCode::GONE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(id) = &self.request_id {
            response.insert_header(("X-Request-Id", id.as_str()));
        }
        response.json(Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                rule: match self.code {
                    ErrorCode::InvalidField(rule) => Some(rule),
                    _ => None,
                },
                request_id: self.request_id.as_deref(),
            },
        })
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        match e {
            StorageError::NotFound => ApiError::not_found("resource"),
            StorageError::Validation {
                field,
                rule,
                message,
            } => ApiError::invalid(rule, field, message),
            StorageError::IdempotencyKeyReused => ApiError::field(
                ErrorCode::IdempotencyKeyReused,
                "Idempotency-Key",
                "this Idempotency-Key was used for another request; nothing was sent",
            ),
            StorageError::Conflict { code, message } => {
                ApiError::new(ErrorCode::Conflict(code), message)
            }
            e if e.is_transient() => ApiError::new(
                ErrorCode::Unavailable,
                "the database is unavailable; retry later",
            ),
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<crate::rules::FieldError> for ApiError {
    fn from(e: crate::rules::FieldError) -> ApiError {
        ApiError::invalid(e.rule, &e.field, e.message)
    }
}

impl From<crate::actors::submit::SendRefused> for ApiError {
    fn from(e: crate::actors::submit::SendRefused) -> ApiError {
        use crate::actors::submit::SendRefused;
        match e {
            SendRefused::Invalid(invalid) => invalid.into(),
            SendRefused::UnknownNumber => ApiError::field(
                ErrorCode::NotFound,
                "from_phone_number_id",
                "no phone number of yours has this id",
            ),
            SendRefused::UnknownMessage => ApiError::field(
                ErrorCode::NotFound,
                "message_id",
                "no inbound message of yours has this id",
            ),
            SendRefused::Storage(e) => e.into(),
        }
    }
}

/// A read on the blocking pool that did not return: it panicked (a bug), or the pool
/// was gone (the server stopping). Either way a 500 whose cause is logged under the
/// request id, not a 503 that would send the client back to the same bug.
impl From<actix_web::error::BlockingError> for ApiError {
    fn from(_: actix_web::error::BlockingError) -> ApiError {
        ApiError::internal("a blocking read panicked or was cancelled")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code of the enum is produced somewhere outside this module: a code that
    /// nothing produces is either dead or a refusal that lost its code on the way.
    #[test]
    fn every_error_code_is_produced_somewhere() {
        fn sources(dir: &std::path::Path, out: &mut String) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    sources(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("error.rs")
                    && !path.ends_with("rules.rs")
                {
                    // Code only: a code named in a comment is not produced.
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    for line in text.lines() {
                        let code = line.split("//").next().unwrap_or_default();
                        out.push_str(code);
                        out.push('\n');
                    }
                }
            }
        }
        let mut code_text = String::new();
        sources(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut code_text,
        );
        // Every code, each with what produces it outside this module: a new code does
        // not compile here until the test says how it is produced.
        let produced_by = |code: ErrorCode| -> Vec<String> {
            let variant = |name: &str| vec![format!("ErrorCode::{name}")];
            match code {
                ErrorCode::Unauthorized => {
                    vec![
                        "ErrorCode::Unauthorized".into(),
                        "ApiError::unauthorized(".into(),
                    ]
                }
                ErrorCode::NotFound => {
                    vec!["ErrorCode::NotFound".into(), "ApiError::not_found(".into()]
                }
                ErrorCode::Forbidden => variant("Forbidden"),
                ErrorCode::MethodNotAllowed => variant("MethodNotAllowed"),
                ErrorCode::InvalidField(_) => vec!["ApiError::invalid(".into()],
                ErrorCode::PayloadTooLarge => variant("PayloadTooLarge"),
                ErrorCode::RequestTimeout => variant("RequestTimeout"),
                ErrorCode::InvalidSignature => variant("InvalidSignature"),
                ErrorCode::NotConfigured => variant("NotConfigured"),
                ErrorCode::Unavailable => variant("Unavailable"),
                ErrorCode::Gone(_) => variant("Gone("),
                // From storage errors, below.
                ErrorCode::Internal | ErrorCode::Conflict(_) | ErrorCode::IdempotencyKeyReused => {
                    vec![]
                }
            }
        };
        for code in [
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::InvalidField(Rule::Required),
            ErrorCode::PayloadTooLarge,
            ErrorCode::RequestTimeout,
            ErrorCode::InvalidSignature,
            ErrorCode::NotConfigured,
            ErrorCode::Unavailable,
            ErrorCode::Gone("export_expired"),
        ] {
            let needles = produced_by(code);
            assert!(
                needles
                    .iter()
                    .any(|needle| code_text.contains(needle.as_str())),
                "ErrorCode::{code:?} is never produced"
            );
        }
        // Every conflict's rule is raised somewhere, and the key reuse is found.
        for conflict in Conflict::ALL {
            assert!(
                code_text.contains(&format!("Conflict::{conflict:?}")),
                "the conflict {conflict} is never produced"
            );
        }
        assert!(code_text.contains("StorageError::IdempotencyKeyReused"));
        // Produced here, from storage errors: Internal, Conflict and NotFound.
        let internal = ApiError::from(StorageError::Corrupt("x".into()));
        assert_eq!(internal.code, ErrorCode::Internal);
        assert_eq!(internal.cause.as_deref(), Some("stored data is corrupt: x"));
        let conflict = ApiError::from(StorageError::Conflict {
            code: Conflict::NumberRegistered,
            message: "m".into(),
        });
        assert_eq!(conflict.status_code(), StatusCode::CONFLICT);
        assert_eq!(conflict.code.as_str(), "number_registered");
        let invalid = ApiError::from(StorageError::Validation {
            field: "holder_email",
            rule: Rule::Format,
            message: "m".into(),
        });
        assert_eq!(invalid.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(invalid.field.as_deref(), Some("holder_email"));
        assert_eq!(invalid.code, ErrorCode::InvalidField(Rule::Format));
        let reused = ApiError::from(StorageError::IdempotencyKeyReused);
        assert_eq!(reused.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reused.code.as_str(), "idempotency_key_reused");
    }

    #[test]
    fn every_code_maps_to_a_status_and_json_body() {
        let all = [
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict(Conflict::AlreadyExtended),
            ErrorCode::InvalidField(Rule::Length),
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::PayloadTooLarge,
            ErrorCode::RequestTimeout,
            ErrorCode::InvalidSignature,
            ErrorCode::NotConfigured,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::Gone("export_expired"),
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
