//! The webhook endpoint as Meta uses it.

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

#[actix_rt::test]
async fn verification_handshake_answers_the_challenge_only_for_the_right_token() {
    let app = TestApp::start(&Backend::Sqlite).await;
    let ok = format!("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444");
    let (status, body) = app.get(&ok, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!(1158201444));
    let (status, body) = app
        .get(
            "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
            None,
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["field"], "hub.verify_token");
    let (status, _) = app.get(&format!("/webhooks/whatsapp?hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"), None).await;
    assert_eq!(status, 403);
    // The echo is plain text a browser will not sniff into markup.
    let resp = app
        .client
        .get(format!("{}/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=%3Cb%3Ex%3C%2Fb%3E", app.base))
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
    assert!(header("content-type").is_some_and(|t| t.starts_with("text/plain")));
}

#[actix_rt::test]
async fn unsigned_forged_and_wrong_secret_posts_are_refused_and_nothing_is_stored() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let body = text_webhook(NUMBER_A, "4915111", "wamid.forged", "hello");
        let (status, err) = app.post_raw(&body, None).await;
        assert_eq!(status, 401);
        assert_eq!(err["error"]["code"], "invalid_signature");
        assert_eq!(err["error"]["field"], "X-Hub-Signature-256");
        let wrong_secret = converra::whatsapp::signature::sign(b"not-the-secret", &body);
        assert_eq!(app.post_raw(&body, Some(&wrong_secret)).await.0, 401);
        let tampered = text_webhook(NUMBER_A, "4915111", "wamid.forged", "hellO");
        let good_sig_other_body =
            converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &tampered);
        assert_eq!(app.post_raw(&body, Some(&good_sig_other_body)).await.0, 401);
        assert_eq!(app.post_raw(&body, Some("sha256=nothex")).await.0, 401);
        // A header that is not text is there and wrong, not missing.
        let mut resp = app
            .client
            .post(format!("{}/webhooks/whatsapp", app.base))
            .insert_header((
                "X-Hub-Signature-256",
                awc::http::header::HeaderValue::from_bytes(b"sha256=\xff\xfe").unwrap(),
            ))
            .send_body(body.clone())
            .await
            .unwrap();
        let err: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert!(
            !err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("missing"),
            "{err}"
        );
        // Refused before anything is queued: the answers are the whole story.
        assert!(app.all_messages(&app.a).await.is_empty());
        let (_, pool) = app.pool();
        let mut conn = pool.get().unwrap();
        assert_eq!(converra::storage::inbox::backlog(&mut conn).unwrap(), 0);
        assert_eq!(app.metric("converra_signature_failures_total").await, 5.0);
    }
}

#[actix_rt::test]
async fn oversized_bodies_get_413_with_a_json_error() {
    let app = TestApp::start_with(&Backend::Sqlite, Default::default(), |s| {
        s.server.max_body_bytes = 64 * 1024
    })
    .await;
    let big = vec![b'x'; 100 * 1024];
    let signature = converra::whatsapp::signature::sign(APP_SECRET.as_bytes(), &big);
    let (status, body) = app.post_raw(&big, Some(&signature)).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[actix_rt::test]
async fn correctly_signed_garbage_and_unknown_fields_are_stored_raw_and_acknowledged() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let (status, _) = app.post_signed(b"this is not json \xff").await;
        assert_eq!(status, 200);
        let (status, _) = app.post_signed(br#"{"object":"page","entry":[]}"#).await;
        assert_eq!(status, 200);
        let other = serde_json::to_vec(&envelope(vec![
            json!({"field": "message_template_status_update",
            "value": {"event": "APPROVED", "message_template_id": 12345}}),
        ]))
        .unwrap();
        let (status, body) = app.post_signed(&other).await;
        assert_eq!(status, 200);
        assert_eq!(body["stored_raw"], 1);
        let unrouted = text_webhook("999999", "4915111", "wamid.unrouted", "who owns me");
        let (status, body) = app.post_signed(&unrouted).await;
        assert_eq!(status, 200);
        assert_eq!(body["unrouted"], 1);
        let (keyring, pool) = app.pool();
        let mut conn = pool.get().unwrap();
        use converra::storage::inbox::{count_webhook_events, webhook_event_payloads};
        assert_eq!(count_webhook_events(&mut conn, "not_json").unwrap(), 1);
        assert_eq!(count_webhook_events(&mut conn, "not_envelope").unwrap(), 1);
        assert_eq!(count_webhook_events(&mut conn, "other_field").unwrap(), 1);
        assert_eq!(count_webhook_events(&mut conn, "unrouted").unwrap(), 1);
        let raw = webhook_event_payloads(&mut conn, &keyring, "not_json").unwrap();
        assert_eq!(raw[0], b"this is not json \xff", "stored byte for byte");
        assert_eq!(app.metric("converra_unrouted_total").await, 1.0);
        assert_eq!(app.metric("converra_raw_stored_total").await, 3.0);
    }
}

