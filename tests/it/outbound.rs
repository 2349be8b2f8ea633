//! Outbound: the send API, the outbox and the number's sender, against a fake Graph
//! API on 127.0.0.1 that answers as Meta documents.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_graph::{meta_error, FakeGraph};
use crate::support::*;

const CUSTOMER: &str = "4915100000077";

async fn app_with_graph(backend: &Backend, graph: &FakeGraph) -> TestApp {
    let base = graph.base.clone();
    TestApp::start_with(backend, Default::default(), move |settings| {
        settings.whatsapp.graph_base_url = base;
        settings.outbound.retry_base_ms = 50;
        settings.outbound.reconcile_secs = 1;
        settings.outbound.paused_recheck_secs = 1;
    })
    .await
}

/// An inbound text stamped now, which opens the customer-service window.
fn text_now(from: &str, wamid: &str) -> Vec<u8> {
    text_now_saying(from, wamid, "hello?")
}

/// An inbound text saying `body`, stamped now.
fn text_now_saying(from: &str, wamid: &str, body: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::to_vec(&envelope(vec![messages_change(
        NUMBER_A,
        vec![contact(from, "Customer")],
        vec![
            json!({"from": from, "id": wamid, "timestamp": now.to_string(), "type": "text",
            "text": {"body": body}}),
        ],
    )]))
    .unwrap()
}

async fn post_message(
    app: &TestApp,
    api_key: &str,
    body: &Value,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let mut req = app
        .client
        .post(format!("{}/v1/messages", app.base))
        .insert_header(("Authorization", format!("Bearer {api_key}")));
    if let Some(key) = idempotency_key {
        req = req.insert_header(("Idempotency-Key", key));
    }
    let mut resp = req.send_json(body).await.unwrap();
    let bytes = resp.body().await.unwrap();
    (
        resp.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The gauge of the sends `number`'s sender holds that are not in flight.
fn waiting(number: &str) -> String {
    format!("converra_outbound_waiting{{phone_number_id=\"{number}\"}}")
}

/// Polls `GET /v1/messages/{id}` until its state is `state`.
async fn wait_state(app: &TestApp, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app
            .get(&format!("/v1/messages/{id}"), Some(&app.a.api_key))
            .await;
        assert_eq!(status, 200, "{body}");
        if body["state"] == state {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "message {id} stayed {body} (waiting for {state})"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_reply_reaches_meta_as_documented_and_follows_its_status_webhooks() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph).await;
        assert_eq!(
            app.post_signed(&text_now(CUSTOMER, "wamid.in.1")).await.0,
            200
        );
        app.wait_messages(&app.a, 1).await;

        let send = json!({"from_phone_number_id": NUMBER_A, "to": CUSTOMER, "type": "text",
            "text": {"body": "Your order has shipped.", "preview_url": false}});
        let (status, accepted) = post_message(&app, &app.a.api_key, &send, None).await;
        assert_eq!(status, 202, "{accepted}");
        assert_eq!(accepted["state"], "queued");
        let id = accepted["id"].as_str().unwrap().to_string();

        let calls = graph.wait_calls(1).await;
        assert_eq!(calls[0].path, format!("/v23.0/{NUMBER_A}/messages"));
        assert_eq!(
            calls[0].authorization.as_deref(),
            Some("Bearer EAAG-test-token")
        );
        assert_eq!(
            calls[0].body,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": CUSTOMER, "biz_opaque_callback_data": id, "type": "text",
                "text": {"body": "Your order has shipped.", "preview_url": false}})
        );
        let sent = wait_state(&app, &id, "sent").await;
        assert_eq!(sent["wamid"], "wamid.FAKE1");
        assert_eq!(sent["error"], Value::Null);

        for status in ["delivered", "read"] {
            let webhook = envelope(vec![statuses_change(
                NUMBER_A,
                vec![json!({"id": "wamid.FAKE1", "status": status,
                    "timestamp": "1764000100", "recipient_id": CUSTOMER})],
            )]);
            let (code, _) = app
                .post_signed(&serde_json::to_vec(&webhook).unwrap())
                .await;
            assert_eq!(code, 200);
        }
        wait_state(&app, &id, "read").await;
        // The conversation lists the reply beside the customer's message, once.
        let messages = app.all_messages(&app.a).await;
        let outbound: Vec<&Value> = messages
            .iter()
            .filter(|m| m["direction"] == "outbound")
            .collect();
        assert_eq!(outbound.len(), 1, "{messages:?}");
        assert_eq!(outbound[0]["id"], id.as_str());
        assert_eq!(outbound[0]["status"], "read");
        assert_eq!(outbound[0]["content"]["body"], "Your order has shipped.");
        // An inbound message is no send.
        let inbound = messages
            .iter()
            .find(|m| m["direction"] == "inbound")
            .unwrap();
        let (status, _) = app
            .get(
                &format!("/v1/messages/{}", inbound["id"].as_str().unwrap()),
                Some(&app.a.api_key),
            )
            .await;
        assert_eq!(status, 404);

        // Mark-as-read of the customer's message goes in Meta's own shape, through
        // the same outbox; another tenant's message, or none, is not found.
        let read = json!({"from_phone_number_id": NUMBER_A, "status": "read",
            "message_id": "wamid.in.1"});
        let (status, accepted) = post_message(&app, &app.a.api_key, &read, None).await;
        assert_eq!(status, 202, "{accepted}");
        let calls = graph.wait_calls(2).await;
        assert_eq!(
            calls[1].body,
            json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in.1"})
        );
        let unknown = json!({"from_phone_number_id": NUMBER_A, "status": "read",
            "message_id": "wamid.in.none"});
        let (status, refused) = post_message(&app, &app.a.api_key, &unknown, None).await;
        assert_eq!(status, 404, "{refused}");
        assert_eq!(refused["error"]["field"], "message_id");
        graph.stop().await;
    }
}

