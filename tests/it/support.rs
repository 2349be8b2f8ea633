//! The test fixture: a real server on an ephemeral port over a fresh database (a temp
//! SQLite file, or a new PostgreSQL database when `CONVERRA_TEST_DATABASE_URL` is set,
//! dropped afterwards), two tenants with one number each, and helpers to sign
//! webhooks and read the API as a tenant would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use converra::actors::Hooks;
use converra::config::Settings;
use converra::storage::{self, tenants};
use diesel::connection::SimpleConnection;
use diesel::Connection;
use serde_json::{json, Value};

pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";
pub const NUMBER_A: &str = "100000000000001";
pub const NUMBER_B: &str = "200000000000002";

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

/// SQLite always; PostgreSQL too when `CONVERRA_TEST_DATABASE_URL` is set. Under
/// `CI=true` a missing PostgreSQL is a failure, not a skip.
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    match std::env::var("CONVERRA_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => all.push(Backend::Postgres(without_tls(&url))),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but CONVERRA_TEST_DATABASE_URL is not set: the PostgreSQL suite would be skipped");
            }
        }
    }
    all
}

/// The tests talk to a local server: without TLS, no OpenSSL state is torn down at the
/// binary's exit under a pool thread that is still connecting (a test binary that had
/// passed every test once died there, SIGSEGV in an `r2d2-worker` thread in libc). A
/// URL that names its own `sslmode` keeps it.
fn without_tls(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.query_pairs().any(|(key, _)| key == "sslmode") => {
            parsed.query_pairs_mut().append_pair("sslmode", "disable");
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// A fresh database for one test, removed when dropped.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl TestDb {
    pub fn new(backend: &Backend) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.path().join("converra.db").display()),
                dir,
                pg: None,
            },
            Backend::Postgres(admin_url) => {
                let name = format!("converra_t_{}", uuid::Uuid::new_v4().simple());
                let mut admin = diesel::PgConnection::establish(admin_url)
                    .unwrap_or_else(|e| panic!("cannot reach CONVERRA_TEST_DATABASE_URL: {e}"));
                admin
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .unwrap();
                let mut url = url::Url::parse(admin_url).unwrap();
                url.set_path(&format!("/{name}"));
                TestDb {
                    url: url.to_string(),
                    dir,
                    pg: Some((admin_url.clone(), name)),
                }
            }
        }
    }
}

