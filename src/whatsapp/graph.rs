//! The Graph API client: sends a message (`POST {base}/{version}/{phone_number_id}/messages`
//! with the number's bearer token) and tells what Meta's answer means for the send:
//! accepted with a wamid, worth retrying (and how), final, a reason to pause the
//! number, or unknown (the request may have reached Meta: reconcile before sending
//! again). Meta's error codes are from its Cloud API error reference.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::Template;
use crate::ids::{PhoneNumberId, Wamid};

/// What an error means for the send that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again after a backoff (network before sending, 5xx, throttling, Meta's
    /// temporary errors).
    Transient,
    /// Meta's rate limits (130429 the number's throughput, 80007 the business
    /// account's, 4 the app's, or HTTP 429): the whole number backs off, then goes on.
    Throttled,
    /// Meta's pair limit (131056): too many messages to this one user; that contact
    /// waits (4^n seconds, Meta's advice), the number's other traffic goes on.
    PairLimit,
    /// The number's spam rate limit (131048): the whole number defers for hours.
    NumberDeferred,
    /// Ecosystem limits on this user (131049 marketing messages, 131064): this send
    /// defers for hours.
    Deferred,
    /// Will not succeed as it is: the message fails with Meta's error.
    Permanent,
    /// The number's token or account is the problem: its sender pauses (nothing is
    /// burnt) until an operator replaces the token.
    Pause,
    /// The request may have reached Meta (the connection broke or timed out after it
    /// was sent): it is reconciled from Meta's status webhooks before any repeat.
    Unknown,
}

/// Meta's refusal (or the network's), with what it means.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class:?}: {message} (code {code:?}, subcode {subcode:?})")]
pub struct GraphError {
    pub class: ErrorClass,
    pub http_status: Option<u16>,
    pub code: Option<i64>,
    pub subcode: Option<i64>,
    pub title: Option<String>,
    pub message: String,
}

impl GraphError {
    pub(super) fn network(class: ErrorClass, message: String) -> GraphError {
        GraphError {
            class,
            http_status: None,
            code: None,
            subcode: None,
            title: None,
            message,
        }
    }

    /// The error as the API shows it: Meta's `{"code", "title", "message"}` (with the
    /// subcode when Meta gave one); a network error has no code.
    pub fn to_json(&self) -> String {
        let mut error = json!({
            "code": self.code,
            "title": self.title.clone().unwrap_or_else(|| "Graph API error".into()),
            "message": self.message,
        });
        if let Some(subcode) = self.subcode {
            error["error_subcode"] = json!(subcode);
        }
        error.to_string()
    }
}

/// What a Meta error code means for a send.
pub fn classify(code: i64) -> ErrorClass {
    match code {
        131_000 | 131_016 | 131_057 | 1 | 2 => ErrorClass::Transient,
        130_429 | 80_007 | 4 => ErrorClass::Throttled,
        131_056 => ErrorClass::PairLimit,
        131_048 => ErrorClass::NumberDeferred,
        131_049 | 131_064 => ErrorClass::Deferred,
        // Token, permissions, account, payment, and the number's registration.
        190 | 0 | 3 | 10 | 200..=299 | 368 | 131_031 | 131_042 | 131_045 | 133_010 => {
            ErrorClass::Pause
        }
        _ => ErrorClass::Permanent,
    }
}

#[derive(Deserialize)]
struct Accepted {
    #[serde(default)]
    messages: Vec<AcceptedMessage>,
    /// Mark-as-read answers `{"success": true}` and no message.
    #[serde(default)]
    success: bool,
}

#[derive(Deserialize)]
struct AcceptedMessage {
    id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: MetaError,
}

#[derive(Deserialize)]
struct MetaError {
    #[serde(default)]
    message: String,
    code: Option<i64>,
    error_subcode: Option<i64>,
    error_user_title: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    error_data: Option<Value>,
}

#[derive(Deserialize)]
struct TemplatePage {
    #[serde(default)]
    data: Vec<Template>,
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    cursors: Option<Cursors>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct Cursors {
    after: Option<String>,
}

/// Pages read at most per sync (100 templates each): past Meta's own limits.
const TEMPLATE_PAGES_MAX: usize = 100;

/// A client for one actix thread (awc's client is bound to the thread it was made on).
pub struct GraphClient {
    pub(super) client: awc::Client,
    pub(super) base_url: String,
    pub(super) version: String,
}

impl GraphClient {
    /// A client checking Meta's certificate against `ca_file` (empty: OpenSSL's
    /// default paths, which the vendored OpenSSL looks for under `/usr/local/ssl`).
    pub fn new(
        base_url: &str,
        version: &str,
        timeout: Duration,
        ca_file: &str,
    ) -> Result<GraphClient, String> {
        let tls = tls_connector(ca_file)?;
        Ok(GraphClient {
            client: awc::Client::builder()
                .timeout(timeout)
                .disable_redirects()
                .connector(awc::Connector::new().openssl(tls).timeout(timeout))
                .finish(),
            base_url: base_url.trim_end_matches('/').to_string(),
            version: version.to_string(),
        })
    }

