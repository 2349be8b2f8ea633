//! Load generator and references, run on one machine in one command:
//!
//! ```sh
//! cargo bench --bench loadgen -- --target converra --backend sqlite --mode closed --concurrency 64 --seconds 10
//! cargo bench --bench loadgen -- --target ceiling --mode closed --concurrency 64 --seconds 10
//! cargo bench --bench loadgen -- --target one-txn --backend postgres --mode open --rate 2000 --seconds 10
//! ```
//!
//! Targets: `all` (every target below on each backend, `--rounds` times, then each
//! one's median as a share of the ceiling's), `half-load` (per round, Converra's
//! closed-loop maximum on `--backend`, then the open loop at half of it), `converra`
//! (the full path: signature, parse, durable inbox, actors, encryption, contact and
//! conversation upserts), `ceiling` (a bare actix-web handler that verifies the
//! signature, parses the JSON and answers 200), `one-txn` (the same plus one diesel
//! transaction per request inserting the message) and `group-commit` (the same, the
//! insert handed to one writer thread that commits every waiting request's row in one
//! transaction and answers each after the commit). Every request is a distinct,
//! correctly signed webhook. Closed loop: `--concurrency` requests in flight. Open
//! loop: `--rate` requests per second over `--concurrency` connections (like wrk2),
//! latency counted from each request's scheduled time, so a request that waits for a
//! free connection counts that wait. Afterwards, for the durable targets, it counts
//! how many acknowledged messages are missing from the database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};

/// The daemon's allocator (see src/main.rs), so that every target is measured with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "loadgen-secret";
const NUMBER: &str = "100000000000001";

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, default_value = "converra")]
    target: String,
    /// sqlite or postgres (postgres uses CONVERRA_TEST_DATABASE_URL or the local server)
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// SQLite synchronous: full or normal
    #[arg(long, default_value = "full")]
    synchronous: String,
    #[arg(long, default_value = "closed")]
    mode: String,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Leave the requests sent in the first N seconds out of the latency figures (a
    /// cold start creates every contact at once).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Also print p50/p99/max for each second of the run.
    #[arg(long)]
    timeline: bool,
    /// Converra's database.write_batch_max (0 = its default).
    #[arg(long, default_value_t = 0)]
    batch_max: usize,
    /// Converra's database.sqlite_wal_restart_mib (0 = its default).
    #[arg(long, default_value_t = 0)]
    wal_restart_mib: u64,
    /// Converra's database.writers (0 = its default).
    #[arg(long, default_value_t = 0)]
    writers: usize,
    /// Converra's server.workers (0 = its default).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Converra's actors.arbiters (0 = its default: the actors on the HTTP workers).
    #[arg(long, default_value_t = 0)]
    arbiters: usize,
    /// Converra's database.sqlite_checkpoint_interval_ms (0 = its default).
    #[arg(long, default_value_t = 0)]
    checkpoint_ms: u64,
    /// Message ids: "meta" (shaped like Meta's: the contact's number, then a part that
    /// does not follow sending order, as in production) or "load" (`wamid.load.N`, in
    /// sending order: only the reference targets index them in that order, Converra
    /// indexes a keyed hash of each).
    #[arg(long, default_value = "meta")]
    wamids: String,
    /// How many contacts write, message `i` from contact `i % N`: 1,000 (the default)
    /// keeps every conversation warm after the first second; a business's spread
    /// (1,000,000) makes most messages open a new or cold conversation.
    #[arg(long, default_value_t = 1000)]
    contacts: usize,
    /// Converra's actors.max_conversation_actors (0 = its default).
    #[arg(long, default_value_t = 0)]
    max_actors: usize,
    /// With `--target all`: how many rounds of every target.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Passed by `cargo bench` to every bench binary; nothing to do with the load.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `--target all`: each target and backend in turn, `--rounds` times, each run in a
/// process of its own with the same load and Converra options; then every target's median run, as a share
/// of the ceiling's median measured in the same rounds (the machine's speed drifts
/// between sessions, the ratios much less).
fn run_all(args: &Args) {
    const TARGETS: [(&str, &str, &str); 10] = [
        ("ceiling", "sqlite", "full"),
        ("one-txn", "sqlite", "normal"),
        ("one-txn", "sqlite", "full"),
        ("one-txn", "postgres", "full"),
        ("group-commit", "sqlite", "normal"),
        ("group-commit", "sqlite", "full"),
        ("group-commit", "postgres", "full"),
        ("converra", "sqlite", "full"),
        ("converra", "sqlite", "normal"),
        ("converra", "postgres", "full"),
    ];
    let mut runs: Vec<Vec<(f64, String)>> = vec![Vec::new(); TARGETS.len()];
    for _ in 0..args.rounds {
        for (runs, (target, backend, synchronous)) in runs.iter_mut().zip(TARGETS) {
            let run = Args {
                target: target.into(),
                backend: backend.into(),
                synchronous: synchronous.into(),
                ..args.clone()
            };
            if let Some((rate, line)) = run_child(&run) {
                runs.push((rate, line));
            }
        }
    }
    let medians: Vec<Option<(f64, String)>> = runs
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            runs.get(runs.len() / 2).cloned()
        })
        .collect();
    let ceiling = medians[0]
        .as_ref()
        .map(|(rate, _)| *rate)
        .unwrap_or(f64::NAN);
    println!(
        "median of {} rounds, share of the ceiling's median:",
        args.rounds
    );
    for (rate, line) in medians.iter().flatten() {
        println!("{:5.1}%  {line}", rate / ceiling * 100.0);
    }
}

