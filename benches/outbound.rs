//! Outbound benchmark: the send path from the tenant API to Meta, measured in one
//! process on one machine.
//!
//! ```sh
//! # One number at 1,000 msg/s: offered 1,100/s (the limiter's accuracy), then 900/s (latency)
//! cargo bench --bench outbound -- --scenario limiter --seconds 10
//! # 50 numbers at 1,000 msg/s each, offered 10,000/s in all
//! cargo bench --bench outbound -- --scenario numbers --seconds 10
//! # One run with any load; --rounds 3 runs it three times, then prints every figure's median
//! cargo bench --bench outbound -- --numbers 4 --mps 200 --rate 1000 --seconds 10 --backend postgres
//! ```
//!
//! The daemon runs in-process (`converra::run`, with its allocator and small pages)
//! over a fresh database (a temporary SQLite file, or with `--backend postgres` a new
//! database on CONVERRA_TEST_DATABASE_URL or the local server), with one tenant owning
//! `--numbers` phone numbers, each number's throughput `outbound.default_mps = --mps`.
//! Its Graph API (`whatsapp.graph_base_url`) is a fake on 127.0.0.1 in the same
//! process, on a thread of its own: it checks the bearer token and
//! `messaging_product`, records each send (number, Converra's id from
//! `biz_opaque_callback_data`, recipient, arrival time) and answers as Meta does; it
//! lists one approved template, `hello`, which every send uses. Each number's sender
//! has synced it before the load starts.
//!
//! The load is open (like wrk2): `--rate` template sends a second in all, message `i`
//! from number `i % numbers` to that number's contact `(i / numbers) % contacts`, over
//! `--concurrency` keep-alive connections (each sends the next due request when its
//! previous one is answered), for `--seconds`; a request that waits for a free
//! connection counts that wait in the API's latency (from its scheduled time to its
//! 202). When the API does not keep up, the requests still waiting 1 s after the load
//! are not sent (`unsent`), and those unanswered 10 s after it are abandoned
//! (`unanswered`); both count as infinite in the API's latency. Then it waits up to
//! `--drain` seconds (less if no send arrives for 5 s) for every accepted send to
//! reach the fake.
//!
//! The result line (`target=outbound`): the offered rate; accepted/s (202s in the
//! steady part of the run, after `--warmup`, to the load's end) and sent/s (arrivals
//! at the fake in that same part); for number 0, its sent/s as a share of `--mps`
//! (`n0_limit_pct`: the limiter's accuracy when offered more than the limit) and the
//! most arrivals in any sliding 1-second window of the whole run (`n0_max_1s`, and
//! `max_1s_pct_any` for the busiest number); the accept-to-send latency (202 received
//! to arrival at the fake, by id, for the sends accepted in the steady part; a send
//! that never arrived counts as infinite); `missing` (accepted, never arrived by the
//! drain's end; `missing_pending` of them still queued or sending in the outbox, i.e. not
//! lost but not sent yet), `duplicates` (extra arrivals of an id), `unmatched`
//! (arrivals of ids no 202 named), `misrouted` (an id arriving from another number or
//! to another recipient than its request's); the API's latency (from the scheduled
//! time, for the requests scheduled in the steady part; `api_service_p99_ms` from the
//! request's send, without the wait for a connection, for those sent in it); the process's
//! resident memory at the load's end (daemon, fake and load generator together) and
//! its CPU over the load, in cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use diesel::prelude::*;

/// The daemon's allocator (see src/bin/converra/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The numbers' access token, which the fake Graph API requires.
const TOKEN: &str = "EAAG-outbound-bench-token";
const WABA: &str = "102290129340398";
/// Phone number `n` is `NUMBER_BASE + n`.
const NUMBER_BASE: u64 = 100_000_000_000_001;
/// How long after the load's end a request still waiting for a connection is sent.
const SEND_CUTOFF: Duration = Duration::from_secs(1);
/// How long after the load's end a request may still be answered.
const ANSWER_GRACE: Duration = Duration::from_secs(10);
/// The drain stops early when no send has arrived for this long.
const DRAIN_STALL: Duration = Duration::from_secs(5);