#[actix_rt::test]
async fn a_send_is_refused_naming_the_field_or_the_rule_it_breaks() {
    let graph = FakeGraph::start().await;
    let app = app_with_graph(&Backend::Sqlite, &graph).await;
    let text = |to: &str, body: &str| json!({"from_phone_number_id": NUMBER_A, "to": to, "type": "text", "text": {"body": body}});
    let huge = text(CUSTOMER, &"x".repeat(300 * 1024));
    let (status, body) = post_message(&app, &app.a.api_key, &huge, None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (413, json!("payload_too_large")),
        "{body}"
    );
    let (status, body) = post_message(&app, &app.a.api_key, &text(CUSTOMER, ""), None).await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (422, json!("text.body"))
    );
    assert_eq!(body["error"]["code"], "invalid_field");
    assert_eq!(
        body["error"]["rule"], "length",
        "the rule broken is named: {body}"
    );
    let too_long = "x".repeat(4097);
    let (status, body) = post_message(&app, &app.a.api_key, &text(CUSTOMER, &too_long), None).await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (422, json!("text.body"))
    );
    assert_eq!(body["error"]["rule"], "length", "{body}");
    let mut no_recipient = text(CUSTOMER, "hi");
    no_recipient.as_object_mut().unwrap().remove("to");
    let (status, body) = post_message(&app, &app.a.api_key, &no_recipient, None).await;
    assert_eq!(
        (status, &body["error"]["field"], &body["error"]["rule"]),
        (422, &json!("to"), &json!("required")),
        "{body}"
    );
    // Another tenant's number is as unknown as one that does not exist.
    let (status, body) = post_message(&app, &app.b.api_key, &text(CUSTOMER, "hi"), None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    // A contact who never wrote has no window: free-form is refused, a template goes.
    let (status, body) = post_message(&app, &app.a.api_key, &text(CUSTOMER, "hi"), None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("outside_window"))
    );
    assert!(
        app.all("/v1/contacts", &app.a.api_key).await.is_empty(),
        "a refused send creates no contact"
    );
    assert_eq!(
        app.metric("converra_outbound_refusals_total{code=\"outside_window\"}")
            .await,
        1.0
    );
    let template = json!({"from_phone_number_id": NUMBER_A, "to": CUSTOMER, "type": "template",
        "template": {"name": "order_update", "language": {"code": "en_US"}}});
    let (status, first) = post_message(&app, &app.a.api_key, &template, Some("order-42")).await;
    assert_eq!(status, 202, "{first}");
    // The same key again answers the first response and sends nothing more.
    let (status, again) = post_message(&app, &app.a.api_key, &template, Some("order-42")).await;
    assert_eq!((status, again["id"].clone()), (202, first["id"].clone()));
    let mut other = template.clone();
    other["template"]["name"] = json!("another");
    let (status, body) = post_message(&app, &app.a.api_key, &other, Some("order-42")).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (422, json!("idempotency_key_reused"))
    );
    wait_state(&app, first["id"].as_str().unwrap(), "sent").await;
    // Nothing else waits to go: a second send would be pending or called by now.
    let (_, pool) = app.pool();
    let pending =
        converra::storage::outbox::pending_sends(&mut pool.get().unwrap(), &NUMBER_A.into(), 10)
            .unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    assert_eq!(graph.calls().len(), 1, "one send for one idempotency key");
    // Tenant B cannot see A's message.
    let (status, _) = app
        .get(
            &format!("/v1/messages/{}", first["id"].as_str().unwrap()),
            Some(&app.b.api_key),
        )
        .await;
    assert_eq!(status, 404);
    graph.stop().await;
}

#[actix_rt::test]
async fn transient_errors_are_retried_permanent_ones_fail_and_a_bad_token_pauses_the_number() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph).await;
        let to = |customer: &str, name: &str| {
            json!({"from_phone_number_id": NUMBER_A, "to": customer, "type": "template",
            "template": {"name": name, "language": {"code": "en_US"}}})
        };
        let template = |name: &str| to(CUSTOMER, name);
        // The one who opts out below; the later sends go to someone else.
        let other = |name: &str| to("4915100000088", name);
        graph.script(vec![
            (500, json!({"error": {"message": "internal", "code": 1}})),
            (400, meta_error(130_429, "Rate limit hit")),
        ]);
        let (_, first) = post_message(&app, &app.a.api_key, &template("one"), None).await;
        let sent = wait_state(&app, first["id"].as_str().unwrap(), "sent").await;
        assert!(sent["wamid"].as_str().unwrap().starts_with("wamid.FAKE"));
        assert_eq!(graph.calls().len(), 3, "two failures, then the send");

        graph.script(vec![(
            400,
            meta_error(
                131_050,
                "Unable to deliver: the user stopped marketing messages",
            ),
        )]);
        let (_, stopped) = post_message(&app, &app.a.api_key, &template("promo"), None).await;
        let failed = wait_state(&app, stopped["id"].as_str().unwrap(), "failed").await;
        assert_eq!(failed["error"]["code"], 131_050);
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        assert_eq!(
            contacts[0]["marketing_opt_out"], true,
            "131050 records the opt-out"
        );
        // Before the account's templates are synced a template's category is unknown:
        // none goes to a contact who opted out.
        let (status, refused) =
            post_message(&app, &app.a.api_key, &template("unknown_kind"), None).await;
        assert_eq!(
            (status, &refused["error"]["code"]),
            (409, &json!("opted_out"))
        );

        graph.script(vec![(
            400,
            meta_error(132_001, "Template name does not exist"),
        )]);
        let (_, second) = post_message(&app, &app.a.api_key, &other("missing"), None).await;
        let failed = wait_state(&app, second["id"].as_str().unwrap(), "failed").await;
        assert_eq!(failed["error"]["code"], 132_001);
        assert_eq!(failed["error"]["message"], "Template name does not exist");
        assert_eq!(graph.calls().len(), 5, "a permanent error is not retried");

        graph.script(vec![(
            401,
            meta_error(190, "Error validating access token"),
        )]);
        let (_, third) = post_message(&app, &app.a.api_key, &other("three"), None).await;
        graph.wait_calls(6).await;
        let (_, fourth) = post_message(&app, &app.a.api_key, &other("four"), None).await;
        // Its sender holds both, neither in flight.
        app.wait_metric(&waiting(NUMBER_A), 2.0).await;
        assert_eq!(graph.calls().len(), 6, "a paused number sends nothing");
        assert_eq!(app.metric("converra_outbound_numbers_paused").await, 1.0);
        for id in [&third["id"], &fourth["id"]] {
            let (_, state) = app
                .get(
                    &format!("/v1/messages/{}", id.as_str().unwrap()),
                    Some(&app.a.api_key),
                )
                .await;
            assert_eq!(state["state"], "queued", "{state}");
        }
        // The operator replaces the token (converra number update): both go, in order.
        let (vault, pool) = app.pool();
        converra::storage::tenants::replace_access_token(
            &mut pool.get().unwrap(),
            &vault,
            &app.a.id,
            NUMBER_A,
            "EAAG-new-token",
        )
        .unwrap();
        for id in [&third["id"], &fourth["id"]] {
            wait_state(&app, id.as_str().unwrap(), "sent").await;
        }
        let calls = graph.calls();
        assert_eq!(calls.len(), 8);
        assert_eq!(app.metric("converra_outbound_numbers_paused").await, 0.0);
        assert_eq!(
            app.metric("converra_outbound_sends_total{outcome=\"failed\"}")
                .await,
            2.0
        );
        assert_eq!(
            calls[7].authorization.as_deref(),
            Some("Bearer EAAG-new-token")
        );
        assert_eq!(calls[6].body["template"]["name"], "three");
        assert_eq!(calls[7].body["template"]["name"], "four");
        graph.stop().await;
    }
}

