//! The `converra` binary: parses the command line and calls the library. `serve` is
//! the default; operator commands print a table, or JSON with `--json`.

mod compliance;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use compliance::{
    ContactCommand, DisclosureCommand, EnquiryCommand, ErasureCommand, NoticeCommand, PolicyCommand,
};
use converra::clock::{rfc3339, Clock, SystemClock};
use converra::config::Settings;
use converra::ids::{PhoneNumberId, TenantId};
use converra::storage::{self, messaging_limits, tenants};

/// Every webhook allocates and frees many small values (JSON trees, strings, actor
/// envelopes) across threads, which mimalloc does with less CPU than glibc's
/// allocator (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "converra",
    version,
    about = "Converra: WhatsApp Business CRM and messaging daemon"
)]
struct Cli {
    /// Configuration file (default: /etc/converra/converra.toml when present).
    #[arg(long, global = true, env = "CONVERRA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the effective configuration, secrets redacted; fail on invalid values.
    CheckConfig,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage WhatsApp business phone numbers.
    #[command(subcommand)]
    Number(NumberCommand),
    /// Inbox events parked after failing for good.
    #[command(subcommand)]
    Inbox(InboxCommand),
    /// Retention: data past its period.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Notices to the account holders of every tenant, by email.
    #[command(subcommand)]
    Notice(NoticeCommand),
    /// Versions of the privacy policy, each told to every account holder.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Disclosures of a tenant's data to an authority.
    #[command(subcommand)]
    Disclosure(DisclosureCommand),
    /// Privacy enquiries of tenants, answered by the operator.
    #[command(subcommand)]
    Enquiry(EnquiryCommand),
    /// Erasures of data subjects.
    #[command(subcommand)]
    Erasure(ErasureCommand),
    /// A tenant's contacts.
    #[command(subcommand)]
    Contact(ContactCommand),
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Run one retention sweep now (as the daemon's scheduler does) and print what it
    /// deleted, summed over the tenants it swept.
    Run {
        /// Delete nothing; print (and record) what a sweep would delete.
        #[arg(long)]
        dry_run: bool,
        /// Sweep one tenant only.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum InboxCommand {
    /// List parked events: their ids, tenants, kinds, attempts and last errors.
    Parked {
        #[command(flatten)]
        output: Output,
    },
    /// Put parked events back in line; the daemon's next sweep applies them.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        /// One parked event, by the id `inbox parked` shows.
        #[arg(long)]
        id: Option<i64>,
        /// Every parked event.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Args)]
struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its first API key (shown only this once).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        holder_email: String,
        #[command(flatten)]
        output: Output,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Issue another API key for a tenant (shown only this once).
    ApiKey {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        output: Output,
    },
    /// Close a tenant's account at its holder's request: its API keys and numbers stop
    /// at once, its data is deleted after `compliance.closure_grace_days` (or at once
    /// with --delete-data), and the holder gets one confirmation email.
    Close {
        #[arg(long)]
        tenant: String,
        /// Delete the data at once rather than after the grace period.
        #[arg(long)]
        delete_data: bool,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum NumberCommand {
    /// Register a business phone number for a tenant.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        display_phone_number: String,
        #[arg(long)]
        waba_id: String,
        /// File holding the Graph API access token (kept out of the shell history).
        #[arg(long)]
        access_token_file: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Replace a number's Graph API access token (the running daemon uses it at once
    /// and a number paused for its token resumes), group it into a business
    /// portfolio, or set its portfolio's messaging limit.
    Update {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        phone_number_id: String,
        /// File holding the new access token.
        #[arg(long)]
        access_token_file: Option<PathBuf>,
        /// The business portfolio whose messaging limit the number shares (its
        /// WhatsApp Business Account's own when not grouped; "" ungroups it).
        #[arg(long)]
        portfolio_id: Option<String>,
        /// The portfolio's messaging limit: unique users reached in 24 hours by
        /// business-initiated messages (-1: unlimited), until Meta announces another.
        #[arg(long, allow_hyphen_values = true)]
        messaging_limit: Option<i64>,
    },
    /// List phone numbers, of one tenant or all.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

fn main() -> ExitCode {
    // Everything Converra creates (the databases, their WAL and shared-memory files, the
    // key store, the master key) is the service's alone, whatever umask it was started
    // with: a hand-run daemon under the usual 022 would leave them world-readable.
    // SAFETY: `umask` only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
    if let Err(e) = converra::use_small_pages() {
        // Before logging is set up; the daemon runs, its memory less tightly bounded.
        eprintln!("converra: transparent huge pages stay on ({e}); resident memory may exceed its configured bounds");
    }
    match run_command() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error chain only: an operator needs the reason, not a backtrace.
            eprintln!("converra: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::Migrate => {
            let manager = storage::DbManager::new(&settings)?;
            let mut conn = manager.establish()?;
            let applied = storage::run_migrations(&mut conn)?;
            drop(conn);
            // The key store's migrations, the master key check, the upgrades.
            converra::open_storage(&settings)?;
            if applied.is_empty() {
                println!("database is up to date");
            }
            for name in applied {
                println!("applied {name}");
            }
            Ok(())
        }
        Command::CheckConfig => {
            println!("{}", serde_json::to_string_pretty(&settings.redacted())?);
            for (key, reason) in settings.warnings() {
                eprintln!("warning: {key}: {reason}");
            }
            Ok(())
        }
        Command::Tenant(command) => tenant(settings, command),
        Command::Number(command) => number(settings, command),
        Command::Inbox(command) => inbox(settings, command),
        Command::Retention(command) => retention(settings, command),
        Command::Notice(command) => compliance::notice(settings, command),
        Command::Erasure(command) => compliance::erasure(settings, command),
        Command::Contact(command) => compliance::contact(settings, command),
        Command::Policy(command) => compliance::policy(settings, command),
        Command::Disclosure(command) => compliance::disclosure(settings, command),
        Command::Enquiry(command) => compliance::enquiry(settings, command),
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let (log, _flush_on_exit) = converra::logging::root(&settings.log);
    let listener = converra::listen(&settings.server.bind, settings.server.listen_backlog)
        .with_context(|| format!("cannot listen on {} (server.bind)", settings.server.bind))?;
    let system = actix::System::new();
    let result = system.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(signal) => signal,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        converra::run(listener, settings, converra::RunOptions::new(log), shutdown).await
    });
    result?;
    Ok(())
}

/// Operator commands run beside a daemon that may be writing all the time: on SQLite
/// they wait for the write lock up to a minute (at least), not the daemon's few
/// seconds, since a busy daemon is no reason for an operator's command to fail.
const OPERATOR_BUSY_TIMEOUT_MS: u64 = 60_000;

fn operator_storage(
    settings: &Settings,
) -> anyhow::Result<(
    Arc<converra::storage::key_store::Vault>,
    storage::PooledConn,
)> {
    // An operator command run from another directory (the default path is relative),
    // or with other settings than the daemon's, would otherwise make a database and a
    // master key of its own and change nothing the daemon sees.
    if let Some(missing) = storage::missing_database(settings)? {
        anyhow::bail!(
            "there is no Converra database at {missing}: operator commands work on an \
             existing one. Run them with the daemon's settings (from its directory, with \
             --config, or CONVERRA__DATABASE__URL); `converra migrate` creates a new one"
        );
    }
    let mut settings = settings.clone();
    settings.database.sqlite_busy_timeout_ms = settings
        .database
        .sqlite_busy_timeout_ms
        .max(OPERATOR_BUSY_TIMEOUT_MS);
    let (keyring, pool) = converra::open_existing_storage(&settings)?;
    let conn = pool.get().context("database connection")?;
    Ok((keyring, conn))
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:width$}", c, width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}

fn tenant(settings: Settings, command: TenantCommand) -> anyhow::Result<()> {
    let (_, mut conn) = operator_storage(&settings)?;
    let now = SystemClock.now_ms();
    match command {
        TenantCommand::Create {
            name,
            holder_email,
            output,
        } => {
            let created = tenants::create_tenant(&mut conn, &name, &holder_email, now)?;
            if output.json {
                println!("{}", serde_json::to_string(&created)?);
            } else {
                print_table(
                    &["tenant_id", "name", "api_key"],
                    vec![vec![created.tenant_id, created.name, created.api_key]],
                );
                eprintln!("The API key is shown only this once; store it now.");
            }
        }
        TenantCommand::List { output } => {
            let all = tenants::list_tenants(&mut conn)?;
            if output.json {
                println!("{}", serde_json::to_string(&all)?);
            } else {
                print_table(
                    &[
                        "tenant_id",
                        "name",
                        "holder_email",
                        "created_at",
                        "closed_at",
                    ],
                    all.into_iter()
                        .map(|t| {
                            vec![
                                t.id,
                                t.name,
                                t.holder_email,
                                rfc3339(t.created_at),
                                t.closed_at.map(rfc3339).unwrap_or_default(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        TenantCommand::Close {
            tenant,
            delete_data,
            output,
        } => {
            let tenant_id = TenantId(tenant.clone());
            let confirmation = |name: &str, holder: &str, closure: &storage::closure::Closure| {
                converra::email::closure(&tenant_id, name, holder, closure)
                    .map_err(|e| storage::StorageError::Corrupt(e.to_string()))
            };
            let domain = converra::email::message_domain(&settings.email.from);
            let closed = match storage::closure::close(
                &mut conn,
                &tenant_id,
                delete_data,
                settings.compliance.closure_grace_days,
                &confirmation,
                &domain,
                now,
            ) {
                Err(storage::StorageError::NotFound) => bail!("no tenant with id {tenant}"),
                other => other?,
            };
            let purge_after = rfc3339(closed.closure.purge_after);
            if output.json {
                println!(
                    "{}",
                    serde_json::json!({"tenant_id": tenant, "closed_at": rfc3339(closed.closure.closed_at),
                        "purge_after": purge_after, "numbers_stopped": closed.numbers,
                        "already_closed": !closed.newly})
                );
            } else if closed.newly {
                println!(
                    "tenant {tenant} closed: API keys revoked, {} numbers stopped; its data is deleted from {purge_after}",
                    closed.numbers.len()
                );
            } else {
                println!(
                    "tenant {tenant} was closed before; its data is deleted from {purge_after}"
                );
            }
        }
        TenantCommand::ApiKey { tenant, output } => {
            let key = match tenants::create_api_key(&mut conn, &TenantId(tenant.clone()), now) {
                Err(storage::StorageError::NotFound) => bail!("no tenant with id {tenant}"),
                other => other?,
            };
            if output.json {
                println!(
                    "{}",
                    serde_json::json!({"tenant_id": tenant, "api_key": key})
                );
            } else {
                println!("{key}");
            }
        }
    }
    Ok(())
}

/// An access token from the file an operator named (kept out of the shell history).
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --access-token-file {}", path.display()))
}

fn number(settings: Settings, command: NumberCommand) -> anyhow::Result<()> {
    let (keyring, mut conn) = operator_storage(&settings)?;
    match command {
        NumberCommand::Add {
            tenant,
            phone_number_id,
            display_phone_number,
            waba_id,
            access_token_file,
            output,
        } => {
            let token = read_token(&access_token_file)?;
            let registered = tenants::add_phone_number(
                &mut conn,
                &keyring,
                &tenants::NewPhoneNumber {
                    tenant_id: &tenant,
                    phone_number_id: &phone_number_id,
                    display_phone_number: &display_phone_number,
                    waba_id: &waba_id,
                    access_token: token.trim(),
                },
                SystemClock.now_ms(),
            )?;
            if output.json {
                println!("{}", serde_json::to_string(&registered)?);
            } else {
                let number = registered.number;
                print_table(
                    &[
                        "phone_number_id",
                        "tenant_id",
                        "display_phone_number",
                        "waba_id",
                    ],
                    vec![vec![
                        number.phone_number_id,
                        number.tenant_id,
                        number.display_phone_number,
                        number.waba_id,
                    ]],
                );
                if registered.adopted_updates > 0 {
                    println!(
                        "{} webhook update(s) Meta sent before the number was registered \
                         are queued for processing",
                        registered.adopted_updates
                    );
                }
            }
        }
        NumberCommand::Update {
            tenant,
            phone_number_id,
            access_token_file,
            portfolio_id,
            messaging_limit,
        } => {
            if access_token_file.is_none() && portfolio_id.is_none() && messaging_limit.is_none() {
                anyhow::bail!(
                    "nothing to update: give --access-token-file, --portfolio-id or --messaging-limit"
                );
            }
            if messaging_limit.is_some_and(|limit| limit < -1) {
                anyhow::bail!("--messaging-limit must be -1 (unlimited) or a number of users");
            }
            let not_found = |e: storage::StorageError| match e {
                storage::StorageError::NotFound => {
                    anyhow::anyhow!("tenant {tenant} has no phone number {phone_number_id}")
                }
                other => other.into(),
            };
            if let Some(file) = &access_token_file {
                let token = read_token(file)?;
                tenants::replace_access_token(
                    &mut conn,
                    &keyring,
                    &tenant,
                    &phone_number_id,
                    &token,
                )
                .map_err(not_found)?;
                println!("access token of {phone_number_id} replaced");
            }
            if let Some(portfolio) = &portfolio_id {
                let portfolio = Some(portfolio.trim()).filter(|p| !p.is_empty());
                messaging_limits::set_portfolio(&mut conn, &tenant, &phone_number_id, portfolio)
                    .map_err(not_found)?;
                println!(
                    "{phone_number_id} shares the messaging limit of {}",
                    portfolio.unwrap_or("its WhatsApp Business Account")
                );
            }
            if let Some(limit) = messaging_limit {
                if !tenants::owns_number(
                    &mut conn,
                    &TenantId(tenant.clone()),
                    &PhoneNumberId(phone_number_id.clone()),
                )? {
                    bail!("tenant {tenant} has no phone number {phone_number_id}");
                }
                let portfolio = messaging_limits::portfolio_of(&mut conn, &phone_number_id)?
                    .ok_or_else(|| {
                        anyhow::anyhow!("tenant {tenant} has no phone number {phone_number_id}")
                    })?;
                messaging_limits::set_limit(
                    &mut conn,
                    &portfolio,
                    limit,
                    "operator",
                    SystemClock.now_ms(),
                )?;
                println!("messaging limit of portfolio {portfolio} set to {limit}");
            }
        }
        NumberCommand::List { tenant, output } => {
            let tenant = tenant.map(TenantId);
            let all = tenants::list_phone_numbers(&mut conn, tenant.as_ref())?;
            let portfolios =
                messaging_limits::portfolios(&mut conn, tenant.as_ref(), SystemClock.now_ms())?;
            let portfolio_of = |number: &str| {
                portfolios
                    .iter()
                    .find(|p| p.phone_number_ids.iter().any(|n| n == number))
            };
            if output.json {
                let listed: Vec<serde_json::Value> = all
                    .iter()
                    .map(|n| {
                        let mut value = serde_json::json!(n);
                        if let Some(p) = portfolio_of(&n.phone_number_id) {
                            let view = converra::http::usage::PortfolioView::from(p.clone());
                            value["portfolio"] = serde_json::json!(view);
                        }
                        value
                    })
                    .collect();
                println!("{}", serde_json::to_string(&listed)?);
            } else {
                print_table(
                    &[
                        "phone_number_id",
                        "tenant_id",
                        "display_phone_number",
                        "waba_id",
                        "portfolio_id",
                        "messaging_limit",
                        "reached_24h",
                        "waiting",
                    ],
                    all.into_iter()
                        .map(|n| {
                            let p = portfolio_of(&n.phone_number_id);
                            let limit = match p.and_then(|p| p.messaging_limit) {
                                None => "unknown".to_string(),
                                Some(-1) => "unlimited".to_string(),
                                Some(limit) => limit.to_string(),
                            };
                            vec![
                                n.phone_number_id,
                                n.tenant_id,
                                n.display_phone_number,
                                n.waba_id,
                                p.map(|p| p.portfolio_id.clone()).unwrap_or_default(),
                                limit,
                                p.map(|p| p.reached.to_string()).unwrap_or_default(),
                                p.map(|p| p.waiting.to_string()).unwrap_or_default(),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    Ok(())
}

/// Shows a sweep's progress on a terminal, on one line of stderr.
struct SweepProgress {
    shown: bool,
    rows: u64,
}

impl converra::storage::retention::sweep::Progress for SweepProgress {
    fn batch(&mut self, tenant_id: &TenantId, category: converra::retention::Category, rows: u64) {
        use std::io::Write as _;
        self.rows += rows;
        if self.shown {
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\r\x1b[Ktenant {tenant_id}: {} ({} rows so far)",
                category.as_str(),
                self.rows
            );
            let _ = err.flush();
        }
    }
}

fn retention(settings: Settings, command: RetentionCommand) -> anyhow::Result<()> {
    use converra::storage::retention::sweep::{self, ConnectionLane, Options};
    use std::io::IsTerminal as _;
    let RetentionCommand::Run {
        dry_run,
        tenant,
        output,
    } = command;
    let (_, mut conn) = operator_storage(&settings)?;
    let every_tenant = tenant.is_none();
    // Purged tenants' records are swept with every tenant's, not with one's.
    let gone = match every_tenant {
        true => storage::retention::gone_tenants(&mut conn)?,
        false => Vec::new(),
    };
    let lane = ConnectionLane::new(conn);
    let tenants: Vec<TenantId> = {
        use sweep::Lane as _;
        let all = lane.write(&TenantId(String::new()), tenants::list_tenants)?;
        match tenant {
            Some(wanted) => {
                if !all.iter().any(|t| t.id == wanted) {
                    bail!("no tenant with id {wanted}");
                }
                vec![TenantId(wanted)]
            }
            None => all.into_iter().map(|t| TenantId(t.id)).collect(),
        }
    };
    let mut progress = SweepProgress {
        shown: std::io::stderr().is_terminal(),
        rows: 0,
    };
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let options = Options::from_settings(&settings.retention, dry_run);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut report = sweep::sweep_all(
        &lane,
        &settings,
        &tenants,
        || SystemClock.now_ms(),
        &options,
        &stop,
        &mut progress,
        &log,
    )?;
    // What is left of purged tenants (their audit entries, emails, disclosures).
    let (deleted, failed) = sweep::sweep_gone(
        &lane,
        &settings,
        &gone,
        || SystemClock.now_ms(),
        &options,
        &stop,
        &mut progress,
        &log,
    )?;
    report.deleted.merge(&deleted);
    report.failed.extend(failed);
    if progress.shown {
        eprintln!();
    }
    if let Some((tenant, error)) = report.failed.first() {
        bail!(
            "the sweep of {} tenant(s) failed, tenant {tenant} first: {error}",
            report.failed.len()
        );
    }
    if output.json {
        println!(
            "{}",
            serde_json::json!({"dry_run": dry_run, "tenants": report.runs.len(), "deleted": report.deleted})
        );
    } else {
        let verb = if dry_run { "would delete" } else { "deleted" };
        println!("{} tenant(s) swept; {verb}:", report.runs.len());
        print_table(
            &["category", "rows"],
            report
                .deleted
                .0
                .iter()
                .map(|(category, rows)| vec![category.clone(), rows.to_string()])
                .collect(),
        );
    }
    Ok(())
}

fn inbox(settings: Settings, command: InboxCommand) -> anyhow::Result<()> {
    let (_, mut conn) = operator_storage(&settings)?;
    match command {
        InboxCommand::Parked { output } => {
            let parked = storage::inbox::list_parked(&mut conn)?;
            if output.json {
                println!("{}", serde_json::to_string(&parked)?);
            } else {
                print_table(
                    &[
                        "id",
                        "tenant_id",
                        "phone_number_id",
                        "kind",
                        "received_at",
                        "attempts",
                        "error",
                    ],
                    parked
                        .into_iter()
                        .map(|row| {
                            vec![
                                row.id.to_string(),
                                row.tenant_id,
                                row.phone_number_id,
                                row.kind,
                                rfc3339(row.received_at),
                                row.attempts.to_string(),
                                row.error,
                            ]
                        })
                        .collect(),
                );
            }
        }
        InboxCommand::Retry { id, all: _, output } => {
            let retried = match storage::write_transaction(&mut conn, |conn| {
                storage::inbox::retry_parked(conn, id)
            }) {
                Err(storage::StorageError::NotFound) => {
                    bail!("no parked inbox event with id {}", id.unwrap_or_default())
                }
                other => other?,
            };
            if output.json {
                println!("{}", serde_json::json!({ "retried": retried }));
            } else {
                println!(
                    "{retried} parked event(s) put back in line; the daemon's next inbox sweep \
                     applies them"
                );
            }
        }
    }
    Ok(())
}
