//! Meta's messaging limit, kept by Converra: business-initiated templates to new users
//! stop at the portfolio's budget and wait (without holding up anything else) until the
//! limit rises or the moving window frees room; the count is durable and shared by the
//! numbers of one portfolio. Against a fake Graph API on 127.0.0.1.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_graph::FakeGraph;
use crate::support::*;

const NUMBER_A2: &str = "100000000000003";

async fn app_with_graph(
    backend: &Backend,
    graph: &FakeGraph,
    tweak: impl FnOnce(&mut converra::config::Settings),
) -> TestApp {
    let base = graph.base.clone();
    TestApp::start_with(backend, Default::default(), move |settings| {
        settings.whatsapp.graph_base_url = base;
        settings.outbound.retry_base_ms = 50;
        settings.outbound.default_mps = 1000;
        tweak(settings);
    })
    .await
}

/// Meta's `business_capability_update` for account `waba_id`.
fn capability(waba_id: &str, limit: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{
        "id": waba_id, "time": 1764000000, "changes": [{"field": "business_capability_update",
        "value": {"max_daily_conversation_per_phone": 1000,
                  "max_phone_numbers_per_business": 2,
                  "max_daily_conversations_per_business": limit}}]}]}))
    .unwrap()
}

fn template_to(from: &str, to: &str) -> Value {
    json!({"from_phone_number_id": from, "to": to, "type": "template",
        "template": {"name": "notice", "language": {"code": "en_US"}}})
}

async fn send(app: &TestApp, api_key: &str, body: &Value) -> String {
    let (status, answer) = app.send_json("POST", "/v1/messages", api_key, body).await;
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().unwrap().to_string()
}

/// The tenant's portfolio holding `number`, as `GET /v1/usage` shows it.
async fn portfolio(app: &TestApp, api_key: &str, number: &str) -> Value {
    let (status, usage) = app.get("/v1/usage", Some(api_key)).await;
    assert_eq!(status, 200, "{usage}");
    usage["portfolios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["phone_number_ids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == number)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no portfolio holds {number}: {usage}"))
}

