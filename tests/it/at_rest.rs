//! What the database holds: identifiers only as keyed hashes beside their sealed form,
//! every sealed value bound to its place, and databases of the first format upgraded.

use std::collections::HashSet;

use converra::ids::TenantId;
use converra::storage::{self, contacts, inbox, messages};
use serde_json::{json, Value};

use crate::support::*;

const PHONE: &str = "4917099887766";
const BSUID: &str = "DE.99887766554433";
const NAME: &str = "Quiet Sparrow";

fn webhook(changes: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&envelope(changes)).unwrap()
}

fn message(wamid: &str, kind: &str, object: Value) -> Value {
    let mut item = json!({"from": PHONE, "from_user_id": BSUID, "id": wamid,
        "timestamp": "1764000000", "type": kind});
    item[kind] = object;
    item
}

fn sender() -> Value {
    json!({"wa_id": PHONE, "user_id": BSUID, "profile": {"name": NAME}})
}

/// Everything the database holds, as bytes to search: on SQLite its files (the data
/// and the key store, with their write-ahead logs), on PostgreSQL every row of every
/// table as text (bytea shown as hex).
pub(crate) fn everything_stored(db: &TestDb, conn: &mut storage::DbConn) -> Vec<u8> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Text)]
        text: String,
    }
    match conn {
        storage::DbConn::Sqlite(_) => {
            let mut all = Vec::new();
            for entry in std::fs::read_dir(db.dir.path()).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().unwrap() != "master.key" {
                    all.extend(std::fs::read(&path).unwrap());
                }
            }
            all
        }
        storage::DbConn::Pg(c) => {
            let tables: Vec<Text> = diesel::sql_query(
                "SELECT schemaname || '.' || tablename AS text FROM pg_tables \
                 WHERE schemaname IN ('public', 'keystore')",
            )
            .load(c)
            .unwrap();
            let mut all = Vec::new();
            for table in tables {
                let rows: Vec<Text> = diesel::sql_query(format!(
                    "SELECT coalesce(string_agg(t::text, E'\\n'), '') AS text FROM {} t",
                    table.text
                ))
                .load(c)
                .unwrap();
                all.extend(rows[0].text.as_bytes());
            }
            all
        }
    }
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    let hex = hex::encode(needle);
    [needle.as_bytes(), hex.as_bytes()]
        .iter()
        .any(|n| haystack.windows(n.len()).any(|w| w == *n))
}

/// Messages, a deletion before its message, a status of a message sent elsewhere, a
/// preference, an update for a number no tenant owns, and an event waiting in the
/// inbox: none of their identifiers (phone number, BSUID, wamids, profile name) is
/// anywhere in the database in clear, and the API still shows every one of them.
#[actix_rt::test]
async fn identifiers_are_stored_only_as_keyed_hashes_and_sealed() {
    for backend in backends() {
        let mut app = TestApp::start(&backend).await;
        let wamids = [
            "wamid.HBgNSECRETIN0001",
            "wamid.HBgNSECRETGONE002",
            "wamid.HBgNSECRETDEL0003",
            "wamid.HBgNSECRETOUT0004",
            "wamid.HBgNSECRETLOST005",
            "wamid.HBgNSECRETWAIT006",
        ];
        let body = webhook(vec![messages_change(
            NUMBER_A,
            vec![sender()],
            vec![
                message(wamids[0], "text", json!({"body": "hello"})),
                // Deletes a message not seen yet: a tombstone holds its place.
                message(
                    wamids[2],
                    "revoke",
                    json!({"original_message_id": wamids[1]}),
                ),
            ],
        )]);
        assert_eq!(app.post_signed(&body).await.0, 200);
        let status = json!({"id": wamids[3], "status": "delivered", "timestamp": "1764000100",
            "recipient_id": PHONE, "recipient_user_id": BSUID});
        assert_eq!(
            app.post_signed(&webhook(vec![statuses_change(NUMBER_A, vec![status])]))
                .await
                .0,
            200
        );
        let preference = json!({"field": "user_preferences", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "1", "phone_number_id": NUMBER_A},
            "contacts": [sender()],
            "user_preferences": [{"wa_id": PHONE, "category": "marketing_messages",
                "value": "stop", "timestamp": 1764000200}]}});
        assert_eq!(app.post_signed(&webhook(vec![preference])).await.0, 200);
        let unrouted = webhook(vec![messages_change(
            "999000999",
            vec![sender()],
            vec![message(wamids[4], "text", json!({"body": "nobody's"}))],
        )]);
        assert_eq!(app.post_signed(&unrouted).await.1["unrouted"], 1);
        app.wait_processed().await;
        app.stop().await;

        let (keyring, pool) = app.pool();
        let mut conn = pool.get().unwrap();
        let tenant = TenantId(app.a.id.clone());
        let day = day_key(&mut conn, &keyring, 1_764_000_000_000);
        let waiting = webhook(vec![messages_change(
            NUMBER_A,
            vec![sender()],
            vec![message(wamids[5], "text", json!({"body": "waits"}))],
        )]);
        for event in converra::whatsapp::webhook::parse(&waiting).events {
            let prepared = inbox::PreparedEvent::seal(&keyring, &tenant, &day, event).unwrap();
            inbox::insert_event(&mut conn, &tenant, &prepared, 1).unwrap();
        }
        assert_eq!(inbox::backlog(&mut conn).unwrap(), 1);
        if let storage::DbConn::Sqlite(_) = &mut *conn {
            use diesel::connection::SimpleConnection;
            conn.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
        }
        let stored = everything_stored(&app.db, &mut conn);
        for needle in [PHONE, BSUID, NAME].iter().chain(&wamids) {
            assert!(!holds(&stored, needle), "{backend:?}: {needle} in clear");
        }
        // The same identifiers went in (the search finds what it looks for).
        assert!(holds(&stored, &app.a.id), "{backend:?}");
        drop(conn);

        app.restart(converra::actors::Hooks::default()).await;
        app.wait_processed().await;
        let shown: HashSet<String> = app
            .all_messages(&app.a)
            .await
            .iter()
            .filter_map(|m| m["wamid"].as_str().map(str::to_string))
            .collect();
        let expected: HashSet<String> = [0, 1, 2, 3, 5]
            .iter()
            .map(|i| wamids[*i].to_string())
            .collect();
        assert_eq!(shown, expected, "{backend:?}");
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        assert_eq!(contacts.len(), 1, "{backend:?}");
        assert_eq!(contacts[0]["wa_id"], PHONE);
        assert_eq!(contacts[0]["user_id"], BSUID);
        assert_eq!(contacts[0]["profile_name"], NAME);
        assert_eq!(contacts[0]["marketing_opt_out"], true);
    }
}