/// One message of every type Meta documents, sent in one batch.
fn every_message_type(from: &str) -> Vec<Value> {
    let m = |id: &str, kind: &str, content: Value| {
        let mut v = json!({"from": from, "id": id, "timestamp": "1764000100", "type": kind});
        if !content.is_null() {
            v[kind] = content;
        }
        v
    };
    vec![
        m("wamid.text", "text", json!({"body": "Grüße aus Köln 👋"})),
        m(
            "wamid.image",
            "image",
            json!({"caption": "look", "mime_type": "image/jpeg", "sha256": "abc=", "id": "111"}),
        ),
        m(
            "wamid.audio",
            "audio",
            json!({"mime_type": "audio/ogg; codecs=opus", "sha256": "def=", "id": "222", "voice": true}),
        ),
        m(
            "wamid.video",
            "video",
            json!({"mime_type": "video/mp4", "sha256": "ghi=", "id": "333", "caption": "clip"}),
        ),
        m(
            "wamid.document",
            "document",
            json!({"filename": "invoice.pdf", "mime_type": "application/pdf", "sha256": "jkl=", "id": "444", "caption": "inv"}),
        ),
        m(
            "wamid.sticker",
            "sticker",
            json!({"mime_type": "image/webp", "sha256": "mno=", "id": "555", "animated": false}),
        ),
        m(
            "wamid.location",
            "location",
            json!({"latitude": 50.9375, "longitude": 6.9603, "name": "Dom", "address": "Domkloster 4", "url": "https://example.com"}),
        ),
        m(
            "wamid.contacts",
            "contacts",
            json!([{"name": {"formatted_name": "Ann Example", "first_name": "Ann"},
            "phones": [{"phone": "+1 555 0100", "wa_id": "15550100", "type": "CELL"}],
            "emails": [{"email": "ann@example.com", "type": "WORK"}], "org": {"company": "Ex"}, "birthday": "1990-01-01"}]),
        ),
        m(
            "wamid.button_reply",
            "interactive",
            json!({"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}}),
        ),
        m(
            "wamid.list_reply",
            "interactive",
            json!({"type": "list_reply", "list_reply": {"id": "r1", "title": "Row", "description": "first"}}),
        ),
        m(
            "wamid.nfm_reply",
            "interactive",
            json!({"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent", "response_json": "{\"flow_token\":\"t\"}"}}),
        ),
        m(
            "wamid.call_perm",
            "interactive",
            json!({"type": "call_permission_reply", "call_permission_reply": {"response": "accept", "is_permanent": false, "expiration_timestamp": 1764600000, "response_source": "user_action"}}),
        ),
        m(
            "wamid.button",
            "button",
            json!({"payload": "STOP", "text": "Stop promotions"}),
        ),
        m(
            "wamid.reaction",
            "reaction",
            json!({"message_id": "wamid.text", "emoji": "👍"}),
        ),
        m(
            "wamid.order",
            "order",
            json!({"catalog_id": "cat1", "text": "pls", "product_items": [{"product_retailer_id": "sku1", "quantity": 2, "item_price": 9.99, "currency": "EUR"}]}),
        ),
        m(
            "wamid.system",
            "system",
            json!({"body": "User changed number", "wa_id": from, "type": "user_changed_number", "new_wa_id": "4915999"}),
        ),
        m("wamid.welcome", "request_welcome", Value::Null),
        m(
            "wamid.edit",
            "edit",
            json!({"original_message_id": "wamid.text", "message": {"type": "text", "text": {"body": "edited"}}}),
        ),
        m("wamid.to_revoke", "text", json!({"body": "oops, secret"})),
        m(
            "wamid.revoke",
            "revoke",
            json!({"original_message_id": "wamid.to_revoke"}),
        ),
        json!({"from": from, "id": "wamid.unsupported", "timestamp": "1764000100", "type": "unsupported",
            "errors": [{"code": 131051, "title": "Message type unknown", "message": "Message type unknown",
                        "error_data": {"details": "Message type is currently not supported."}}]}),
        json!({"from": from, "id": "wamid.hologram", "timestamp": "1764000100", "type": "hologram", "hologram": {"depth": 3}}),
        json!({"from": from, "id": "wamid.reply", "timestamp": "1764000100", "type": "text", "text": {"body": "replying"},
            "context": {"from": "15550000000", "id": "wamid.out.1"}}),
        json!({"from": from, "id": "wamid.forwarded", "timestamp": "1764000100", "type": "text", "text": {"body": "fwd"},
            "context": {"forwarded": true, "frequently_forwarded": true}}),
        json!({"from": from, "id": "wamid.ad", "timestamp": "1764000100", "type": "text", "text": {"body": "from an ad"},
            "referral": {"source_url": "https://fb.me/x", "source_id": "ad1", "source_type": "ad", "headline": "H", "body": "B",
                         "media_type": "image", "image_url": "https://example.com/i.jpg", "ctwa_clid": "clid"}}),
    ]
}

#[actix_rt::test]
async fn every_message_type_is_stored_field_by_field() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let sent = every_message_type("4917000001");
        let body = serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_A,
            vec![contact("4917000001", "Zoë")],
            sent.clone(),
        )]))
        .unwrap();
        let (status, ack) = app.post_signed(&body).await;
        assert_eq!(status, 200, "{ack}");
        assert_eq!(ack["new"], sent.len());
        let stored = app.wait_messages(&app.a, sent.len()).await;
        assert_eq!(stored.len(), sent.len());
        for original in &sent {
            let wamid = original["id"].as_str().unwrap();
            let kind = original["type"].as_str().unwrap();
            let got = stored
                .iter()
                .find(|m| m["wamid"] == wamid)
                .unwrap_or_else(|| panic!("{wamid} missing"));
            assert_eq!(got["direction"], "inbound", "{wamid}");
            assert_eq!(got["type"], kind, "{wamid}");
            assert_eq!(got["timestamp"], "2025-11-24T16:01:40Z", "{wamid}");
            let expected_content = original.get(kind).cloned().unwrap_or(Value::Null);
            if wamid == "wamid.to_revoke" {
                assert_eq!(got["content"], Value::Null, "revoked content is removed");
                assert_eq!(got["revoked"], true);
            } else {
                assert_eq!(got["content"], expected_content, "{wamid}");
                assert_eq!(got["revoked"], false, "{wamid}");
            }
            for extra in ["context", "referral", "errors"] {
                assert_eq!(
                    got[extra],
                    original.get(extra).cloned().unwrap_or(Value::Null),
                    "{wamid} {extra}"
                );
            }
        }
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0]["wa_id"], "4917000001");
        assert_eq!(contacts[0]["profile_name"], "Zoë");
    }
}

#[actix_rt::test]
async fn a_revoke_before_its_message_still_removes_the_content() {
    let app = TestApp::start(&Backend::Sqlite).await;
    let from = "4917000002";
    let revoke = json!({"from": from, "id": "wamid.r", "timestamp": "1764000200", "type": "revoke", "revoke": {"original_message_id": "wamid.late"}});
    app.post_signed(
        &serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_A,
            vec![contact(from, "R")],
            vec![revoke],
        )]))
        .unwrap(),
    )
    .await;
    app.wait_messages(&app.a, 1).await;
    app.post_signed(&text_webhook(
        NUMBER_A,
        from,
        "wamid.late",
        "deleted before we saw it",
    ))
    .await;
    // Two rows exist as soon as the revoke is applied (it and the tombstone): wait
    // for the late original itself to be processed.
    app.wait_processed().await;
    let stored = app.all_messages(&app.a).await;
    let late = stored.iter().find(|m| m["wamid"] == "wamid.late").unwrap();
    assert_eq!(late["content"], Value::Null);
    assert_eq!(late["revoked"], true);
    assert_eq!(
        late["type"], "text",
        "the tombstone learns the message's type"
    );
    assert_eq!(stored.len(), 2, "the revoke and the (contentless) original");
}

