//! Settings: built-in defaults (`config/default.toml`, compiled in), then the operator's
//! file, then `CONVERRA__SECTION__KEY` environment variables. Secrets may come from
//! files (`*_file` keys) so systemd credentials work; they are resolved once here and
//! never printed: [`Settings::redacted`] is what `check-config` shows.

use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

/// The defaults shipped in the repository, compiled into the binary so it runs from any
/// working directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The system-wide file read when no `--config` is given and it exists.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/converra/converra.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("configuration key {key}: cannot read {path}: {source}")]
    SecretFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub whatsapp: WhatsAppSettings,
    pub security: SecuritySettings,
    pub actors: ActorSettings,
    pub inbox: InboxSettings,
    pub outbound: OutboundSettings,
    pub media: MediaSettings,
    pub retention: RetentionSettings,
    pub scheduler: SchedulerSettings,
    pub email: EmailSettings,
    pub compliance: ComplianceSettings,
    pub processing: ProcessingSettings,
    pub log: LogSettings,
}

/// The record of processing tenants read at `GET /v1/privacy/processing`: who else
/// processes their data, for what, where, and under which transfer safeguard, and
/// where the data is stored. A change is told to every account holder at the next
/// start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingSettings {
    pub sub_processors: Vec<SubProcessor>,
    pub data_locations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubProcessor {
    pub name: String,
    pub purpose: String,
    pub country: String,
    /// The transfer safeguard, such as Standard Contractual Clauses; "adequacy" or
    /// "none needed" where none is required.
    pub safeguard: String,
}

/// Compliance deadlines: the days that are not working days besides weekends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceSettings {
    /// YYYY-MM-DD.
    pub holidays: Vec<String>,
    /// An erasure deletes its subject's rows this many a table per write, with
    /// `erasure_batch_pause_ms` between writes, so other tenants' webhooks wait little.
    pub erasure_batch_size: u32,
    pub erasure_batch_pause_ms: u64,
    /// A closed tenant's data is purged this many days after the closure, unless the
    /// operator asks for it at once (`converra tenant close --delete-data`). The purge
    /// goes in batches of `erasure_batch_size`, `erasure_batch_pause_ms` apart.
    pub closure_grace_days: u32,
    /// The operator's privacy contact: reminded of enquiries nearing their due date.
    /// Empty: the address of `email.from` (a warning in the log when that is none).
    pub operator_email: String,
}

impl ComplianceSettings {
    /// Where the operator is reminded of enquiries: `operator_email`, else the
    /// address of `email.from` unless that is a placeholder (`.invalid`); empty when
    /// there is none.
    pub fn operator_address(&self, from: &str) -> String {
        if !self.operator_email.is_empty() {
            return self.operator_email.clone();
        }
        let address = match (from.rfind('<'), from.rfind('>')) {
            (Some(open), Some(close)) if open < close => &from[open + 1..close],
            _ => from,
        };
        let address = address.trim();
        match address.contains('@') && !address.ends_with(".invalid") {
            true => address.to_string(),
            false => String::new(),
        }
    }

    /// The holidays as dates (those that do not parse were refused by validation).
    pub fn holiday_dates(&self) -> Vec<time::Date> {
        self.holidays
            .iter()
            .filter_map(|day| parse_day(day))
            .collect()
    }
}

fn parse_day(text: &str) -> Option<time::Date> {
    time::Date::parse(text, &time::format_description::well_known::Iso8601::DATE).ok()
}

/// The SMTP server emails to account holders go through, and how a delivery that
/// fails for now is retried.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// `smtp://HOST:PORT` or `smtps://HOST:PORT`, credentials in the URL; empty: emails
    /// wait in the email outbox.
    pub smtp_url: String,
    pub smtp_url_file: String,
    pub from: String,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub timeout_secs: u64,
}