#[derive(Parser, Clone)]
struct Args {
    /// `run` (one run with the options given), `limiter` (one number, --mps 1000,
    /// offered 1,100/s then 900/s) or `numbers` (50 numbers, --mps 1000, 10,000/s).
    #[arg(long, default_value = "run")]
    scenario: String,
    /// sqlite or postgres (postgres uses CONVERRA_TEST_DATABASE_URL or the local server)
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Phone numbers of the tenant, each with its sender.
    #[arg(long, default_value_t = 1)]
    numbers: usize,
    /// Each number's throughput (outbound.default_mps, 1 to 1000).
    #[arg(long, default_value_t = 1000)]
    mps: u32,
    /// Sends offered a second, in all.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keep-alive connections to the API, over all client threads.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Contacts per number, messaged round-robin.
    #[arg(long, default_value_t = 1000)]
    contacts: usize,
    /// The first N seconds of the load are left out of the rates and latencies (the
    /// first send to each contact creates it).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The longest wait after the load for the accepted sends to reach the fake.
    #[arg(long, default_value_t = 30)]
    drain: u64,
    /// Runs of each load, each in a process of its own; with more than one, a line of
    /// every figure's median follows (of the failure counts and the 1-second maxima,
    /// the worst round's).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Converra's server.workers (0 = its default).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Also print, for each second of the run, the requests sent (by their scheduled
    /// second), accepted (by their 202's) and sends arrived at the fake.
    #[arg(long)]
    timeline: bool,
    /// Passed by `cargo bench` to every bench binary; nothing to do with the load.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The instant every recorded time is counted from (µs), shared by the fake and the
/// clients.
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn number_id(n: usize) -> String {
    (NUMBER_BASE + n as u64).to_string()
}

/// The recipient of contact `k` of number `n` (12 digits).
fn contact_to(n: usize, k: usize) -> u64 {
    490_000_000_000 + n as u64 * 10_000_000 + k as u64
}

/// Message `i`'s number and recipient.
fn route_of(i: u64, args: &Args) -> (usize, u64) {
    let numbers = args.numbers as u64;
    let n = (i % numbers) as usize;
    let k = ((i / numbers) % args.contacts as u64) as usize;
    (n, contact_to(n, k))
}

// ---------------------------------------------------------------------------------
// The fake Graph API

/// One send as it reached the fake.
#[derive(Clone, Copy)]
struct Arrival {
    /// Converra's id (`biz_opaque_callback_data`), as a UUID's bits; 0 if absent.
    id: u128,
    phone_number_id: u64,
    to: u64,
    at_us: u64,
}

#[derive(Default)]
struct Fake {
    arrivals: Mutex<Vec<Arrival>>,
    accepted: AtomicU64,
    /// Calls refused: a wrong token, version or body.
    refused: AtomicUsize,
    template_lists: AtomicUsize,
}

#[derive(serde::Deserialize)]
struct GraphSend {
    messaging_product: Option<String>,
    to: Option<String>,
    biz_opaque_callback_data: Option<String>,
}

fn meta_error(code: i64, message: &str) -> String {
    serde_json::json!({"error": {"message": message, "type": "OAuthException", "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": message},
        "fbtrace_id": "AbCdEf"}})
    .to_string()
}

fn bearer_ok(req: &HttpRequest) -> bool {
    req.headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(TOKEN)
}

async fn fake_send(
    fake: web::Data<Fake>,
    version: web::Data<String>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let at_us = now_us();
    let (path_version, number) = path.into_inner();
    let refuse = |status: u16, code: i64, message: &str| {
        fake.refused.fetch_add(1, Ordering::Relaxed);
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .content_type("application/json")
            .body(meta_error(code, message))
    };
    if !bearer_ok(&req) {
        return refuse(401, 190, "Invalid OAuth access token");
    }
    if path_version != **version {
        return refuse(400, 2500, "Unknown path components");
    }
    let Ok(send) = serde_json::from_slice::<GraphSend>(&body) else {
        return refuse(400, 100, "Invalid parameter: the body is not JSON");
    };
    if send.messaging_product.as_deref() != Some("whatsapp") {
        return refuse(400, 100, "Invalid parameter: messaging_product");
    }
    let Some(to) = send.to else {
        return refuse(400, 100, "Invalid parameter: to");
    };
    let id = send
        .biz_opaque_callback_data
        .as_deref()
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .map_or(0, |id| id.as_u128());
    fake.arrivals.lock().unwrap().push(Arrival {
        id,
        phone_number_id: number.parse().unwrap_or(0),
        to: to.parse().unwrap_or(0),
        at_us,
    });
    let n = fake.accepted.fetch_add(1, Ordering::Relaxed) + 1;
    HttpResponse::Ok().content_type("application/json").body(format!(
        r#"{{"messaging_product":"whatsapp","contacts":[{{"input":"{to}","wa_id":"{to}"}}],"messages":[{{"id":"wamid.HBgLMTU1NTAwMDAwMDAVAgARGBI{n:016X}"}}]}}"#
    ))
}

