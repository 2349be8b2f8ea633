//! Storage on both backends: migrations up, down and up again; real connection errors.

use converra::config::Settings;
use converra::storage::{self, DbManager};

use crate::support::*;

#[test]
fn migrations_run_up_down_and_up_again() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let manager = DbManager::new(&settings).unwrap();
        let mut conn = manager.establish().unwrap();
        let applied = storage::run_migrations(&mut conn).unwrap();
        assert!(!applied.is_empty());
        assert!(
            storage::run_migrations(&mut conn).unwrap().is_empty(),
            "idempotent"
        );
        storage::revert_all_migrations(&mut conn).unwrap();
        assert_eq!(storage::run_migrations(&mut conn).unwrap(), applied);
    }
}

/// The migration that rebuilds `messages` (SQLite changes foreign keys only that way)
/// keeps every message and every status event, both ways, and the cascade from a
/// conversation to its messages still holds.
#[test]
fn rebuilding_messages_keeps_its_rows_and_their_statuses() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let mut conn = DbManager::new(&settings).unwrap().establish().unwrap();
        storage::run_migrations(&mut conn).unwrap();
        seed_rows(&mut conn, &["v1"]);
        for (id, wamid) in [("m1", "wamid.1"), ("m2", "wamid.2")] {
            run(
                &mut conn,
                &format!(
                    "INSERT INTO messages (id, tenant_id, conversation_id, contact_id, wamid_bidx, \
                     direction, sent_at, received_at) \
                     VALUES ('{id}', 't1', 'v1', 'c1', '{wamid}', 'out', 1, 1)"
                ),
            );
        }
        run(
            &mut conn,
            "INSERT INTO status_events (id, tenant_id, message_id, status, occurred_at) \
             VALUES ('s1', 't1', 'm1', 'delivered', 2)",
        );

        // Down to and including the rebuild; later migrations go first.
        let mut reverted = Vec::new();
        while reverted.last().map(String::as_str) != Some("20261126000001") {
            reverted.push(storage::revert_last_migration(&mut conn).unwrap());
            assert!(
                reverted.len() < 40,
                "{backend:?}: never reached: {reverted:?}"
            );
        }
        assert_eq!(
            count(&mut conn, "messages"),
            2,
            "{backend:?}: down keeps messages"
        );
        assert_eq!(
            count(&mut conn, "status_events"),
            1,
            "{backend:?}: and statuses"
        );
        assert_eq!(
            storage::run_migrations(&mut conn).unwrap().len(),
            reverted.len()
        );
        assert_eq!(
            count(&mut conn, "messages"),
            2,
            "{backend:?}: up keeps messages"
        );
        assert_eq!(
            count(&mut conn, "status_events"),
            1,
            "{backend:?}: and statuses"
        );

        run(&mut conn, "DELETE FROM conversations WHERE id = 'v1'");
        assert_eq!(
            count(&mut conn, "messages"),
            0,
            "{backend:?}: cascade to messages"
        );
        assert_eq!(count(&mut conn, "status_events"), 0, "{backend:?}: and on");
    }
}

/// On PostgreSQL every indexed identifier compares byte by byte (collation "C"), not
/// through the database's locale, which cost a tenth of its CPU per message. SQLite
/// compares bytes already (BINARY).
#[test]
fn postgres_identifiers_compare_byte_by_byte() {
    use diesel::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Column {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        column_name: String,
    }
    for backend in backends() {
        let Backend::Postgres(_) = backend else {
            continue;
        };
        let db = TestDb::new(&backend);
        let mut conn = DbManager::new(&settings_for(&db))
            .unwrap()
            .establish()
            .unwrap();
        storage::run_migrations(&mut conn).unwrap();
        let storage::DbConn::Pg(pg) = &mut conn else {
            unreachable!("a PostgreSQL connection")
        };
        // Every text column of an index, with the collation it compares under.
        let located: Vec<Column> = diesel::sql_query(
            "SELECT c.relname::text AS table_name, a.attname::text AS column_name \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
             LEFT JOIN pg_collation co ON co.oid = a.attcollation \
             WHERE n.nspname IN ('public', 'keystore') AND a.atttypid = 'text'::regtype \
             AND c.relname <> '__diesel_schema_migrations' \
             AND co.collname IS DISTINCT FROM 'C'",
        )
        .load(pg)
        .unwrap();
        let located: Vec<String> = located
            .iter()
            .map(|c| format!("{}.{}", c.table_name, c.column_name))
            .collect();
        assert!(located.is_empty(), "compared under the locale: {located:?}");
    }
}

/// The data and the key store are two SQLite files; an operator who replaces or loses
/// one of them is told which, and what to do, instead of a bare migration error.
#[test]
fn a_key_store_that_does_not_match_the_database_is_refused_with_the_reason() {
    let db = TestDb::new(&Backend::Sqlite);
    let settings = settings_for(&db);
    let storage::DatabaseUrl::Sqlite(data) = storage::DatabaseUrl::parse(&db.url).unwrap() else {
        unreachable!("a SQLite url")
    };
    let keys = settings.sqlite_key_store_path(&data);
    let remove = |path: &std::path::Path| {
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            let _ = std::fs::remove_file(file);
        }
    };
    let migrate = || {
        let mut conn = DbManager::new(&settings).unwrap().establish().unwrap();
        storage::run_migrations(&mut conn).map(|_| ())
    };
    migrate().unwrap();

    // A new database beside the old key store.
    remove(&data);
    let err = migrate().unwrap_err().to_string();
    assert!(
        err.contains("belongs to an earlier database") && err.contains(&keys.display().to_string()),
        "{err}"
    );

    // The database without its key store.
    remove(&keys);
    migrate().unwrap();
    remove(&keys);
    let err = migrate().unwrap_err().to_string();
    assert!(
        err.contains("key store") && err.contains("missing or empty"),
        "{err}"
    );
}

