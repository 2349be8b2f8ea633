//! `POST /v1/privacy/enquiries` and `GET /v1/privacy/enquiries/{id}`: a tenant's
//! privacy enquiry, due five business days after receipt, answered by the operator
//! ([`crate::compliance::enquiries`]).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;

use super::api::{authenticate, is_id, read};
use super::privacy::{end_of, object_of};
use super::AppState;
use crate::clock::rfc3339_ms as rfc3339;
use crate::compliance::enquiries;
use crate::error::ApiError;
use crate::rules::Rule;
use crate::storage::enquiries::Enquiry;

/// The longest subject and message taken, in characters.
const SUBJECT_MAX: usize = 200;
const MESSAGE_MAX: usize = 10_000;

#[derive(Serialize)]
struct EnquiryView {
    id: String,
    state: String,
    subject: String,
    message: String,
    received_at: String,
    due_at: String,
    answered_at: Option<String>,
    answer: Option<String>,
}

fn view(enquiry: Enquiry) -> EnquiryView {
    EnquiryView {
        due_at: end_of(&enquiry.due_on),
        received_at: rfc3339(enquiry.received_at),
        answered_at: enquiry.answered_at.map(rfc3339),
        id: enquiry.id,
        state: enquiry.state,
        subject: enquiry.subject,
        message: enquiry.message,
        answer: enquiry.answer,
    }
}

/// A required text field of at most `max` characters.
fn text<'a>(
    body: &'a serde_json::Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<&'a str, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(ApiError::invalid(
            Rule::Required,
            field,
            format!("{field} is required"),
        )),
        Some(Value::String(text)) if !text.trim().is_empty() && text.chars().count() <= max => {
            Ok(text.trim())
        }
        Some(Value::String(_)) => Err(ApiError::invalid(
            Rule::Length,
            field,
            format!("{field} must be 1 to {max} characters"),
        )),
        Some(_) => Err(ApiError::invalid(
            Rule::Type,
            field,
            format!("{field} must be a string"),
        )),
    }
}

/// `POST /v1/privacy/enquiries` with `{"subject", "message"}` → 201.
pub async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let body = object_of(payload, &["subject", "message"], "an enquiry").await?;
    let subject = text(&body, "subject", SUBJECT_MAX)?.to_string();
    let message = text(&body, "message", MESSAGE_MAX)?.to_string();
    let core = &state.core;
    let (vault, clock) = (core.keyring.clone(), core.clock.clone());
    let holidays = core.settings.compliance.holiday_dates();
    let domain = crate::email::message_domain(&core.settings.email.from);
    let written = tenant.clone();
    let enquiry = core
        .writer
        .write(Some(tenant), move |conn| {
            enquiries::submit(
                conn,
                &vault,
                &written,
                &subject,
                &message,
                &holidays,
                &domain,
                clock.now_ms(),
            )
        })
        .await?;
    Ok(HttpResponse::Created().json(view(enquiry)))
}

/// `GET /v1/privacy/enquiries/{id}`: the tenant's own enquiries only.
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let id = id.into_inner();
    if !is_id(&id) {
        return Err(ApiError::not_found("enquiry"));
    }
    let found = read(&state, move |conn, vault| {
        crate::storage::enquiries::get(conn, vault, &tenant, &id)
    })
    .await?;
    Ok(HttpResponse::Ok().json(view(found.ok_or_else(|| ApiError::not_found("enquiry"))?)))
}