/// The account's templates: `hello`, approved, without parameters.
async fn fake_templates(fake: web::Data<Fake>, req: HttpRequest) -> HttpResponse {
    if !bearer_ok(&req) {
        fake.refused.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::Unauthorized()
            .content_type("application/json")
            .body(meta_error(190, "Invalid OAuth access token"));
    }
    fake.template_lists.fetch_add(1, Ordering::Relaxed);
    HttpResponse::Ok().content_type("application/json").body(
        r#"{"data":[{"name":"hello","language":"en_US","category":"UTILITY","status":"APPROVED","components":[{"type":"BODY","text":"Hello from Converra"}],"id":"1"}],"paging":{"cursors":{"before":"MAZDZD","after":"MAZDZD"}}}"#,
    )
}

/// Starts the fake on 127.0.0.1 (one worker, on threads of its own); its base URL.
fn start_fake(fake: web::Data<Fake>, version: String) -> (String, actix_web::dev::ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fake-graph".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                let version = web::Data::new(version);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(fake.clone())
                        .app_data(version.clone())
                        .route("/{version}/{number}/messages", web::post().to(fake_send))
                        .route(
                            "/{version}/{waba}/message_templates",
                            web::get().to(fake_templates),
                        )
                })
                .workers(1)
                .disable_signals()
                .listen(listener)
                .unwrap()
                .run();
                handle_tx.send(server.handle()).unwrap();
                let _ = server.await;
            })
        })
        .unwrap();
    (base, handle_rx.recv().unwrap())
}

// ---------------------------------------------------------------------------------
// The load

/// One request's outcome.
struct Sent {
    i: u64,
    scheduled_us: u64,
    /// When a connection took it.
    sent_us: u64,
    answered_us: u64,
    /// Converra's id when the answer was 202.
    id: Option<u128>,
}

#[derive(Default)]
struct Load {
    sent: Vec<Sent>,
    /// Answers other than 202 (or failed requests), by status (0: no answer).
    errors: HashMap<u16, usize>,
    first_error: Option<String>,
    /// Requests still waiting for a free connection `SEND_CUTOFF` after the load: never
    /// sent (the API did not keep up with the rate offered).
    unsent: usize,
    /// Requests sent but unanswered `ANSWER_GRACE` after the load: abandoned.
    unanswered: usize,
}

#[derive(serde::Deserialize)]
struct SendAnswer {
    id: String,
}

/// Sends one request; records its outcome.
async fn request(
    client: &awc::Client,
    url: &str,
    auth: &str,
    body: String,
    (i, scheduled_us): (u64, u64),
    load: &RefCell<Load>,
) {
    let sent_us = now_us();
    let answer = client
        .post(url)
        .insert_header(("Authorization", auth))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body)
        .await;
    let (status, bytes) = match answer {
        // The body is read, so that the connection is kept.
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            (status, resp.body().await.ok())
        }
        Err(e) => (0, Some(web::Bytes::from(e.to_string()))),
    };
    let answered_us = now_us();
    let id = (status == 202)
        .then(|| {
            let answer: SendAnswer = serde_json::from_slice(bytes.as_deref()?).ok()?;
            Some(uuid::Uuid::parse_str(&answer.id).ok()?.as_u128())
        })
        .flatten();
    let mut load = load.borrow_mut();
    if id.is_none() {
        *load.errors.entry(status).or_default() += 1;
        if load.first_error.is_none() {
            load.first_error = Some(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(bytes.as_deref().unwrap_or(&[]))
            ));
        }
    }
    load.sent.push(Sent {
        i,
        scheduled_us,
        sent_us,
        answered_us,
        id,
    });
}