#[test]
fn a_bad_database_url_reports_the_real_reason() {
    let mut settings = Settings::defaults().unwrap();
    settings.database.url = "postgres://nobody@127.0.0.1:1/none".into();
    let err = storage::connect(&settings).unwrap_err().to_string();
    assert!(
        err.contains("postgres") && (err.contains("refused") || err.contains("connect")),
        "{err}"
    );
    settings.database.url = "sqlite:///proc/definitely/not/writable/x.db".into();
    let err = storage::connect(&settings).unwrap_err().to_string();
    assert!(err.contains("/proc/definitely"), "{err}");
    settings.database.url = "mysql://x".into();
    let err = storage::connect(&settings).unwrap_err().to_string();
    assert!(err.contains("mysql"), "{err}");
}

/// The writer applies a batch's plain inbound messages as a set and everything else op
/// by op: a conversation merged away, a redelivery inside the batch, and a revoke of a
/// message in the same batch must all end as if applied one at a time.
#[test]
fn a_batch_of_ops_ends_as_if_applied_one_by_one() {
    use converra::crypto::SealKey;
    use converra::ids::{ContactId, ConversationId, MessageId, TenantId, Wamid};
    use converra::storage::apply::{ApplyOp, NewInbound};
    use converra::storage::contacts::ContactIdentifiers;

    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let (tenant_a, _) = seed_tenants(&settings);
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        let tenant = TenantId(tenant_a.id.clone());
        let ids = ContactIdentifiers {
            user_id: None,
            wa_id: Some("4915100000001".into()),
        };
        let contact = new_contact(&mut conn, &keyring, &tenant, &ids);
        let inbound = |wamid: &str, sent_at: i64, conversation: Option<&str>, key: &SealKey| {
            let message_id = MessageId::generate();
            let bundle = storage::apply::MessageBundle {
                content: serde_json::json!({ "body": wamid }),
                ..Default::default()
            };
            let plain = serde_json::to_vec(&bundle).unwrap();
            let place =
                converra::storage::apply::content_place(tenant.as_str(), message_id.as_str());
            let (wamid_bidx, wamid_ct) = sealed_wamid(&keyring, &tenant, key, wamid);
            NewInbound {
                origin: storage::apply::Origin::Inbox(sent_at),
                phone_number_id: NUMBER_A.into(),
                contact_id: ContactId(contact.contact_id.0.clone()),
                conversation_id: conversation.map(ConversationId::from),
                content_ct: key.seal(&plain, &place).unwrap(),
                message_id,
                wamid_bidx,
                wamid_ct,
                msg_type: "text".into(),
                sent_at,
                inbound_at: sent_at,
                key_id: contact.key_id.clone(),
                revokes: None,
            }
        };
        // A batch of the tenant's jobs, each a list of ops; what each job reports as its
        // conversation.
        fn batch<'a>(
            tenant: &'a TenantId,
            jobs: &[&'a [ApplyOp]],
        ) -> Vec<(&'a TenantId, Vec<&'a ApplyOp>)> {
            jobs.iter()
                .map(|ops| (tenant, ops.iter().collect()))
                .collect()
        }
        let reported = |outcomes: &[storage::apply::JobApplied]| -> Vec<Option<ConversationId>> {
            outcomes.iter().map(|o| o.conversation.clone()).collect()
        };
        // The first message opens the conversation (op by op: it is not known yet).
        let first = inbound("wamid.1", 1_000, None, &contact.key);
        let opened =
            storage::apply::apply_batch(&mut conn, &[(&tenant, vec![&ApplyOp::Inbound(first)])], 5)
                .unwrap();
        let conversation = opened[0].conversation.clone().expect("a conversation");

        let second = inbound("wamid.2", 3_000, Some(conversation.as_str()), &contact.key);
        let redelivered = inbound("wamid.2", 3_000, Some(conversation.as_str()), &contact.key);
        let late = inbound("wamid.3", 2_000, Some(conversation.as_str()), &contact.key);
        // An actor that cached a conversation since merged away.
        let stale = inbound("wamid.4", 2_500, Some("merged-away"), &contact.key);
        let mut revoke = inbound("wamid.5", 4_000, Some(conversation.as_str()), &contact.key);
        revoke.msg_type = "revoke".into();
        let (wamid_bidx, wamid_ct) = sealed_wamid(&keyring, &tenant, &contact.key, "wamid.2");
        revoke.revokes = Some(converra::storage::apply::Revoked {
            wamid_bidx,
            wamid_ct,
        });
        let job_1 = [ApplyOp::Inbound(second), ApplyOp::Inbound(redelivered)];
        let job_2 = [ApplyOp::Inbound(late), ApplyOp::Inbound(stale)];
        let job_3 = [ApplyOp::Inbound(revoke)];
        let outcomes =
            storage::apply::apply_batch(&mut conn, &batch(&tenant, &[&job_1, &job_2, &job_3]), 6)
                .unwrap();
        assert_eq!(
            reported(&outcomes),
            vec![Some(conversation.clone()); 3],
            "{backend:?}: every job reports the live conversation"
        );
        let redelivered: Vec<&[bool]> = outcomes.iter().map(|o| &o.redelivered[..]).collect();
        assert_eq!(
            redelivered,
            [&[false, true][..], &[false, false], &[false]],
            "{backend:?}: the second wamid.2 of the batch is reported as a redelivery"
        );

        let conversations =
            storage::conversations::list_conversations(&mut conn, &tenant, None, 10).unwrap();
        assert_eq!(
            conversations.len(),
            1,
            "{backend:?}: no second conversation"
        );
        let window = &conversations[0];
        assert_eq!(
            window.last_inbound_at,
            Some(4_000),
            "{backend:?}: the window follows the latest message, not the last applied"
        );

        // A message that does not move the window (same second as the latest) leaves the
        // conversation's row alone, and the conversation is still known to exist; beside
        // it, one for a conversation merged away.
        let same_second = inbound("wamid.6", 4_000, Some(conversation.as_str()), &contact.key);
        let stale_again = inbound("wamid.7", 4_000, Some("merged-away"), &contact.key);
        let job_4 = [ApplyOp::Inbound(same_second)];
        let job_5 = [ApplyOp::Inbound(stale_again)];
        let outcomes =
            storage::apply::apply_batch(&mut conn, &batch(&tenant, &[&job_4, &job_5]), 7).unwrap();
        assert_eq!(
            reported(&outcomes),
            vec![Some(conversation.clone()); 2],
            "{backend:?}: a window that does not move still finds its conversation"
        );
        let conversations =
            storage::conversations::list_conversations(&mut conn, &tenant, None, 10).unwrap();
        assert_eq!(
            conversations.len(),
            1,
            "{backend:?}: still one conversation"
        );
        assert_eq!(
            conversations[0].last_inbound_at,
            Some(4_000),
            "{backend:?}: the window stays where it was"
        );

        let messages =
            storage::messages::list_messages(&mut conn, &keyring, &tenant, &conversation, None, 50)
                .unwrap();
        let wamids: Vec<&str> = messages
            .iter()
            .filter_map(|m| m.wamid.as_ref().map(Wamid::as_str))
            .collect();
        assert_eq!(
            wamids,
            ["wamid.1", "wamid.2", "wamid.3", "wamid.4", "wamid.5", "wamid.6", "wamid.7"],
            "{backend:?}: each message once, in the order the actor made them"
        );
        let revoked = &messages[1];
        assert!(revoked.revoked, "{backend:?}: wamid.2 was revoked");
        assert_eq!(revoked.content, None, "{backend:?}: its content is gone");
        assert_eq!(
            messages[2].content,
            Some(serde_json::json!({ "body": "wamid.3" })),
            "{backend:?}: other content is intact"
        );
    }
}