impl TestDb {
    /// The admin URL and database name, for a PostgreSQL test database.
    pub fn postgres(&self) -> Option<&(String, String)> {
        self.pg.as_ref()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = &self.pg {
            if let Ok(mut admin) = diesel::PgConnection::establish(admin_url) {
                let _ =
                    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

pub fn settings_for(db: &TestDb) -> Settings {
    let mut settings = Settings::defaults().unwrap();
    settings.database.url = db.url.clone();
    settings.database.pool_size = 6;
    settings.security.master_key_file = db.dir.path().join("master.key").display().to_string();
    settings.whatsapp.app_secret = APP_SECRET.into();
    settings.whatsapp.verify_token = VERIFY_TOKEN.into();
    settings.server.workers = 2;
    settings.server.shutdown_timeout_secs = 10;
    // The default: the actors on the HTTP workers' threads.
    settings.actors.arbiters = 0;
    settings.actors.sweep_interval_secs = 1;
    settings.scheduler.upkeep_interval_secs = 1;
    settings.actors.sweep_min_age_secs = 5;
    settings.actors.retry_delay_ms = 50;
    settings.log.level = "warning".into();
    settings
}

pub struct Tenant {
    pub id: String,
    pub api_key: String,
}

/// Creates tenants A and B with one number each, through the same library calls the
/// operator CLI makes.
pub fn seed_tenants(settings: &Settings) -> (Tenant, Tenant) {
    let (keyring, pool) = converra::open_storage(settings).unwrap();
    let mut conn = pool.get().unwrap();
    let mut make = |name: &str, number: &str| {
        let created =
            tenants::create_tenant(&mut conn, name, &format!("owner@{name}.example"), 1).unwrap();
        tenants::add_phone_number(
            &mut conn,
            &keyring,
            &tenants::NewPhoneNumber {
                tenant_id: &created.tenant_id,
                phone_number_id: number,
                display_phone_number: "15550000000",
                waba_id: "WABA",
                access_token: "EAAG-test-token",
            },
            1,
        )
        .unwrap();
        Tenant {
            id: created.tenant_id,
            api_key: created.api_key,
        }
    };
    (make("tenant-a", NUMBER_A), make("tenant-b", NUMBER_B))
}

pub struct TestApp {
    pub base: String,
    pub a: Tenant,
    pub b: Tenant,
    pub settings: Settings,
    pub client: awc::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), converra::RunError>>>,
    /// Kept so the database outlives the server.
    pub db: TestDb,
    /// The server's clock (the system's unless a test moves time itself).
    pub clock: converra::clock::SharedClock,
}

impl TestApp {
    pub async fn start(backend: &Backend) -> TestApp {
        Self::start_with(backend, Hooks::default(), |_| {}).await
    }

    pub async fn start_with(
        backend: &Backend,
        hooks: Hooks,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let db = TestDb::new(backend);
        let mut settings = settings_for(&db);
        tweak(&mut settings);
        let (a, b) = seed_tenants(&settings);
        let mut app = TestApp {
            base: String::new(),
            a,
            b,
            settings,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
            shutdown: None,
            task: None,
            db,
            clock: Arc::new(converra::clock::SystemClock),
        };
        app.launch(hooks).await;
        app
    }

    /// A server whose time moves only when `clock` is told to.
    pub async fn start_with_clock(
        backend: &Backend,
        clock: Arc<converra::clock::ManualClock>,
    ) -> TestApp {
        Self::start_with_clock_and(backend, clock, |_| {}).await
    }

    /// A server whose time moves only when `clock` is told to, with its settings
    /// changed by `tweak`.
    pub async fn start_with_clock_and(
        backend: &Backend,
        clock: Arc<converra::clock::ManualClock>,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestApp {
        Self::start_with_clock_hooks(backend, clock, Hooks::default(), tweak).await
    }

    /// [`TestApp::start_with_clock_and`] with `hooks`.
    pub async fn start_with_clock_hooks(
        backend: &Backend,
        clock: Arc<converra::clock::ManualClock>,
        hooks: Hooks,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let mut app = Self::start_with(backend, Hooks::default(), tweak).await;
        app.stop().await;
        app.clock = clock;
        app.launch(hooks).await;
        app
    }

    async fn launch(&mut self, hooks: Hooks) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        self.base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut options = converra::RunOptions::new(converra::logging::discard());
        options.hooks = hooks;
        options.clock = self.clock.clone();
        let settings = self.settings.clone();
        self.task = Some(actix_rt::spawn(async move {
            converra::run(listener, settings, options, async {
                let _ = rx.await;
            })
            .await
        }));
        self.shutdown = Some(tx);
        self.wait_ready().await;
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
            {
                if resp.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server did not become ready");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn restart(&mut self, hooks: Hooks) {
        self.stop().await;
        self.launch(hooks).await;
    }

    pub async fn post_signed(&self, body: &[u8]) -> (u16, Value) {
        let signature = converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), body);
        self.post_raw(body, Some(&signature)).await
    }

    pub async fn post_raw(&self, body: &[u8], signature: Option<&str>) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}/webhooks/whatsapp", self.base))
            .insert_header(("Content-Type", "application/json"));
        if let Some(signature) = signature {
            req = req.insert_header(("X-Hub-Signature-256", signature));
        }
        let mut resp = req.send_body(body.to_vec()).await.unwrap();
        let bytes = resp.body().limit(1 << 20).await.unwrap();
        (
            resp.status().as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str, api_key: Option<&str>) -> (u16, Value) {
        let mut req = self.client.get(format!("{}{}", self.base, path));
        if let Some(key) = api_key {
            req = req.insert_header(("Authorization", format!("Bearer {key}")));
        }
        let mut resp = req.send().await.unwrap();
        let bytes = resp.body().limit(16 << 20).await.unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (resp.status().as_u16(), value)
    }

    /// A JSON request with any method, as a tenant.
    pub async fn send_json(
        &self,
        method: &str,
        path: &str,
        api_key: &str,
        body: &Value,
    ) -> (u16, Value) {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut resp = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .insert_header(("Authorization", format!("Bearer {api_key}")))
            .send_json(body)
            .await
            .unwrap();
        let bytes = resp.body().limit(16 << 20).await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (resp.status().as_u16(), value)
    }

    pub async fn get_text(&self, path: &str) -> String {
        let mut resp = self
            .client
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .unwrap();
        String::from_utf8_lossy(&resp.body().await.unwrap()).into()
    }

    /// Every item of a paginated listing.
    pub async fn all(&self, path: &str, api_key: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit=500&cursor={c}"),
                None => format!("{path}{sep}limit=500"),
            };
            let (status, body) = self.get(&url, Some(api_key)).await;
            assert_eq!(status, 200, "{url}: {body}");
            items.extend(body["items"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return items,
            }
        }
    }