/// The open loop: each client thread has a pacer thread that queues each request at
/// its scheduled time, and its share of `--concurrency` connections, each sending the
/// next queued request when its previous one is answered (like wrk2). A request's
/// latency counts from its scheduled time, its wait in the queue included; the queue
/// holds only (index, time), so a saturated API does not grow the generator's memory.
fn run_load(args: &Args, base: &str, api_key: &str, start_us: u64) -> Load {
    let epoch = *EPOCH.get().unwrap();
    let start = epoch + Duration::from_micros(start_us);
    let end = start + Duration::from_secs(args.seconds);
    let next = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..args.clients)
        .map(|t| {
            let (args, url, next) = (args.clone(), format!("{base}/v1/messages"), next.clone());
            let auth = format!("Bearer {api_key}");
            std::thread::Builder::new()
                .name(format!("client-{t}"))
                .spawn(move || {
                    actix_rt::System::new().block_on(async move {
                        let connections = args.concurrency.div_ceil(args.clients).max(1);
                        let client = awc::Client::builder()
                            .timeout(Duration::from_secs(30))
                            .connector(awc::Connector::new().limit(connections))
                            .finish();
                        let rate = (args.rate as f64 / args.clients as f64).max(0.001);
                        let interval = Duration::from_secs_f64(1.0 / rate);
                        // The threads' requests interleaved.
                        let offset = interval.mul_f64(t as f64 / args.clients as f64);
                        // A thread of its own sleeps until each request's time (the
                        // runtime's timers tick in whole milliseconds).
                        let (due_tx, due_rx) = flume::unbounded::<(u64, Instant)>();
                        let pacer = std::thread::Builder::new()
                            .name(format!("pacer-{t}"))
                            .spawn(move || {
                                for k in 0u64.. {
                                    let scheduled = start + offset + interval.mul_f64(k as f64);
                                    if scheduled >= end {
                                        break;
                                    }
                                    let now = Instant::now();
                                    if scheduled > now {
                                        std::thread::sleep(scheduled - now);
                                    }
                                    let i = next.fetch_add(1, Ordering::Relaxed);
                                    if due_tx.send((i, scheduled)).is_err() {
                                        break;
                                    }
                                }
                            })
                            .unwrap();
                        let load = Rc::new(RefCell::new(Load::default()));
                        let in_flight = Rc::new(std::cell::Cell::new(0usize));
                        let mut workers = tokio::task::JoinSet::new();
                        for _ in 0..connections {
                            let (client, url, auth, args, due_rx, load, in_flight) = (
                                client.clone(),
                                url.clone(),
                                auth.clone(),
                                args.clone(),
                                due_rx.clone(),
                                load.clone(),
                                in_flight.clone(),
                            );
                            workers.spawn_local(async move {
                                while let Ok((i, scheduled)) = due_rx.recv_async().await {
                                    if Instant::now() >= end + SEND_CUTOFF {
                                        load.borrow_mut().unsent += 1;
                                        continue;
                                    }
                                    let (n, to) = route_of(i, &args);
                                    let body = format!(
                                        r#"{{"from_phone_number_id":"{}","to":"{to}","type":"template","template":{{"name":"hello","language":{{"code":"en_US"}}}}}}"#,
                                        number_id(n)
                                    );
                                    let scheduled_us = (scheduled - epoch).as_micros() as u64;
                                    in_flight.set(in_flight.get() + 1);
                                    request(&client, &url, &auth, body, (i, scheduled_us), &load)
                                        .await;
                                    in_flight.set(in_flight.get() - 1);
                                }
                            });
                        }
                        let grace = tokio::time::Instant::from_std(end + ANSWER_GRACE);
                        let _ = tokio::time::timeout_at(grace, async {
                            while workers.join_next().await.is_some() {}
                        })
                        .await;
                        workers.abort_all();
                        pacer.join().unwrap();
                        let mut load = std::mem::take(&mut *load.borrow_mut());
                        load.unanswered = in_flight.get();
                        load.unsent += due_rx.len();
                        load
                    })
                })
                .unwrap()
        })
        .collect();
    let mut all = Load::default();
    for thread in threads {
        let load = thread.join().unwrap();
        all.sent.extend(load.sent);
        for (status, count) in load.errors {
            *all.errors.entry(status).or_default() += count;
        }
        all.first_error = all.first_error.or(load.first_error);
        all.unsent += load.unsent;
        all.unanswered += load.unanswered;
    }
    all
}

// ---------------------------------------------------------------------------------
// The run