/// The writer asks, for a whole batch of contact resolutions at once, which contacts
/// exist already (their data keys are committed first): a contact is known by either
/// of its identifiers, and only within its own tenant.
#[test]
fn a_batch_asks_which_contacts_exist_by_either_identifier_within_its_tenant() {
    use converra::ids::TenantId;
    use converra::storage::contacts::ContactIdentifiers;

    let ids = |user_id: Option<&str>, wa_id: Option<&str>| ContactIdentifiers {
        user_id: user_id.map(str::to_string),
        wa_id: wa_id.map(str::to_string),
    };
    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let (tenant_a, tenant_b) = seed_tenants(&settings);
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        let (a, b) = (TenantId(tenant_a.id.clone()), TenantId(tenant_b.id.clone()));
        for known in [
            ids(Some("US.1"), Some("4915100000001")),
            ids(None, Some("4915100000002")),
        ] {
            new_contact(&mut conn, &keyring, &a, &known);
        }
        let asked = [
            (&a, ids(Some("US.1"), None)),
            (&a, ids(None, Some("4915100000001"))),
            (&a, ids(Some("US.9"), Some("4915100000002"))),
            (&a, ids(Some("US.9"), None)),
            (&b, ids(Some("US.1"), Some("4915100000001"))),
            (&a, ids(None, None)),
        ];
        let wanted: Vec<_> = asked.iter().map(|(tenant, ids)| (*tenant, ids)).collect();
        assert_eq!(
            storage::contacts::contacts_exist(&mut conn, &keyring, &wanted).unwrap(),
            vec![true, true, true, false, false, false],
            "{backend:?}"
        );
    }
}

/// Meta's id as an actor prepares it: its keyed hash, and the id sealed for the record.
fn sealed_wamid(
    keyring: &converra::crypto::Keyring,
    tenant: &converra::ids::TenantId,
    key: &converra::crypto::SealKey,
    wamid: &str,
) -> (String, Vec<u8>) {
    let bidx = keyring.wamid_index(tenant.as_str(), &wamid.into());
    let place = converra::storage::apply::wamid_place(tenant.as_str(), &bidx);
    let sealed = key.seal(wamid.as_bytes(), &place).unwrap();
    (bidx, sealed)
}

/// Creates a contact the way the writer does: its data key committed first, then the
/// contact resolved with it.
fn new_contact(
    conn: &mut converra::storage::DbConn,
    keyring: &converra::storage::key_store::Vault,
    tenant: &converra::ids::TenantId,
    ids: &converra::storage::contacts::ContactIdentifiers,
) -> converra::storage::contacts::ResolvedContact {
    let key_id = converra::ids::KeyId::generate();
    let data_key = keyring
        .new_data_key(tenant.as_str(), key_id.as_str())
        .unwrap();
    storage::keys::insert_data_key(conn, keyring, tenant, &key_id, &data_key.wrapped, 1).unwrap();
    storage::contacts::resolve_contact(conn, keyring, tenant, ids, Some((key_id, data_key)), 1)
        .unwrap()
}

