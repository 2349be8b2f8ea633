//! Access and portability exports (`GET /v1/privacy/requests/{id}/export`): one JSON
//! document per completed request, everything Converra holds about the subject in the
//! API's own shapes, led by a manifest. It is written as it is read, a page of
//! messages at a time, from the data as it is when downloaded: nothing of it is stored,
//! so nothing is left to delete when it expires (after the tenant's `exports` period)
//! or when the subject is erased, and memory stays flat however long the history.

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::json;

use super::automations::RunView;
use super::privacy::{caller_and_request, view};
use super::views::{ContactItem, ConversationItem, MessageItem};
use super::AppState;
use crate::clock::rfc3339_ms as rfc3339;
use crate::compliance::dates;
use crate::error::{ApiError, ErrorCode};
use crate::ids::{ContactId, MessageId, TenantId};
use crate::retention::Category;
use crate::rules::Conflict;
use crate::storage::contacts::{list_contacts, ContactFilter};
use crate::storage::key_store::Vault;
use crate::storage::privacy::{self, Kind, Request, State};
use crate::storage::{
    automations, contacts, conversations, media, messages, retention, with_conn, DbConn, Pool,
    StorageError,
};
use futures_util::StreamExt;

/// Messages read a page at a time.
const PAGE: i64 = 1_000;
/// Bytes gathered before a chunk goes to the client.
const CHUNK: usize = 64 * 1024;

/// `GET /v1/privacy/requests/{id}/export`.
pub async fn download(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, id) = caller_and_request(&state, &req, id).await?;
    let settings = state.core.settings.clone();
    let checked_tenant = tenant.clone();
    let now = state.core.clock.now_ms();
    let request = super::api::read(&state, move |conn, _| {
        let request = privacy::get(conn, &checked_tenant, &id)?;
        let days = retention::policies(conn, &checked_tenant)?.days(Category::Exports, &settings);
        Ok(request.map(|request| (request, days)))
    })
    .await?;
    let Some((request, days)) = request else {
        return Err(ApiError::not_found("privacy request"));
    };
    if !matches!(request.kind, Kind::Access | Kind::Portability) {
        return Err(ApiError::not_found("export"));
    }
    let Some(completed_at) = request
        .completed_at
        .filter(|_| request.state == State::Completed)
    else {
        return Err(ApiError::new(
            ErrorCode::Conflict(Conflict::ExportNotReady),
            "the request is not completed yet: its export is ready once it is",
        ));
    };
    if now > completed_at + i64::from(days) * 86_400_000 {
        return Err(gone(
            "export_expired",
            format!("the export expired {days} days after the request completed (the tenant's exports period)"),
        ));
    }
    let pool = state.core.pool.clone();
    let vault = state.core.keyring.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, StorageError>>(4);
    let today = dates::day_of(now);
    // The subject still held: erased since, the export is gone.
    let contact = request.contact_id.clone();
    let found = super::api::read(&state, {
        let tenant = tenant.clone();
        move |conn, vault| match &contact {
            Some(contact) => Ok(Some(contact_of(conn, vault, &tenant, contact)?)),
            None => Ok(None),
        }
    })
    .await?;
    if let Some(None) = found {
        return Err(gone(
            "export_gone",
            "the subject was erased since: nothing of them is held".into(),
        ));
    }
    let contact = found.flatten();
    let processing = crate::compliance::notices::processing_record(&state.core.settings.processing);
    actix_web::rt::task::spawn_blocking(move || {
        let mut out = Writer {
            buf: Vec::with_capacity(CHUNK),
            tx,
        };
        let subject = Subject {
            tenant: &tenant,
            request: &request,
            contact,
        };
        match write_document(&pool, &vault, &subject, &processing, today, now, &mut out) {
            Ok(()) => out.flush(),
            Err(e) => {
                let _ = out.tx.blocking_send(Err(e));
            }
        }
    });
    // The answer waits for the first chunk: a failure before it is answered as any
    // storage error is (503 while the database is unavailable).
    let first = match rx.recv().await {
        Some(Ok(first)) => first,
        Some(Err(e)) => return Err(e.into()),
        None => return Err(ApiError::internal("the export's writer stopped")),
    };
    let log = state.core.log.clone();
    let rest = futures_util::stream::unfold(rx, move |mut rx| {
        let log = log.clone();
        async move {
            let chunk = rx.recv().await?;
            if let Err(e) = &chunk {
                // The client sees the document cut short (no "totals").
                slog::warn!(log, "an export failed while streaming"; "error" => %e);
            }
            Some((chunk, rx))
        }
    });
    let body = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((
            "Content-Disposition",
            format!(
                "attachment; filename=\"converra-export-{}.json\"",
                request_id_of(&req)
            ),
        ))
        .streaming(body))
}

