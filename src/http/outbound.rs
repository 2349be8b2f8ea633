//! The tenant API's send side: `POST /v1/messages` checks a send (Meta's limits, the
//! number is the tenant's, the contact's window and restrictions), commits it to the
//! outbox and wakes the number's sender; `GET /v1/messages/{id}` shows where it stands.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::api::{authenticate, is_id, read};
use super::AppState;
use crate::actors::sender;
use crate::error::{ApiError, ErrorCode};
use crate::ids::{MessageId, PhoneNumberId, TenantId, Wamid};
use crate::storage::contacts::{ContactIdentifiers, ContactQuestion, Lookup};
use crate::storage::outbox::{self, NewSend};
use crate::storage::templates::{self, Known};
use crate::storage::tenants;
use crate::whatsapp::outbound::{self, Recipient, SendRequest, Target};

#[derive(Serialize)]
struct SendAnswer {
    id: String,
    state: String,
}

/// The largest send request taken: far above what Meta's limits let any message be.
const SEND_BODY_MAX: usize = 256 * 1024;

/// The request body, refused with the JSON error shape past [`SEND_BODY_MAX`].
async fn read_body(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    use futures_util::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::field(
                ErrorCode::InvalidField,
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

pub async fn send_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = authenticate(&state, &req).await?;
    let body = read_body(payload).await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::field(ErrorCode::InvalidField, "body", format!("not JSON: {e}")))?;
    let request = outbound::parse_send(&value)
        .map_err(|e| ApiError::field(ErrorCode::InvalidField, &e.field, e.message))?;
    let core = &state.core;
    let idempotency = idempotency_key(&req)?.map(|key| {
        let bidx = core
            .keyring
            .blind_index(tenant.as_str(), "idempotency_key", &key);
        let hash = hex::encode(Sha256::digest(value.to_string().as_bytes()));
        (bidx, hash)
    });
    let number = request.from_phone_number_id.clone();
    let replayed = {
        let tenant = tenant.clone();
        let idempotency = idempotency.clone();
        read(&state, move |conn, _| {
            if !tenants::owns_number(conn, &tenant, &number)? {
                return Ok(None);
            }
            match &idempotency {
                Some((bidx, hash)) => outbox::replay(conn, &tenant, bidx, hash).map(Some),
                None => Ok(Some(None)),
            }
        })
        .await?
    };
    let Some(replayed) = replayed else {
        return Err(ApiError::field(
            ErrorCode::NotFound,
            "from_phone_number_id",
            "no phone number of yours has this id",
        ));
    };
    if let Some(first) = replayed {
        return Ok(accepted(first.id, first.state));
    }
    let marketing = check_template(&state, &tenant, &request).await?;
    let mut send = prepare(&state, &tenant, &request, idempotency).await?;
    send.marketing = marketing;
    let accepted_send = core
        .writer
        .write(Some(tenant.clone()), move |conn| {
            outbox::accept(conn, &send)
        })
        .await
        .inspect_err(|e| {
            if let crate::storage::StorageError::Conflict { code, .. } = e {
                core.metrics
                    .outbound_refusals
                    .with_label_values(&[code])
                    .inc();
            }
        })?;
    sender::wake(core, &request.from_phone_number_id);
    Ok(accepted(accepted_send.id, accepted_send.state))
}

/// A template send against the template synced for the number's account: it exists,
/// is approved, and gets its parameters. Whether it is marketing. Before the first
/// sync nothing is known and Meta judges it.
async fn check_template(
    state: &AppState,
    tenant: &TenantId,
    request: &SendRequest,
) -> Result<bool, ApiError> {
    if request.kind != outbound::OutboundKind::Template {
        return Ok(false);
    }
    let name = request.message["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let language = request.message["language"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let known = {
        let (tenant, number, name, language) = (
            tenant.clone(),
            request.from_phone_number_id.clone(),
            name.clone(),
            language.clone(),
        );
        read(state, move |conn, _| {
            templates::template_for_number(conn, &tenant, &number, &name, &language)
        })
        .await?
    };
    let template = match known {
        Known::Unsynced => return Ok(false),
        Known::Missing => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "template.name",
                format!("the number's account has no template {name:?} in {language:?}"),
            ))
        }
        Known::Found(template) => template,
    };
    if template.status != "APPROVED" {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "template.name",
            format!("template {name:?} is {}, not APPROVED", template.status),
        ));
    }
    outbound::check_template_fits(&request.message, &template.components)
        .map_err(|e| ApiError::field(ErrorCode::InvalidField, &e.field, e.message))?;
    Ok(template.category.eq_ignore_ascii_case("MARKETING"))
}

