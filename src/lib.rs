//! Converra: a multi-tenant CRM and messaging-automation daemon on the WhatsApp
//! Business Platform.
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | settings: defaults → file → `CONVERRA__*` env; secrets from files; validation |
//! | [`logging`] | the slog root logger (JSON lines or human) |
//! | [`error`] | the HTTP error policy: one enum → status + JSON body |
//! | [`rules`] | the rules a refused request breaks: 422 answers' `rule`, 409 answers' `code` |
//! | [`crypto`] | master key, per-contact data keys, sealing, blind indexes, API key hashes |
//! | [`clock`] | injectable time |
//! | [`ids`] | id newtypes |
//! | [`whatsapp`] | Meta's JSON: webhook payloads, signatures, the Graph API client |
//! | [`storage`] | diesel: connections, migrations, queries by table, the group-commit writer |
//! | [`intake`] | a verified webhook on its way to the actors and the writer |
//! | [`actors`] | registry → tenant → conversation actors, senders, scheduler, compliance, mailer |
//! | [`automation`] | a tenant's automation rules and what they reply |
//! | [`compliance`] | data-subject requests, due dates, notices, the processing record |
//! | [`retention`] | retention categories and periods |
//! | [`email`] | the emails to account holders, rendered from templates |
//! | [`http`] | thin handlers: webhook, tenant API, health and metrics |
//! | [`metrics`] | the Prometheus registry |
//! | [`telemetry`] | storage's reports turned into metrics |
//! | [`systemd`] | READY / WATCHDOG / STOPPING notifications |
//! | [`background`] | the daemon's background work by name, stopped in order at shutdown |
//!
//! [`run`] starts everything on a listener the caller bound and stops on `shutdown`,
//! so tests run the real server on an ephemeral port.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::await_holding_lock)]

pub mod actors;
pub mod automation;
pub mod background;
pub mod clock;
pub mod compliance;
pub mod config;
pub mod crypto;
pub mod email;
pub mod error;
pub mod http;
pub mod ids;
pub mod intake;
pub mod logging;
pub mod metrics;
pub mod retention;
pub mod rules;
pub mod storage;
pub mod systemd;
pub mod telemetry;
pub mod whatsapp;

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpServer};

use crate::actors::registry::{DispatchInboxRows, Ping, Registry, StopSweeping};
use crate::actors::{Core, Hooks};
use crate::background::Background;
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::config::Settings;
use crate::crypto::Keyring;
use crate::storage::key_store::Vault;
use crate::storage::writer::{self, WriterConfig};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("master key file {path}: {message}")]
    MasterKey { path: String, message: String },
}

/// Keeps this process's memory in ordinary pages. The daemon's memory is bounded by
/// configuration (actors, caches, connections), and the bound must hold for resident
/// memory: with transparent huge pages the allocator's segments are backed by 2 MiB
/// pages, so a segment partly in use is resident whole (docs/performance.md measures
/// the difference; throughput did not change).
pub fn use_small_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process.
    #[cfg(target_os = "linux")]
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Binds the listening socket with a backlog of `backlog` connections. std's `bind`
/// asks for 128, which a burst of new connections (Meta's, or a load test's) overflows:
/// the kernel drops the excess and the clients retry a second later.
pub fn listen(address: &str, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{SocketAddr, ToSocketAddrs};
    let bind = |address: SocketAddr| -> std::io::Result<TcpListener> {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        Ok(socket.into())
    };
    // Like std's `bind`: the first of the name's addresses that can be bound.
    let mut last_error = None;
    for candidate in address.to_socket_addrs()? {
        match bind(candidate) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    }))
}

/// What [`run`] takes besides settings: the logger, the clock and test hooks.
pub struct RunOptions {
    pub log: slog::Logger,
    pub clock: SharedClock,
    pub hooks: Hooks,
}

impl RunOptions {
    pub fn new(log: slog::Logger) -> RunOptions {
        RunOptions {
            log,
            clock: Arc::new(SystemClock),
            hooks: Hooks::default(),
        }
    }
}