/// SQLite lists a conversation's messages from an index table the writer fills in bulk
/// plus the unindexed tail: every page of a listing is the same whether a message is
/// indexed, in the tail, or indexed while the bulk that took it is still going; a
/// moved message moves in the index; a conversation deleted takes its messages, indexed
/// or not; a message deleted during a bulk keeps the mark where it was. PostgreSQL
/// lists through its index on messages and gives the same pages.
#[test]
fn a_conversation_lists_the_same_messages_indexed_or_not() {
    use converra::storage::conversation_index;
    use diesel::RunQueryDsl;

    let add_message = |conn: &mut storage::DbConn, id: &str, conversation: &str| {
        add_message(conn, id, conversation, "c1", 1)
    };
    let strings = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        seed_rows(&mut conn, &["v1", "v2", "v3"]);
        // m1..m3 indexed; m5 in the tail; m4, inserted later with a smaller id, too.
        for id in ["m1", "m2", "m3"] {
            add_message(&mut conn, id, "v1");
        }
        conversation_index::index_all(&mut conn).unwrap();
        assert_eq!(conversation_index::tail_len(&mut conn).unwrap(), 0);
        add_message(&mut conn, "m5", "v1");
        add_message(&mut conn, "m4", "v1");
        add_message(&mut conn, "x1", "v2");
        let expected = strings(&["m1", "m2", "m3", "m4", "m5"]);
        assert_eq!(
            listed(&mut conn, &keyring, "v1"),
            expected,
            "{backend:?}: index + tail"
        );

        // A bulk half done: its first slice indexed, the mark not moved yet.
        let many: Vec<String> = (0..conversation_index::SLICE_ROWS + 6)
            .map(|i| format!("n{i:03}"))
            .collect();
        for id in &many {
            add_message(&mut conn, id, "v3");
        }
        if let storage::DbConn::Sqlite(c) = &mut *conn {
            let mut bulk = conversation_index::begin_bulk(c).unwrap().expect("a tail");
            conversation_index::index_slice(c, &mut bulk).unwrap();
            assert!(!bulk.is_done());
        }
        assert_eq!(
            listed(&mut conn, &keyring, "v1"),
            expected,
            "{backend:?}: during a bulk"
        );
        assert_eq!(
            listed(&mut conn, &keyring, "v3"),
            many,
            "{backend:?}: during a bulk, each message once"
        );
        conversation_index::index_all(&mut conn).unwrap();
        assert_eq!(conversation_index::tail_len(&mut conn).unwrap(), 0);
        assert_eq!(
            listed(&mut conn, &keyring, "v1"),
            expected,
            "{backend:?}: all indexed"
        );
        assert_eq!(
            listed(&mut conn, &keyring, "v3"),
            many,
            "{backend:?}: all indexed"
        );

        // A message moved to another conversation (what a contact merge does).
        run(
            &mut conn,
            "UPDATE messages SET conversation_id = 'v2' WHERE id IN ('m2', 'm5')",
        );
        assert_eq!(
            listed(&mut conn, &keyring, "v1"),
            strings(&["m1", "m3", "m4"]),
            "{backend:?}"
        );
        assert_eq!(
            listed(&mut conn, &keyring, "v2"),
            strings(&["m2", "m5", "x1"]),
            "{backend:?}: moved"
        );

        // A message deleted while a bulk is going: the mark stays, nothing is lost.
        add_message(&mut conn, "m6", "v1");
        add_message(&mut conn, "m7", "v1");
        if let storage::DbConn::Sqlite(c) = &mut *conn {
            let mut bulk = conversation_index::begin_bulk(c).unwrap().expect("a tail");
            diesel::sql_query("DELETE FROM messages WHERE id = 'm7'")
                .execute(c)
                .unwrap();
            while !bulk.is_done() {
                conversation_index::index_slice(c, &mut bulk).unwrap();
            }
            assert_eq!(
                conversation_index::tail_len(&mut conn).unwrap(),
                1,
                "the mark did not pass the deleted newest row"
            );
        } else {
            run(&mut conn, "DELETE FROM messages WHERE id = 'm7'");
        }
        add_message(&mut conn, "m8", "v1");
        assert_eq!(
            listed(&mut conn, &keyring, "v1"),
            strings(&["m1", "m3", "m4", "m6", "m8"]),
            "{backend:?}: after a delete"
        );
        conversation_index::index_all(&mut conn).unwrap();
        assert_eq!(conversation_index::tail_len(&mut conn).unwrap(), 0);
        assert_eq!(
            listed(&mut conn, &keyring, "v1"),
            strings(&["m1", "m3", "m4", "m6", "m8"]),
            "{backend:?}: after a delete, indexed"
        );

        // A conversation deleted takes its messages, indexed (m1) or not (m9).
        add_message(&mut conn, "m9", "v1");
        run(&mut conn, "DELETE FROM conversations WHERE id = 'v1'");
        run(
            &mut conn,
            "INSERT INTO conversations (id, tenant_id, phone_number_id, contact_id, \
             opened_at, last_message_at) VALUES ('v1', 't1', 'n-v1', 'c1', 1, 1)",
        );
        assert!(
            listed(&mut conn, &keyring, "v1").is_empty(),
            "{backend:?}: cascade"
        );
        assert_eq!(
            listed(&mut conn, &keyring, "v2"),
            strings(&["m2", "m5", "x1"]),
            "{backend:?}: the other conversation kept"
        );
    }
}