/// A sealed value copied to another column, row or tenant does not open there: the
/// API shows it as absent, never as the other value.
#[actix_rt::test]
async fn a_sealed_value_opens_only_in_its_own_place() {
    for backend in backends() {
        let app = TestApp::start(&backend).await;
        let body = webhook(vec![messages_change(
            NUMBER_A,
            vec![sender()],
            vec![
                message("wamid.place.1", "text", json!({"body": "first"})),
                message("wamid.place.2", "text", json!({"body": "second"})),
            ],
        )]);
        assert_eq!(app.post_signed(&body).await.0, 200);
        app.wait_processed().await;
        let messages = app.all_messages(&app.a).await;
        let id_of = |wamid: &str| {
            messages.iter().find(|m| m["wamid"] == wamid).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (first, second) = (id_of("wamid.place.1"), id_of("wamid.place.2"));
        let (_, pool) = app.pool();
        let mut conn = pool.get().unwrap();
        let run = |conn: &mut storage::DbConn, sql: &str| {
            use diesel::RunQueryDsl;
            converra::on_backend!(conn, c => diesel::sql_query(sql).execute(c)).unwrap();
        };
        // Another column of the same contact, under the same key.
        run(&mut conn, "UPDATE contacts SET profile_name_ct = wa_id_ct");
        // Another message's content and wamid, under the same key.
        run(
            &mut conn,
            &format!(
                "UPDATE messages SET content_ct = (SELECT content_ct FROM messages WHERE id = '{first}'), \
                 wamid_ct = (SELECT wamid_ct FROM messages WHERE id = '{first}') WHERE id = '{second}'"
            ),
        );
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        assert_eq!(contacts[0]["wa_id"], PHONE, "{backend:?}");
        assert_eq!(contacts[0]["profile_name"], Value::Null, "{backend:?}");
        let messages = app.all_messages(&app.a).await;
        let by_id = |id: &str| messages.iter().find(|m| m["id"] == id).unwrap().clone();
        assert_eq!(by_id(&first)["content"], json!({"body": "first"}));
        assert_eq!(by_id(&first)["wamid"], "wamid.place.1");
        assert_eq!(by_id(&second)["content"], Value::Null, "{backend:?}");
        assert_eq!(by_id(&second)["wamid"], Value::Null, "{backend:?}");
    }
}

fn blob(conn: &storage::DbConn, bytes: &[u8]) -> String {
    match conn {
        storage::DbConn::Sqlite(_) => format!("X'{}'", hex::encode(bytes)),
        storage::DbConn::Pg(_) => format!("decode('{}', 'hex')", hex::encode(bytes)),
    }
}

/// A database written in the first format (identifiers in clear, values sealed bound
/// to a bare row id, raw payloads under the master key's inbox key) is upgraded at
/// start, once: afterwards it holds no identifier in clear and everything opens.
#[test]
fn a_database_of_the_first_format_is_upgraded_in_place() {
    use diesel::RunQueryDsl;
    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let (tenant_a, _) = seed_tenants(&settings);
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        // The schema before identifiers were hashed.
        storage::revert_migrations_through(&mut conn, "20261206000004").unwrap();
        let run = |conn: &mut storage::DbConn, sql: String| {
            converra::on_backend!(conn, c => diesel::sql_query(&sql).execute(c))
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        };
        let t = tenant_a.id.as_str();
        let data_key = keyring.new_legacy_key("k-old").unwrap();
        let sealed =
            |value: &[u8], aad: &str| data_key.key.seal_legacy(value, aad.as_bytes()).unwrap();
        let sql = format!(
            "INSERT INTO keystore.data_keys (id, tenant_id, wrapped_key, created_at) \
             VALUES ('k-old', '{t}', {}, 1)",
            blob(&conn, &data_key.wrapped)
        );
        run(&mut conn, sql);
        let sql = format!(
            "INSERT INTO contacts (id, tenant_id, key_id, wa_id_bidx, wa_id_ct, profile_name_ct, \
             marketing_opt_out, first_seen_at, last_seen_at) \
             VALUES ('c-old', '{t}', 'k-old', '{}', {}, {}, false, 1, 1)",
            keyring.blind_index(t, "wa_id", PHONE),
            blob(&conn, &sealed(PHONE.as_bytes(), "c-old")),
            blob(&conn, &sealed(NAME.as_bytes(), "c-old")),
        );
        run(&mut conn, sql);
        run(
            &mut conn,
            format!(
                "INSERT INTO conversations (id, tenant_id, phone_number_id, contact_id, opened_at, \
                 last_message_at) VALUES ('v-old', '{t}', '{NUMBER_A}', 'c-old', 1, 1)"
            ),
        );
        let bundle = serde_json::to_vec(&json!({"content": {"body": "kept"}})).unwrap();
        let sql = format!(
            "INSERT INTO messages (id, tenant_id, conversation_id, contact_id, wamid, direction, \
             msg_type, sent_at, received_at, key_id, content_ct) VALUES \
             ('m-old-1', '{t}', 'v-old', 'c-old', 'wamid.OLDFORMAT1', 'inbound', 'text', 1, 1, \
              'k-old', {})",
            blob(&conn, &sealed(&bundle, "m-old-1"))
        );
        run(&mut conn, sql);
        // A tombstone: no content, no key.
        run(
            &mut conn,
            format!(
                "INSERT INTO messages (id, tenant_id, conversation_id, contact_id, wamid, direction, \
                 sent_at, received_at, revoked_at) VALUES \
                 ('m-old-2', '{t}', 'v-old', 'c-old', 'wamid.OLDFORMAT2', 'inbound', 2, 2, 2)"
            ),
        );
        // Enough rows that the migration's and the upgrade's freed pages are not all
        // reused: nothing of them may stay in the file.
        run(
            &mut conn,
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) \
                 INSERT INTO messages (id, tenant_id, conversation_id, contact_id, wamid, \
                 ref_wamid, direction, msg_type, sent_at, received_at) \
                 SELECT 'm-zbulk-' || i, '{t}', 'v-old', 'c-old', 'wamid.OLDBULK' || i, \
                 'wamid.OLDREF' || i, 'inbound', 'text', 3, 3 FROM n"
            ),
        );
        let waiting = text_webhook(NUMBER_A, PHONE, "wamid.OLDFORMAT3", "waiting");
        let event = converra::whatsapp::webhook::parse(&waiting)
            .events
            .remove(0);
        let dedupe_key = event.dedupe_key();
        let payload = serde_json::to_vec(&event).unwrap();
        let sql = format!(
            "INSERT INTO inbox (dedupe_key, tenant_id, phone_number_id, route_key, kind, \
             payload_ct, received_at) VALUES ('{dedupe_key}', '{t}', '{NUMBER_A}', 'w:{PHONE}', \
             'message', {}, 1764000000000)",
            blob(
                &conn,
                &keyring
                    .legacy_inbox()
                    .seal_legacy(&payload, dedupe_key.as_bytes())
                    .unwrap()
            )
        );
        run(&mut conn, sql);
        let sql = format!(
            "INSERT INTO webhook_events (id, received_at, reason, payload_ct) \
             VALUES ('e-old', 1764000000000, 'not_json', {})",
            blob(
                &conn,
                &keyring
                    .legacy_inbox()
                    .seal_legacy(b"raw bytes", b"e-old")
                    .unwrap()
            )
        );
        run(&mut conn, sql);
        let token = keyring
            .secrets()
            .seal_legacy(b"EAAG-old-token", NUMBER_A.as_bytes())
            .unwrap();
        let sql = format!(
            "UPDATE phone_numbers SET access_token_ct = {} WHERE phone_number_id = '{NUMBER_A}'",
            blob(&conn, &token)
        );
        run(&mut conn, sql);

        storage::run_migrations(&mut conn).unwrap();
        let upgraded = storage::upgrade::run(&mut conn, &keyring, 1_764_000_000_000)
            .unwrap()
            .expect("an upgrade to run");
        assert_eq!(upgraded.messages, 3002, "{backend:?}");
        assert_eq!(upgraded.contacts, 1, "{backend:?}");
        assert_eq!(upgraded.inbox_rows, 1, "{backend:?}");
        assert_eq!(upgraded.raw_payloads, 1, "{backend:?}");
        assert_eq!(
            storage::upgrade::run(&mut conn, &keyring, 1_764_000_000_000).unwrap(),
            None,
            "once"
        );

        let tenant = TenantId(t.to_string());
        let contacts =
            contacts::list_contacts(&mut conn, &keyring, &tenant, &Default::default(), None, 10)
                .unwrap();
        let old = contacts.iter().find(|c| c.id == "c-old").unwrap();
        assert_eq!(old.wa_id.as_deref(), Some(PHONE), "{backend:?}");
        assert_eq!(old.profile_name.as_deref(), Some(NAME), "{backend:?}");
        let messages =
            messages::list_messages(&mut conn, &keyring, &tenant, &"v-old".into(), None, 2)
                .unwrap();
        let wamids: Vec<Option<&str>> = messages
            .iter()
            .map(|m| m.wamid.as_ref().map(|w| w.as_str()))
            .collect();
        assert_eq!(
            wamids,
            vec![Some("wamid.OLDFORMAT1"), Some("wamid.OLDFORMAT2")],
            "{backend:?}"
        );
        assert_eq!(messages[0].content, Some(json!({"body": "kept"})));
        let page = inbox::pending(&mut conn, &keyring, 0, i64::MAX, 10).unwrap();
        assert!(
            page.unreadable.is_empty(),
            "{backend:?}: {:?}",
            page.unreadable
        );
        assert_eq!(page.items.len(), 1, "{backend:?}");
        assert_eq!(page.items[0].route_key, format!("w:{PHONE}"));
        assert_eq!(
            inbox::webhook_event_payloads(&mut conn, &keyring, "not_json").unwrap(),
            vec![b"raw bytes".to_vec()]
        );
        let token: Vec<u8> = converra::on_backend!(&mut *conn, c => {
            use converra::storage::schema::phone_numbers;
            use diesel::prelude::*;
            phone_numbers::table
                .find(NUMBER_A)
                .select(phone_numbers::access_token_ct)
                .get_result(c)
        })
        .unwrap();
        let place = storage::tenants::access_token_place(t, NUMBER_A);
        assert_eq!(
            keyring.secrets().open(&token, &place).unwrap(),
            b"EAAG-old-token"
        );
        let stored = everything_stored(&db, &mut conn);
        for needle in [
            "wamid.OLDFORMAT1",
            "wamid.OLDFORMAT2",
            "wamid.OLDFORMAT3",
            "wamid.OLDBULK",
            "wamid.OLDREF",
            PHONE,
        ] {
            assert!(!holds(&stored, needle), "{backend:?}: {needle} in clear");
        }
    }
}

