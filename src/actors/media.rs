//! The media fetcher: one supervised actor that fetches the media of inbound messages
//! from Meta as they arrive (the download link Meta gives expires within minutes) and
//! stores each file sealed under its message's key. Work is durable: the write that
//! stores a media message queues its download ([`crate::storage::media`]), so a
//! restart goes on where it stopped. A conversation that stored media wakes it; it
//! also looks for due retries every few seconds.
//!
//! A failure Meta calls temporary (the network, 5xx, throttling) or a token problem is
//! tried again with a growing back-off until `media.retry_deadline_secs` after the
//! message arrived; a file over Meta's limit for its type, or an id Meta does not
//! know, fails at once with Meta's error, readable through the API.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::{when_idle, Core, FinishWork};
use crate::ids::MessageId;
use crate::storage::media::{self, MediaJob};
use crate::storage::StorageError;
use crate::whatsapp::graph::{ErrorClass, GraphClient, GraphError};
use crate::whatsapp::media::max_bytes;

/// How often the fetcher looks whether a conversation woke it.
const TICK: Duration = Duration::from_millis(200);
/// How often it looks for due retries without being woken.
const RESCAN_TICKS: u32 = 25;

pub struct MediaFetcher {
    core: Arc<Core>,
    client: Option<Rc<GraphClient>>,
    /// Messages whose media is being fetched now.
    in_flight: HashSet<MessageId>,
    /// A read of the due downloads is on its way: no second one starts.
    reading: bool,
    ticks: u32,
    /// Shutdown asked it to start no download ([`FinishWork`]).
    finishing: bool,
}

impl MediaFetcher {
    pub fn new(core: Arc<Core>) -> MediaFetcher {
        MediaFetcher {
            core,
            client: None,
            in_flight: HashSet::new(),
            reading: false,
            ticks: 0,
            finishing: false,
        }
    }

    fn client(&mut self) -> Result<Rc<GraphClient>, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = Rc::new(GraphClient::from_settings(&self.core.settings)?);
        self.client = Some(client.clone());
        Ok(client)
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.ticks += 1;
        if self.reading || self.finishing {
            return;
        }
        let woken = self.core.media_wanted.swap(false, Ordering::AcqRel);
        if !woken && self.ticks < RESCAN_TICKS {
            return;
        }
        self.ticks = 0;
        let room = self
            .core
            .settings
            .media
            .concurrency
            .saturating_sub(self.in_flight.len());
        if room == 0 {
            return;
        }
        self.reading = true;
        let core = self.core.clone();
        let now = core.clock.now_ms();
        let fut = async move {
            core.read(move |conn, _| media::due(conn, now, room as i64 + 64))
                .await
        };
        ctx.spawn(fut.into_actor(self).map(move |due, actor, ctx| match due {
            Ok(jobs) => {
                actor.reading = false;
                let room = actor
                    .core
                    .settings
                    .media
                    .concurrency
                    .saturating_sub(actor.in_flight.len());
                let fresh: Vec<MediaJob> = jobs
                    .into_iter()
                    .filter(|job| !actor.in_flight.contains(&job.message_id))
                    .take(room)
                    .collect();
                for job in fresh {
                    actor.start(job, ctx);
                }
            }
            Err(e) => {
                actor.reading = false;
                slog::warn!(actor.core.log, "reading due media downloads failed"; "error" => %e)
            }
        }));
    }

    fn start(&mut self, job: MediaJob, ctx: &mut Context<Self>) {
        if self.finishing {
            // Stays due; fetched after the next start.
            return;
        }
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => {
                slog::error!(self.core.log, "the Graph API client cannot be built"; "error" => e);
                return;
            }
        };
        self.in_flight.insert(job.message_id.clone());
        let core = self.core.clone();
        let id = job.message_id.clone();
        ctx.spawn(
            fetch(core, client, job)
                .into_actor(self)
                .map(move |_, actor, _| {
                    actor.in_flight.remove(&id);
                    // The next due download starts at once.
                    actor.core.media_wanted.store(true, Ordering::Release);
                }),
        );
    }
}

impl Actor for MediaFetcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // What waited across a stop is looked for at once.
        self.ticks = RESCAN_TICKS;
        ctx.run_interval(TICK, |actor, ctx| actor.tick(ctx));
    }
}

impl Handler<FinishWork> for MediaFetcher {
    type Result = MessageResult<FinishWork>;