fn request_id_of(req: &HttpRequest) -> String {
    req.match_info().get("id").unwrap_or("request").to_string()
}

fn gone(code: &'static str, message: String) -> ApiError {
    ApiError::new(ErrorCode::Gone(code), message)
}

/// The subject's contact as the API shows it; `None` once it is gone (erased).
fn contact_of(
    conn: &mut DbConn,
    vault: &Vault,
    tenant: &TenantId,
    contact: &ContactId,
) -> Result<Option<ContactItem>, StorageError> {
    let filter = ContactFilter {
        id: Some(contact.to_string()),
        ..ContactFilter::default()
    };
    Ok(list_contacts(conn, vault, tenant, &filter, None, 1)?
        .into_iter()
        .next()
        .map(ContactItem::from))
}

/// Gathers the document into chunks for the client; a client gone stops the writing.
struct Writer {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, StorageError>>,
}

impl Writer {
    fn text(&mut self, text: &str) -> Result<(), StorageError> {
        self.buf.extend_from_slice(text.as_bytes());
        self.maybe_send()
    }

    fn value(&mut self, value: &impl Serialize) -> Result<(), StorageError> {
        serde_json::to_writer(&mut self.buf, value)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        self.maybe_send()
    }

    fn maybe_send(&mut self) -> Result<(), StorageError> {
        if self.buf.len() < CHUNK {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| StorageError::Unavailable("the client went away".into()))
    }

    fn flush(mut self) {
        let rest = Bytes::from(std::mem::take(&mut self.buf));
        let _ = self.tx.blocking_send(Ok(rest));
    }
}

/// Whose export: the tenant, the request, and the subject's contact if held.
struct Subject<'a> {
    tenant: &'a TenantId,
    request: &'a Request,
    contact: Option<ContactItem>,
}