/// What erasure and retention do, deleting in bulk, works through SQLite's bulk
/// conversation index exactly as through PostgreSQL's index on messages: a contact
/// deleted takes every message of its conversations (indexed, in the unindexed tail,
/// or in a bulk still going) and their index rows; messages past a retention period,
/// deleted in one statement across conversations, leave the listings and the index;
/// the bulk that was going finishes, and later messages (which may reuse the freed
/// rowids) are listed and indexed.
#[test]
fn bulk_deletes_of_erasure_and_retention_work_through_the_conversation_index() {
    use converra::storage::conversation_index;

    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        seed_rows(&mut conn, &["v1", "v2"]);
        run(
            &mut conn,
            "INSERT INTO contacts (id, tenant_id, key_id, first_seen_at, last_seen_at) \
             VALUES ('c2', 't1', 'k2', 1, 1)",
        );
        run(
            &mut conn,
            "INSERT INTO conversations (id, tenant_id, phone_number_id, contact_id, \
             opened_at, last_message_at) VALUES ('v3', 't1', 'n-v3', 'c2', 1, 1)",
        );
        // Per conversation, 150 messages sent at 0..150: the first 80 indexed, the rest
        // in the tail, of which one slice is indexed by a bulk that is not finished.
        let ids = |v: &str, range: std::ops::Range<i64>| -> Vec<String> {
            range.map(|i| format!("{v}-m{i:03}")).collect()
        };
        let add = |conn: &mut storage::DbConn, range: std::ops::Range<i64>| {
            for (v, contact) in [("v1", "c1"), ("v2", "c1"), ("v3", "c2")] {
                for (i, id) in range.clone().zip(ids(v, range.clone())) {
                    add_message(conn, &id, v, contact, i);
                }
            }
        };
        add(&mut conn, 0..80);
        conversation_index::index_all(&mut conn).unwrap();
        add(&mut conn, 80..150);
        let mut bulk = match &mut *conn {
            storage::DbConn::Sqlite(c) => {
                let mut bulk = conversation_index::begin_bulk(c).unwrap().expect("a tail");
                conversation_index::index_slice(c, &mut bulk).unwrap();
                assert!(!bulk.is_done());
                Some(bulk)
            }
            _ => None,
        };
        assert_eq!(listed(&mut conn, &keyring, "v3"), ids("v3", 0..150));

        // Erasure: the contact goes, and with it its conversations and their messages.
        run(&mut conn, "DELETE FROM contacts WHERE id = 'c1'");
        assert_eq!(
            count(&mut conn, "messages WHERE contact_id = 'c1'"),
            0,
            "{backend:?}: every message of the erased contact is gone"
        );
        assert!(listed(&mut conn, &keyring, "v1").is_empty(), "{backend:?}");
        assert!(listed(&mut conn, &keyring, "v2").is_empty(), "{backend:?}");
        assert_eq!(
            listed(&mut conn, &keyring, "v3"),
            ids("v3", 0..150),
            "{backend:?}: the other contact's conversation is whole"
        );

        // Retention: everything sent before 100 goes, in one statement.
        run(
            &mut conn,
            "DELETE FROM messages WHERE tenant_id = 't1' AND sent_at < 100",
        );
        assert_eq!(
            listed(&mut conn, &keyring, "v3"),
            ids("v3", 100..150),
            "{backend:?}: only what is within the period is left"
        );

        // The bulk that was going when both deletes ran finishes; later messages are
        // listed before and after they are indexed.
        if let (storage::DbConn::Sqlite(c), Some(bulk)) = (&mut *conn, bulk.as_mut()) {
            while !bulk.is_done() {
                conversation_index::index_slice(c, bulk).unwrap();
            }
        }
        for (i, id) in (150..160).zip(ids("v3", 150..160)) {
            add_message(&mut conn, &id, "v3", "c2", i);
        }
        assert_eq!(
            listed(&mut conn, &keyring, "v3"),
            ids("v3", 100..160),
            "{backend:?}: later messages, in the tail"
        );
        conversation_index::index_all(&mut conn).unwrap();
        assert_eq!(conversation_index::tail_len(&mut conn).unwrap(), 0);
        assert_eq!(
            listed(&mut conn, &keyring, "v3"),
            ids("v3", 100..160),
            "{backend:?}: later messages, indexed"
        );
        if matches!(backend, Backend::Sqlite) {
            assert_eq!(
                count(&mut conn, "conversation_messages"),
                60,
                "no index row outlives its message"
            );
        }
    }
}

/// Both backends keep the same rules between messages and conversations: PostgreSQL
/// with its foreign key, SQLite with triggers (its messages have no index on the
/// conversation for a declared key to use): no message of a conversation that does
/// not exist, none moved to one, no conversation renamed from under its messages, and
/// a conversation deleted takes its messages.
#[test]
fn a_message_needs_its_conversation_on_both_backends() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let (_, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        seed_rows(&mut conn, &["v1", "v2"]);
        add_message(&mut conn, "m1", "v1", "c1", 1);

        let orphan = "INSERT INTO messages (id, tenant_id, conversation_id, contact_id, \
                      wamid_bidx, direction, sent_at, received_at) \
                      VALUES ('m2', 't1', 'nowhere', 'c1', 'wamid.m2', 'inbound', 1, 1)";
        let refused = |result: Result<usize, diesel::result::Error>| match result {
            Err(e) => e.to_string().to_lowercase().contains("foreign key"),
            Ok(_) => false,
        };
        assert!(
            refused(try_run(&mut conn, orphan)),
            "{backend:?}: a message of no conversation is refused"
        );
        assert!(
            refused(try_run(
                &mut conn,
                "UPDATE messages SET conversation_id = 'nowhere' WHERE id = 'm1'"
            )),
            "{backend:?}: a message moved to no conversation is refused"
        );
        assert!(
            refused(try_run(
                &mut conn,
                "UPDATE conversations SET id = 'v9' WHERE id = 'v1'"
            )),
            "{backend:?}: a conversation with messages keeps its id"
        );
        run(
            &mut conn,
            "UPDATE conversations SET id = 'v9' WHERE id = 'v2'",
        );
        run(
            &mut conn,
            "UPDATE messages SET conversation_id = 'v9' WHERE id = 'm1'",
        );
        assert_eq!(count(&mut conn, "messages WHERE conversation_id = 'v9'"), 1);
        run(&mut conn, "DELETE FROM conversations WHERE id = 'v9'");
        assert_eq!(
            count(&mut conn, "messages"),
            0,
            "{backend:?}: a deleted conversation takes its messages"
        );
    }
}

/// No SQLite connection leaves the pool with less durability than configured: the
/// conversation index lowers `synchronous` on the writer's connection for a moment,
/// and the pool puts it back on every checkout.
#[test]
fn a_pooled_sqlite_connection_always_has_the_configured_synchronous() {
    use diesel::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Synchronous {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        synchronous: i32,
    }
    let db = TestDb::new(&Backend::Sqlite);
    let settings = settings_for(&db);
    let (_, pool) = converra::open_storage(&settings).unwrap();
    for _ in 0..2 {
        let mut conn = pool.get().unwrap();
        let storage::DbConn::Sqlite(c) = &mut *conn else {
            unreachable!("a SQLite URL")
        };
        let seen: Synchronous = diesel::sql_query("PRAGMA main.synchronous")
            .get_result(c)
            .unwrap();
        assert_eq!(seen.synchronous, 2, "FULL, the default");
        diesel::sql_query("PRAGMA main.synchronous = OFF")
            .execute(c)
            .unwrap();
    }
}

/// Runs one statement of raw SQL on either backend.
/// The rows of `rows` (a table, with a WHERE clause if need be).
fn count(conn: &mut storage::DbConn, rows: &str) -> i64 {
    use diesel::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let sql = format!("SELECT COUNT(*) AS n FROM {rows}");
    let rows: Vec<Count> =
        converra::on_backend!(conn, c => diesel::sql_query(&sql).load(c)).unwrap();
    rows[0].n
}