/// Rows of `table` on `url`.
fn count_rows(url: &str, table: &str) -> i64 {
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = diesel::PgConnection::establish(url).unwrap();
    let rows: Vec<Count> = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
        .load(&mut conn)
        .unwrap();
    rows[0].n
}

/// On PostgreSQL the key store can be a database of its own (`database.key_store_url`):
/// the keys go there and nowhere else, so a dump of the data's database holds none;
/// the data without its key store, or a key store of its own beside keys left in the
/// data's schema, is refused by name.
#[actix_rt::test]
async fn the_key_store_can_live_in_a_postgres_database_of_its_own() {
    for backend in backends() {
        let Backend::Postgres(_) = backend else {
            continue;
        };
        let keys = TestDb::new(&backend);
        let keys_url = keys.url.clone();
        let app = TestApp::start_with(&backend, converra::actors::Hooks::default(), |s| {
            s.database.key_store_url = keys_url.clone();
        })
        .await;
        let body = webhook(vec![messages_change(
            NUMBER_A,
            vec![sender()],
            vec![message("wamid.apart.1", "text", json!({"body": "apart"}))],
        )]);
        assert_eq!(app.post_signed(&body).await.0, 200);
        let unrouted = webhook(vec![messages_change(
            "999000999",
            vec![sender()],
            vec![message(
                "wamid.apart.2",
                "text",
                json!({"body": "nobody's"}),
            )],
        )]);
        assert_eq!(app.post_signed(&unrouted).await.0, 200);
        app.wait_processed().await;
        let messages = app.all_messages(&app.a).await;
        assert_eq!(messages[0]["content"], json!({"body": "apart"}));
        let contacts = app.all("/v1/contacts", &app.a.api_key).await;
        assert_eq!(contacts[0]["wa_id"], PHONE);

        let data_url = app.db.url.clone();
        assert_eq!(count_rows(&keys.url, "keystore.data_keys"), 1);
        assert!(count_rows(&keys.url, "keystore.raw_keys") >= 1);
        assert_eq!(count_rows(&data_url, "keystore.data_keys"), 0);
        assert_eq!(count_rows(&data_url, "keystore.raw_keys"), 0);

        // The data without its key store.
        let mut without = app.settings.clone();
        without.database.key_store_url = String::new();
        let err = converra::open_storage(&without).unwrap_err().to_string();
        assert!(
            err.contains("holds contacts") && err.contains("key_store_url"),
            "{err}"
        );
        // A key store of its own while the data's schema still holds keys.
        {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;
            let mut data = diesel::PgConnection::establish(&data_url).unwrap();
            data.batch_execute(
                "INSERT INTO keystore.data_keys (id, tenant_id, created_at) VALUES ('k', 't', 1)",
            )
            .unwrap();
        }
        let err = converra::open_storage(&app.settings)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Move them first"), "{err}");
        // SQLite has no key store database of its own.
        let mut sqlite = settings_for(&TestDb::new(&Backend::Sqlite));
        sqlite.database.key_store_url = keys.url.clone();
        let err = sqlite.validate().unwrap_err().to_string();
        assert!(err.contains("database.key_store_url"), "{err}");
    }
}

