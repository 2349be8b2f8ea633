//! Automations: what a tenant's contacts get without anyone at the keyboard. A keyword
//! rule answers a matching message (the first rule that matches, by position), the
//! welcome a contact's first inbound message, the away message a message outside the
//! tenant's business hours; the opt-out and opt-in keywords are confirmed. At most one
//! automated reply answers a message, in that order: opt-out or opt-in keyword, keyword
//! rule, welcome, away.
//!
//! This module decides; the conversation actor asks it after a message is stored and
//! sends the reply through the outbox like any send, under the same rules (a rule's
//! reply counts as marketing for a contact who opted out or objected), where the
//! cooldown is checked and the run recorded in the same write.

pub mod rules;
pub mod settings;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::OnceCell;

pub use rules::{Definition, Rule, Trigger};
pub use settings::{Effective, TenantSettings};

use crate::config::OutboundSettings;
use crate::ids::TenantId;

pub use crate::rules::FieldError;

/// Why an automation ran, as its run record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Keyword,
    Welcome,
    Away,
    /// The confirmation of an opt-out keyword.
    OptOut,
    /// The confirmation of an opt-in keyword.
    OptIn,
}

impl RunKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunKind::Keyword => "keyword",
            RunKind::Welcome => "welcome",
            RunKind::Away => "away",
            RunKind::OptOut => "opt_out",
            RunKind::OptIn => "opt_in",
        }
    }
}

/// One tenant's automations and settings, as loaded.
#[derive(Debug)]
pub struct TenantAutomations {
    pub settings: Effective,
    /// Enabled rules, by position.
    rules: Vec<Rule>,
}

/// What an inbound message sets off (besides an opt-out or opt-in keyword).
pub struct Choice<'a> {
    pub rule: &'a Rule,
    pub kind: RunKind,
}

impl TenantAutomations {
    pub fn new(settings: Effective, rules: Vec<Rule>) -> TenantAutomations {
        let rules = rules.into_iter().filter(|r| r.definition.enabled).collect();
        TenantAutomations { settings, rules }
    }

    /// Whether any rule may answer a message.
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether a welcome rule exists (its check costs a read).
    pub fn welcomes(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.definition.trigger == Trigger::Welcome)
    }

    /// The automation that answers an inbound message sent at `at_ms` with `text` (if
    /// it is text), `first` if no earlier inbound message of the contact is known: the
    /// first keyword rule that matches, else the welcome, else the away message.
    pub fn choose(&self, text: Option<&str>, at_ms: i64, first: bool) -> Option<Choice<'_>> {
        if let Some(text) = text {
            if let Some(rule) = self.rules.iter().find(|r| r.matches(text)) {
                return Some(Choice {
                    rule,
                    kind: RunKind::Keyword,
                });
            }
        }
        let find = |trigger: Trigger, kind| {
            self.rules
                .iter()
                .find(|r| r.definition.trigger == trigger)
                .map(|rule| Choice { rule, kind })
        };
        if first {
            if let Some(choice) = find(Trigger::Welcome, RunKind::Welcome) {
                return Some(choice);
            }
        }
        if !self.settings.is_open(at_ms) {
            return find(Trigger::Away, RunKind::Away);
        }
        None
    }
}

/// Every tenant's automations, loaded once and kept until they change (the API that
/// changes them forgets the tenant's entry). Concurrent loads of one tenant share one
/// read.
pub struct AutomationBook {
    entries: RwLock<HashMap<TenantId, Arc<OnceCell<Arc<TenantAutomations>>>>>,
    defaults: OutboundSettings,
}

impl AutomationBook {
    pub fn new(defaults: OutboundSettings) -> AutomationBook {
        AutomationBook {
            entries: RwLock::new(HashMap::new()),
            defaults,
        }
    }

    /// The tenant's automations if loaded.
    pub fn peek(&self, tenant_id: &TenantId) -> Option<Arc<TenantAutomations>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(tenant_id)?.get().cloned()
    }

    /// The tenant's automations, loaded by `load` (settings and rules as stored) if
    /// they are not.
    pub async fn get<F, Fut, E>(
        &self,
        tenant_id: &TenantId,
        load: F,
    ) -> Result<Arc<TenantAutomations>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(TenantSettings, Vec<Rule>), E>>,
    {
        let cell = {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            entries.entry(tenant_id.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let (settings, rules) = load().await?;
            Ok(Arc::new(TenantAutomations::new(
                settings.effective(&self.defaults),
                rules,
            )))
        })
        .await
        .cloned()
    }

    /// Forgets the tenant's automations: the next message loads them again.
    pub fn forget(&self, tenant_id: &TenantId) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(tenant_id);
    }

    pub fn defaults(&self) -> &OutboundSettings {
        &self.defaults
    }
}
