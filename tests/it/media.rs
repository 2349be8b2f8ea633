//! Inbound media: fetched from a fake Graph API on 127.0.0.1 (`GET /{media_id}`, then
//! the URL it gives, both with the number's token) as the message arrives, retried
//! while Meta fails, refused past Meta's size limit, kept sealed, and read back
//! through the API by its tenant only.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_graph::{meta_error, FakeGraph};
use crate::support::*;

const CUSTOMER: &str = "4915100000088";

fn media_webhook(wamid: &str, kind: &str, media_id: &str, mime_type: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::to_vec(&envelope(vec![messages_change(
        NUMBER_A,
        vec![contact(CUSTOMER, "Customer")],
        vec![
            json!({"from": CUSTOMER, "id": wamid, "timestamp": now.to_string(),
            "type": kind, kind: {"id": media_id, "mime_type": mime_type,
            "sha256": "ignored-base64"}}),
        ],
    )]))
    .unwrap()
}

/// The id of the tenant's message with Meta's id `wamid`, once stored.
async fn message_id(app: &TestApp, wamid: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let messages = app.all_messages(&app.a).await;
        if let Some(m) = messages.iter().find(|m| m["wamid"] == wamid) {
            return m["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{wamid} was never stored");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the media until it is no longer being fetched: (status, content type, body).
async fn fetched(app: &TestApp, id: &str, api_key: &str) -> (u16, String, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut resp = app
            .client
            .get(format!("{}/v1/messages/{id}/media", app.base))
            .insert_header(("Authorization", format!("Bearer {api_key}")))
            .send()
            .await
            .unwrap();
        let body = resp.body().limit(32 << 20).await.unwrap().to_vec();
        let status = resp.status().as_u16();
        let pending = serde_json::from_slice::<Value>(&body)
            .is_ok_and(|v| v["error"]["code"] == "media_pending");
        if !pending {
            let content_type = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            return (status, content_type, body);
        }
        assert!(
            Instant::now() < deadline,
            "the media of {id} stayed pending"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn inbound_media_is_fetched_sealed_and_served_to_its_tenant_only() {
    for backend in backends() {
        let graph = FakeGraph::start().await;
        let base = graph.base.clone();
        let app = TestApp::start_with(&backend, Default::default(), move |settings| {
            settings.whatsapp.graph_base_url = base;
            settings.media.retry_base_ms = 50;
        })
        .await;
        // A photo whose bytes are easy to look for at rest.
        let photo: Vec<u8> = b"JFIF-converra-photo-"
            .iter()
            .copied()
            .cycle()
            .take(300_000)
            .collect();
        graph.add_media("7001", "image/jpeg", photo.clone(), photo.len());
        // Meta fails twice before it answers: retried.
        graph.script_media(vec![
            (500, meta_error(1, "An unknown error occurred")),
            (429, meta_error(4, "Application request limit reached")),
        ]);
        // A sticker past Meta's 500 KB limit for stickers.
        graph.add_media("7002", "image/webp", vec![0u8; 10], 900_000);

        assert_eq!(
            app.post_signed(&media_webhook("wamid.img", "image", "7001", "image/jpeg"))
                .await
                .0,
            200
        );
        assert_eq!(
            app.post_signed(&media_webhook("wamid.stk", "sticker", "7002", "image/webp"))
                .await
                .0,
            200
        );
        assert_eq!(
            app.post_signed(&media_webhook(
                "wamid.gone",
                "document",
                "7999",
                "application/pdf"
            ))
            .await
            .0,
            200
        );
        let image = message_id(&app, "wamid.img").await;
        let (status, content_type, body) = fetched(&app, &image, &app.a.api_key).await;
        assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
        assert!(body == photo, "the file served is the file Meta had");
        // Both calls carried the number's token.
        let calls = graph.media_calls();
        assert!(
            calls.iter().any(|(path, _)| path == "/media-files/7001"),
            "{calls:?}"
        );
        assert!(
            calls
                .iter()
                .all(|(_, auth)| auth.as_deref() == Some("Bearer EAAG-test-token")),
            "{calls:?}"
        );

        let sticker = message_id(&app, "wamid.stk").await;
        let (status, _, body) = fetched(&app, &sticker, &app.a.api_key).await;
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, error["error"]["code"].clone()),
            (409, json!("media_failed"))
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("limit"),
            "{error}"
        );
        // An id Meta does not know fails with Meta's error, at once.
        let gone = message_id(&app, "wamid.gone").await;
        let (status, _, body) = fetched(&app, &gone, &app.a.api_key).await;
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, error["error"]["code"].clone()),
            (409, json!("media_failed"))
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("does not exist"),
            "{error}"
        );
        assert!(
            !graph
                .media_calls()
                .iter()
                .any(|(path, _)| path == "/media-files/7002"),
            "an oversized file is not downloaded"
        );

        // Another tenant, and a text message, have no such media.
        let (status, _, _) = fetched(&app, &image, &app.b.api_key).await;
        assert_eq!(status, 404);
        // Sealed at rest: the photo's bytes are nowhere in the database.
        let (_, pool) = app.pool();
        let mut conn = pool.get().unwrap();
        let stored = crate::at_rest::everything_stored(&app.db, &mut conn);
        let needle = &photo[..64];
        assert!(
            !stored.windows(needle.len()).any(|w| w == needle),
            "the photo is stored in clear"
        );
        for (outcome, n) in [("fetched", 1.0), ("retried", 2.0), ("failed", 2.0)] {
            let name = format!("converra_media_fetches_total{{outcome=\"{outcome}\"}}");
            assert_eq!(app.metric(&name).await, n, "{name}");
        }
        graph.stop().await;
    }
}