    /// The client the configuration describes (`whatsapp.graph_base_url`,
    /// `graph_api_version`, `outbound.request_timeout_secs`, `outbound.ca_file`).
    pub fn from_settings(settings: &crate::config::Settings) -> Result<GraphClient, String> {
        GraphClient::new(
            &settings.whatsapp.graph_base_url,
            &settings.whatsapp.graph_api_version,
            Duration::from_secs(settings.outbound.request_timeout_secs),
            &settings.outbound.ca_file,
        )
    }

    /// `GET url` with the bearer token: the body of a success (at most `limit` bytes),
    /// else Meta's error. A GET changes nothing at Meta, so every failure is worth
    /// retrying unless Meta's answer says otherwise.
    pub(super) async fn get_ok(
        &self,
        url: &str,
        access_token: &str,
        limit: usize,
    ) -> Result<actix_web::web::Bytes, GraphError> {
        let mut response = self
            .client
            .get(url)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| {
                GraphError::network(ErrorClass::Transient, format!("Graph API request: {e}"))
            })?;
        let status = response.status();
        let bytes = response.body().limit(limit).await.map_err(|e| {
            GraphError::network(ErrorClass::Transient, format!("Graph API response: {e}"))
        })?;
        if !status.is_success() {
            return Err(parse_error(status.as_u16(), &bytes));
        }
        Ok(bytes)
    }

    /// Sends `body` from `phone_number_id`; Meta's wamid when accepted (`None` for a
    /// read receipt, which Meta answers without one).
    pub async fn send_message(
        &self,
        phone_number_id: &PhoneNumberId,
        access_token: &str,
        body: &Value,
    ) -> Result<Option<Wamid>, GraphError> {
        let url = format!(
            "{}/{}/{}/messages",
            self.base_url, self.version, phone_number_id
        );
        let mut response = self
            .client
            .post(url)
            .bearer_auth(access_token)
            .send_json(body)
            .await
            .map_err(|e| {
                use awc::error::SendRequestError;
                // Only a connection that was never made is known not to have reached
                // Meta; anything later may have.
                let class = match e {
                    SendRequestError::Connect(_) | SendRequestError::Url(_) => {
                        ErrorClass::Transient
                    }
                    _ => ErrorClass::Unknown,
                };
                GraphError::network(class, format!("Graph API request: {e}"))
            })?;
        let status = response.status();
        let bytes = response.body().limit(1 << 20).await.map_err(|e| {
            GraphError::network(ErrorClass::Unknown, format!("Graph API response: {e}"))
        })?;
        if status.is_success() {
            let accepted: Accepted = serde_json::from_slice(&bytes).map_err(|e| {
                GraphError::network(
                    ErrorClass::Unknown,
                    format!("Graph API answered {status} with an unexpected body: {e}"),
                )
            })?;
            if accepted.messages.is_empty() && accepted.success {
                return Ok(None);
            }
            return accepted
                .messages
                .into_iter()
                .next()
                .map(|m| m.id)
                .filter(|id| !id.is_empty())
                .map(|id| Some(Wamid(id)))
                .ok_or_else(|| {
                    GraphError::network(
                        ErrorClass::Unknown,
                        "Graph API accepted the message without a message id".into(),
                    )
                });
        }
        Err(parse_error(status.as_u16(), &bytes))
    }
}

impl GraphClient {
    /// Every message template of the WhatsApp Business Account `waba_id`
    /// (`GET /{waba_id}/message_templates`, page by page through Meta's `after`
    /// cursors).
    pub async fn list_templates(
        &self,
        waba_id: &str,
        access_token: &str,
    ) -> Result<Vec<Template>, GraphError> {
        let mut templates = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..TEMPLATE_PAGES_MAX {
            let mut url = format!(
                "{}/{}/{}/message_templates?fields=name,language,category,status,components&limit=100",
                self.base_url, self.version, waba_id
            );
            if let Some(after) = &after {
                url.push_str("&after=");
                url.push_str(
                    &url::form_urlencoded::byte_serialize(after.as_bytes()).collect::<String>(),
                );
            }
            let bytes = self.get_ok(&url, access_token, 8 << 20).await?;
            let page: TemplatePage = serde_json::from_slice(&bytes).map_err(|e| {
                GraphError::network(
                    ErrorClass::Transient,
                    format!("Graph API template list: {e}"),
                )
            })?;
            templates.extend(page.data);
            match page.paging {
                Some(Paging {
                    cursors:
                        Some(Cursors {
                            after: Some(cursor),
                        }),
                    next: Some(_),
                }) => after = Some(cursor),
                _ => return Ok(templates),
            }
        }
        Ok(templates)
    }
}

