//! A sender's part in keeping the account's templates and limits current: the
//! updates of business accounts from Meta's webhooks, and the template sync.

use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use super::{wake, SenderActor};
use crate::actors::Core;
use crate::ids::PhoneNumberId;
use crate::storage::messaging_limits;
use crate::storage::templates::{self, TemplateChange};
use crate::storage::tenants::{self, SendingNumber};
use crate::storage::StorageError;
use crate::whatsapp::graph::{GraphClient, GraphError};

/// Why a sync of the account's templates did not happen: Meta's answer or storing it.
#[derive(Debug, thiserror::Error)]
enum SyncFailed {
    #[error("listing the templates: {0}")]
    Graph(#[from] GraphError),
    #[error("storing the templates: {0}")]
    Storage(#[from] StorageError),
}
use crate::whatsapp::webhook::AccountUpdate;

/// The account's templates changed in a way a sync must pick up (a template Meta
/// announced that is not synced yet).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct SyncTemplates(pub(super) String);

/// Acts on updates of business accounts from Meta's webhooks: a template's status is
/// stored (an unknown template makes the account's senders sync), a number's new
/// throughput is stored and its sender paces by it from its next look, a portfolio's
/// messaging limit is stored and the senders of its numbers try what waited for it.
pub async fn apply_account_updates(
    core: &Arc<Core>,
    updates: Vec<AccountUpdate>,
) -> Result<(), StorageError> {
    let now = core.clock.now_ms();
    let (unsynced, numbers, limited, changed_limits) = core
        .writer
        .write(None, move |conn| {
            let (mut unsynced, mut numbers) = (Vec::new(), Vec::new());
            let (mut limited, mut changed_limits) = (Vec::new(), Vec::new());
            for update in &updates {
                match update {
                    AccountUpdate::TemplateStatus {
                        waba_id,
                        name,
                        language,
                        status,
                    } => {
                        let changed = templates::update_template(
                            conn,
                            waba_id,
                            name,
                            language.as_deref(),
                            TemplateChange::Status(status),
                        )?;
                        if changed == 0 {
                            unsynced.push(waba_id.clone());
                        }
                    }
                    AccountUpdate::TemplateCategory {
                        waba_id,
                        name,
                        language,
                        category,
                    } => {
                        let changed = templates::update_template(
                            conn,
                            waba_id,
                            name,
                            language.as_deref(),
                            TemplateChange::Category(category),
                        )?;
                        if changed == 0 {
                            unsynced.push(waba_id.clone());
                        }
                    }
                    AccountUpdate::Throughput {
                        waba_id,
                        display_phone_number,
                        mps,
                    } => numbers.extend(tenants::set_throughput(
                        conn,
                        waba_id,
                        display_phone_number,
                        *mps,
                    )?),
                    AccountUpdate::MessagingLimit { waba_id, limit } => {
                        limited.extend(messaging_limits::set_limit_of_account(
                            conn, waba_id, *limit, now,
                        )?);
                        changed_limits.push((waba_id.clone(), *limit));
                    }
                }
            }
            Ok((unsynced, numbers, limited, changed_limits))
        })
        .await?;
    for number in numbers {
        slog::info!(core.log, "Meta raised a number's throughput"; "phone_number_id" => &number);
        wake(core, &PhoneNumberId(number));
    }
    for (waba_id, limit) in changed_limits {
        slog::info!(core.log, "Meta set a business portfolio's messaging limit";
            "waba_id" => waba_id, "messaging_limit" => limit);
    }
    // Their senders try the sends waiting for room again.
    for number in limited {
        wake(core, &PhoneNumberId(number));
    }
    if !unsynced.is_empty() {
        let running = core.senders.running();
        for waba_id in unsynced {
            for sender in &running {
                sender.do_send(SyncTemplates(waba_id.clone()));
            }
        }
    }
    Ok(())
}

impl SenderActor {
    /// Syncs the account's message templates when they are due (at start, then every
    /// `outbound.template_sync_secs`, checked at each scan), beside the sends.
    pub(super) fn sync_templates(
        &mut self,
        client: Rc<GraphClient>,
        credentials: Rc<SendingNumber>,
        ctx: &mut Context<Self>,
    ) {
        let now = self.core.clock.now_ms();
        let every = (self.core.settings.outbound.template_sync_secs * 1000) as i64;
        if self.templates_synced_at.is_some_and(|at| now - at < every) {
            return;
        }
        self.templates_synced_at = Some(now);
        let writer = self.core.writer.clone();
        let sync = async move {
            let listed = client
                .list_templates(&credentials.waba_id, &credentials.access_token)
                .await?;
            let count = listed.len();
            let tenant_id = credentials.tenant_id.clone();
            let waba_id = credentials.waba_id.clone();
            writer
                .write(Some(tenant_id.clone()), move |conn| {
                    crate::storage::templates::replace_templates(
                        conn, &tenant_id, &waba_id, &listed, now,
                    )
                })
                .await?;
            Ok::<_, SyncFailed>(count)
        };
        ctx.spawn(
            sync.into_actor(self)
                .map(|synced, actor, _ctx| match synced {
                    Ok(count) => slog::info!(actor.core.log, "message templates synced";
                "phone_number_id" => actor.number.as_str(), "templates" => count),
                    Err(e) => slog::warn!(actor.core.log, "syncing message templates failed";
                "phone_number_id" => actor.number.as_str(), "error" => %e),
                }),
        );
    }
}
