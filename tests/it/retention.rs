//! Retention: the tenant's periods (`/v1/retention`), the scheduler's sweep on its
//! timer (by an injected clock, at the boundary instant, one tenant's policy never
//! touching another's rows), the record of each sweep (`/v1/retention/runs`), and the
//! operator's `converra retention run` (a dry run counts what the real run deletes).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

/// Waits for a finished, real sweep of the tenant newer than `after` (a run id).
async fn next_run(app: &TestApp, tenant: &Tenant, after: Option<&str>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, runs) = app.get("/v1/retention/runs", Some(&tenant.api_key)).await;
        assert_eq!(status, 200, "{runs}");
        let newest = runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| !r["finished_at"].is_null() && r["dry_run"] == false)
            .cloned();
        if let Some(run) = newest {
            if after.is_none_or(|after| run["id"].as_str().unwrap() > after) {
                return run;
            }
        }
        assert!(Instant::now() < deadline, "no sweep finished: {runs}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
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
