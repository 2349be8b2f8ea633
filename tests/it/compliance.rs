//! The audit log and the emails to account holders: an operator's notice reaches every
//! account holder over a real SMTP conversation exactly once, through a server that is
//! away or refusing for a while; each tenant's audit log records what concerns it, and
//! only that.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::daemon::{ApiReader, Daemon};
use crate::smtp::SmtpSink;
use crate::support::*;

/// The daemon's settings for emails through `port`, retrying fast.
pub(crate) fn with_smtp(daemon: &mut Daemon, port: u16) {
    for (key, value) in [
        (
            "CONVERRA__EMAIL__SMTP_URL",
            format!("smtp://127.0.0.1:{port}"),
        ),
        (
            "CONVERRA__EMAIL__FROM",
            "Converra <privacy@converra.test>".into(),
        ),
        ("CONVERRA__EMAIL__RETRY_BASE_MS", "100".into()),
        ("CONVERRA__EMAIL__RETRY_MAX_MS", "400".into()),
        ("CONVERRA__EMAIL__TIMEOUT_SECS", "5".into()),
    ] {
        daemon.env.push((key.into(), value));
    }
}

/// A tenant made through the operator CLI, its holder `holder@NAME.example`.
pub(crate) fn create_tenant(daemon: &Daemon, name: &str) -> Value {
    daemon.cli_json(&[
        "tenant",
        "create",
        "--name",
        name,
        "--holder-email",
        &format!("holder@{name}.example"),
        "--json",
    ])
}

fn send_notice(daemon: &Daemon, dir: &tempfile::TempDir, subject: &str, body: &str) -> Value {
    let body_file = dir.path().join("notice.txt");
    std::fs::write(&body_file, body).unwrap();
    daemon.cli_json(&[
        "notice",
        "send",
        "--subject",
        subject,
        "--body-file",
        body_file.to_str().unwrap(),
        "--json",
    ])
}

fn reader(daemon: &Daemon, client: &awc::Client, tenant: &Value) -> ApiReader {
    ApiReader {
        client: client.clone(),
        base: daemon.base.clone(),
        key: tenant["api_key"].as_str().unwrap().to_string(),
    }
}

