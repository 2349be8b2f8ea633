use super::*;
use crate::ids::PhoneNumberId;
use crate::storage::conversations::upsert_conversation;
use crate::storage::schema::data_keys;
use crate::storage::tenants;

fn wa(number: &str) -> ContactIdentifiers {
    ContactIdentifiers {
        user_id: None,
        wa_id: Some(number.into()),
    }
}

/// One batch of questions from two tenants gets each its own answer, in order: a
/// contact with its conversation on the number asked about (and without one on
/// another number), a contact unknown to the tenant asking (though another tenant
/// has the number), identifiers to link or to merge, a contact whose key is gone.
#[test]
fn a_batch_of_look_ups_answers_each_question_as_a_look_up_of_its_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (vault, pool) = crate::storage::test_storage(dir.path());
    let mut conn = pool.get().expect("connection");
    let tenant = |conn: &mut DbConn, name: &str| {
        TenantId(
            tenants::create_tenant(conn, name, "owner@t.example", 1)
                .expect("tenant")
                .tenant_id,
        )
    };
    let (a, b) = (tenant(&mut conn, "a"), tenant(&mut conn, "b"));
    let resolve = |conn: &mut DbConn, ids: &ContactIdentifiers| {
        resolve_contact(conn, &vault, &a, ids, None, 1).expect("contact")
    };
    let known = resolve(&mut conn, &wa("4915100000001"));
    let number = PhoneNumberId("100".into());
    let conversation = upsert_conversation(&mut conn, &a, &number, &known.contact_id, Some(1), 1)
        .expect("conversation");
    let by_user = resolve(
        &mut conn,
        &ContactIdentifiers {
            user_id: Some("US.1".into()),
            wa_id: None,
        },
    );
    resolve(&mut conn, &wa("4915100000003"));
    let keyless = resolve(&mut conn, &wa("4915100000004"));
    vault
        .with_store(&mut conn, |conn| {
            on_backend!(conn, c => diesel::update(data_keys::table.find(keyless.key_id.as_str()))
                .set(data_keys::wrapped_key.eq(None::<Vec<u8>>))
                .execute(c))?;
            Ok(())
        })
        .expect("key destroyed");

    // A contact of B's that names A's key (damaged data) is not given A's key.
    let borrower = resolve_contact(&mut conn, &vault, &b, &wa("4915100000009"), None, 1)
        .expect("contact of b");
    on_backend!(&mut *conn, c => diesel::update(contacts::table.find(borrower.contact_id.as_str()))
        .set(contacts::key_id.eq(known.key_id.as_str()))
        .execute(c))
    .expect("key id replaced");
    let ask = |tenant_id: &TenantId, number: &str, ids: ContactIdentifiers| ContactQuestion {
        tenant_id: tenant_id.clone(),
        phone_number_id: PhoneNumberId(number.into()),
        ids,
    };
    let questions = [
        ask(&a, "100", wa("4915100000001")),
        ask(&a, "200", wa("4915100000001")),
        ask(&b, "100", wa("4915100000001")),
        ask(&a, "100", wa("4915100000002")),
        // The known contact's number with a BSUID it lacks: to link.
        ask(
            &a,
            "100",
            ContactIdentifiers {
                user_id: Some("US.9".into()),
                wa_id: Some("4915100000001".into()),
            },
        ),
        // One contact's BSUID and another's number: to merge.
        ask(
            &a,
            "100",
            ContactIdentifiers {
                user_id: Some("US.1".into()),
                wa_id: Some("4915100000003".into()),
            },
        ),
        ask(&a, "100", wa("4915100000004")),
        ask(
            &a,
            "100",
            ContactIdentifiers {
                user_id: Some("US.1".into()),
                wa_id: None,
            },
        ),
        ask(&b, "100", wa("4915100000009")),
    ];
    let answers: Vec<Lookup> = look_up_contacts(&mut conn, &vault, &questions)
        .expect("look-ups")
        .into_iter()
        .map(|answer| answer.expect("every key that exists opens"))
        .collect();
    let described: Vec<String> = answers
        .iter()
        .map(|answer| match answer {
            Lookup::Found(contact, conversation) => format!(
                "found {} in {}",
                contact.contact_id.as_str(),
                conversation.as_ref().map_or("none", |c| c.as_str())
            ),
            Lookup::Absent => "absent".into(),
            Lookup::NeedsWriter => "writer".into(),
        })
        .collect();
    let found = |contact: &ResolvedContact, conversation: &str| {
        format!("found {} in {conversation}", contact.contact_id.as_str())
    };
    assert_eq!(
        described,
        vec![
            found(&known, conversation.as_str()),
            found(&known, "none"),
            "absent".into(),
            "absent".into(),
            "writer".into(),
            "writer".into(),
            "writer".into(),
            found(&by_user, "none"),
            "writer".into(),
        ]
    );
    let Lookup::Found(contact, _) = &answers[0] else {
        unreachable!("checked above")
    };
    let place = contact_field(a.as_str(), "test", "x");
    let sealed = known.key.seal(b"under the key", &place).expect("sealed");
    assert_eq!(
        contact.key.open(&sealed, &place).expect("the same key"),
        b"under the key"
    );
}
