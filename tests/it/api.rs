//! The tenant read API: authentication, scoping and pagination.

use serde_json::{json, Value};

use crate::support::*;

#[actix_rt::test]
async fn the_api_needs_a_valid_key() {
    let app = TestApp::start(&Backend::Sqlite).await;
    let (status, body) = app.get("/v1/contacts", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = app.get("/v1/contacts", Some("cvk_not_a_key")).await;
    assert_eq!(status, 401);
    let (status, body) = app.get("/v1/contacts?limit=0", Some(&app.a.api_key)).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "limit");
    let (status, body) = app.get("/v1/nowhere", Some(&app.a.api_key)).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[actix_rt::test]
async fn a_tenant_never_sees_or_detects_another_tenants_rows() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        // The same WhatsApp user writes to both businesses.
        app.post_signed(&text_webhook(NUMBER_A, "4915555", "wamid.to.a", "for A"))
            .await;
        app.post_signed(&text_webhook(NUMBER_B, "4915555", "wamid.to.b", "for B"))
            .await;
        let a_messages = app.wait_messages(&app.a, 1).await;
        let b_messages = app.wait_messages(&app.b, 1).await;
        assert_eq!(a_messages.len(), 1);
        assert_eq!(a_messages[0]["content"]["body"], "for A");
        assert_eq!(b_messages.len(), 1);
        assert_eq!(b_messages[0]["content"]["body"], "for B");
        let a_contacts = app.all("/v1/contacts", &app.a.api_key).await;
        let b_contacts = app.all("/v1/contacts", &app.b.api_key).await;
        assert_eq!(a_contacts.len(), 1);
        assert_eq!(b_contacts.len(), 1);
        assert_ne!(
            a_contacts[0]["id"], b_contacts[0]["id"],
            "one contact row per tenant"
        );
        // B's conversation id, used by A: not found, exactly like an id that never existed.
        let b_conversation = app.all("/v1/conversations", &app.b.api_key).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, body) = app
            .get(
                &format!("/v1/conversations/{b_conversation}/messages"),
                Some(&app.a.api_key),
            )
            .await;
        let (missing_status, missing_body) = app
            .get(
                "/v1/conversations/00000000-0000-7000-8000-000000000000/messages",
                Some(&app.a.api_key),
            )
            .await;
        assert_eq!(status, 404);
        assert_eq!((status, body), (missing_status, missing_body));
        // A cursor below every id lists from the start: A's rows, none of B's.
        let (_, page) = app
            .get(
                "/v1/conversations?cursor=00000000-0000-7000-8000-000000000000",
                Some(&app.a.api_key),
            )
            .await;
        let items = page["items"].as_array().unwrap();
        assert!(!items.is_empty());
        assert!(items.iter().all(|c| c["phone_number_id"] == NUMBER_A));
    }
}