async fn metric(client: &awc::Client, base: &str, name: &str) -> f64 {
    let mut resp = client.get(format!("{base}/metrics")).send().await.unwrap();
    let body = resp.body().await.unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Meta's `timestamp` for a message sent now.
fn message_timestamp_now() -> Value {
    json!(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string())
}

/// Returns once the mailer has gone through its due emails twice from now: an email
/// still due would have gone again by then.
async fn after_two_mailer_rounds(client: &awc::Client, base: &str) {
    let name = "converra_timed_duties_total{duty=\"mailer\"}";
    let start = metric(client, base, name).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(client, base, name).await < start + 2.0 {
        assert!(Instant::now() < deadline, "the mailer stopped going round");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn a_notice_reaches_every_account_holder_once_and_each_audit_log_records_its_own() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let sink = SmtpSink::start();
        let mut daemon = Daemon::new(&db.url, &db.dir);
        with_smtp(&mut daemon, sink.port);
        let migrated = daemon.command(&["migrate"]).output().unwrap();
        assert!(migrated.status.success());
        let shop = create_tenant(&daemon, "shop");
        let bakery = create_tenant(&daemon, "bakery");
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let _running = daemon.spawn();
        daemon.wait_ready(&client).await;

        let queued = send_notice(
            &daemon,
            &db.dir,
            "Converra joins Example Group",
            "Converra's business is acquired by Example Group.\n\nYour data stays <where it is>.",
        );
        assert_eq!(queued["emails"], 2, "{backend:?}: {queued}");
        let notice_id = queued["id"].as_str().unwrap().to_string();

        let received = sink.wait_for(2, Duration::from_secs(20)).await;
        assert_eq!(received.len(), 2, "{backend:?}: both holders got it");
        let mut recipients: Vec<String> = received.iter().flat_map(|r| r.to.clone()).collect();
        recipients.sort();
        assert_eq!(
            recipients,
            vec!["holder@bakery.example", "holder@shop.example"],
            "{backend:?}"
        );
        for email in &received {
            assert_eq!(email.from, "privacy@converra.test", "{backend:?}");
            assert_eq!(
                email.header("Subject").as_deref(),
                Some("Converra joins Example Group"),
                "{backend:?}"
            );
            let message_id = email.header("Message-ID").unwrap_or_default();
            assert!(
                message_id.ends_with("@converra.test>"),
                "{backend:?}: {message_id}"
            );
            assert!(email.data.contains("multipart/alternative"), "{backend:?}");
            assert!(
                email.data.contains("acquired by Example Group"),
                "{backend:?}"
            );
            assert!(
                email.data.contains("&lt;where it is&gt;"),
                "{backend:?}: the HTML part escapes the text"
            );
        }

        // Delivered once: nothing more comes, and the notice counts both as sent.
        after_two_mailer_rounds(&client, &daemon.base).await;
        assert_eq!(sink.received().len(), 2, "{backend:?}: no second delivery");
        let listed = daemon.cli_json(&["notice", "list", "--json"]);
        assert_eq!(
            listed,
            json!([{"id": notice_id, "subject": "Converra joins Example Group",
                "created_at": listed[0]["created_at"], "queued": 0, "sent": 2, "failed": 0}]),
            "{backend:?}"
        );

        // Each tenant's audit log holds its own notice entry, and a retention change
        // is recorded for the tenant that made it only.
        let shop_reader = reader(&daemon, &client, &shop);
        let bakery_reader = reader(&daemon, &client, &bakery);
        let mut resp = client
            .put(format!("{}/v1/retention", daemon.base))
            .insert_header(("Authorization", format!("Bearer {}", shop_reader.key)))
            .send_json(&json!({"categories": {"messages": {"days": 30}}}))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{backend:?}");
        let _ = resp.body().await;
        let shop_log = shop_reader.all("/v1/audit").await;
        let bakery_log = bakery_reader.all("/v1/audit").await;
        let actions = |log: &[Value]| -> Vec<String> {
            log.iter()
                .map(|e| e["action"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(
            actions(&shop_log),
            vec!["retention_policy_changed", "notice_queued"],
            "{backend:?}: newest first"
        );
        assert_eq!(actions(&bakery_log), vec!["notice_queued"], "{backend:?}");
        assert_eq!(shop_log[0]["actor"], "api", "{backend:?}");
        assert_eq!(
            shop_log[0]["detail"],
            json!({"messages": 30}),
            "{backend:?}"
        );
        assert_eq!(shop_log[1]["actor"], "operator", "{backend:?}");
        assert_eq!(shop_log[1]["detail"]["notice_id"], notice_id, "{backend:?}");
        assert_ne!(
            shop_log[1]["detail"]["email_id"], bakery_log[0]["detail"]["email_id"],
            "{backend:?}: each names its own email"
        );
        let no_key = client
            .get(format!("{}/v1/audit", daemon.base))
            .send()
            .await
            .unwrap();
        assert_eq!(no_key.status().as_u16(), 401, "{backend:?}");
    }
}

#[actix_rt::test]
async fn an_email_waits_out_a_server_that_is_down_then_refusing_and_is_delivered_once() {
    let db = TestDb::new(&Backend::Sqlite);
    // A port nothing listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = Daemon::new(&db.url, &db.dir);
    with_smtp(&mut daemon, port);
    let migrated = daemon.command(&["migrate"]).output().unwrap();
    assert!(migrated.status.success());
    create_tenant(&daemon, "florist");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let _running = daemon.spawn();
    daemon.wait_ready(&client).await;
    send_notice(
        &daemon,
        &db.dir,
        "New sub-processor",
        "We add a hosting provider.",
    );

    // The server is down: the mailer keeps trying.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &client,
        &daemon.base,
        "converra_emails_total{outcome=\"retried\"}",
    )
    .await
        < 2.0
    {
        assert!(
            Instant::now() < deadline,
            "no retry while the server was down"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    // It comes back, refusing the first delivery for now (451).
    let sink = SmtpSink::start_on(port);
    sink.refuse_next(1);
    let received = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1, "delivered once the server took it");
    assert_eq!(received[0].to, vec!["holder@florist.example"]);
    assert_eq!(
        received[0].header("Subject").as_deref(),
        Some("New sub-processor")
    );
    after_two_mailer_rounds(&client, &daemon.base).await;
    assert_eq!(sink.received().len(), 1, "and never again");
    let listed = daemon.cli_json(&["notice", "list", "--json"]);
    assert_eq!(listed[0]["sent"], 1, "{listed}");
    assert_eq!(listed[0]["queued"], 0, "{listed}");
}

/// The subject of the requests below: a contact of tenant A.
const SUBJECT: &str = "4915100000001";

pub(crate) async fn wait_state(app: &TestApp, tenant: &Tenant, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, request) = app
            .get(&format!("/v1/privacy/requests/{id}"), Some(&tenant.api_key))
            .await;
        assert_eq!(status, 200, "{request}");
        if request["state"] == state {
            return request;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} never became {state}: {request}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn text_to(to: &str) -> Value {
    json!({"from_phone_number_id": NUMBER_A, "to": to, "type": "text",
        "text": {"body": "Your order has shipped"}})
}

/// A restriction runs by itself: the account holder hears it was received and
/// completed, nothing can be sent to the contact until the request is lifted, each
/// step is in the tenant's audit log without the subject's identifier, and the other
/// tenant cannot see the request. A subject never seen is rejected.
#[actix_rt::test]
async fn a_restriction_blocks_sends_until_lifted_and_every_step_is_told_and_audited() {
    for backend in backends() {
        let sink = SmtpSink::start();
        let app = TestApp::start_with(&backend, Default::default(), |settings| {
            settings.email.smtp_url = format!("smtp://127.0.0.1:{}", sink.port);
            settings.email.retry_base_ms = 100;
            settings.email.retry_max_ms = 400;
        })
        .await;
        // A message of now: the contact's customer-service window is open.
        let mut message = text(SUBJECT, "wamid.privacy.1", "hello");
        message["timestamp"] = message_timestamp_now();
        let webhook = envelope(vec![messages_change(
            NUMBER_A,
            vec![contact(SUBJECT, "Test User")],
            vec![message],
        )]);
        app.post_signed(&serde_json::to_vec(&webhook).unwrap())
            .await;
        app.wait_messages(&app.a, 1).await;

        let (status, received) = app
            .send_json(
                "POST",
                "/v1/privacy/requests",
                &app.a.api_key,
                &json!({"kind": "restriction", "wa_id": format!("+{SUBJECT}")}),
            )
            .await;
        assert_eq!(status, 201, "{backend:?}: {received}");
        assert_eq!(received["state"], "received", "{backend:?}");
        assert!(received["due_at"]
            .as_str()
            .unwrap()
            .ends_with("T23:59:59.999Z"));
        let id = received["id"].as_str().unwrap().to_string();
        let done = wait_state(&app, &app.a, &id, "completed").await;
        assert!(done["contact_id"].is_string(), "{backend:?}: {done}");

        let (status, refused) = app
            .send_json("POST", "/v1/messages", &app.a.api_key, &text_to(SUBJECT))
            .await;
        assert_eq!(status, 409, "{backend:?}: {refused}");
        assert_eq!(refused["error"]["code"], "restricted", "{backend:?}");

        let (status, _) = app
            .get(&format!("/v1/privacy/requests/{id}"), Some(&app.b.api_key))
            .await;
        assert_eq!(
            status, 404,
            "{backend:?}: another tenant's request is not found"
        );
        let (status, lifted) = app
            .send_json(
                "POST",
                &format!("/v1/privacy/requests/{id}/lift"),
                &app.a.api_key,
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "{backend:?}: {lifted}");
        assert!(lifted["lifted_at"].is_string(), "{backend:?}");
        let (status, again) = app
            .send_json(
                "POST",
                &format!("/v1/privacy/requests/{id}/lift"),
                &app.a.api_key,
                &json!({}),
            )
            .await;
        assert_eq!(status, 409, "{backend:?}: {again}");
        assert_eq!(again["error"]["code"], "not_liftable", "{backend:?}");
        let (status, sent) = app
            .send_json("POST", "/v1/messages", &app.a.api_key, &text_to(SUBJECT))
            .await;
        assert_eq!(status, 202, "{backend:?}: sends go once lifted: {sent}");

        // A subject the tenant never saw: recorded by its keyed hash, in force once its
        // contact appears.
        const NEWCOMER: &str = "4915199999999";
        let (status, unknown) = app
            .send_json(
                "POST",
                "/v1/privacy/requests",
                &app.a.api_key,
                &json!({"kind": "restriction", "wa_id": NEWCOMER}),
            )
            .await;
        assert_eq!(status, 201, "{backend:?}: {unknown}");
        let unknown_id = unknown["id"].as_str().unwrap().to_string();
        let pending = wait_state(&app, &app.a, &unknown_id, "completed").await;
        assert_eq!(
            pending["outcome"]["pending_contact"], true,
            "{backend:?}: {pending}"
        );
        assert_eq!(pending["contact_id"], Value::Null, "{backend:?}");
        let mut first = text(NEWCOMER, "wamid.privacy.newcomer", "first words");
        first["timestamp"] = message_timestamp_now();
        let webhook = envelope(vec![messages_change(
            NUMBER_A,
            vec![contact(NEWCOMER, "New Comer")],
            vec![first],
        )]);
        app.post_signed(&serde_json::to_vec(&webhook).unwrap())
            .await;
        app.wait_messages(&app.a, 2).await;
        let (status, refused) = app
            .send_json("POST", "/v1/messages", &app.a.api_key, &text_to(NEWCOMER))
            .await;
        assert_eq!(
            (status, &refused["error"]["code"]),
            (409, &json!("restricted")),
            "{backend:?}: the recorded restriction holds the new contact: {refused}"
        );
        let (_, applied) = app
            .get(
                &format!("/v1/privacy/requests/{unknown_id}"),
                Some(&app.a.api_key),
            )
            .await;
        assert!(applied["contact_id"].is_string(), "{backend:?}: {applied}");

        // The account holder's emails: received and completed, for both.
        let emails = sink.wait_for(4, Duration::from_secs(20)).await;
        let mut subjects: Vec<String> = emails
            .iter()
            .map(|e| e.header("Subject").unwrap_or_default())
            .collect();
        subjects.sort();
        assert_eq!(
            subjects,
            vec![
                format!("Privacy request completed: restriction {id}"),
                format!("Privacy request completed: restriction {unknown_id}"),
                format!("Privacy request received: restriction {id}"),
                format!("Privacy request received: restriction {unknown_id}"),
            ],
            "{backend:?}"
        );
        for email in &emails {
            assert_eq!(email.to, vec!["owner@tenant-a.example"], "{backend:?}");
            // Quoted-printable soft line breaks undone, so a split number is seen.
            let text = email.data.replace("=\r\n", "");
            assert!(!text.contains(SUBJECT), "{backend:?}: no wa_id in an email");
            assert!(
                text.contains(&id) || text.contains(&unknown_id),
                "{backend:?}"
            );
        }

        let log = app.all("/v1/audit", &app.a.api_key).await;
        let steps: Vec<(String, String)> = log
            .iter()
            .filter(|e| e["request_id"] == id.as_str())
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_string(),
                    e["actor"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let expected = [
            ("request_lifted", "api"),
            ("request_completed", "compliance"),
            ("request_started", "compliance"),
            ("request_received", "api"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()));
        assert_eq!(steps, expected, "{backend:?}: newest first");
        assert!(
            log.iter().any(|e| e["request_id"] == unknown_id.as_str()
                && e["action"] == "request_applied_to_new_contact"
                && e["contact_id"].is_string()),
            "{backend:?}: the recorded restriction's application is audited"
        );
        assert!(
            !serde_json::to_string(&log).unwrap().contains(SUBJECT),
            "{backend:?}: the audit log names no wa_id"
        );
        assert!(
            app.all("/v1/audit", &app.b.api_key).await.is_empty(),
            "{backend:?}"
        );
    }
}

/// Requests are refused naming the field at fault.
#[actix_rt::test]
async fn a_privacy_request_is_refused_naming_the_field() {
    let app = TestApp::start(&Backend::Sqlite).await;
    for (body, field) in [
        (json!({"kind": "forget", "wa_id": SUBJECT}), "kind"),
        (json!({"kind": "restriction"}), "wa_id"),
        (json!({"kind": "restriction", "wa_id": "call me"}), "wa_id"),
        (
            json!({"kind": "restriction", "wa_id": SUBJECT, "user_id": "US.abc"}),
            "user_id",
        ),
        (
            json!({"kind": "restriction", "wa_id": SUBJECT, "name": "x"}),
            "name",
        ),
    ] {
        let (status, refused) = app
            .send_json("POST", "/v1/privacy/requests", &app.a.api_key, &body)
            .await;
        assert_eq!(status, 422, "{body}: {refused}");
        assert_eq!(refused["error"]["field"], field, "{body}: {refused}");
    }
    let (status, _) = app
        .get("/v1/privacy/requests?overdue=maybe", Some(&app.a.api_key))
        .await;
    assert_eq!(status, 422);
}

/// Many requests of one tenant, submitted at once, run one at a time in the order
/// they took in the queue.
#[actix_rt::test]
async fn concurrent_requests_of_a_tenant_complete_one_at_a_time_in_order() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        app.post_signed(&text_webhook(NUMBER_A, SUBJECT, "wamid.privacy.2", "hello"))
            .await;
        app.wait_messages(&app.a, 1).await;
        let body = json!({"kind": "objection", "wa_id": SUBJECT});
        let submitted = futures_util::future::join_all(
            (0..20).map(|_| app.send_json("POST", "/v1/privacy/requests", &app.a.api_key, &body)),
        )
        .await;
        let mut ids: Vec<String> = submitted
            .iter()
            .map(|(status, request)| {
                assert_eq!(*status, 201, "{backend:?}: {request}");
                request["id"].as_str().unwrap().to_string()
            })
            .collect();
        ids.sort();
        let mut finished = Vec::new();
        for id in &ids {
            finished.push(wait_state(&app, &app.a, id, "completed").await);
        }
        let received: Vec<&str> = finished
            .iter()
            .map(|r| r["received_at"].as_str().unwrap())
            .collect();
        let completed: Vec<&str> = finished
            .iter()
            .map(|r| r["completed_at"].as_str().unwrap())
            .collect();
        assert!(
            received.windows(2).all(|w| w[0] <= w[1]),
            "{backend:?}: {received:?}"
        );
        assert!(
            completed.windows(2).all(|w| w[0] <= w[1]),
            "{backend:?}: in queue order: {completed:?}"
        );
        // Each started only once the one before it completed.
        let log = app.all("/v1/audit", &app.a.api_key).await;
        let mut order: Vec<(String, String)> = log
            .iter()
            .filter(|e| e["action"] == "request_started" || e["action"] == "request_completed")
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_string(),
                    e["request_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        order.reverse();
        let expected: Vec<(String, String)> = ids
            .iter()
            .flat_map(|id| {
                [
                    ("request_started".to_string(), id.clone()),
                    ("request_completed".to_string(), id.clone()),
                ]
            })
            .collect();
        assert_eq!(order, expected, "{backend:?}: strictly one at a time");
    }
}

/// A daemon on SQLite whose clock stands at 2027-01-31T10:00:00Z (a Sunday) and whose
/// compliance actor starts no step until the returned flag is cleared, emailing
/// through `sink`; `tweak` adjusts its settings.
pub(crate) async fn held_on_31_january(
    sink: &SmtpSink,
    tweak: impl FnOnce(&mut converra::config::Settings),
) -> (
    TestApp,
    std::sync::Arc<converra::clock::ManualClock>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let clock = converra::clock::ManualClock::new(1_801_389_600_000);
    let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hooks = converra::actors::Hooks {
        hold_compliance: Some(hold.clone()),
        ..Default::default()
    };
    let port = sink.port;
    let app = TestApp::start_with_clock_hooks(&Backend::Sqlite, clock.clone(), hooks, |settings| {
        settings.email.smtp_url = format!("smtp://127.0.0.1:{port}");
        settings.email.retry_base_ms = 100;
        settings.email.retry_max_ms = 400;
        tweak(settings);
    })
    .await;
    (app, clock, hold)
}

async fn submit_erasure(app: &TestApp, wa_id: &str) -> (u16, Value) {
    app.send_json(
        "POST",
        "/v1/privacy/requests",
        &app.a.api_key,
        &json!({"kind": "erasure", "wa_id": wa_id}),
    )
    .await
}

async fn extend(app: &TestApp, id: &str, body: Value) -> (u16, Value) {
    app.send_json(
        "POST",
        &format!("/v1/privacy/requests/{id}/extend"),
        &app.a.api_key,
        &body,
    )
    .await
}

/// A request's deadline is extended once, by one or two months counted from its
/// original due day, while it is open and before that day has passed; the account
/// holder is emailed the reason. Received on 31 January 2027: due on 28 February, a
/// Sunday, so Monday 1 March; extended by a month, 28 March, a Sunday, so 29 March.
#[actix_rt::test]
async fn an_open_request_is_extended_once_before_its_due_day_with_the_reason_emailed() {
    let sink = SmtpSink::start();
    let (app, clock, hold) = held_on_31_january(&sink, |_| {}).await;
    let (status, first) = submit_erasure(&app, "4915100000301").await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["due_at"], "2027-03-01T23:59:59.999Z");
    let id = first["id"].as_str().unwrap().to_string();
    for (body, field) in [
        (json!({"months": 3, "reason": "many systems"}), "months"),
        (json!({"months": 0, "reason": "many systems"}), "months"),
        (json!({"months": 1}), "reason"),
        (json!({"months": 1, "reason": "  "}), "reason"),
        (json!({"months": 1, "reason": "x", "note": "y"}), "note"),
    ] {
        let (status, refused) = extend(&app, &id, body.clone()).await;
        assert_eq!(status, 422, "{body}: {refused}");
        assert_eq!(refused["error"]["field"], field, "{body}: {refused}");
    }
    let reason = "The subject's data spans three archived systems";
    let (status, extended) = extend(&app, &id, json!({"months": 1, "reason": reason})).await;
    assert_eq!(status, 200, "{extended}");
    assert_eq!(extended["extended_due_at"], "2027-03-29T23:59:59.999Z");
    assert_eq!(
        extended["due_at"], "2027-03-01T23:59:59.999Z",
        "the original stays"
    );
    let (status, again) = extend(&app, &id, json!({"months": 1, "reason": reason})).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "already_extended");
    let (status, _) = app
        .send_json(
            "POST",
            &format!("/v1/privacy/requests/{id}/extend"),
            &app.b.api_key,
            &json!({"months": 1, "reason": reason}),
        )
        .await;
    assert_eq!(status, 404, "another tenant's request");

    // Past its original due day, a request is not extended any more.
    let (_, late) = submit_erasure(&app, "4915100000302").await;
    let late_id = late["id"].as_str().unwrap().to_string();
    clock.advance_ms(31 * 86_400_000);
    let (status, refused) = extend(&app, &late_id, json!({"months": 2, "reason": reason})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "extension_too_late");

    // Run: an ended request is not extended.
    hold.store(false, std::sync::atomic::Ordering::Release);
    wait_state(&app, &app.a, &id, "completed").await;
    let (status, ended) = extend(&app, &id, json!({"months": 1, "reason": reason})).await;
    assert_eq!(status, 409, "{ended}");
    assert_eq!(ended["error"]["code"], "not_open");

    let emails = sink.wait_for(5, Duration::from_secs(20)).await;
    let told = emails
        .iter()
        .find(|e| {
            e.header("Subject").as_deref()
                == Some(&format!("Privacy request extended: erasure {id}"))
        })
        .unwrap_or_else(|| panic!("no extension email"));
    let text = told.data.replace("=\r\n", "");
    assert!(text.contains(reason), "the reason is in the email");
    assert!(
        text.contains("2027-03-29"),
        "the new due day is in the email"
    );
    let log = app.all("/v1/audit", &app.a.api_key).await;
    assert!(log
        .iter()
        .any(|e| e["action"] == "request_extended" && e["request_id"] == id.as_str()));
}

/// A rectification corrects the contact fields it names, through the queue like any
/// request; the audit log names the fields, never a value; the changes do not stay on
/// the request once applied. Bad changes are refused naming the field; a subject the
/// tenant never saw is rejected.
#[actix_rt::test]
async fn a_rectification_corrects_the_named_fields_and_keeps_no_value_anywhere_else() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let body = envelope(vec![messages_change(
            NUMBER_A,
            vec![contact(SUBJECT, "Wrong Name")],
            vec![text(SUBJECT, "wamid.rectify.1", "hello")],
        )]);
        app.post_signed(&serde_json::to_vec(&body).unwrap()).await;
        app.wait_messages(&app.a, 1).await;
        for (body, field) in [
            (
                json!({"kind": "rectification", "wa_id": SUBJECT}),
                "changes",
            ),
            (
                json!({"kind": "rectification", "wa_id": SUBJECT, "changes": {}}),
                "changes",
            ),
            (
                json!({"kind": "rectification", "wa_id": SUBJECT, "changes": {"wa_id": "1"}}),
                "changes",
            ),
            (
                json!({"kind": "rectification", "wa_id": SUBJECT, "changes": {"profile_name": 5}}),
                "changes.profile_name",
            ),
            (
                json!({"kind": "rectification", "wa_id": SUBJECT, "changes": {"tags": "vip"}}),
                "changes.tags",
            ),
            (
                json!({"kind": "restriction", "wa_id": SUBJECT, "changes": {"username": "x"}}),
                "changes",
            ),
        ] {
            let (status, refused) = app
                .send_json("POST", "/v1/privacy/requests", &app.a.api_key, &body)
                .await;
            assert_eq!(status, 422, "{backend:?}: {body}: {refused}");
            assert_eq!(refused["error"]["field"], field, "{backend:?}: {body}");
        }
        let (status, submitted) = app
            .send_json(
                "POST",
                "/v1/privacy/requests",
                &app.a.api_key,
                &json!({"kind": "rectification", "wa_id": SUBJECT, "changes": {
                    "profile_name": "Right Name", "display_name": "Anna R.", "tags": ["vip"]}}),
            )
            .await;
        assert_eq!(status, 201, "{backend:?}: {submitted}");
        let id = submitted["id"].as_str().unwrap().to_string();
        let done = wait_state(&app, &app.a, &id, "completed").await;
        let contact_id = done["contact_id"].as_str().unwrap();
        let (status, corrected) = app
            .get(&format!("/v1/contacts/{contact_id}"), Some(&app.a.api_key))
            .await;
        assert_eq!(status, 200, "{backend:?}");
        assert_eq!(corrected["profile_name"], "Right Name", "{backend:?}");
        assert_eq!(corrected["display_name"], "Anna R.", "{backend:?}");
        assert_eq!(corrected["tags"], json!(["vip"]), "{backend:?}");

        let log = app.all("/v1/audit", &app.a.api_key).await;
        let rectified = log
            .iter()
            .find(|e| e["action"] == "contact_rectified" && e["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{backend:?}: {log:?}"));
        assert_eq!(
            rectified["detail"]["fields"],
            json!(["profile_name", "display_name", "tags"]),
            "{backend:?}"
        );
        let logged = serde_json::to_string(&log).unwrap();
        for value in ["Right Name", "Wrong Name", "Anna R.", SUBJECT] {
            assert!(
                !logged.contains(value),
                "{backend:?}: {value} in the audit log"
            );
        }
        // Nothing of the changes stays on the request.
        let (_, pool) = app.pool();
        let mut conn = pool.get().unwrap();
        let kept: Option<Vec<u8>> = {
            use converra::storage::schema::privacy_requests;
            use diesel::prelude::*;
            converra::on_backend!(&mut *conn, c => privacy_requests::table
                .find(&id)
                .select(privacy_requests::changes_ct)
                .get_result(c))
            .unwrap()
        };
        assert!(
            kept.is_none(),
            "{backend:?}: the changes are emptied once applied"
        );

        let (_, unknown) = app
            .send_json(
                "POST",
                "/v1/privacy/requests",
                &app.a.api_key,
                &json!({"kind": "rectification", "wa_id": "4915199999999",
                    "changes": {"profile_name": "Nobody"}}),
            )
            .await;
        let rejected = wait_state(&app, &app.a, unknown["id"].as_str().unwrap(), "rejected").await;
        assert_eq!(rejected["reason"], "unknown_subject", "{backend:?}");
    }
}
