//! The tenant API's data-subject requests (`/v1/privacy/requests`): a business
//! forwards its customer's request, having verified them; Converra takes it into the
//! tenant's queue and runs it by itself ([`crate::actors::compliance`]). The subject
//! is named by wa_id or user_id, never shown back: a request names its contact by id.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::{authenticate, is_id, page, read, PageQuery};
use super::outbound::read_json;
use super::AppState;
use crate::clock::rfc3339_ms as rfc3339;
use crate::compliance::{dates, requests};
use crate::error::ApiError;
use crate::ids::TenantId;
use crate::rules::Conflict;
use crate::rules::Rule;
use crate::storage::privacy::{self, Kind, Request, State, Subject};
use crate::storage::rectification::Changes;
use crate::whatsapp::outbound::{recipient_of, Recipient};

#[derive(Serialize)]
pub(super) struct RequestView {
    id: String,
    kind: &'static str,
    state: &'static str,
    contact_id: Option<String>,
    received_at: String,
    /// The end of the day it is due (UTC).
    due_at: String,
    extended_due_at: Option<String>,
    /// Whole days left until it is due; negative once overdue (open requests only).
    days_left: Option<i64>,
    completed_at: Option<String>,
    reason: Option<String>,
    lifted_at: Option<String>,
    /// Where a completed access or portability request's export is downloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    export_url: Option<String>,
    /// What it did, for the kinds that say (an erasure: keys destroyed, rows deleted,
    /// and the day raw payloads that name no subject become unreadable).
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Value>,
}

/// The end (UTC) of day `day` (YYYY-MM-DD), as RFC 3339.
pub(super) fn end_of(day: &str) -> String {
    format!("{day}T23:59:59.999Z")
}

pub(super) fn view(request: Request, today: time::Date) -> RequestView {
    let open = matches!(request.state, State::Received | State::InProgress);
    let days_left = time::Date::parse(
        request.due_on(),
        &time::format_description::well_known::Iso8601::DATE,
    )
    .ok()
    .filter(|_| open)
    .map(|due| (due - today).whole_days());
    RequestView {
        kind: request.kind.as_str(),
        state: request.state.as_str(),
        contact_id: request.contact_id.map(|c| c.0),
        received_at: rfc3339(request.received_at),
        due_at: end_of(&request.due_on),
        extended_due_at: request.extended_due_on.as_deref().map(end_of),
        days_left,
        completed_at: request.completed_at.map(rfc3339),
        reason: request.reason,
        lifted_at: request.lifted_at.map(rfc3339),
        export_url: (matches!(request.kind, Kind::Access | Kind::Portability)
            && request.state == State::Completed)
            .then(|| format!("/v1/privacy/requests/{}/export", request.id)),
        outcome: request.outcome,
        id: request.id,
    }
}

/// The subject's keyed hashes, from the request's `wa_id` or `user_id` (one of them).
fn subject_of(
    state: &AppState,
    tenant: &TenantId,
    body: &serde_json::Map<String, Value>,
) -> Result<Subject, ApiError> {
    let text = |field: &'static str| -> Result<Option<&str>, ApiError> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text)),
            Some(_) => Err(ApiError::invalid(
                Rule::Length,
                field,
                format!("{field} must be a non-empty string"),
            )),
        }
    };
    let keyring = &state.core.keyring;
    match (text("wa_id")?, text("user_id")?) {
        (Some(wa_id), None) => match recipient_of(wa_id) {
            Some(Recipient::WaId(wa_id)) => Ok(Subject::of_wa_id(keyring, tenant, &wa_id)),
            _ => Err(ApiError::invalid(
                Rule::Format,
                "wa_id",
                "wa_id must be a phone number in international format (digits)",
            )),
        },
        (None, Some(user_id)) => match recipient_of(user_id) {
            Some(Recipient::UserId(user_id)) => Ok(Subject::of_user_id(keyring, tenant, &user_id)),
            _ => Err(ApiError::invalid(
                Rule::Format,
                "user_id",
                "user_id must be a BSUID as Meta gives it (CC.alphanumeric)",
            )),
        },
        (Some(_), Some(_)) => Err(ApiError::invalid(
            Rule::Combination,
            "user_id",
            "name the subject by wa_id or by user_id, not both",
        )),
        (None, None) => Err(ApiError::invalid(
            Rule::Required,
            "wa_id",
            "the subject is required: wa_id or user_id",
        )),
    }
}

