//! Nothing acknowledged is lost: rows left unprocessed are processed at the next start,
//! and a panicking conversation actor is restarted without losing its messages.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use converra::actors::Hooks;
use converra::ids::TenantId;
use converra::storage::inbox::{insert_event, PreparedEvent};
use converra::whatsapp::webhook;

use crate::support::*;

#[actix_rt::test]
async fn inbox_rows_left_unprocessed_are_processed_at_the_next_start() {
    for backend in backends() {
        let mut app = TestApp::start(&backend).await;
        app.post_signed(&text_webhook(
            NUMBER_A,
            "4915777",
            "wamid.before",
            "before the stop",
        ))
        .await;
        app.wait_messages(&app.a, 1).await;
        app.stop().await;
        // Rows committed to the inbox but never processed, as a crash right after the
        // commit would leave them.
        {
            let (keyring, pool) = app.pool();
            let mut conn = pool.get().unwrap();
            for i in 0..5 {
                let body = text_webhook(
                    NUMBER_A,
                    "4915777",
                    &format!("wamid.left.{i}"),
                    &format!("left {i}"),
                );
                for event in webhook::parse(&body).events {
                    let prepared = PreparedEvent::seal(&keyring, event).unwrap();
                    insert_event(&mut conn, &TenantId(app.a.id.clone()), &prepared, 1).unwrap();
                }
            }
            assert_eq!(converra::storage::inbox::backlog(&mut conn).unwrap(), 5);
        }
        app.restart(Hooks::default()).await;
        let stored = app.wait_messages(&app.a, 6).await;
        for i in 0..5 {
            assert!(stored
                .iter()
                .any(|m| m["wamid"] == format!("wamid.left.{i}")));
        }
        app.wait_processed().await;
    }
}

#[actix_rt::test]
async fn a_panicking_conversation_actor_restarts_and_loses_nothing_while_others_flow() {
    let panicked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen = panicked.clone();
    let hooks = Hooks {
        before_apply: Some(Arc::new(move |event: &converra::whatsapp::Event| {
            let body = event
                .item
                .get("text")
                .and_then(|t| t.get("body"))
                .and_then(|b| b.as_str());
            let wamid = event
                .item
                .get("id")
                .and_then(|i| i.as_str())
                .unwrap_or_default()
                .to_string();
            if body == Some("boom") && seen.lock().unwrap().insert(wamid) {
                panic!("injected test panic");
            }
        })),
    };
    let app = TestApp::start_with(&Backend::Sqlite, hooks, |_| {}).await;
    let mut sends = Vec::new();
    for i in 0..10 {
        let body = if i == 3 {
            "boom".to_string()
        } else {
            format!("a{i}")
        };
        sends.push(text_webhook(
            NUMBER_A,
            "4915888",
            &format!("wamid.a.{i}"),
            &body,
        ));
    }
    for i in 0..20 {
        sends.push(text_webhook(
            NUMBER_B,
            &format!("49159{:02}", i % 4),
            &format!("wamid.b.{i}"),
            "b",
        ));
    }
    let results =
        futures_util::future::join_all(sends.iter().map(|body| app.post_signed(body))).await;
    assert!(results.iter().all(|(status, _)| *status == 200));
    let a = app.wait_messages(&app.a, 10).await;
    let b = app.wait_messages(&app.b, 20).await;
    assert_eq!(a.len(), 10);
    assert_eq!(b.len(), 20);
    assert!(
        a.iter().any(|m| m["content"]["body"] == "boom"),
        "the message in flight at the panic is kept"
    );
    assert_eq!(panicked.lock().unwrap().len(), 1);
    assert!(app.metric("converra_actor_restarts_total").await >= 1.0);
    app.wait_processed().await;
}