fn pg_admin_url() -> String {
    std::env::var("CONVERRA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

fn pg_database_name() -> String {
    format!("converra_bench_outbound_{}", std::process::id())
}

fn fresh_pg_database() -> String {
    let admin = pg_admin_url();
    let name = pg_database_name();
    let mut conn = PgConnection::establish(&admin).expect("postgres");
    // One statement each: PostgreSQL refuses CREATE/DROP DATABASE in a batch.
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn drop_pg_database() {
    if let Ok(mut conn) = PgConnection::establish(&pg_admin_url()) {
        let name = pg_database_name();
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn);
    }
}

fn run_one(args: &Args) {
    assert!(
        args.numbers >= 1 && args.numbers <= 999,
        "--numbers: 1 to 999"
    );
    assert!(
        args.contacts >= 1 && args.contacts <= 10_000_000,
        "--contacts: 1 to 10,000,000"
    );
    assert!(
        args.seconds >= 1 && args.rate >= 1,
        "--seconds, --rate: at least 1"
    );
    let warmup = if args.warmup < args.seconds {
        args.warmup
    } else {
        0
    };
    EPOCH.get_or_init(Instant::now);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = converra::config::Settings::defaults().unwrap();

    let fake = web::Data::new(Fake::default());
    fake.arrivals
        .lock()
        .unwrap()
        .reserve((args.rate * (args.seconds + 1)) as usize + 1024);
    let (graph_base, fake_handle) =
        start_fake(fake.clone(), settings.whatsapp.graph_api_version.clone());

    settings.database.url = if args.backend == "postgres" {
        fresh_pg_database()
    } else {
        format!("sqlite://{}", dir.path().join("converra.db").display())
    };
    settings.security.master_key_file = dir.path().join("master.key").display().to_string();
    settings.whatsapp.app_secret = "outbound-bench-secret".into();
    settings.whatsapp.graph_base_url = graph_base;
    settings.outbound.default_mps = args.mps;
    if !std::path::Path::new(&settings.outbound.ca_file).exists() {
        settings.outbound.ca_file = String::new();
    }
    settings.server.workers = args.workers;
    settings.log.level = std::env::var("OUTBOUND_LOG").unwrap_or_else(|_| "error".into());

    // One tenant with its API key, and its numbers.
    let (keyring, pool) = converra::open_storage(&settings).unwrap();
    let api_key = {
        let mut conn = pool.get().unwrap();
        let tenant = converra::storage::tenants::create_tenant(
            &mut conn,
            "outbound",
            "ops@outbound.example",
            0,
        )
        .unwrap();
        for n in 0..args.numbers {
            converra::storage::tenants::add_phone_number(
                &mut conn,
                &keyring,
                &converra::storage::tenants::NewPhoneNumber {
                    tenant_id: &tenant.tenant_id,
                    phone_number_id: &number_id(n),
                    display_phone_number: &format!("1555{n:07}"),
                    waba_id: WABA,
                    access_token: TOKEN,
                },
                0,
            )
            .unwrap();
        }
        tenant.api_key
    };

    let listener = converra::listen("127.0.0.1:0", settings.server.listen_backlog).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let daemon = {
        let settings = settings.clone();
        std::thread::spawn(move || {
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
        })
    };
    actix_rt::System::new().block_on(async {
        let client = awc::Client::default();
        for _ in 0..400 {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the daemon did not start");
    });
    // Every number's sender starts with the daemon and syncs the account's templates.
    let synced_by = Instant::now() + Duration::from_secs(20);
    while fake.template_lists.load(Ordering::Relaxed) < args.numbers {
        assert!(
            Instant::now() < synced_by,
            "the senders listed the templates {} times for {} numbers",
            fake.template_lists.load(Ordering::Relaxed),
            args.numbers
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The syncs' writes.
    std::thread::sleep(Duration::from_millis(300));

    // The load starts on a whole 100 ms from now, the same for every client thread.
    let start_us = now_us() + 100_000;
    let load_end_us = start_us + args.seconds * 1_000_000;
    let cpu_before = process_cpu_secs();
    let load = run_load(args, &base, &api_key, start_us);
    let cpu_load = process_cpu_secs() - cpu_before;
    let cpu_wall = (now_us() - start_us) as f64 / 1e6;
    let memory = resident_memory();

    // Drain: every accepted send should reach the fake.
    let accepted: HashMap<u128, &Sent> =
        load.sent.iter().filter_map(|s| Some((s.id?, s))).collect();
    let drain_started = Instant::now();
    let drain_deadline = drain_started + Duration::from_secs(args.drain);
    let (mut seen, mut last_progress) = (0, Instant::now());
    loop {
        let arrived = fake.arrivals.lock().unwrap().len();
        if arrived != seen {
            (seen, last_progress) = (arrived, Instant::now());
        }
        if arrived >= accepted.len() && missing_ids(&fake, &accepted).is_empty() {
            break;
        }
        if Instant::now() >= drain_deadline || last_progress.elapsed() >= DRAIN_STALL {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A moment more, for any repeat on its way.
    std::thread::sleep(Duration::from_millis(300));
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let missing = missing_ids(&fake, &accepted);
    let missing_pending = pending_in_outbox(&pool, &missing);
    let arrivals = std::mem::take(&mut *fake.arrivals.lock().unwrap());

    let _ = stop_tx.send(());
    let _ = daemon.join();
    actix_rt::System::new().block_on(fake_handle.stop(false));
    drop(pool);
    if args.backend == "postgres" {
        drop_pg_database();
    }

    // The figures.
    let steady_from = start_us + warmup * 1_000_000;
    let steady_secs = (load_end_us - steady_from) as f64 / 1e6;
    let in_steady = |t: u64| t >= steady_from && t < load_end_us;
    let accepted_steady = accepted
        .values()
        .filter(|s| in_steady(s.answered_us))
        .count();
    let sent_steady = arrivals.iter().filter(|a| in_steady(a.at_us)).count();
    let number0 = NUMBER_BASE;
    let n0_steady = arrivals
        .iter()
        .filter(|a| a.phone_number_id == number0 && in_steady(a.at_us))
        .count();
    let mut by_number: HashMap<u64, Vec<u64>> = HashMap::new();
    for a in &arrivals {
        by_number
            .entry(a.phone_number_id)
            .or_default()
            .push(a.at_us);
    }
    let max_window = |times: &mut Vec<u64>| {
        times.sort_unstable();
        let (mut i, mut best) = (0, 0);
        for j in 0..times.len() {
            while times[j] - times[i] >= 1_000_000 {
                i += 1;
            }
            best = best.max(j - i + 1);
        }
        best
    };
    let n0_max_1s = by_number.get_mut(&number0).map_or(0, max_window);
    let max_1s_any = by_number.values_mut().map(max_window).max().unwrap_or(0);

    // Each id's first arrival, repeats and strays.
    let mut first: HashMap<u128, Arrival> = HashMap::with_capacity(arrivals.len());
    let (mut duplicates, mut unmatched, mut misrouted) = (0usize, 0usize, 0usize);
    for a in &arrivals {
        let Some(sent) = accepted.get(&a.id) else {
            unmatched += 1;
            continue;
        };
        let (n, to) = route_of(sent.i, args);
        if a.phone_number_id != NUMBER_BASE + n as u64 || a.to != to {
            misrouted += 1;
        }
        match first.get_mut(&a.id) {
            Some(earlier) => {
                duplicates += 1;
                if a.at_us < earlier.at_us {
                    *earlier = *a;
                }
            }
            None => {
                first.insert(a.id, *a);
            }
        }
    }
    // Accept-to-send latency of the sends accepted in the steady part; never sent:
    // infinite.
    let mut latency: Vec<u64> = accepted
        .iter()
        .filter(|(_, s)| in_steady(s.answered_us))
        .map(|(id, s)| {
            first
                .get(id)
                .map_or(u64::MAX, |a| a.at_us.saturating_sub(s.answered_us))
        })
        .collect();
    latency.sort_unstable();
    let mut api: Vec<u64> = load
        .sent
        .iter()
        .filter(|s| s.scheduled_us >= steady_from)
        .map(|s| s.answered_us.saturating_sub(s.scheduled_us))
        .collect();
    // The API's own time, without the wait for a free connection, of the requests
    // sent in the steady part.
    let mut service: Vec<u64> = load
        .sent
        .iter()
        .filter(|s| in_steady(s.sent_us))
        .map(|s| s.answered_us.saturating_sub(s.sent_us))
        .collect();
    service.sort_unstable();
    // Requests never sent or never answered: infinite.
    api.extend(std::iter::repeat_n(u64::MAX, load.unsent + load.unanswered));
    api.sort_unstable();
    let errors: usize = load.errors.values().sum();

    if args.timeline {
        print_timeline(&load, &arrivals, start_us);
    }
    if let Some(error) = &load.first_error {
        eprintln!("first API error: {error}");
    }
    let mps = f64::from(args.mps);
    println!(
        "target=outbound backend={} numbers={} mps={} contacts={} offered={} seconds={} warmup={} accepted={} api_errors={} unsent={} unanswered={} accepted/s={:.0} sent/s={:.0} n0_sent/s={:.0} n0_limit_pct={:.1} n0_max_1s={} n0_max_1s_pct={:.1} max_1s_pct_any={:.1} lat_p50_ms={} lat_p99_ms={} lat_max_ms={} missing={} missing_pending={} duplicates={} unmatched={} misrouted={} graph_refused={} drain_s={:.1} api_p50_ms={} api_p99_ms={} api_max_ms={} api_service_p99_ms={} {} cpu_cores={:.2}",
        args.backend,
        args.numbers,
        args.mps,
        args.contacts,
        args.rate,
        args.seconds,
        warmup,
        accepted.len(),
        errors,
        load.unsent,
        load.unanswered,
        accepted_steady as f64 / steady_secs,
        sent_steady as f64 / steady_secs,
        n0_steady as f64 / steady_secs,
        n0_steady as f64 / steady_secs / mps * 100.0,
        n0_max_1s,
        n0_max_1s as f64 / mps * 100.0,
        max_1s_any as f64 / mps * 100.0,
        ms(percentile(&latency, 0.50)),
        ms(percentile(&latency, 0.99)),
        ms(latency.last().copied()),
        missing.len(),
        missing_pending.map_or("?".into(), |n| n.to_string()),
        duplicates,
        unmatched,
        misrouted,
        fake.refused.load(Ordering::Relaxed),
        drain_secs,
        ms(percentile(&api, 0.50)),
        ms(percentile(&api, 0.99)),
        ms(api.last().copied()),
        ms(percentile(&service, 0.99)),
        memory,
        cpu_load / cpu_wall,
    );
    if errors > 0 {
        let mut by_status: Vec<_> = load.errors.iter().collect();
        by_status.sort();
        eprintln!("API errors by status (0: no answer): {by_status:?}");
    }
}

/// The accepted ids no arrival has named.
fn missing_ids(fake: &Fake, accepted: &HashMap<u128, &Sent>) -> Vec<u128> {
    let arrived: std::collections::HashSet<u128> =
        fake.arrivals.lock().unwrap().iter().map(|a| a.id).collect();
    accepted
        .keys()
        .filter(|id| !arrived.contains(id))
        .copied()
        .collect()
}

/// How many of `ids` the outbox still holds as queued or sending (not lost: not sent
/// yet); `None` when the outbox could not be read.
fn pending_in_outbox(pool: &converra::storage::Pool, ids: &[u128]) -> Option<usize> {
    use converra::storage::schema::outbox;
    let ids: Vec<String> = ids
        .iter()
        .map(|id| uuid::Uuid::from_u128(*id).to_string())
        .collect();
    let mut pending = 0;
    for chunk in ids.chunks(500) {
        let states: Vec<String> = converra::storage::with_conn(pool, |conn| {
            Ok(converra::on_backend!(conn, c => outbox::table
                .filter(outbox::id.eq_any(chunk))
                .select(outbox::state)
                .load::<String>(c))?)
        })
        .ok()?;
        pending += states
            .iter()
            .filter(|s| *s == "queued" || *s == "sending")
            .count();
    }
    Some(pending)
}

fn print_timeline(load: &Load, arrivals: &[Arrival], start_us: u64) {
    let second = |t: u64| t.saturating_sub(start_us) / 1_000_000;
    let mut rows: std::collections::BTreeMap<u64, [usize; 4]> = Default::default();
    for s in &load.sent {
        rows.entry(second(s.scheduled_us)).or_default()[0] += 1;
        if s.id.is_some() {
            rows.entry(second(s.answered_us)).or_default()[1] += 1;
        }
    }
    for a in arrivals {
        let row = rows.entry(second(a.at_us)).or_default();
        row[2] += 1;
        if a.phone_number_id == NUMBER_BASE {
            row[3] += 1;
        }
    }
    for (second, [requested, accepted, sent, n0]) in rows {
        println!(
            "second={second} requested={requested} accepted={accepted} sent={sent} n0_sent={n0}"
        );
    }
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize])
}

/// Microseconds as milliseconds; `inf` for a send that never arrived.
fn ms(us: Option<u64>) -> String {
    match us {
        None => "?".into(),
        Some(u64::MAX) => "inf".into(),
        Some(us) => format!("{:.2}", us as f64 / 1000.0),
    }
}

/// This process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in MiB.
fn resident_memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mib = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or_else(|| "?".into(), |kib| (kib / 1024).to_string())
    };
    format!("rss_mib={} peak_rss_mib={}", mib("VmRSS:"), mib("VmHWM:"))
}

/// This process's CPU time so far (user and system), in seconds.
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the
    // 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // In USER_HZ, 100 a second on Linux whatever the kernel's own tick.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

// ---------------------------------------------------------------------------------
// Scenarios and rounds

/// Runs one load in a process of its own; its result line (None, with its errors
/// printed, when it failed).
fn run_child(args: &Args) -> Option<String> {
    let mut command = std::process::Command::new(std::env::current_exe().ok()?);
    command
        .args(["--backend", &args.backend])
        .args(["--numbers", &args.numbers.to_string()])
        .args(["--mps", &args.mps.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--clients", &args.clients.to_string()])
        .args(["--contacts", &args.contacts.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--drain", &args.drain.to_string()])
        .args(["--workers", &args.workers.to_string()]);
    if args.timeline {
        command.arg("--timeline");
    }
    let output = command.output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    let line = text.lines().find(|line| line.starts_with("target="));
    if line.is_none() {
        eprintln!("a run failed ({})", output.status);
    }
    line.map(str::to_string)
}

/// Figures whose worst round is reported rather than their median: a failure or an
/// excess in one round is not outvoted by the others.
const WORST_OF_ROUNDS: [&str; 12] = [
    "api_errors",
    "unsent",
    "unanswered",
    "missing",
    "missing_pending",
    "duplicates",
    "unmatched",
    "misrouted",
    "graph_refused",
    "n0_max_1s",
    "n0_max_1s_pct",
    "max_1s_pct_any",
];

/// Every figure's median over `lines`, or its largest for those in
/// [`WORST_OF_ROUNDS`] (a field that is not a number: the first line's).
fn median_line(lines: &[String]) -> String {
    let parsed: Vec<Vec<(&str, &str)>> = lines
        .iter()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|part| part.split_once('='))
                .collect()
        })
        .collect();
    let mut out = vec![format!("target=outbound median_of={}", lines.len())];
    for (key, value) in parsed[0].iter().skip(1) {
        let mut values: Vec<f64> = parsed
            .iter()
            .filter_map(|fields| fields.iter().find(|(k, _)| k == key))
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .collect();
        if values.len() == lines.len() {
            values.sort_by(f64::total_cmp);
            let median = if WORST_OF_ROUNDS.contains(key) {
                values[values.len() - 1]
            } else {
                values[values.len() / 2]
            };
            out.push(if value.contains('.') {
                format!("{key}={median:.2}")
            } else {
                format!("{key}={median}")
            });
        } else {
            out.push(format!("{key}={value}"));
        }
    }
    out.join(" ")
}

fn main() {
    // As the daemon does, so that the resident memory reported is what it would use.
    let _ = converra::use_small_pages();
    let args = Args::parse();
    let loads: Vec<Args> = match args.scenario.as_str() {
        "run" if args.rounds <= 1 => {
            run_one(&args);
            return;
        }
        "run" => vec![args.clone()],
        "limiter" => [1100, 900]
            .into_iter()
            .map(|rate| Args {
                numbers: 1,
                mps: 1000,
                rate,
                ..args.clone()
            })
            .collect(),
        "numbers" => vec![Args {
            numbers: 50,
            mps: 1000,
            rate: 10_000,
            ..args.clone()
        }],
        other => panic!("--scenario {other}: run, limiter or numbers"),
    };
    let mut lines: Vec<Vec<String>> = vec![Vec::new(); loads.len()];
    for _ in 0..args.rounds.max(1) {
        for (load, lines) in loads.iter().zip(lines.iter_mut()) {
            lines.extend(run_child(load));
        }
    }
    if args.rounds > 1 {
        for lines in lines.iter().filter(|lines| !lines.is_empty()) {
            println!("{}", median_line(lines));
        }
    }
}