/// Opens the database (applying migrations and the upgrades that need the master key)
/// and the key ring, blocking.
pub fn open_storage(settings: &Settings) -> Result<(Arc<Vault>, storage::Pool), RunError> {
    open_storage_with(settings, KeyFile::MayCreate)
}

/// Whether opening storage may make the master key: the daemon and `migrate` may (for
/// a database that holds nothing yet); operator commands only use the one there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFile {
    MayCreate,
    MustExist,
}

/// [`open_storage`] for operator commands: the master key file must exist and match
/// the recorded check value, even where the database holds nothing yet; a command run
/// with other settings than the daemon's must not make a key of its own.
pub fn open_existing_storage(settings: &Settings) -> Result<(Arc<Vault>, storage::Pool), RunError> {
    open_storage_with(settings, KeyFile::MustExist)
}

fn open_storage_with(
    settings: &Settings,
    key_file: KeyFile,
) -> Result<(Arc<Vault>, storage::Pool), RunError> {
    let pool = storage::connect(settings)?;
    let mut conn = pool.get().map_err(storage::StorageError::from)?;
    let key_store = storage::key_store::connect(settings, &mut conn)?;
    let keyring = unlock(settings, &mut conn, key_store.as_ref(), key_file)?;
    let vault = Vault::new(keyring, key_store);
    storage::upgrade::run(&mut conn, &vault, SystemClock.now_ms())?;
    storage::conversations::note_closed_conversations(&mut conn)?;
    storage::privacy::load_pending_subjects(&mut conn)?;
    drop(conn);
    Ok((Arc::new(vault), pool))
}

/// The master key this database's data is sealed under: the key file, checked against
/// the value recorded with the first key. A new key is made only for a database that
/// holds nothing sealed yet; a missing or different file is refused, naming it and
/// what to restore, since a new key would open none of the data.
pub fn unlock(
    settings: &Settings,
    conn: &mut storage::DbConn,
    key_store: Option<&storage::Pool>,
    key_file: KeyFile,
) -> Result<Keyring, RunError> {
    use storage::master_key;
    let path = Path::new(&settings.security.master_key_file);
    let shown = std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string();
    let refuse = |message: String| RunError::MasterKey {
        path: shown.clone(),
        message,
    };
    let recorded = master_key::recorded(conn)?;
    let holds_data = master_key::holds_data(conn, key_store)?;
    let keyring = match Keyring::load(path)? {
        Some(keyring) => keyring,
        None if holds_data => {
            return Err(refuse(
                "missing, but the database holds data sealed under a master key. Restore \
                 the key file from its backup (or point security.master_key_file at it); \
                 a new key would open none of the data, so none is made"
                    .into(),
            ))
        }
        None if key_file == KeyFile::MustExist => {
            return Err(refuse(
                "missing. Operator commands use the daemon's master key and make none: \
                 run them with the daemon's settings (security.master_key_file), or run \
                 `converra migrate` first for a new database"
                    .into(),
            ))
        }
        None => Keyring::create(path)?,
    };
    let now = SystemClock.now_ms();
    if !holds_data && key_file == KeyFile::MayCreate {
        // Nothing is sealed yet, so any key will do: this one is recorded.
        master_key::replace(conn, keyring.check_value(), now)?;
        return Ok(keyring);
    }
    let mismatch = || {
        refuse(
            "this is not the master key the database's data is sealed under. Restore the \
             key file that belongs to this database (or point security.master_key_file \
             at it)"
                .into(),
        )
    };
    match recorded {
        Some(value) if value == keyring.check_value() => Ok(keyring),
        Some(_) => Err(mismatch()),
        None => {
            // Data from before check values were recorded: the key must open it.
            if !master_key::opens_a_data_key(conn, key_store, &keyring)? {
                return Err(mismatch());
            }
            let in_force = master_key::record(conn, keyring.check_value(), now)?;
            if in_force == keyring.check_value() {
                Ok(keyring)
            } else {
                Err(mismatch())
            }
        }
    }
}