#[actix_rt::test]
async fn a_batched_post_stores_every_entry_change_and_message() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let mut entries = Vec::new();
        let mut expected = Vec::new();
        for e in 0..3 {
            let mut changes = Vec::new();
            for c in 0..3 {
                let from = format!("49170{e}{c}");
                let messages: Vec<Value> = (0..4)
                    .map(|m| {
                        let wamid = format!("wamid.batch.{e}.{c}.{m}");
                        expected.push(wamid.clone());
                        text(&from, &wamid, &format!("message {m}"))
                    })
                    .collect();
                changes.push(messages_change(
                    NUMBER_A,
                    vec![contact(&from, "Batch")],
                    messages,
                ));
            }
            entries.push(json!({"id": format!("WABA{e}"), "changes": changes}));
        }
        let body =
            serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": entries}))
                .unwrap();
        let (status, ack) = app.post_signed(&body).await;
        assert_eq!(status, 200);
        assert_eq!(ack["new"], 36);
        let stored = app.wait_messages(&app.a, 36).await;
        for wamid in expected {
            assert_eq!(
                stored.iter().filter(|m| m["wamid"] == wamid).count(),
                1,
                "{wamid}"
            );
        }
        assert_eq!(app.all("/v1/conversations", &app.a.api_key).await.len(), 9);
    }
}

#[actix_rt::test]
async fn non_ascii_text_is_verified_and_stored_both_raw_and_escaped() {
    let app = TestApp::start(&Backend::Sqlite).await;
    let raw_utf8 = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"W","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1","phone_number_id":"{NUMBER_A}"}},"contacts":[{{"wa_id":"81900","profile":{{"name":"山田"}}}}],"messages":[{{"from":"81900","id":"wamid.utf8","timestamp":"1764000000","type":"text","text":{{"body":"こんにちは ✓ — café"}}}}]}}}}]}}]}}"#
    );
    let escaped = raw_utf8.replace("wamid.utf8", "wamid.escaped").replace(
        "こんにちは ✓ — café",
        "\\u3053\\u3093\\u306b\\u3061\\u306f \\u2713 \\u2014 caf\\u00e9",
    );
    assert_eq!(app.post_signed(raw_utf8.as_bytes()).await.0, 200);
    assert_eq!(app.post_signed(escaped.as_bytes()).await.0, 200);
    let stored = app.wait_messages(&app.a, 2).await;
    for wamid in ["wamid.utf8", "wamid.escaped"] {
        let m = stored.iter().find(|m| m["wamid"] == wamid).unwrap();
        assert_eq!(m["content"]["body"], "こんにちは ✓ — café");
    }
    let contacts = app.all("/v1/contacts", &app.a.api_key).await;
    assert_eq!(contacts[0]["profile_name"], "山田");
}

#[actix_rt::test]
async fn a_username_only_contact_is_keyed_by_user_id_and_merged_when_the_number_appears() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let user_only = json!({"user_id": "US.13491208655302741918", "profile": {"name": "Kim", "username": "@kim"}});
        let message = json!({"from_user_id": "US.13491208655302741918", "id": "wamid.u1", "timestamp": "1764000000", "type": "text", "text": {"body": "no number"}});
        let body = serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_A,
            vec![user_only],
            vec![message],
        )]))
        .unwrap();
        assert_eq!(app.post_signed(&body).await.0, 200);
        app.wait_messages(&app.a, 1).await;
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0]["user_id"], "US.13491208655302741918");
        assert_eq!(contacts[0]["wa_id"], Value::Null);
        assert_eq!(contacts[0]["username"], "@kim");
        // A phone-number-only contact, then a webhook naming both: one contact remains.
        app.post_signed(&text_webhook(
            NUMBER_A,
            "15551234567",
            "wamid.p1",
            "number only",
        ))
        .await;
        app.wait_messages(&app.a, 2).await;
        assert_eq!(app.all("/v1/contacts", &app.a.api_key).await.len(), 2);
        let both = json!({"user_id": "US.13491208655302741918", "wa_id": "15551234567", "profile": {"name": "Kim"}});
        let message = json!({"from": "15551234567", "from_user_id": "US.13491208655302741918", "id": "wamid.b1", "timestamp": "1764000001", "type": "text", "text": {"body": "both"}});
        let body = serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_A,
            vec![both],
            vec![message],
        )]))
        .unwrap();
        app.post_signed(&body).await;
        app.wait_processed().await;
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        assert_eq!(contacts.len(), 1, "{contacts:?}");
        assert_eq!(contacts[0]["wa_id"], "15551234567");
        assert_eq!(contacts[0]["user_id"], "US.13491208655302741918");
        let conversations = app.all("/v1/conversations", &app.a.api_key).await;
        assert_eq!(conversations.len(), 1);
        assert_eq!(app.all_messages(&app.a).await.len(), 3);
    }
}

/// A webhook's events are applied before its 200: a client that reads right after
/// the acknowledgement sees the message, its conversation and its window.
#[actix_rt::test]
async fn an_acknowledged_message_is_readable_at_once() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let body = text_webhook(NUMBER_A, "4915333", "wamid.now", "right away");
        let (status, ack) = app.post_signed(&body).await;
        assert_eq!((status, ack["new"].clone()), (200, json!(1)), "{ack}");
        let messages = app.all_messages(&app.a).await;
        assert_eq!(messages.len(), 1, "{backend:?}: {messages:?}");
        assert_eq!(messages[0]["content"], json!({"body": "right away"}));
        let conversations = app.all("/v1/conversations", &app.a.api_key).await;
        assert!(
            conversations[0]["window_ends_at"].is_string(),
            "{backend:?}: {conversations:?}"
        );
        assert_eq!(
            app.metric("converra_messages_ingested_total").await,
            1.0,
            "{backend:?}"
        );
    }
}

