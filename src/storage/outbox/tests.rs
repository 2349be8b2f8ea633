use super::*;
use crate::storage::contacts::{resolve_contact, ContactIdentifiers};
use crate::storage::tenants;

/// The sender reads a number's pending sends in the order they were accepted, with
/// their due times; a send is marked in flight once, and a finished one is no
/// longer pending.
#[test]
fn pending_sends_come_in_acceptance_order_and_are_marked_in_flight_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (vault, pool) = crate::storage::test_storage(dir.path());
    let mut conn = pool.get().expect("connection");
    let tenant = TenantId(
        tenants::create_tenant(&mut conn, "t", "owner@t.example", 1)
            .expect("tenant")
            .tenant_id,
    );
    let number = PhoneNumberId("100".into());
    let contact = |conn: &mut DbConn, wa: &str| {
        let ids = ContactIdentifiers {
            user_id: None,
            wa_id: Some(wa.into()),
        };
        resolve_contact(conn, &vault, &tenant, &ids, None, 1).expect("contact")
    };
    let (x, y) = (
        contact(&mut conn, "4915100000001"),
        contact(&mut conn, "4915100000002"),
    );
    let queue = |conn: &mut DbConn, of: &ContactId, key: &KeyId, due: i64| {
        let id = MessageId::generate();
        let send = NewSend {
            id: id.clone(),
            tenant_id: tenant.clone(),
            phone_number_id: number.clone(),
            contact_id: of.clone(),
            key_id: key.clone(),
            kind: "read".into(),
            needs_window: false,
            marketing: false,
            automation: None,
            content_ct: None,
            request_ct: vec![1],
            idempotency: None,
            now_ms: 10,
            deadline_ms: 1_000_000,
        };
        accept(conn, &send).expect("accepted");
        retry_at(conn, &id, due, None).expect("due time");
        id
    };
    let x_first = queue(&mut conn, &x.contact_id, &x.key_id, 500);

    let x_second = queue(&mut conn, &x.contact_id, &x.key_id, 100);
    let y_first = queue(&mut conn, &y.contact_id, &y.key_id, 100);
    let y_second = queue(&mut conn, &y.contact_id, &y.key_id, 100);
    let other_number = PhoneNumberId("200".into());
    assert!(pending_sends(&mut conn, &other_number, 10)
        .expect("pending")
        .is_empty());

    let rows = pending_sends(&mut conn, &number, 10).expect("pending");
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let order = [&x_first, &x_second, &y_first, &y_second].map(|id| id.as_str());
    assert_eq!(ids, order);
    let due: Vec<i64> = rows.iter().map(|r| r.next_attempt_at).collect();
    assert_eq!(due, vec![500, 100, 100, 100]);
    assert_eq!(
        pending_sends(&mut conn, &number, 2).expect("pending").len(),
        2
    );

    let both = vec![y_first.clone(), y_second.clone()];
    assert_eq!(
        mark_sending(&mut conn, &both, 50).expect("marked").marked,
        both
    );
    assert!(
        mark_sending(&mut conn, &both, 50)
            .expect("not twice")
            .marked
            .is_empty(),
        "a send already in flight is not marked again"
    );
    record_done(&mut conn, &y_first).expect("done");
    let rows = pending_sends(&mut conn, &number, 10).expect("pending");
    let states: Vec<(&str, OutboxState, i32)> = rows
        .iter()
        .map(|r| (r.id.as_str(), r.state, r.attempts))
        .collect();
    assert_eq!(
        states,
        vec![
            (x_first.as_str(), OutboxState::Queued, 0),
            (x_second.as_str(), OutboxState::Queued, 0),
            (y_second.as_str(), OutboxState::Sending, 1)
        ]
    );
}

/// A finished send leaves the outbox after its time, and its state is still read
/// from its message; a send still queued stays, with its key, and so does a newer
/// key.
#[test]
fn finished_sends_and_old_idempotency_keys_expire() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (vault, pool) = crate::storage::test_storage(dir.path());
    let mut conn = pool.get().expect("connection");
    let tenant = TenantId(
        tenants::create_tenant(&mut conn, "t", "owner@t.example", 1)
            .expect("tenant")
            .tenant_id,
    );
    let ids = ContactIdentifiers {
        user_id: None,
        wa_id: Some("4915100000001".into()),
    };
    let contact = resolve_contact(&mut conn, &vault, &tenant, &ids, None, 1).expect("contact");
    let send = |conn: &mut DbConn, at: i64, key: &str| {
        let id = MessageId::generate();
        let new = NewSend {
            id: id.clone(),
            tenant_id: tenant.clone(),
            phone_number_id: PhoneNumberId("100".into()),
            contact_id: contact.contact_id.clone(),
            key_id: contact.key_id.clone(),
            kind: "template".into(),
            needs_window: false,
            marketing: false,
            automation: None,
            content_ct: Some(vec![1]),
            request_ct: vec![1],
            idempotency: Some((key.to_string(), "hash".into())),
            now_ms: at,
            deadline_ms: at + 1_000,
        };
        accept(conn, &new).expect("accepted");
        id
    };
    let old_done = send(&mut conn, 10, "k1");
    let old_queued = send(&mut conn, 20, "k2");
    let new_done = send(&mut conn, 500, "k3");
    record_failed(&mut conn, &tenant, &old_done, "{}", 30).expect("failed");
    record_failed(&mut conn, &tenant, &new_done, "{}", 510).expect("failed");

    // k2's send still waits: its key stays, so a client's retry sends nothing twice.
    assert_eq!(purge_finished(&mut conn, 100).expect("purged"), (1, 1));
    assert!(replay(&mut conn, &tenant, "k2", "hash")
        .expect("replay")
        .is_some());
    let pending = pending_sends(&mut conn, &PhoneNumberId("100".into()), 10).expect("rows");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, old_queued.as_str());
    let record = send_record(&mut conn, &tenant, old_done.as_str())
        .expect("read")
        .expect("still a send");
    assert_eq!(record.stage, SendStage::Message(Some(MessageState::Failed)));
    // The newer key still answers; the expired one is free again.
    assert!(replay(&mut conn, &tenant, "k3", "hash")
        .expect("replay")
        .is_some());
    assert!(replay(&mut conn, &tenant, "k1", "hash")
        .expect("replay")
        .is_none());
}