/// Records the configuration's processing record when it changed since the last
/// start, and queues its notice to every account holder. A failure is logged: the
/// next start tries again, and serving does not wait for it.
async fn record_processing(
    settings: &Settings,
    pool: &storage::Pool,
    clock: &clock::SharedClock,
    log: &slog::Logger,
) {
    let (processing, pool, now) = (settings.processing.clone(), pool.clone(), clock.now_ms());
    let domain = email::message_domain(&settings.email.from);
    let recorded = actix_web::rt::task::spawn_blocking(move || {
        storage::with_conn(&pool, |conn| {
            compliance::notices::record_processing(conn, &processing, &domain, now)
        })
    })
    .await;
    match recorded {
        Ok(Ok(Some(notice))) => {
            slog::info!(log, "the processing record changed: its notice is queued for every account holder";
                "notice" => notice)
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => slog::warn!(log, "recording the processing record failed"; "error" => %e),
        Err(e) => slog::warn!(log, "recording the processing record failed"; "error" => %e),
    }
}

/// Runs the daemon on `listener` until `shutdown` completes, then stops accepting,
/// finishes in-flight requests and inbox work (up to `server.shutdown_timeout_secs`),
/// stops the background work (see [`background`]) and returns. Must be called inside an
/// actix system.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let log = options.log;
    for (key, reason) in settings.warnings() {
        slog::warn!(log, "configuration incomplete"; "key" => key, "problem" => reason);
    }
    let opened = {
        let settings = settings.clone();
        actix_web::rt::task::spawn_blocking(move || open_storage(&settings))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    };
    let (keyring, pool) = opened?;
    record_processing(&settings, &pool, &options.clock, &log).await;
    let metrics = Arc::new(metrics::Metrics::new()?);
    let routes = Arc::new(storage::routes::RouteCache::default());
    // The storage layer's background threads (writers, checkpointer, conversation
    // index, contact readers), then every actor and task started below: shutdown stops
    // them in the reverse order.
    let mut background = Background::new(log.clone());
    let (writer, storage_threads) = writer::spawn(
        pool.clone(),
        keyring.clone(),
        options.clock.clone(),
        Arc::new(telemetry::MetricsReport(metrics.clone())),
        routes.clone(),
        WriterConfig {
            batch_max: settings.database.write_batch_max,
            writers: settings.database.writers,
            wal_restart_pages: (settings.database.sqlite_wal_restart_mib * 256) as i64,
            checkpoint_interval: std::time::Duration::from_millis(
                settings.database.sqlite_checkpoint_interval_ms,
            ),
            #[cfg(feature = "testing")]
            before_batch: options.hooks.before_write_batch.clone(),
        },
        log.new(slog::o!("task" => "writer")),
    )?;
    // The contact readers keep a connection each while look-ups keep coming; the
    // writers keep one each, and one more is left for the API.
    let (readers, reader_threads) = storage::readers::spawn(
        pool.clone(),
        keyring.clone(),
        settings.database.readers.min(
            (settings.database.pool_size as usize)
                .saturating_sub(writer.writers() + 1)
                .max(1),
        ),
        &log.new(slog::o!("task" => "readers")),
    )?;
    {
        let (readers, writer) = (readers.clone(), writer.clone());
        let mut threads = storage_threads;
        threads.extend(reader_threads);
        background.threads("storage", threads, move || async move {
            readers.stop();
            writer.stop().await;
        });
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    // 0: the tenant actors run on the HTTP workers' threads (ActorHosts).
    let arbiters: Vec<Arbiter> = (0..settings.actors.arbiters)
        .map(|_| Arbiter::new())
        .collect();
    let arbiter_handles: Vec<ArbiterHandle> = arbiters.iter().map(Arbiter::handle).collect();
    background.task("actor-arbiters", "resumed", move || async move {
        for arbiter in &arbiters {
            arbiter.stop();
        }
    });
    let core = Arc::new(Core {
        settings: settings.clone(),
        pool: pool.clone(),
        writer: writer.clone(),
        keyring,
        clock: options.clock,
        metrics,
        log: log.new(slog::o!("task" => "actors")),
        hooks: options.hooks,
        routes,
        tenants: Default::default(),
        hosts: Default::default(),
        readers: readers.clone(),
        senders: actors::sender::Senders::new(Arbiter::current()),
        automations: crate::automation::AutomationBook::new(settings.outbound.clone()),
        media_wanted: Default::default(),
        compliance_wanted: Default::default(),
    });
    let registry = {
        let core = core.clone();
        Supervisor::start(move |_| Registry::new(core, arbiter_handles))
    };
    {
        let registry = registry.clone();
        background.task("inbox-sweep", "resumed", move || async move {
            if let Ok(Some(sweep)) = registry.send(StopSweeping).await {
                let _ = sweep.await;
            }
        });
    }
    // The scheduler's retention sweep stops after its batch; the actors whose work
    // calls out or writes on its own finish what is in flight with its outcome
    // written, and start nothing new (what waits is durable and goes at the next
    // start).
    let scheduler = {
        let (core, registry) = (core.clone(), registry.clone());
        Supervisor::start(move |_| actors::scheduler::Scheduler::new(core, registry))
    };
    background.task("scheduler", "resumed", move || async move {
        if let Ok(work) = scheduler.send(actors::scheduler::StopScheduler).await {
            if let Some(sweep) = work.sweep {
                let _ = sweep.await;
            }
            let _ = work.upkeep_done.await;
        }
    });
    let mailer = {
        let core = core.clone();
        Supervisor::start(move |_| actors::mailer::Mailer::new(core))
    };
    background.task("mailer", "retried", finish_work(mailer.recipient()));
    let compliance = {
        let (core, registry) = (core.clone(), registry.clone());
        Supervisor::start(move |_| actors::compliance::ComplianceActor::new(core, registry))
    };
    background.task("compliance", "resumed", finish_work(compliance.recipient()));
    let media_fetcher = {
        let core = core.clone();
        Supervisor::start(move |_| actors::media::MediaFetcher::new(core))
    };
    background.task(
        "media-fetcher",
        "fetched again",
        finish_work(media_fetcher.recipient()),
    );
    {
        let core = core.clone();
        background.task("senders", "reconciled", move || async move {
            core.senders.finish().await
        });
    }
    // Every number's sender starts: it syncs the account's templates, and sends what
    // was accepted before a stop.
    {
        let core = core.clone();
        actix::spawn(async move {
            let pool = core.pool.clone();
            let numbers = actix_web::rt::task::spawn_blocking(move || {
                storage::with_conn(&pool, |conn| {
                    storage::tenants::list_phone_numbers(conn, None)
                })
            })
            .await;
            match numbers {
                Ok(Ok(numbers)) => {
                    for number in numbers {
                        actors::sender::wake(&core, &number.phone_number_id.into());
                    }
                }
                Ok(Err(e)) => {
                    slog::warn!(core.log, "reading the outbox at start failed"; "error" => %e)
                }
                Err(e) => {
                    slog::warn!(core.log, "reading the outbox at start failed"; "error" => %e)
                }
            }
        });
    }
    {
        let registry = registry.clone();
        writer.set_dispatcher(Box::new(move |items| {
            registry.do_send(DispatchInboxRows(items))
        }));
    }
    let state = web::Data::new(http::AppState {
        core: core.clone(),
        registry: registry.clone(),
    });
    // One per core: with a core left to the database writer, the single HTTP worker of
    // a two-core machine is the bottleneck under load.
    let workers = match settings.server.workers {
        0 => cores.max(1),
        n => n,
    };
    let server = HttpServer::new(move || {
        // Runs on each worker's thread as it starts.
        state.core.hosts.register_current();
        App::new()
            .app_data(state.clone())
            .configure(http::configure)
    })
    .workers(workers)
    .max_connections((settings.server.max_connections / workers).max(1))
    .client_request_timeout(Duration::from_millis(settings.server.client_timeout_ms))
    .disable_signals()
    .shutdown_timeout(settings.server.shutdown_timeout_secs)
    .listen(listener);
    let server = match server {
        Ok(server) => server.run(),
        Err(e) => {
            // Nothing was served: what started stops before the error is returned.
            drop((registry, core, writer, readers));
            background.stop().await;
            return Err(e.into());
        }
    };
    let server_handle = server.handle();
    let serving = actix_web::rt::spawn(server);
    slog::info!(log, "converra is ready";
        "bind" => &settings.server.bind,
        "database" => storage::DatabaseUrl::parse(&settings.database.url).map(|u| u.backend_name()).unwrap_or("?"));
    systemd::ready();
    let stall_limit = writer_stall_limit(&settings);
    if let Some(every) = systemd::watchdog_interval() {
        let registry = registry.clone();
        let watchdog_writer = writer.clone();
        let watchdog_log = log.clone();
        let watchdog = actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                // Only a live actor system and a writer that makes progress (or waits
                // for work) feed the watchdog: a hung database write stops it, and
                // systemd restarts the daemon.
                let writing = watchdog_writer.health().problem(stall_limit);
                if let Some(problem) = &writing {
                    slog::warn!(watchdog_log, "watchdog not fed"; "writer" => problem);
                }
                if writing.is_none() && registry.send(Ping).await.is_ok() {
                    systemd::watchdog();
                }
            }
        });
        background.task(
            "watchdog",
            "resumed",
            move || async move { watchdog.abort() },
        );
    }

    shutdown.await;
    slog::info!(
        log,
        "shutting down: no new connections, finishing in-flight work"
    );
    systemd::stopping();
    server_handle.stop(true).await;
    let _ = serving.await;
    // Actors that ran on the HTTP workers' threads stopped with them; what they left (a
    // delivery they held went to the inbox) is dispatched again, and the registry
    // restarts their tenants on its own thread to finish it.
    drain(
        &core,
        Duration::from_secs(settings.server.shutdown_timeout_secs),
        &log,
    )
    .await;
    // The server's state held the last of these but the background tasks' own.
    drop(registry);
    drop(core);
    drop(writer);
    drop(readers);
    background.stop().await;
    slog::info!(log, "converra stopped");
    Ok(())
}

