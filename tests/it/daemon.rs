//! The real binary: crash safety (SIGKILL mid-load, restart, every acknowledged
//! webhook stored exactly once), SIGTERM drain, check-config, and clean logs.
//!
//! Crash safety with the real binary: send a few thousand webhooks concurrently,
//! SIGKILL the process mid-load, restart it, and check that every webhook that got a
//! 200 is stored exactly once.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_converra");

/// A running daemon, killed when dropped: a failing test must not leave one behind.
pub(crate) struct Running(pub(crate) Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Does nothing to a daemon the test already waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct Daemon {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) base: String,
}

impl Daemon {
    pub(crate) fn new(db_url: &str, dir: &tempfile::TempDir) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let env = vec![
            ("CONVERRA__DATABASE__URL".into(), db_url.to_string()),
            (
                "CONVERRA__SECURITY__MASTER_KEY_FILE".into(),
                dir.path().join("master.key").display().to_string(),
            ),
            ("CONVERRA__WHATSAPP__APP_SECRET".into(), APP_SECRET.into()),
            ("CONVERRA__SERVER__BIND".into(), format!("127.0.0.1:{port}")),
            ("CONVERRA__LOG__LEVEL".into(), "error".into()),
            ("CONVERRA__LOG__FORMAT".into(), "json".into()),
        ];
        Daemon {
            env,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    pub(crate) fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Creates a tenant and registers NUMBER_A for it, through the operator CLI as an
    /// operator would; returns `{"tenant_id", "api_key", ...}`.
    pub(crate) fn seed_tenant(
        &self,
        dir: &tempfile::TempDir,
        name: &str,
        access_token: &str,
    ) -> Value {
        // Operator commands need the database to exist; `migrate` makes it (and does
        // nothing to one the daemon made).
        let migrated = self.command(&["migrate"]).output().unwrap();
        assert!(
            migrated.status.success(),
            "{}",
            String::from_utf8_lossy(&migrated.stderr)
        );
        let email = format!("ops@{name}.example");
        let tenant = self.cli_json(&[
            "tenant",
            "create",
            "--name",
            name,
            "--holder-email",
            &email,
            "--json",
        ]);
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, access_token).unwrap();
        self.cli_json(&[
            "number",
            "add",
            "--tenant",
            tenant["tenant_id"].as_str().unwrap(),
            "--phone-number-id",
            NUMBER_A,
            "--display-phone-number",
            "15550000000",
            "--waba-id",
            "WABA",
            "--access-token-file",
            token_file.to_str().unwrap(),
            "--json",
        ]);
        tenant
    }

