//! Erasure benchmark: how soon a subject with a long history is unreadable, how fast
//! its rows then go, and what that costs other tenants' webhooks.
//!
//! ```sh
//! cargo bench --bench erasure -- --messages 100000
//! cargo bench --bench erasure -- --messages 100000 --backend postgres
//! # beside ingest to another tenant at 2,000 webhooks a second:
//! cargo bench --bench erasure -- --messages 100000 --ingest-rate 2000
//! ```
//!
//! A fresh database (a temporary SQLite file, or with `--backend postgres` a new
//! database on CONVERRA_TEST_DATABASE_URL or the local server) gets two tenants. The
//! daemon runs in-process and receives one real webhook from the subject, so its
//! contact has a real data key; then, with the daemon stopped, `--messages` more of
//! its messages are filled in by SQL the way the daemon stores them (sealed content of
//! 120 bytes), and `--others` messages of 1,000 other contacts of the same tenant. The daemon starts again with `compliance.erasure_batch_size = --batch`
//! and `compliance.erasure_batch_pause_ms = --pause-ms`, and the subject's tenant asks for its
//! erasure through the API. `unreadable_ms`: from the request's 201 to the subject's
//! data key read back destroyed from another connection (polled every 2 ms); from the
//! request's audit entries, `erase_s`, from starting to completed (every row deleted,
//! the database compacted), and messages deleted a second. With `--ingest-rate`, the other tenant's webhooks (open loop, from each
//! one's scheduled time) give their p99 before the erasure and while it runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

mod support;
use support::{now_ms, p99_ms, run};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// sqlite or postgres (postgres uses CONVERRA_TEST_DATABASE_URL or the local server)
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// The subject's messages.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Messages of 1,000 other contacts of the subject's tenant.
    #[arg(long, default_value_t = 1_000_000)]
    others: u64,
    /// compliance.erasure_batch_size
    #[arg(long, default_value_t = 200)]
    batch: u32,
    /// compliance.erasure_batch_pause_ms
    #[arg(long, default_value_t = 50)]
    pause_ms: u64,
    /// Webhooks a second to the other tenant (0: none): first for `--baseline` seconds
    /// before the erasure, then while it runs.
    #[arg(long, default_value_t = 0)]
    ingest_rate: u64,
    #[arg(long, default_value_t = 10)]
    baseline: u64,
}

const SUBJECT: &str = "4915100000001";