/// Polls the portfolio of `number` until `pred` holds of it.
async fn wait_portfolio(
    app: &TestApp,
    api_key: &str,
    number: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = portfolio(app, api_key, number).await;
        if pred(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "the portfolio stayed {p}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gives tenant B's number a portfolio of its own (the fixtures share one account).
fn separate_b(app: &TestApp) {
    let (_, pool) = app.pool();
    let mut conn = pool.get().unwrap();
    converra::storage::messaging_limits::set_portfolio(
        &mut conn,
        &app.b.id,
        NUMBER_B,
        Some("PORTFOLIO-B"),
    )
    .unwrap();
}

/// With the limit at 250, 260 templates to users never reached go out for exactly 250;
/// the other 10 stay queued, counted as waiting, while replies inside a window and
/// templates to users already reached go at once; a second webhook raising the limit
/// releases the 10.
#[actix_rt::test]
async fn templates_to_new_users_stop_at_the_limit_and_go_when_it_rises() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph, |_| {}).await;
        let key = app.a.api_key.clone();
        separate_b(&app);
        // Unknown: not enforced, and shown as such.
        assert_eq!(
            portfolio(&app, &key, NUMBER_A).await["messaging_limit"],
            Value::Null
        );
        assert_eq!(app.post_signed(&capability("WABA", 250)).await.0, 200);
        wait_portfolio(&app, &key, NUMBER_A, |p| p["messaging_limit"] == 250).await;

        // A customer who wrote: their window is open.
        const WRITER: &str = "4915199999999";
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let hello = serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_A,
            vec![contact(WRITER, "Writer")],
            vec![
                json!({"from": WRITER, "id": "wamid.w1", "timestamp": now.to_string(),
                "type": "text", "text": {"body": "hi"}}),
            ],
        )]))
        .unwrap();
        assert_eq!(app.post_signed(&hello).await.0, 200);
        app.wait_messages(&app.a, 1).await;
        let users: Vec<String> = (0..260).map(|i| format!("4915200{i:06}")).collect();
        let posts = users.iter().map(|to| {
            let app = &app;
            let key = key.clone();
            async move { send(app, &key, &template_to(NUMBER_A, to)).await }
        });
        let ids = futures_util::future::join_all(posts).await;
        let new_users = |graph: &FakeGraph| {
            graph
                .calls()
                .iter()
                .filter(|c| {
                    c.body["to"]
                        .as_str()
                        .is_some_and(|to| to.starts_with("4915200"))
                })
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while new_users(&graph) < 250 {
            assert!(
                Instant::now() < deadline,
                "{} of 250 sent",
                new_users(&graph)
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        let p = wait_portfolio(&app, &key, NUMBER_A, |p| p["waiting"] == 10).await;
        assert_eq!(p["reached"], 250, "{p}");
        // The window's reply and a template inside the window go at once.
        let reply = json!({"from_phone_number_id": NUMBER_A, "to": WRITER, "type": "text",
            "text": {"body": "thanks"}});
        send(&app, &key, &reply).await;
        send(&app, &key, &template_to(NUMBER_A, WRITER)).await;
        // So does another template to a user reached already.
        send(&app, &key, &template_to(NUMBER_A, &users[0])).await;
        let calls = graph.wait_calls(253).await;
        assert_eq!(
            new_users(&graph),
            251,
            "only the user reached already got more"
        );
        assert_eq!(calls.iter().filter(|c| c.body["to"] == WRITER).count(), 2);
        assert_eq!(
            app.metric(&format!(
                "converra_messaging_limit_waiting{{phone_number_id=\"{NUMBER_A}\"}}"
            ))
            .await,
            10.0
        );
        let waiting: Vec<&String> = ids.iter().collect();
        let mut queued = 0;
        for id in &waiting {
            let (_, state) = app.get(&format!("/v1/messages/{id}"), Some(&key)).await;
            if state["state"] == "queued" {
                queued += 1;
            }
        }
        assert_eq!(queued, 10);

        // Meta raises the limit (a number's messaging-limit event names the
        // portfolio's new tier): the 10 go.
        let upgrade = serde_json::to_vec(&envelope(vec![json!({
            "field": "phone_number_quality_update",
            "value": {"display_phone_number": "15550000000", "event": "UPGRADE",
                "old_limit": "TIER_250", "current_limit": "TIER_2K",
                "max_daily_conversations_per_business": "TIER_2K"}})]))
        .unwrap();
        assert_eq!(app.post_signed(&upgrade).await.0, 200);
        graph.wait_calls(263).await;
        let p = wait_portfolio(&app, &key, NUMBER_A, |p| p["waiting"] == 0).await;
        assert_eq!(
            (p["reached"].clone(), p["messaging_limit"].clone()),
            (json!(260), json!(2000))
        );
        graph.stop().await;
    }
}

/// The count survives a restart, two numbers of one account share one budget, a
/// number of another portfolio has its own, and a send that waits past its deadline
/// fails with `messaging_limit`.
#[actix_rt::test]
async fn the_budget_is_durable_shared_by_a_portfolio_and_fails_late_sends() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let mut app = app_with_graph(&backend, &graph, |settings| {
            settings.outbound.retry_deadline_secs = 3;
        })
        .await;
        let key = app.a.api_key.clone();
        separate_b(&app);
        {
            // A second number on tenant A's account.
            let (keyring, pool) = app.pool();
            let mut conn = pool.get().unwrap();
            converra::storage::tenants::add_phone_number(
                &mut conn,
                &keyring,
                &converra::storage::tenants::NewPhoneNumber {
                    tenant_id: &app.a.id,
                    phone_number_id: NUMBER_A2,
                    display_phone_number: "15550000003",
                    waba_id: "WABA",
                    access_token: "EAAG-test-token",
                },
                1,
            )
            .unwrap();
        }
        assert_eq!(app.post_signed(&capability("WABA", 3)).await.0, 200);
        {
            // The operator sets B's portfolio by hand.
            let (_, pool) = app.pool();
            let mut conn = pool.get().unwrap();
            converra::storage::messaging_limits::set_limit(
                &mut conn,
                "PORTFOLIO-B",
                3,
                "operator",
                1,
            )
            .unwrap();
        }
        wait_portfolio(&app, &key, NUMBER_A, |p| p["messaging_limit"] == 3).await;
        for i in 0..3 {
            send(
                &app,
                &key,
                &template_to(NUMBER_A, &format!("49153000000{i}")),
            )
            .await;
        }
        graph.wait_calls(3).await;
        wait_portfolio(&app, &key, NUMBER_A, |p| p["reached"] == 3).await;

        app.restart(Default::default()).await;
        // The other number of the account: its budget is spent.
        let late = send(&app, &key, &template_to(NUMBER_A2, "491530000009")).await;
        // A user reached already by the first number uses none of it.
        send(&app, &key, &template_to(NUMBER_A2, "491530000000")).await;
        // Tenant B's number has its own budget.
        for i in 0..3 {
            send(
                &app,
                &app.b.api_key,
                &template_to(NUMBER_B, &format!("49154000000{i}")),
            )
            .await;
        }
        graph.wait_calls(7).await;
        let p = wait_portfolio(&app, &key, NUMBER_A2, |p| p["waiting"] == 1).await;
        assert_eq!(p["reached"], 3, "{p}");
        assert_eq!(p["phone_number_ids"], json!([NUMBER_A, NUMBER_A2]));
        // Past its deadline it fails with Converra's own error.
        let deadline = Instant::now() + Duration::from_secs(20);
        let failed = loop {
            let (_, state) = app.get(&format!("/v1/messages/{late}"), Some(&key)).await;
            if state["state"] == "failed" {
                break state;
            }
            assert!(Instant::now() < deadline, "the late send stayed {state}");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(failed["error"]["code"], "messaging_limit", "{failed}");
        assert!(
            !graph.calls().iter().any(|c| c.body["to"] == "491530000009"),
            "the late send never reached Meta"
        );
        graph.stop().await;
    }
}

