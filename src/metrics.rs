//! Prometheus metrics, one registry per running server (so tests in one process do
//! not share counters), served as text on `/metrics`.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Webhook POSTs by outcome: accepted, unsigned, forged, too_large, unavailable, ...
    pub webhooks: IntCounterVec,
    pub messages_ingested: IntCounter,
    pub statuses_ingested: IntCounter,
    pub preferences_ingested: IntCounter,
    pub duplicates: IntCounter,
    pub signature_failures: IntCounter,
    pub unrouted: IntCounter,
    /// Signed content stored raw (not JSON, not Meta's envelope, other fields).
    pub raw_stored: IntCounter,
    pub events_applied: IntCounter,
    pub actor_restarts: IntCounter,
    pub conversation_actors: IntGauge,
    pub inbox_backlog: IntGauge,
    /// Inbox rows parked after failing for good, waiting for the operator.
    pub inbox_parked: IntGauge,
    /// Inbox rows waiting (or parked) longer than `inbox.keep_raw_days`.
    pub inbox_overdue: IntGauge,
    /// Raw payloads deleted once their day passed `inbox.keep_raw_days`.
    pub raw_payloads_deleted: IntCounter,
    /// SQLite: messages not in the conversation index yet (listings read them apart).
    pub conversation_index_tail: IntGauge,
    pub db_write_seconds: Histogram,
    pub db_batch_jobs: Histogram,
    pub webhook_seconds: Histogram,
    pub wal_restart_seconds: Histogram,
    /// Writer threads restarted after a panic.
    pub writer_restarts: IntCounter,
    /// Outbound calls to Meta by outcome: sent, retried, failed, paused, unknown.
    pub outbound_sends: IntCounterVec,
    /// Sends the API refused by the rule's code (outside_window, restricted, ...).
    pub outbound_refusals: IntCounterVec,
    /// Numbers whose sender is paused for its token or account.
    pub outbound_numbers_paused: IntGauge,
    /// Meta's rate and spam limits met, by what waits (`number` or `send`) and code.
    pub outbound_deferrals: IntCounterVec,
    /// Media fetches from Meta by outcome: fetched, retried, failed.
    pub media_fetches: IntCounterVec,
    /// Delivery attempts of emails to account holders, by outcome: sent, retried, failed.
    pub emails: IntCounterVec,
    /// Sends waiting for room in their portfolio's messaging limit, by number.
    pub messaging_limit_waiting: IntGaugeVec,
    /// Sends a number's sender holds that are not in flight, by number.
    pub outbound_waiting: IntGaugeVec,
    /// Messages a second a number's sender paces at, by number.
    pub outbound_pace: GaugeVec,
    /// Rows the retention sweeps deleted, by category.
    pub retention_deleted: IntCounterVec,
    /// Retention sweeps (of every tenant) by outcome: finished, incomplete, stopped.
    pub retention_sweeps: IntCounterVec,
    /// Timed duties run to their end, by duty: `inbox_sweep`, `upkeep`, `idle_check`
    /// (a conversation actor's look at its idleness), `compliance_scan` (the compliance
    /// actor's look for requests and closed accounts), `mailer` (a round of the email
    /// outbox's due emails). A duty whose count stops growing has stopped running.
    pub timed_duties: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new_custom(Some("converra".into()), None)?;
        let webhooks = IntCounterVec::new(
            Opts::new("webhooks_received_total", "Webhook POSTs by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(webhooks.clone()))?;
        let inbox_backlog = IntGauge::new("inbox_backlog", "Inbox rows not processed yet")?;
        registry.register(Box::new(inbox_backlog.clone()))?;
        let inbox_parked = IntGauge::new(
            "inbox_parked",
            "Inbox rows parked after failing for good (converra inbox parked)",
        )?;
        registry.register(Box::new(inbox_parked.clone()))?;
        let inbox_overdue = IntGauge::new(
            "inbox_overdue",
            "Inbox rows waiting longer than inbox.keep_raw_days (their day's key is kept)",
        )?;
        registry.register(Box::new(inbox_overdue.clone()))?;
        let conversation_index_tail = IntGauge::new(
            "conversation_index_tail",
            "Messages not in the conversation index yet (SQLite)",
        )?;
        registry.register(Box::new(conversation_index_tail.clone()))?;
        let conversation_actors =
            IntGauge::new("conversation_actors", "Conversation actors running")?;
        registry.register(Box::new(conversation_actors.clone()))?;
        let db_write_seconds = histogram(
            &registry,
            "db_write_seconds",
            "Duration of one group-commit write batch",
            vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
            ],
        )?;
        let db_batch_jobs = histogram(
            &registry,
            "db_batch_jobs",
            "Jobs committed per write batch",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        )?;
        let webhook_seconds = histogram(
            &registry,
            "webhook_seconds",
            "Time from a webhook POST's arrival to its answer, as the server sees it",
            // Fine around the 10 ms latency goal, so the tail can be told apart.
            vec![
                0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.2, 0.5,
                1.0, 5.0,
            ],
        )?;
        let wal_restart_seconds = histogram(
            &registry,
            "wal_restart_seconds",
            "SQLite: how long the writer paused between batches to start the WAL over",
            vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
        )?;
        let outbound_sends = IntCounterVec::new(
            Opts::new(
                "outbound_sends_total",
                "Calls to Meta's send endpoint by outcome (sent, retried, failed, paused, unknown)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(outbound_sends.clone()))?;
        let outbound_refusals = IntCounterVec::new(
            Opts::new(
                "outbound_refusals_total",
                "Sends refused by the API, by the rule they broke",
            ),
            &["code"],
        )?;
        registry.register(Box::new(outbound_refusals.clone()))?;
        let outbound_numbers_paused = IntGauge::new(
            "outbound_numbers_paused",
            "Numbers whose sender is paused: Meta refused their token or account",
        )?;
        registry.register(Box::new(outbound_numbers_paused.clone()))?;
        let outbound_deferrals = IntCounterVec::new(
            Opts::new(
                "outbound_deferrals_total",
                "Meta's rate or spam limits met: what waits (the whole number, or one send) and Meta's code",
            ),
            &["scope", "code"],
        )?;
        registry.register(Box::new(outbound_deferrals.clone()))?;
        let media_fetches = IntCounterVec::new(
            Opts::new(
                "media_fetches_total",
                "Attempts to fetch an inbound message's media from Meta, by outcome: fetched, retried, failed",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(media_fetches.clone()))?;
        let emails = IntCounterVec::new(
            Opts::new(
                "emails_total",
                "Delivery attempts of emails to account holders, by outcome: sent, retried, failed",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(emails.clone()))?;
        let messaging_limit_waiting = IntGaugeVec::new(
            Opts::new(
                "messaging_limit_waiting",
                "Sends waiting for room in their business portfolio's messaging limit, by number",
            ),
            &["phone_number_id"],
        )?;
        registry.register(Box::new(messaging_limit_waiting.clone()))?;
        let outbound_waiting = IntGaugeVec::new(
            Opts::new(
                "outbound_waiting",
                "Sends a number's sender holds that are not in flight: waiting for their turn, the pace, a retry's time, the messaging limit or a paused number",
            ),
            &["phone_number_id"],
        )?;
        registry.register(Box::new(outbound_waiting.clone()))?;
        let outbound_pace = GaugeVec::new(
            Opts::new(
                "outbound_pace",
                "Messages a second a number's sender paces at: the number's throughput at Meta",
            ),
            &["phone_number_id"],
        )?;
        registry.register(Box::new(outbound_pace.clone()))?;
        let retention_deleted = IntCounterVec::new(
            Opts::new(
                "retention_deleted_total",
                "Rows the retention sweeps deleted as past their period, by category",
            ),
            &["category"],
        )?;
        registry.register(Box::new(retention_deleted.clone()))?;
        let retention_sweeps = IntCounterVec::new(
            Opts::new(
                "retention_sweeps_total",
                "Retention sweeps by outcome: finished, incomplete (a tenant's failed; the next sweep carries on), stopped",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(retention_sweeps.clone()))?;
        let timed_duties = IntCounterVec::new(
            Opts::new(
                "timed_duties_total",
                "Timed duties run to their end, by duty: inbox_sweep, upkeep, idle_check, compliance_scan, mailer",
            ),
            &["duty"],
        )?;
        registry.register(Box::new(timed_duties.clone()))?;
        Ok(Metrics {
            timed_duties,
            retention_deleted,
            retention_sweeps,
            messaging_limit_waiting,
            media_fetches,
            emails,
            outbound_deferrals,
            outbound_sends,
            outbound_refusals,
            outbound_numbers_paused,
            outbound_waiting,
            outbound_pace,
            writer_restarts: counter(
                &registry,
                "writer_restarts_total",
                "Database writer threads restarted after a panic (the jobs in hand failed)",
            )?,
            messages_ingested: counter(
                &registry,
                "messages_ingested_total",
                "Inbound messages committed (applied as they arrived, or to the inbox)",
            )?,
            statuses_ingested: counter(
                &registry,
                "statuses_ingested_total",
                "Status events committed (applied as they arrived, or to the inbox)",
            )?,
            preferences_ingested: counter(
                &registry,
                "preferences_ingested_total",
                "User preference events committed (applied as they arrived, or to the inbox)",
            )?,
            duplicates: counter(
                &registry,
                "duplicates_total",
                "Redelivered events recognised and skipped",
            )?,
            signature_failures: counter(
                &registry,
                "signature_failures_total",
                "Webhook POSTs refused for a missing or wrong signature",
            )?,
            unrouted: counter(
                &registry,
                "unrouted_total",
                "Events for a phone number no tenant owns (stored)",
            )?,
            raw_stored: counter(
                &registry,
                "raw_stored_total",
                "Signed webhook content stored raw: not an event Converra routes",
            )?,
            events_applied: counter(
                &registry,
                "events_applied_total",
                "Inbox events applied by conversation actors",
            )?,
            actor_restarts: counter(
                &registry,
                "actor_restarts_total",
                "Conversation actors restarted after a panic",
            )?,
            webhooks,
            conversation_actors,
            inbox_backlog,
            inbox_parked,
            inbox_overdue,
            raw_payloads_deleted: counter(
                &registry,
                "raw_payloads_deleted_total",
                "Raw payloads deleted when their day passed inbox.keep_raw_days",
            )?,
            conversation_index_tail,
            db_write_seconds,
            db_batch_jobs,
            webhook_seconds,
            wal_restart_seconds,
            registry,
        })
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