/// A first-format PostgreSQL database whose keys were moved to a key store database
/// of its own before the new binary's first start: the upgrade re-wraps them there
/// and the data opens.
#[test]
fn a_first_format_database_upgrades_with_its_key_store_apart() {
    use diesel::{Connection, RunQueryDsl};
    for backend in backends() {
        let Backend::Postgres(_) = backend else {
            continue;
        };
        let data = TestDb::new(&backend);
        let keys = TestDb::new(&backend);
        let mut settings = settings_for(&data);
        settings.database.key_store_url = keys.url.clone();
        let (tenant_a, _) = seed_tenants(&settings);
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        // The schema before identifiers were hashed.
        storage::revert_migrations_through(&mut conn, "20261206000004").unwrap();
        let t = tenant_a.id.as_str();
        let data_key = keyring.new_legacy_key("k-old").unwrap();
        let sealed = data_key
            .key
            .seal_legacy(PHONE.as_bytes(), b"c-old")
            .unwrap();
        let mut key_db = diesel::PgConnection::establish(&keys.url).unwrap();
        diesel::sql_query(format!(
            "INSERT INTO keystore.data_keys (id, tenant_id, wrapped_key, created_at) \
             VALUES ('k-old', '{t}', decode('{}', 'hex'), 1)",
            hex::encode(&data_key.wrapped)
        ))
        .execute(&mut key_db)
        .unwrap();
        converra::on_backend!(&mut *conn, c => diesel::sql_query(format!(
            "INSERT INTO contacts (id, tenant_id, key_id, wa_id_bidx, wa_id_ct, \
             marketing_opt_out, first_seen_at, last_seen_at) \
             VALUES ('c-old', '{t}', 'k-old', '{}', decode('{}', 'hex'), false, 1, 1)",
            keyring.blind_index(t, "wa_id", PHONE),
            hex::encode(&sealed)
        ))
        .execute(c))
        .unwrap();
        drop(conn);
        drop(pool);
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        let tenant = TenantId(t.to_string());
        let contacts =
            contacts::list_contacts(&mut conn, &keyring, &tenant, &Default::default(), None, 10)
                .unwrap();
        assert_eq!(contacts[0].wa_id.as_deref(), Some(PHONE));
    }
}