    pub(crate) fn spawn(&self) -> Running {
        Running(
            self.command(&["serve"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    /// `serve` as systemd runs it with `Type=notify` and `WatchdogSec=`: notifications
    /// go to `socket`, and the watchdog expects one within `watchdog_usec`.
    fn spawn_under_systemd(&self, socket: &std::path::Path, watchdog_usec: &str) -> Running {
        // systemd names the process the watchdog is for; `exec` keeps the shell's pid.
        Running(
            Command::new("sh")
                .args(["-c", &format!("WATCHDOG_PID=$$ exec {BIN} serve")])
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("NOTIFY_SOCKET", socket)
                .env("WATCHDOG_USEC", watchdog_usec)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    pub(crate) async fn wait_ready(&self, client: &awc::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(resp) = client.get(format!("{}/readyz", self.base)).send().await {
                if resp.status().is_success() {
                    return;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("daemon did not become ready");
    }
}

async fn crash_and_recover(backend: &Backend) {
    let db = TestDb::new(backend);
    let daemon = Daemon::new(&db.url, &db.dir);
    let tenant = daemon.seed_tenant(&db.dir, "crash", "EAAG-token");
    let api_key = tenant["api_key"].as_str().unwrap().to_string();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let child = Arc::new(Mutex::new(daemon.spawn()));
    daemon.wait_ready(&client).await;

    const TOTAL: usize = 3000;
    const KILL_AFTER: usize = 1000;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/webhooks/whatsapp", daemon.base);
    futures_util::stream::iter(0..TOTAL)
        .map(|i| {
            let (client, url, acked, count, child, killed) = (
                client.clone(),
                url.clone(),
                acked.clone(),
                count.clone(),
                child.clone(),
                killed.clone(),
            );
            async move {
                let wamid = format!("wamid.crash.{i}");
                let body = text_webhook(
                    NUMBER_A,
                    &format!("49160{:03}", i % 40),
                    &wamid,
                    &format!("m{i}"),
                );
                let signature = converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &body);
                let sent = client
                    .post(&url)
                    .insert_header(("X-Hub-Signature-256", signature))
                    .send_body(body)
                    .await;
                if let Ok(resp) = sent {
                    if resp.status().as_u16() == 200 {
                        acked.lock().unwrap().push(wamid);
                        if count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER
                            && killed.fetch_add(1, Ordering::SeqCst) == 0
                        {
                            // SIGKILL: no shutdown, no flush, mid-load.
                            child.lock().unwrap().kill().unwrap();
                        }
                    }
                }
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let _ = child.lock().unwrap().wait();
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() >= KILL_AFTER,
        "only {} acknowledged before the kill",
        acked.len()
    );
    assert!(
        acked.len() < TOTAL,
        "the kill happened after the load finished"
    );

    let mut restarted = daemon.spawn();
    daemon.wait_ready(&client).await;
    let reader = ApiReader {
        client: client.clone(),
        base: daemon.base.clone(),
        key: api_key,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let stored = loop {
        let stored = reader.all_wamids().await;
        let missing = acked.iter().filter(|w| !stored.contains(*w)).count();
        if missing == 0 {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged messages missing after restart"
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    };
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(
        unique.len(),
        stored.len(),
        "every message stored exactly once"
    );
    restarted.kill().unwrap();
    let _ = restarted.wait();
}

pub(crate) struct ApiReader {
    pub(crate) client: awc::Client,
    pub(crate) base: String,
    pub(crate) key: String,
}

impl ApiReader {
    pub(crate) async fn page(&self, path: &str) -> Value {
        let mut resp = self
            .client
            .get(format!("{}{}", self.base, path))
            .insert_header(("Authorization", format!("Bearer {}", self.key)))
            .send()
            .await
            .unwrap();
        serde_json::from_slice(&resp.body().limit(64 << 20).await.unwrap()).unwrap()
    }

    pub(crate) async fn all(&self, path: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=500&cursor={c}"),
                None => format!("{path}?limit=500"),
            };
            let page = self.page(&url).await;
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    pub(crate) async fn all_wamids(&self) -> Vec<String> {
        let mut wamids = Vec::new();
        for conversation in self.all("/v1/conversations").await {
            let id = conversation["id"].as_str().unwrap();
            for m in self.all(&format!("/v1/conversations/{id}/messages")).await {
                wamids.push(m["wamid"].as_str().unwrap().to_string());
            }
        }
        wamids
    }
}

#[actix_rt::test]
async fn sigkill_mid_load_loses_no_acknowledged_message() {
    for backend in backends() {
        crash_and_recover(&backend).await;
    }
}

/// SIGTERM: stop accepting, finish in-flight requests and inbox work, exit 0.
#[actix_rt::test]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let db = TestDb::new(&Backend::Sqlite);
    let daemon = Daemon::new(&db.url, &db.dir);
    let tenant = daemon.seed_tenant(&db.dir, "term", "EAAG-token");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut child = daemon.spawn();
    daemon.wait_ready(&client).await;
    let pid = child.id().to_string();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/webhooks/whatsapp", daemon.base);
    futures_util::stream::iter(0..600usize)
        .map(|i| {
            let (client, url, acked, count, pid) = (
                client.clone(),
                url.clone(),
                acked.clone(),
                count.clone(),
                pid.clone(),
            );
            async move {
                let wamid = format!("wamid.term.{i}");
                let body = text_webhook(NUMBER_A, &format!("49161{:03}", i % 20), &wamid, "m");
                let signature = converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &body);
                if let Ok(resp) = client
                    .post(&url)
                    .insert_header(("X-Hub-Signature-256", signature))
                    .send_body(body)
                    .await
                {
                    if resp.status().as_u16() == 200 {
                        acked.lock().unwrap().push(wamid);
                        if count.fetch_add(1, Ordering::SeqCst) + 1 == 200 {
                            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
                        }
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    // Everything acknowledged was applied before the exit: nothing left in the inbox.
    let mut settings = converra::config::Settings::defaults().unwrap();
    settings.database.url = db.url.clone();
    settings.security.master_key_file = db.dir.path().join("master.key").display().to_string();
    let (_, pool) = converra::open_storage(&settings).unwrap();
    let mut conn = pool.get().unwrap();
    assert_eq!(converra::storage::inbox::backlog(&mut conn).unwrap(), 0);
    let stored = converra::storage::messages::count_messages(
        &mut conn,
        &converra::ids::TenantId(tenant["tenant_id"].as_str().unwrap().into()),
    )
    .unwrap();
    let acked = acked.lock().unwrap().len();
    assert!(acked >= 200);
    assert!(
        stored as usize >= acked,
        "{stored} stored < {acked} acknowledged"
    );
}

#[test]
fn check_config_names_the_bad_key_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("c.db").display());
    let daemon = Daemon::new(&db_url, &dir);
    let out = daemon.command(&["check-config"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("<redacted>"));
    assert!(!shown.contains(APP_SECRET), "the app secret is printed");
    let out = daemon
        .command(&["check-config"])
        .env("CONVERRA__SERVER__BIND", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.bind"));
    let out = daemon
        .command(&["check-config"])
        .env("CONVERRA__WHATSAPP__APP_SECRET_FILE", "/nonexistent/secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("whatsapp.app_secret_file"));

    // The database URL from a file, its password in either place, never printed.
    let url_file = dir.path().join("database-url");
    std::fs::write(
        &url_file,
        "postgres://converra:hunter2@db.internal/converra?sslmode=require&password=hunter2\n",
    )
    .unwrap();
    let out = daemon
        .command(&["check-config"])
        .env("CONVERRA__DATABASE__URL_FILE", &url_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = shown["database"]["url"].as_str().unwrap();
    assert!(url.starts_with("postgres://converra:"), "{url}");
    assert!(url.contains("db.internal/converra"), "{url}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
    let out = daemon
        .command(&["check-config"])
        .env("CONVERRA__DATABASE__URL_FILE", dir.path().join("absent"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.url_file"));
}

/// Invariant 10: secrets, API keys and message bodies never reach the logs, even at
/// debug level and through the error paths.
#[actix_rt::test]
async fn logs_never_carry_secrets_keys_or_message_bodies() {
    let db = TestDb::new(&Backend::Sqlite);
    let daemon = Daemon::new(&db.url, &db.dir);
    let tenant = daemon.seed_tenant(&db.dir, "logs", "EAAG-very-secret-access-token");
    let log_file = db.dir.path().join("daemon.log");
    let mut child = Running(
        daemon
            .command(&["serve"])
            .env("CONVERRA__LOG__LEVEL", "debug")
            .stdout(std::fs::File::create(&log_file).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    daemon.wait_ready(&client).await;
    let url = format!("{}/webhooks/whatsapp", daemon.base);
    let secret_body = "my card number is 4111-1111";
    for (i, body) in [
        text_webhook(NUMBER_A, "4916200", "wamid.log.1", secret_body),
        b"not json at all but signed".to_vec(),
        text_webhook("999999", "4916200", "wamid.log.2", secret_body),
    ]
    .into_iter()
    .enumerate()
    {
        let signature = converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &body);
        let resp = client
            .post(&url)
            .insert_header(("X-Hub-Signature-256", signature))
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "request {i}");
    }
    let forged = text_webhook(NUMBER_A, "4916200", "wamid.log.3", secret_body);
    client
        .post(&url)
        .insert_header(("X-Hub-Signature-256", "sha256=00"))
        .send_body(forged)
        .await
        .unwrap();
    let api_key = tenant["api_key"].as_str().unwrap();
    client
        .get(format!("{}/v1/contacts", daemon.base))
        .insert_header(("Authorization", format!("Bearer {api_key}x")))
        .send()
        .await
        .unwrap();
    // The stop drains the inbox: every webhook above is handled, and logged, first.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let logs = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        logs.contains("converra is ready"),
        "the daemon logged nothing: {logs}"
    );
    // Shutdown awaits each background task, and each says it stopped before the
    // daemon says it did.
    let stopped_at = logs
        .find("converra stopped")
        .unwrap_or_else(|| panic!("no final line: {logs}"));
    for task in [
        "writer-0",
        "checkpoint",
        "conversation-index",
        "reader-0",
        "storage",
        "actor-arbiters",
        "senders",
        "media-fetcher",
        "compliance",
        "mailer",
        "scheduler",
        "inbox-sweep",
    ] {
        assert!(
            logs[..stopped_at]
                .lines()
                .any(|line| line.contains("background task stopped")
                    && line.contains(&format!("\"background\":\"{task}\""))),
            "{task} did not report stopping before the daemon did: {logs}"
        );
    }
    assert!(!logs.contains("still running at exit"), "{logs}");
    assert!(!logs.contains("did not stop in time"), "{logs}");
    for secret in [
        APP_SECRET,
        secret_body,
        "4111-1111",
        api_key,
        "EAAG-very-secret-access-token",
    ] {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs");
    }
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once the port answers,
/// WATCHDOG=1 at half the interval while the actor system answers, STOPPING=1 on
/// SIGTERM, then a clean exit.
#[actix_rt::test]
async fn systemd_hears_ready_then_the_watchdog_then_stopping() {
    use std::os::unix::net::UnixDatagram;

    let db = TestDb::new(&Backend::Sqlite);
    let daemon = Daemon::new(&db.url, &db.dir);
    let socket_path = db.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    let mut child = daemon.spawn_under_systemd(&socket_path, "400000");

    assert_eq!(next(), "READY=1");
    let client = awc::Client::default();
    let health = client
        .get(format!("{}/healthz", daemon.base))
        .send()
        .await
        .unwrap();
    assert!(
        health.status().is_success(),
        "READY=1 came before the port answered"
    );
    let fed = Instant::now();
    for _ in 0..4 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    // Four at 200 ms apart, the first at once: well inside systemd's 400 ms.
    assert!(
        fed.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        fed.elapsed()
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    loop {
        match next().as_str() {
            "STOPPING=1" => break,
            "WATCHDOG=1" => continue,
            other => panic!("unexpected notification {other:?}"),
        }
    }
    assert!(child.wait().unwrap().success());
}

/// A burst of new connections waits in the listen queue instead of being dropped (the
/// kernel drops what overflows it and the client retries only a second later): the
/// listener asks for `server.listen_backlog`, not std's 128.
#[test]
fn a_burst_of_connections_fits_in_the_listen_queue() {
    let settings = converra::config::Settings::defaults().unwrap();
    let listener = converra::listen("127.0.0.1:0", settings.server.listen_backlog).unwrap();
    let address = listener.local_addr().unwrap();
    // Nothing accepts: every connection stays queued.
    let mut queued = Vec::new();
    for n in 0..400 {
        match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
            Ok(stream) => queued.push(stream),
            Err(e) => panic!("connection {n} was not queued: {e}"),
        }
    }
    assert_eq!(queued.len(), 400);
}

/// Open descriptors of `pid` whose file was deleted under it, among the database's
/// files (`converra.db-wal (deleted)` once another process removed the WAL).
fn deleted_database_files(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.contains(".db") && target.ends_with("(deleted)"))
        .collect()
}

fn sqlite_integrity(path: &std::path::Path) -> String {
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Check {
        #[diesel(sql_type = diesel::sql_types::Text)]
        integrity_check: String,
    }
    let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    let rows: Vec<Check> = diesel::sql_query("PRAGMA integrity_check")
        .load(&mut conn)
        .unwrap_or_else(|e| panic!("integrity_check of {}: {e}", path.display()));
    rows.into_iter()
        .map(|r| r.integrity_check)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Operator commands run from another process while the daemon ingests at full load
/// on SQLite, its WAL restarting again and again: each command waits its turn and
/// succeeds, the daemon never holds a database file that another process deleted, and
/// after a SIGKILL the database is intact and holds every acknowledged message.
#[actix_rt::test]
async fn operator_commands_beside_a_busy_daemon_leave_the_database_intact() {
    let db = TestDb::new(&Backend::Sqlite);
    let mut daemon = Daemon::new(&db.url, &db.dir);
    // A WAL of 1 MiB restarts several times a second under this load.
    daemon.env.push((
        "CONVERRA__DATABASE__SQLITE_WAL_RESTART_MIB".into(),
        "1".into(),
    ));
    let tenant = daemon.seed_tenant(&db.dir, "busy", "EAAG-token");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let child = Arc::new(Mutex::new(daemon.spawn()));
    daemon.wait_ready(&client).await;
    let pid = child.lock().unwrap().id();

    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let body = "x".repeat(400);
    let webhooks = flood_webhooks(NUMBER_A, "busy", 40_000, 300, &body);
    let url = format!("{}/webhooks/whatsapp", daemon.base);
    let load = {
        let (client, killed, acked) = (client.clone(), killed.clone(), acked.clone());
        actix_rt::spawn(async move {
            futures_util::stream::iter(webhooks.into_iter().enumerate())
                .map(|(index, body)| {
                    let (client, url, killed, acked) =
                        (client.clone(), url.clone(), killed.clone(), acked.clone());
                    async move {
                        if killed.load(Ordering::SeqCst) {
                            return;
                        }
                        let signature =
                            converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &body);
                        if let Ok(resp) = client
                            .post(&url)
                            .insert_header(("X-Hub-Signature-256", signature))
                            .send_body(body)
                            .await
                        {
                            if resp.status().as_u16() == 200 {
                                let first = index * 100;
                                acked.lock().unwrap().extend(
                                    (first..first + 100).map(|n| format!("wamid.busy.{n}")),
                                );
                            }
                        }
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
        })
    };

    // The operator, from another shell, while the load runs.
    let env = daemon.env.clone();
    let operator = std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut deleted = Vec::new();
        for round in 0..6 {
            std::thread::sleep(Duration::from_millis(300));
            for args in [
                vec![
                    "tenant".to_string(),
                    "create".into(),
                    "--name".into(),
                    format!("beside-{round}"),
                    "--holder-email".into(),
                    format!("ops{round}@beside.example"),
                    "--json".into(),
                ],
                vec!["tenant".into(), "list".into(), "--json".into()],
                vec!["number".into(), "list".into(), "--json".into()],
            ] {
                let out = Command::new(BIN)
                    .args(&args)
                    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .output()
                    .unwrap();
                if !out.status.success() {
                    failures.push(format!(
                        "{args:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                deleted.extend(deleted_database_files(pid));
            }
        }
        (failures, deleted)
    });
    let (failures, deleted) = loop {
        if operator.is_finished() {
            break operator.join().unwrap();
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    let acked_before_kill = acked.lock().unwrap().len();
    let deleted_at_kill = deleted_database_files(pid);
    assert!(
        deleted_at_kill.is_empty(),
        "the daemon holds deleted database files: {deleted_at_kill:?}"
    );
    killed.store(true, Ordering::SeqCst);
    child.lock().unwrap().kill().unwrap();
    let _ = child.lock().unwrap().wait();
    let _ = load.await;

    assert!(
        failures.is_empty(),
        "operator commands failed: {failures:#?}"
    );
    assert!(
        deleted.is_empty(),
        "the daemon held deleted database files: {deleted:?}"
    );
    assert!(
        acked_before_kill >= 2_000,
        "the load was too light to matter: {acked_before_kill} acknowledged"
    );
    let data = db.dir.path().join("converra.db");
    let keys = db.dir.path().join("converra-keys.db");
    assert_eq!(sqlite_integrity(&data), "ok");
    assert_eq!(sqlite_integrity(&keys), "ok");

    let mut restarted = daemon.spawn();
    daemon.wait_ready(&client).await;
    let reader = ApiReader {
        client: client.clone(),
        base: daemon.base.clone(),
        key: tenant["api_key"].as_str().unwrap().to_string(),
    };
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored: HashSet<String> = reader.all_wamids().await.into_iter().collect();
        let missing = acked.iter().filter(|w| !stored.contains(*w)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged messages missing after restart"
        );
        actix_rt::time::sleep(Duration::from_millis(500)).await;
    }
    restarted.kill().unwrap();
    let _ = restarted.wait();
}

/// Started by hand under the usual umask 022, the daemon still creates its state
/// private: folders 0700, the databases, their WAL and shared-memory files and the
/// master key 0600. With the key file gone, every command refuses, naming the file,
/// and makes no new key.
#[actix_rt::test]
async fn state_is_private_and_a_lost_master_key_is_refused_by_every_command() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("state/db/converra.db");
    let mut daemon = Daemon::new(&format!("sqlite://{}", data.display()), &dir);
    let key_file = dir.path().join("state/keys/master.key");
    daemon.env.push((
        "CONVERRA__SECURITY__MASTER_KEY_FILE".into(),
        key_file.display().to_string(),
    ));
    let client = awc::Client::default();
    let mut running = Running(
        Command::new("sh")
            .args(["-c", &format!("umask 022; exec {BIN} serve")])
            .envs(daemon.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    daemon.wait_ready(&client).await;
    daemon.seed_tenant(&dir, "private", "EAAG-token");
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    for folder in ["state/db", "state/keys"] {
        assert_eq!(mode(&dir.path().join(folder)), 0o700, "{folder}");
    }
    let mut files = vec![key_file.clone()];
    for entry in std::fs::read_dir(dir.path().join("state/db")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with("-wal")),
        "{files:?}"
    );
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    Command::new("kill")
        .args(["-TERM", &running.id().to_string()])
        .status()
        .unwrap();
    assert!(running.wait().unwrap().success());

    std::fs::remove_file(&key_file).unwrap();
    for args in [vec!["tenant", "list"], vec!["migrate"], vec!["serve"]] {
        let out = daemon.command(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} ran without its master key");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&key_file.display().to_string()) && said.contains("missing"),
            "{args:?}: {said}"
        );
        assert!(!key_file.exists(), "{args:?} made a new master key");
    }
}

/// Resumes stopped PostgreSQL backends when dropped, so a failing test leaves none
/// stopped (the test database could not be dropped).
struct StoppedBackends(Vec<String>);

impl Drop for StoppedBackends {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-CONT", pid]).status();
        }
    }
}

/// PostgreSQL stops answering under the running daemon (its backends frozen, the
/// connections open): every webhook is answered 503 within the connect timeout instead
/// of hanging, /readyz says not ready, the systemd watchdog is no longer fed, and once
/// the database answers again everything recovers without loss.
#[actix_rt::test]
async fn a_database_that_stops_answering_is_503_not_ready_and_starves_the_watchdog() {
    use diesel::{Connection, RunQueryDsl};
    use std::os::unix::net::UnixDatagram;

    let Some(backend) = backends()
        .into_iter()
        .find(|b| matches!(b, Backend::Postgres(_)))
    else {
        return;
    };
    let db = TestDb::new(&backend);
    let mut daemon = Daemon::new(&db.url, &db.dir);
    for (key, value) in [
        ("CONVERRA__DATABASE__CONNECT_TIMEOUT_SECS", "1"),
        ("CONVERRA__DATABASE__STATEMENT_TIMEOUT_SECS", "1"),
    ] {
        daemon.env.push((key.into(), value.into()));
    }
    let tenant = daemon.seed_tenant(&db.dir, "frozen", "EAAG-token");
    let socket_path = db.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _running = daemon.spawn_under_systemd(&socket_path, "1000000");
    // Notifications received in the next `during`.
    let notifications = |during: Duration| {
        let until = Instant::now() + during;
        let mut got = Vec::new();
        while Instant::now() < until {
            let mut buf = [0u8; 512];
            if let Ok(n) = socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
            }
        }
        got
    };
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    daemon.wait_ready(&client).await;
    let post = |body: Vec<u8>| {
        let client = client.clone();
        let url = format!("{}/webhooks/whatsapp", daemon.base);
        async move {
            let signature = converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &body);
            client
                .post(url)
                .insert_header(("X-Hub-Signature-256", signature))
                .send_body(body)
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let first = text_webhook(NUMBER_A, "4916300", "wamid.frozen.1", "before");
    assert_eq!(post(first).await, 200);
    assert!(notifications(Duration::from_millis(1200)).contains(&"WATCHDOG=1".to_string()));

    // Freeze every backend serving the daemon: its connections stay open, unanswered.
    let (admin_url, name) = db.postgres().unwrap().clone();
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let mut admin = diesel::PgConnection::establish(&admin_url).unwrap();
    let pids: Vec<Pid> = diesel::sql_query(format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .load(&mut admin)
    .unwrap();
    let stopped = StoppedBackends(pids.iter().map(|b| b.pid.to_string()).collect());
    assert!(!stopped.0.is_empty());
    for pid in &stopped.0 {
        assert!(Command::new("kill")
            .args(["-STOP", pid])
            .status()
            .unwrap()
            .success());
    }

    let second = text_webhook(NUMBER_A, "4916300", "wamid.frozen.2", "during");
    let asked = Instant::now();
    assert_eq!(post(second.clone()).await, 503);
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "the 503 took {:?}",
        asked.elapsed()
    );
    // Past the statement and connect timeouts (2 s), the writer counts as stuck.
    let _ = notifications(Duration::from_millis(2500));
    let (status, ready) = {
        let mut resp = client
            .get(format!("{}/readyz", daemon.base))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        (resp.status().as_u16(), body)
    };
    assert_eq!(status, 503, "{ready}");
    let starved = notifications(Duration::from_millis(2000));
    assert!(
        !starved.contains(&"WATCHDOG=1".to_string()),
        "the watchdog was fed while the writer hung: {starved:?}"
    );

    drop(stopped);
    let deadline = Instant::now() + Duration::from_secs(20);
    while post(second.clone()).await != 200 {
        assert!(Instant::now() < deadline, "no recovery");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(notifications(Duration::from_millis(1500)).contains(&"WATCHDOG=1".to_string()));
    let reader = ApiReader {
        client: client.clone(),
        base: daemon.base.clone(),
        key: tenant["api_key"].as_str().unwrap().to_string(),
    };
    let wamids = reader.all_wamids().await;
    for wamid in ["wamid.frozen.1", "wamid.frozen.2"] {
        assert!(
            wamids.iter().any(|w| w == wamid),
            "{wamid} missing: {wamids:?}"
        );
    }
}

/// The operator's view of parked events, with the real binary: `inbox parked` lists an
/// event that failed for good (no identifiers, its error), `inbox retry` puts it back,
/// and the running daemon applies it once it can.
#[actix_rt::test]
async fn the_operator_lists_and_retries_parked_events() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;

    let db = TestDb::new(&Backend::Sqlite);
    let mut daemon = Daemon::new(&db.url, &db.dir);
    for (key, value) in [
        ("CONVERRA__ACTORS__PARK_AFTER_ATTEMPTS", "2"),
        ("CONVERRA__ACTORS__RETRY_DELAY_MS", "50"),
        ("CONVERRA__ACTORS__SWEEP_INTERVAL_SECS", "1"),
        ("CONVERRA__ACTORS__SWEEP_MIN_AGE_SECS", "1"),
    ] {
        daemon.env.push((key.into(), value.into()));
    }
    let tenant = daemon.seed_tenant(&db.dir, "parking", "EAAG-token");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let _running = daemon.spawn();
    daemon.wait_ready(&client).await;
    let mut beside =
        diesel::SqliteConnection::establish(db.dir.path().join("converra.db").to_str().unwrap())
            .unwrap();
    let master_key = db.dir.path().join("master.key");
    let keyring = converra::crypto::Keyring::load(&master_key)
        .unwrap()
        .unwrap();
    let parked_bidx =
        keyring.wamid_index(tenant["tenant_id"].as_str().unwrap(), &"wamid.park".into());
    beside
        .batch_execute(&format!(
            "PRAGMA busy_timeout = 10000; CREATE TRIGGER refuse BEFORE INSERT ON messages \
             WHEN NEW.wamid_bidx = '{parked_bidx}' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        ))
        .unwrap();
    let body = text_webhook(NUMBER_A, "4916400", "wamid.park", "parked for a while");
    let signature = converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &body);
    let resp = client
        .post(format!("{}/webhooks/whatsapp", daemon.base))
        .insert_header(("X-Hub-Signature-256", signature))
        .send_body(body)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let deadline = Instant::now() + Duration::from_secs(30);
    let parked = loop {
        let parked = daemon.cli_json(&["inbox", "parked", "--json"]);
        if parked.as_array().is_some_and(|rows| !rows.is_empty()) {
            break parked;
        }
        assert!(Instant::now() < deadline, "never parked");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    let row = &parked[0];
    assert_eq!(row["kind"], "message");
    assert_eq!(row["tenant_id"], tenant["tenant_id"]);
    assert!(
        row["error"].as_str().unwrap().contains("injected failure"),
        "{row}"
    );
    assert!(
        !parked.to_string().contains("4916400"),
        "a phone number is listed: {parked}"
    );

    let out = daemon
        .command(&["inbox", "retry", "--id", "999999"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no parked inbox event with id 999999"));
    let out = daemon.command(&["inbox", "retry"]).output().unwrap();
    assert!(!out.status.success(), "retry needs --id or --all");

    beside.batch_execute("DROP TRIGGER refuse;").unwrap();
    let retried = daemon.cli_json(&["inbox", "retry", "--all", "--json"]);
    assert_eq!(retried["retried"], 1);
    let reader = ApiReader {
        client: client.clone(),
        base: daemon.base.clone(),
        key: tenant["api_key"].as_str().unwrap().to_string(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.all_wamids().await.iter().any(|w| w == "wamid.park") {
        assert!(
            Instant::now() < deadline,
            "the retried event was never applied"
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        daemon.cli_json(&["inbox", "parked", "--json"]),
        serde_json::json!([])
    );
}

/// Peak resident memory of `pid` in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// A backlog of `rows` inbox rows (as an outage of hours leaves them) is processed at
/// start-up, a page at a time: returns the time it took and the daemon's peak RSS.
async fn process_a_backlog(rows: usize) -> (Duration, f64) {
    use diesel::Connection;

    let db = TestDb::new(&Backend::Sqlite);
    let daemon = Daemon::new(&db.url, &db.dir);
    let tenant = daemon.seed_tenant(&db.dir, "backlog", "EAAG-token");
    let tenant_id = converra::ids::TenantId(tenant["tenant_id"].as_str().unwrap().into());
    let mut settings = converra::config::Settings::defaults().unwrap();
    settings.database.url = db.url.clone();
    settings.security.master_key_file = db.dir.path().join("master.key").display().to_string();
    {
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        let day = day_key(&mut conn, &keyring, 1);
        for first in (0..rows).step_by(1_000) {
            let tag = format!("backlog{first}");
            let body = flood_webhooks(NUMBER_A, &tag, 1_000, 1_000, "left over");
            let prepared: Vec<converra::storage::inbox::PreparedEvent> = body
                .iter()
                .flat_map(|body| converra::whatsapp::webhook::parse(body).events)
                .filter_map(|event| {
                    converra::storage::inbox::PreparedEvent::seal(&keyring, &tenant_id, &day, event)
                })
                .collect();
            let routed: Vec<_> = prepared.iter().map(|p| (&tenant_id, p)).collect();
            conn.transaction::<_, converra::storage::StorageError, _>(|conn| {
                converra::storage::inbox::insert_events(conn, &routed, 1)
            })
            .unwrap();
        }
        assert_eq!(
            converra::storage::inbox::backlog(&mut conn).unwrap(),
            rows as i64
        );
    }
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let started = Instant::now();
    let running = daemon.spawn();
    daemon.wait_ready(&client).await;
    let (_, pool) = converra::open_storage(&settings).unwrap();
    let deadline = Instant::now() + Duration::from_secs(1_800);
    loop {
        let backlog =
            converra::storage::with_conn(&pool, converra::storage::inbox::backlog).unwrap();
        if backlog == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{backlog} rows still unprocessed"
        );
        actix_rt::time::sleep(Duration::from_millis(250)).await;
    }
    (started.elapsed(), peak_rss_mib(running.id()))
}

/// Memory is bounded however long the backlog: 100,000 rows at start-up stay under
/// 256 MiB of resident memory.
#[actix_rt::test]
async fn a_backlog_of_100_000_rows_is_processed_in_bounded_memory() {
    let (took, peak) = process_a_backlog(100_000).await;
    eprintln!("100,000 inbox rows processed in {took:?}, peak RSS {peak:.0} MiB");
    assert!(peak > 0.0, "no RSS reading");
    assert!(peak < 256.0, "peak RSS {peak:.0} MiB");
}

/// The same with a million rows: a benchmark, run against the release build with
/// `cargo test --release -- --ignored a_backlog_of_a_million --nocapture`.
#[actix_rt::test]
#[ignore]
async fn a_backlog_of_a_million_rows_is_processed_in_bounded_memory() {
    let (took, peak) = process_a_backlog(1_000_000).await;
    eprintln!("1,000,000 inbox rows processed in {took:?}, peak RSS {peak:.0} MiB");
    assert!(peak < 256.0, "peak RSS {peak:.0} MiB");
}

/// An operator command pointed at no Converra database (run from another directory
/// with the default relative path, or at an empty PostgreSQL database) refuses, naming
/// where it looked, and creates neither a database nor a master key.
#[test]
fn an_operator_command_pointed_at_no_database_refuses_and_creates_nothing() {
    let empty = tempfile::tempdir().unwrap();
    let in_empty = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(empty.path())
            .output()
            .unwrap()
    };
    let create = [
        "tenant",
        "create",
        "--name",
        "Lost",
        "--holder-email",
        "a@b.example",
    ];
    let out = in_empty(&create);
    assert!(
        !out.status.success(),
        "a command made a database of its own"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    let expected = empty.path().join("data/converra.db");
    assert!(
        said.contains("no Converra database") && said.contains(&expected.display().to_string()),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(empty.path()).unwrap().count(),
        0,
        "nothing is created"
    );
    // A database that exists, but not its master key where the command looks: the
    // command makes no key of its own, even though the database holds nothing yet.
    assert!(in_empty(&["migrate"]).status.success());
    let key_file = empty.path().join("data/master.key");
    std::fs::remove_file(&key_file).unwrap();
    let out = in_empty(&create);
    assert!(
        !out.status.success(),
        "a command made a master key of its own"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("master.key") && said.contains("missing"),
        "{said}"
    );
    assert!(!key_file.exists(), "no key is made");
    for backend in backends() {
        let Backend::Postgres(_) = backend else {
            continue;
        };
        let db = TestDb::new(&backend);
        let out = Command::new(BIN)
            .args(["tenant", "list"])
            .current_dir(empty.path())
            .env("CONVERRA__DATABASE__URL", &db.url)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("no Converra database"), "{said}");
    }
}

/// Kill the daemon while its outbox is busy and restart it: every send the API
/// accepted reaches Meta (the fake Graph API) exactly once, each contact's in the
/// order they were accepted. Meta's part is played as Meta plays it: every message it
/// accepted is echoed by a `sent` status webhook naming the send
/// (`biz_opaque_callback_data`), which is how the restarted daemon learns that a send
/// in flight at the kill had reached Meta.
#[actix_rt::test]
async fn sigkill_with_a_busy_outbox_sends_every_accepted_message_once_in_order() {
    use crate::fake_graph::FakeGraph;
    use serde_json::json;
    for backend in backends() {
        let graph = FakeGraph::start().await;
        // A slow Meta: the kill finds sends that reached it unanswered.
        graph.set_delay(Duration::from_millis(300));
        let db = TestDb::new(&backend);
        let mut daemon = Daemon::new(&db.url, &db.dir);
        daemon.env.extend([
            (
                "CONVERRA__WHATSAPP__GRAPH_BASE_URL".into(),
                graph.base.clone(),
            ),
            ("CONVERRA__OUTBOUND__DEFAULT_MPS".into(), "40".into()),
            ("CONVERRA__OUTBOUND__RECONCILE_SECS".into(), "3".into()),
        ]);
        let tenant = daemon.seed_tenant(&db.dir, "outbox", "EAAG-token");
        let api_key = tenant["api_key"].as_str().unwrap().to_string();
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let mut child = daemon.spawn();
        daemon.wait_ready(&client).await;

        const CONTACTS: usize = 10;
        const PER_CONTACT: usize = 12;
        let mut accepted: Vec<(String, String)> = Vec::new();
        for round in 0..PER_CONTACT {
            for c in 0..CONTACTS {
                let to = format!("4917700000{c:02}");
                let body = json!({"from_phone_number_id": NUMBER_A, "to": to,
                    "type": "template", "template": {"name": format!("step_{round}"),
                    "language": {"code": "en_US"}}});
                let mut resp = client
                    .post(format!("{}/v1/messages", daemon.base))
                    .insert_header(("Authorization", format!("Bearer {api_key}")))
                    .send_json(&body)
                    .await
                    .unwrap();
                let answer: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
                assert_eq!(resp.status().as_u16(), 202, "{answer}");
                accepted.push((to, answer["id"].as_str().unwrap().to_string()));
            }
        }
        // At 40 a second the 120 sends take 3 s; kill a third of the way in.
        graph.wait_calls(40).await;
        child.kill().unwrap();
        let _ = child.wait();
        let before_kill = graph.calls().len();
        assert!(
            before_kill < accepted.len(),
            "the outbox was done before the kill"
        );

        let _restarted = daemon.spawn();
        daemon.wait_ready(&client).await;
        // Meta's `sent` echo of each message it accepted, delivered once the daemon
        // is back (Meta retries webhooks while it is down), and of each later one.
        let url = format!("{}/webhooks/whatsapp", daemon.base);
        let mut echoed = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let calls = graph.calls();
            // Meta batches statuses: one webhook carries every echo due, so that the
            // sends in flight at the kill hear theirs well within the reconciliation.
            let statuses: Vec<Value> = calls
                .iter()
                .enumerate()
                .skip(echoed)
                .map(|(i, call)| {
                    json!({"id": format!("wamid.FAKE{}", i + 1), "status": "sent",
                        "timestamp": "1764000100", "recipient_id": call.body["to"],
                        "biz_opaque_callback_data": call.body["biz_opaque_callback_data"]})
                })
                .collect();
            if !statuses.is_empty() {
                let webhook = envelope(vec![statuses_change(NUMBER_A, statuses)]);
                let body = serde_json::to_vec(&webhook).unwrap();
                let signature = converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &body);
                let resp = client
                    .post(&url)
                    .insert_header(("X-Hub-Signature-256", signature))
                    .send_body(body)
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
            }
            echoed = calls.len();
            let sent: HashSet<&str> = calls
                .iter()
                .filter_map(|c| c.body["biz_opaque_callback_data"].as_str())
                .collect();
            if accepted.iter().all(|(_, id)| sent.contains(id.as_str())) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} accepted sends reached Meta",
                sent.len(),
                accepted.len()
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        // Every accepted send is recorded sent (its own answer or Meta's echo):
        // nothing is left that reconciliation could send again.
        for (_, id) in &accepted {
            loop {
                let mut resp = client
                    .get(format!("{}/v1/messages/{id}", daemon.base))
                    .insert_header(("Authorization", format!("Bearer {api_key}")))
                    .send()
                    .await
                    .unwrap();
                let state: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
                if state["state"] == "sent" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{backend:?}: send {id} stayed {state}"
                );
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let calls = graph.calls();
        let ids: Vec<&str> = calls
            .iter()
            .map(|c| c.body["biz_opaque_callback_data"].as_str().unwrap())
            .collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{backend:?}: a send reached Meta twice"
        );
        assert_eq!(ids.len(), accepted.len());
        for c in 0..CONTACTS {
            let to = format!("4917700000{c:02}");
            let order: Vec<&str> = calls
                .iter()
                .filter(|call| call.body["to"] == to.as_str())
                .map(|call| call.body["biz_opaque_callback_data"].as_str().unwrap())
                .collect();
            let expected: Vec<&str> = accepted
                .iter()
                .filter(|(contact, _)| *contact == to)
                .map(|(_, id)| id.as_str())
                .collect();
            assert_eq!(order, expected, "{backend:?}: the order of {to}'s messages");
        }
        graph.stop().await;
    }
}