/// With the number's limit at Meta's default of 80 messages a second, 800 sends take
/// about 10 s of the fake's time, no second window holds much more than the rate and
/// its 5% burst, and each contact's messages arrive in the order they were accepted.
#[actix_rt::test]
async fn sends_keep_the_numbers_pace_and_each_contacts_order() {
    let graph = FakeGraph::start().await;
    let base = graph.base.clone();
    let app = TestApp::start_with(&Backend::Sqlite, Default::default(), move |settings| {
        settings.whatsapp.graph_base_url = base;
        settings.outbound.default_mps = 80;
    })
    .await;
    // 800 messages to 40 contacts: each round sends one to every contact at once, so
    // each contact's messages are accepted in round order.
    let contacts: Vec<String> = (0..40).map(|i| format!("49151000010{i:02}")).collect();
    let mut accepted: Vec<(String, String)> = Vec::new();
    for round in 0..20 {
        let posts = contacts.iter().map(|to| {
            let body = json!({"from_phone_number_id": NUMBER_A, "to": to, "type": "template",
                "template": {"name": format!("step_{round}"), "language": {"code": "en_US"}}});
            let app = &app;
            async move {
                let (status, answer) = post_message(app, &app.a.api_key, &body, None).await;
                assert_eq!(status, 202, "{answer}");
                (to.clone(), answer["id"].as_str().unwrap().to_string())
            }
        });
        accepted.extend(futures_util::future::join_all(posts).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while graph.calls().len() < 800 {
        assert!(
            Instant::now() < deadline,
            "{} of 800 sent",
            graph.calls().len()
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = graph.calls();
    let first = calls[0].at;
    let span = calls[799].at.duration_since(first);
    // 800 at 80/s, after a burst of at most 4 (5%): just under 10 s.
    assert!(
        span >= Duration::from_millis(9_500) && span <= Duration::from_secs(15),
        "800 messages at 80/s took {span:?}"
    );
    // At most 80 a second plus the burst, measured where they arrive. The fake stamps a
    // request when its thread gets to it: on a machine busy with other tests a stall
    // lands several together, hence a tenth of tolerance (a limiter that let a whole
    // second's burst through would show 160).
    for (i, call) in calls.iter().enumerate() {
        let within: usize = calls[i..]
            .iter()
            .take_while(|later| later.at.duration_since(call.at) < Duration::from_secs(1))
            .count();
        assert!(
            within <= 88,
            "{within} messages within one second from call {i}"
        );
    }
    for to in &contacts {
        let sent: Vec<&str> = calls
            .iter()
            .filter(|c| c.body["to"] == to.as_str())
            .map(|c| c.body["biz_opaque_callback_data"].as_str().unwrap())
            .collect();
        let expected: Vec<&str> = accepted
            .iter()
            .filter(|(contact, _)| contact == to)
            .map(|(_, id)| id.as_str())
            .collect();
        assert_eq!(sent, expected, "the order of {to}'s messages");
    }
    graph.stop().await;
}

/// Templates are synced from the account when the senders start (paged), listed by
/// `GET /v1/templates`, and a template send is checked against them: it exists, is
/// approved, gets its parameters; a marketing template does not go to a contact who
/// stopped marketing messages, a utility one does.
#[actix_rt::test]
async fn template_sends_are_checked_against_the_synced_templates() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let template = |name: &str, category: &str, status: &str, body: &str| {
            json!({"name": name, "language": "en_US", "category": category, "status": status,
                "id": name, "components": [{"type": "BODY", "text": body}]})
        };
        graph.set_templates(vec![
            template(
                "order_update",
                "UTILITY",
                "APPROVED",
                "Order {{1}} ships {{2}}.",
            ),
            template(
                "spring_sale",
                "MARKETING",
                "APPROVED",
                "20% off until {{1}}",
            ),
            template("draft", "MARKETING", "PENDING", "Soon"),
        ]);
        let app = app_with_graph(&backend, &graph).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let listed = loop {
            let (status, body) = app.get("/v1/templates", Some(&app.a.api_key)).await;
            assert_eq!(status, 200, "{body}");
            if body["items"].as_array().unwrap().len() == 3 {
                break body;
            }
            assert!(Instant::now() < deadline, "templates never synced: {body}");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(listed["items"][0]["name"], "draft");
        assert_eq!(listed["items"][1]["category"], "UTILITY");

        // The customer stops marketing messages (Meta's user_preferences webhook).
        let stop = serde_json::to_vec(&envelope(vec![json!({"field": "user_preferences", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "1", "phone_number_id": NUMBER_A},
            "contacts": [{"wa_id": CUSTOMER, "profile": {"name": "C"}}],
            "user_preferences": [{"wa_id": CUSTOMER, "detail": "User requested to stop marketing messages",
                "category": "marketing_messages", "value": "stop", "timestamp": 1764000000}]}})]))
        .unwrap();
        assert_eq!(app.post_signed(&stop).await.0, 200);
        app.wait_processed().await;

        let send = |name: &str, parameters: Vec<&str>| {
            let parameters: Vec<Value> = parameters
                .into_iter()
                .map(|p| json!({"type": "text", "text": p}))
                .collect();
            json!({"from_phone_number_id": NUMBER_A, "to": CUSTOMER, "type": "template",
                "template": {"name": name, "language": {"code": "en_US"},
                    "components": [{"type": "body", "parameters": parameters}]}})
        };
        for (body, status, code, field, rule) in [
            (
                send("unknown", vec![]),
                422,
                "invalid_field",
                "template.name",
                "unknown",
            ),
            (
                send("draft", vec![]),
                422,
                "invalid_field",
                "template.name",
                "one_of",
            ),
            (
                send("order_update", vec!["42"]),
                422,
                "invalid_field",
                "template.components[0].parameters",
                "count",
            ),
            (
                send("spring_sale", vec!["Sunday"]),
                409,
                "opted_out",
                "",
                "",
            ),
        ] {
            let (got, answer) = post_message(&app, &app.a.api_key, &body, None).await;
            assert_eq!(got, status, "{body}: {answer}");
            assert_eq!(answer["error"]["code"], code, "{answer}");
            if !field.is_empty() {
                assert_eq!(answer["error"]["field"], field, "{answer}");
                assert_eq!(answer["error"]["rule"], rule, "{answer}");
            }
        }
        let (status, answer) = post_message(
            &app,
            &app.a.api_key,
            &send("order_update", vec!["42", "today"]),
            None,
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        wait_state(&app, answer["id"].as_str().unwrap(), "sent").await;

        // Meta moves it to marketing (template_category_update): the customer, who
        // stopped marketing messages, no longer gets it.
        let moved =
            serde_json::to_vec(&envelope(vec![json!({"field": "template_category_update",
            "value": {"message_template_id": 1, "message_template_name": "order_update",
                "message_template_language": "en_US", "previous_category": "UTILITY",
                "new_category": "MARKETING"}})]))
            .unwrap();
        assert_eq!(app.post_signed(&moved).await.0, 200);
        let (status, answer) = post_message(
            &app,
            &app.a.api_key,
            &send("order_update", vec!["42", "today"]),
            None,
        )
        .await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (409, &json!("opted_out")),
            "{answer}"
        );
        // Meta pauses the template (message_template_status_update): refused at once.
        let status_update = |name: &str, event: &str| {
            serde_json::to_vec(&envelope(vec![
                json!({"field": "message_template_status_update",
                "value": {"event": event, "message_template_id": 1,
                    "message_template_name": name, "message_template_language": "en_US",
                    "reason": "NONE"}}),
            ]))
            .unwrap()
        };
        assert_eq!(
            app.post_signed(&status_update("order_update", "PAUSED"))
                .await
                .0,
            200
        );
        let (status, answer) = post_message(
            &app,
            &app.a.api_key,
            &send("order_update", vec!["42", "today"]),
            None,
        )
        .await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("PAUSED"),
            "{answer}"
        );
        // A template approved that was never synced: the account is synced again.
        graph.set_templates(vec![
            template(
                "order_update",
                "UTILITY",
                "PAUSED",
                "Order {{1}} ships {{2}}.",
            ),
            template(
                "spring_sale",
                "MARKETING",
                "APPROVED",
                "20% off until {{1}}",
            ),
            template("draft", "MARKETING", "PENDING", "Soon"),
            template("welcome_back", "UTILITY", "APPROVED", "Welcome back"),
        ]);
        assert_eq!(
            app.post_signed(&status_update("welcome_back", "APPROVED"))
                .await
                .0,
            200
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = app.get("/v1/templates", Some(&app.a.api_key)).await;
            if body["items"].as_array().unwrap().len() == 4 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new template never synced: {body}"
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        graph.stop().await;
    }
}

/// Meta raises a number's throughput (phone_number_quality_update, THROUGHPUT_UPGRADE):
/// its sender paces at 1,000 messages a second instead of the default 80.
#[actix_rt::test]
async fn a_throughput_upgrade_from_meta_raises_the_numbers_pace() {
    let graph = FakeGraph::start().await;
    let app = app_with_graph(&Backend::Sqlite, &graph).await;
    let upgrade = serde_json::to_vec(&envelope(vec![
        json!({"field": "phone_number_quality_update",
        "value": {"display_phone_number": "15550000000", "event": "THROUGHPUT_UPGRADE",
            "current_limit": "TIER_UNLIMITED",
            "max_daily_conversations_per_business": "TIER_UNLIMITED"}}),
    ]))
    .unwrap();
    assert_eq!(app.post_signed(&upgrade).await.0, 200);
    // Its sender reads the new pace when it looks at the outbox (the webhook wakes it).
    app.wait_metric(
        &format!("converra_outbound_pace{{phone_number_id=\"{NUMBER_A}\"}}"),
        1000.0,
    )
    .await;
    let sends = 200;
    let posts = (0..sends).map(|i| {
        let body = json!({"from_phone_number_id": NUMBER_A, "to": format!("49151000{i:05}"),
            "type": "template", "template": {"name": "notice", "language": {"code": "en_US"}}});
        let app = &app;
        async move {
            let (status, accepted) = post_message(app, &app.a.api_key, &body, None).await;
            assert_eq!(status, 202, "{accepted}");
        }
    });
    futures_util::future::join_all(posts).await;
    let calls = graph.wait_calls(sends).await;
    // At 80 a second no second holds more than 84 sends (the pace and its 5% burst).
    let busiest = (0..calls.len())
        .map(|i| {
            calls[i..]
                .iter()
                .take_while(|c| c.at.duration_since(calls[i].at) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(busiest > 120, "at most {busiest} sends in a second");
    // A throughput event is not a messaging limit: the portfolio's stays unknown.
    let (_, usage) = app.get("/v1/usage", Some(&app.a.api_key)).await;
    assert_eq!(
        usage["portfolios"][0]["messaging_limit"],
        Value::Null,
        "{usage}"
    );
    graph.stop().await;
}

/// Meta's rate limits hold the whole number for a moment, then everything goes; its
/// spam limit holds the number for hours; a limit on one user holds only that send.
#[actix_rt::test]
async fn metas_limits_hold_the_number_or_only_the_send_they_name() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph).await;
        let template = |to: &str| {
            json!({"from_phone_number_id": NUMBER_A, "to": to, "type": "template",
            "template": {"name": "notice", "language": {"code": "en_US"}}})
        };
        let send = |to: &'static str| {
            let app = &app;
            let body = template(to);
            async move {
                let (status, accepted) = post_message(app, &app.a.api_key, &body, None).await;
                assert_eq!(status, 202, "{accepted}");
                accepted["id"].as_str().unwrap().to_string()
            }
        };
        let (one, two, three, four) = (
            "4915100000101",
            "4915100000102",
            "4915100000103",
            "4915100000104",
        );

        // 130429: the number is over its throughput. Its next send, to someone else,
        // waits with it (retry_base_ms is 50 here, give or take a quarter).
        graph.script(vec![(400, meta_error(130_429, "Rate limit hit"))]);
        let first = send(one).await;
        graph.wait_calls(1).await;
        let second = send(two).await;
        wait_state(&app, &first, "sent").await;
        wait_state(&app, &second, "sent").await;
        let calls = graph.calls();
        assert_eq!(
            calls.len(),
            3,
            "the throttled send once more, and the other"
        );
        assert!(
            calls[1].at.duration_since(calls[0].at) >= Duration::from_millis(35),
            "the number waited after Meta's rate limit"
        );
        assert_eq!(
            app.metric("converra_outbound_deferrals_total{code=\"130429\",scope=\"number\"}")
                .await,
            1.0
        );

        // 131049: a limit on this user's marketing messages holds that send only.
        graph.script(vec![(
            400,
            meta_error(
                131_049,
                "This message was not delivered to maintain healthy ecosystem engagement",
            ),
        )]);
        let held = send(one).await;
        graph.wait_calls(4).await;
        let other = send(two).await;
        wait_state(&app, &other, "sent").await;
        let (_, state) = app
            .get(&format!("/v1/messages/{held}"), Some(&app.a.api_key))
            .await;
        assert_eq!(state["state"], "queued", "deferred for hours: {state}");
        assert_eq!(
            app.metric("converra_outbound_deferrals_total{code=\"131049\",scope=\"send\"}")
                .await,
            1.0
        );

        // 131048: the number's spam rate limit holds all its sends for hours.
        graph.script(vec![(400, meta_error(131_048, "Spam rate limit hit"))]);
        let spam = send(three).await;
        graph.wait_calls(6).await;
        let after = send(four).await;
        // Its sender holds these two and the send deferred above, none in flight.
        app.wait_metric(&waiting(NUMBER_A), 3.0).await;
        assert_eq!(
            graph.calls().len(),
            6,
            "nothing leaves a number Meta deferred"
        );
        for id in [&spam, &after] {
            let (_, state) = app
                .get(&format!("/v1/messages/{id}"), Some(&app.a.api_key))
                .await;
            assert_eq!(state["state"], "queued", "{state}");
        }
        assert_eq!(
            app.metric("converra_outbound_deferrals_total{code=\"131048\",scope=\"number\"}")
                .await,
            1.0
        );
        graph.stop().await;
    }
}

