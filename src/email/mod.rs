//! What Converra tells account holders by email: each event's subject and its plain
//! text and HTML bodies, rendered from the templates beside this module with minijinja
//! (HTML templates escape every value). An email carries ids and what the event is,
//! never message content nor an end user's data. Rendered emails wait in the email
//! outbox ([`crate::storage::email`]) for the mailer ([`crate::actors::mailer`]).

use std::sync::OnceLock;

use minijinja::{context, Environment};

use crate::ids::TenantId;
use crate::storage::email::NewEmail;

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("email template {0}: {1}")]
    Template(&'static str, minijinja::Error),
}

/// The templates, compiled once.
fn templates() -> &'static Environment<'static> {
    static TEMPLATES: OnceLock<Environment<'static>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut env = Environment::new();
        // Each template is checked by the tests that render it; one that does not
        // compile is reported when rendered.
        for (name, source) in [
            ("notice.txt", include_str!("templates/notice.txt")),
            ("notice.html", include_str!("templates/notice.html")),
        ] {
            let _ = env.add_template(name, source);
        }
        env
    })
}

fn render(name: &'static str, values: minijinja::Value) -> Result<String, EmailError> {
    templates()
        .get_template(name)
        .and_then(|template| template.render(values))
        .map_err(|e| EmailError::Template(name, e))
}

/// The account holder's email of an operator's notice: `body` (plain text, paragraphs
/// separated by blank lines) under `subject`.
pub fn notice(
    tenant_id: &TenantId,
    tenant_name: &str,
    recipient: &str,
    subject: &str,
    body: &str,
) -> Result<NewEmail, EmailError> {
    let paragraphs: Vec<&str> = body
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let values = context! {
        tenant_name => tenant_name,
        subject => subject,
        body => body.trim(),
        paragraphs => paragraphs,
    };
    Ok(NewEmail {
        tenant_id: tenant_id.clone(),
        event: "notice".into(),
        recipient: recipient.to_string(),
        subject: subject.to_string(),
        text_body: render("notice.txt", values.clone())?,
        html_body: render("notice.html", values)?,
    })
}

/// The domain of the sender's address (`email.from`), for the Message-IDs of the
/// emails Converra sends.
pub fn message_domain(from: &str) -> String {
    let address = from
        .rsplit_once('<')
        .map_or(from, |(_, rest)| rest.trim_end_matches('>'));
    match address.rsplit_once('@') {
        Some((_, domain)) if !domain.trim().is_empty() => domain.trim().to_string(),
        _ => "converra.invalid".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_escapes_what_it_is_given_in_html_only() {
        let email = notice(
            &TenantId("t1".into()),
            "Shop <b>&</b> Co",
            "holder@example.com",
            "Change of ownership",
            "We <merge>.\n\nSecond & last paragraph.",
        )
        .expect("rendered");
        assert!(
            email.text_body.contains("We <merge>."),
            "{}",
            email.text_body
        );
        assert!(email.text_body.contains("\"Shop <b>&</b> Co\""));
        assert!(
            email.html_body.contains("<p>We &lt;merge&gt;.</p>"),
            "{}",
            email.html_body
        );
        assert!(email.html_body.contains("Second &amp; last paragraph."));
        assert!(email.html_body.contains("Shop &lt;b&gt;&amp;&lt;"));
        assert!(!email.html_body.contains("<merge>"));
        assert!(!email.html_body.contains("<b>"));
    }

    #[test]
    fn the_message_domain_is_the_senders() {
        assert_eq!(
            message_domain("Converra <privacy@converra.example>"),
            "converra.example"
        );
        assert_eq!(message_domain("ops@mail.example"), "mail.example");
        assert_eq!(message_domain("nobody"), "converra.invalid");
    }
}