#[derive(Serialize)]
struct TemplatePage {
    items: Vec<crate::whatsapp::graph::Template>,
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

fn accepted(id: String, state: String) -> HttpResponse {
    HttpResponse::Accepted().json(SendAnswer { id, state })
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(header) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    match header.to_str() {
        Ok(key) if !key.trim().is_empty() && key.len() <= 255 => Ok(Some(key.trim().to_string())),
        _ => Err(ApiError::field(
            ErrorCode::InvalidField,
            "Idempotency-Key",
            "must be 1 to 255 visible characters",
        )),
    }
}

/// The send as stored: its contact (found, or created for a first template), Meta's
/// body and the content sealed under the contact's key.
async fn prepare(
    state: &AppState,
    tenant: &TenantId,
    request: &SendRequest,
    idempotency: Option<(String, String)>,
) -> Result<NewSend, ApiError> {
    let core = &state.core;
    let (contact_id, key_id, key) = match &request.to {
        Target::Recipient(recipient) => {
            let ids = match recipient {
                Recipient::WaId(wa_id) => ContactIdentifiers {
                    user_id: None,
                    wa_id: Some(wa_id.clone()),
                },
                Recipient::UserId(user_id) => ContactIdentifiers {
                    user_id: Some(user_id.clone()),
                    wa_id: None,
                },
            };
            let question = ContactQuestion {
                tenant_id: tenant.clone(),
                phone_number_id: PhoneNumberId(request.from_phone_number_id.clone()),
                ids: ids.clone(),
            };
            let contact = match core.readers.look_up(question).await? {
                Lookup::Found(contact, _) => contact,
                // A contact never seen has no window: only a template creates it.
                Lookup::Absent if request.kind.needs_window() => {
                    core.metrics
                        .outbound_refusals
                        .with_label_values(&[outbox::OUTSIDE_WINDOW])
                        .inc();
                    return Err(ApiError::new(
                        ErrorCode::Conflict(outbox::OUTSIDE_WINDOW),
                        outbox::OUTSIDE_WINDOW_MESSAGE,
                    ));
                }
                Lookup::Absent | Lookup::NeedsWriter => {
                    core.writer.resolve(tenant.clone(), ids).await?
                }
            };
            (contact.contact_id, contact.key_id, contact.key)
        }
        Target::ReadReceipt { message_id } => {
            let bidx = core
                .keyring
                .wamid_index(tenant.as_str(), &Wamid(message_id.clone()));
            let tenant = tenant.clone();
            read(state, move |conn, vault| {
                outbox::message_contact(conn, vault, &tenant, &bidx)
            })
            .await?
            .ok_or_else(|| {
                ApiError::field(
                    ErrorCode::NotFound,
                    "message_id",
                    "no inbound message of yours has this id",
                )
            })?
        }
    };
    let id = MessageId::generate();
    let body = outbound::graph_body(request, id.as_str());
    let request_ct = outbox::seal_request(&key, tenant, &id, &body)?;
    let content_ct = match request.kind {
        outbound::OutboundKind::Read => None,
        _ => Some(outbox::seal_content(
            &key,
            tenant,
            &id,
            &request.message,
            request.context.as_ref(),
        )?),
    };
    let now = core.clock.now_ms();
    let deadline = now + (core.settings.outbound.retry_deadline_secs * 1000) as i64;
    Ok(NewSend {
        id,
        tenant_id: tenant.clone(),
        phone_number_id: PhoneNumberId(request.from_phone_number_id.clone()),
        contact_id,
        key_id,
        kind: request.kind.as_str().to_string(),
        needs_window: request.kind.needs_window(),
        marketing: false,
        content_ct,
        request_ct,
        idempotency,
        now_ms: now,
        deadline_ms: deadline,
    })
}

#[derive(Serialize)]
struct SendView {
    id: String,
    state: String,
    wamid: Option<String>,
    error: Option<Value>,
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
        outbox::send_state_opened(conn, vault, &tenant, &id)
    })
    .await?
    .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no message of yours has this id"))?;
    Ok(HttpResponse::Ok().json(SendView {
        id: found.id,
        state: found.state,
        wamid: found.wamid,
        error: found
            .error_json
            .as_deref()
            .and_then(|e| serde_json::from_str(e).ok()),
    }))
}