/// A send held for the messaging limit whose contact is then restricted is refused at
/// once, not when the window frees room: the restriction travels down the actor tree
/// to the contact's conversation, which has the number's sender judge its waiting
/// sends again (the limit's own recheck is 30 s away).
#[actix_rt::test]
async fn a_send_held_for_the_limit_is_refused_as_soon_as_its_contact_is_restricted() {
    let graph = FakeGraph::start().await;
    let app = app_with_graph(&Backend::Sqlite, &graph, |_| {}).await;
    let key = app.a.api_key.clone();
    assert_eq!(app.post_signed(&capability("WABA", 1)).await.0, 200);
    wait_portfolio(&app, &key, NUMBER_A, |p| p["messaging_limit"] == 1).await;
    send(&app, &key, &template_to(NUMBER_A, "4915200000001")).await;
    graph.wait_calls(1).await;
    let held = send(&app, &key, &template_to(NUMBER_A, "4915200000002")).await;
    wait_portfolio(&app, &key, NUMBER_A, |p| p["waiting"] == 1).await;

    let (status, request) = app
        .send_json(
            "POST",
            "/v1/privacy/requests",
            &key,
            &json!({"kind": "restriction", "wa_id": "4915200000002"}),
        )
        .await;
    assert_eq!(status, 201, "{request}");
    crate::compliance::wait_state(&app, &app.a, request["id"].as_str().unwrap(), "completed").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let (_, state) = app.get(&format!("/v1/messages/{held}"), Some(&key)).await;
        if state["state"] == "failed" {
            break state;
        }
        assert!(Instant::now() < deadline, "the held send stayed {state}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed["error"]["code"], "restricted", "{failed}");
    assert_eq!(graph.calls().len(), 1, "nothing more reached Meta");
}