/// The subject's messages, filled in after its first one (same contact, conversation
/// and key), then `others` messages of 1,000 other contacts of its tenant, taken first
/// so the subject's come after them, as a contact's history lies in a busy tenant.
fn fill(conn: &mut converra::storage::DbConn, messages: u64, others: u64) {
    let sqlite = matches!(conn, converra::storage::DbConn::Sqlite(_));
    let now = now_ms();
    if others > 0 {
        let series = |n: u64| {
            match sqlite {
            true => (
                format!("WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < {}) ", n - 1),
                "FROM seq".to_string(),
            ),
            false => (String::new(), format!("FROM generate_series(0::bigint, {}::bigint) AS seq(n)", n - 1)),
        }
        };
        let (with, from) = series(1000);
        run(
            conn,
            &format!(
                "{with} INSERT INTO contacts (id, tenant_id, key_id, wa_id_bidx, marketing_opt_out, \
                 first_seen_at, last_seen_at) SELECT 'other' || seq.n, m.tenant_id, 'key', 'other' || seq.n, \
                 false, {now}, {now} {from} CROSS JOIN (SELECT tenant_id FROM messages LIMIT 1) m; \
                 {with} INSERT INTO conversations (id, tenant_id, phone_number_id, contact_id, opened_at, \
                 last_message_at) SELECT 'oc' || seq.n, m.tenant_id, 'num0', 'other' || seq.n, {now}, {now} \
                 {from} CROSS JOIN (SELECT tenant_id FROM messages LIMIT 1) m;"
            ),
        );
        let (with, from) = series(others);
        let (blob, uuid) = match sqlite {
            true => ("zeroblob(120)", format!("printf('%08x-%04x-6000-8000-%012x', ({now} - 1000 + seq.n / 1000) >> 16, ({now} - 1000 + seq.n / 1000) & 65535, seq.n)")),
            false => ("decode(repeat('00', 120), 'hex')", format!("lpad(to_hex(({now} - 1000 + seq.n / 1000) >> 16), 8, '0') || '-' || lpad(to_hex(({now} - 1000 + seq.n / 1000) & 65535), 4, '0') || '-6000-8000-' || lpad(to_hex(seq.n), 12, '0')")),
        };
        run(
            conn,
            &format!(
                "{with} INSERT INTO messages (id, tenant_id, conversation_id, contact_id, wamid_bidx, \
                 direction, msg_type, sent_at, received_at, key_id, content_ct) \
                 SELECT {uuid}, m.tenant_id, 'oc' || (seq.n % 1000), 'other' || (seq.n % 1000), 'o' || seq.n, \
                 'inbound', 'text', {now}, {now}, 'key', {blob} \
                 {from} CROSS JOIN (SELECT tenant_id FROM messages LIMIT 1) m"
            ),
        );
    }
    let (series, from_series) = match sqlite {
        true => (
            format!(
                "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < {}) ",
                messages - 1
            ),
            "FROM seq".to_string(),
        ),
        false => (
            String::new(),
            format!(
                "FROM generate_series(0::bigint, {}::bigint) AS seq(n)",
                messages - 1
            ),
        ),
    };
    let (blob, uuid, id) = match sqlite {
        true => (
            "zeroblob(120)",
            format!("printf('%08x-%04x-7000-8000-%012x', ({now} + seq.n / 100) >> 16, ({now} + seq.n / 100) & 65535, seq.n)"),
            "printf('%012d', seq.n)".to_string(),
        ),
        false => (
            "decode(repeat('00', 120), 'hex')",
            format!(
                "lpad(to_hex(({now} + seq.n / 100) >> 16), 8, '0') || '-' || lpad(to_hex(({now} + seq.n / 100) & 65535), 4, '0') \
                 || '-7000-8000-' || lpad(to_hex(seq.n), 12, '0')"
            ),
            "lpad(seq.n::text, 12, '0')".to_string(),
        ),
    };
    run(
        conn,
        &format!(
            "{series} INSERT INTO messages (id, tenant_id, conversation_id, contact_id, wamid_bidx, \
             direction, msg_type, sent_at, received_at, key_id, content_ct) \
             SELECT {uuid}, m.tenant_id, m.conversation_id, m.contact_id, 'bench' || {id}, 'inbound', \
             'text', {now}, {now}, m.key_id, {blob} \
             {from_series} CROSS JOIN (SELECT tenant_id, conversation_id, contact_id, key_id FROM messages \
             WHERE wamid_bidx NOT LIKE 'o%' LIMIT 1) m",
        ),
    );
    if sqlite {
        run(
            conn,
            "INSERT OR IGNORE INTO conversation_messages (conversation_id, message_id) \
             SELECT conversation_id, id FROM messages ORDER BY conversation_id, id; \
             UPDATE conversation_index_state SET indexed_through = (SELECT max(rowid) FROM messages);",
        );
    } else {
        run(conn, "VACUUM ANALYZE");
    }
}

fn api(base: &str, key: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    actix_rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let request = client
            .request(
                awc::http::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{base}{path}"),
            )
            .insert_header(("Authorization", format!("Bearer {key}")));
        let mut resp = match body {
            Some(body) => request.send_json(&body).await.unwrap(),
            None => request.send().await.unwrap(),
        };
        let bytes = resp.body().limit(64 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    })
}