    fn handle(&mut self, _msg: FinishWork, ctx: &mut Context<Self>) -> Self::Result {
        self.finishing = true;
        MessageResult(when_idle(ctx, |fetcher: &MediaFetcher| {
            fetcher.in_flight.is_empty() && !fetcher.reading
        }))
    }
}

impl Supervised for MediaFetcher {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.in_flight.clear();
        self.reading = false;
        self.client = None;
    }
}

/// What became of one attempt.
enum Outcome {
    Fetched {
        mime_type: String,
        size: usize,
        sealed: Vec<u8>,
    },
    /// Tried again later, or given up (`retry` false), with the error as the API
    /// shows it.
    Failed { error_json: String, retry: bool },
}

async fn fetch(core: Arc<Core>, client: Rc<GraphClient>, job: MediaJob) {
    let outcome = attempt(&core, &client, &job).await;
    let now = core.clock.now_ms();
    let settings = &core.settings.media;
    let deadline = job.created_at + (settings.retry_deadline_secs as i64).saturating_mul(1000);
    let label = match &outcome {
        Outcome::Fetched { .. } => "fetched",
        Outcome::Failed { retry: true, .. } if now < deadline => "retried",
        Outcome::Failed { .. } => "failed",
    };
    core.metrics.media_fetches.with_label_values(&[label]).inc();
    let written = job.clone();
    let tenant = job.tenant_id.clone();
    let result = match outcome {
        Outcome::Fetched {
            mime_type,
            size,
            sealed,
        } => {
            core.writer
                .write(Some(tenant), move |conn| {
                    media::store_fetched(conn, &written, &mime_type, size, &sealed, now)
                })
                .await
        }
        Outcome::Failed { error_json, retry } => {
            let exponent = job.attempts.clamp(0, 16) as u32;
            let wait =
                (settings.retry_base_ms as f64 * 2f64.powi(exponent as i32)).min(3_600_000.0);
            let next = (retry && now < deadline).then(|| now + super::sender::jittered(wait));
            if next.is_none() {
                slog::warn!(core.log, "an inbound message's media could not be fetched";
                    "message_id" => &job.message_id, "error" => &error_json);
            }
            core.writer
                .write(Some(tenant), move |conn| {
                    media::attempt_failed(conn, &written, &error_json, next)
                })
                .await
        }
    };
    if let Err(e) = result {
        slog::warn!(core.log, "storing a media download's outcome failed";
            "message_id" => &job.message_id, "error" => %e);
    }
}

async fn attempt(core: &Arc<Core>, client: &GraphClient, job: &MediaJob) -> Outcome {
    let read_job = job.clone();
    let source = core
        .read(move |conn, vault| media::source(conn, vault, &read_job))
        .await;
    let source = match source {
        Ok(Some(source)) => source,
        Ok(None) => {
            return Outcome::Failed {
                error_json: serde_json::json!({"code": "media_unavailable",
                    "message": "the message was deleted, or its number removed, before its media was fetched"})
                .to_string(),
                retry: false,
            }
        }
        Err(e) => return storage_failed(e),
    };
    let fetched = async {
        let info = client
            .media_info(&source.media_id, &source.access_token)
            .await?;
        let bytes = client
            .download_media(&info, &source.access_token, max_bytes(&job.kind))
            .await?;
        Ok::<_, GraphError>((info.mime_type, bytes))
    }
    .await;
    match fetched {
        Ok((mime_type, bytes)) => {
            let (sealing_job, key) = (job.clone(), source.key);
            let size = bytes.len();
            // A file of up to 100 MB is sealed off the async threads.
            let sealed = actix_web::rt::task::spawn_blocking(move || {
                media::seal_file(&sealing_job, &key, &bytes)
            })
            .await
            .map_err(|e| StorageError::Panicked(e.to_string()))
            .and_then(|sealed| sealed);
            match sealed {
                Ok(sealed) => Outcome::Fetched {
                    mime_type,
                    size,
                    sealed,
                },
                Err(e) => storage_failed(e),
            }
        }
        Err(e) => Outcome::Failed {
            error_json: e.to_json(),
            // A token problem waits for the operator's new token like the sender.
            retry: e.class != ErrorClass::Permanent,
        },
    }
}

fn storage_failed(e: StorageError) -> Outcome {
    Outcome::Failed {
        error_json: serde_json::json!({"code": "storage", "message": e.to_string()}).to_string(),
        retry: true,
    }
}