#[actix_rt::test]
async fn listings_paginate_with_a_cursor() {
    let app = TestApp::start(&Backend::Sqlite).await;
    for i in 0..7 {
        app.post_signed(&text_webhook(
            NUMBER_A,
            "4915666",
            &format!("wamid.page.{i}"),
            &format!("n{i}"),
        ))
        .await;
    }
    app.wait_messages(&app.a, 7).await;
    let conversation = app.all("/v1/conversations", &app.a.api_key).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen: Vec<Value> = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = if cursor.is_empty() {
            format!("/v1/conversations/{conversation}/messages?limit=3")
        } else {
            format!("/v1/conversations/{conversation}/messages?limit=3&cursor={cursor}")
        };
        let (status, page) = app.get(&path, Some(&app.a.api_key)).await;
        assert_eq!(status, 200);
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let bodies: Vec<&str> = seen
        .iter()
        .map(|m| m["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        vec!["n0", "n1", "n2", "n3", "n4", "n5", "n6"],
        "in order, each once"
    );
}

/// The running daemon moves stored messages into the SQLite conversation index in
/// bulk, while webhooks keep arriving (the slices ride with the write batches: the
/// writer is never idle long enough to index on its own), and the listing shows the
/// same messages, in order, before and after.
#[actix_rt::test]
async fn the_daemon_indexes_conversations_and_lists_the_same_messages() {
    use converra::storage::{self, conversation_index};

    let app = TestApp::start(&Backend::Sqlite).await;
    let pool = storage::connect(&app.settings).unwrap();
    let tail = || storage::with_conn(&pool, conversation_index::tail_len).unwrap();
    let mut sent = 0;
    // A message every 50 ms: the writer indexes on its own only after a second idle.
    while sent < 100 && tail() == sent {
        app.post_signed(&text_webhook(
            NUMBER_A,
            "4915777",
            &format!("wamid.index.{sent}"),
            &format!("i{sent}"),
        ))
        .await;
        sent += 1;
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        tail() < sent,
        "nothing was indexed while {sent} webhooks arrived"
    );
    let bodies = |messages: &[Value]| -> Vec<String> {
        messages
            .iter()
            .map(|m| m["content"]["body"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let expected: Vec<String> = (0..sent).map(|i| format!("i{i}")).collect();
    assert_eq!(
        bodies(&app.wait_messages(&app.a, sent as usize).await),
        expected
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tail() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tail was never indexed"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(bodies(&app.all_messages(&app.a).await), expected, "indexed");
    assert!(
        app.get_text("/metrics")
            .await
            .contains("converra_conversation_index_tail "),
        "operators see the tail"
    );
}

/// Ids and cursors come from the caller: one PostgreSQL's text cannot hold (a NUL) is
/// a conversation that does not exist or a cursor that is not one, told as such, on
/// both backends alike; never a server error.
#[actix_rt::test]
async fn an_id_or_cursor_with_a_nul_is_not_found_or_refused_never_a_server_error() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let key = Some(app.a.api_key.as_str());
        let (status, body) = app.get("/v1/conversations/abc%00def/messages", key).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        for path in [
            "/v1/contacts?cursor=abc%00def",
            "/v1/conversations?cursor=abc%00def",
        ] {
            let (status, body) = app.get(path, key).await;
            assert_eq!(status, 422, "{path}: {body}");
            assert_eq!(body["error"]["field"], "cursor", "{path}: {body}");
        }
    }
}

#[actix_rt::test]
async fn a_bad_limit_is_refused_naming_limit() {
    let app = TestApp::start(&Backend::Sqlite).await;
    for limit in ["0", "-1", "501", "1e3", "99999999999999999999", "", "ten"] {
        let (status, body) = app
            .get(&format!("/v1/contacts?limit={limit}"), Some(&app.a.api_key))
            .await;
        assert_eq!(status, 422, "{limit:?}: {body}");
        assert_eq!(body["error"]["field"], "limit", "{limit:?}: {body}");
    }
    let (status, _) = app
        .get("/v1/contacts?limit=500", Some(&app.a.api_key))
        .await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn a_method_an_endpoint_does_not_take_is_a_405_with_the_json_error() {
    let app = TestApp::start(&Backend::Sqlite).await;
    for (method, path) in [
        (awc::http::Method::PUT, "/webhooks/whatsapp"),
        (awc::http::Method::POST, "/v1/contacts"),
        (awc::http::Method::DELETE, "/healthz"),
    ] {
        let mut resp = app
            .client
            .request(method.clone(), format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap_or_default();
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}: {body}"
        );
    }
}

/// A server error says nothing of its cause to the caller but carries a request id, in
/// the body and in `X-Request-Id`, under which the cause is logged; the caller's own
/// well-formed id is kept.
#[actix_rt::test]
async fn a_server_error_carries_a_request_id_and_no_cause() {
    use diesel::connection::SimpleConnection;
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let (_, pool) = app.pool();
        // A table gone from under the server: a failure no retry cures.
        pool.get()
            .unwrap()
            .batch_execute("DROP TABLE contacts CASCADE")
            .or_else(|_| pool.get().unwrap().batch_execute("DROP TABLE contacts"))
            .unwrap();
        let mut resp = app
            .client
            .get(format!("{}/v1/contacts", app.base))
            .insert_header(("Authorization", format!("Bearer {}", app.a.api_key)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 500);
        let header = resp
            .headers()
            .get("X-Request-Id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .expect("an X-Request-Id header");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "internal");
        assert_eq!(body["error"]["request_id"], header.as_str());
        assert!(uuid::Uuid::try_parse(&header).is_ok());
        assert!(
            !body.to_string().contains("contacts"),
            "the cause leaked: {body}"
        );

        let mine = uuid::Uuid::new_v4().to_string();
        let resp = app
            .client
            .get(format!("{}/v1/contacts", app.base))
            .insert_header(("Authorization", format!("Bearer {}", app.a.api_key)))
            .insert_header(("X-Request-Id", mine.as_str()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers().get("X-Request-Id").unwrap(), mine.as_str());
    }
}

/// A business keeps its own record of a contact (display name, tags, attributes),
/// finds contacts by it or by their number, and closes and reopens conversations; a
/// new message from the contact opens a closed conversation; another tenant sees none
/// of it.
#[actix_rt::test]
async fn the_crm_records_contacts_finds_them_and_closes_conversations() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let (anna, ben) = ("4915100000201", "4915100000202");
        app.post_signed(&text_webhook(NUMBER_A, anna, "wamid.c1", "hi"))
            .await;
        app.post_signed(&text_webhook(NUMBER_A, ben, "wamid.c2", "hi"))
            .await;
        app.wait_messages(&app.a, 2).await;
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        let id_of = |wa_id: &str| {
            contacts.iter().find(|c| c["wa_id"] == wa_id).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (anna_id, ben_id) = (id_of(anna), id_of(ben));
        let key = app.a.api_key.clone();

        let record = json!({"display_name": "Anna K.", "tags": ["vip", "Berlin", "VIP"],
            "attributes": {"plan": "gold", "orders": 3}});
        let (status, body) = app
            .send_json("PATCH", &format!("/v1/contacts/{anna_id}"), &key, &record)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["display_name"], "Anna K.");
        assert_eq!(body["tags"], json!(["vip", "Berlin"]));
        assert_eq!(body["attributes"], json!({"orders": 3, "plan": "gold"}));
        assert_eq!(body["wa_id"], anna);

        let found = |query: &'static str| {
            let (app, key) = (&app, key.clone());
            async move {
                app.all(&format!("/v1/contacts?{query}"), &key)
                    .await
                    .iter()
                    .map(|c| c["id"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(found("tag=VIP").await, vec![anna_id.clone()]);
        assert_eq!(found("attribute=plan:gold").await, vec![anna_id.clone()]);
        assert_eq!(found("attribute=orders:3").await, vec![anna_id.clone()]);
        assert_eq!(
            found("tag=vip&attribute=plan:silver").await,
            Vec::<String>::new()
        );
        assert_eq!(found("wa_id=4915100000202").await, vec![ben_id.clone()]);
        assert_eq!(found("wa_id=%2B4915100000202").await, vec![ben_id.clone()]);
        assert!(found("tag=none").await.is_empty());

        // Each field given replaces its own; the others stay.
        let (status, body) = app
            .send_json(
                "PATCH",
                &format!("/v1/contacts/{anna_id}"),
                &key,
                &json!({"tags": []}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["tags"], json!([]));
        assert_eq!(body["display_name"], "Anna K.");
        assert!(found("tag=vip").await.is_empty());
        let (status, body) = app
            .get(&format!("/v1/contacts/{anna_id}"), Some(&key))
            .await;
        assert_eq!((status, &body["attributes"]["plan"]), (200, &json!("gold")));

        // Refusals name the field; another tenant's contact is not found.
        for (patch, field) in [
            (json!({"tags": "vip"}), "tags"),
            (
                json!({"attributes": {"plan": {"nested": true}}}),
                "attributes",
            ),
            (json!({"nickname": "x"}), "body"),
            (json!({"display_name": "x\u{0}\u{1b}[31m"}), "display_name"),
            (json!({"attributes": {"a:b": "c"}}), "attributes"),
        ] {
            let (status, body) = app
                .send_json("PATCH", &format!("/v1/contacts/{anna_id}"), &key, &patch)
                .await;
            assert_eq!(status, 422, "{body}");
            assert_eq!(body["error"]["field"], field, "{body}");
        }
        let (status, _) = app
            .send_json(
                "PATCH",
                &format!("/v1/contacts/{anna_id}"),
                &app.b.api_key,
                &json!({"display_name": "x"}),
            )
            .await;
        assert_eq!(status, 404);
        let (status, _) = app
            .get(&format!("/v1/contacts/{anna_id}"), Some(&app.b.api_key))
            .await;
        assert_eq!(status, 404);

        // Close Anna's conversation; her next message opens it again.
        let conversations = app.all("/v1/conversations", &key).await;
        let conversation = conversations
            .iter()
            .find(|c| c["contact_id"] == anna_id.as_str())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let close = format!("/v1/conversations/{conversation}/close");
        let (status, _) = app
            .send_json("POST", &close, &app.b.api_key, &json!({}))
            .await;
        assert_eq!(status, 404, "another tenant's conversation");
        let (status, body) = app.send_json("POST", &close, &key, &json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["closed_at"].is_string(), "{body}");
        let reopen = format!("/v1/conversations/{conversation}/reopen");
        let (status, body) = app.send_json("POST", &reopen, &key, &json!({})).await;
        assert_eq!((status, &body["closed_at"]), (200, &Value::Null));
        app.send_json("POST", &close, &key, &json!({})).await;
        // Meta delivering her first message again is no new message: still closed.
        let (_, receipt) = app
            .post_signed(&text_webhook(NUMBER_A, anna, "wamid.c1", "hi"))
            .await;
        assert_eq!(receipt["duplicates"], 1, "{receipt}");
        let conversations = app.all("/v1/conversations", &key).await;
        let mine = conversations
            .iter()
            .find(|c| c["id"] == conversation.as_str())
            .unwrap();
        assert!(mine["closed_at"].is_string(), "{mine}");
        app.post_signed(&text_webhook(NUMBER_A, anna, "wamid.c3", "me again"))
            .await;
        app.wait_messages(&app.a, 3).await;
        let conversations = app.all("/v1/conversations", &key).await;
        let mine = conversations
            .iter()
            .find(|c| c["id"] == conversation.as_str())
            .unwrap();
        assert_eq!(mine["closed_at"], Value::Null, "{mine}");
    }
}
