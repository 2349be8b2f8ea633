//! Retention: the tenant's periods (`/v1/retention`), the scheduler's sweep on its
//! timer (by an injected clock, at the boundary instant, one tenant's policy never
//! touching another's rows), the record of each sweep (`/v1/retention/runs`), and the
//! operator's `converra retention run` (a dry run counts what the real run deletes).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::daemon::{ApiReader, Daemon};
use crate::support::*;

const DAY_MS: i64 = 86_400_000;

/// A text from `from` to `number`, stamped `at_ms` (Meta's timestamp, in seconds).
fn text_at(number: &str, from: &str, wamid: &str, at_ms: i64) -> Vec<u8> {
    serde_json::to_vec(&envelope(vec![messages_change(
        number,
        vec![contact(from, "Customer")],
        vec![
            json!({"from": from, "id": wamid, "timestamp": (at_ms / 1000).to_string(),
            "type": "text", "text": {"body": "hello"}}),
        ],
    )]))
    .unwrap()
}

async fn wamids(app: &TestApp, tenant: &Tenant) -> Vec<String> {
    let mut ids: Vec<String> = app
        .all_messages(tenant)
        .await
        .iter()
        .map(|m| m["wamid"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

async fn put_policy(app: &TestApp, tenant: &Tenant, body: Value) -> (u16, Value) {
    app.send_json("PUT", "/v1/retention", &tenant.api_key, &body)
        .await
}

#[actix_rt::test]
async fn periods_are_read_and_set_per_tenant_and_a_bad_one_names_its_field() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let (status, policies) = app.get("/v1/retention", Some(&app.a.api_key)).await;
        assert_eq!(status, 200, "{policies}");
        let categories = policies["categories"].as_object().unwrap();
        for name in [
            "messages",
            "media",
            "raw_payloads",
            "automation_runs",
            "technical",
            "closed_conversations",
            "exports",
            "audit",
        ] {
            assert!(categories[name]["days"].is_null(), "{name}: {policies}");
        }
        assert_eq!(policies["categories"]["messages"]["effective_days"], 365);

        let (status, changed) = put_policy(
            &app,
            &app.a,
            json!({"categories": {"messages": {"days": 30}, "raw_payloads": {"days": 0}}}),
        )
        .await;
        assert_eq!(status, 200, "{changed}");
        assert_eq!(changed["categories"]["messages"]["days"], 30);
        assert_eq!(changed["categories"]["messages"]["effective_days"], 30);
        assert_eq!(changed["categories"]["raw_payloads"]["effective_days"], 0);
        // Left out: unchanged, and every category is in the answer.
        assert!(changed["categories"]["media"]["days"].is_null());
        assert_eq!(changed["categories"].as_object().unwrap().len(), 8);

        // Tenant B sees only its own.
        let (_, theirs) = app.get("/v1/retention", Some(&app.b.api_key)).await;
        assert!(
            theirs["categories"]["messages"]["days"].is_null(),
            "{theirs}"
        );

        for (body, field) in [
            (
                json!({"categories": {"messages": {"days": -1}}}),
                "categories.messages.days",
            ),
            (
                json!({"categories": {"messages": {"days": 1.5}}}),
                "categories.messages.days",
            ),
            (
                json!({"categories": {"messages": {"days": 36501}}}),
                "categories.messages.days",
            ),
            (
                json!({"categories": {"emails": {"days": 3}}}),
                "categories.emails",
            ),
            // Below the operator's minimum for audit records.
            (
                json!({"categories": {"audit": {"days": 30}}}),
                "categories.audit.days",
            ),
            // Past inbox.keep_raw_days, when the day keys are destroyed.
            (
                json!({"categories": {"raw_payloads": {"days": 31}}}),
                "categories.raw_payloads.days",
            ),
            (json!({"periods": {}}), "periods"),
        ] {
            let (status, error) = put_policy(&app, &app.a, body.clone()).await;
            assert_eq!(status, 422, "{body}: {error}");
            assert_eq!(error["error"]["code"], "invalid_field", "{error}");
            assert_eq!(error["error"]["field"], field, "{body}: {error}");
            assert!(
                error["error"]["rule"].is_string(),
                "every 422 names its rule: {error}"
            );
        }
        // A refused change changed nothing.
        let (_, still) = app.get("/v1/retention", Some(&app.a.api_key)).await;
        assert_eq!(still["categories"]["messages"]["days"], 30);

        // Null: back to the operator's default.
        let (status, reset) = put_policy(
            &app,
            &app.a,
            json!({"categories": {"messages": {"days": null}}}),
        )
        .await;
        assert_eq!(status, 200, "{reset}");
        assert!(reset["categories"]["messages"]["days"].is_null());
        assert_eq!(reset["categories"]["messages"]["effective_days"], 365);
        assert_eq!(reset["categories"]["raw_payloads"]["days"], 0);

        let (status, _) = app.get("/v1/retention", None).await;
        assert_eq!(status, 401);
    }
}

/// Waits for a finished, real sweep of the tenant that `wanted` accepts; the newest.
async fn finished_run(app: &TestApp, tenant: &Tenant, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, runs) = app.get("/v1/retention/runs", Some(&tenant.api_key)).await;
        assert_eq!(status, 200, "{runs}");
        let found = runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| !r["finished_at"].is_null() && r["dry_run"] == false && wanted(r));
        if let Some(run) = found {
            return run.clone();
        }
        assert!(Instant::now() < deadline, "no sweep finished: {runs}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a finished, real sweep of the tenant newer than `after` (a run id).
async fn next_run(app: &TestApp, tenant: &Tenant, after: Option<&str>) -> Value {
    finished_run(app, tenant, |run| {
        after.is_none_or(|after| run["id"].as_str().unwrap() > after)
    })
    .await
}

#[actix_rt::test]
async fn the_scheduler_deletes_what_is_past_its_period_at_the_boundary_and_per_tenant() {
    for backend in backends() {
        let start = 1_900_000_000_000;
        let clock = converra::clock::ManualClock::new(start);
        let app = TestApp::start_with_clock_and(&backend, clock.clone(), |settings| {
            settings.retention.sweep_interval_secs = 1;
            // Small batches, so a sweep takes several.
            settings.retention.batch_size = 2;
            settings.retention.batch_pause_ms = 0;
        })
        .await;
        let (status, body) = put_policy(
            &app,
            &app.a,
            json!({"categories": {"messages": {"days": 30}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let cutoff = start - 30 * DAY_MS;
        // Tenant A: four past the period, one at the boundary itself, one inside.
        for (i, at) in [
            cutoff - 40 * DAY_MS,
            cutoff - DAY_MS,
            cutoff - 2_000,
            cutoff - 1_000,
        ]
        .into_iter()
        .enumerate()
        {
            let (status, _) = app
                .post_signed(&text_at(
                    NUMBER_A,
                    "4915100000001",
                    &format!("wamid.OLD{i}"),
                    at,
                ))
                .await;
            assert_eq!(status, 200);
        }
        app.post_signed(&text_at(NUMBER_A, "4915100000001", "wamid.EDGE", cutoff))
            .await;
        app.post_signed(&text_at(
            NUMBER_A,
            "4915100000001",
            "wamid.NEW",
            start - DAY_MS,
        ))
        .await;
        // Tenant B keeps the default (365 days): its 40-day-old message stays.
        app.post_signed(&text_at(
            NUMBER_B,
            "4915100000002",
            "wamid.B40",
            start - 40 * DAY_MS,
        ))
        .await;
        app.wait_messages(&app.a, 6).await;
        app.wait_messages(&app.b, 1).await;

        // The clock stands still: sweeps come each second and find the same rows.
        let first = next_run(&app, &app.a, None).await;
        let first = next_run(&app, &app.a, first["id"].as_str()).await;
        assert_eq!(
            wamids(&app, &app.a).await,
            ["wamid.EDGE", "wamid.NEW"],
            "what is past 30 days went, the boundary instant stayed"
        );
        assert_eq!(wamids(&app, &app.b).await, ["wamid.B40"]);
        // The four went in one run or another, counted where they went.
        let (_, runs) = app.get("/v1/retention/runs", Some(&app.a.api_key)).await;
        let counted: u64 = runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["deleted"]["messages"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 4, "{runs}");
        assert_eq!(
            first["deleted"]["messages"], 0,
            "nothing left for a later run"
        );
        assert!(
            first["deleted"]["audit"].is_u64(),
            "every category is named: {first}"
        );

        // One millisecond later the boundary message is past its period too.
        clock.advance_ms(1);
        let after = next_run(&app, &app.a, first["id"].as_str()).await;
        let after = next_run(&app, &app.a, after["id"].as_str()).await;
        let _ = after;
        assert_eq!(wamids(&app, &app.a).await, ["wamid.NEW"]);
        assert_eq!(wamids(&app, &app.b).await, ["wamid.B40"]);

        // Tenant B's own runs found nothing of its to delete.
        let (_, theirs) = app.get("/v1/retention/runs", Some(&app.b.api_key)).await;
        assert!(
            theirs["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["deleted"]["messages"] == 0),
            "{theirs}"
        );
        let metrics = app.get_text("/metrics").await;
        assert!(
            metrics.contains("converra_retention_deleted_total{category=\"messages\"} 5"),
            "{metrics}"
        );
    }
}

#[actix_rt::test]
async fn a_closed_conversation_goes_with_its_messages_after_its_period() {
    for backend in backends() {
        let start = 1_900_000_000_000;
        let clock = converra::clock::ManualClock::new(start);
        let app = TestApp::start_with_clock_and(&backend, clock.clone(), |settings| {
            settings.retention.sweep_interval_secs = 1;
            settings.retention.batch_pause_ms = 0;
        })
        .await;
        let (status, body) = put_policy(
            &app,
            &app.a,
            json!({"categories": {"closed_conversations": {"days": 1}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        app.post_signed(&text_at(
            NUMBER_A,
            "4915100000001",
            "wamid.C1",
            start - 1_000,
        ))
        .await;
        app.post_signed(&text_at(
            NUMBER_A,
            "4915100000003",
            "wamid.OPEN",
            start - 1_000,
        ))
        .await;
        app.wait_messages(&app.a, 2).await;
        let mut closing = String::new();
        for conversation in app.all("/v1/conversations", &app.a.api_key).await {
            let id = conversation["id"].as_str().unwrap();
            let messages = app
                .all(&format!("/v1/conversations/{id}/messages"), &app.a.api_key)
                .await;
            if messages.iter().any(|m| m["wamid"] == "wamid.C1") {
                closing = id.to_string();
            }
        }
        assert!(!closing.is_empty());
        let (status, body) = app
            .send_json(
                "POST",
                &format!("/v1/conversations/{closing}/close"),
                &app.a.api_key,
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // A day later it is still there; past the day it goes, its message with it.
        clock.advance_ms(DAY_MS);
        let run = next_run(&app, &app.a, None).await;
        let run = next_run(&app, &app.a, run["id"].as_str()).await;
        assert_eq!(run["deleted"]["closed_conversations"], 0);
        assert_eq!(app.all("/v1/conversations", &app.a.api_key).await.len(), 2);
        clock.advance_ms(1);
        let run = next_run(&app, &app.a, run["id"].as_str()).await;
        let run = next_run(&app, &app.a, run["id"].as_str()).await;
        let _ = run;
        let left = app.all("/v1/conversations", &app.a.api_key).await;
        assert_eq!(left.len(), 1, "{left:?}");
        assert_ne!(left[0]["id"], closing);
        assert_eq!(app.all_messages(&app.a).await.len(), 1);
    }
}

/// Posts a signed webhook to a daemon run as its own process.
async fn post_to(client: &awc::Client, daemon: &Daemon, body: Vec<u8>) {
    let signature = converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &body);
    let resp = client
        .post(format!("{}/webhooks/whatsapp", daemon.base))
        .insert_header(("X-Hub-Signature-256", signature))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Ten messages past the default period (365 days), two inside it.
async fn old_and_new(client: &awc::Client, daemon: &Daemon, reader: &ApiReader) {
    let now = now_ms();
    for i in 0..10 {
        let body = text_at(
            NUMBER_A,
            "4915100000009",
            &format!("wamid.OLD{i}"),
            now - 400 * DAY_MS,
        );
        post_to(client, daemon, body).await;
    }
    for i in 0..2 {
        let body = text_at(
            NUMBER_A,
            "4915100000009",
            &format!("wamid.NEW{i}"),
            now - DAY_MS,
        );
        post_to(client, daemon, body).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.all_wamids().await.len() < 12 {
        assert!(Instant::now() < deadline, "the messages were not stored");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn a_dry_run_counts_what_the_real_run_then_deletes_beside_the_running_daemon() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let daemon = Daemon::new(&db.url, &db.dir);
        let tenant = daemon.seed_tenant(&db.dir, "keeper", "EAAG-token");
        let tenant_id = tenant["tenant_id"].as_str().unwrap().to_string();
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let _running = daemon.spawn();
        daemon.wait_ready(&client).await;
        let reader = ApiReader {
            client: client.clone(),
            base: daemon.base.clone(),
            key: tenant["api_key"].as_str().unwrap().to_string(),
        };
        old_and_new(&client, &daemon, &reader).await;

        let dry = daemon.cli_json(&["retention", "run", "--dry-run", "--json"]);
        assert_eq!(dry["dry_run"], true, "{dry}");
        assert_eq!(dry["deleted"]["messages"], 10, "{dry}");
        assert_eq!(
            reader.all_wamids().await.len(),
            12,
            "a dry run deletes nothing"
        );

        let unknown = daemon
            .command(&["retention", "run", "--tenant", "no-such-tenant"])
            .output()
            .unwrap();
        assert!(!unknown.status.success());
        assert!(String::from_utf8_lossy(&unknown.stderr).contains("no tenant with id"));

        let real = daemon.cli_json(&["retention", "run", "--tenant", &tenant_id, "--json"]);
        assert_eq!(real["dry_run"], false, "{real}");
        assert_eq!(real["deleted"], dry["deleted"], "the counts agree");
        let mut left = reader.all_wamids().await;
        left.sort();
        assert_eq!(left, ["wamid.NEW0", "wamid.NEW1"]);

        // Both runs are on the tenant's record.
        let runs = reader.page("/v1/retention/runs").await;
        let runs = runs["items"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0]["dry_run"], false);
        assert_eq!(runs[1]["dry_run"], true);
        assert_eq!(runs[0]["deleted"]["messages"], 10);
    }
}

#[actix_rt::test]
async fn a_sweep_killed_mid_way_is_finished_by_the_next_under_the_same_record() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut daemon = Daemon::new(&db.url, &db.dir);
        for (key, value) in [
            ("CONVERRA__RETENTION__SWEEP_INTERVAL_SECS", "1"),
            // One row a batch, slowly: the kill lands in the middle.
            ("CONVERRA__RETENTION__BATCH_SIZE", "1"),
            ("CONVERRA__RETENTION__BATCH_PAUSE_MS", "300"),
        ] {
            daemon.env.push((key.into(), value.into()));
        }
        let tenant = daemon.seed_tenant(&db.dir, "crash", "EAAG-token");
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let mut running = daemon.spawn();
        daemon.wait_ready(&client).await;
        let reader = ApiReader {
            client: client.clone(),
            base: daemon.base.clone(),
            key: tenant["api_key"].as_str().unwrap().to_string(),
        };
        old_and_new(&client, &daemon, &reader).await;

        // Killed once a sweep has deleted some of the ten, not all.
        let deadline = Instant::now() + Duration::from_secs(30);
        let interrupted = loop {
            let runs = reader.page("/v1/retention/runs").await;
            let partial = runs["items"].as_array().unwrap().iter().find(|r| {
                r["finished_at"].is_null()
                    && (2..10).contains(&r["deleted"]["messages"].as_u64().unwrap_or(0))
            });
            if let Some(run) = partial {
                break run.clone();
            }
            assert!(Instant::now() < deadline, "no sweep under way: {runs}");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        };
        running.0.kill().unwrap();
        let _ = running.0.wait();

        let _restarted = daemon.spawn();
        daemon.wait_ready(&client).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let finished = loop {
            let runs = reader.page("/v1/retention/runs").await;
            let same = runs["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == interrupted["id"] && !r["finished_at"].is_null())
                .cloned();
            if let Some(run) = same {
                break run;
            }
            assert!(
                Instant::now() < deadline,
                "the sweep was not finished: {runs}"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        };
        // As an uninterrupted sweep ends: the ten counted once, the two kept.
        assert_eq!(finished["deleted"]["messages"], 10, "{finished}");
        let mut left = reader.all_wamids().await;
        left.sort();
        assert_eq!(left, ["wamid.NEW0", "wamid.NEW1"]);
    }
}

#[actix_rt::test]
async fn upkeep_deletes_raw_payloads_past_their_days_on_its_timer() {
    for backend in backends() {
        let start = 1_900_000_000_000;
        let clock = converra::clock::ManualClock::new(start);
        let app = TestApp::start_with_clock_and(&backend, clock.clone(), |settings| {
            settings.scheduler.upkeep_interval_secs = 1;
            settings.inbox.keep_raw_days = 2;
            settings.retention.days.raw_payloads = 2;
        })
        .await;
        // Signed but not an update Converra knows: stored raw, sealed under the day's key.
        let body = serde_json::to_vec(&json!({"object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "some_new_field",
            "value": {"note": "kept raw"}}]}]}))
        .unwrap();
        let (status, answer) = app.post_signed(&body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["stored_raw"], 1, "{answer}");
        let deleted = "converra_raw_payloads_deleted_total";
        // Two days on, still kept; past them, the next upkeep deletes it.
        clock.advance_ms(2 * DAY_MS);
        app.after_timed_duty("upkeep").await;
        assert_eq!(app.metric(deleted).await, 0.0);
        clock.advance_ms(DAY_MS);
        let deadline = Instant::now() + Duration::from_secs(20);
        while app.metric(deleted).await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "upkeep did not delete the raw payload"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(app.metric(deleted).await, 1.0);
    }
}

/// Waits for a finished, real sweep of tenant A that started after `after_ms`.
async fn sweep_after(app: &TestApp, after_ms: i64) -> Value {
    finished_run(app, &app.a, |run| {
        time::OffsetDateTime::parse(
            run["started_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .is_ok_and(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64 > after_ms)
    })
    .await
}

#[actix_rt::test]
async fn zero_days_deletes_at_once_what_is_done_and_nothing_still_in_use() {
    for backend in backends() {
        let app = TestApp::start_with(&backend, Default::default(), |settings| {
            settings.retention.sweep_interval_secs = 1;
            settings.retention.batch_pause_ms = 0;
            // Meta cannot be reached: the send and the media download stay unfinished.
            settings.whatsapp.graph_base_url = "http://127.0.0.1:9".into();
            settings.outbound.retry_base_ms = 60_000;
            settings.media.retry_base_ms = 60_000;
        })
        .await;
        let customer = "4915100000021";
        let now = now_ms();
        app.post_signed(&text_at(NUMBER_A, customer, "wamid.IN", now - 1_000))
            .await;
        app.wait_messages(&app.a, 1).await;
        let image = serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_A,
            vec![contact(customer, "Customer")],
            vec![json!({"from": customer, "id": "wamid.IMG",
                "timestamp": (now / 1000).to_string(), "type": "image",
                "image": {"id": "7001", "mime_type": "image/jpeg", "sha256": "x"}})],
        )]))
        .unwrap();
        app.post_signed(&image).await;
        let raw = serde_json::to_vec(&json!({"object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "some_new_field",
            "value": {"metadata": {"phone_number_id": NUMBER_A}}}]}]}))
        .unwrap();
        app.post_signed(&raw).await;
        let send = json!({"from_phone_number_id": NUMBER_A, "to": customer, "type": "text",
            "text": {"body": "on its way"}});
        let sent = |key: &'static str| {
            let (app, send) = (&app, send.clone());
            async move {
                let mut resp = app
                    .client
                    .post(format!("{}/v1/messages", app.base))
                    .insert_header(("Authorization", format!("Bearer {}", app.a.api_key)))
                    .insert_header(("Idempotency-Key", key))
                    .send_json(&send)
                    .await
                    .unwrap();
                let body: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
                (resp.status().as_u16(), body)
            }
        };
        let (status, queued) = sent("retry-me").await;
        assert_eq!(status, 202, "{queued}");
        let messages = app.wait_messages(&app.a, 3).await;
        let image_id = messages.iter().find(|m| m["wamid"] == "wamid.IMG").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();

        // Media, raw payloads, technical data: nothing kept after processing.
        let set_at = now_ms();
        let (status, body) = put_policy(
            &app,
            &app.a,
            json!({"categories": {"media": {"days": 0}, "raw_payloads": {"days": 0},
                "technical": {"days": 0}, "automation_runs": {"days": 0}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        sweep_after(&app, set_at).await;
        let run = sweep_after(&app, now_ms()).await;
        let _ = run;
        let (_, runs) = app.get("/v1/retention/runs", Some(&app.a.api_key)).await;
        let raw_deleted: u64 = runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["deleted"]["raw_payloads"].as_u64().unwrap())
            .sum();
        assert_eq!(raw_deleted, 1, "the raw payload went: {runs}");
        // The download Meta has not answered is still wanted.
        let (status, body) = app
            .get(
                &format!("/v1/messages/{image_id}/media"),
                Some(&app.a.api_key),
            )
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "media_pending", "{body}");
        // The idempotency key of a send still waiting still answers with that send.
        let (status, again) = sent("retry-me").await;
        assert_eq!(status, 202, "{again}");
        assert_eq!(again["id"], queued["id"]);

        // Messages: the inbound ones go; the send still waiting keeps its message.
        let set_at = now_ms();
        let (status, body) = put_policy(
            &app,
            &app.a,
            json!({"categories": {"messages": {"days": 0}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        sweep_after(&app, set_at).await;
        let left: Vec<Value> = app.all_messages(&app.a).await;
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0]["id"], queued["id"]);
        assert_eq!(left[0]["direction"], "outbound");
        let (status, body) = app
            .get(
                &format!("/v1/messages/{}", queued["id"].as_str().unwrap()),
                Some(&app.a.api_key),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

#[actix_rt::test]
async fn a_fetched_download_counts_as_media_in_a_dry_run_and_in_the_real_one() {
    use converra::storage::retention::sweep::{self, ConnectionLane, Options};
    for backend in backends() {
        let graph = crate::fake_graph::FakeGraph::start().await;
        let base = graph.base.clone();
        let app = TestApp::start_with(&backend, Default::default(), move |settings| {
            settings.whatsapp.graph_base_url = base;
            settings.media.retry_base_ms = 50;
            // The daemon's own first sweep comes after this test.
            settings.retention.sweep_interval_secs = 3600;
        })
        .await;
        graph.add_media("7001", "image/jpeg", b"photo".to_vec(), 5);
        let customer = "4915100000031";
        let now = now_ms();
        app.post_signed(&text_at(NUMBER_A, customer, "wamid.T1", now - 2_000))
            .await;
        let image = serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_A,
            vec![contact(customer, "Customer")],
            vec![json!({"from": customer, "id": "wamid.IMG",
                "timestamp": ((now - 1_000) / 1000).to_string(), "type": "image",
                "image": {"id": "7001", "mime_type": "image/jpeg", "sha256": "x"}})],
        )]))
        .unwrap();
        app.post_signed(&image).await;
        let messages = app.wait_messages(&app.a, 2).await;
        let image_id = messages.iter().find(|m| m["wamid"] == "wamid.IMG").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _) = app
                .get(
                    &format!("/v1/messages/{image_id}/media"),
                    Some(&app.a.api_key),
                )
                .await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "the image was not fetched");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = put_policy(
            &app,
            &app.a,
            json!({"categories": {"messages": {"days": 0}, "media": {"days": 0}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");

        // Batches of one: the two messages due take the pass over every tenant's
        // messages, which must not take the download along uncounted.
        let mut settings = app.settings.clone();
        settings.retention.batch_size = 1;
        settings.retention.batch_pause_ms = 0;
        let tenant = converra::ids::TenantId(app.a.id.clone());
        let (_, pool) = app.pool();
        let lane = ConnectionLane::new(pool.get().unwrap());
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let run = |dry_run: bool| {
            sweep::sweep_all(
                &lane,
                &settings,
                std::slice::from_ref(&tenant),
                now_ms,
                &Options::from_settings(&settings.retention, dry_run),
                &stop,
                &mut (),
                &log,
            )
            .unwrap()
        };
        let dry = run(true);
        assert_eq!(dry.deleted.0["media"], 1, "{:?}", dry.deleted);
        assert_eq!(dry.deleted.0["messages"], 2, "{:?}", dry.deleted);
        let real = run(false);
        assert_eq!(
            real.deleted, dry.deleted,
            "the real run deletes what the dry run counted"
        );
        assert!(app.all_messages(&app.a).await.is_empty());
    }
}

/// A tenant whose data was purged leaves its audit entries and disclosures behind, for
/// the operator's periods; past them, the sweep takes those too (a dry run counts
/// them), and what is younger stays. A disclosure the account holders may still not
/// be told of stays until its bar is lifted.
#[actix_rt::test]
async fn what_a_purged_tenant_leaves_goes_after_the_operators_periods() {
    use converra::retention::{Category, Policies};
    use converra::storage::audit::{self, Actor, NewEntry};
    use converra::storage::disclosures;
    use converra::storage::retention::sweep::{self, ConnectionLane, Options};
    for backend in backends() {
        let app = TestApp::start_with(&backend, Default::default(), |settings| {
            settings.retention.sweep_interval_secs = 3600;
        })
        .await;
        let gone = converra::ids::TenantId("purged-tenant".into());
        let live = converra::ids::TenantId(app.a.id.clone());
        let audit_days = Policies::default().days(Category::Audit, &app.settings);
        let now = now_ms();
        let old = now - (i64::from(audit_days) + 1) * 86_400_000;
        let (_, pool) = app.pool();
        {
            let mut conn = pool.get().unwrap();
            for (tenant, at, action) in [
                (&gone, old, "tenant_closed"),
                (&gone, now, "tenant_purged"),
                (&live, old, "kept_by_its_own_sweep"),
            ] {
                let entry = NewEntry {
                    tenant_id: tenant,
                    actor: Actor::Operator,
                    action,
                    request_id: None,
                    contact_id: None,
                    detail: json!({}),
                };
                audit::append(&mut conn, &entry, at).unwrap();
            }
            disclosures::insert(&mut conn, &gone, "told", true, old).unwrap();
            disclosures::insert(&mut conn, &gone, "barred", false, old).unwrap();
        }
        let mut settings = app.settings.clone();
        settings.retention.batch_size = 1;
        settings.retention.batch_pause_ms = 0;
        let lane = ConnectionLane::new(pool.get().unwrap());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let gone_tenants =
            converra::storage::retention::gone_tenants(&mut pool.get().unwrap()).unwrap();
        assert_eq!(gone_tenants, std::slice::from_ref(&gone), "{backend:?}");
        let run = |dry_run: bool| {
            let (deleted, failed) = sweep::sweep_gone(
                &lane,
                &settings,
                &gone_tenants,
                now_ms,
                &Options::from_settings(&settings.retention, dry_run),
                &stop,
                &mut (),
                &log,
            )
            .unwrap();
            assert!(failed.is_empty(), "{failed:?}");
            deleted
        };
        let dry = run(true);
        assert_eq!(dry.0["audit"], 2, "{backend:?}: {:?}", dry.0);
        let real = run(false);
        assert_eq!(
            real, dry,
            "{backend:?}: the real run deletes what was counted"
        );
        let mut conn = pool.get().unwrap();
        let left: Vec<String> = audit::entries(&mut conn, &gone, None, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            left,
            ["tenant_purged"],
            "{backend:?}: the young entry stays"
        );
        let kept: Vec<String> = disclosures::list(&mut conn, Some(&gone))
            .unwrap()
            .into_iter()
            .map(|d| d.authority)
            .collect();
        assert_eq!(kept, ["barred"], "{backend:?}: the barred disclosure stays");
        assert_eq!(
            audit::entries(&mut conn, &live, None, 100).unwrap().len(),
            1,
            "{backend:?}: a live tenant's entries are its own sweep's"
        );
        assert_eq!(run(false).total(), 0, "{backend:?}: nothing more");
        // The operator lifts the bar: no account holder is left to tell, the lift is
        // recorded, and the disclosure then goes like the other.
        let barred = disclosures::list(&mut conn, Some(&gone)).unwrap().remove(0);
        let lifted =
            converra::compliance::notices::lift_disclosure(&mut conn, &barred.id, "example", now)
                .unwrap();
        assert!(lifted.lifted_at.is_some(), "{backend:?}");
        assert_eq!(
            run(false).0["audit"],
            1,
            "{backend:?}: the lifted disclosure goes"
        );
        assert!(disclosures::list(&mut conn, Some(&gone))
            .unwrap()
            .is_empty());
    }
}
