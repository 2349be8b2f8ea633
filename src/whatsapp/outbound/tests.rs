use super::*;

fn send(body: Value) -> Result<SendRequest, crate::rules::FieldError> {
    parse_send(&body)
}

fn field_of(body: Value) -> String {
    send(body).expect_err("refused").field
}

#[test]
fn a_text_goes_to_meta_as_meta_spells_it() {
    let request = send(json!({
        "from_phone_number_id": "100", "to": "+4915100000001", "type": "text",
        "text": {"body": "hello", "preview_url": true}
    }))
    .expect("valid");
    assert_eq!(
        graph_body(&request, "m-1"),
        json!({
            "messaging_product": "whatsapp", "recipient_type": "individual",
            "to": "4915100000001", "biz_opaque_callback_data": "m-1",
            "type": "text", "text": {"body": "hello", "preview_url": true}
        })
    );
    let to_user = send(json!({
        "from_phone_number_id": "100", "to": "US.13491208655302741918", "type": "text",
        "text": {"body": "hello"}
    }))
    .expect("valid");
    assert_eq!(
        graph_body(&to_user, "m-2")["recipient"],
        json!("US.13491208655302741918")
    );
    assert!(graph_body(&to_user, "m-2").get("to").is_none());
}

#[test]
fn a_template_send_gives_each_placeholder_its_parameter() {
    let listed = json!([
        {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
        {"type": "BODY", "text": "Hi {{1}}, order {{2}} ships {{2}} on {{3}}."},
        {"type": "FOOTER", "text": "Reply STOP to opt out"}
    ]);
    let send = |components: Value| json!({"name": "t", "language": {"code": "en"}, "components": components});
    let text = |n: usize| {
        (0..n)
            .map(|i| json!({"type": "text", "text": i.to_string()}))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        check_template_fits(
            &send(
                json!([{"type": "header", "parameters": text(1)}, {"type": "body", "parameters": text(3)}])
            ),
            &listed
        ),
        Ok(())
    );
    assert_eq!(
        check_template_fits(
            &send(json!([{"type": "header", "parameters": text(1)}, {"type": "body", "parameters": text(2)}])),
            &listed
        )
        .expect_err("one missing")
        .field,
        "template.components[1].parameters"
    );
    assert_eq!(
        check_template_fits(&json!({"name": "t", "language": {"code": "en"}}), &listed)
            .expect_err("none given")
            .field,
        "template.components"
    );
    assert_eq!(
        check_template_fits(
            &send(json!([])),
            &json!([{"type": "BODY", "text": "Thanks!"}])
        ),
        Ok(())
    );
}

#[test]
fn mark_as_read_keeps_metas_shape() {
    let request = send(json!({
        "from_phone_number_id": "100", "status": "read", "message_id": "wamid.IN"
    }))
    .expect("valid");
    assert_eq!(request.kind, OutboundKind::Read);
    assert_eq!(
        graph_body(&request, "m-1"),
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN"})
    );
}

#[test]
fn each_refusal_names_its_field() {
    let base = |kind: &str, object: Value| json!({"from_phone_number_id": "100", "to": "4915100000001", "type": kind, kind: object});
    let cases = [
        (json!({"to": "1", "type": "text"}), "from_phone_number_id"),
        (base("text", json!({"body": "x".repeat(4097)})), "text.body"),
        (base("text", json!({"body": ""})), "text.body"),
        (
            base("text", json!({"body": "x", "preview_url": "yes"})),
            "text.preview_url",
        ),
        (
            base("text", json!({"body": "x", "bold": true})),
            "text.bold",
        ),
        (base("fax", json!({})), "type"),
        (
            json!({"from_phone_number_id": "100", "to": "not a number", "type": "text", "text": {"body": "x"}}),
            "to",
        ),
        (base("template", json!({"name": "hi"})), "template.language"),
        (
            base(
                "template",
                json!({"name": "hi", "language": {"code": "en"}, "components": [{"type": "body", "parameters": [{"type": "text"}]}]}),
            ),
            "template.components[0].parameters[0].text",
        ),
        (base("image", json!({})), "image.id"),
        (
            base("image", json!({"id": "1", "link": "https://x"})),
            "image.link",
        ),
        (
            base("image", json!({"link": "ftp://x/y.png"})),
            "image.link",
        ),
        (
            base("image", json!({"id": "1", "caption": "c".repeat(1025)})),
            "image.caption",
        ),
        (
            base("audio", json!({"id": "1", "caption": "no"})),
            "audio.caption",
        ),
        (
            base("document", json!({"id": "1", "filename": "f".repeat(241)})),
            "document.filename",
        ),
        (
            base("location", json!({"latitude": 91, "longitude": 0})),
            "location.latitude",
        ),
        (base("contacts", json!([])), "contacts"),
        (
            base("contacts", json!([{"name": {}}])),
            "contacts[0].name.formatted_name",
        ),
        (
            base(
                "interactive",
                json!({"type": "button", "body": {"text": "pick"}, "action": {"buttons": [
                    {"type": "reply", "reply": {"id": "1", "title": "a"}},
                    {"type": "reply", "reply": {"id": "2", "title": "b"}},
                    {"type": "reply", "reply": {"id": "3", "title": "c"}},
                    {"type": "reply", "reply": {"id": "4", "title": "d"}}]}}),
            ),
            "interactive.action.buttons",
        ),
        (
            base(
                "interactive",
                json!({"type": "button", "body": {"text": "pick"}, "action": {"buttons": [
                    {"type": "reply", "reply": {"id": "1", "title": "a button title too long"}}]}}),
            ),
            "interactive.action.buttons[0].reply.title",
        ),
        (
            base(
                "interactive",
                json!({"type": "list", "body": {"text": "pick"}, "action": {"button": "Menu", "sections": [
                    {"title": "s", "rows": (0..11).map(|i| json!({"id": i.to_string(), "title": "t"})).collect::<Vec<_>>()}]}}),
            ),
            "interactive.action.sections",
        ),
        (
            base(
                "interactive",
                json!({"type": "cta_url", "body": {"text": "see"}, "action": {"name": "cta_url", "parameters": {"display_text": "Open", "url": "nope"}}}),
            ),
            "interactive.action.parameters.url",
        ),
        (
            base("reaction", json!({"message_id": "wamid.1"})),
            "reaction.emoji",
        ),
        (
            json!({"from_phone_number_id": "100", "status": "delivered", "message_id": "w"}),
            "status",
        ),
    ];
    for (body, field) in cases {
        assert_eq!(field_of(body.clone()), field, "{body}");
    }
}

#[test]
fn every_kind_meta_documents_is_accepted() {
    let base = |kind: &str, object: Value| json!({"from_phone_number_id": "100", "to": "4915100000001", "type": kind, kind: object});
    for body in [
        base(
            "template",
            json!({"name": "order_update", "language": {"code": "en_US"}, "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.example/a.png"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": "42"}]},
                {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": [{"type": "payload", "payload": "p"}]}]}),
        ),
        base(
            "image",
            json!({"link": "https://x.example/a.png", "caption": "a"}),
        ),
        base("audio", json!({"id": "1234"})),
        base("video", json!({"id": "1234", "caption": "v"})),
        base(
            "document",
            json!({"id": "1234", "filename": "a.pdf", "caption": "d"}),
        ),
        base("sticker", json!({"id": "1234"})),
        base(
            "location",
            json!({"latitude": 52.5, "longitude": 13.4, "name": "Office"}),
        ),
        base(
            "contacts",
            json!([{"name": {"formatted_name": "Ana"}, "phones": [{"phone": "+1"}]}]),
        ),
        base(
            "interactive",
            json!({"type": "list", "header": {"type": "text", "text": "Menu"}, "body": {"text": "pick"},
                "footer": {"text": "f"}, "action": {"button": "Open", "sections": [
                {"title": "A", "rows": [{"id": "a1", "title": "One", "description": "d"}]},
                {"title": "B", "rows": [{"id": "b1", "title": "Two"}]}]}}),
        ),
        base(
            "interactive",
            json!({"type": "cta_url", "body": {"text": "see"}, "action": {"name": "cta_url",
                "parameters": {"display_text": "Open", "url": "https://x.example"}}}),
        ),
        base(
            "reaction",
            json!({"message_id": "wamid.1", "emoji": "\u{1F44D}"}),
        ),
        base("reaction", json!({"message_id": "wamid.1", "emoji": ""})),
    ] {
        let request = send(body.clone()).unwrap_or_else(|e| panic!("{body}: {e}"));
        let kind = request.kind.as_str();
        assert_eq!(graph_body(&request, "m")[kind], body[kind]);
    }
}