    /// Every message a tenant can read, across its conversations.
    pub async fn all_messages(&self, tenant: &Tenant) -> Vec<Value> {
        let mut out = Vec::new();
        for conversation in self.all("/v1/conversations", &tenant.api_key).await {
            let id = conversation["id"].as_str().unwrap();
            out.extend(
                self.all(&format!("/v1/conversations/{id}/messages"), &tenant.api_key)
                    .await,
            );
        }
        out
    }

    /// Waits until the tenant can read at least `n` messages; returns them.
    pub async fn wait_messages(&self, tenant: &Tenant, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let messages = self.all_messages(tenant).await;
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages appeared",
                messages.len()
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until nothing is left unprocessed in the inbox.
    pub async fn wait_processed(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, pool) = converra::open_storage(&self.settings).unwrap();
            let backlog = storage::with_conn(&pool, storage::inbox::backlog).unwrap();
            if backlog == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{backlog} inbox rows still unprocessed"
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get_text("/metrics").await;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until metric `name` reads `value`: a gauge that says the daemon has done
    /// what a test then checks the consequences of.
    pub async fn wait_metric(&self, name: &str, value: f64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} stayed {now}, not {value}"
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Returns once the daemon has run the timed `duty` (`converra_timed_duties_total`)
    /// to its end twice from now, so that one whole run began after this call and saw
    /// the clock as the test last set it. For `idle_check`, with one actor running.
    pub async fn after_timed_duty(&self, duty: &str) {
        let name = format!("converra_timed_duties_total{{duty=\"{duty}\"}}");
        let start = self.metric(&name).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.metric(&name).await < start + 2.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the timed duty {duty} did not run"
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn pool(&self) -> (Arc<converra::storage::key_store::Vault>, storage::Pool) {
        converra::open_storage(&self.settings).unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------------
// Payload builders, in Meta's shapes

pub fn envelope(changes: Vec<Value>) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": changes}]})
}

pub fn messages_change(number: &str, contacts: Vec<Value>, messages: Vec<Value>) -> Value {
    json!({"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": number},
        "contacts": contacts,
        "messages": messages,
    }})
}

pub fn statuses_change(number: &str, statuses: Vec<Value>) -> Value {
    json!({"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": number},
        "statuses": statuses,
    }})
}

pub fn contact(wa_id: &str, name: &str) -> Value {
    json!({"wa_id": wa_id, "profile": {"name": name}})
}

pub fn text(from: &str, wamid: &str, body: &str) -> Value {
    json!({"from": from, "id": wamid, "timestamp": "1764000000", "type": "text", "text": {"body": body}})
}

/// One webhook carrying one text message.
pub fn text_webhook(number: &str, from: &str, wamid: &str, body: &str) -> Vec<u8> {
    serde_json::to_vec(&envelope(vec![messages_change(
        number,
        vec![contact(from, "Test User")],
        vec![text(from, wamid, body)],
    )]))
    .unwrap()
}

/// `messages` text messages from `contacts` senders, 100 to a webhook, with wamids
/// `wamid.{tag}.{n}`: the load of the backpressure and WAL tests.
pub fn flood_webhooks(
    number: &str,
    tag: &str,
    messages: usize,
    contacts: usize,
    body: &str,
) -> Vec<Vec<u8>> {
    let sender = |n: usize| format!("4917{:04}", n % contacts);
    (0..messages)
        .step_by(100)
        .map(|first| {
            let range = first..(first + 100).min(messages);
            let items: Vec<Value> = range
                .clone()
                .map(|n| text(&sender(n), &format!("wamid.{tag}.{n}"), body))
                .collect();
            let from: std::collections::BTreeSet<String> = range.map(sender).collect();
            let profiles = from.iter().map(|wa_id| contact(wa_id, "F")).collect();
            serde_json::to_vec(&envelope(vec![messages_change(number, profiles, items)])).unwrap()
        })
        .collect()
}

/// The key raw payloads of the day of `at_ms` are sealed under, made when missing (as
/// the writer makes it), for tests that write inbox rows themselves.
pub fn day_key(
    conn: &mut storage::DbConn,
    keyring: &converra::storage::key_store::Vault,
    at_ms: i64,
) -> storage::raw_keys::DayKey {
    let day = storage::raw_keys::day_of(at_ms);
    let key = storage::raw_keys::make_day_key(conn, keyring, &day, at_ms).unwrap();
    storage::raw_keys::DayKey { day, key }
}