/// Stops an actor whose work calls out or writes on its own: it finishes what is in
/// flight and starts nothing new.
fn finish_work(
    actor: Recipient<actors::FinishWork>,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()>>> {
    move || {
        Box::pin(async move {
            if let Ok(done) = actor.send(actors::FinishWork).await {
                let _ = done.await;
            }
        })
    }
}

/// How long one write batch may wait for the database before the writer counts as
/// stuck: every statement is bounded by the statement timeout and getting a connection
/// by the connect timeout, so a batch past both is waiting on a database that does not
/// answer.
pub fn writer_stall_limit(settings: &Settings) -> Duration {
    Duration::from_secs(
        settings.database.statement_timeout_secs + settings.database.connect_timeout_secs,
    )
}

/// Waits until the inbox holds no unprocessed row (or the timeout passes).
async fn drain(core: &Arc<Core>, timeout: Duration, log: &slog::Logger) {
    let deadline = Instant::now() + timeout;
    loop {
        core.writer.flush().await;
        let pool = core.pool.clone();
        let backlog = actix_web::rt::task::spawn_blocking(move || {
            storage::with_conn(&pool, storage::inbox::backlog)
        })
        .await;
        match backlog {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) if Instant::now() >= deadline => {
                slog::warn!(log, "stopping with unprocessed inbox rows; they are processed at the next start"; "rows" => n);
                return;
            }
            Ok(Err(e)) => {
                slog::warn!(log, "cannot read the inbox backlog while stopping"; "error" => %e);
                return;
            }
            _ if Instant::now() >= deadline => return,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