/// `POST /v1/privacy/requests`.
pub async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let body = object_of(
        payload,
        &["kind", "wa_id", "user_id", "changes"],
        "a privacy request",
    )
    .await?;
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let kind = body
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::parse)
        .ok_or_else(|| {
            ApiError::invalid(
                Rule::OneOf,
                "kind",
                format!("kind must be one of {}", kinds.join(", ")),
            )
        })?;
    // A rectification names its changes; no other kind has any.
    let changes = match (kind, body.get("changes")) {
        (Kind::Rectification, Some(changes)) => {
            Changes::from_json(changes)?;
            Some(changes.clone())
        }
        (Kind::Rectification, None) => {
            return Err(ApiError::invalid(
                Rule::Required,
                "changes",
                "a rectification names its changes, e.g. {\"profile_name\": \"...\"}",
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                Rule::Combination,
                "changes",
                "only a rectification has changes",
            ))
        }
        (_, None) => None,
    };
    let subject = subject_of(&state, &tenant, &body)?;
    let holidays = state.core.settings.compliance.holiday_dates();
    let domain = crate::email::message_domain(&state.core.settings.email.from);
    let written = tenant.clone();
    let clock = state.core.clock.clone();
    let vault = state.core.keyring.clone();
    let request = state
        .core
        .writer
        .write(Some(tenant), move |conn| {
            // Stamped where the request takes its place in the tenant's queue.
            let now = clock.now_ms();
            match &changes {
                Some(changes) => requests::submit_rectification(
                    conn, &vault, &written, &subject, changes, &holidays, &domain, now,
                ),
                None => requests::submit(conn, &written, kind, &subject, &holidays, &domain, now),
            }
        })
        .await?;
    let now = state.core.clock.now_ms();
    state
        .core
        .compliance_wanted
        .store(true, std::sync::atomic::Ordering::Release);
    let today = dates::day_of(now);
    Ok(HttpResponse::Created().json(view(request, today)))
}

/// The caller's tenant, and the request id of the path (any id that is not one of
/// Converra's is not found).
pub(super) async fn caller_and_request(
    state: &AppState,
    req: &HttpRequest,
    id: web::Path<String>,
) -> Result<(TenantId, String), ApiError> {
    let tenant = authenticate(state, req).await?;
    let id = id.into_inner();
    if !is_id(&id) {
        return Err(ApiError::not_found("privacy request"));
    }
    Ok((tenant, id))
}

/// `GET /v1/privacy/requests/{id}`.
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, id) = caller_and_request(&state, &req, id).await?;
    let found = read(&state, move |conn, _| privacy::get(conn, &tenant, &id)).await?;
    let request = found.ok_or_else(|| ApiError::not_found("privacy request"))?;
    let today = dates::day_of(state.core.clock.now_ms());
    Ok(HttpResponse::Ok().json(view(request, today)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
    /// `open`: received or in progress only.
    state: Option<String>,
    /// `true`: open requests past their due day only.
    overdue: Option<String>,
}

/// `GET /v1/privacy/requests`: the tenant's requests, newest first, with the days
/// left for the open ones.
pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let query = query.into_inner();
    let open_only = match query.state.as_deref() {
        None => false,
        Some("open") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                Rule::OneOf,
                "state",
                "state must be open (or left out for all)",
            ))
        }
    };
    let overdue = match query.overdue.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                Rule::Type,
                "overdue",
                "overdue must be true or false",
            ))
        }
    };
    let paging = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let (limit, cursor) = (paging.limit()?, paging.cursor()?);
    let found = read(&state, move |conn, _| {
        privacy::list(
            conn,
            &tenant,
            open_only || overdue,
            cursor.as_deref(),
            limit,
        )
    })
    .await?;
    let today = dates::day_of(state.core.clock.now_ms());
    // The page is cut by the database; the overdue ones of it are kept (a page may
    // hold fewer than `limit`, and `next_cursor` goes on from the page's last row).
    let next_cursor = (found.len() as i64 == limit)
        .then(|| found.last().map(|r| r.id.clone()))
        .flatten();
    let items: Vec<RequestView> = found
        .into_iter()
        .map(|r| view(r, today))
        .filter(|v| !overdue || v.days_left.is_some_and(|left| left < 0))
        .collect();
    if overdue {
        return Ok(HttpResponse::Ok().json(serde_json::json!({
            "items": items, "next_cursor": next_cursor
        })));
    }
    Ok(page(items, limit, |v| &v.id))
}