fn try_run(conn: &mut storage::DbConn, sql: &str) -> Result<usize, diesel::result::Error> {
    use diesel::RunQueryDsl;
    converra::on_backend!(conn, c => diesel::sql_query(sql).execute(c))
}

fn run(conn: &mut storage::DbConn, sql: &str) {
    use diesel::RunQueryDsl;
    converra::on_backend!(conn, c => diesel::sql_query(sql).execute(c)).unwrap();
}

/// Message `id` of tenant `t1` in `conversation`, from `contact`, sent at `sent_at`,
/// written as a raw row.
fn add_message(
    conn: &mut storage::DbConn,
    id: &str,
    conversation: &str,
    contact: &str,
    sent_at: i64,
) {
    run(
        conn,
        &format!(
            "INSERT INTO messages (id, tenant_id, conversation_id, contact_id, wamid_bidx, \
             direction, sent_at, received_at) \
             VALUES ('{id}', 't1', '{conversation}', '{contact}', 'wamid.{id}', 'inbound', \
             {sent_at}, 1)"
        ),
    );
}

/// The ids of a conversation of tenant `t1` as the API lists them, page by page (two a
/// page), in order.
fn listed(
    conn: &mut storage::DbConn,
    keyring: &converra::storage::key_store::Vault,
    conversation: &str,
) -> Vec<String> {
    let tenant = converra::ids::TenantId("t1".into());
    let mut ids = Vec::new();
    loop {
        let page = converra::storage::messages::list_messages(
            conn,
            keyring,
            &tenant,
            &conversation.into(),
            ids.last().map(String::as_str),
            2,
        )
        .unwrap();
        let full = page.len() == 2;
        ids.extend(page.into_iter().map(|m| m.id.0));
        if !full {
            return ids;
        }
    }
}

/// Tenant `t1`, its contact `c1`, and a conversation of `c1` for each id (on number
/// `n-<id>`), written as raw rows.
fn seed_rows(conn: &mut storage::DbConn, conversations: &[&str]) {
    run(
        conn,
        "INSERT INTO tenants (id, name, holder_email, created_at) VALUES ('t1', 'T', 't@example.com', 1)",
    );
    run(
        conn,
        "INSERT INTO contacts (id, tenant_id, key_id, first_seen_at, last_seen_at) \
         VALUES ('c1', 't1', 'k1', 1, 1)",
    );
    for v in conversations {
        run(
            conn,
            &format!(
                "INSERT INTO conversations (id, tenant_id, phone_number_id, contact_id, \
                 opened_at, last_message_at) VALUES ('{v}', 't1', 'n-{v}', 'c1', 1, 1)"
            ),
        );
    }
}

/// libpq and OpenSSL are compiled into the binary: a connection that asks for TLS
/// (`sslmode=require`; `verify-ca` and `verify-full` against the server's own
/// certificate when it is readable here) is encrypted. Under `CI=true` the server must
/// offer TLS (Debian's cluster does).
#[test]
fn postgres_connections_can_require_tls() {
    use diesel::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Ssl {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ssl: bool,
    }
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        ssl_cert_file: String,
    }
    for backend in backends() {
        let Backend::Postgres(_) = backend else {
            continue;
        };
        let db = TestDb::new(&backend);
        let with = |mode: &str, host: Option<&str>| {
            let mut url = url::Url::parse(&db.url).unwrap();
            if let Some(host) = host {
                url.set_host(Some(host)).unwrap();
            }
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(key, _)| key != "sslmode")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            url.set_query(None);
            for (key, value) in kept {
                url.query_pairs_mut().append_pair(&key, &value);
            }
            let separator = if url.query().is_some() { "&" } else { "?" };
            let mut settings = settings_for(&db);
            settings.database.url = format!("{url}{separator}{mode}");
            DbManager::new(&settings).unwrap().establish()
        };
        let mut conn = match with("sslmode=require", None) {
            Ok(conn) => conn,
            Err(e) if e.to_string().contains("does not support SSL") => {
                assert_ne!(
                    std::env::var("CI").as_deref(),
                    Ok("true"),
                    "the CI server must offer TLS: {e}"
                );
                eprintln!("the test server does not offer TLS: {e}");
                continue;
            }
            Err(e) => panic!("sslmode=require: {e}"),
        };
        let encrypted = |conn: &mut storage::DbConn| {
            let rows: Vec<Ssl> = converra::on_backend!(conn, c => diesel::sql_query(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            .load(c))
            .unwrap();
            rows[0].ssl
        };
        assert!(encrypted(&mut conn), "sslmode=require: not encrypted");
        // The server's own (self-signed) certificate as the CA, when this test can read it.
        let cert: Vec<Setting> = converra::on_backend!(&mut conn, c => diesel::sql_query(
            "SELECT setting AS ssl_cert_file FROM pg_settings WHERE name = 'ssl_cert_file'"
        )
        .load(c))
        .unwrap();
        let Some(cert) = cert
            .into_iter()
            .map(|s| s.ssl_cert_file)
            .find(|path| std::fs::read(path).is_ok())
        else {
            eprintln!("the server's certificate is not readable here: verify-ca not tried");
            continue;
        };
        let mut verified = with(&format!("sslmode=verify-ca&sslrootcert={cert}"), None)
            .unwrap_or_else(|e| panic!("verify-ca with {cert}: {e}"));
        assert!(encrypted(&mut verified), "verify-ca: not encrypted");
        // verify-full also checks the host name, which the certificate may give as
        // localhost or as the machine's name: tried under both.
        let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        for host in ["localhost", hostname.trim()] {
            if host.is_empty() {
                continue;
            }
            if let Ok(mut full) = with(
                &format!("sslmode=verify-full&sslrootcert={cert}"),
                Some(host),
            ) {
                assert!(encrypted(&mut full), "verify-full: not encrypted");
                eprintln!("verify-full as {host}: encrypted");
            }
        }
    }
}

