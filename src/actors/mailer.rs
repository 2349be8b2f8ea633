//! The mailer: one supervised actor that delivers the email outbox over SMTP
//! ([`crate::storage::email`]). It looks for due emails every second (the operator's
//! commands queue them from another process), sends them one at a time, and writes
//! each outcome before the next: accepted by the server (`sent`, never sent again), a
//! refusal for now or a server that cannot be reached (tried again after
//! `email.retry_base_ms`, doubling up to `email.retry_max_ms`), or a refusal for good
//! (a 5xx, an address that cannot be one: `failed`, with the server's answer). An email
//! keeps the Message-ID it was queued with, so the one retry that may repeat a
//! delivery (the daemon stopped between the server's acceptance and its record) is
//! recognisably the same email.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{when_idle, Core, FinishWork};
use crate::storage::email::{self, DueEmail};
use crate::storage::{DbConn, StorageError};

/// How often the mailer looks for due emails.
const TICK: Duration = Duration::from_secs(1);
/// Emails read at a time.
const BATCH: i64 = 32;

pub struct Mailer {
    core: Arc<Core>,
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    /// A batch is being delivered: no second one starts.
    sending: bool,
    /// Shutdown asked it to start no delivery ([`FinishWork`]); a batch being
    /// delivered stops after the email in hand.
    finishing: Arc<AtomicBool>,
}

/// How many times the record of a sent email is tried before the batch gives up.
const RECORD_TRIES: u32 = 30;

/// What became of one delivery attempt.
#[derive(Clone)]
enum Outcome {
    Sent,
    /// Tried again later, with the reason.
    Retry(String),
    /// Refused for good, with the reason.
    Failed(String),
}

impl Mailer {
    pub fn new(core: Arc<Core>) -> Mailer {
        Mailer {
            core,
            transport: None,
            sending: false,
            finishing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The SMTP client, built once; `None` while `email.smtp_url` is not set.
    fn transport(&mut self) -> Result<Option<AsyncSmtpTransport<Tokio1Executor>>, String> {
        if let Some(transport) = &self.transport {
            return Ok(Some(transport.clone()));
        }
        let settings = &self.core.settings.email;
        if settings.smtp_url.is_empty() {
            return Ok(None);
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&settings.smtp_url)
            .map_err(|e| e.to_string())?
            .timeout(Some(Duration::from_secs(settings.timeout_secs)))
            .build();
        self.transport = Some(transport.clone());
        Ok(Some(transport))
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.sending || self.finishing.load(Ordering::Acquire) {
            return;
        }
        let transport = match self.transport() {
            Ok(Some(transport)) => transport,
            Ok(None) => return,
            Err(e) => {
                slog::error!(self.core.log, "the SMTP client cannot be built; emails wait";
                    "error" => e);
                return;
            }
        };
        self.sending = true;
        let core = self.core.clone();
        let finishing = self.finishing.clone();
        let delivered = async move {
            let now = core.clock.now_ms();
            let due = core
                .read(move |conn, _| email::due(conn, now, BATCH))
                .await?;
            for email in due {
                if finishing.load(Ordering::Acquire) {
                    break;
                }
                let outcome = deliver(&core, &transport, &email).await;
                // An email the server took must not go again because its record
                // failed: the record is tried again for a while first.
                let mut tries = 0;
                loop {
                    match record(&core, &email, outcome.clone()).await {
                        Ok(()) => break,
                        Err(e) if matches!(outcome, Outcome::Sent) && tries < RECORD_TRIES => {
                            tries += 1;
                            slog::warn!(core.log, "recording a sent email failed; trying again";
                                "email" => &email.id, "error" => %e);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok::<_, StorageError>(())
        };
        ctx.spawn(delivered.into_actor(self).map(|done, actor, _| {
            actor.sending = false;
            if let Err(e) = done {
                slog::warn!(actor.core.log, "delivering emails failed; they wait"; "error" => %e);
            }
            actor
                .core
                .metrics
                .timed_duties
                .with_label_values(&["mailer"])
                .inc();
        }));
    }
}

/// One attempt to hand `email` to the SMTP server.
async fn deliver(
    core: &Core,
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    email: &DueEmail,
) -> Outcome {
    let message = match build(core, email) {
        Ok(message) => message,
        Err(reason) => return Outcome::Failed(reason),
    };
    match transport.send(message).await {
        Ok(_) => Outcome::Sent,
        Err(e) if e.is_permanent() => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

/// The email as lettre sends it: text and HTML alternatives, its own Message-ID.
fn build(core: &Core, email: &DueEmail) -> Result<Message, String> {
    let from: Mailbox = core
        .settings
        .email
        .from
        .parse()
        .map_err(|e| format!("email.from: {e}"))?;
    let to: Mailbox = email
        .recipient
        .parse()
        .map_err(|e| format!("recipient address: {e}"))?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(email.subject.clone())
        .message_id(Some(email.message_id.clone()))
        .multipart(MultiPart::alternative_plain_html(
            email.text_body.clone(),
            email.html_body.clone(),
        ))
        .map_err(|e| e.to_string())
}

/// Writes what became of `email`'s attempt.
async fn record(core: &Core, email: &DueEmail, outcome: Outcome) -> Result<(), StorageError> {
    let now = core.clock.now_ms();
    let id = email.id.clone();
    type Write = Box<dyn FnMut(&mut DbConn) -> Result<(), StorageError> + Send>;
    let (label, write): (&str, Write) = match outcome {
        Outcome::Sent => (
            "sent",
            Box::new(move |conn| email::record_sent(conn, &id, now)),
        ),
        Outcome::Retry(reason) => {
            let settings = &core.settings.email;
            let exponent = email.attempts.clamp(0, 30);
            let wait = (settings.retry_base_ms as f64 * 2f64.powi(exponent))
                .min(settings.retry_max_ms as f64);
            let next = now + super::sender::jittered(wait);
            slog::info!(core.log, "an email was not delivered; it is tried again";
                "email" => &email.id, "attempt" => email.attempts + 1, "error" => &reason);
            (
                "retried",
                Box::new(move |conn| email::record_attempt_failed(conn, &id, &reason, Some(next))),
            )
        }
        Outcome::Failed(reason) => {
            slog::warn!(core.log, "an email was refused for good";
                "email" => &email.id, "error" => &reason);
            (
                "failed",
                Box::new(move |conn| email::record_attempt_failed(conn, &id, &reason, None)),
            )
        }
    };
    core.writer.write(None, write).await?;
    core.metrics.emails.with_label_values(&[label]).inc();
    Ok(())
}

impl Actor for Mailer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |mailer, ctx| mailer.tick(ctx));
    }
}

impl Supervised for Mailer {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.sending = false;
        self.transport = None;
    }
}

impl Handler<FinishWork> for Mailer {
    type Result = MessageResult<FinishWork>;

    fn handle(&mut self, _msg: FinishWork, ctx: &mut Context<Self>) -> Self::Result {
        self.finishing.store(true, Ordering::Release);
        MessageResult(when_idle(ctx, |mailer: &Mailer| !mailer.sending))
    }
}
