//! What the operator tells account holders and what tenants ask the operator, each
//! over a real SMTP conversation: policy versions (refused under 14 days' notice),
//! disclosures to authorities (told at once, or held until the bar is lifted), the
//! processing record (read through the API, a change emailed at the next start),
//! privacy enquiries (due five business days on, answered through the CLI), and the
//! reminders of deadlines that the scheduler sends once.

use std::time::Duration;

use serde_json::{json, Value};

use crate::compliance::with_smtp;
use crate::daemon::Daemon;
use crate::smtp::{Received, SmtpSink};
use crate::support::*;

/// An API call with `key`.
async fn call(
    client: &awc::Client,
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
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
    let bytes = resp.body().await.unwrap();
    (
        resp.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A configuration file naming one sub-processor and the data's location.
fn processing_config(dir: &tempfile::TempDir, sub_processor: &str) -> String {
    let path = dir.path().join("converra.toml");
    std::fs::write(
        &path,
        format!(
            "[processing]\ndata_locations = [\"Germany\"]\n\n[[processing.sub_processors]]\n\
             name = \"{sub_processor}\"\npurpose = \"servers and backups\"\ncountry = \"DE\"\n\
             safeguard = \"none needed (EEA)\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn subjects(received: &[Received]) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = received
        .iter()
        .map(|r| (r.to.join(","), r.header("Subject").unwrap_or_default()))
        .collect();
    found.sort();
    found
}

fn day(ms: i64, plus_days: i64) -> String {
    (converra::compliance::dates::day_of(ms) + time::Duration::days(plus_days)).to_string()
}

#[actix_rt::test]
async fn policy_versions_disclosures_and_the_processing_record_reach_the_account_holders() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let sink = SmtpSink::start();
        let mut daemon = Daemon::new(&db.url, &db.dir);
        with_smtp(&mut daemon, sink.port);
        daemon.env.push((
            "CONVERRA_CONFIG".into(),
            processing_config(&db.dir, "Example Hosting"),
        ));
        assert!(daemon
            .command(&["migrate"])
            .output()
            .unwrap()
            .status
            .success());
        let create = |name: &str| crate::compliance::create_tenant(&daemon, name);
        let (shop, bakery) = (create("shop"), create("bakery"));
        let key = shop["api_key"].as_str().unwrap().to_string();
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let running = daemon.spawn();
        daemon.wait_ready(&client).await;

        // The processing record, with the tenant's own categories and periods.
        let (status, record) = call(
            &client,
            &daemon.base,
            &key,
            "GET",
            "/v1/privacy/processing",
            None,
        )
        .await;
        assert_eq!(status, 200, "{record}");
        assert_eq!(record["sub_processors"][0]["name"], "Example Hosting");
        assert_eq!(
            record["sub_processors"][0]["safeguard"],
            "none needed (EEA)"
        );
        assert_eq!(record["data_locations"], json!(["Germany"]));
        let categories = record["categories"].as_array().unwrap();
        let messages = categories
            .iter()
            .find(|c| c["category"] == "messages")
            .unwrap();
        assert_eq!(messages["retention_days"], 365, "{record}");

        // A policy version under 14 days' notice is refused, naming the rule.
        let summary = db.dir.path().join("summary.txt");
        std::fs::write(
            &summary,
            "Enquiries are now answered within 3 business days.",
        )
        .unwrap();
        let now = converra::clock::Clock::now_ms(&converra::clock::SystemClock);
        let too_soon = daemon
            .command(&[
                "policy",
                "publish",
                "--version",
                "2.1",
                "--effective-date",
                &day(now, 14),
                "--summary-file",
                summary.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(!too_soon.status.success());
        let said = String::from_utf8_lossy(&too_soon.stderr);
        assert!(said.contains("14 days' notice"), "{said}");
        // 14 whole days from now: the day after the 14th.
        let effective = day(now, 15);
        let published = daemon.cli_json(&[
            "policy",
            "publish",
            "--version",
            "2.1",
            "--effective-date",
            &effective,
            "--summary-file",
            summary.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(published["emails"], 2, "{published}");
        let (status, policy) = call(&client, &daemon.base, &key, "GET", "/v1/policy", None).await;
        assert_eq!(status, 200, "{policy}");
        assert_eq!(policy["current"], Value::Null, "{policy}");
        assert_eq!(policy["pending"][0]["version"], "2.1", "{policy}");
        assert_eq!(policy["pending"][0]["effective_date"], effective.as_str());
        let received = sink.wait_for(2, Duration::from_secs(20)).await;
        let subject = format!("Converra's privacy policy changes on {effective}");
        assert_eq!(
            subjects(&received),
            vec![
                ("holder@bakery.example".to_string(), subject.clone()),
                ("holder@shop.example".to_string(), subject),
            ],
            "{backend:?}"
        );
        assert!(received[0].data.contains("3 business days"));

        // A disclosure the holder may hear of is told at once; a barred one waits.
        let told = daemon.cli_json(&[
            "disclosure",
            "record",
            "--tenant",
            shop["tenant_id"].as_str().unwrap(),
            "--authority",
            "Federal Police",
            "--notify",
            "--json",
        ]);
        assert!(told["notified_at"].is_string(), "{told}");
        let barred = daemon.cli_json(&[
            "disclosure",
            "record",
            "--tenant",
            bakery["tenant_id"].as_str().unwrap(),
            "--authority",
            "Tax Office",
            "--no-notify",
            "--json",
        ]);
        assert_eq!(barred["notified_at"], Value::Null, "{barred}");
        let received = sink.wait_for(3, Duration::from_secs(20)).await;
        let disclosure_subject = "A disclosure of your account's data to an authority";
        let disclosures: Vec<&Received> = received
            .iter()
            .filter(|r| r.header("Subject").as_deref() == Some(disclosure_subject))
            .collect();
        assert_eq!(disclosures.len(), 1, "{backend:?}: only the one told");
        assert_eq!(disclosures[0].to, vec!["holder@shop.example"]);
        let barred_id = barred["id"].as_str().unwrap();
        let bakery_key = bakery["api_key"].as_str().unwrap();
        let audit_actions = |audit: &Value| -> Vec<String> {
            audit["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["action"].as_str().map(str::to_string))
                .collect()
        };
        let (_, audit) = call(&client, &daemon.base, bakery_key, "GET", "/v1/audit", None).await;
        assert!(
            !audit_actions(&audit)
                .iter()
                .any(|a| a.starts_with("disclosure")),
            "{backend:?}: a barred disclosure stays out of the tenant's log: {audit}"
        );
        let lifted = daemon.cli_json(&["disclosure", "lift", "--id", barred_id, "--json"]);
        assert!(lifted["lifted_at"].is_string(), "{lifted}");
        let (_, audit) = call(&client, &daemon.base, bakery_key, "GET", "/v1/audit", None).await;
        let actions = audit_actions(&audit);
        assert!(
            actions.contains(&"disclosure_recorded".to_string())
                && actions.contains(&"disclosure_bar_lifted".to_string()),
            "{backend:?}: {audit}"
        );
        let received = sink.wait_for(4, Duration::from_secs(20)).await;
        assert!(received
            .iter()
            .any(|r| r.to == vec!["holder@bakery.example"]
                && r.header("Subject").as_deref() == Some(disclosure_subject)));
        let again = daemon
            .command(&["disclosure", "lift", "--id", barred_id])
            .output()
            .unwrap();
        assert!(!again.status.success(), "a bar is lifted once");

        // A new sub-processor in the configuration is told at the next start.
        drop(running);
        daemon.env.retain(|(key, _)| key != "CONVERRA_CONFIG");
        daemon.env.push((
            "CONVERRA_CONFIG".into(),
            processing_config(&db.dir, "Other Mail Ltd"),
        ));
        let _running = daemon.spawn();
        daemon.wait_ready(&client).await;
        let received = sink.wait_for(6, Duration::from_secs(20)).await;
        let changes: Vec<&Received> = received
            .iter()
            .filter(|r| r.header("Subject").as_deref() == Some("Converra's sub-processors change"))
            .collect();
        assert_eq!(changes.len(), 2, "{backend:?}: one to each holder");
        assert!(changes.iter().all(|r| r.data.contains("Other Mail Ltd")));
        let (_, record) = call(
            &client,
            &daemon.base,
            &key,
            "GET",
            "/v1/privacy/processing",
            None,
        )
        .await;
        assert_eq!(record["sub_processors"][0]["name"], "Other Mail Ltd");
        // The audit log records the operator's steps for the tenant.
        let (_, audit) = call(&client, &daemon.base, &key, "GET", "/v1/audit", None).await;
        let actions: Vec<&str> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        assert!(actions.contains(&"disclosure_recorded"), "{audit}");
        assert!(actions.contains(&"notice_queued"), "{audit}");
    }
}

/// An enquiry is due five business days after receipt; its holder hears of the
/// receipt and, through the operator's CLI, the answer; it is the asking tenant's
/// alone.
#[actix_rt::test]
async fn an_enquiry_is_acknowledged_answered_by_the_operator_and_kept_to_its_tenant() {
    let db = TestDb::new(&Backend::Sqlite);
    let sink = SmtpSink::start();
    let mut daemon = Daemon::new(&db.url, &db.dir);
    with_smtp(&mut daemon, sink.port);
    let shop = daemon.seed_tenant(&db.dir, "shop", "EAAG-token");
    let other = daemon.cli_json(&[
        "tenant",
        "create",
        "--name",
        "other",
        "--holder-email",
        "holder@other.example",
        "--json",
    ]);
    let key = shop["api_key"].as_str().unwrap();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let _running = daemon.spawn();
    daemon.wait_ready(&client).await;
    let base = daemon.base.clone();
    for (body, field, rule) in [
        (
            json!({"subject": "Where is my data?"}),
            "message",
            "required",
        ),
        (json!({"subject": "", "message": "m"}), "subject", "length"),
        (json!({"subject": "s", "message": 3}), "message", "type"),
        (
            json!({"subject": "s", "message": "m", "cc": "x"}),
            "cc",
            "unknown",
        ),
    ] {
        let (status, refused) = call(
            &client,
            &base,
            key,
            "POST",
            "/v1/privacy/enquiries",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 422, "{body}: {refused}");
        assert_eq!(refused["error"]["field"], field, "{body}: {refused}");
        assert_eq!(refused["error"]["rule"], rule, "{body}: {refused}");
    }
    let question = "Which countries does my customers' data travel to?";
    let (status, enquiry) = call(
        &client,
        &base,
        key,
        "POST",
        "/v1/privacy/enquiries",
        Some(json!({"subject": "Transfers", "message": question})),
    )
    .await;
    assert_eq!(status, 201, "{enquiry}");
    assert_eq!(enquiry["state"], "open");
    let now = converra::clock::Clock::now_ms(&converra::clock::SystemClock);
    let due =
        converra::compliance::dates::enquiry_due(converra::compliance::dates::day_of(now), &[]);
    assert_eq!(enquiry["due_at"], format!("{due}T23:59:59.999Z"));
    let id = enquiry["id"].as_str().unwrap().to_string();
    let path = format!("/v1/privacy/enquiries/{id}");
    let other_key = other["api_key"].as_str().unwrap();
    assert_eq!(
        call(&client, &base, other_key, "GET", &path, None).await.0,
        404
    );
    let received = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(
        received[0].header("Subject"),
        Some(format!("Privacy enquiry received: {id}"))
    );
    assert!(
        !received[0].data.contains(question),
        "the email carries no content"
    );

    let listed = daemon.cli_json(&["enquiry", "list", "--json"]);
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed[0]["message"], question);
    let answer_file = db.dir.path().join("answer.txt");
    std::fs::write(
        &answer_file,
        "Germany only: see GET /v1/privacy/processing.",
    )
    .unwrap();
    let answered = daemon.cli_json(&[
        "enquiry",
        "answer",
        "--id",
        &id,
        "--answer-file",
        answer_file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(answered["state"], "answered", "{answered}");
    let received = sink.wait_for(2, Duration::from_secs(20)).await;
    let answer_email = received
        .iter()
        .find(|r| r.header("Subject") == Some(format!("Answer to your privacy enquiry {id}")))
        .expect("the answer is emailed");
    assert_eq!(answer_email.to, vec!["ops@shop.example"]);
    assert!(answer_email.data.contains("Germany only"));
    let (status, shown) = call(&client, &base, key, "GET", &path, None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["state"], "answered");
    assert_eq!(
        shown["answer"],
        "Germany only: see GET /v1/privacy/processing."
    );
    let again = daemon
        .command(&[
            "enquiry",
            "answer",
            "--id",
            &id,
            "--answer-file",
            answer_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("answered before"));
}

/// A request due within seven days and not done reminds its account holder, an
/// enquiry due within two reminds the operator; each once, on the scheduler's timer
/// and the daemon's clock.
#[actix_rt::test]
async fn deadlines_near_send_one_reminder_each() {
    let sink = SmtpSink::start();
    let (app, clock, hold) = crate::compliance::held_on_31_january(&sink, |settings| {
        settings.compliance.operator_email = "privacy@operator.example".into();
        settings.scheduler.upkeep_interval_secs = 1;
    })
    .await;
    let (status, request) = app
        .send_json(
            "POST",
            "/v1/privacy/requests",
            &app.a.api_key,
            &json!({"kind": "erasure", "wa_id": "4915100000555"}),
        )
        .await;
    assert_eq!(status, 201, "{request}");
    let (status, enquiry) = app
        .send_json(
            "POST",
            "/v1/privacy/enquiries",
            &app.a.api_key,
            &json!({"subject": "Backups", "message": "How long are backups kept?"}),
        )
        .await;
    assert_eq!(status, 201, "{enquiry}");
    assert_eq!(enquiry["due_at"], "2027-02-05T23:59:59.999Z");
    // At receipt nothing is near: the two receipts only.
    app.after_timed_duty("upkeep").await;
    assert_eq!(sink.wait_for(2, Duration::from_secs(20)).await.len(), 2);
    // 23 days on: the request (due 1 March) is within a week, the enquiry overdue.
    clock.advance_ms(23 * 86_400_000);
    let received = sink.wait_for(4, Duration::from_secs(20)).await;
    let request_id = request["id"].as_str().unwrap();
    let enquiry_id = enquiry["id"].as_str().unwrap();
    let reminders: Vec<(String, String)> = subjects(&received)
        .into_iter()
        .filter(|(_, subject)| subject.contains("reminder"))
        .collect();
    assert_eq!(
        reminders,
        vec![
            (
                "owner@tenant-a.example".to_string(),
                format!("Privacy request reminder: erasure {request_id}")
            ),
            (
                "privacy@operator.example".to_string(),
                format!("Privacy enquiry reminder: {enquiry_id} is due by 2027-02-05")
            ),
        ]
    );
    app.after_timed_duty("upkeep").await;
    app.after_timed_duty("upkeep").await;
    assert_eq!(sink.received().len(), 4, "each reminder once");
    hold.store(false, std::sync::atomic::Ordering::Release);
}
