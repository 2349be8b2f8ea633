//! A fake of Meta's Graph API on 127.0.0.1 for the outbound tests: it checks what
//! Meta's send endpoint checks (the path, a bearer token, `messaging_product`, a
//! recipient), records each call with its arrival time, and answers as Meta does,
//! `{"messaging_product", "contacts": [{"input", "wa_id"}], "messages": [{"id"}]}`,
//! or with the errors a test queues, in Meta's error shape.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// Answers to give before the default success, in order: (HTTP status, body).
    scripted: VecDeque<(u16, Value)>,
    accepted: u64,
    /// How long each answer takes after the call is recorded (a slow Meta, so that a
    /// test can catch calls in flight).
    delay: Duration,
    /// The account's templates, listed two to a page; `None`: the listing fails.
    templates: Option<Vec<Value>>,
    /// Media by id: (MIME type, the file, the size Meta claims).
    media: std::collections::HashMap<String, (String, Vec<u8>, usize)>,
    /// Answers to `GET /{media_id}` before the default, in order.
    media_scripted: VecDeque<(u16, Value)>,
    /// Media calls: (path, authorization).
    media_calls: Vec<(String, Option<String>)>,
}

#[derive(Clone)]
pub struct FakeGraph {
    pub base: String,
    state: Arc<Mutex<State>>,
    server: actix_web::dev::ServerHandle,
}

/// Meta's error body for `code`.
pub fn meta_error(code: i64, message: &str) -> Value {
    json!({"error": {"message": message, "type": "OAuthException", "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": message},
        "fbtrace_id": "AbCdEf"}})
}

impl FakeGraph {
    pub async fn start() -> FakeGraph {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(shared.clone()))
                .route("/media-files/{id}", web::get().to(media_file))
                .route("/{version}/{media_id}", web::get().to(media_info))
                .route("/{version}/{number}/messages", web::post().to(send))
                .route(
                    "/{version}/{waba}/message_templates",
                    web::get().to(list_templates),
                )
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        FakeGraph {
            base,
            state,
            server: handle,
        }
    }

    /// The next answers, before the default success.
    pub fn script(&self, answers: Vec<(u16, Value)>) {
        self.state.lock().unwrap().scripted.extend(answers);
    }

    /// The templates the account lists from now on.
    pub fn set_templates(&self, templates: Vec<Value>) {
        self.state.lock().unwrap().templates = Some(templates);
    }

    /// A media file users send, by Meta's media id; `claimed_size` is the size Meta's
    /// media answer gives.
    pub fn add_media(&self, id: &str, mime_type: &str, bytes: Vec<u8>, claimed_size: usize) {
        self.state
            .lock()
            .unwrap()
            .media
            .insert(id.to_string(), (mime_type.to_string(), bytes, claimed_size));
    }

    /// The next answers to `GET /{media_id}`, before the default.
    pub fn script_media(&self, answers: Vec<(u16, Value)>) {
        self.state.lock().unwrap().media_scripted.extend(answers);
    }

    /// The media calls so far: (path, authorization header).
    pub fn media_calls(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().media_calls.clone()
    }

    /// Answers each call `delay` after it arrives.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Waits until at least `n` calls have arrived.
    pub async fn wait_calls(&self, n: usize) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "the fake Graph API got {} of {n} calls",
                calls.len()
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

async fn send(
    state: web::Data<Arc<Mutex<State>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let (answer, delay) = answer(&state, &req, &body);
    if !delay.is_zero() {
        actix_rt::time::sleep(delay).await;
    }
    answer
}

fn answer(state: &Mutex<State>, req: &HttpRequest, body: &[u8]) -> (HttpResponse, Duration) {
    let mut state = state.lock().unwrap();
    let delay = state.delay;
    (respond(&mut state, req, body), delay)
}

fn respond(state: &mut State, req: &HttpRequest, body: &[u8]) -> HttpResponse {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let authorization = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.calls.push(Call {
        path: req.path().to_string(),
        authorization: authorization.clone(),
        body: body.clone(),
        at: Instant::now(),
    });
    if !authorization.is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7) {
        return HttpResponse::Unauthorized().json(meta_error(190, "Invalid OAuth access token"));
    }
    if body["messaging_product"] != "whatsapp" {
        return HttpResponse::BadRequest().json(meta_error(100, "Invalid parameter"));
    }
    if let Some((status, answer)) = state.scripted.pop_front() {
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .json(answer);
    }
    if body["status"] == "read" {
        return HttpResponse::Ok().json(json!({"success": true}));
    }
    let to = body.get("to").or_else(|| body.get("recipient"));
    if to.is_none() {
        return HttpResponse::BadRequest().json(meta_error(100, "Invalid parameter: to"));
    }
    state.accepted += 1;
    let wamid = format!("wamid.FAKE{}", state.accepted);
    HttpResponse::Ok().json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to}],
        "messages": [{"id": wamid}],
    }))
}

/// Meta's template listing, two to a page, paged by the `after` cursor.
async fn list_templates(
    state: web::Data<Arc<Mutex<State>>>,
    req: HttpRequest,
    query: web::Query<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    if !req.headers().contains_key("Authorization") {
        return HttpResponse::Unauthorized().json(meta_error(190, "Invalid OAuth access token"));
    }
    let Some(templates) = state.lock().unwrap().templates.clone() else {
        return HttpResponse::BadRequest().json(meta_error(100, "Unsupported get request"));
    };
    let start: usize = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let page: Vec<Value> = templates.iter().skip(start).take(2).cloned().collect();
    let mut body = json!({"data": page});
    if start + 2 < templates.len() {
        body["paging"] = json!({"cursors": {"before": start.to_string(), "after": (start + 2).to_string()},
            "next": "https://graph.facebook.com/next-page"});
    }
    HttpResponse::Ok().json(body)
}

/// Meta's `GET /{media_id}`: the file's temporary URL and facts.
async fn media_info(
    state: web::Data<Arc<Mutex<State>>>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (_, id) = path.into_inner();
    let mut state = state.lock().unwrap();
    let authorization = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state
        .media_calls
        .push((req.path().to_string(), authorization.clone()));
    if !authorization.is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7) {
        return HttpResponse::Unauthorized().json(meta_error(190, "Invalid OAuth access token"));
    }
    if let Some((status, answer)) = state.media_scripted.pop_front() {
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .json(answer);
    }
    let Some((mime_type, bytes, claimed)) = state.media.get(&id).cloned() else {
        return HttpResponse::BadRequest().json(meta_error(
            100,
            "Unsupported get request. Object with ID does not exist",
        ));
    };
    let host = req.connection_info().host().to_string();
    use sha2::Digest;
    HttpResponse::Ok().json(json!({
        "messaging_product": "whatsapp",
        "url": format!("http://{host}/media-files/{id}"),
        "mime_type": mime_type,
        "sha256": hex::encode(sha2::Sha256::digest(&bytes)),
        "file_size": claimed.to_string(),
        "id": id,
    }))
}

/// The file behind a media URL, for a bearer token only (as Meta's lookaside host).
async fn media_file(
    state: web::Data<Arc<Mutex<State>>>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let id = path.into_inner();
    let mut state = state.lock().unwrap();
    let authorization = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state
        .media_calls
        .push((req.path().to_string(), authorization.clone()));
    if !authorization.is_some_and(|a| a.starts_with("Bearer ")) {
        return HttpResponse::NotFound().finish();
    }
    match state.media.get(&id) {
        Some((mime_type, bytes, _)) => HttpResponse::Ok()
            .content_type(mime_type.as_str())
            .body(bytes.clone()),
        None => HttpResponse::NotFound().finish(),
    }
}