/// STOP (or an equivalent, case aside) opts the contact out of marketing and is
/// confirmed once; START opts them in again, confirmed likewise; a redelivered STOP
/// and a sentence that only contains the word change nothing.
#[actix_rt::test]
async fn stop_and_start_keywords_set_the_contacts_preference_and_are_confirmed_once() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph).await;
        let says = |wamid: &str, text: &str| text_now_saying(CUSTOMER, wamid, text);
        async fn opted_out(app: &TestApp) -> bool {
            let contacts = app.all("/v1/contacts", &app.a.api_key).await;
            contacts[0]["marketing_opt_out"].as_bool().unwrap()
        }
        let defaults = converra::config::Settings::defaults().unwrap().outbound;

        assert_eq!(app.post_signed(&says("wamid.kw.1", "Stop.")).await.0, 200);
        let calls = graph.wait_calls(1).await;
        assert_eq!(calls[0].body["to"], CUSTOMER);
        assert_eq!(
            calls[0].body["text"]["body"],
            defaults.opt_out_reply.as_str()
        );
        assert!(opted_out(&app).await);
        // Meta delivers the same message again: no second confirmation.
        assert_eq!(app.post_signed(&says("wamid.kw.1", "Stop.")).await.0, 200);
        assert_eq!(
            app.post_signed(&says("wamid.kw.2", "please stop the noise"))
                .await
                .0,
            200
        );
        app.wait_messages(&app.a, 2).await;
        assert!(opted_out(&app).await);

        // The contact's messages are handled, and its sends leave, in order: a second
        // confirmation of STOP would be the second call, before START's.
        assert_eq!(app.post_signed(&says("wamid.kw.3", " start ")).await.0, 200);
        let calls = graph.wait_calls(2).await;
        assert_eq!(calls.len(), 2, "one confirmation for one STOP: {calls:?}");
        assert_eq!(
            calls[1].body["text"]["body"],
            defaults.opt_in_reply.as_str()
        );
        assert!(!opted_out(&app).await);
        graph.stop().await;
    }
}

