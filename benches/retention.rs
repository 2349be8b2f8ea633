//! Retention benchmark: how fast the scheduler's sweep deletes what is past its period.
//!
//! ```sh
//! cargo bench --bench retention -- --messages 10000000 --tenants 100
//! cargo bench --bench retention -- --messages 10000000 --tenants 100 --backend postgres
//! # beside ingest at 5,000 webhooks a second (10 s without the sweep, then with it):
//! cargo bench --bench retention -- --messages 10000000 --tenants 100 --ingest-rate 5000
//! ```
//!
//! A fresh database (a temporary SQLite file, or with `--backend postgres` a new
//! database on CONVERRA_TEST_DATABASE_URL or the local server) gets `--tenants`
//! tenants, each with one number and `--contacts` contacts, each contact one
//! conversation, and `--messages` text messages spread evenly over them, filled in by
//! SQL the way the daemon stores them (time-ordered ids, sealed content of 120 bytes,
//! on SQLite the conversation index filled in). Every other message is 400 days old,
//! past the default period of 365 days; the rest are a day old; the two lie
//! interleaved, so that deleting the old ones writes every page. Then the daemon starts
//! in-process (`converra::run`) with `retention.sweep_interval_secs = 1`,
//! `retention.batch_size = --batch` and `retention.batch_pause_ms = --pause-ms`, and
//! the benchmark waits until each tenant's sweep has finished. The result line
//! (`target=retention`): rows deleted, the sweep's span (from the first tenant's
//! sweep starting to the last one's finishing, by their records) and rows/s; with
//! `--ingest-rate`, the webhooks' p99 (open loop, from each one's scheduled time)
//! before the sweep and while it runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use clap::Parser;

mod support;
use support::{now_ms, p99_ms, run};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// sqlite or postgres (postgres uses CONVERRA_TEST_DATABASE_URL or the local server)
    #[arg(long, default_value = "sqlite")]
    backend: String,
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    #[arg(long, default_value_t = 100)]
    tenants: u64,
    /// Contacts per tenant (one conversation each).
    #[arg(long, default_value_t = 100)]
    contacts: u64,
    /// retention.batch_size
    #[arg(long, default_value_t = 10_000)]
    batch: u32,
    /// retention.batch_pause_ms
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Webhooks a second to tenant 0's number beside the sweep (0: none): first for
    /// `--baseline` seconds before the sweep starts, then while it runs; the p99 of
    /// both is reported.
    #[arg(long, default_value_t = 0)]
    ingest_rate: u64,
    #[arg(long, default_value_t = 10)]
    baseline: u64,
}

const DAY_MS: i64 = 86_400_000;
/// Rows filled in per statement, so that progress shows and no statement is huge.
const FILL_CHUNK: u64 = 1_000_000;

