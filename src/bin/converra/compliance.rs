//! The operator's compliance commands: notices to every account holder, policy
//! versions, disclosures to authorities, privacy enquiries, minors and erasure
//! reconciliation. Each writes in one transaction what the running daemon then acts
//! on (it delivers the emails queued here, and executes the requests).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use converra::clock::{rfc3339, Clock, SystemClock};
use converra::config::Settings;
use converra::ids::TenantId;
use converra::storage::{self, tenants};

use super::{operator_storage, print_table, Output};

#[derive(Subcommand)]
pub(crate) enum NoticeCommand {
    /// Email a notice (a merger, a sale of assets, a change of sub-processors, ...) to
    /// the account holder of every tenant; the daemon delivers it, retrying while the
    /// SMTP server is away, and each tenant's audit log records it.
    Send {
        /// The email's subject.
        #[arg(long)]
        subject: String,
        /// The notice's text (plain text; paragraphs separated by blank lines).
        #[arg(long)]
        body_file: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// List notices and where their emails stand: queued, sent, failed.
    List {
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
pub(crate) enum ErasureCommand {
    /// After restoring a data backup: erase again every subject the key store records
    /// as erased (their keys stayed destroyed; their restored rows go now).
    Reapply {
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
pub(crate) enum ContactCommand {
    /// Mark a contact a minor: its data is erased promptly, through an erasure request
    /// the running daemon executes (its outcome keeps the reason).
    Minor {
        #[arg(long)]
        tenant: String,
        /// The contact's phone number, international format.
        #[arg(long)]
        wa_id: String,
        /// Why: kept with the erasure request.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        output: Output,
    },
}

pub(crate) fn notice(settings: Settings, command: NoticeCommand) -> anyhow::Result<()> {
    use converra::storage::email;
    let (_, mut conn) = operator_storage(&settings)?;
    match command {
        NoticeCommand::Send {
            subject,
            body_file,
            output,
        } => {
            if subject.trim().is_empty() {
                bail!("--subject must not be empty");
            }
            let body = std::fs::read_to_string(&body_file)
                .with_context(|| format!("reading --body-file {}", body_file.display()))?;
            if body.trim().is_empty() {
                bail!("--body-file {} is empty", body_file.display());
            }
            let names: std::collections::HashMap<String, String> =
                tenants::list_tenants(&mut conn)?
                    .into_iter()
                    .map(|t| (t.id, t.name))
                    .collect();
            let mut emails = Vec::new();
            for (tenant_id, holder) in email::account_holders(&mut conn)? {
                let name = names.get(tenant_id.as_str()).map_or("", String::as_str);
                emails.push(converra::email::notice(
                    &tenant_id, name, &holder, &subject, &body,
                )?);
            }
            let domain = converra::email::message_domain(&settings.email.from);
            let notice_id =
                email::queue_notice(&mut conn, &subject, &emails, &domain, SystemClock.now_ms())?;
            if output.json {
                println!(
                    "{}",
                    serde_json::json!({"id": notice_id, "emails": emails.len()})
                );
            } else {
                println!(
                    "notice {notice_id} queued for {} account holders",
                    emails.len()
                );
            }
        }
        NoticeCommand::List { output } => {
            let all = email::notices(&mut conn)?;
            if output.json {
                let listed: Vec<serde_json::Value> = all
                    .iter()
                    .map(|n| {
                        serde_json::json!({"id": n.id, "subject": n.subject,
                            "created_at": rfc3339(n.created_at), "queued": n.queued,
                            "sent": n.sent, "failed": n.failed})
                    })
                    .collect();
                println!("{}", serde_json::to_string(&listed)?);
            } else {
                print_table(
                    &["id", "subject", "created_at", "queued", "sent", "failed"],
                    all.into_iter()
                        .map(|n| {
                            vec![
                                n.id,
                                n.subject,
                                rfc3339(n.created_at),
                                n.queued.to_string(),
                                n.sent.to_string(),
                                n.failed.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    Ok(())
}

pub(crate) fn contact(settings: Settings, command: ContactCommand) -> anyhow::Result<()> {
    use converra::storage::privacy::{self, Subject};
    use converra::whatsapp::outbound::{recipient_of, Recipient};
    let ContactCommand::Minor {
        tenant,
        wa_id,
        reason,
        output,
    } = command;
    let Some(Recipient::WaId(wa_id)) = recipient_of(&wa_id) else {
        bail!("--wa-id must be a phone number in international format (digits)");
    };
    if reason.trim().is_empty() || reason.trim().chars().count() > 1000 {
        bail!("--reason must be a non-empty text of at most 1000 characters");
    }
    let (vault, mut conn) = operator_storage(&settings)?;
    let tenant = TenantId(tenant);
    let subject = Subject::of_wa_id(&vault, &tenant, &wa_id);
    let Some(contact) = privacy::find_subject(&mut conn, &tenant, &subject.bidx)? else {
        bail!("tenant {tenant} has no contact with that wa_id");
    };
    let request = storage::write_transaction(&mut conn, |conn| {
        converra::compliance::requests::erase_minor(
            conn,
            &tenant,
            contact.as_str(),
            reason.trim(),
            &settings.compliance.holiday_dates(),
            &converra::email::message_domain(&settings.email.from),
            SystemClock.now_ms(),
        )
    })?;
    if output.json {
        println!(
            "{}",
            serde_json::json!({"request_id": request.id, "contact_id": contact.as_str(),
                "kind": request.kind.as_str(), "state": request.state.as_str()})
        );
    } else {
        println!(
            "contact {} marked a minor; erasure request {} queued",
            contact.as_str(),
            request.id
        );
    }
    Ok(())
}

pub(crate) fn erasure(settings: Settings, command: ErasureCommand) -> anyhow::Result<()> {
    let ErasureCommand::Reapply { output } = command;
    let (vault, mut conn) = operator_storage(&settings)?;
    let batch = i64::from(settings.compliance.erasure_batch_size);
    let done =
        converra::storage::erasure::reapply_all(&mut conn, &vault, batch, SystemClock.now_ms())?;
    if output.json {
        println!(
            "{}",
            serde_json::json!({"records": done.records, "contacts_found": done.contacts_found,
                "tenants_found": done.tenants_found, "deleted": done.deleted,
                "compacted": done.compacted})
        );
    } else {
        println!(
            "{} erasure record(s); {} erased contact(s) and {} purged tenant(s) found in the data again; deleted:",
            done.records, done.contacts_found, done.tenants_found
        );
        print_table(
            &["rows", "count"],
            done.deleted
                .iter()
                .map(|(what, rows)| vec![what.to_string(), rows.to_string()])
                .collect(),
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum EnquiryCommand {
    /// List the open privacy enquiries, the earliest due first.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Answer an enquiry: the answer is emailed to the tenant's account holder.
    Answer {
        #[arg(long)]
        id: String,
        /// The answer (plain text; paragraphs separated by blank lines).
        #[arg(long)]
        answer_file: PathBuf,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Publish a new version of the privacy policy and email its notice to every
    /// account holder; refused unless it takes effect at least 14 days from today.
    Publish {
        #[arg(long)]
        version: String,
        /// YYYY-MM-DD.
        #[arg(long)]
        effective_date: String,
        /// What changes (plain text), for the notice.
        #[arg(long)]
        summary_file: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// List the published versions.
    List {
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
pub(crate) enum DisclosureCommand {
    /// Record a disclosure of a tenant's data to an authority. With --notify the
    /// account holder is emailed now; with --no-notify (the law bars telling) the
    /// record says so and nothing is sent until `disclosure lift`.
    Record {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        authority: String,
        #[arg(
            long,
            conflicts_with = "no_notify",
            required_unless_present = "no_notify"
        )]
        notify: bool,
        #[arg(long)]
        no_notify: bool,
        #[command(flatten)]
        output: Output,
    },
    /// The bar on telling is lifted: the account holder is emailed now.
    Lift {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// List disclosures, of one tenant or all.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

/// A file's text, refused when empty.
fn read_text(path: &std::path::Path, flag: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    if text.trim().is_empty() {
        bail!("{flag} {} is empty", path.display());
    }
    Ok(text)
}

fn domain(settings: &Settings) -> String {
    converra::email::message_domain(&settings.email.from)
}

pub(crate) fn enquiry(settings: Settings, command: EnquiryCommand) -> anyhow::Result<()> {
    use converra::storage::enquiries;
    let (vault, mut conn) = operator_storage(&settings)?;
    match command {
        EnquiryCommand::List { output } => {
            let open = enquiries::open_enquiries(&mut conn, &vault)?;
            if output.json {
                let listed: Vec<serde_json::Value> = open
                    .iter()
                    .map(|e| {
                        serde_json::json!({"id": e.id, "tenant_id": e.tenant_id,
                            "subject": e.subject, "message": e.message,
                            "received_at": rfc3339(e.received_at), "due_on": e.due_on})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(listed));
            } else {
                print_table(
                    &["id", "tenant_id", "due_on", "subject"],
                    open.into_iter()
                        .map(|e| vec![e.id, e.tenant_id.0, e.due_on, e.subject])
                        .collect(),
                );
            }
        }
        EnquiryCommand::Answer {
            id,
            answer_file,
            output,
        } => {
            let answer = read_text(&answer_file, "--answer-file")?;
            let answered = match converra::compliance::enquiries::answer(
                &mut conn,
                &vault,
                &id,
                answer.trim(),
                &domain(&settings),
                SystemClock.now_ms(),
            ) {
                Err(storage::StorageError::NotFound) => bail!("no enquiry with id {id}"),
                Err(storage::StorageError::Conflict { message, .. }) => bail!("{message}"),
                other => other?,
            };
            if output.json {
                println!(
                    "{}",
                    serde_json::json!({"id": answered.id, "state": answered.state,
                        "answered_at": answered.answered_at.map(rfc3339)})
                );
            } else {
                println!("enquiry {id} answered; the answer is emailed to its account holder");
            }
        }
    }
    Ok(())
}

pub(crate) fn policy(settings: Settings, command: PolicyCommand) -> anyhow::Result<()> {
    let (_, mut conn) = operator_storage(&settings)?;
    match command {
        PolicyCommand::Publish {
            version,
            effective_date,
            summary_file,
            output,
        } => {
            let Ok(effective_on) = time::Date::parse(
                &effective_date,
                &time::format_description::well_known::Iso8601::DATE,
            ) else {
                bail!("--effective-date must be a date, YYYY-MM-DD");
            };
            let summary = read_text(&summary_file, "--summary-file")?;
            let published = match converra::compliance::notices::publish_policy(
                &mut conn,
                version.trim(),
                effective_on,
                &summary,
                &domain(&settings),
                SystemClock.now_ms(),
            ) {
                Err(
                    storage::StorageError::Validation { message, .. }
                    | storage::StorageError::Conflict { message, .. },
                ) => bail!("{message}"),
                other => other?,
            };
            if output.json {
                println!("{}", serde_json::to_string(&published)?);
            } else {
                println!(
                    "policy {} takes effect on {}; its notice is queued for {} account holders",
                    published.version.version, published.version.effective_on, published.emails
                );
            }
        }
        PolicyCommand::List { output } => {
            let versions = storage::policy::versions(&mut conn)?;
            if output.json {
                println!("{}", serde_json::to_string(&versions)?);
            } else {
                print_table(
                    &["version", "effective_on", "published_at", "notice"],
                    versions
                        .into_iter()
                        .map(|v| {
                            vec![
                                v.version,
                                v.effective_on,
                                rfc3339(v.published_at),
                                v.notice_id.unwrap_or_default(),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    Ok(())
}

fn disclosure_json(d: &storage::disclosures::Disclosure) -> serde_json::Value {
    serde_json::json!({"id": d.id, "tenant_id": d.tenant_id, "authority": d.authority,
        "recorded_at": rfc3339(d.recorded_at), "notify": d.notify,
        "notified_at": d.notified_at.map(rfc3339), "lifted_at": d.lifted_at.map(rfc3339)})
}

pub(crate) fn disclosure(settings: Settings, command: DisclosureCommand) -> anyhow::Result<()> {
    use converra::compliance::notices;
    let (_, mut conn) = operator_storage(&settings)?;
    let now = SystemClock.now_ms();
    let (disclosure, output) = match command {
        DisclosureCommand::Record {
            tenant,
            authority,
            notify,
            no_notify: _,
            output,
        } => {
            let recorded = match notices::record_disclosure(
                &mut conn,
                &TenantId(tenant.clone()),
                &authority,
                notify,
                &domain(&settings),
                now,
            ) {
                Err(storage::StorageError::NotFound) => bail!("no tenant with id {tenant}"),
                Err(storage::StorageError::Validation { message, .. }) => bail!("{message}"),
                other => other?,
            };
            (recorded, output)
        }
        DisclosureCommand::Lift { id, output } => {
            let lifted = match notices::lift_disclosure(&mut conn, &id, &domain(&settings), now) {
                Err(storage::StorageError::NotFound) => bail!("no disclosure with id {id}"),
                Err(storage::StorageError::Conflict { message, .. }) => bail!("{message}"),
                other => other?,
            };
            (lifted, output)
        }
        DisclosureCommand::List { tenant, output } => {
            let tenant = tenant.map(TenantId);
            let all = storage::disclosures::list(&mut conn, tenant.as_ref())?;
            if output.json {
                let listed: Vec<serde_json::Value> = all.iter().map(disclosure_json).collect();
                println!("{}", serde_json::Value::Array(listed));
            } else {
                print_table(
                    &["id", "tenant_id", "authority", "recorded_at", "told"],
                    all.into_iter()
                        .map(|d| {
                            vec![
                                d.id,
                                d.tenant_id,
                                d.authority,
                                rfc3339(d.recorded_at),
                                d.notified_at
                                    .map(rfc3339)
                                    .unwrap_or_else(|| "not yet".into()),
                            ]
                        })
                        .collect(),
                );
            }
            return Ok(());
        }
    };
    if output.json {
        println!("{}", disclosure_json(&disclosure));
    } else if disclosure.notified_at.is_some() {
        println!(
            "disclosure {} recorded; the account holder is emailed",
            disclosure.id
        );
    } else {
        println!(
            "disclosure {} recorded; nothing is sent until `converra disclosure lift --id {}`",
            disclosure.id, disclosure.id
        );
    }
    Ok(())
}
