//! What the retention and erasure benchmarks share: a fresh database on either
//! backend, SQL run as it is, the daemon in-process on an ephemeral port, and an
//! open-loop webhook load beside the work measured, with its p99.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use diesel::prelude::*;

fn pg_admin_url() -> String {
    std::env::var("CONVERRA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

fn pg_admin() -> PgConnection {
    PgConnection::establish(&pg_admin_url()).expect("postgres")
}

/// A database for the benchmark `name`: a SQLite file in `dir`, or a new PostgreSQL
/// database (dropped by [`drop_database`]).
pub fn fresh_database(backend: &str, name: &str, dir: &std::path::Path) -> String {
    match backend {
        "sqlite" => format!("sqlite://{}", dir.join("converra.db").display()),
        "postgres" => {
            let name = pg_database_name(name);
            let mut conn = pg_admin();
            // One statement each: PostgreSQL refuses CREATE/DROP DATABASE in a batch.
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .unwrap();
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .unwrap();
            let mut url = url::Url::parse(&pg_admin_url()).unwrap();
            url.set_path(&format!("/{name}"));
            url.to_string()
        }
        other => panic!("--backend {other}: sqlite or postgres"),
    }
}

fn pg_database_name(name: &str) -> String {
    format!("converra_bench_{name}_{}", std::process::id())
}

pub fn drop_database(backend: &str, name: &str) {
    if backend == "postgres" {
        let _ = diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            pg_database_name(name)
        ))
        .execute(&mut pg_admin());
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn run(conn: &mut converra::storage::DbConn, sql: &str) {
    use diesel::connection::SimpleConnection;
    match conn {
        converra::storage::DbConn::Sqlite(c) => c.batch_execute(sql),
        converra::storage::DbConn::Pg(c) => c.batch_execute(sql),
    }
    .unwrap_or_else(|e| panic!("{e}: {sql}"));
}

/// `count` tenants, each with one number (`num0`, `num1`, ...).
pub fn create_tenants(
    conn: &mut converra::storage::DbConn,
    vault: &converra::storage::key_store::Vault,
    count: u64,
    email: &str,
) -> Vec<converra::storage::tenants::CreatedTenant> {
    (0..count)
        .map(|n| {
            let tenant =
                converra::storage::tenants::create_tenant(conn, &format!("tenant-{n}"), email, 0)
                    .unwrap();
            converra::storage::tenants::add_phone_number(
                conn,
                vault,
                &converra::storage::tenants::NewPhoneNumber {
                    tenant_id: &tenant.tenant_id,
                    phone_number_id: &format!("num{n}"),
                    display_phone_number: "15550000000",
                    waba_id: "WABA",
                    access_token: "EAAG-bench",
                },
                0,
            )
            .unwrap();
            tenant
        })
        .collect()
}

/// The daemon, in-process on its own thread, until the returned sender is used (or
/// dropped); its address and the thread.
pub fn start_daemon(
    settings: &converra::config::Settings,
) -> (
    std::net::SocketAddr,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let listener = converra::listen("127.0.0.1:0", settings.server.listen_backlog).unwrap();
    let address = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let settings = settings.clone();
    let daemon = std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let _ = stop_rx.recv();
                let _ = tx.send(());
            });
            let (log, _guard) = converra::logging::root(&settings.log);
            converra::run(listener, settings, converra::RunOptions::new(log), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        })
    });
    (address, stop_tx, daemon)
}

/// A signed text webhook to `number`, from one of 1,000 contacts.
pub fn webhook(number: &str, i: u64, secret: &str) -> (Vec<u8>, String) {
    let now = now_ms() / 1000;
    let c = i % 1000;
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"WABA","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550000000","phone_number_id":"{number}"}},"contacts":[{{"wa_id":"49170{c:05}","profile":{{"name":"Load {c}"}}}}],"messages":[{{"from":"49170{c:05}","id":"wamid.ingest.{i}","timestamp":"{now}","type":"text","text":{{"body":"beside the work {i}"}}}}]}}}}]}}]}}"#
    );
    let signature = converra::whatsapp::signature::sign(secret.as_bytes(), body.as_bytes());
    (body.into_bytes(), signature)
}

/// Webhooks to `number` at `rate` a second (open loop: latency from each one's
/// scheduled time) until `until` is set; returns the latencies in µs and the failures.
pub fn ingest(
    base: String,
    number: String,
    secret: String,
    rate: u64,
    first: u64,
    until: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<u64>, u64) {
    actix_rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(256))
            .timeout(Duration::from_secs(30))
            .finish();
        let url = format!("{base}/webhooks/whatsapp");
        let results = std::rc::Rc::new(std::cell::RefCell::new((Vec::new(), 0u64)));
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0u64.. {
            if until.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            let scheduled = start + interval.mul_f64(k as f64);
            actix_rt::time::sleep_until(scheduled.into()).await;
            let (body, signature) = webhook(&number, first + k, &secret);
            let (client, url, results) = (client.clone(), url.clone(), results.clone());
            while tasks.try_join_next().is_some() {}
            tasks.spawn_local(async move {
                let ok = client
                    .post(url)
                    .insert_header(("X-Hub-Signature-256", signature))
                    .insert_header(("Content-Type", "application/json"))
                    .send_body(body)
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                let mut r = results.borrow_mut();
                r.0.push(scheduled.elapsed().as_micros() as u64);
                if !ok {
                    r.1 += 1;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let r = results.borrow();
        (r.0.clone(), r.1)
    })
}

/// Ingest beside the work measured: a warm-up of 3 s (left out), a baseline of
/// `baseline` s, then load until the returned flag is set; the thread gives both
/// phases' latencies and failures.
pub type Phases = ((Vec<u64>, u64), (Vec<u64>, u64));

pub fn ingest_beside(
    base: String,
    number: String,
    secret: String,
    rate: u64,
    baseline: u64,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<Phases>,
) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let thread = std::thread::spawn(move || {
        let after = |secs: u64| {
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let raised = flag.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(secs));
                raised.store(true, std::sync::atomic::Ordering::Release);
            });
            flag
        };
        // Ready first: the daemon answers.
        std::thread::sleep(Duration::from_millis(500));
        let _ = ingest(
            base.clone(),
            number.clone(),
            secret.clone(),
            rate,
            200_000_000,
            after(3),
        );
        let before = ingest(
            base.clone(),
            number.clone(),
            secret.clone(),
            rate,
            0,
            after(baseline),
        );
        let during = ingest(base, number, secret, rate, 100_000_000, flag);
        (before, during)
    });
    (done, thread)
}

pub fn p99_ms(latencies: &mut [u64]) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)] as f64 / 1000.0
}