/// Fills in contacts, conversations and messages with SQL, the tenants' ids given.
fn fill(conn: &mut converra::storage::DbConn, args: &Args, tenants: &[String]) {
    let sqlite = matches!(conn, converra::storage::DbConn::Sqlite(_));
    let now = now_ms();
    let (old, recent) = (now - 400 * DAY_MS, now - DAY_MS);
    // The tenants' ids in a table of their own, numbered, so SQL can spread rows.
    let mut ddl =
        String::from("CREATE TABLE bench_tenants (n BIGINT PRIMARY KEY, id TEXT NOT NULL);");
    for (n, id) in tenants.iter().enumerate() {
        ddl.push_str(&format!("INSERT INTO bench_tenants VALUES ({n}, '{id}');"));
    }
    // The contacts' key, so the key store is the data's (the daemon checks that at start).
    ddl.push_str(&format!(
        "INSERT INTO keystore.data_keys (id, tenant_id, wrapped_key, created_at) VALUES ('key', '{}', {}, {now});",
        tenants[0],
        if sqlite { "zeroblob(60)" } else { "decode(repeat('00', 60), 'hex')" }
    ));
    run(conn, &ddl);
    let series = |from: u64, to: u64| -> String {
        match sqlite {
            true => format!(
                "WITH RECURSIVE seq(n) AS (SELECT {from} UNION ALL SELECT n + 1 FROM seq WHERE n < {}) ",
                to - 1
            ),
            false => String::new(),
        }
    };
    let from_series = |from: u64, to: u64| -> String {
        match sqlite {
            true => "FROM seq".to_string(),
            false => format!(
                "FROM generate_series({from}::bigint, {}::bigint) AS seq(n)",
                to - 1
            ),
        }
    };
    let blob = match sqlite {
        true => "zeroblob(120)",
        false => "decode(repeat('00', 120), 'hex')",
    };
    let pad = |expr: &str, width: usize| match sqlite {
        true => format!("printf('%0{width}d', {expr})"),
        false => format!("lpad(({expr})::text, {width}, '0')"),
    };
    let parties = args.tenants * args.contacts;
    // Contact k of tenant t is party t * contacts + k.
    run(
        conn,
        &format!(
            "{} INSERT INTO contacts (id, tenant_id, key_id, wa_id_bidx, marketing_opt_out, \
             first_seen_at, last_seen_at) SELECT 'k' || {}, t.id, 'key', 'wa' || {}, false, {now}, {now} \
             {} JOIN bench_tenants t ON t.n = seq.n / {}",
            series(0, parties),
            pad("seq.n", 9),
            pad("seq.n", 9),
            from_series(0, parties),
            args.contacts
        ),
    );
    run(
        conn,
        &format!(
            "{} INSERT INTO conversations (id, tenant_id, phone_number_id, contact_id, opened_at, \
             last_message_at) SELECT 'c' || {}, t.id, 'num' || t.n, 'k' || {}, {now}, {now} \
             {} JOIN bench_tenants t ON t.n = seq.n / {}",
            series(0, parties),
            pad("seq.n", 9),
            pad("seq.n", 9),
            from_series(0, parties),
            args.contacts
        ),
    );
    let started = Instant::now();
    let mut from = 0;
    while from < args.messages {
        let to = (from + FILL_CHUNK).min(args.messages);
        // Message n: tenant n % tenants, its contact (n / tenants) % contacts; even
        // ones old, odd ones recent.
        let party = format!(
            "(seq.n % {tenants}) * {contacts} + (seq.n / {tenants}) % {contacts}",
            tenants = args.tenants,
            contacts = args.contacts
        );
        // Arrival: the message's time. Ids are time-ordered as the daemon's are
        // (UUID v7: the arrival's milliseconds first).
        let at = format!("(CASE WHEN seq.n % 2 = 0 THEN {old} ELSE {recent} END + seq.n / 1000)");
        let uuid = match sqlite {
            true => format!("printf('%08x-%04x-7000-8000-%012x', {at} >> 16, {at} & 65535, seq.n)"),
            false => format!(
                "lpad(to_hex({at} >> 16), 8, '0') || '-' || lpad(to_hex({at} & 65535), 4, '0') \
                 || '-7000-8000-' || lpad(to_hex(seq.n), 12, '0')"
            ),
        };
        run(
            conn,
            &format!(
                "{} INSERT INTO messages (id, tenant_id, conversation_id, contact_id, wamid_bidx, \
                 direction, msg_type, sent_at, received_at, key_id, content_ct) \
                 SELECT {uuid}, t.id, 'c' || {party}, 'k' || {party}, 'w' || {id}, 'inbound', \
                 'text', {at}, {at}, 'key', {blob} \
                 {} JOIN bench_tenants t ON t.n = seq.n % {}",
                series(from, to),
                from_series(from, to),
                args.tenants,
                id = pad("seq.n", 12),
                party = pad(&party, 9),
            ),
        );
        from = to;
        eprintln!(
            "filled {from} of {} messages ({:.0} s)",
            args.messages,
            started.elapsed().as_secs_f64()
        );
    }
    if sqlite {
        // As the writer's bulk index leaves it: every message listed by conversation.
        run(
            conn,
            "INSERT INTO conversation_messages (conversation_id, message_id) \
             SELECT conversation_id, id FROM messages ORDER BY conversation_id, id; \
             UPDATE conversation_index_state SET indexed_through = (SELECT max(rowid) FROM messages);",
        );
    } else {
        run(conn, "VACUUM ANALYZE");
    }
    run(conn, "DROP TABLE bench_tenants");
}