/// TLS for the Graph API: peer verification on, roots from `ca_file`.
pub fn tls_connector(ca_file: &str) -> Result<openssl::ssl::SslConnector, String> {
    let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())
        .map_err(|e| format!("TLS: {e}"))?;
    if ca_file.is_empty() {
        builder
            .set_default_verify_paths()
            .map_err(|e| format!("TLS default verify paths: {e}"))?;
    } else {
        builder
            .set_ca_file(ca_file)
            .map_err(|e| format!("outbound.ca_file {ca_file}: {e}"))?;
    }
    Ok(builder.build())
}

/// Meta's error body (`{"error": {"message", "code", "error_subcode", ...}}`), classed;
/// a body that is not Meta's is judged by the HTTP status alone.
pub fn parse_error(http_status: u16, body: &[u8]) -> GraphError {
    let by_status = match http_status {
        // A gateway that gave up, or a timeout, may have passed the message on.
        502 | 504 | 408 => ErrorClass::Unknown,
        429 => ErrorClass::Throttled,
        s if s >= 500 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    };
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => {
            let details = error
                .error_data
                .as_ref()
                .and_then(|d| d.get("details"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let class = match error.code {
                Some(code) if http_status < 500 => classify(code),
                Some(code) if classify(code) == ErrorClass::Pause => ErrorClass::Pause,
                _ => by_status,
            };
            GraphError {
                class,
                http_status: Some(http_status),
                code: error.code,
                subcode: error.error_subcode,
                title: error
                    .error_user_title
                    .or_else(|| {
                        let title = strip_code(&error.message);
                        (!title.is_empty()).then(|| title.to_string())
                    })
                    .or(error.kind),
                message: details.unwrap_or(error.message),
            }
        }
        Err(_) => GraphError {
            class: by_status,
            http_status: Some(http_status),
            code: None,
            subcode: None,
            title: None,
            message: format!(
                "Graph API answered HTTP {http_status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
}

/// Meta's message without its `(#131047) ` prefix.
fn strip_code(message: &str) -> &str {
    match message
        .strip_prefix("(#")
        .and_then(|rest| rest.split_once(") "))
    {
        Some((_, text)) => text,
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_apis_certificate_is_checked_against_the_ca_file() {
        assert!(tls_connector("/nonexistent/ca.pem").is_err());
        let system = "/etc/ssl/certs/ca-certificates.crt";
        if std::path::Path::new(system).exists() {
            let connector = tls_connector(system).expect("the system's CA file loads");
            assert_eq!(
                connector.context().verify_mode(),
                openssl::ssl::SslVerifyMode::PEER
            );
        }
    }

    #[test]
    fn metas_codes_mean_what_its_reference_says() {
        for (code, class) in [
            (131_000, ErrorClass::Transient),
            (130_429, ErrorClass::Throttled),
            (80_007, ErrorClass::Throttled),
            (4, ErrorClass::Throttled),
            (131_057, ErrorClass::Transient),
            (131_056, ErrorClass::PairLimit),
            (131_048, ErrorClass::NumberDeferred),
            (131_049, ErrorClass::Deferred),
            (131_064, ErrorClass::Deferred),
            (190, ErrorClass::Pause),
            (200, ErrorClass::Pause),
            (368, ErrorClass::Pause),
            (131_042, ErrorClass::Pause),
            (100, ErrorClass::Permanent),
            (132_001, ErrorClass::Permanent),
            (131_026, ErrorClass::Permanent),
            (131_047, ErrorClass::Permanent),
            (131_050, ErrorClass::Permanent),
        ] {
            assert_eq!(classify(code), class, "code {code}");
        }
    }

    #[test]
    fn an_error_body_is_read_as_meta_writes_it() {
        let error = parse_error(
            400,
            br#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,"error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed"},"fbtrace_id":"A"}}"#,
        );
        assert_eq!(error.class, ErrorClass::Permanent);
        assert_eq!(error.code, Some(131_047));
        assert_eq!(
            error.message,
            "Message failed to send because more than 24 hours have passed"
        );
        let shown: Value = serde_json::from_str(&error.to_json()).expect("json");
        assert_eq!(shown["code"], json!(131_047));
        assert_eq!(shown["title"], json!("Re-engagement message"));
        assert_eq!(parse_error(503, b"busy").class, ErrorClass::Transient);
        assert_eq!(parse_error(429, b"slow down").class, ErrorClass::Throttled);
        assert_eq!(
            parse_error(504, b"gateway timeout").class,
            ErrorClass::Unknown
        );
        assert_eq!(
            parse_error(
                401,
                br#"{"error":{"message":"bad token","code":190,"error_subcode":463}}"#
            )
            .class,
            ErrorClass::Pause
        );
    }
}
