//! Automations: keyword rules, the welcome, the away message (by an injected clock),
//! opt-out and opt-in with a tenant's own keywords, cooldowns and run records, all
//! answered through the outbox to a fake Graph API on 127.0.0.1.
//!
//! A contact's replies leave in the order their messages came, so a test learns that
//! nothing answered a message by sending "ping" after it and waiting for "pong".

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_graph::FakeGraph;
use crate::support::*;

fn tweak(graph: &FakeGraph) -> impl FnOnce(&mut converra::config::Settings) {
    let base = graph.base.clone();
    move |settings| {
        settings.whatsapp.graph_base_url = base;
        settings.outbound.retry_base_ms = 50;
    }
}

/// A text from `from` to number A, stamped `at_secs` (Meta's timestamp).
fn says_at(from: &str, wamid: &str, body: &str, at_secs: i64) -> Vec<u8> {
    serde_json::to_vec(&envelope(vec![messages_change(
        NUMBER_A,
        vec![contact(from, "Customer")],
        vec![
            json!({"from": from, "id": wamid, "timestamp": at_secs.to_string(), "type": "text",
            "text": {"body": body}}),
        ],
    )]))
    .unwrap()
}

/// The server's clock, in milliseconds.
fn clock_now(app: &TestApp) -> i64 {
    app.clock.now_ms()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn text_reply(body: &str) -> Value {
    json!({"type": "text", "text": {"body": body}})
}

fn keyword(name: &str, kind: &str, pattern: &str, reply: &str) -> Value {
    json!({"name": name, "trigger": {"type": "keyword", "match": kind, "pattern": pattern},
        "reply": text_reply(reply)})
}

async fn create(app: &TestApp, api_key: &str, body: Value) -> Value {
    let (status, created) = app
        .send_json("POST", "/v1/automations", api_key, &body)
        .await;
    assert_eq!(status, 201, "{created}");
    created
}

/// The bodies of the texts sent to `to`, in the order they reached Meta.
fn texts_to(graph: &FakeGraph, to: &str) -> Vec<String> {
    graph
        .calls()
        .iter()
        .filter(|c| c.body["to"] == to)
        .map(|c| c.body["text"]["body"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits until `to` has been sent `n` texts; returns them.
async fn wait_texts(graph: &FakeGraph, to: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let texts = texts_to(graph, to);
        if texts.len() >= n {
            return texts;
        }
        assert!(
            Instant::now() < deadline,
            "{to} got {texts:?}, waiting for {n}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the runs until `pred` holds of them.
async fn wait_runs(app: &TestApp, query: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = app
            .all(&format!("/v1/automations/runs{query}"), &app.a.api_key)
            .await;
        if pred(&runs) {
            return runs;
        }
        assert!(Instant::now() < deadline, "runs stayed {runs:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first rule that matches answers, once per cooldown; every run is recorded;
/// the welcome greets a contact's first message only; another tenant's contacts are
/// never answered by these rules.
#[actix_rt::test]
async fn keyword_rules_answer_the_first_match_within_their_cooldown_and_the_welcome_greets_once() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = TestApp::start_with(&backend, Default::default(), tweak(&graph)).await;
        let key = app.a.api_key.clone();
        let order = create(
            &app,
            &key,
            keyword(
                "order",
                "regex",
                r"order\s*#?\d+",
                "Your order is on its way.",
            ),
        )
        .await;
        let mut hours = keyword("hours", "contains", "HOURS", "We open at nine.");
        hours["cooldown_secs"] = json!(3600);
        let hours = create(&app, &key, hours).await;
        create(&app, &key, keyword("ping", "exact", "ping", "pong")).await;
        let welcome = create(
            &app,
            &key,
            json!({"name": "welcome", "trigger": {"type": "welcome"},
                "reply": text_reply("Welcome to our shop!")}),
        )
        .await;
        let (status, listed) = app.get("/v1/automations", Some(&key)).await;
        assert_eq!(status, 200);
        let names: Vec<&str> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["order", "hours", "ping", "welcome"]);
        assert_eq!(hours["position"], 1);

        const ALICE: &str = "4915100000001";
        let t = now_secs();
        // Her first message: the welcome.
        app.post_signed(&says_at(ALICE, "wamid.a1", "hi", t)).await;
        // Both the regex and the contains rule match: the first one answers.
        app.post_signed(&says_at(ALICE, "wamid.a2", "order #12, opening hours?", t))
            .await;
        // The contains rule, then its cooldown: one answer for two messages.
        app.post_signed(&says_at(ALICE, "wamid.a3", "your hours please", t))
            .await;
        app.post_signed(&says_at(ALICE, "wamid.a4", "hours??", t))
            .await;
        // Not first any more: no second welcome; nothing matches.
        app.post_signed(&says_at(ALICE, "wamid.a5", "hello again", t))
            .await;
        app.post_signed(&says_at(ALICE, "wamid.a6", "ping", t))
            .await;
        let texts = wait_texts(&graph, ALICE, 4).await;
        assert_eq!(
            texts,
            [
                "Welcome to our shop!",
                "Your order is on its way.",
                "We open at nine.",
                "pong"
            ]
        );

        // Tenant B's contact says the same: B has no automations.
        let to_b = serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_B,
            vec![contact("4915100000002", "Bob")],
            vec![json!({"from": "4915100000002", "id": "wamid.b1",
                "timestamp": t.to_string(), "type": "text", "text": {"body": "ping"}})],
        )]))
        .unwrap();
        assert_eq!(app.post_signed(&to_b).await.0, 200);
        app.wait_messages(&app.b, 1).await;

        // The runs: one per reply, naming rule, contact and the send.
        let runs = wait_runs(&app, "", |runs| runs.len() >= 4).await;
        assert_eq!(runs.len(), 4, "{runs:?}");
        let kinds: Vec<&str> = runs
            .iter()
            .rev()
            .map(|r| r["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["welcome", "keyword", "keyword", "keyword"]);
        assert!(runs.iter().all(|r| r["outcome"] == "accepted"), "{runs:?}");
        assert_eq!(runs[3]["automation_id"], welcome["id"]);
        assert_eq!(runs[2]["automation_id"], order["id"]);
        let message_id = runs[3]["message_id"].as_str().unwrap();
        let (status, sent) = app
            .get(&format!("/v1/messages/{message_id}"), Some(&key))
            .await;
        assert_eq!(status, 200, "{sent}");
        let by_rule = app
            .all(
                &format!(
                    "/v1/automations/runs?automation_id={}",
                    hours["id"].as_str().unwrap()
                ),
                &key,
            )
            .await;
        assert_eq!(
            by_rule.len(),
            1,
            "the cooldown held the second: {by_rule:?}"
        );
        // Tenant B sees none of A's automations or runs, and B's contact got nothing.
        let (status, body) = app.get("/v1/automations/runs", Some(&app.b.api_key)).await;
        assert_eq!((status, body["items"].clone()), (200, json!([])));
        let (status, _) = app
            .get(
                &format!("/v1/automations/{}", order["id"].as_str().unwrap()),
                Some(&app.b.api_key),
            )
            .await;
        assert_eq!(status, 404);
        assert!(texts_to(&graph, "4915100000002").is_empty());

        // A contact whose first message a keyword rule answers gets that answer only.
        const CARL: &str = "4915100000003";
        app.post_signed(&says_at(CARL, "wamid.c1", "ping", t)).await;
        app.post_signed(&says_at(CARL, "wamid.c2", "ping", t)).await;
        assert_eq!(wait_texts(&graph, CARL, 2).await, ["pong", "pong"]);

        // A rule disabled, then deleted, answers nothing more.
        let ping_id = listed["items"][2]["id"].as_str().unwrap().to_string();
        let mut disabled = keyword("ping", "exact", "ping", "pong");
        disabled["enabled"] = json!(false);
        let (status, body) = app
            .send_json(
                "PUT",
                &format!("/v1/automations/{ping_id}"),
                &key,
                &disabled,
            )
            .await;
        assert_eq!(
            (status, body["enabled"].clone()),
            (200, json!(false)),
            "{body}"
        );
        create(&app, &key, keyword("ping2", "exact", "ping", "pong 2")).await;
        app.post_signed(&says_at(CARL, "wamid.c3", "ping", t)).await;
        assert_eq!(wait_texts(&graph, CARL, 3).await[2], "pong 2");
        let (status, _) = app
            .send_json(
                "DELETE",
                &format!("/v1/automations/{ping_id}"),
                &key,
                &json!({}),
            )
            .await;
        assert_eq!(status, 204);
        let (status, _) = app
            .get(&format!("/v1/automations/{ping_id}"), Some(&key))
            .await;
        assert_eq!(status, 404);
        graph.stop().await;
    }
}

/// Outside the tenant's business hours (its own time zone, by an injected clock) a
/// message gets the away reply, once per cooldown; inside them it gets none.
#[actix_rt::test]
async fn the_away_message_answers_outside_business_hours_in_the_tenants_time_zone() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        // Monday 2026-12-07 07:30 UTC: 08:30 in Berlin, before opening.
        let start_ms = 1_796_628_600_000;
        let clock = converra::clock::ManualClock::new(start_ms);
        let app = TestApp::start_with_clock_and(&backend, clock.clone(), tweak(&graph)).await;
        let key = app.a.api_key.clone();
        let (status, settings) = app
            .send_json(
                "PUT",
                "/v1/settings",
                &key,
                &json!({"time_zone": "Europe/Berlin",
                    "business_hours": {"monday": [{"open": "09:00", "close": "17:00"}],
                                       "tuesday": [{"open": "09:00", "close": "17:00"}]}}),
            )
            .await;
        assert_eq!(status, 200, "{settings}");
        assert_eq!(settings["time_zone"], "Europe/Berlin");
        // What the tenant left out is the operator's.
        assert_eq!(settings["opt_out_keywords"][0], "STOP");
        create(
            &app,
            &key,
            json!({"name": "away", "trigger": {"type": "away"},
                "reply": text_reply("We are closed; back at nine.")}),
        )
        .await;
        create(&app, &key, keyword("ping", "exact", "ping", "pong")).await;

        const DORA: &str = "4915100000004";
        let secs = |ms: i64| ms / 1000;
        app.post_signed(&says_at(DORA, "wamid.d1", "anyone there?", secs(start_ms)))
            .await;
        // Within the cooldown (a day by default): no second away message.
        clock.advance_ms(60_000);
        app.post_signed(&says_at(DORA, "wamid.d2", "hello?", secs(start_ms) + 60))
            .await;
        app.post_signed(&says_at(DORA, "wamid.d3", "ping", secs(start_ms) + 60))
            .await;
        assert_eq!(
            wait_texts(&graph, DORA, 2).await,
            ["We are closed; back at nine.", "pong"]
        );

        // 09:30 in Berlin: open, no away message for a new contact.
        clock.advance_ms(3_600_000);
        let open = secs(start_ms) + 3_660;
        const EVE: &str = "4915100000005";
        app.post_signed(&says_at(EVE, "wamid.e1", "hi", open)).await;
        app.post_signed(&says_at(EVE, "wamid.e2", "ping", open))
            .await;
        assert_eq!(wait_texts(&graph, EVE, 1).await, ["pong"]);

        // 17:31 in Berlin: closed again.
        clock.advance_ms(8 * 3_600_000);
        let closed = secs(start_ms) + 3_660 + 8 * 3_600;
        app.post_signed(&says_at(EVE, "wamid.e3", "still open?", closed))
            .await;
        assert_eq!(
            wait_texts(&graph, EVE, 2).await[1],
            "We are closed; back at nine."
        );

        // Tuesday 08:45 in Berlin, more than a day after Dora's away message: its
        // cooldown has passed, and she gets it again.
        let tuesday = secs(start_ms) + 86_400 + 900;
        clock.advance_ms(tuesday * 1000 - clock_now(&app));
        app.post_signed(&says_at(DORA, "wamid.d4", "open yet?", tuesday))
            .await;
        app.post_signed(&says_at(DORA, "wamid.d5", "ping", tuesday))
            .await;
        assert_eq!(
            wait_texts(&graph, DORA, 4).await[2..],
            ["We are closed; back at nine.", "pong"]
        );
        graph.stop().await;
    }
}

/// A tenant's own opt-out keyword stops its automations for the contact (the refusal
/// recorded as the run's outcome), confirmed with the tenant's reply; its opt-in
/// keyword starts them again.
#[actix_rt::test]
async fn a_tenants_own_keywords_stop_and_start_its_automations() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = TestApp::start_with(&backend, Default::default(), tweak(&graph)).await;
        let key = app.a.api_key.clone();
        let (status, _) = app
            .send_json(
                "PUT",
                "/v1/settings",
                &key,
                &json!({"opt_out_keywords": ["HALT"], "opt_in_keywords": ["RESUME"],
                    "opt_out_reply": "Halted.", "opt_in_reply": "Resumed."}),
            )
            .await;
        assert_eq!(status, 200);
        let ping = create(&app, &key, keyword("ping", "exact", "ping", "pong")).await;
        const FRED: &str = "4915100000006";
        let t = now_secs();
        app.post_signed(&says_at(FRED, "wamid.f1", "Halt!", t))
            .await;
        // STOP is not this tenant's keyword any more: it is a message like any, and
        // confirms nothing.
        app.post_signed(&says_at(FRED, "wamid.f1b", "STOP", t))
            .await;
        app.post_signed(&says_at(FRED, "wamid.f2", "ping", t)).await;
        // The rules are those in force when the reply is stored: the refusal is
        // awaited before the contact opts in again.
        let runs = wait_runs(&app, "", |runs| {
            runs.iter().any(|r| r["outcome"] == "opted_out")
        })
        .await;
        app.post_signed(&says_at(FRED, "wamid.f3", "resume", t))
            .await;
        app.post_signed(&says_at(FRED, "wamid.f4", "ping", t)).await;
        assert_eq!(
            wait_texts(&graph, FRED, 3).await,
            ["Halted.", "Resumed.", "pong"]
        );
        let refused = runs
            .iter()
            .find(|r| r["outcome"] == "opted_out")
            .unwrap()
            .clone();
        let runs = wait_runs(&app, "", |runs| runs.len() >= 4).await;
        let mut outcomes: Vec<(&str, &str)> = runs
            .iter()
            .map(|r| (r["kind"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
            .collect();
        outcomes.sort();
        assert_eq!(
            outcomes,
            [
                ("keyword", "accepted"),
                ("keyword", "opted_out"),
                ("opt_in", "accepted"),
                ("opt_out", "accepted")
            ],
            "{runs:?}"
        );
        assert_eq!(refused["automation_id"], ping["id"]);
        assert_eq!(refused["message_id"], Value::Null);
        // Every run counts in the tenant's usage, the refused one too.
        let (_, usage) = app.get("/v1/usage", Some(&key)).await;
        assert_eq!(usage["items"][0]["automation_runs"], 4, "{usage}");
        graph.stop().await;
    }
}

/// Bad automations and settings are refused naming the field.
#[actix_rt::test]
async fn bad_automations_and_settings_are_refused_naming_the_field() {
    let app = TestApp::start(&Backend::Sqlite).await;
    let key = app.a.api_key.clone();
    for (body, field) in [
        (keyword("x", "regex", "(unclosed", "hi"), "trigger.pattern"),
        (keyword("x", "fuzzy", "a", "hi"), "trigger"),
        (keyword("", "exact", "a", "hi"), "name"),
        (
            json!({"name": "x", "trigger": {"type": "welcome"},
                "reply": {"type": "text", "text": {"body": "x".repeat(4097)}}}),
            "reply.text.body",
        ),
        (
            json!({"name": "x", "trigger": {"type": "away"}, "reply": text_reply("x"),
                "position": -1}),
            "position",
        ),
    ] {
        let (status, error) = app.send_json("POST", "/v1/automations", &key, &body).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    for (body, field) in [
        (json!({"time_zone": "Atlantis/Capital"}), "time_zone"),
        (
            json!({"business_hours": {"monday": [{"open": "18:00", "close": "08:00"}]}}),
            "business_hours.monday[0].close",
        ),
    ] {
        let (status, error) = app.send_json("PUT", "/v1/settings", &key, &body).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let (status, error) = app
        .get("/v1/automations/runs?contact_id=nope", Some(&key))
        .await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (422, json!("contact_id"))
    );
    let (status, _) = app.get("/v1/automations/nope", Some(&key)).await;
    assert_eq!(status, 404);
    // Every inbound message is matched against all of them: a tenant keeps 200.
    for n in 0..200 {
        create(&app, &key, keyword(&format!("k{n}"), "exact", "x", "y")).await;
    }
    let (status, error) = app
        .send_json(
            "POST",
            "/v1/automations",
            &key,
            &keyword("one more", "exact", "x", "y"),
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].clone()),
        (409, json!("too_many_automations")),
        "{error}"
    );
}

/// A contact whose processing is restricted gets nothing at all (no send, no
/// automation, no confirmation); one who objected gets no marketing template and no
/// automation, but a utility template and a service reply still go. The flags are set
/// in the database here, as the compliance actor sets them.
#[actix_rt::test]
async fn restricted_and_objected_contacts_are_refused_with_the_rule_named() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let template = |name: &str, category: &str| {
            json!({"name": name, "language": "en_US", "category": category,
                "status": "APPROVED", "id": name, "components": [{"type": "BODY", "text": "Hi"}]})
        };
        graph.set_templates(vec![
            template("sale", "MARKETING"),
            template("receipt", "UTILITY"),
        ]);
        let app = TestApp::start_with(&backend, Default::default(), tweak(&graph)).await;
        let key = app.a.api_key.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        while app.get("/v1/templates", Some(&key)).await.1["items"]
            .as_array()
            .is_none_or(|t| t.len() < 2)
        {
            assert!(Instant::now() < deadline, "templates never synced");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        create(&app, &key, keyword("ping", "exact", "ping", "pong")).await;
        const RITA: &str = "4915100000007";
        const OSCAR: &str = "4915100000008";
        let t = now_secs();
        app.post_signed(&says_at(RITA, "wamid.r1", "hello", t))
            .await;
        app.post_signed(&says_at(OSCAR, "wamid.o1", "hello", t))
            .await;
        app.wait_messages(&app.a, 2).await;
        let (_, pool) = app.pool();
        let mut conn = pool.get().unwrap();
        let contacts = app.all("/v1/contacts", &key).await;
        let id_of = |wa_id: &str| {
            contacts.iter().find(|c| c["wa_id"] == wa_id).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let run = |conn: &mut converra::storage::DbConn, sql: String| {
            use diesel::RunQueryDsl;
            converra::on_backend!(conn, c => diesel::sql_query(sql).execute(c)).unwrap();
        };
        run(
            &mut conn,
            format!(
                "UPDATE contacts SET restricted_at = 1 WHERE id = '{}'",
                id_of(RITA)
            ),
        );
        run(
            &mut conn,
            format!(
                "UPDATE contacts SET objected_at = 1 WHERE id = '{}'",
                id_of(OSCAR)
            ),
        );
        let send = |to: &str, body: Value| {
            let mut send = body;
            send["from_phone_number_id"] = json!(NUMBER_A);
            send["to"] = json!(to);
            send
        };
        let text = json!({"type": "text", "text": {"body": "a reply"}});
        let sale = json!({"type": "template",
            "template": {"name": "sale", "language": {"code": "en_US"}}});
        let receipt = json!({"type": "template",
            "template": {"name": "receipt", "language": {"code": "en_US"}}});
        for (to, body, expected) in [
            (RITA, text.clone(), Some("restricted")),
            (RITA, receipt.clone(), Some("restricted")),
            (OSCAR, sale.clone(), Some("objected")),
            (OSCAR, receipt.clone(), None),
            (OSCAR, text.clone(), None),
        ] {
            let (status, answer) = app
                .send_json("POST", "/v1/messages", &key, &send(to, body.clone()))
                .await;
            match expected {
                Some(code) => {
                    assert_eq!(status, 409, "{to} {body}: {answer}");
                    assert_eq!(answer["error"]["code"], code, "{answer}");
                }
                None => assert_eq!(status, 202, "{to} {body}: {answer}"),
            }
        }
        // Their messages set off no automation, and STOP from Rita is not confirmed.
        app.post_signed(&says_at(RITA, "wamid.r2", "ping", t)).await;
        app.post_signed(&says_at(RITA, "wamid.r3", "STOP", t)).await;
        app.post_signed(&says_at(OSCAR, "wamid.o2", "ping", t))
            .await;
        let runs = wait_runs(&app, "", |runs| runs.len() >= 3).await;
        let mut outcomes: Vec<(&str, &str)> = runs
            .iter()
            .map(|r| (r["kind"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
            .collect();
        outcomes.sort();
        assert_eq!(
            outcomes,
            [
                ("keyword", "objected"),
                ("keyword", "restricted"),
                ("opt_out", "restricted")
            ],
            "{runs:?}"
        );
        // Oscar got the utility template and the reply; Rita got nothing (every send
        // to her was refused, as the runs recorded after the refusals show).
        let calls = graph.wait_calls(2).await;
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(calls.iter().all(|c| c.body["to"] == OSCAR), "{calls:?}");
        // Two by the API, two by automations.
        let refusals = app
            .metric("converra_outbound_refusals_total{code=\"restricted\"}")
            .await;
        assert_eq!(refusals, 4.0, "refusals counted");
        graph.stop().await;
    }
}