/// A text message on NUMBER_A from the person known by `bsuid`, naming their number
/// too when `wa_id` is given.
fn from_bsuid(bsuid: &str, wa_id: Option<&str>, wamid: &str, body: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let (mut contact, mut message) = (
        json!({"user_id": bsuid, "profile": {"name": "Kim"}}),
        json!({"from_user_id": bsuid, "id": wamid, "timestamp": now,
            "type": "text", "text": {"body": body}}),
    );
    if let Some(wa_id) = wa_id {
        contact["wa_id"] = json!(wa_id);
        message["from"] = json!(wa_id);
    }
    serde_json::to_vec(&envelope(vec![messages_change(
        NUMBER_A,
        vec![contact],
        vec![message],
    )]))
    .unwrap()
}

/// A restriction of CUSTOMER by tenant A, run to completion; returns the request.
async fn restrict_customer(app: &TestApp) -> Value {
    let (status, request) = app
        .send_json(
            "POST",
            "/v1/privacy/requests",
            &app.a.api_key,
            &json!({"kind": "restriction", "wa_id": CUSTOMER}),
        )
        .await;
    assert_eq!(status, 201, "{request}");
    crate::compliance::wait_state(app, &app.a, request["id"].as_str().unwrap(), "completed").await
}

/// One person seen apart on NUMBER_A: first by `bsuid` alone (the older contact), then
/// by CUSTOMER's number alone; returns the webhook (message `wamid`) that names both,
/// which merges them, not yet posted.
async fn seen_apart(app: &TestApp, bsuid: &str, wamids: [&str; 3]) -> Vec<u8> {
    assert_eq!(
        app.post_signed(&from_bsuid(bsuid, None, wamids[0], "hi"))
            .await
            .0,
        200
    );
    app.wait_messages(&app.a, 1).await;
    assert_eq!(app.post_signed(&text_now(CUSTOMER, wamids[1])).await.0, 200);
    app.wait_messages(&app.a, 2).await;
    from_bsuid(bsuid, Some(CUSTOMER), wamids[2], "both")
}