#[actix_rt::test]
async fn duplicates_are_stored_once() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let body = text_webhook(NUMBER_A, "4915222", "wamid.dup", "once");
        assert_eq!(app.post_signed(&body).await.1["new"], 1);
        let (status, ack) = app.post_signed(&body).await;
        assert_eq!(status, 200);
        assert_eq!(ack["duplicates"], 1);
        // The same message inside a different payload, beside a new one.
        let other = serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_A,
            vec![contact("4915222", "Dup")],
            vec![
                text("4915222", "wamid.dup", "once"),
                text("4915222", "wamid.new", "twice"),
            ],
        )]))
        .unwrap();
        let (_, ack) = app.post_signed(&other).await;
        assert_eq!(ack["new"], 1);
        assert_eq!(ack["duplicates"], 1);
        let stored = app.wait_messages(&app.a, 2).await;
        app.wait_processed().await;
        let stored_again = app.all_messages(&app.a).await;
        assert_eq!(stored.len(), 2);
        assert_eq!(stored_again.len(), 2);
        assert_eq!(app.metric("converra_duplicates_total").await, 2.0);
    }
}

#[actix_rt::test]
async fn statuses_out_of_order_end_in_the_highest_state() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let status = |wamid: &str, status: &str, ts: &str, extra: Value| {
            let mut s = json!({"id": wamid, "status": status, "timestamp": ts, "recipient_id": "4915333",
                "recipient_user_id": "DE.4915333"});
            if let Value::Object(map) = extra {
                for (k, v) in map {
                    s[k] = v;
                }
            }
            s
        };
        let pricing = json!({"pricing": {"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"},
            "conversation": {"id": "conv1", "expiration_timestamp": "1764086400", "origin": {"type": "utility"}}});
        let batches = vec![
            vec![status("wamid.out.read", "read", "1764000300", Value::Null)],
            vec![status(
                "wamid.out.read",
                "delivered",
                "1764000200",
                pricing.clone(),
            )],
            vec![status(
                "wamid.out.read",
                "sent",
                "1764000100",
                pricing.clone(),
            )],
            vec![
                status("wamid.out.failed", "sent", "1764000100", Value::Null),
                status(
                    "wamid.out.failed",
                    "failed",
                    "1764000150",
                    json!({"errors": [{"code": 131047, "title": "Re-engagement message",
                    "message": "Re-engagement message", "error_data": {"details": "More than 24 hours have passed"}}]}),
                ),
            ],
            vec![
                status("wamid.out.played", "played", "1764000400", Value::Null),
                status("wamid.out.played", "read", "1764000390", Value::Null),
            ],
            vec![
                status(
                    "wamid.out.late_fail",
                    "delivered",
                    "1764000500",
                    Value::Null,
                ),
                status(
                    "wamid.out.late_fail",
                    "failed",
                    "1764000510",
                    json!({"errors": [{"code": 131026, "title": "Message undeliverable"}]}),
                ),
            ],
        ];
        for statuses in batches {
            let body =
                serde_json::to_vec(&envelope(vec![statuses_change(NUMBER_A, statuses)])).unwrap();
            assert_eq!(app.post_signed(&body).await.0, 200);
        }
        // The same status twice changes nothing.
        let again = serde_json::to_vec(&envelope(vec![statuses_change(
            NUMBER_A,
            vec![status("wamid.out.read", "read", "1764000300", Value::Null)],
        )]))
        .unwrap();
        assert_eq!(app.post_signed(&again).await.1["duplicates"], 1);
        app.wait_processed().await;
        let stored = app.all_messages(&app.a).await;
        let state = |wamid: &str| stored.iter().find(|m| m["wamid"] == wamid).unwrap().clone();
        assert_eq!(state("wamid.out.read")["status"], "read");
        assert_eq!(state("wamid.out.read")["direction"], "outbound");
        assert_eq!(state("wamid.out.failed")["status"], "failed");
        assert_eq!(
            state("wamid.out.failed")["error"],
            json!({"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message"})
        );
        assert_eq!(state("wamid.out.played")["status"], "played");
        assert_eq!(
            state("wamid.out.late_fail")["status"],
            "delivered",
            "failed after delivered does not win"
        );
        let (keyring, pool) = app.pool();
        let mut conn = pool.get().unwrap();
        let history = converra::storage::messages::status_history(
            &mut conn,
            &keyring,
            &converra::ids::TenantId(app.a.id.clone()),
            &"wamid.out.read".into(),
        )
        .unwrap();
        assert_eq!(
            history.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
            vec!["sent", "delivered", "read"]
        );
    }
}

#[actix_rt::test]
async fn user_preferences_record_marketing_stop_and_resume() {
    let app = TestApp::start(&Backend::Sqlite).await;
    let pref = |value: &str, ts: i64| {
        serde_json::to_vec(&envelope(vec![json!({"field": "user_preferences", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "1", "phone_number_id": NUMBER_A},
            "contacts": [{"wa_id": "4915444", "profile": {"name": "P"}}],
            "user_preferences": [{"wa_id": "4915444", "detail": "User requested to stop marketing messages",
                "category": "marketing_messages", "value": value, "timestamp": ts}]}})]))
        .unwrap()
    };
    assert_eq!(app.post_signed(&pref("stop", 1764000000)).await.0, 200);
    app.wait_processed().await;
    let contacts = app.all("/v1/contacts", &app.a.api_key).await;
    assert_eq!(contacts[0]["marketing_opt_out"], true);
    // An older "resume" arriving late does not undo a newer "stop".
    app.post_signed(&pref("resume", 1763000000)).await;
    app.wait_processed().await;
    assert_eq!(
        app.all("/v1/contacts", &app.a.api_key).await[0]["marketing_opt_out"],
        true
    );
    app.post_signed(&pref("resume", 1765000000)).await;
    app.wait_processed().await;
    assert_eq!(
        app.all("/v1/contacts", &app.a.api_key).await[0]["marketing_opt_out"],
        false
    );
}