/// `POST /v1/privacy/requests/{id}/extend` with `{"months": 1 or 2, "reason"}`: moves
/// an open request's deadline, once, before its original due day has passed; the
/// account holder is emailed the reason.
pub async fn extend(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (tenant, id) = caller_and_request(&state, &req, id).await?;
    let body = object_of(payload, &["months", "reason"], "an extension").await?;
    let months = match body.get("months").and_then(Value::as_u64) {
        Some(months @ (1 | 2)) => months as u32,
        _ => {
            return Err(ApiError::invalid(
                Rule::OneOf,
                "months",
                "months must be 1 or 2: a deadline is extended by up to two months",
            ))
        }
    };
    let reason = reason_of(&body, "emailed to the account holder")?;
    let holidays = state.core.settings.compliance.holiday_dates();
    let domain = crate::email::message_domain(&state.core.settings.email.from);
    let clock = state.core.clock.clone();
    let written = tenant.clone();
    let extended = state
        .core
        .writer
        .write(Some(tenant), move |conn| {
            requests::extend(
                conn,
                &written,
                &id,
                months,
                &reason,
                &holidays,
                &domain,
                clock.now_ms(),
            )
        })
        .await?;
    let today = dates::day_of(state.core.clock.now_ms());
    Ok(HttpResponse::Ok().json(view(extended, today)))
}

/// A JSON object's `reason`: required, a non-empty text of at most 1000 characters.
fn reason_of(body: &serde_json::Map<String, Value>, what: &str) -> Result<String, ApiError> {
    match body.get("reason").and_then(Value::as_str).map(str::trim) {
        Some(reason) if !reason.is_empty() && reason.chars().count() <= 1000 => {
            Ok(reason.to_string())
        }
        _ => Err(ApiError::invalid(
            Rule::Length,
            "reason",
            format!("reason is required: a non-empty text of at most 1000 characters, {what}"),
        )),
    }
}

/// A request body: a JSON object of `allowed` fields only.
pub(super) async fn object_of(
    payload: web::Payload,
    allowed: &[&str],
    what: &str,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let Value::Object(body) = read_json(payload).await? else {
        return Err(ApiError::invalid(
            Rule::Type,
            "body",
            "must be a JSON object",
        ));
    };
    if let Some(unknown) = body.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(ApiError::invalid(
            Rule::Unknown,
            unknown,
            format!("{unknown} is not a field of {what}"),
        ));
    }
    Ok(body)
}

/// `POST /v1/contacts/{id}/minor` with `{"reason"}`: the contact is a minor, so its
/// data is erased promptly, through an erasure request whose outcome says why
/// (202: it runs by itself).
pub async fn mark_minor(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let contact_id = path.into_inner();
    if !is_id(&contact_id) {
        return Err(ApiError::not_found("contact"));
    }
    let body = object_of(payload, &["reason"], "a minor's marking").await?;
    let reason = reason_of(&body, "kept with the erasure")?;
    let holidays = state.core.settings.compliance.holiday_dates();
    let domain = crate::email::message_domain(&state.core.settings.email.from);
    let clock = state.core.clock.clone();
    let written = tenant.clone();
    let request = state
        .core
        .writer
        .write(Some(tenant), move |conn| {
            requests::erase_minor(
                conn,
                &written,
                &contact_id,
                &reason,
                &holidays,
                &domain,
                clock.now_ms(),
            )
        })
        .await
        .map_err(|e| match e {
            crate::storage::StorageError::NotFound => ApiError::not_found("contact"),
            other => other.into(),
        })?;
    state
        .core
        .compliance_wanted
        .store(true, std::sync::atomic::Ordering::Release);
    let today = dates::day_of(state.core.clock.now_ms());
    Ok(HttpResponse::Accepted().json(view(request, today)))
}

/// `POST /v1/privacy/requests/{id}/lift`: ends a completed restriction or objection.
pub async fn lift(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, id) = caller_and_request(&state, &req, id).await?;
    let now = state.core.clock.now_ms();
    let written = tenant.clone();
    let lifted = state
        .core
        .writer
        .write(Some(tenant), move |conn| {
            let request =
                privacy::get(conn, &written, &id)?.ok_or(crate::storage::StorageError::NotFound)?;
            let liftable = matches!(request.kind, Kind::Restriction | Kind::Objection);
            if !liftable || request.state != State::Completed || request.lifted_at.is_some() {
                return Err(crate::storage::StorageError::Conflict {
                    code: Conflict::NotLiftable,
                    message:
                        "only a completed restriction or objection not lifted yet can be lifted"
                            .into(),
                });
            }
            privacy::lift(conn, &request, now)
        })
        .await?;
    let today = dates::day_of(now);
    Ok(HttpResponse::Ok().json(view(lifted, today)))
}