/// A restriction recorded for a number no contact has (the subject known only by
/// BSUID so far) holds that contact once a message shows it is the same person: the
/// contact learns the number, and the waiting restriction applies from then on.
#[actix_rt::test]
async fn a_waiting_restriction_holds_a_contact_that_learns_its_number() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph).await;
        let bsuid = "US.13491208655302741920";
        assert_eq!(
            app.post_signed(&from_bsuid(bsuid, None, "wamid.l1", "hi"))
                .await
                .0,
            200
        );
        app.wait_messages(&app.a, 1).await;
        let waiting = restrict_customer(&app).await;
        let id = waiting["id"].as_str().unwrap().to_string();
        assert_eq!(
            waiting["outcome"]["pending_contact"], true,
            "{backend:?}: {waiting}"
        );
        let both = from_bsuid(bsuid, Some(CUSTOMER), "wamid.l2", "both");
        assert_eq!(app.post_signed(&both).await.0, 200);
        app.wait_messages(&app.a, 2).await;
        assert_eq!(
            app.all("/v1/contacts", &app.a.api_key).await.len(),
            1,
            "{backend:?}: linked, not a second contact"
        );
        for to in [CUSTOMER, bsuid] {
            let body = json!({"from_phone_number_id": NUMBER_A, "to": to, "type": "text",
                "text": {"body": "hello"}});
            let (status, refused) = post_message(&app, &app.a.api_key, &body, None).await;
            assert_eq!(
                (status, &refused["error"]["code"]),
                (409, &json!("restricted")),
                "{backend:?}: to {to}: {refused}"
            );
        }
        let (_, applied) = app
            .get(&format!("/v1/privacy/requests/{id}"), Some(&app.a.api_key))
            .await;
        assert!(applied["contact_id"].is_string(), "{backend:?}: {applied}");
        assert!(graph.calls().is_empty(), "{backend:?}");
        graph.stop().await;
    }
}

