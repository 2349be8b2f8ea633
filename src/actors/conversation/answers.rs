//! The conversation's automated replies: once an inbound message is stored, its
//! opt-out or opt-in keyword is confirmed, or the tenant's automations choose a reply
//! ([`crate::automation`]). Replies join the conversation's sends, after the ones
//! before them; the outbox's write checks the rules and the cooldown and records the
//! run, and a refusal is recorded here.

use std::sync::Arc;

use actix::prelude::*;

use super::ConversationActor;
use crate::actors::submit::{SendOrder, Submit};
use crate::automation::{Choice, RunKind, TenantAutomations};
use crate::ids::AutomationId;
use crate::rules::Conflict;
use crate::storage::automations::{self, AutomationRun};
use crate::storage::contacts::ContactIdentifiers;
use crate::storage::{usage, StorageError};
use crate::whatsapp::outbound::{self, Recipient, SendRequest};

/// An inbound message just stored that an automation may answer.
pub(super) struct Inbound {
    /// Its op in the write that stored it (where the receipt says if it was new).
    pub index: usize,
    /// An opt-out (`Some(true)`) or opt-in keyword.
    pub keyword: Option<bool>,
    pub text: Option<String>,
    /// Meta's timestamp, clamped to the arrival: business hours are judged by it.
    pub sent_at: i64,
    pub arrived_at: i64,
}

/// Whether the contact's next inbound message is its first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Welcome {
    /// Not known yet: read when a welcome rule needs it.
    Unknown,
    First,
    NotFirst,
}

impl ConversationActor {
    /// Loads the tenant's automations, then carries on.
    pub(super) fn load_automations(&mut self, ctx: &mut Context<Self>) {
        self.in_flight = true;
        let (core, tenant_id) = (self.core.clone(), self.tenant_id.clone());
        let fut = async move {
            let read_core = core.clone();
            let tenant = tenant_id.clone();
            let log = read_core.log.clone();
            core.automations
                .get(&tenant_id, move || async move {
                    let (settings, rules, unreadable) = read_core
                        .read(move |conn, _| automations::load(conn, &tenant))
                        .await?;
                    if !unreadable.is_empty() {
                        slog::error!(log, "automations or settings of a tenant are unreadable \
                            and left out"; "unreadable" => unreadable.join(", "));
                    }
                    Ok((settings, rules))
                })
                .await
        };
        ctx.spawn(fut.into_actor(self).map(|result, actor, ctx| {
            actor.in_flight = false;
            match result {
                Ok(_) => actor.pump(ctx),
                Err(e) => actor.retry_later(e, ctx),
            }
        }));
    }

    /// The messages of a write just committed: each new one (not a message Meta sent
    /// again) gets its confirmation or its automation's reply.
    pub(super) fn answer(
        &mut self,
        inbound: Vec<Inbound>,
        duplicate: &[bool],
        automations: Arc<TenantAutomations>,
        created_contact: bool,
        ctx: &mut Context<Self>,
    ) {
        if created_contact {
            self.welcome = Welcome::First;
        }
        // In the order the messages came, confirmations and replies alike.
        self.answers.extend(
            inbound
                .into_iter()
                .filter(|message| !duplicate.get(message.index).copied().unwrap_or(false)),
        );
        if !self.answers.is_empty() {
            self.next_answer(automations, ctx);
        }
    }

    /// Chooses the automation of each waiting message in order; a welcome rule first
    /// needs to know whether the contact wrote before.
    fn next_answer(&mut self, automations: Arc<TenantAutomations>, ctx: &mut Context<Self>) {
        while !self.answering {
            let Some(message) = self.answers.front() else {
                return;
            };
            if message.keyword.is_none()
                && self.welcome == Welcome::Unknown
                && automations.welcomes()
            {
                let Some(contact) = self.contact.clone() else {
                    self.answers.clear();
                    return;
                };
                self.answering = true;
                let (tenant, before) = (self.tenant_id.clone(), message.arrived_at);
                let core = self.core.clone();
                let fut = async move {
                    core.read(move |conn, _| {
                        automations::wrote_before(conn, &tenant, &contact.contact_id, before)
                    })
                    .await
                };
                ctx.spawn(fut.into_actor(self).map(move |wrote, actor, ctx| {
                    actor.answering = false;
                    // Unreadable: judged not first, so a welcome is never sent twice.
                    actor.welcome = match wrote {
                        Ok(false) => Welcome::First,
                        _ => Welcome::NotFirst,
                    };
                    actor.next_answer(automations, ctx);
                }));
                return;
            }
            let Some(message) = self.answers.pop_front() else {
                return;
            };
            let first = self.welcome == Welcome::First;
            // Whatever it said, the contact has written now.
            self.welcome = Welcome::NotFirst;
            if let Some(opted_out) = message.keyword {
                self.confirm_preference(opted_out, &automations, ctx);
            } else if let Some(choice) =
                automations.choose(message.text.as_deref(), message.sent_at, first)
            {
                self.run_automation(choice, ctx);
            }
        }
    }