/// The master key's check value: with data in the database, a missing key file is not
/// replaced by a new key and a different key is refused, each naming the file; the
/// right file opens it again. A database that holds nothing yet gets a new key.
#[test]
fn a_missing_or_different_master_key_is_refused_while_data_exists() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let key_file = std::path::PathBuf::from(&settings.security.master_key_file);

        // Nothing sealed yet: a lost key is simply made anew.
        drop(converra::open_storage(&settings).unwrap());
        std::fs::remove_file(&key_file).unwrap();
        drop(converra::open_storage(&settings).unwrap());

        let (_, pool) = converra::open_storage(&settings).unwrap();
        storage::tenants::create_tenant(&mut pool.get().unwrap(), "Acme", "ops@acme.example", 1)
            .unwrap();
        drop(pool);
        let original = std::fs::read(&key_file).unwrap();

        std::fs::remove_file(&key_file).unwrap();
        let refused = converra::open_storage(&settings).unwrap_err().to_string();
        assert!(
            refused.contains("master.key") && refused.contains("missing"),
            "{refused}"
        );
        assert!(refused.contains("Restore"), "{refused}");
        assert!(!key_file.exists(), "a new key was made beside the data");

        std::fs::write(&key_file, "11".repeat(32)).unwrap();
        let refused = converra::open_storage(&settings).unwrap_err().to_string();
        assert!(
            refused.contains("master.key") && refused.contains("not the master key"),
            "{refused}"
        );

        std::fs::write(&key_file, &original).unwrap();
        let (_, pool) = converra::open_storage(&settings).unwrap();
        let tenants = storage::tenants::list_tenants(&mut pool.get().unwrap()).unwrap();
        assert_eq!(tenants.len(), 1);
    }
}

/// Raw payloads live as long as their day's key: past `inbox.keep_raw_days` the day's
/// stored payloads are deleted and its key destroyed, except while an inbox event of
/// that day still waits, which keeps the key (counted as overdue) until it is applied.
#[test]
fn raw_payloads_expire_with_their_day_keys() {
    use storage::inbox::{self, PreparedEvent, PreparedOther};
    use storage::raw_keys::{self, RawKeys};

    const DAY: i64 = 86_400_000;
    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let (tenant_a, _) = seed_tenants(&settings);
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        if let storage::DbConn::Sqlite(c) = &mut *conn {
            use diesel::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Flag {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                secure_delete: i64,
            }
            let flag: Vec<Flag> = diesel::sql_query("PRAGMA keystore.secure_delete")
                .load(c)
                .unwrap();
            assert_eq!(
                flag[0].secure_delete, 1,
                "the key store overwrites what it deletes"
            );
        }
        let first_day = 1_767_225_600_000; // 2026-01-01
        let later_day = first_day + 10 * DAY;
        let old_key = day_key(&mut conn, &keyring, first_day);
        let new_key = day_key(&mut conn, &keyring, later_day);
        let other =
            |key| PreparedOther::seal(key, None, "not_json", None, None, b"raw bytes").unwrap();
        inbox::insert_other(&mut conn, None, &other(&old_key), first_day).unwrap();
        inbox::insert_other(&mut conn, None, &other(&new_key), later_day).unwrap();
        let body = text_webhook(NUMBER_A, "4915000", "wamid.raw.1", "waiting");
        let event = converra::whatsapp::webhook::parse(&body).events.remove(0);
        let tenant = converra::ids::TenantId(tenant_a.id.clone());
        let waiting = PreparedEvent::seal(&keyring, &tenant, &old_key, event).unwrap();
        let row = inbox::insert_event(&mut conn, &tenant, &waiting, first_day)
            .unwrap()
            .unwrap();
        assert_eq!(
            inbox::webhook_event_payloads(&mut conn, &keyring, "not_json").unwrap(),
            vec![b"raw bytes".to_vec(), b"raw bytes".to_vec()]
        );

        let keys = RawKeys::default();
        let now = first_day + 31 * DAY;
        let expired = raw_keys::expire(&mut conn, &keyring, &keys, now, 30).unwrap();
        assert_eq!(expired.deleted, 1, "the first day's stored payload");
        assert!(
            expired.destroyed.is_empty(),
            "a waiting event keeps its day's key"
        );
        assert_eq!(expired.overdue, 1);
        let page = inbox::pending(&mut conn, &keyring, 0, now, 10).unwrap();
        assert_eq!(page.items.len(), 1, "the waiting event is still readable");

        inbox::mark_processed_many(&mut conn, &[row], now).unwrap();
        let expired = raw_keys::expire(&mut conn, &keyring, &keys, now, 30).unwrap();
        assert_eq!(expired.destroyed, vec![old_key.day.clone()]);
        assert_eq!(expired.overdue, 0);
        assert!(keys
            .for_day(&mut conn, &keyring, &old_key.day)
            .unwrap()
            .is_none());
        assert_eq!(
            inbox::webhook_event_payloads(&mut conn, &keyring, "not_json").unwrap(),
            vec![b"raw bytes".to_vec()],
            "the later day's payload is kept"
        );

        let expired =
            raw_keys::expire(&mut conn, &keyring, &keys, later_day + 31 * DAY, 30).unwrap();
        assert_eq!(expired.deleted, 1);
        assert_eq!(expired.destroyed, vec![new_key.day.clone()]);
    }
}