/// The document: `{"manifest", "processing", "contact", "privacy_requests",
/// "conversations": [{..., "messages": [...]}], "automation_runs", "retention",
/// "totals"}`.
fn write_document(
    pool: &Pool,
    vault: &Vault,
    subject: &Subject<'_>,
    processing: &serde_json::Value,
    today: time::Date,
    now: i64,
    out: &mut Writer,
) -> Result<(), StorageError> {
    let (tenant, request, contact) = (subject.tenant, subject.request, &subject.contact);
    let manifest = json!({
        "format": "converra.export/1",
        "request_id": request.id,
        "kind": request.kind.as_str(),
        "tenant_id": tenant.as_str(),
        "contact_id": request.contact_id.as_ref().map(ContactId::as_str),
        "generated_at": rfc3339(now),
        "sections": ["processing", "contact", "consents", "privacy_requests", "conversations", "automation_runs", "retention"],
        "notes": "Messages are inside their conversations, oldest first, in the API's shapes \
                  (GET /v1/conversations/{id}/messages), each with the statuses Meta reported \
                  (oldest first) and, for media, what is held of the file (its download: \
                  GET /v1/messages/{id}/media). Consents: the marketing preference and a \
                  restriction or objection in force, with their times (epoch milliseconds); \
                  the requests behind them are under privacy_requests.",
    });
    out.text("{\"manifest\":")?;
    out.value(&manifest)?;
    // Who processes the data, for what and where (GET /v1/privacy/processing's).
    out.text(",\"processing\":")?;
    out.value(processing)?;
    out.text(",\"contact\":")?;
    out.value(contact)?;
    let Some(contact_id) = request.contact_id.as_ref().filter(|_| contact.is_some()) else {
        // A subject the tenant never saw: an empty export.
        out.text(",\"consents\":null,\"privacy_requests\":[],\"conversations\":[],\"automation_runs\":[]")?;
        return finish(pool, tenant, out, (0, 0, 0));
    };
    out.text(",\"consents\":")?;
    out.value(&with_conn(pool, |conn| {
        contacts::consents(conn, tenant, contact_id)
    })?)?;
    out.text(",\"privacy_requests\":")?;
    // A connection a query: none is held while the client reads.
    let requests: Vec<_> = with_conn(pool, |conn| privacy::of_contact(conn, tenant, contact_id))?
        .into_iter()
        .map(|r| view(r, today))
        .collect();
    out.value(&requests)?;
    out.text(",\"conversations\":[")?;
    let mut totals = (0u64, 0u64, 0u64);
    let all = with_conn(pool, |conn| {
        conversations::of_contact(conn, tenant, contact_id)
    })?;
    for (n, conversation) in all.into_iter().enumerate() {
        totals.0 += 1;
        if n > 0 {
            out.text(",")?;
        }
        let id = conversation.id.clone();
        let item = serde_json::to_value(ConversationItem::from(conversation))
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        // The conversation's fields, then its messages, page by page.
        let text = item.to_string();
        out.text(&text[..text.len() - 1])?;
        out.text(",\"messages\":[")?;
        let mut after: Option<String> = None;
        let mut first = true;
        loop {
            let (page, mut statuses, mut media) = with_conn(pool, |conn| {
                let page =
                    messages::list_messages(conn, vault, tenant, &id, after.as_deref(), PAGE)?;
                let ids: Vec<MessageId> = page.iter().map(|m| m.id.clone()).collect();
                let statuses = messages::statuses_of(conn, tenant, &ids)?;
                let media = media::media_of(conn, tenant, &ids)?;
                Ok((page, statuses, media))
            })?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.to_string());
            let full = page.len() as i64 == PAGE;
            for message in page {
                totals.1 += 1;
                if !first {
                    out.text(",")?;
                }
                first = false;
                let (statuses, media) = (statuses.remove(&message.id), media.remove(&message.id));
                let mut item = serde_json::to_value(MessageItem::from(message))
                    .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                item["statuses"] = json!(statuses.unwrap_or_default());
                item["media"] = json!(media);
                out.value(&item)?;
            }
            if !full {
                break;
            }
        }
        out.text("]}")?;
    }
    out.text("],\"automation_runs\":[")?;
    let mut cursor: Option<String> = None;
    let mut first = true;
    loop {
        let runs = with_conn(pool, |conn| {
            automations::runs(
                conn,
                tenant,
                None,
                Some(contact_id.as_str()),
                cursor.as_deref(),
                PAGE,
            )
        })?;
        let Some(last) = runs.last() else { break };
        cursor = Some(last.id.clone());
        let full = runs.len() as i64 == PAGE;
        for run in runs {
            totals.2 += 1;
            if !first {
                out.text(",")?;
            }
            first = false;
            out.value(&RunView::from(run))?;
        }
        if !full {
            break;
        }
    }
    out.text("]")?;
    finish(pool, tenant, out, totals)
}

/// The tenant's retention periods (how long each category is kept) and the totals.
fn finish(
    pool: &Pool,
    tenant: &TenantId,
    out: &mut Writer,
    (conversations, messages, runs): (u64, u64, u64),
) -> Result<(), StorageError> {
    let policies = with_conn(pool, |conn| retention::policies(conn, tenant))?;
    let periods: serde_json::Map<String, serde_json::Value> = Category::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), json!(policies.days.get(c))))
        .collect();
    out.text(",\"retention\":")?;
    out.value(&json!({"days": periods, "null_means": "the operator's default period"}))?;
    out.text(",\"totals\":")?;
    out.value(
        &json!({"conversations": conversations, "messages": messages, "automation_runs": runs}),
    )?;
    out.text("}")
}