/// A send to a contact merged into another since its conversation last looked it up
/// is stored under the contact that remains, not refused; the business's record of the
/// contact merged away passes to the one that remains.
#[actix_rt::test]
async fn a_send_after_a_merge_goes_to_the_contact_that_remains() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph).await;
        // First seen by the BSUID alone, then by the number alone: two contacts.
        let both = seen_apart(
            &app,
            "US.13491208655302741918",
            ["wamid.m1", "wamid.m2", "wamid.m3"],
        )
        .await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let webhook = |contact: Value, message: Value| {
            serde_json::to_vec(&envelope(vec![messages_change(
                NUMBER_A,
                vec![contact],
                vec![message],
            )]))
            .unwrap()
        };
        let reply = json!({"from_phone_number_id": NUMBER_A, "to": CUSTOMER, "type": "text",
            "text": {"body": "Hello"}});
        let (status, first) = post_message(&app, &app.a.api_key, &reply, None).await;
        assert_eq!(status, 202, "{first}");
        // The business tags the contact it knows by number.
        let by_number = app
            .all("/v1/contacts?wa_id=4915100000077", &app.a.api_key)
            .await;
        let tagged = format!("/v1/contacts/{}", by_number[0]["id"].as_str().unwrap());
        let record = json!({"tags": ["vip"], "attributes": {"plan": "gold"}});
        let (status, body) = app
            .send_json("PATCH", &tagged, &app.a.api_key, &record)
            .await;
        assert_eq!(status, 200, "{body}");
        // A message naming both: the later contact is merged into the earlier one.
        assert_eq!(app.post_signed(&both).await.0, 200);
        app.wait_processed().await;
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        assert_eq!(contacts.len(), 1);
        // What the business recorded about the merged-away contact stays.
        assert_eq!(contacts[0]["tags"], json!(["vip"]), "{contacts:?}");
        assert_eq!(contacts[0]["attributes"]["plan"], "gold");
        assert_eq!(
            app.all("/v1/contacts?tag=vip", &app.a.api_key).await.len(),
            1
        );
        let (status, second) = post_message(&app, &app.a.api_key, &reply, None).await;
        assert_eq!(status, 202, "{second}");
        wait_state(&app, second["id"].as_str().unwrap(), "sent").await;

        // A send still waiting (its number paused) when its contact is merged away
        // goes, once the number resumes, to the contact that remains.
        const OTHER_BSUID: &str = "US.55501234567890";
        const OTHER_PHONE: &str = "4915100000078";
        let by_user = webhook(
            json!({"user_id": OTHER_BSUID, "profile": {"name": "Lu"}}),
            json!({"from_user_id": OTHER_BSUID, "id": "wamid.m4", "timestamp": now,
                "type": "text", "text": {"body": "hi"}}),
        );
        assert_eq!(app.post_signed(&by_user).await.0, 200);
        app.wait_messages(&app.a, 4).await;
        assert_eq!(
            app.post_signed(&text_now(OTHER_PHONE, "wamid.m5")).await.0,
            200
        );
        app.wait_messages(&app.a, 5).await;
        let calls_before = graph.calls().len();
        graph.script(vec![(
            401,
            meta_error(190, "Error validating access token"),
        )]);
        let waiting = json!({"from_phone_number_id": NUMBER_A, "to": OTHER_PHONE,
            "type": "text", "text": {"body": "Still there?"}});
        let (status, held) = post_message(&app, &app.a.api_key, &waiting, None).await;
        assert_eq!(status, 202, "{held}");
        graph.wait_calls(calls_before + 1).await;
        let both = webhook(
            json!({"user_id": OTHER_BSUID, "wa_id": OTHER_PHONE, "profile": {"name": "Lu"}}),
            json!({"from": OTHER_PHONE, "from_user_id": OTHER_BSUID, "id": "wamid.m6",
                "timestamp": now, "type": "text", "text": {"body": "both"}}),
        );
        assert_eq!(app.post_signed(&both).await.0, 200);
        app.wait_processed().await;
        let (vault, pool) = app.pool();
        converra::storage::tenants::replace_access_token(
            &mut pool.get().unwrap(),
            &vault,
            &app.a.id,
            NUMBER_A,
            "EAAG-new-token",
        )
        .unwrap();
        wait_state(&app, held["id"].as_str().unwrap(), "sent").await;
        graph.stop().await;
    }
}

/// Each day's usage is counted as it happens: inbound messages (a redelivery once),
/// sends by kind, automation runs, failures; another tenant sees none of it.
#[actix_rt::test]
async fn usage_is_counted_per_tenant_and_day() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph).await;
        let key = app.a.api_key.clone();
        assert_eq!(
            app.post_signed(&text_now(CUSTOMER, "wamid.u1")).await.0,
            200
        );
        assert_eq!(
            app.post_signed(&text_now(CUSTOMER, "wamid.u1")).await.0,
            200
        );
        app.wait_messages(&app.a, 1).await;
        let reply = json!({"from_phone_number_id": NUMBER_A, "to": CUSTOMER, "type": "text",
            "text": {"body": "Thanks!"}});
        let (status, sent) = post_message(&app, &key, &reply, None).await;
        assert_eq!(status, 202, "{sent}");
        wait_state(&app, sent["id"].as_str().unwrap(), "sent").await;
        graph.script(vec![(
            400,
            meta_error(132_001, "Template name does not exist"),
        )]);
        let template = json!({"from_phone_number_id": NUMBER_A, "to": CUSTOMER,
            "type": "template", "template": {"name": "gone", "language": {"code": "en_US"}}});
        let (_, failed) = post_message(&app, &key, &template, None).await;
        wait_state(&app, failed["id"].as_str().unwrap(), "failed").await;
        // STOP: an inbound message, and its confirmation an automation's send.
        assert_eq!(
            app.post_signed(&text_now(CUSTOMER, "wamid.u2")).await.0,
            200
        );
        let stop = text_now_saying(CUSTOMER, "wamid.u3", "STOP");
        assert_eq!(app.post_signed(&stop).await.0, 200);
        graph.wait_calls(3).await;

        let deadline = Instant::now() + Duration::from_secs(20);
        let today = loop {
            let (status, body) = app.get("/v1/usage", Some(&key)).await;
            assert_eq!(status, 200, "{body}");
            let items = body["items"].as_array().unwrap().clone();
            if items.len() == 1 && items[0]["automation_runs"] == 1 {
                break items[0].clone();
            }
            assert!(Instant::now() < deadline, "usage never counted: {body}");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(today["inbound"], 3, "{today}");
        assert_eq!(
            today["outbound"],
            json!({"template": 1, "text": 2}),
            "{today}"
        );
        assert_eq!(today["failures"], 1, "{today}");
        let date = today["date"].as_str().unwrap().to_string();
        let (status, body) = app
            .get(&format!("/v1/usage?from={date}&to={date}"), Some(&key))
            .await;
        assert_eq!(
            (status, body["items"][0]["inbound"].clone()),
            (200, json!(3))
        );

        let (status, body) = app.get("/v1/usage", Some(&app.b.api_key)).await;
        assert_eq!((status, body["items"].clone()), (200, json!([])));
        let (status, body) = app.get("/v1/usage?from=yesterday", Some(&key)).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["field"], "from");
        graph.stop().await;
    }
}