    fn run_automation(&mut self, choice: Choice<'_>, ctx: &mut Context<Self>) {
        let Some(to) = self.recipient() else {
            return;
        };
        let Some(request) = choice.rule.reply_to(&self.phone_number_id, to) else {
            return;
        };
        let run = AutomationRun {
            automation_id: Some(AutomationId(choice.rule.id.clone())),
            kind: choice.kind.as_str(),
            cooldown_ms: (choice.rule.definition.cooldown_secs as i64).saturating_mul(1000),
            once: choice.kind == RunKind::Welcome,
        };
        // A rule's reply counts as marketing: nothing for a contact who opted out or
        // objected.
        self.submit_automation(request, run, true, ctx);
    }

    /// Confirms a contact's opt-out or opt-in keyword with the tenant's reply: the one
    /// message that still goes to a contact who opted out.
    fn confirm_preference(
        &mut self,
        opted_out: bool,
        automations: &TenantAutomations,
        ctx: &mut Context<Self>,
    ) {
        let Some(to) = self.recipient() else {
            return;
        };
        let settings = &automations.settings;
        let (body, kind) = if opted_out {
            (&settings.opt_out_reply, RunKind::OptOut)
        } else {
            (&settings.opt_in_reply, RunKind::OptIn)
        };
        let request = outbound::text_request(&self.phone_number_id, to, body);
        let run = AutomationRun {
            automation_id: None,
            kind: kind.as_str(),
            cooldown_ms: 0,
            once: false,
        };
        self.submit_automation(request, run, false, ctx);
    }

    fn recipient(&self) -> Option<Recipient> {
        let contact = self.contact.as_ref()?;
        match (&contact.wa_id, &contact.user_id) {
            (Some(wa_id), _) => Some(Recipient::WaId(wa_id.clone())),
            (None, Some(user_id)) => Some(Recipient::UserId(user_id.clone())),
            (None, None) => None,
        }
    }

    /// An automation's reply joins the conversation's sends. No one waits for the
    /// answer: a refusal by a rule (restricted, opted out, ...) is recorded as the
    /// run's outcome, any other failure logged.
    fn submit_automation(
        &mut self,
        request: SendRequest,
        run: AutomationRun,
        marketing: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(contact) = self.contact.clone() else {
            return;
        };
        let order = SendOrder {
            tenant_id: self.tenant_id.clone(),
            request,
            contact: ContactIdentifiers {
                user_id: contact.user_id.clone(),
                wa_id: contact.wa_id.clone(),
            },
            idempotency: None,
            marketing,
            automation: Some(run.clone()),
        };
        let (reply, answer) = crate::storage::handoff::channel();
        let (core, log, tenant_id) = (self.core.clone(), self.log.clone(), self.tenant_id.clone());
        actix::spawn(async move {
            match answer.await {
                Ok(Ok(_)) => {}
                Ok(Err(StorageError::Conflict {
                    code: Conflict::AutomationHeldBack,
                    ..
                })) => {}
                Ok(Err(StorageError::Conflict { code, .. })) => {
                    let now = core.clock.now_ms();
                    let tenant = tenant_id.clone();
                    let recorded = core
                        .writer
                        .write(Some(tenant_id), move |conn| {
                            usage::add(conn, tenant.as_str(), now, usage::AUTOMATION_RUNS, 1)?;
                            automations::record_run(
                                conn,
                                &tenant,
                                &run,
                                &contact.contact_id,
                                None,
                                code.as_str(),
                                now,
                            )
                        })
                        .await;
                    if let Err(e) = recorded {
                        slog::warn!(log, "an automation's refused run was not recorded";
                            "error" => %e);
                    }
                }
                Ok(Err(e)) => {
                    slog::warn!(log, "an automation's reply was not stored"; "error" => %e,
                        "automation" => run.kind);
                }
                Err(_) => {}
            }
        });
        self.submits.push_back(Submit { order, reply });
        self.pump_submits(ctx);
    }
}