/// The scheduler's own timers (the retention sweep's is `retention.sweep_interval_secs`,
/// the inbox sweep's `actors.sweep_interval_secs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Upkeep: processed inbox rows, finished sends, the messaging limit's old reach,
    /// raw payloads past `inbox.keep_raw_days` with their day keys.
    pub upkeep_interval_secs: u64,
}

/// How long each category of data is kept (the operator's defaults; a tenant can set
/// its own through `/v1/retention`) and how the scheduler sweeps what is past it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub sweep_interval_secs: u64,
    pub batch_size: u32,
    pub batch_pause_ms: u64,
    /// No tenant may keep audit records for less than this.
    pub audit_min_days: u32,
    pub days: RetentionDays,
}

/// Days kept, per category of data (see [`crate::retention::Category`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionDays {
    pub messages: u32,
    pub media: u32,
    pub raw_payloads: u32,
    pub automation_runs: u32,
    pub technical: u32,
    pub closed_conversations: u32,
    pub exports: u32,
    pub audit: u32,
}

/// The longest period any category can be kept: a hundred years.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

impl RetentionDays {
    /// Each period with its key in the configuration.
    fn each(&self) -> [(&'static str, u32); 8] {
        [
            ("retention.days.messages", self.messages),
            ("retention.days.media", self.media),
            ("retention.days.raw_payloads", self.raw_payloads),
            ("retention.days.automation_runs", self.automation_runs),
            ("retention.days.technical", self.technical),
            (
                "retention.days.closed_conversations",
                self.closed_conversations,
            ),
            ("retention.days.exports", self.exports),
            ("retention.days.audit", self.audit),
        ]
    }
}

/// Fetching the media of inbound messages from Meta.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSettings {
    pub concurrency: usize,
    pub retry_base_ms: u64,
    pub retry_deadline_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSettings {
    pub default_mps: u32,
    pub retry_base_ms: u64,
    pub retry_deadline_secs: u64,
    pub reconcile_secs: u64,
    pub request_timeout_secs: u64,
    pub paused_recheck_secs: u64,
    pub template_sync_secs: u64,
    pub ca_file: String,
    pub keep_finished_secs: u64,
    pub opt_out_keywords: Vec<String>,
    pub opt_in_keywords: Vec<String>,
    pub opt_out_reply: String,
    pub opt_in_reply: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub listen_backlog: u32,
    pub shutdown_timeout_secs: u64,
    pub client_timeout_ms: u64,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    /// A file holding the URL (with its password), read in place of `url`.
    pub url_file: String,
    pub key_store_path: String,
    /// PostgreSQL: a database of its own for the key store (empty = the data's).
    pub key_store_url: String,
    /// A file holding `key_store_url`, read in its place.
    pub key_store_url_file: String,
    pub pool_size: u32,
    pub connect_timeout_secs: u64,
    pub statement_timeout_secs: u64,
    pub sqlite_synchronous: String,
    pub sqlite_busy_timeout_ms: u64,
    pub sqlite_wal_restart_mib: u64,
    pub sqlite_checkpoint_interval_ms: u64,
    pub write_batch_max: usize,
    pub writers: usize,
    pub readers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsAppSettings {
    pub app_secret: String,
    pub app_secret_file: String,
    pub verify_token: String,
    pub verify_token_file: String,
    pub graph_base_url: String,
    pub graph_api_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    pub master_key_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSettings {
    pub arbiters: usize,
    pub idle_timeout_secs: u64,
    pub max_conversation_actors: usize,
    pub sweep_interval_secs: u64,
    pub sweep_min_age_secs: u64,
    pub retry_delay_ms: u64,
    pub park_after_attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxSettings {
    pub keep_processed_secs: u64,
    pub keep_raw_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: String,
}

impl LogSettings {
    /// `log.level` as slog's level; `None` when it names none.
    pub fn slog_level(&self) -> Option<slog::Level> {
        use slog::Level;
        match self.level.as_str() {
            "trace" => Some(Level::Trace),
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warning" | "warn" => Some(Level::Warning),
            "error" => Some(Level::Error),
            "critical" => Some(Level::Critical),
            _ => None,
        }
    }
}

const REDACTED: &str = "<redacted>";

impl Settings {
    /// Loads defaults, then `file` (or the system file when it exists), then the
    /// environment; resolves secret files and validates.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        match file {
            Some(path) => {
                builder = builder.add_source(File::from(path.to_path_buf()).required(true))
            }
            None if Path::new(SYSTEM_CONFIG_PATH).exists() => {
                builder = builder.add_source(File::with_name(SYSTEM_CONFIG_PATH).required(true))
            }
            None => {}
        }
        builder = builder.add_source(
            Environment::with_prefix("CONVERRA")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.resolve_secret_files()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The built-in defaults alone; tests start from these.
    pub fn defaults() -> Result<Settings, ConfigError> {
        let settings: Settings = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        Ok(settings)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        if !self.database.url_file.is_empty() {
            self.database.url = read_secret("database.url_file", &self.database.url_file)?;
        }
        if !self.database.key_store_url_file.is_empty() {
            self.database.key_store_url = read_secret(
                "database.key_store_url_file",
                &self.database.key_store_url_file,
            )?;
        }
        if !self.whatsapp.app_secret_file.is_empty() {
            self.whatsapp.app_secret =
                read_secret("whatsapp.app_secret_file", &self.whatsapp.app_secret_file)?;
        }
        if !self.email.smtp_url_file.is_empty() {
            self.email.smtp_url = read_secret("email.smtp_url_file", &self.email.smtp_url_file)?;
        }
        if !self.whatsapp.verify_token_file.is_empty() {
            self.whatsapp.verify_token = read_secret(
                "whatsapp.verify_token_file",
                &self.whatsapp.verify_token_file,
            )?;
        }
        Ok(())
    }

    /// Checks every value a typo could break, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.bind",
                format!(
                    "{:?} is not HOST:PORT (for example 127.0.0.1:8080)",
                    self.server.bind
                ),
            ));
        }
        if self.server.client_timeout_ms < 100 {
            return Err(invalid("server.client_timeout_ms", "must be at least 100"));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.server.listen_backlog == 0 {
            return Err(invalid("server.listen_backlog", "must be at least 1"));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        let data =
            DatabaseUrl::parse(&self.database.url).map_err(|e| invalid("database.url", e))?;
        if !self.database.key_store_url.is_empty() {
            let keys = DatabaseUrl::parse(&self.database.key_store_url)
                .map_err(|e| invalid("database.key_store_url", e))?;
            if data.backend_name() != "postgres" || keys.backend_name() != "postgres" {
                return Err(invalid(
                    "database.key_store_url",
                    "a key store database of its own needs PostgreSQL for both the data \
                     and the keys (SQLite's key store is the file database.key_store_path)",
                ));
            }
        }
        if self.database.connect_timeout_secs == 0 {
            return Err(invalid(
                "database.connect_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.database.statement_timeout_secs == 0 {
            return Err(invalid(
                "database.statement_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.database.pool_size < 2 {
            return Err(invalid("database.pool_size", "must be at least 2"));
        }
        if !["full", "normal"].contains(&self.database.sqlite_synchronous.as_str()) {
            return Err(invalid(
                "database.sqlite_synchronous",
                format!(
                    "{:?} is not \"full\" or \"normal\"",
                    self.database.sqlite_synchronous
                ),
            ));
        }
        if !(1..=1000).contains(&self.outbound.default_mps) {
            return Err(invalid("outbound.default_mps", "must be from 1 to 1000"));
        }
        let keyword = |words: &[String]| words.iter().all(|w| !w.trim().is_empty());
        if !keyword(&self.outbound.opt_out_keywords) || !keyword(&self.outbound.opt_in_keywords) {
            return Err(invalid(
                "outbound.opt_out_keywords",
                "a keyword may not be empty (opt_out_keywords, opt_in_keywords)",
            ));
        }
        if self.outbound.opt_out_reply.trim().is_empty()
            || self.outbound.opt_in_reply.trim().is_empty()
        {
            return Err(invalid(
                "outbound.opt_out_reply",
                "the confirmations may not be empty (opt_out_reply, opt_in_reply)",
            ));
        }
        // Every time below is bounded, so that it stays far inside i64 in milliseconds.
        const DAY: u64 = 86_400;
        let outbound = &self.outbound;
        for (key, value, most) in [
            (
                "outbound.retry_deadline_secs",
                outbound.retry_deadline_secs,
                365 * DAY,
            ),
            ("outbound.retry_base_ms", outbound.retry_base_ms, 3_600_000),
            ("outbound.reconcile_secs", outbound.reconcile_secs, 7 * DAY),
            (
                "outbound.template_sync_secs",
                outbound.template_sync_secs,
                30 * DAY,
            ),
            (
                "outbound.request_timeout_secs",
                outbound.request_timeout_secs,
                3_600,
            ),
            (
                "outbound.paused_recheck_secs",
                outbound.paused_recheck_secs,
                DAY,
            ),
            (
                "outbound.keep_finished_secs",
                outbound.keep_finished_secs,
                365 * DAY,
            ),
        ] {
            // reconcile_secs at 0 would send again what Meta may have accepted.
            if !(1..=most).contains(&value) {
                return Err(invalid(key, format!("must be from 1 to {most}")));
            }
        }
        if !(1..=64).contains(&self.media.concurrency) {
            return Err(invalid("media.concurrency", "must be from 1 to 64"));
        }
        if !(1..=3_600_000).contains(&self.media.retry_base_ms) {
            return Err(invalid("media.retry_base_ms", "must be from 1 to 3600000"));
        }
        if !(1..=30 * DAY).contains(&self.media.retry_deadline_secs) {
            return Err(invalid(
                "media.retry_deadline_secs",
                format!("must be from 1 to {}", 30 * DAY),
            ));
        }
        if self.database.readers == 0 {
            return Err(invalid("database.readers", "must be at least 1"));
        }
        if self.database.write_batch_max == 0 {
            return Err(invalid("database.write_batch_max", "must be at least 1"));
        }
        if !(1..=65_536).contains(&self.database.sqlite_wal_restart_mib) {
            return Err(invalid(
                "database.sqlite_wal_restart_mib",
                "must be between 1 and 65536",
            ));
        }
        if !(10..=60_000).contains(&self.database.sqlite_checkpoint_interval_ms) {
            return Err(invalid(
                "database.sqlite_checkpoint_interval_ms",
                "must be between 10 and 60000",
            ));
        }
        if url::Url::parse(&self.whatsapp.graph_base_url).is_err() {
            return Err(invalid("whatsapp.graph_base_url", "is not a URL"));
        }
        if self.security.master_key_file.is_empty() {
            return Err(invalid("security.master_key_file", "must name a file"));
        }
        if self.log.slog_level().is_none() {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not one of trace, debug, info, warning, error, critical",
                    self.log.level
                ),
            ));
        }
        if !["auto", "json", "human"].contains(&self.log.format.as_str()) {
            return Err(invalid(
                "log.format",
                format!("{:?} is not auto, json or human", self.log.format),
            ));
        }
        if self.actors.idle_timeout_secs == 0 {
            return Err(invalid("actors.idle_timeout_secs", "must be at least 1"));
        }
        if self.actors.max_conversation_actors == 0 {
            return Err(invalid(
                "actors.max_conversation_actors",
                "must be at least 1",
            ));
        }
        // Raw payloads that name no subject become unreadable only when their day's key
        // goes: within 30 days, an erasure is complete inside its one-month deadline.
        if !(1..=30).contains(&self.inbox.keep_raw_days) {
            return Err(invalid(
                "inbox.keep_raw_days",
                "must be between 1 and 30 (an erasure's one-month deadline)",
            ));
        }
        if self.actors.park_after_attempts == 0 {
            return Err(invalid("actors.park_after_attempts", "must be at least 1"));
        }
        if self.actors.sweep_interval_secs == 0 {
            return Err(invalid("actors.sweep_interval_secs", "must be at least 1"));
        }
        self.validate_email()?;
        self.validate_compliance()?;
        self.validate_retention()
    }

    fn validate_compliance(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.compliance.erasure_batch_size) {
            return Err(invalid(
                "compliance.erasure_batch_size",
                "must be from 1 to 100000",
            ));
        }
        if self.compliance.erasure_batch_pause_ms > 60_000 {
            return Err(invalid(
                "compliance.erasure_batch_pause_ms",
                "must be at most 60000",
            ));
        }
        if !self.compliance.operator_email.is_empty()
            && !self.compliance.operator_email.contains('@')
        {
            return Err(invalid(
                "compliance.operator_email",
                "must be an email address, or empty",
            ));
        }
        for (i, p) in self.processing.sub_processors.iter().enumerate() {
            for (field, value) in [
                ("name", &p.name),
                ("purpose", &p.purpose),
                ("country", &p.country),
                ("safeguard", &p.safeguard),
            ] {
                if value.trim().is_empty() {
                    return Err(invalid(
                        "processing.sub_processors",
                        format!("entry {} has no {field}", i + 1),
                    ));
                }
            }
        }
        if self.compliance.closure_grace_days > 365 {
            return Err(invalid(
                "compliance.closure_grace_days",
                "must be at most 365",
            ));
        }
        for day in &self.compliance.holidays {
            if parse_day(day).is_none() {
                return Err(invalid(
                    "compliance.holidays",
                    format!("{day:?} is not a date (YYYY-MM-DD)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_email(&self) -> Result<(), ConfigError> {
        let email = &self.email;
        if !email.smtp_url.is_empty() {
            match url::Url::parse(&email.smtp_url) {
                Ok(url) if matches!(url.scheme(), "smtp" | "smtps") && url.host().is_some() => {}
                _ => {
                    return Err(invalid(
                        "email.smtp_url",
                        "must be smtp://HOST:PORT or smtps://HOST:PORT",
                    ))
                }
            }
        }
        if email.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid(
                "email.from",
                "must be an email address, optionally with a name: Name <address>",
            ));
        }
        if email.retry_base_ms == 0 || email.retry_max_ms < email.retry_base_ms {
            return Err(invalid(
                "email.retry_max_ms",
                "email.retry_base_ms must be at least 1 and retry_max_ms at least retry_base_ms",
            ));
        }
        if !(1..=600).contains(&email.timeout_secs) {
            return Err(invalid("email.timeout_secs", "must be from 1 to 600"));
        }
        Ok(())
    }

    fn validate_retention(&self) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.scheduler.upkeep_interval_secs) {
            return Err(invalid(
                "scheduler.upkeep_interval_secs",
                "must be from 1 to 86400",
            ));
        }
        const MAX_DAYS: u32 = MAX_RETENTION_DAYS;
        let retention = &self.retention;
        if !(1..=7 * 86_400).contains(&retention.sweep_interval_secs) {
            return Err(invalid(
                "retention.sweep_interval_secs",
                "must be from 1 to 604800",
            ));
        }
        if !(1..=100_000).contains(&retention.batch_size) {
            return Err(invalid("retention.batch_size", "must be from 1 to 100000"));
        }
        if retention.batch_pause_ms > 60_000 {
            return Err(invalid("retention.batch_pause_ms", "must be at most 60000"));
        }
        if retention.audit_min_days > MAX_DAYS {
            return Err(invalid(
                "retention.audit_min_days",
                format!("must be at most {MAX_DAYS}"),
            ));
        }
        for (key, days) in retention.days.each() {
            if days > MAX_DAYS {
                return Err(invalid(key, format!("must be at most {MAX_DAYS}")));
            }
        }
        if retention.days.audit < retention.audit_min_days {
            return Err(invalid(
                "retention.days.audit",
                "must be at least retention.audit_min_days",
            ));
        }
        Ok(())
    }

    /// What a running server still lacks to accept webhooks (`serve` starts anyway
    /// and refuses webhooks with a message naming the key), or a value that will not
    /// do what it says, as (key, reason) pairs.
    pub fn warnings(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.retention.days.raw_payloads > self.inbox.keep_raw_days {
            out.push((
                "retention.days.raw_payloads",
                "longer than inbox.keep_raw_days, which is what raw payloads are kept",
            ));
        }
        if self.whatsapp.app_secret.is_empty() {
            out.push((
                "whatsapp.app_secret",
                "not set: every webhook POST is refused until it is",
            ));
        }
        if self.whatsapp.verify_token.is_empty() {
            out.push((
                "whatsapp.verify_token",
                "not set: Meta's verification handshake is refused until it is",
            ));
        }
        if self.email.smtp_url.is_empty() {
            out.push((
                "email.smtp_url",
                "not set: emails to account holders wait in the email outbox until it is",
            ));
        }
        let ca_file = &self.outbound.ca_file;
        if !ca_file.is_empty() && !std::path::Path::new(ca_file).exists() {
            out.push((
                "outbound.ca_file",
                "does not exist: sends to the Graph API cannot check its certificate",
            ));
        }
        out
    }

    /// A copy fit for printing: every secret replaced.
    pub fn redacted(&self) -> Settings {
        let mut copy = self.clone();
        for secret in [
            &mut copy.whatsapp.app_secret,
            &mut copy.whatsapp.verify_token,
        ] {
            if !secret.is_empty() {
                *secret = REDACTED.to_string();
            }
        }
        copy.database.url = redact_url_password(&copy.database.url);
        copy.database.key_store_url = redact_url_password(&copy.database.key_store_url);
        copy.email.smtp_url = redact_url_password(&copy.email.smtp_url);
        copy
    }

    /// The key store file for SQLite: the configured path, or NAME-keys.db beside the
    /// database file.
    pub fn sqlite_key_store_path(&self, database_path: &Path) -> PathBuf {
        if !self.database.key_store_path.is_empty() {
            return PathBuf::from(&self.database.key_store_path);
        }
        let stem = database_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("converra");
        database_path.with_file_name(format!("{stem}-keys.db"))
    }
}

fn read_secret(key: &'static str, path: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        key,
        path: path.to_string(),
        source,
    })?;
    let value = text.trim().to_string();
    if value.is_empty() {
        return Err(invalid(key, format!("{path} is empty")));
    }
    Ok(value)
}

/// The URL with its password hidden, wherever it is written: in the user part
/// (`postgres://user:secret@host`) or as a parameter (`?password=secret`,
/// `?sslpassword=...`).
fn redact_url_password(raw: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        // Not a URL that parses; it may still hold a password, in its user part or
        // its parameters.
        if raw.to_ascii_lowercase().contains("password") {
            return REDACTED.to_string();
        }
        return match (raw.split_once("://"), raw.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://{REDACTED}{}", &raw[at..]),
            _ => raw.to_string(),
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(REDACTED));
    }
    let secret = |key: &str| key.to_ascii_lowercase().contains("password");
    if parsed.query_pairs().any(|(key, _)| secret(&key)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if secret(&key) {
                    REDACTED.to_string()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// A parsed `database.url` (or `database.key_store_url`): the scheme names the backend.
/// A refusal never repeats the URL, which may hold a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<DatabaseUrl, String> {
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "sqlite:// needs a file path, for example sqlite://data/converra.db".into(),
                );
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(raw.to_string()));
        }
        // The rest may hold a password: only a scheme is named, and only one that
        // parsed as one.
        match raw.split_once("://") {
            Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => Err(format!(
                "unsupported scheme {scheme:?}: use sqlite://PATH or postgres://USER@HOST/DB"
            )),
            _ => Err("not a database URL: use sqlite://PATH or postgres://USER@HOST/DB".into()),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(value: &toml_like::Value) -> Vec<String> {
        toml_like::flatten(value)
    }

    /// `config/default.toml` and the settings struct name the same keys: a key added to
    /// one and not the other fails here.
    #[test]
    fn default_toml_matches_the_settings_struct() {
        let from_file: serde_json::Value = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("default.toml parses");
        let from_struct =
            serde_json::to_value(Settings::defaults().expect("defaults")).expect("serialise");
        assert_eq!(keys_of(&from_file), keys_of(&from_struct));
    }

    #[test]
    fn redaction_hides_secrets_and_url_passwords() {
        let mut settings = Settings::defaults().expect("defaults");
        settings.whatsapp.app_secret = "s3cret".into();
        settings.database.url = "postgres://user:hunter2@db/converra".into();
        settings.database.key_store_url = "postgres://keys:hunter2@vault/keys".into();
        let shown = serde_json::to_string(&settings.redacted()).expect("serialise");
        assert!(!shown.contains("s3cret"));
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains(REDACTED));
        for url in [
            "postgres://user@db/converra?password=hunter2",
            "postgres://user@db/converra?sslmode=require&PASSWORD=hunter2",
            "postgres://user@db/converra?sslpassword=hunter2&password=hunter2",
            "postgres://us%20er:hunter2@db/converra",
            "postgres://u:hunter2@[db/converra",
        ] {
            settings.database.url = url.into();
            let shown = settings.redacted().database.url;
            assert!(!shown.contains("hunter2"), "{url} shown as {shown}");
            assert!(shown.contains("db/converra"), "{shown}");
        }
    }

    #[test]
    fn validation_names_the_offending_key() {
        let mut settings = Settings::defaults().expect("defaults");
        settings.server.bind = "nonsense".into();
        let err = settings.validate().expect_err("invalid bind");
        assert!(err.to_string().contains("server.bind"), "{err}");
        let mut settings = Settings::defaults().expect("defaults");
        settings.database.url = "mysql://x".into();
        let err = settings.validate().expect_err("invalid url");
        assert!(err.to_string().contains("database.url"), "{err}");
        let mut settings = Settings::defaults().expect("defaults");
        settings.database.sqlite_wal_restart_mib = 0;
        let err = settings.validate().expect_err("zero WAL bound");
        assert!(
            err.to_string().contains("database.sqlite_wal_restart_mib"),
            "{err}"
        );
        let mut settings = Settings::defaults().expect("defaults");
        settings.database.sqlite_checkpoint_interval_ms = 0;
        let err = settings.validate().expect_err("zero checkpoint interval");
        assert!(
            err.to_string()
                .contains("database.sqlite_checkpoint_interval_ms"),
            "{err}"
        );
        // A time whose milliseconds would overflow (or nearly) is refused.
        let mut settings = Settings::defaults().expect("defaults");
        settings.outbound.retry_deadline_secs = 100_000_000_000_000_000;
        let err = settings.validate().expect_err("a deadline past a year");
        assert!(
            err.to_string().contains("outbound.retry_deadline_secs"),
            "{err}"
        );
        let mut settings = Settings::defaults().expect("defaults");
        settings.outbound.opt_out_keywords = vec![" ".into()];
        let err = settings.validate().expect_err("an empty keyword");
        assert!(
            err.to_string().contains("outbound.opt_out_keywords"),
            "{err}"
        );
    }

    mod toml_like {
        pub type Value = serde_json::Value;
        pub fn flatten(value: &Value) -> Vec<String> {
            let mut out = Vec::new();
            walk("", value, &mut out);
            out.sort();
            out
        }
        fn walk(prefix: &str, value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    for (k, v) in map {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                _ => out.push(prefix.to_string()),
            }
        }
    }
}
