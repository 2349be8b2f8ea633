//! What the operator tells every account holder, or one: a new version of the privacy
//! policy (refused unless it takes effect at least [`NOTICE_DAYS`] days after its
//! notices go out, as the policy promises), a change of the processing record
//! (sub-processors and data locations, from the configuration), and a disclosure of a
//! tenant's data to an authority (told at once where the law permits, else when the
//! operator lifts the bar). Broadcasts go through the notices of
//! [`crate::storage::email`], so each email's delivery is tracked; every step is
//! audited.

use serde::Serialize;
use serde_json::{json, Value};
use time::{Date, Duration};

use super::dates;
use crate::config::ProcessingSettings;
use crate::email;
use crate::ids::TenantId;
use crate::rules::{Conflict, Rule};
use crate::storage::audit::{self, Actor};
use crate::storage::disclosures::{self, Disclosure};
use crate::storage::email as storage_email;
use crate::storage::policy::{self, PolicyVersion};
use crate::storage::{tenants, DbConn, StorageError};

/// The days of notice a policy change gets at least.
pub const NOTICE_DAYS: i64 = 14;

/// Queues `subject` and `body` to the holder of every active tenant as one notice;
/// returns its id and how many emails it holds.
fn broadcast(
    conn: &mut DbConn,
    event: &str,
    subject: &str,
    body: &str,
    message_domain: &str,
    now_ms: i64,
) -> Result<(String, usize), StorageError> {
    let names: std::collections::HashMap<String, String> = tenants::list_tenants(conn)?
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    let mut emails = Vec::new();
    for (tenant_id, holder) in storage_email::account_holders(conn)? {
        let name = names.get(tenant_id.as_str()).map_or("", String::as_str);
        emails.push(email::account(
            event, &tenant_id, name, &holder, subject, body,
        )?);
    }
    let notice_id = storage_email::queue_notice(conn, subject, &emails, message_domain, now_ms)?;
    Ok((notice_id, emails.len()))
}

/// A version just published, and the emails its notice queued.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    #[serde(flatten)]
    pub version: PolicyVersion,
    pub emails: usize,
}

/// Publishes policy `version`, effective on `effective_on` (from 00:00 UTC), and queues
/// its notice to every account holder. Refused (`effective_date`, rule `range`) when
/// that is less than [`NOTICE_DAYS`] whole days after `now_ms`; a version published
/// before is a conflict.
pub fn publish_policy(
    conn: &mut DbConn,
    version: &str,
    effective_on: Date,
    summary: &str,
    message_domain: &str,
    now_ms: i64,
) -> Result<Published, StorageError> {
    // The first day that begins at least NOTICE_DAYS whole days after now (UTC).
    let earliest = dates::day_of(now_ms + NOTICE_DAYS * 86_400_000 - 1) + Duration::days(1);
    if effective_on < earliest {
        return Err(StorageError::Validation {
            field: "effective_date",
            rule: Rule::Range,
            message: format!(
                "{effective_on} is too soon: the privacy policy promises account holders \
                 {NOTICE_DAYS} days' notice of a change, so a version published today takes \
                 effect on {earliest} at the earliest"
            ),
        });
    }
    if version.trim().is_empty() || summary.trim().is_empty() {
        return Err(StorageError::Validation {
            field: if version.trim().is_empty() {
                "version"
            } else {
                "summary"
            },
            rule: Rule::Required,
            message: "a policy version has a name and a summary of what changes".into(),
        });
    }
    crate::storage::write_transaction(conn, |conn| {
        let subject = format!("Converra's privacy policy changes on {effective_on}");
        let body = format!(
            "Version {version} of Converra's privacy policy takes effect on {effective_on}.\n\n{}",
            summary.trim()
        );
        let (notice_id, emails) =
            broadcast(conn, "policy", &subject, &body, message_domain, now_ms)?;
        let published = PolicyVersion {
            version: version.to_string(),
            effective_on: effective_on.to_string(),
            summary: summary.trim().to_string(),
            published_at: now_ms,
            notice_id: Some(notice_id),
        };
        policy::insert_version(conn, &published)?;
        Ok(Published {
            version: published,
            emails,
        })
    })
}

/// A version as `GET /v1/policy` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    pub version: String,
    pub effective_date: String,
    pub summary: String,
    pub published_at: String,
}

/// The policy in force on `today` and the versions still to come.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    pub current: Option<VersionView>,
    pub pending: Vec<VersionView>,
}

pub fn policy_view(conn: &mut DbConn, today: Date) -> Result<PolicyView, StorageError> {
    let today = today.to_string();
    let view = |v: PolicyVersion| VersionView {
        version: v.version,
        effective_date: v.effective_on,
        summary: v.summary,
        published_at: crate::clock::rfc3339_ms(v.published_at),
    };
    let (in_force, pending): (Vec<PolicyVersion>, Vec<PolicyVersion>) = policy::versions(conn)?
        .into_iter()
        .partition(|v| v.effective_on <= today);
    Ok(PolicyView {
        current: in_force.into_iter().last().map(view),
        pending: pending.into_iter().map(view).collect(),
    })
}

/// The processing record of the configuration, as tenants read it and as it is
/// compared from one start to the next.
pub fn processing_record(settings: &ProcessingSettings) -> Value {
    json!({
        "sub_processors": settings.sub_processors,
        "data_locations": settings.data_locations,
    })
}