/// Updates Meta sent for a number before anyone registered it were acknowledged and
/// kept as unrouted (Meta will not send them again): registering the number gives them
/// to its tenant, in the order they came, and to nobody else.
#[actix_rt::test]
async fn updates_for_a_number_registered_later_reach_its_new_owner() {
    use converra::storage::inbox::count_webhook_events;
    use converra::storage::tenants::{self, NewPhoneNumber};

    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let late_number = "777777";
        for (wamid, words) in [
            ("wamid.early.1", "before it was ours"),
            ("wamid.early.2", "me too"),
        ] {
            let body = text_webhook(late_number, "4915333", wamid, words);
            let (status, ack) = app.post_signed(&body).await;
            assert_eq!(status, 200);
            assert_eq!(ack["unrouted"], 1, "{backend:?}");
        }
        let (keyring, pool) = app.pool();
        let mut conn = pool.get().unwrap();
        let registered = tenants::add_phone_number(
            &mut conn,
            &keyring,
            &NewPhoneNumber {
                tenant_id: &app.a.id,
                phone_number_id: late_number,
                display_phone_number: "15550000777",
                waba_id: "WABA",
                access_token: "EAAG-late-token",
            },
            2,
        )
        .unwrap();
        assert_eq!(registered.adopted_updates, 2, "{backend:?}");
        assert_eq!(count_webhook_events(&mut conn, "unrouted").unwrap(), 0);

        let messages = app.wait_messages(&app.a, 2).await;
        let wamids: Vec<&str> = messages
            .iter()
            .map(|m| m["wamid"].as_str().unwrap())
            .collect();
        assert_eq!(wamids, ["wamid.early.1", "wamid.early.2"], "{backend:?}");
        assert_eq!(
            messages[0]["content"]["body"], "before it was ours",
            "{backend:?}: decrypted as any other message"
        );
        assert!(app.all_messages(&app.b).await.is_empty(), "{backend:?}");
    }
}

/// One step of a path into a JSON document.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every path below the root, parents before children.
fn paths(value: &Value) -> Vec<Vec<Step>> {
    fn walk(value: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        let children: Vec<(Step, &Value)> = match value {
            Value::Object(map) => map.iter().map(|(k, v)| (Step::Key(k.clone()), v)).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (Step::Index(i), v))
                .collect(),
            _ => Vec::new(),
        };
        for (step, child) in children {
            at.push(step);
            out.push(at.clone());
            walk(child, at, out);
            at.pop();
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// Replaces the node at `path` (or removes it, with `None`).
fn mutate(document: &Value, path: &[Step], replacement: Option<&Value>) -> Value {
    let mut copy = document.clone();
    let (last, parents) = path.split_last().expect("not the root");
    let mut node = &mut copy;
    for step in parents {
        node = match step {
            Step::Key(k) => &mut node[k.as_str()],
            Step::Index(i) => &mut node[*i],
        };
    }
    match (last, replacement) {
        (Step::Key(k), Some(v)) => node[k.as_str()] = v.clone(),
        (Step::Index(i), Some(v)) => node[*i] = v.clone(),
        (Step::Key(k), None) => {
            node.as_object_mut().map(|m| m.remove(k));
        }
        (Step::Index(i), None) => {
            node.as_array_mut().map(|a| a.remove(*i));
        }
    }
    copy
}

/// Whether anything in the document sits in a list of messages, statuses or
/// preferences (a variant whose mutation removed them all carries nothing to keep).
fn carries_an_item(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (["messages", "statuses", "user_preferences"].contains(&k.as_str())
                && v.as_array().is_some_and(|items| !items.is_empty()))
                || carries_an_item(v)
        }),
        Value::Array(items) => items.iter().any(carries_an_item),
        _ => false,
    }
}

/// Gives every message and status id of a webhook a suffix, so that each variant is
/// applied as new instead of being caught as a redelivery.
fn with_fresh_ids(webhook: &Value, suffix: usize) -> Value {
    let mut copy = webhook.clone();
    // `pointer_mut`, not indexing: indexing a missing key would add it as null.
    let changes = copy.pointer_mut("/entry/0/changes");
    for change in changes.and_then(Value::as_array_mut).into_iter().flatten() {
        for list in ["messages", "statuses"] {
            let items = change.pointer_mut(&format!("/value/{list}"));
            for item in items.and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(id) = item.get("id").and_then(Value::as_str) {
                    item["id"] = json!(format!("{id}.v{suffix}"));
                }
            }
        }
    }
    copy
}

/// Meta documents its shapes, but a proxy, a new API version or a bug can send any of
/// them with a field of another type, or without it. Every field of every documented
/// shape, replaced by each JSON type or removed, one at a time, correctly signed: each
/// webhook is answered 200 and accounts for what it carried (applied, duplicate,
/// unrouted or stored raw, never nothing), every message or status acknowledged as new
/// can be read through the API, no actor panics, nothing is left stuck in the inbox,
/// and the daemon keeps serving.
#[actix_rt::test]
async fn a_field_of_any_type_or_none_anywhere_is_kept_and_panics_nothing() {
    let from = "4917000077";
    let mut seeds: Vec<Value> = every_message_type(from)
        .into_iter()
        .map(|message| {
            envelope(vec![messages_change(
                NUMBER_A,
                vec![contact(from, "Mutant")],
                vec![message],
            )])
        })
        .collect();
    seeds.push(envelope(vec![statuses_change(
        NUMBER_A,
        vec![json!({"id": "wamid.out.m", "status": "failed", "timestamp": "1764000300",
            "recipient_id": from, "recipient_user_id": "DE.4917000077",
            "errors": [{"code": 131047, "title": "Re-engagement message",
                "error_data": {"details": "More than 24 hours have passed"}}],
            "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility"},
            "conversation": {"id": "c1", "expiration_timestamp": "1764086400", "origin": {"type": "utility"}}})],
    )]));
    seeds.push(envelope(vec![
        json!({"field": "user_preferences", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1", "phone_number_id": NUMBER_A},
        "contacts": [{"wa_id": from, "profile": {"name": "P"}}],
        "user_preferences": [{"wa_id": from, "detail": "stop", "category": "marketing_messages",
            "value": "stop", "timestamp": 1764000000}]}}),
    ]));
    let replacements = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5e300),
        json!(u64::MAX),
        json!(""),
        json!("ü\u{0}"),
        json!([]),
        json!({}),
    ];
    let message_item = |path: &[Step]| {
        matches!(path.get(5), Some(Step::Key(k)) if ["messages", "statuses", "user_preferences"].contains(&k.as_str()))
            && path.len() > 6
    };
    let mut variants = Vec::new();
    for (n, seed) in seeds.iter().enumerate() {
        for path in paths(seed) {
            // The envelope's own fields are mutated in the first seed only; every
            // seed's item is mutated field by field.
            if n > 0 && !message_item(&path) {
                continue;
            }
            for replacement in replacements.iter().map(Some).chain([None]) {
                let variant = with_fresh_ids(seed, variants.len());
                variants.push(mutate(&variant, &path, replacement));
            }
        }
    }
    assert!(variants.len() > 1_500, "{} variants", variants.len());

    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let app = &app;
        let answers: Vec<(usize, u16, Value)> =
            futures_util::stream::iter(variants.iter().enumerate())
                .map(|(n, variant)| async move {
                    let (status, ack) =
                        app.post_signed(&serde_json::to_vec(variant).unwrap()).await;
                    (n, status, ack)
                })
                .buffer_unordered(16)
                .collect()
                .await;
        let mut acknowledged = Vec::new();
        for (n, status, ack) in answers {
            let variant = &variants[n];
            // A message, or a status (which records its outbound message).
            let value = &variant["entry"][0]["changes"][0]["value"];
            let item = [&value["messages"][0], &value["statuses"][0]]
                .into_iter()
                .find(|item| item.is_object())
                .unwrap_or(&Value::Null);
            if let (Some(wamid), Some(1)) = (item["id"].as_str(), ack["new"].as_u64()) {
                // PostgreSQL's text holds no NUL: both backends store U+FFFD instead.
                acknowledged.push(wamid.replace('\0', "\u{FFFD}"));
            }
            assert_eq!(status, 200, "{variant}\n{ack}");
            let count = |k: &str| ack[k].as_u64().unwrap_or_else(|| panic!("{k} in {ack}"));
            assert_eq!(
                count("received"),
                count("new") + count("duplicates") + count("unrouted"),
                "{variant}\n{ack}"
            );
            if carries_an_item(variant) {
                assert!(
                    count("received") + count("stored_raw") >= 1,
                    "nothing kept of {variant}\n{ack}"
                );
            }
        }
        app.wait_processed().await;
        assert_eq!(app.metric("converra_actor_restarts_total").await, 0.0);
        // A message acknowledged as new is a message the business can read.
        let stored: std::collections::HashSet<String> = app
            .all_messages(&app.a)
            .await
            .iter()
            .filter_map(|m| m["wamid"].as_str().map(str::to_string))
            .collect();
        for wamid in &acknowledged {
            assert!(stored.contains(wamid), "{wamid} acknowledged, not stored");
        }
        let (status, _) = app.get("/healthz", None).await;
        assert_eq!(status, 200);
        let (status, ack) = app
            .post_signed(&text_webhook(NUMBER_A, from, "wamid.after", "still here"))
            .await;
        assert_eq!((status, ack["new"].as_u64()), (200, Some(1)));
        let stored = app.all_messages(&app.a).await;
        assert!(stored.iter().any(|m| m["wamid"] == "wamid.after"));
    }
}