/// The rules are checked again when a send leaves: a marketing template accepted
/// before its contact opted out (it waited on a paused number) fails with
/// `opted_out` instead of reaching the contact; the opt-out's confirmation goes.
#[actix_rt::test]
async fn a_marketing_send_waiting_when_its_contact_opts_out_never_leaves() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph).await;
        assert_eq!(
            app.post_signed(&text_now(CUSTOMER, "wamid.w1")).await.0,
            200
        );
        app.wait_messages(&app.a, 1).await;
        // Templates are not synced here: their category is unknown, so marketing.
        graph.script(vec![(
            401,
            meta_error(190, "Error validating access token"),
        )]);
        let promo = json!({"from_phone_number_id": NUMBER_A, "to": CUSTOMER,
            "type": "template", "template": {"name": "promo", "language": {"code": "en_US"}}});
        let (status, waiting) = post_message(&app, &app.a.api_key, &promo, None).await;
        assert_eq!(status, 202, "{waiting}");
        graph.wait_calls(1).await;
        let stop = text_now_saying(CUSTOMER, "wamid.w2", "STOP");
        assert_eq!(app.post_signed(&stop).await.0, 200);
        app.wait_messages(&app.a, 2).await;
        let (vault, pool) = app.pool();
        converra::storage::tenants::replace_access_token(
            &mut pool.get().unwrap(),
            &vault,
            &app.a.id,
            NUMBER_A,
            "EAAG-new-token",
        )
        .unwrap();
        let failed = wait_state(&app, waiting["id"].as_str().unwrap(), "failed").await;
        assert_eq!(failed["error"]["code"], "opted_out", "{failed}");
        let calls = graph.wait_calls(2).await;
        assert_eq!(
            calls[1].body["type"], "text",
            "only the confirmation: {:?}",
            calls[1]
        );
        let (_, pool) = app.pool();
        let pending = converra::storage::outbox::pending_sends(
            &mut pool.get().unwrap(),
            &NUMBER_A.into(),
            10,
        )
        .unwrap();
        assert!(pending.is_empty(), "{pending:?}");
        assert_eq!(graph.calls().len(), 2, "the template never left");
        graph.stop().await;
    }
}

/// A number paused for its token or account stays paused across a restart, and the
/// operator's update of the number resumes it, even with the same token (an account
/// problem is fixed at Meta, not in the token).
#[actix_rt::test]
async fn a_paused_number_stays_paused_across_a_restart_until_it_is_updated() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let mut app = app_with_graph(&backend, &graph).await;
        graph.script(vec![(
            400,
            meta_error(131_042, "Business eligibility payment issue"),
        )]);
        let template = json!({"from_phone_number_id": NUMBER_A, "to": CUSTOMER,
            "type": "template", "template": {"name": "notice", "language": {"code": "en_US"}}});
        let (_, first) = post_message(&app, &app.a.api_key, &template, None).await;
        graph.wait_calls(1).await;
        // The pause is stored before the restart.
        {
            use converra::storage::schema::phone_numbers;
            use diesel::prelude::*;
            let (_, pool) = app.pool();
            let mut conn = pool.get().unwrap();
            let conn = &mut *conn;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let paused: Option<i64> = converra::on_backend!(conn, c => phone_numbers::table
                    .find(NUMBER_A)
                    .select(phone_numbers::paused_at)
                    .get_result(c))
                .unwrap();
                if paused.is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "the pause was never stored");
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
        }
        app.restart(Default::default()).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while app.metric("converra_outbound_numbers_paused").await != 1.0 {
            assert!(
                Instant::now() < deadline,
                "the restarted daemon forgot the pause"
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        // Its sender holds the send, not in flight.
        app.wait_metric(&waiting(NUMBER_A), 1.0).await;
        assert_eq!(
            graph.calls().len(),
            1,
            "a paused number sends nothing after a restart"
        );
        let (vault, pool) = app.pool();
        converra::storage::tenants::replace_access_token(
            &mut pool.get().unwrap(),
            &vault,
            &app.a.id,
            NUMBER_A,
            "EAAG-test-token",
        )
        .unwrap();
        wait_state(&app, first["id"].as_str().unwrap(), "sent").await;
        assert_eq!(app.metric("converra_outbound_numbers_paused").await, 0.0);
        graph.stop().await;
    }
}

/// A restriction of the contact known by number holds the one person once a message
/// shows it is the contact known by BSUID: the merge keeps it on the contact that
/// remains, so nothing is sent to them.
#[actix_rt::test]
async fn a_merge_keeps_the_restriction_of_the_contact_merged_away() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let app = app_with_graph(&backend, &graph).await;
        // First seen by the BSUID alone (the older contact), then by the number alone.
        let both = seen_apart(
            &app,
            "US.13491208655302741919",
            ["wamid.r1", "wamid.r2", "wamid.r3"],
        )
        .await;
        restrict_customer(&app).await;
        // A message naming both: the number's contact is merged into the BSUID's.
        assert_eq!(app.post_signed(&both).await.0, 200);
        app.wait_processed().await;
        assert_eq!(app.all("/v1/contacts", &app.a.api_key).await.len(), 1);
        let reply = json!({"from_phone_number_id": NUMBER_A, "to": CUSTOMER, "type": "text",
            "text": {"body": "Hello"}});
        let (status, refused) = post_message(&app, &app.a.api_key, &reply, None).await;
        assert_eq!(
            (status, &refused["error"]["code"]),
            (409, &json!("restricted")),
            "{backend:?}: the restriction held through the merge: {refused}"
        );
        assert!(
            graph.calls().is_empty(),
            "{backend:?}: nothing reached Meta"
        );
        graph.stop().await;
    }
}
