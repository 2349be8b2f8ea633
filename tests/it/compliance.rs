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
fn with_smtp(daemon: &mut Daemon, port: u16) {
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

fn create_tenant(daemon: &Daemon, name: &str) -> Value {
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
        actix_rt::time::sleep(Duration::from_millis(2_500)).await;
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
    actix_rt::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(sink.received().len(), 1, "and never again");
    let listed = daemon.cli_json(&["notice", "list", "--json"]);
    assert_eq!(listed[0]["sent"], 1, "{listed}");
    assert_eq!(listed[0]["queued"], 0, "{listed}");
}