/// Downloads `path` as a stream, counting its bytes and its messages (the `"wamid"`
/// keys, one per message), without holding the document.
fn download(base: &str, key: &str, path: &str) -> (u64, u64) {
    let url = format!("{base}{path}");
    let key = key.to_string();
    actix_rt::System::new().block_on(async move {
        use futures_util::StreamExt;
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(600))
            .finish();
        let mut resp = client
            .get(url)
            .insert_header(("Authorization", format!("Bearer {key}")))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let needle = b"\"wamid\":";
        let (mut bytes, mut messages) = (0u64, 0u64);
        let mut tail: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.unwrap();
            bytes += chunk.len() as u64;
            tail.extend_from_slice(&chunk);
            messages += tail.windows(needle.len()).filter(|w| w == needle).count() as u64;
            // Keep what a needle split across two chunks needs.
            let keep = tail.len().min(needle.len() - 1);
            tail.drain(..tail.len() - keep);
        }
        (bytes, messages)
    })
}

fn post_webhook(base: &str, secret: &str) {
    let (body, signature) = {
        let now = now_ms() / 1000;
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"WABA","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550000000","phone_number_id":"num0"}},"contacts":[{{"wa_id":"{SUBJECT}","profile":{{"name":"Subject"}}}}],"messages":[{{"from":"{SUBJECT}","id":"wamid.subject.first","timestamp":"{now}","type":"text","text":{{"body":"the first"}}}}]}}}}]}}]}}"#
        );
        let signature = converra::whatsapp::signature::sign(secret.as_bytes(), body.as_bytes());
        (body, signature)
    };
    let url = format!("{base}/webhooks/whatsapp");
    actix_rt::System::new().block_on(async move {
        let resp = awc::Client::default()
            .post(url)
            .insert_header(("X-Hub-Signature-256", signature))
            .send_body(body)
            .await
            .unwrap();
        assert!(resp.status().is_success());
    });
}