fn main() {
    let args = Args::parse();
    assert!(args.tenants >= 1 && args.contacts >= 1 && args.messages >= 2);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = converra::config::Settings::defaults().unwrap();
    settings.database.url = support::fresh_database(&args.backend, "retention", dir.path());
    settings.security.master_key_file = dir.path().join("master.key").display().to_string();
    settings.whatsapp.app_secret = "retention-bench-secret".into();
    settings.log.level = std::env::var("RETENTION_LOG").unwrap_or_else(|_| "error".into());
    // Beside ingest, the first sweep waits for the baseline (it comes within the
    // interval, at most a minute after start).
    settings.retention.sweep_interval_secs = match args.ingest_rate {
        0 => 1,
        _ => (args.baseline + 5).min(60),
    };
    settings.retention.batch_size = args.batch;
    settings.retention.batch_pause_ms = args.pause_ms;

    let (keyring, pool) = converra::open_storage(&settings).unwrap();
    let tenants: Vec<String> = {
        let mut conn = pool.get().unwrap();
        let tenants: Vec<String> =
            support::create_tenants(&mut conn, &keyring, args.tenants, "ops@retention.example")
                .into_iter()
                .map(|tenant| tenant.tenant_id)
                .collect();
        fill(&mut conn, &args, &tenants);
        tenants
    };
    drop(pool);

    let (address, stop_tx, daemon) = support::start_daemon(&settings);
    let ingesting = (args.ingest_rate > 0).then(|| {
        support::ingest_beside(
            format!("http://{address}"),
            "num0".into(),
            settings.whatsapp.app_secret.clone(),
            args.ingest_rate,
            args.baseline,
        )
    });

    // Each tenant's first finished sweep, read from the records.
    let (_, pool) = converra::open_storage(&settings).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3600);
    let runs = loop {
        let runs: Vec<converra::storage::retention::RunRecord> = tenants
            .iter()
            .filter_map(|t| {
                converra::storage::with_conn(&pool, |conn| {
                    converra::storage::retention::runs(
                        conn,
                        &converra::ids::TenantId(t.clone()),
                        None,
                        500,
                    )
                })
                .unwrap()
                .into_iter()
                .filter(|r| r.finished_at.is_some() && !r.dry_run)
                .min_by(|a, b| a.id.cmp(&b.id))
            })
            .collect();
        if runs.len() == tenants.len() {
            break runs;
        }
        assert!(Instant::now() < deadline, "the sweep did not finish");
        std::thread::sleep(Duration::from_millis(200));
    };
    let ingest_line = ingesting.map(|(swept, thread)| {
        swept.store(true, std::sync::atomic::Ordering::Release);
        let ((mut before, before_failed), (mut during, during_failed)) = thread.join().unwrap();
        format!(
            " ingest_rate={} ingest_p99_ms_before={:.2} ingest_p99_ms_during={:.2} ingest_sent={} ingest_failed={}",
            args.ingest_rate,
            p99_ms(&mut before),
            p99_ms(&mut during),
            before.len() + during.len(),
            before_failed + during_failed
        )
    });
    let _ = stop_tx.send(());
    let _ = daemon.join();
    support::drop_database(&args.backend, "retention");
    let deleted: u64 = runs.iter().map(|r| r.deleted.total()).sum();
    let first = runs.iter().map(|r| r.started_at).min().unwrap();
    let last = runs.iter().filter_map(|r| r.finished_at).max().unwrap();
    let seconds = ((last - first) as f64 / 1000.0).max(0.001);
    println!(
        "target=retention backend={} messages={} tenants={} batch={} pause_ms={} deleted={deleted} seconds={seconds:.1} rows_per_s={:.0}{}",
        args.backend,
        args.messages,
        args.tenants,
        args.batch,
        args.pause_ms,
        deleted as f64 / seconds,
        ingest_line.unwrap_or_default()
    );
    assert_eq!(
        deleted,
        args.messages.div_ceil(2),
        "every old message deleted, once"
    );
}