/// Sends `head` (and `body`) over a raw connection and returns what the server answered
/// within `wait`, or an empty string.
fn raw_exchange(base: &str, head: &str, body: &[u8], wait: std::time::Duration) -> String {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// An unsigned POST is refused from its head alone: the server does not wait for (or
/// hold in memory) a body that could never be accepted. A signed one whose body does
/// not arrive within `server.client_timeout_ms` is answered 408, naming the setting.
#[actix_rt::test]
async fn unsigned_posts_are_refused_before_their_body_and_slow_bodies_time_out() {
    let app = TestApp::start_with(&Backend::Sqlite, Default::default(), |settings| {
        settings.server.client_timeout_ms = 300;
    })
    .await;
    let base = app.base.clone();
    let answer = actix_rt::task::spawn_blocking(move || {
        let unsigned = raw_exchange(
            &base,
            "POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 4000000\r\n\r\n",
            b"{",
            std::time::Duration::from_secs(2),
        );
        let slow = raw_exchange(
            &base,
            "POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             X-Hub-Signature-256: sha256=00\r\nContent-Length: 100\r\n\r\n",
            b"{\"object\":",
            std::time::Duration::from_secs(3),
        );
        (unsigned, slow)
    })
    .await
    .unwrap();
    let (unsigned, slow) = answer;
    assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");
    assert!(unsigned.contains("X-Hub-Signature-256"), "{unsigned}");
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    assert!(slow.contains("server.client_timeout_ms"), "{slow}");
}

/// Posts each webhook (one change on NUMBER_A with `contacts` and `messages`), each
/// answered 200, then waits until nothing is left unprocessed.
async fn post_changes(app: &TestApp, changes: &[(Vec<Value>, Vec<Value>)]) {
    for (contacts, messages) in changes {
        let body = serde_json::to_vec(&envelope(vec![messages_change(
            NUMBER_A,
            contacts.clone(),
            messages.clone(),
        )]))
        .unwrap();
        let (status, answer) = app.post_signed(&body).await;
        assert_eq!(status, 200, "{answer}");
    }
}

fn text_from(from: Option<&str>, user_id: Option<&str>, wamid: &str) -> Value {
    let mut message =
        json!({"id": wamid, "timestamp": "1764000000", "type": "text", "text": {"body": wamid}});
    if let Some(from) = from {
        message["from"] = json!(from);
    }
    if let Some(user_id) = user_id {
        message["from_user_id"] = json!(user_id);
    }
    message
}

fn contact_of(wa_id: Option<&str>, user_id: Option<&str>) -> Value {
    let mut contact = json!({"profile": {"name": "Ana"}});
    if let Some(wa_id) = wa_id {
        contact["wa_id"] = json!(wa_id);
    }
    if let Some(user_id) = user_id {
        contact["user_id"] = json!(user_id);
    }
    contact
}

/// After a merge: one contact, every conversation its own, every message readable.
async fn assert_merged(app: &TestApp, wamids: &[&str], user_id: &str) {
    app.wait_processed().await;
    let (_, pool) = app.pool();
    let parked =
        converra::storage::with_conn(&pool, converra::storage::inbox::list_parked).unwrap();
    assert!(parked.is_empty(), "{parked:#?}");
    let messages = app.wait_messages(&app.a, wamids.len()).await;
    let contacts = app.all("/v1/contacts", &app.a.api_key).await;
    assert_eq!(contacts.len(), 1, "{contacts:#?}");
    assert_eq!(contacts[0]["user_id"], user_id, "{contacts:#?}");
    let survivor = contacts[0]["id"].as_str().unwrap();
    for conversation in app.all("/v1/conversations", &app.a.api_key).await {
        assert_eq!(conversation["contact_id"], survivor, "{conversation}");
    }
    for wamid in wamids {
        let found = messages.iter().find(|m| m["wamid"] == *wamid);
        let found = found.unwrap_or_else(|| panic!("{wamid} not readable: {messages:#?}"));
        assert_eq!(found["content"]["body"], *wamid);
    }
    assert_eq!(messages.len(), wamids.len());
    assert_eq!(app.metric("converra_inbox_backlog").await, 0.0);
}

/// Contacts merge as Meta's payloads and the SDKs write them (a user_id and a phone
/// number seen apart, then together; a `from` that differs from the contact's
/// `wa_id`), and every message sent afterwards, in any of those shapes, is applied
/// under the surviving contact and readable.
#[actix_rt::test]
async fn merged_contacts_keep_every_later_message_readable() {
    const U: &str = "BR.1203948572";
    const W: &str = "5511987654321";
    const F: &str = "551187654321";
    for backend in backends() {
        // A user_id-only contact later seen with a wa_id.
        let app = TestApp::start(&backend).await;
        post_changes(
            &app,
            &[
                (
                    vec![contact_of(None, Some(U))],
                    vec![text_from(None, Some(U), "wamid.m1.1")],
                ),
                (
                    vec![contact_of(Some(W), Some(U))],
                    vec![text_from(Some(W), Some(U), "wamid.m1.2")],
                ),
                (
                    vec![contact_of(Some(W), None)],
                    vec![text_from(Some(W), None, "wamid.m1.3")],
                ),
                (
                    vec![contact_of(None, Some(U))],
                    vec![text_from(None, Some(U), "wamid.m1.4")],
                ),
            ],
        )
        .await;
        assert_merged(
            &app,
            &["wamid.m1.1", "wamid.m1.2", "wamid.m1.3", "wamid.m1.4"],
            U,
        )
        .await;
        drop(app);

        // A wa_id contact later seen with a user_id, the user_id first seen alone in
        // between: two contacts, merged by the message that names both; the older
        // one survives, with the other's identifiers.
        let app = TestApp::start(&backend).await;
        let first_shape = (
            vec![contact_of(Some(W), None)],
            vec![text_from(Some(W), None, "wamid.m2.1")],
        );
        post_changes(&app, &[first_shape]).await;
        app.wait_messages(&app.a, 1).await;
        let first = app.all("/v1/contacts", &app.a.api_key).await[0]["id"].clone();
        post_changes(
            &app,
            &[
                (
                    vec![contact_of(None, Some(U))],
                    vec![text_from(None, Some(U), "wamid.m2.0")],
                ),
                (
                    vec![contact_of(Some(W), Some(U))],
                    vec![text_from(Some(W), Some(U), "wamid.m2.2")],
                ),
                (
                    vec![contact_of(None, Some(U))],
                    vec![text_from(None, Some(U), "wamid.m2.3")],
                ),
                (
                    vec![contact_of(Some(W), None)],
                    vec![text_from(Some(W), None, "wamid.m2.4")],
                ),
            ],
        )
        .await;
        assert_merged(
            &app,
            &[
                "wamid.m2.0",
                "wamid.m2.1",
                "wamid.m2.2",
                "wamid.m2.3",
                "wamid.m2.4",
            ],
            U,
        )
        .await;
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        assert_eq!(contacts[0]["id"], first, "the older contact survives");
        assert_eq!(contacts[0]["wa_id"], W);
        assert_eq!(contacts[0]["profile_name"], "Ana");
        drop(app);

        // A `from` that differs from the contact's wa_id (Brazil's ninth digit), and
        // more messages from that `from` afterwards.
        let app = TestApp::start(&backend).await;
        post_changes(
            &app,
            &[
                (
                    vec![contact_of(Some(W), None)],
                    vec![text_from(Some(W), None, "wamid.m3.1")],
                ),
                (
                    vec![contact_of(Some(W), Some(U))],
                    vec![text_from(Some(F), None, "wamid.m3.2")],
                ),
                (
                    vec![contact_of(Some(W), Some(U))],
                    vec![text_from(Some(W), Some(U), "wamid.m3.3")],
                ),
                (
                    vec![contact_of(Some(W), Some(U))],
                    vec![text_from(Some(F), None, "wamid.m3.4")],
                ),
                (
                    vec![contact_of(Some(W), Some(U))],
                    vec![text_from(Some(F), None, "wamid.m3.5")],
                ),
                (
                    vec![contact_of(Some(W), None)],
                    vec![text_from(Some(W), None, "wamid.m3.6")],
                ),
            ],
        )
        .await;
        let wamids = [
            "wamid.m3.1",
            "wamid.m3.2",
            "wamid.m3.3",
            "wamid.m3.4",
            "wamid.m3.5",
            "wamid.m3.6",
        ];
        app.wait_processed().await;
        let messages = app.wait_messages(&app.a, wamids.len()).await;
        for wamid in wamids {
            assert!(
                messages
                    .iter()
                    .any(|m| m["wamid"] == wamid && m["content"]["body"] == wamid),
                "{wamid} not readable: {messages:#?}"
            );
        }
        assert_eq!(app.metric("converra_inbox_backlog").await, 0.0);
        drop(app);

        // Two contacts with live actors merged, then at once messages in every shape.
        let app = TestApp::start(&backend).await;
        post_changes(
            &app,
            &[
                (
                    vec![contact_of(None, Some(U))],
                    vec![text_from(None, Some(U), "wamid.m4.1")],
                ),
                (
                    vec![contact_of(Some(W), None)],
                    vec![text_from(Some(W), None, "wamid.m4.2")],
                ),
            ],
        )
        .await;
        app.wait_messages(&app.a, 2).await;
        let changes = [
            (
                vec![contact_of(Some(W), Some(U))],
                vec![text_from(Some(W), Some(U), "wamid.m4.3")],
            ),
            (
                vec![contact_of(Some(W), None)],
                vec![text_from(Some(W), None, "wamid.m4.4")],
            ),
            (
                vec![contact_of(None, Some(U))],
                vec![text_from(None, Some(U), "wamid.m4.5")],
            ),
            (
                vec![contact_of(Some(W), None)],
                vec![text_from(Some(W), None, "wamid.m4.6")],
            ),
        ];
        let posts = changes
            .iter()
            .map(|change| post_changes(&app, std::slice::from_ref(change)));
        futures_util::future::join_all(posts).await;
        assert_merged(
            &app,
            &[
                "wamid.m4.1",
                "wamid.m4.2",
                "wamid.m4.3",
                "wamid.m4.4",
                "wamid.m4.5",
                "wamid.m4.6",
            ],
            U,
        )
        .await;
    }
}

/// Absurd timestamps from Meta (0, negative, near i64::MAX, a thousand years ahead)
/// are input, not failures: every message is applied and kept as sent, and the
/// conversation's window never starts after the message arrived.
#[actix_rt::test]
async fn absurd_timestamps_are_applied_and_never_push_the_window_past_arrival() {
    let parse = |text: &str| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
    };
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let stamps = ["0", "-5", "9223372036854775807", "32503680000"];
        for (i, stamp) in stamps.iter().enumerate() {
            let mut message = text("4915111", &format!("wamid.ts.{i}"), "odd time");
            message["timestamp"] = json!(stamp);
            let body = serde_json::to_vec(&envelope(vec![messages_change(
                NUMBER_A,
                vec![contact("4915111", "Tim")],
                vec![message],
            )]))
            .unwrap();
            assert_eq!(app.post_signed(&body).await.0, 200, "{stamp}");
        }
        let arrived = time::OffsetDateTime::now_utc();
        let stored = app.wait_messages(&app.a, stamps.len()).await;
        assert_eq!(stored.len(), stamps.len());
        app.wait_processed().await;
        assert_eq!(app.metric("converra_inbox_parked").await, 0.0);
        let conversations = app.all("/v1/conversations", &app.a.api_key).await;
        assert_eq!(conversations.len(), 1);
        let window_ends = parse(conversations[0]["window_ends_at"].as_str().unwrap());
        let last_inbound = parse(conversations[0]["last_inbound_at"].as_str().unwrap());
        assert!(last_inbound <= arrived, "{last_inbound} after {arrived}");
        assert!(window_ends <= arrived + time::Duration::hours(24));
        assert!(window_ends > arrived, "the window is open");
        let year_3000 = stored.iter().find(|m| m["wamid"] == "wamid.ts.3").unwrap();
        assert_eq!(
            year_3000["timestamp"], "3000-01-01T00:00:00Z",
            "kept as sent"
        );
    }
}