/// A contact look-up (by an identifier's keyed hash, one or a batch) is planned through
/// that identifier's index, the conversations of the contacts found through theirs,
/// and a tenant's listing through the tenant's index, on both backends,
/// whatever the planner knows of the table: PostgreSQL's sessions plan with index
/// lookups only, which a fresh, never analysed table shows.
#[test]
fn contact_lookups_and_listings_are_planned_through_their_indexes() {
    use diesel::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct PgPlan {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    #[derive(diesel::QueryableByName)]
    struct SqlitePlan {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }
    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let (tenant_a, _) = seed_tenants(&settings);
        let (_, pool) = converra::open_storage(&settings).unwrap();
        let mut conn = pool.get().unwrap();
        let plan = |conn: &mut storage::DbConn, query: &str| -> String {
            match conn {
                storage::DbConn::Pg(c) => diesel::sql_query(format!("EXPLAIN {query}"))
                    .load::<PgPlan>(c)
                    .unwrap()
                    .into_iter()
                    .map(|row| row.line)
                    .collect::<Vec<_>>()
                    .join("\n"),
                storage::DbConn::Sqlite(c) => {
                    diesel::sql_query(format!("EXPLAIN QUERY PLAN {query}"))
                        .load::<SqlitePlan>(c)
                        .unwrap()
                        .into_iter()
                        .map(|row| row.detail)
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            }
        };
        let tenant = &tenant_a.id;
        for (query, index) in [
            (
                "SELECT tenant_id, id, key_id FROM contacts WHERE wa_id_bidx = 'h1'".to_string(),
                "contacts_wa_id",
            ),
            (
                "SELECT tenant_id, wa_id_bidx FROM contacts WHERE wa_id_bidx IN ('h1', 'h2')"
                    .to_string(),
                "contacts_wa_id",
            ),
            (
                "SELECT tenant_id, id FROM contacts WHERE user_id_bidx = 'u1'".to_string(),
                "contacts_user_id",
            ),
            (
                "SELECT tenant_id, id FROM contacts WHERE user_id_bidx IN ('u1', 'u2')".to_string(),
                "contacts_user_id",
            ),
            (
                "SELECT id, tenant_id, phone_number_id FROM conversations \
                 WHERE contact_id IN ('c1', 'c2')"
                    .to_string(),
                "conversations_contact",
            ),
            (
                format!(
                    "SELECT id FROM contacts WHERE tenant_id = '{tenant}' ORDER BY id LIMIT 50"
                ),
                "contacts_tenant",
            ),
        ] {
            let plan = plan(&mut conn, &query);
            assert!(
                plan.contains(index),
                "{backend:?}: {query} is planned through {index}:\n{plan}"
            );
        }
        if let storage::DbConn::Pg(c) = &mut *conn {
            #[derive(diesel::QueryableByName)]
            struct Setting {
                #[diesel(sql_type = diesel::sql_types::Text)]
                enable_seqscan: String,
            }
            let seen: Setting = diesel::sql_query("SHOW enable_seqscan")
                .get_result(c)
                .unwrap();
            assert_eq!(seen.enable_seqscan, "off");
        }
    }
}

/// A tenant's writes run one after another in the order they were queued, however many
/// writer threads run: a read-then-update done by many concurrent writes of one tenant
/// loses no update, on PostgreSQL's two writers as on SQLite's one.
#[actix_rt::test]
async fn a_tenants_writes_run_one_at_a_time_whatever_the_writers() {
    use converra::ids::TenantId;
    use converra::storage::writer::{self, WriterConfig};
    use diesel::prelude::*;

    struct Quiet;
    impl converra::storage::report::WriterReport for Quiet {}

    #[derive(QueryableByName)]
    struct Counter {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        value: i64,
    }

    for backend in backends() {
        let db = TestDb::new(&backend);
        let settings = settings_for(&db);
        let (keyring, pool) = converra::open_storage(&settings).unwrap();
        {
            let mut conn = pool.get().unwrap();
            storage::on_backend!(&mut *conn, c => diesel::sql_query(
                "CREATE TABLE test_counter (tenant TEXT PRIMARY KEY, value BIGINT NOT NULL)"
            ).execute(c))
            .unwrap();
        }
        let (handle, threads) = writer::spawn(
            pool.clone(),
            keyring,
            std::sync::Arc::new(converra::clock::SystemClock),
            std::sync::Arc::new(Quiet),
            std::sync::Arc::new(storage::routes::RouteCache::default()),
            WriterConfig {
                batch_max: 8,
                writers: 2,
                wal_restart_pages: 1 << 20,
                checkpoint_interval: std::time::Duration::from_millis(50),
                before_batch: None,
            },
            slog::Logger::root(slog::Discard, slog::o!()),
        )
        .unwrap();
        let tenants = ["t-one", "t-two", "t-three"];
        let writes = tenants.iter().flat_map(|tenant| {
            (0..60).map(|_| {
                let handle = handle.clone();
                let tenant = tenant.to_string();
                async move {
                    let key = tenant.clone();
                    handle
                        .write(Some(TenantId(tenant)), move |conn| {
                            let read: Vec<Counter> = storage::on_backend!(conn, c =>
                                diesel::sql_query("SELECT value FROM test_counter WHERE tenant = $1")
                                    .bind::<diesel::sql_types::Text, _>(&key)
                                    .load(c))?;
                            let next = read.first().map_or(0, |row| row.value) + 1;
                            // A pause between the read and the write, where another
                            // writer's transaction could slip in.
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            storage::on_backend!(conn, c => diesel::sql_query(
                                "DELETE FROM test_counter WHERE tenant = $1")
                                .bind::<diesel::sql_types::Text, _>(&key)
                                .execute(c))?;
                            storage::on_backend!(conn, c => diesel::sql_query(
                                "INSERT INTO test_counter (tenant, value) VALUES ($1, $2)")
                                .bind::<diesel::sql_types::Text, _>(&key)
                                .bind::<diesel::sql_types::BigInt, _>(next)
                                .execute(c))?;
                            Ok(next)
                        })
                        .await
                }
            })
        });
        let results = futures_util::future::join_all(writes).await;
        assert!(
            results.iter().all(|result| result.is_ok()),
            "{backend:?}: every write committed: {:?}",
            results.iter().find(|result| result.is_err())
        );
        let mut conn = pool.get().unwrap();
        for tenant in tenants {
            let counted: Vec<Counter> = storage::on_backend!(&mut *conn, c =>
                diesel::sql_query("SELECT value FROM test_counter WHERE tenant = $1")
                    .bind::<diesel::sql_types::Text, _>(tenant)
                    .load(c))
            .unwrap();
            assert_eq!(
                counted.first().map(|row| row.value),
                Some(60),
                "{backend:?}: {tenant}: no write of the tenant overlapped another"
            );
        }
        handle.stop().await;
        for thread in threads {
            thread.handle.join().unwrap();
        }
    }
}