/// At start: records the configuration's processing record when it differs from the
/// one recorded last, and, when there was one, tells every account holder what it is
/// now. Returns the notice's id when one was queued.
pub fn record_processing(
    conn: &mut DbConn,
    settings: &ProcessingSettings,
    message_domain: &str,
    now_ms: i64,
) -> Result<Option<String>, StorageError> {
    let record = processing_record(settings).to_string();
    crate::storage::write_transaction(conn, |conn| {
        let last = policy::last_processing_record(conn)?;
        if last.as_deref() == Some(record.as_str()) {
            return Ok(None);
        }
        let notice_id = match last {
            None => None,
            Some(_) => {
                let mut body = String::from(
                    "Converra's record of processing changed. Its sub-processors now are:\n\n",
                );
                for p in &settings.sub_processors {
                    body.push_str(&format!(
                        "- {} ({}), in {}, safeguard: {}\n",
                        p.name, p.purpose, p.country, p.safeguard
                    ));
                }
                if settings.sub_processors.is_empty() {
                    body.push_str("- none\n");
                }
                body.push_str(&format!(
                    "\nYour data is stored in: {}.",
                    if settings.data_locations.is_empty() {
                        "the locations the operator names on request".to_string()
                    } else {
                        settings.data_locations.join(", ")
                    }
                ));
                let (id, _) = broadcast(
                    conn,
                    "processing_record",
                    "Converra's sub-processors change",
                    &body,
                    message_domain,
                    now_ms,
                )?;
                Some(id)
            }
        };
        policy::insert_processing_record(conn, &record, notice_id.as_deref(), now_ms)?;
        Ok(notice_id)
    })
}

fn tell_of_disclosure(
    conn: &mut DbConn,
    disclosure: &Disclosure,
    message_domain: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let tenant_id = TenantId(disclosure.tenant_id.clone());
    let tenant = tenants::get_tenant(conn, &tenant_id)?;
    let body = format!(
        "On {}, Converra disclosed data of the account to {}, as the law required of it. \
         Ask the operator for what the disclosure held.",
        crate::clock::rfc3339(disclosure.recorded_at),
        disclosure.authority
    );
    let email = email::account(
        "disclosure",
        &tenant_id,
        &tenant.name,
        &tenant.holder_email,
        "A disclosure of your account's data to an authority",
        &body,
    )?;
    storage_email::queue(conn, &email, None, message_domain, now_ms)?;
    Ok(())
}

fn audit_disclosure(
    conn: &mut DbConn,
    disclosure: &Disclosure,
    action: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    audit::append(
        conn,
        &audit::NewEntry {
            tenant_id: &TenantId(disclosure.tenant_id.clone()),
            actor: Actor::Operator,
            action,
            request_id: Some(&disclosure.id),
            contact_id: None,
            detail: json!({"notify": disclosure.notify, "authority": disclosure.authority,
                "recorded_at": crate::clock::rfc3339_ms(disclosure.recorded_at)}),
        },
        now_ms,
    )?;
    Ok(())
}

/// Records a disclosure of `tenant_id`'s data to `authority`; its account holder is
/// emailed at once when `notify`, else when the bar is lifted ([`lift_disclosure`]).
pub fn record_disclosure(
    conn: &mut DbConn,
    tenant_id: &TenantId,
    authority: &str,
    notify: bool,
    message_domain: &str,
    now_ms: i64,
) -> Result<Disclosure, StorageError> {
    if authority.trim().is_empty() {
        return Err(StorageError::Validation {
            field: "authority",
            rule: Rule::Required,
            message: "name the authority the data was disclosed to".into(),
        });
    }
    crate::storage::write_transaction(conn, |conn| {
        tenants::get_tenant(conn, tenant_id)?;
        let disclosure = disclosures::insert(conn, tenant_id, authority.trim(), notify, now_ms)?;
        // The tenant reads its audit log: a disclosure the law bars telling of enters
        // it only when the bar is lifted. Until then the operator's record is the
        // `disclosures` row.
        if notify {
            tell_of_disclosure(conn, &disclosure, message_domain, now_ms)?;
            audit_disclosure(conn, &disclosure, "disclosure_recorded", now_ms)?;
        }
        Ok(disclosure)
    })
}

/// Lifts the bar on telling of disclosure `id`: its account holder is emailed now. One
/// told before is a conflict.
pub fn lift_disclosure(
    conn: &mut DbConn,
    id: &str,
    message_domain: &str,
    now_ms: i64,
) -> Result<Disclosure, StorageError> {
    crate::storage::write_transaction(conn, |conn| {
        let disclosure = disclosures::get(conn, id)?.ok_or(StorageError::NotFound)?;
        if !disclosures::lift(conn, id, now_ms)? {
            return Err(StorageError::Conflict {
                code: Conflict::DisclosureTold,
                message: format!("the account holder was told of disclosure {id} already"),
            });
        }
        // A tenant purged since has no account holders left to tell: the bar is lifted
        // and recorded all the same, so retention can take the disclosure in time.
        let tenant = TenantId(disclosure.tenant_id.clone());
        if crate::storage::closure::still_held(conn, &tenant)? {
            tell_of_disclosure(conn, &disclosure, message_domain, now_ms)?;
        }
        audit_disclosure(conn, &disclosure, "disclosure_recorded", now_ms)?;
        audit_disclosure(conn, &disclosure, "disclosure_bar_lifted", now_ms)?;
        disclosures::get(conn, id)?.ok_or(StorageError::NotFound)
    })
}