/// The phone-number route cache is trusted for a while, then read again: a number that
/// another process moved to another tenant (an operator command) is routed to its new
/// owner once the entry is older than its time to live. Time is the server's injectable
/// clock, moved by the test.
#[actix_rt::test]
async fn a_number_moved_by_another_process_reaches_its_new_owner_after_the_cache_ttl() {
    use converra::clock::Clock;
    use diesel::connection::SimpleConnection;
    for backend in backends() {
        let clock = converra::clock::ManualClock::new(converra::clock::SystemClock.now_ms());
        let app = TestApp::start_with_clock(&backend, clock.clone()).await;
        let post = |wamid: &'static str| text_webhook(NUMBER_A, "4915600", wamid, "routed");
        assert_eq!(app.post_signed(&post("wamid.route.1")).await.0, 200);
        let (_, pool) = app.pool();
        pool.get()
            .unwrap()
            .batch_execute(&format!(
                "UPDATE phone_numbers SET tenant_id = '{}' WHERE phone_number_id = '{NUMBER_A}'",
                app.b.id
            ))
            .unwrap();
        assert_eq!(app.post_signed(&post("wamid.route.2")).await.0, 200);
        clock.advance_ms(converra::storage::routes::ROUTE_TTL_MS);
        assert_eq!(app.post_signed(&post("wamid.route.3")).await.0, 200);
        app.wait_processed().await;
        let wamids = |messages: Vec<Value>| -> Vec<String> {
            let mut ids: Vec<String> = messages
                .iter()
                .filter_map(|m| m["wamid"].as_str().map(str::to_string))
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(
            wamids(app.all_messages(&app.a).await),
            vec!["wamid.route.1", "wamid.route.2"],
            "{backend:?}: the cached owner within the time to live"
        );
        assert_eq!(
            wamids(app.all_messages(&app.b).await),
            vec!["wamid.route.3"],
            "{backend:?}: the new owner after it"
        );
    }
}

/// Tenant A's only conversation: its last inbound time and the end of its window.
async fn window_of(app: &TestApp) -> (Value, Value) {
    let conversations = app.all("/v1/conversations", &app.a.api_key).await;
    assert_eq!(conversations.len(), 1);
    (
        conversations[0]["last_inbound_at"].clone(),
        conversations[0]["window_ends_at"].clone(),
    )
}

/// The customer-service window runs 24 hours from the latest inbound message, by
/// Meta's timestamp, never from later than the webhook's arrival on the daemon's
/// clock (here a manual one, moved by the test), so exact times can be asserted.
#[actix_rt::test]
async fn the_window_runs_24_hours_from_the_latest_inbound_never_past_arrival() {
    const HOUR: i64 = 3_600_000;
    let t0: i64 = 1_800_000_000_000; // 2027-01-15T08:00:00Z
    for backend in backends() {
        let clock = converra::clock::ManualClock::new(t0);
        let app = TestApp::start_with_clock(&backend, clock.clone()).await;
        let send = |wamid: &str, sent_ms: i64| {
            let mut message = text("4915700", wamid, "timed");
            message["timestamp"] = json!((sent_ms / 1000).to_string());
            serde_json::to_vec(&envelope(vec![messages_change(
                NUMBER_A,
                vec![contact("4915700", "Win")],
                vec![message],
            )]))
            .unwrap()
        };
        let at = |ms: i64| json!(converra::clock::rfc3339(ms));

        assert_eq!(app.post_signed(&send("wamid.w.1", t0 - HOUR)).await.0, 200);
        app.wait_processed().await;
        assert_eq!(
            window_of(&app).await,
            (at(t0 - HOUR), at(t0 + 23 * HOUR)),
            "{backend:?}"
        );
        // Stamped two hours ahead of the daemon's clock: counted from its arrival.
        assert_eq!(
            app.post_signed(&send("wamid.w.2", t0 + 2 * HOUR)).await.0,
            200
        );
        app.wait_processed().await;
        assert_eq!(
            window_of(&app).await,
            (at(t0), at(t0 + 24 * HOUR)),
            "{backend:?}"
        );
        // An older message arriving late does not move the window back.
        assert_eq!(
            app.post_signed(&send("wamid.w.3", t0 - 5 * HOUR)).await.0,
            200
        );
        clock.advance_ms(3 * HOUR);
        assert_eq!(
            app.post_signed(&send("wamid.w.4", t0 + 3 * HOUR - 60_000))
                .await
                .0,
            200
        );
        app.wait_processed().await;
        assert_eq!(
            window_of(&app).await,
            (at(t0 + 3 * HOUR - 60_000), at(t0 + 27 * HOUR - 60_000)),
            "{backend:?}"
        );
    }
}