/// Milliseconds since the epoch of an RFC 3339 time the API gives.
fn ms(text: &Value) -> i64 {
    let at = time::OffsetDateTime::parse(
        text.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn main() {
    let args = Args::parse();
    assert!(args.messages >= 1);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = converra::config::Settings::defaults().unwrap();
    settings.database.url = support::fresh_database(&args.backend, "erasure", dir.path());
    settings.security.master_key_file = dir.path().join("master.key").display().to_string();
    settings.whatsapp.app_secret = "erasure-bench-secret".into();
    settings.log.level = std::env::var("ERASURE_LOG").unwrap_or_else(|_| "error".into());
    settings.retention.sweep_interval_secs = 3600;
    settings.compliance.erasure_batch_size = args.batch;
    settings.compliance.erasure_batch_pause_ms = args.pause_ms;

    let (keyring, pool) = converra::open_storage(&settings).unwrap();
    let tenants: Vec<converra::storage::tenants::CreatedTenant> = {
        let mut conn = pool.get().unwrap();
        support::create_tenants(&mut conn, &keyring, 2, "ops@erasure.example")
    };
    drop(pool);
    let secret = settings.whatsapp.app_secret.clone();

    // The subject's first message, through the daemon: its contact and key are real.
    let (address, stop, daemon) = support::start_daemon(&settings);
    let base = format!("http://{address}");
    std::thread::sleep(Duration::from_millis(500));
    post_webhook(&base, &secret);
    let _ = stop.send(());
    daemon.join().unwrap();
    let (vault, pool) = converra::open_storage(&settings).unwrap();
    let filling = Instant::now();
    fill(&mut pool.get().unwrap(), args.messages, args.others);
    eprintln!(
        "filled {} + {} messages ({:.0} s)",
        args.messages,
        args.others,
        filling.elapsed().as_secs_f64()
    );
    let key_id: String = {
        use converra::storage::schema::contacts;
        use diesel::prelude::*;
        converra::on_backend!(&mut *pool.get().unwrap(), c => contacts::table
            .filter(contacts::key_id.ne("key"))
            .select(contacts::key_id)
            .limit(1)
            .get_result(c))
        .unwrap()
    };
    let key_destroyed = |conn: &mut converra::storage::DbConn| -> bool {
        use converra::storage::schema::data_keys;
        use diesel::prelude::*;
        vault
            .with_store(conn, |ks| {
                Ok(converra::on_backend!(ks, c => data_keys::table
                    .find(&key_id)
                    .select(data_keys::destroyed_at.is_not_null())
                    .get_result::<bool>(c))?)
            })
            .unwrap()
    };

    let (address, stop, daemon) = support::start_daemon(&settings);
    let base = format!("http://{address}");
    let ingesting = (args.ingest_rate > 0).then(|| {
        support::ingest_beside(
            base.clone(),
            "num1".into(),
            secret.clone(),
            args.ingest_rate,
            args.baseline,
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    if args.ingest_rate > 0 {
        std::thread::sleep(Duration::from_secs(3 + args.baseline));
    }
    let key = tenants[0].api_key.clone();
    // Idle: the subject's access export first, downloaded whole, streamed.
    let export_line = (args.ingest_rate == 0).then(|| {
        let access = api(
            &base,
            &key,
            "POST",
            "/v1/privacy/requests",
            Some(serde_json::json!({"kind": "access", "wa_id": SUBJECT})),
        );
        let id = access["id"].as_str().unwrap().to_string();
        loop {
            let state = api(
                &base,
                &key,
                "GET",
                &format!("/v1/privacy/requests/{id}"),
                None,
            );
            if state["state"] == "completed" {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        let (bytes, messages) = download(&base, &key, &format!("/v1/privacy/requests/{id}/export"));
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(
            messages,
            args.messages + 1,
            "every message of the subject exported"
        );
        format!(
            " export_s={seconds:.2} export_messages_per_s={:.0} export_mib={:.1}",
            messages as f64 / seconds,
            bytes as f64 / (1 << 20) as f64
        )
    });
    let request = api(
        &base,
        &key,
        "POST",
        "/v1/privacy/requests",
        Some(serde_json::json!({"kind": "erasure", "wa_id": SUBJECT})),
    );
    let submitted = Instant::now();
    let id = request["id"].as_str().unwrap().to_string();
    let mut conn = pool.get().unwrap();
    while !key_destroyed(&mut conn) {
        assert!(
            submitted.elapsed() < Duration::from_secs(600),
            "the key was never destroyed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let unreadable_ms = submitted.elapsed().as_millis();
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(3600);
    let done = loop {
        let state = api(
            &base,
            &key,
            "GET",
            &format!("/v1/privacy/requests/{id}"),
            None,
        );
        if state["state"] == "completed" {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the erasure did not finish: {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
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
    let audit = api(&base, &key, "GET", "/v1/audit?limit=100", None);
    let at = |action: &str| -> i64 {
        let entry = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action && e["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {action} in {audit}"));
        ms(&entry["at"])
    };
    let started = at("request_started");
    let erase_s = ((ms(&done["completed_at"]) - started) as f64 / 1000.0).max(0.001);
    let deleted = done["outcome"]["deleted"]["messages"].as_u64().unwrap();
    let _ = stop.send(());
    let _ = daemon.join();
    support::drop_database(&args.backend, "erasure");
    println!(
        "target=erasure backend={} messages={} others={} batch={} pause_ms={} unreadable_ms={unreadable_ms} erase_s={erase_s:.1} messages_per_s={:.0}{}",
        args.backend,
        args.messages,
        args.others,
        args.batch,
        args.pause_ms,
        deleted as f64 / erase_s,
        ingest_line.or(export_line).unwrap_or_default()
    );
    assert_eq!(
        deleted,
        args.messages + 1,
        "every message of the subject deleted"
    );
}