/// Runs one target in a process of its own with `args`; prints its output and returns
/// its msg/s and result line (None, with its errors printed, when it failed).
fn run_child(args: &Args) -> Option<(f64, String)> {
    let output = std::process::Command::new(std::env::current_exe().ok()?)
        .args(["--target", &args.target, "--backend", &args.backend])
        .args(["--synchronous", &args.synchronous, "--mode", &args.mode])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--clients", &args.clients.to_string()])
        .args(["--batch-max", &args.batch_max.to_string()])
        .args(["--wal-restart-mib", &args.wal_restart_mib.to_string()])
        .args(["--writers", &args.writers.to_string()])
        .args(["--checkpoint-ms", &args.checkpoint_ms.to_string()])
        .args(["--workers", &args.workers.to_string()])
        .args(["--arbiters", &args.arbiters.to_string()])
        .args(["--wamids", &args.wamids])
        .args(["--contacts", &args.contacts.to_string()])
        .args(["--max-actors", &args.max_actors.to_string()])
        .args(if args.timeline {
            &["--timeline"][..]
        } else {
            &[]
        })
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    let line = text.lines().find(|line| line.starts_with("target="));
    let result =
        line.and_then(|line| Some((field(line, "msg/s")?.parse().ok()?, line.to_string())));
    if result.is_none() {
        eprintln!(
            "{} on {} failed: {}",
            args.target,
            args.backend,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    result
}

/// `--target half-load`: the latency goal's measurement in one command. Each round
/// measures Converra's closed-loop maximum on `--backend` (`--concurrency`,
/// `--seconds`), then runs the open loop at half of it (`--seconds`, `--warmup`), so the
/// rate follows the machine's speed of the moment, and the ceiling's bare handler at
/// that same rate, the floor this machine and generator put under any server's
/// latency; then every round's figures.
fn run_half_load(args: &Args) {
    let mut rounds = Vec::new();
    for _ in 0..args.rounds {
        let closed = Args {
            target: "converra".into(),
            mode: "closed".into(),
            warmup: 0,
            timeline: false,
            ..args.clone()
        };
        let Some((max, _)) = run_child(&closed) else {
            continue;
        };
        let open = Args {
            target: "converra".into(),
            mode: "open".into(),
            rate: (max / 2.0).round() as u64,
            ..args.clone()
        };
        let Some((_, line)) = run_child(&open) else {
            continue;
        };
        // The bare handler at the same rate: what the machine and the load generator
        // alone add to the latency (scheduling, loopback), the floor under Converra's.
        let floor = Args {
            target: "ceiling".into(),
            ..open
        };
        let floor_line = run_child(&floor).map(|(_, line)| line).unwrap_or_default();
        rounds.push((max, line, floor_line));
    }
    println!("half of the closed-loop maximum, each round (floor: the ceiling's handler at the same rate):");
    for (max, line, floor_line) in &rounds {
        println!(
            "max={max:.0}/s rate={} p50_ms={} p99_ms={} max_ms={} missing={} floor_p50_ms={} floor_p99_ms={} floor_max_ms={}",
            field(line, "msg/s").unwrap_or("?"),
            field(line, "p50_ms").unwrap_or("?"),
            field(line, "p99_ms").unwrap_or("?"),
            field(line, "max_ms").unwrap_or("?"),
            field(line, "missing").unwrap_or("?"),
            field(floor_line, "p50_ms").unwrap_or("?"),
            field(floor_line, "p99_ms").unwrap_or("?"),
            field(floor_line, "max_ms").unwrap_or("?"),
        );
    }
}

/// `--target spread`: the contact spread's measurement in one command. Each round runs
/// Converra in the closed loop on each backend (SQLite with `--synchronous`, then
/// PostgreSQL) twice, with the same options: warm (1,000 contacts: every conversation
/// actor is running after the first second) and spread (`--contacts`: most messages
/// open a new or cold conversation); then each backend's median of both, their ratio,
/// and the spread runs' resident memory.
fn run_spread(args: &Args) {
    let backends = ["sqlite", "postgres"];
    let mut runs: Vec<[Vec<(f64, String)>; 2]> = vec![Default::default(), Default::default()];
    for _ in 0..args.rounds {
        for (backend, runs) in backends.iter().zip(runs.iter_mut()) {
            for (workload, contacts) in [(0, 1000), (1, args.contacts)] {
                let run = Args {
                    target: "converra".into(),
                    backend: backend.to_string(),
                    mode: "closed".into(),
                    contacts,
                    timeline: false,
                    ..args.clone()
                };
                if let Some(result) = run_child(&run) {
                    runs[workload].push(result);
                }
            }
        }
    }
    println!(
        "warm (1,000 contacts) against spread ({} contacts), median of {} rounds:",
        args.contacts, args.rounds
    );
    for (backend, mut runs) in backends.iter().zip(runs) {
        let median = |runs: &mut Vec<(f64, String)>| {
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            runs.get(runs.len() / 2).cloned()
        };
        let (Some(warm), Some(spread)) = (median(&mut runs[0]), median(&mut runs[1])) else {
            continue;
        };
        println!(
            "backend={backend} warm_msg/s={:.0} spread_msg/s={:.0} ratio={:.2} spread_p99_ms={} spread_rss_mib={}",
            warm.0,
            spread.0,
            spread.0 / warm.0,
            field(&spread.1, "p99_ms").unwrap_or("?"),
            field(&spread.1, "rss_mib").unwrap_or("?"),
        );
    }
}

/// The value of `name=value` in a result line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
}

/// `--wamids meta`, set once at start.
static META_WAMIDS: AtomicBool = AtomicBool::new(false);
/// `--contacts`, set once at start.
static CONTACTS: AtomicUsize = AtomicUsize::new(1000);

/// The contact that sends message `i`.
fn contact_of(i: usize) -> usize {
    i % CONTACTS.load(Ordering::Relaxed).max(1)
}

/// The wamid of message `i`: `wamid.load.{i}`, or with `--wamids meta` shaped like
/// Meta's (the contact's number, then a part that does not follow sending order), so
/// that the unique index on wamids is written at random places as in production.
fn wamid_for(i: usize, contact: usize) -> String {
    if META_WAMIDS.load(Ordering::Relaxed) {
        let mixed = (i as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
        format!(
            "wamid.HBgLNDkxNzA{contact:05}FQIAEhgU{mixed:016X}{:04X}",
            i % 65536
        )
    } else {
        format!("wamid.load.{i}")
    }
}

fn body_for(i: usize) -> (Vec<u8>, String) {
    let c = contact_of(i);
    let wamid = wamid_for(i, c);
    // The message's send time, in whole seconds like Meta's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"WABA","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550000000","phone_number_id":"{NUMBER}"}},"contacts":[{{"wa_id":"49170{c:05}","profile":{{"name":"Load {c}"}}}}],"messages":[{{"from":"49170{c:05}","id":"{wamid}","timestamp":"{now}","type":"text","text":{{"body":"load test message {i}"}}}}]}}}}]}}]}}"#
    );
    let sig = converra::whatsapp::signature::sign(SECRET.as_bytes(), body.as_bytes());
    (body.into_bytes(), sig)
}

// ---------------------------------------------------------------------------------
// References

diesel::table! {
    bench_messages (wamid) {
        wamid -> Text,
        body -> Text,
    }
}

#[derive(Clone)]
enum RefDb {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    Pg(Pool<ConnectionManager<PgConnection>>),
}

#[derive(Debug)]
struct SqlitePragmas(String);
impl diesel::r2d2::CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={}; PRAGMA busy_timeout=5000;",
            self.0
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

async fn reference_handler(
    req: HttpRequest,
    body: web::Bytes,
    db: web::Data<Option<RefDb>>,
    group: web::Data<Option<GroupCommit>>,
) -> HttpResponse {
    let sig = req
        .headers()
        .get("X-Hub-Signature-256")
        .and_then(|v| v.to_str().ok());
    if converra::whatsapp::signature::verify(SECRET.as_bytes(), &body, sig).is_err() {
        return HttpResponse::Unauthorized().finish();
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return HttpResponse::Ok().finish();
    };
    let Some(db) = db.get_ref() else {
        return HttpResponse::Ok().finish();
    };
    let message = &value["entry"][0]["changes"][0]["value"]["messages"][0];
    let wamid = message["id"].as_str().unwrap_or_default().to_string();
    let text = message["text"]["body"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (wamid_row, text_row) = (wamid.clone(), text.clone());
    let insert = move |db: &RefDb| -> Result<(), String> {
        let row = (
            bench_messages::wamid.eq(&wamid),
            bench_messages::body.eq(&text),
        );
        // The same diesel code, compiled for each backend.
        macro_rules! insert_in_own_transaction {
            ($pool:expr) => {{
                let mut c = $pool.get().map_err(|e| e.to_string())?;
                c.transaction(|c| {
                    diesel::insert_into(bench_messages::table)
                        .values(row)
                        .on_conflict_do_nothing()
                        .execute(c)
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
            }};
        }
        match db {
            RefDb::Sqlite(pool) => insert_in_own_transaction!(pool),
            RefDb::Pg(pool) => insert_in_own_transaction!(pool),
        }
    };
    if let Some(group) = group.get_ref() {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if group.send((wamid_row, text_row, reply)).is_err() {
            return HttpResponse::ServiceUnavailable().finish();
        }
        return match answer.await {
            Ok(true) => HttpResponse::Ok().finish(),
            _ => HttpResponse::ServiceUnavailable().finish(),
        };
    }
    let db = db.clone();
    match web::block(move || insert(&db)).await {
        Ok(Ok(())) => HttpResponse::Ok().finish(),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// A row for the group-commit reference's writer, and where to say it is durable.
type GroupRow = (String, String, tokio::sync::oneshot::Sender<bool>);
type GroupCommit = flume::Sender<GroupRow>;

/// The group-commit reference's writer: one thread, one connection; it takes every
/// row waiting (up to a batch's worth), inserts them in one transaction, and answers
/// each once it commits. The straightforward handler with group commit and nothing
/// else: no actors, no encryption, no contacts or conversations.
fn group_commit_writer(db: RefDb) -> GroupCommit {
    const BATCH_MAX: usize = 512;
    let (tx, rx) = flume::unbounded::<GroupRow>();
    std::thread::Builder::new()
        .name("group-writer".into())
        .spawn(move || {
            macro_rules! run {
                ($pool:expr) => {{
                    let mut conn = $pool.get().unwrap();
                    while let Ok(first) = rx.recv() {
                        let mut batch = vec![first];
                        batch.extend(rx.try_iter().take(BATCH_MAX - 1));
                        let rows: Vec<_> = batch
                            .iter()
                            .map(|(wamid, body, _)| {
                                (
                                    bench_messages::wamid.eq(wamid),
                                    bench_messages::body.eq(body),
                                )
                            })
                            .collect();
                        let stored = conn
                            .transaction(|c| {
                                diesel::insert_into(bench_messages::table)
                                    .values(&rows)
                                    .on_conflict_do_nothing()
                                    .execute(c)
                            })
                            .is_ok();
                        for (_, _, reply) in batch {
                            let _ = reply.send(stored);
                        }
                    }
                }};
            }
            match db {
                RefDb::Sqlite(pool) => run!(pool),
                RefDb::Pg(pool) => run!(pool),
            }
        })
        .unwrap();
    tx
}

fn pg_admin_url() -> String {
    std::env::var("CONVERRA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

fn fresh_pg_database(tag: &str) -> String {
    let admin = pg_admin_url();
    let name = format!("converra_bench_{tag}_{}", std::process::id());
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

/// Drops the databases this run created (the server has stopped by now).
fn drop_pg_databases() {
    let Ok(mut conn) = PgConnection::establish(&pg_admin_url()) else {
        return;
    };
    for tag in ["ref", "converra"] {
        let name = format!("converra_bench_{tag}_{}", std::process::id());
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn);
    }
}

fn reference_db(args: &Args, dir: &std::path::Path) -> RefDb {
    use diesel::connection::SimpleConnection;
    let ddl = "CREATE TABLE IF NOT EXISTS bench_messages (wamid TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL)";
    if args.backend == "postgres" {
        let url = fresh_pg_database("ref");
        let pool = Pool::builder()
            .max_size(16)
            .build(ConnectionManager::<PgConnection>::new(url))
            .unwrap();
        pool.get().unwrap().batch_execute(ddl).unwrap();
        RefDb::Pg(pool)
    } else {
        let path = dir.join("ref.db").display().to_string();
        let pool = Pool::builder()
            .max_size(8)
            .connection_customizer(Box::new(SqlitePragmas(args.synchronous.to_uppercase())))
            .build(ConnectionManager::<SqliteConnection>::new(path))
            .unwrap();
        pool.get().unwrap().batch_execute(ddl).unwrap();
        RefDb::Sqlite(pool)
    }
}

// ---------------------------------------------------------------------------------
// Load

#[derive(Default)]
struct Results {
    /// (second of the run the request was sent in, latency in µs).
    /// Kept small (12 bytes a request) because it is counted in the resident memory
    /// reported: (second of the run, latency in µs) and the acknowledged requests.
    timeline: Vec<(u32, u32)>,
    acked: Vec<u32>,
    errors: usize,
    /// On-CPU nanoseconds of the client threads, each read by the thread as it ends.
    client_cpu_ns: u64,
}

fn run_clients(args: &Args, base: &str) -> (Results, Duration) {
    let results = Arc::new(Mutex::new(Results::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let threads: Vec<_> = (0..args.clients)
        .map(|t| {
            let (args, base, results, next) = (
                args.clone(),
                base.to_string(),
                results.clone(),
                next.clone(),
            );
            std::thread::Builder::new()
                .name(format!("client-{t}"))
                .spawn(move || {
                    actix_rt::System::new().block_on(async move {
                        // Each thread keeps its share of `--concurrency` connections, in
                        // both modes (like wrk2's open loop): with no limit, the open
                        // loop's first second (a thousand new contacts) opened a
                        // connection per waiting request, some 3,600, and the server
                        // then served them all for the rest of the run.
                        let connections = args.concurrency.div_ceil(args.clients).max(1);
                        let client = awc::Client::builder()
                            .timeout(Duration::from_secs(30))
                            .connector(awc::Connector::new().limit(connections))
                            .finish();
                        let url = format!("{base}/webhooks/whatsapp");
                        let mut local = Results::default();
                        if args.mode == "closed" {
                            let per = (args.concurrency / args.clients).max(1);
                            let tasks: Vec<_> = (0..per)
                                .map(|_| {
                                    let (client, url, next) =
                                        (client.clone(), url.clone(), next.clone());
                                    actix_rt::spawn(async move {
                                        let mut r = Results::default();
                                        while Instant::now() < deadline {
                                            let i = next.fetch_add(1, Ordering::Relaxed);
                                            let (body, sig) = body_for(i);
                                            let t0 = Instant::now();
                                            let ok = send(&client, &url, body, sig).await;
                                            let latency = t0.elapsed().as_micros() as u32;
                                            r.timeline.push((
                                                t0.duration_since(started).as_secs() as u32,
                                                latency,
                                            ));
                                            if ok {
                                                r.acked.push(i as u32)
                                            } else {
                                                r.errors += 1
                                            }
                                        }
                                        r
                                    })
                                })
                                .collect();
                            for task in tasks {
                                let r = task.await.unwrap();
                                local.timeline.extend(r.timeline);
                                local.acked.extend(r.acked);
                                local.errors += r.errors;
                            }
                        } else {
                            let per_thread_rate = (args.rate as f64 / args.clients as f64).max(1.0);
                            let interval = Duration::from_secs_f64(1.0 / per_thread_rate);
                            let shared = Arc::new(Mutex::new(Results::default()));
                            // Finished requests are reaped as new ones start: a handle kept
                            // for every request held each finished task's memory to the end
                            // (some 150,000 at half load), and the client slowed as it grew.
                            let mut requests = tokio::task::JoinSet::new();
                            let start = Instant::now() + Duration::from_millis(t as u64);
                            // A thread of its own sleeps until each request's time: the
                            // runtime's timers tick in whole milliseconds, which made
                            // every request up to a millisecond late (p50 at half load
                            // 2.0 ms against the server's own under 1 ms).
                            let (due_tx, due_rx) = flume::unbounded::<(usize, Instant)>();
                            let pacer_next = next.clone();
                            let pacer = std::thread::Builder::new()
                                .name(format!("pacer-{t}"))
                                .spawn(move || {
                                    for k in 0u64.. {
                                        let scheduled = start + interval.mul_f64(k as f64);
                                        if scheduled >= deadline {
                                            break;
                                        }
                                        let now = Instant::now();
                                        if scheduled > now {
                                            std::thread::sleep(scheduled - now);
                                        }
                                        let i = pacer_next.fetch_add(1, Ordering::Relaxed);
                                        if due_tx.send((i, scheduled)).is_err() {
                                            break;
                                        }
                                    }
                                    // The load generator's CPU, counted with the clients'.
                                    own_cpu_ns()
                                })
                                .unwrap();
                            while let Ok((i, scheduled)) = due_rx.recv_async().await {
                                let (client, url, shared) =
                                    (client.clone(), url.clone(), shared.clone());
                                while requests.try_join_next().is_some() {}
                                requests.spawn_local(async move {
                                    let (body, sig) = body_for(i);
                                    let ok = send(&client, &url, body, sig).await;
                                    let mut s = shared.lock().unwrap();
                                    let latency = scheduled.elapsed().as_micros() as u32;
                                    s.timeline.push((
                                        scheduled.duration_since(started).as_secs() as u32,
                                        latency,
                                    ));
                                    if ok {
                                        s.acked.push(i as u32)
                                    } else {
                                        s.errors += 1
                                    }
                                });
                            }
                            let pacer_cpu_ns = pacer.join().unwrap_or(0);
                            while requests.join_next().await.is_some() {}
                            local = std::mem::take(&mut *shared.lock().unwrap());
                            local.client_cpu_ns = pacer_cpu_ns;
                        }
                        let mut all = results.lock().unwrap();
                        all.timeline.extend(local.timeline);
                        all.acked.extend(local.acked);
                        all.errors += local.errors;
                        all.client_cpu_ns += local.client_cpu_ns + own_cpu_ns();
                    })
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();
    let results = std::mem::take(&mut *results.lock().unwrap());
    (results, elapsed)
}

async fn send(client: &awc::Client, url: &str, body: Vec<u8>, sig: String) -> bool {
    match client
        .post(url)
        .insert_header(("X-Hub-Signature-256", sig))
        .send_body(body)
        .await
    {
        // Read the body: a response left unread makes the client close the
        // connection, and the churn would be measured instead of the server.
        Ok(mut resp) => resp.status().as_u16() == 200 && resp.body().await.is_ok(),
        Err(_) => false,
    }
}

fn print_timeline(samples: &[(u32, u32)]) {
    let mut by_second: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    for (second, latency) in samples {
        by_second
            .entry(*second)
            .or_default()
            .push(u64::from(*latency));
    }
    for (second, mut lat) in by_second {
        lat.sort_unstable();
        println!(
            "second={second} requests={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            lat.len(),
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0) as f64 / 1000.0
        );
    }
}

/// On-CPU nanoseconds of each live thread of this process, by thread name.
fn thread_cpu() -> std::collections::HashMap<u64, (String, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        out.insert(tid, (comm.trim().to_string(), ns));
    }
    out
}

/// On-CPU nanoseconds of the calling thread.
fn own_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU microseconds per acknowledged message, by thread group, between two snapshots
/// (threads started in between count from zero).
fn cpu_per_message(
    before: &std::collections::HashMap<u64, (String, u64)>,
    after: &std::collections::HashMap<u64, (String, u64)>,
    messages: usize,
) -> String {
    let mut groups: std::collections::BTreeMap<String, u64> = Default::default();
    for (tid, (comm, ns)) in after {
        let start = before.get(tid).map(|(_, n)| *n).unwrap_or(0);
        let group = match comm.as_str() {
            c if c.starts_with("client") => "client",
            c if c.starts_with("converra-writer") => "writer",
            c if c.starts_with("converra-check") => "checkpoint",
            c if c.starts_with("actix") => "actix",
            _ => "other",
        };
        *groups.entry(group.to_string()).or_default() += ns.saturating_sub(start);
    }
    let total: u64 = groups.values().sum();
    let per = |ns: u64| ns as f64 / 1000.0 / messages.max(1) as f64;
    let mut parts = vec![format!("cpu_us/msg={:.1}", per(total))];
    parts.extend(groups.iter().map(|(g, ns)| format!("{g}={:.1}", per(*ns))));
    parts.join(" ")
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn main() {
    // As the daemon does, so that the resident memory reported is what it would use.
    let _ = converra::use_small_pages();
    let args = Args::parse();
    if args.target == "all" {
        run_all(&args);
        return;
    }
    if args.target == "half-load" {
        run_half_load(&args);
        return;
    }
    if args.target == "spread" {
        run_spread(&args);
        return;
    }
    META_WAMIDS.store(args.wamids == "meta", Ordering::Relaxed);
    CONTACTS.store(args.contacts, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = converra::config::Settings::defaults().unwrap();
    // Every target listens like the daemon (`server.listen_backlog`).
    let listener = converra::listen("127.0.0.1:0", settings.server.listen_backlog).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut converra_db: Option<String> = None;
    // The references' database, kept to count acknowledged rows afterwards.
    let mut reference_store: Option<RefDb> = None;

    // The server runs on its own threads, as in the daemon.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let server_thread = if args.target == "converra" {
        let url = if args.backend == "postgres" {
            fresh_pg_database("converra")
        } else {
            format!("sqlite://{}", dir.path().join("converra.db").display())
        };
        converra_db = Some(url.clone());
        settings.database.url = url;
        settings.database.sqlite_synchronous = args.synchronous.clone();
        settings.database.writers = args.writers;
        if args.wal_restart_mib > 0 {
            settings.database.sqlite_wal_restart_mib = args.wal_restart_mib;
        }
        if args.batch_max > 0 {
            settings.database.write_batch_max = args.batch_max;
        }
        if args.checkpoint_ms > 0 {
            settings.database.sqlite_checkpoint_interval_ms = args.checkpoint_ms;
        }
        settings.security.master_key_file = dir.path().join("master.key").display().to_string();
        settings.whatsapp.app_secret = SECRET.into();
        // The daemon's defaults unless asked otherwise.
        settings.server.workers = args.workers;
        settings.actors.arbiters = args.arbiters;
        if args.max_actors > 0 {
            settings.actors.max_conversation_actors = args.max_actors;
        }
        settings.log.level = std::env::var("LOADGEN_LOG").unwrap_or_else(|_| "error".into());
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        let tenant =
            converra::storage::tenants::create_tenant(&mut conn, "load", "ops@load.example", 0)
                .unwrap();
        converra::storage::tenants::add_phone_number(
            &mut conn,
            &keyring,
            &converra::storage::tenants::NewPhoneNumber {
                tenant_id: &tenant.tenant_id,
                phone_number_id: NUMBER,
                display_phone_number: "15550000000",
                waba_id: "WABA",
                access_token: "t",
            },
            0,
        )
        .unwrap();
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
    } else {
        let db = ["one-txn", "group-commit"]
            .contains(&&args.target[..])
            .then(|| reference_db(&args, dir.path()));
        reference_store.clone_from(&db);
        let group = (args.target == "group-commit")
            .then(|| db.clone().map(group_commit_writer))
            .flatten();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let data = web::Data::new(db);
                let group = web::Data::new(group);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(group.clone())
                        .app_data(web::PayloadConfig::new(4 << 20))
                        .route("/webhooks/whatsapp", web::post().to(reference_handler))
                        .route("/readyz", web::get().to(HttpResponse::Ok))
                })
                .workers(if args.workers > 0 { args.workers } else { 2 })
                .disable_signals()
                .listen(listener)
                .unwrap()
                .run();
                let handle = server.handle();
                std::thread::spawn(move || {
                    let _ = stop_rx.recv();
                    actix_rt::System::new().block_on(handle.stop(true));
                });
                server.await.unwrap();
            })
        })
    };
    // Wait until the server answers.
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
        panic!("server did not start");
    });

    let cpu_before = thread_cpu();
    // The server's own view of latency (`converra_webhook_seconds`), from the end of
    // the warm-up: it tells the server's delays from the clients' own (the clients
    // share the two cores, and a client thread that is not scheduled in time counts
    // as latency from the request's scheduled time).
    let address = base.trim_start_matches("http://").to_string();
    let warmup_snapshot = {
        let (address, warmup, converra) = (address.clone(), args.warmup, args.target == "converra");
        std::thread::spawn(move || {
            if !converra {
                return None;
            }
            std::thread::sleep(Duration::from_secs(warmup));
            Some(server_latency_buckets(&address))
        })
    };
    let (results, elapsed) = run_clients(&args, &base);
    // Resident memory as the load ends, before the count of missing messages below
    // loads every stored id: the server's, plus the clients' records (12 bytes per
    // request sent, up to twice that while their lists grow).
    let memory = resident_memory();
    let server_latency = warmup_snapshot
        .join()
        .ok()
        .flatten()
        .map(|before| latency_summary(&before, &server_latency_buckets(&address), 0.01));
    let mut cpu_after = thread_cpu();
    if args.timeline {
        print_timeline(&results.timeline);
    }
    // Latency of the requests sent after the warm-up (all of them by default).
    let mut lat: Vec<u64> = results
        .timeline
        .iter()
        .filter(|(second, _)| u64::from(*second) >= args.warmup)
        .map(|(_, latency)| u64::from(*latency))
        .collect();
    lat.sort_unstable();
    let rps = results.acked.len() as f64 / elapsed.as_secs_f64();

    // Missing acknowledged messages: wait for processing, then look each one up.
    let missing = match (&args.target[..], converra_db) {
        ("converra", Some(_)) => {
            let (keyring, pool) = converra::open_storage(&settings).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let backlog =
                    converra::storage::with_conn(&pool, converra::storage::inbox::backlog).unwrap();
                if backlog == 0 || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            cpu_after = thread_cpu();
            // Meta's ids are stored as keyed hashes, per tenant.
            let stored: std::collections::HashSet<(String, String)> =
                converra::storage::with_conn(&pool, |conn| {
                    use converra::storage::schema::messages;
                    Ok(converra::on_backend!(conn, c => messages::table
                        .select((messages::tenant_id, messages::wamid_bidx))
                        .load::<(String, String)>(c))?)
                })
                .unwrap()
                .into_iter()
                .collect();
            let tenants: std::collections::HashSet<&String> =
                stored.iter().map(|(t, _)| t).collect();
            Some(
                results
                    .acked
                    .iter()
                    .map(|i| *i as usize)
                    .filter(|i| {
                        let wamid = wamid_for(*i, contact_of(*i));
                        !tenants.iter().any(|tenant| {
                            let bidx =
                                keyring.wamid_index(tenant, &converra::ids::Wamid(wamid.clone()));
                            stored.contains(&((*tenant).clone(), bidx))
                        })
                    })
                    .count(),
            )
        }
        _ => reference_store.as_ref().map(|db| {
            let stored: std::collections::HashSet<String> = match db {
                RefDb::Sqlite(pool) => bench_messages::table
                    .select(bench_messages::wamid)
                    .load(&mut pool.get().unwrap())
                    .unwrap(),
                RefDb::Pg(pool) => bench_messages::table
                    .select(bench_messages::wamid)
                    .load(&mut pool.get().unwrap())
                    .unwrap(),
            }
            .into_iter()
            .collect();
            results
                .acked
                .iter()
                .map(|i| *i as usize)
                .filter(|i| !stored.contains(&wamid_for(*i, contact_of(*i))))
                .count()
        }),
    };
    let batches = (args.target == "converra").then(|| {
        let buckets = histogram_buckets(&address, "converra_db_write_seconds");
        let restarts = histogram_buckets(&address, "converra_wal_restart_seconds");
        format!(
            "{}; WAL restarts: {}",
            latency_summary(&[], &buckets, 0.005),
            latency_summary(&[], &restarts, 0.005)
        )
    });
    let _ = stop_tx.send(());
    let _ = server_thread.join();
    if args.backend == "postgres" {
        drop_pg_databases();
    }
    let mut load = if args.mode == "closed" {
        format!("closed c={}", args.concurrency)
    } else {
        format!("open rate={}/s", args.rate)
    };
    if args.warmup > 0 {
        load.push_str(&format!(" warmup={}s", args.warmup));
    }
    let backend = if args.target == "ceiling" {
        "-".to_string()
    } else {
        format!(
            "{}{}",
            args.backend,
            if args.backend == "sqlite" {
                format!("/{}", args.synchronous)
            } else {
                String::new()
            }
        )
    };
    println!(
        "target={} backend={} load=\"{}\" seconds={:.1} acked={} msg/s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} errors={} missing={} {} clients={:.1} {}",
        args.target,
        backend,
        load,
        elapsed.as_secs_f64(),
        results.acked.len(),
        rps,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        results.errors,
        missing.map(|m| m.to_string()).unwrap_or_else(|| "n/a".into()),
        cpu_per_message(&cpu_before, &cpu_after, results.acked.len()),
        results.client_cpu_ns as f64 / 1000.0 / results.acked.len().max(1) as f64,
        memory,
    );
    if let Some(summary) = server_latency {
        println!("  server-side (after the warm-up): {summary}");
    }
    if let Some(summary) = batches {
        println!("  write batches (whole run): {summary}");
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
            .map(|kib| format!("{}", kib / 1024))
            .unwrap_or_else(|| "?".into())
    };
    format!("rss_mib={} peak_rss_mib={}", mib("VmRSS:"), mib("VmHWM:"))
}

/// The cumulative bucket counts of `converra_webhook_seconds` (upper bound in seconds,
/// count), read from `/metrics`.
fn server_latency_buckets(address: &str) -> Vec<(f64, f64)> {
    histogram_buckets(address, "converra_webhook_seconds")
}

/// The cumulative bucket counts of histogram `name` (upper bound, count) in `/metrics`.
fn histogram_buckets(address: &str, name: &str) -> Vec<(f64, f64)> {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return Vec::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: loadgen\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix("_bucket{le=\"")?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// Between two snapshots of a histogram: how many observations, the share within
/// `threshold` seconds, and the bucket bound under which 99% fell.
fn latency_summary(before: &[(f64, f64)], after: &[(f64, f64)], threshold: f64) -> String {
    let count = |bound: f64, snapshot: &[(f64, f64)]| {
        snapshot
            .iter()
            .find(|(b, _)| *b == bound)
            .map(|(_, c)| *c)
            .unwrap_or(0.0)
    };
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, c)| (*bound, c - count(*bound, before)))
        .collect();
    let total = diff.last().map(|(_, c)| *c).unwrap_or(0.0);
    if total <= 0.0 {
        return "none".into();
    }
    let within = count(threshold, &diff) / total * 100.0;
    // The upper bound of the bucket holding the given share of observations.
    let bound = |share: f64| {
        diff.iter()
            .find(|(_, c)| *c >= total * share)
            .map(|(b, _)| *b * 1000.0)
            .unwrap_or(f64::INFINITY)
    };
    let (p50_bound, p99_bound) = (bound(0.5), bound(0.99));
    format!(
        "count={total:.0} within_{}ms={within:.2}% p50_le_ms={p50_bound} p99_le_ms={p99_bound}",
        threshold * 1000.0
    )
}
