//! What Converra tells account holders by email: each event's subject and its plain
//! text and HTML bodies, rendered from the templates beside this module with minijinja
//! (HTML templates escape every value). An email carries ids and what the event is,
//! never message content nor an end user's data. Rendered emails wait in the email
//! outbox ([`crate::storage::email`]) for the mailer ([`crate::actors::mailer`]).

use std::sync::OnceLock;

use minijinja::{context, Environment};

use crate::ids::TenantId;
use crate::storage::email::NewEmail;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("email template {0}: {1}")]
    Template(&'static str, minijinja::Error),
}

/// Emails are composed inside the writes that queue them: a template that does not
/// render fails the write as what it is.
impl From<EmailError> for StorageError {
    fn from(e: EmailError) -> Self {
        match e {
            EmailError::Template(name, e) => StorageError::Template {
                name,
                message: e.to_string(),
            },
        }
    }
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
            ("request.txt", include_str!("templates/request.txt")),
            ("request.html", include_str!("templates/request.html")),
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
    account("notice", tenant_id, tenant_name, recipient, subject, body)
}

/// An email to the account holder about the account itself (its closure, an
/// operator's notice): `body` (plain text, paragraphs separated by blank lines) under
/// `subject`, counted under `event`.
pub fn account(
    event: &str,
    tenant_id: &TenantId,
    tenant_name: &str,
    recipient: &str,
    subject: &str,
    body: &str,
) -> Result<NewEmail, EmailError> {
    render_about(
        event,
        tenant_id,
        tenant_name,
        recipient,
        subject,
        body,
        false,
    )
}

/// An email to the operator's privacy contact about an account (a deadline nearing):
/// as [`account`], addressed to the operator.
pub fn to_operator(
    event: &str,
    tenant_id: &TenantId,
    recipient: &str,
    subject: &str,
    body: &str,
) -> Result<NewEmail, EmailError> {
    render_about(
        event,
        tenant_id,
        tenant_id.as_str(),
        recipient,
        subject,
        body,
        true,
    )
}

fn render_about(
    event: &str,
    tenant_id: &TenantId,
    tenant_name: &str,
    recipient: &str,
    subject: &str,
    body: &str,
    for_operator: bool,
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
        for_operator => for_operator,
    };
    Ok(NewEmail {
        tenant_id: tenant_id.clone(),
        event: event.into(),
        recipient: recipient.to_string(),
        subject: subject.to_string(),
        text_body: render("notice.txt", values.clone())?,
        html_body: render("notice.html", values)?,
    })
}

/// The account holder's confirmation that the account is closed: its API keys and
/// numbers stopped, and when its data goes.
pub fn closure(
    tenant_id: &TenantId,
    tenant_name: &str,
    recipient: &str,
    closure: &crate::storage::closure::Closure,
) -> Result<NewEmail, EmailError> {
    const BACKUPS: &str = "Its contacts' data and messages are sealed under keys of the \
        account's own, which the deletion destroys: copies of them in backups become \
        unreadable then; the rest of a backup goes when the backup expires.";
    let deleted = if closure.purge_after <= closure.closed_at {
        format!("All of its data is being deleted now. {BACKUPS}")
    } else {
        format!(
            "All of its data will be deleted on {}; until then the operator can bring the \
             deletion forward on your request. {BACKUPS}",
            crate::clock::rfc3339(closure.purge_after)
        )
    };
    let body = format!(
        "The Converra account \"{tenant_name}\" ({tenant_id}) is closed as of {}. Its API \
         keys no longer work, and its WhatsApp numbers no longer send or receive through \
         Converra.\n\n{deleted}",
        crate::clock::rfc3339(closure.closed_at)
    );
    account(
        "closed",
        tenant_id,
        tenant_name,
        recipient,
        "Your Converra account is closed",
        &body,
    )
}

/// What happened to a data-subject request, for its account holder's email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestEvent {
    Received,
    /// Due within a week and not completed.
    Reminder,
    Extended,
    Completed,
    Rejected,
}

impl RequestEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestEvent::Received => "received",
            RequestEvent::Reminder => "reminder",
            RequestEvent::Extended => "extended",
            RequestEvent::Completed => "completed",
            RequestEvent::Rejected => "rejected",
        }
    }
}

/// A data-subject request as its email names it: ids, kind and dates, never the
/// subject's identifier or data.
pub struct RequestFacts<'a> {
    pub request_id: &'a str,
    pub kind: &'a str,
    /// RFC 3339.
    pub received: &'a str,
    /// YYYY-MM-DD.
    pub due: &'a str,
    pub reason: Option<&'a str>,
}

/// The account holder's email about `event` of a data-subject request. The Subject
/// names the event, the kind and the request id.
pub fn request_event(
    tenant_id: &TenantId,
    tenant_name: &str,
    recipient: &str,
    event: RequestEvent,
    facts: &RequestFacts<'_>,
) -> Result<NewEmail, EmailError> {
    let subject = format!(
        "Privacy request {}: {} {}",
        event.as_str(),
        facts.kind,
        facts.request_id
    );
    let sentence = match event {
        RequestEvent::Received => format!(
            "Converra received a {} request for one of your contacts and runs it by itself; it is due by {}.",
            facts.kind, facts.due
        ),
        RequestEvent::Extended => format!(
            "The deadline of the {} request is extended: it is now due by {}.",
            facts.kind, facts.due
        ),
        RequestEvent::Reminder => format!(
            "The {} request is due by {} and not completed yet; Converra keeps working on it.",
            facts.kind, facts.due
        ),
        RequestEvent::Completed => format!("The {} request is completed.", facts.kind),
        RequestEvent::Rejected => format!("The {} request was rejected.", facts.kind),
    };
    let values = context! {
        tenant_name => tenant_name,
        subject => &subject,
        sentence => sentence,
        request_id => facts.request_id,
        kind => facts.kind,
        received => facts.received,
        due => facts.due,
        reason => facts.reason,
    };
    Ok(NewEmail {
        tenant_id: tenant_id.clone(),
        event: format!("request_{}", event.as_str()),
        recipient: recipient.to_string(),
        text_body: render("request.txt", values.clone())?,
        html_body: render("request.html", values)?,
        subject,
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
