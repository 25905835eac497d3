//! The NATS bus: the same `Bus` calls over a NATS server, so a checker and any number of
//! runners can run as separate processes. This is the only module that imports `async_nats`.
//!
//! Publishing never waits on the network: a publish goes into a bounded outbox that one task
//! drains, and while the connection is down it is refused at once and counted by the caller,
//! so nothing piles up; a message the client refuses later is counted too. With
//! `results_stream`, results go to a JetStream stream instead, acknowledged and retried with
//! backoff from their own bounded buffer, several at once, so one result the stream keeps
//! refusing never holds back the others. The connection
//! reconnects forever with backoff and subscriptions resume; only the first connection can
//! fail, clearly, on bad credentials or after the connect timeout.

use super::BusMetrics;
use super::LeaseStore;
use super::{BoxFuture, Bus, BusError, Message, Subscription};
use crate::config::NatsConfig;
use crate::messages::Payload;
use crate::metrics::Metrics;
use crate::subjects::{subject_matches, valid_subject, Subjects};
use async_nats::connection::State;
use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerAddr};
use bytes::Bytes;
use futures_util::StreamExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Messages accepted for publishing but not yet handed to the connection.
const OUTBOX_CAPACITY: usize = 8192;
/// Messages a subscription holds before NATS counts its subscriber as slow and drops.
const SUBSCRIPTION_CAPACITY: usize = 4096;
/// The JetStream stream that keeps results when `results_stream` is on.
pub const RESULTS_STREAM: &str = "BASTION_RESULTS";
/// The key in the lease bucket.
const LEASE_KEY: &str = "leader";
/// How long one connection attempt may take at most.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Results being published to the stream at once, each retried on its own: a result that
/// keeps failing holds one of these places, never the queue behind it.
pub const RESULTS_IN_FLIGHT: usize = 64;
/// Attempts at a result the stream itself answers with an error (a result larger than the
/// stream's `max_msg_size`, say) before it is dropped and counted as `results_rejected`. With
/// the backoff that is about 11 s, long enough for a stream leader election to pass.
const REFUSED_ATTEMPTS: u32 = 8;
/// How long start-up keeps asking a JetStream that does not answer (a cluster electing its
/// leaders), or waits for a stream another process is still creating, to create, find or
/// update its streams and read the lease bucket: one deadline for all of it (`Patience`), so
/// that start-up stays well inside systemd's `TimeoutStartSec` (90 s in the shipped unit).
const JETSTREAM_PATIENCE: Duration = Duration::from_secs(60);
/// How long `settle` waits for its round trip to the server.
const SETTLE_PATIENCE: Duration = Duration::from_secs(1);
/// The first and the longest wait before a result is tried again.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether `url` is a NATS server address (`nats://host:port`, `tls://...`, or `host:port`)
/// without credentials: secrets belong in files, not in the config text.
pub fn check_url(url: &str) -> Result<(), String> {
    let address = url.parse::<ServerAddr>().map_err(|error| {
        format!("`{url}` is not a NATS server URL ({error}); write it as nats://host:4222")
    })?;
    if address.username().is_some() || address.password().is_some() {
        // Name the host only: the URL itself holds a secret.
        return Err(format!(
            "the URL of {}:{} holds credentials; keep secrets out of the config: use user + password_file, or token_file",
            address.host(),
            address.port()
        ));
    }
    Ok(())
}

/// JetStream bucket names: letters, digits, `-` and `_`.
pub fn valid_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A message waiting in an outbox.
struct Outgoing {
    subject: String,
    payload: Bytes,
    /// Stable across retries, so JetStream stores a retried result once.
    message_id: String,
}

#[derive(Debug)]
struct Durable {
    sender: mpsc::Sender<Outgoing>,
    /// Subjects that go to the stream.
    pattern: String,
}

/// A connection to NATS, shared by the checker, the runner and the result sink.
#[derive(Debug)]
pub struct NatsBus {
    client: Client,
    jetstream: jetstream::Context,
    outbox: mpsc::Sender<Outgoing>,
    durable: Option<Durable>,
    /// Accepted publishes not yet handed to the server (or, for results, acknowledged).
    unsent: Arc<AtomicUsize>,
    metrics: BusMetrics,
    next_message_id: AtomicU64,
    /// Identifies this process in JetStream message ids.
    instance: String,
    /// JetStream replicas of the streams bastion creates (`bus.nats.replicas`).
    replicas: usize,
    /// When start-up stops waiting for JetStream: `JETSTREAM_PATIENCE` after connecting,
    /// shared by the results stream and the lease bucket.
    jetstream_deadline: Instant,
    /// Where `settle` sends itself a message: this process's own subject under the prefix,
    /// so no permission beyond the prefix's is needed and no other agent is disturbed.
    settle_subject: String,
}

/// The server list with any credentials left out, for messages.
fn describe_servers(servers: &[ServerAddr]) -> String {
    servers
        .iter()
        .map(|server| format!("{}:{}", server.host(), server.port()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_secret(path: &Path, what: &'static str) -> Result<String, BusError> {
    let text = std::fs::read_to_string(path).map_err(|error| BusError::Secret {
        what,
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(BusError::Secret {
            what,
            path: path.to_path_buf(),
            reason: "the file is empty".to_string(),
        });
    }
    Ok(secret)
}

fn require_file(path: &Path, what: &'static str) -> Result<(), BusError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|error| BusError::Secret {
            what,
            path: path.to_path_buf(),
            reason: error.to_string(),
        })
}

/// The connection options from `[bus.nats]`, secrets read from their files.
async fn options(
    config: &NatsConfig,
    name: &str,
    metrics: &BusMetrics,
    connected_before: &Arc<AtomicBool>,
) -> Result<ConnectOptions, BusError> {
    let metrics = metrics.clone();
    let connected_before = Arc::clone(connected_before);
    let mut options = ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .connection_timeout(ATTEMPT_TIMEOUT)
        .event_callback(move |event| {
            let metrics = metrics.clone();
            let connected_before = Arc::clone(&connected_before);
            async move { on_event(event, &metrics, &connected_before) }
        });
    if let Some(path) = &config.token_file {
        options = options.token(read_secret(path, "the NATS token")?);
    }
    if let (Some(user), Some(path)) = (&config.user, &config.password_file) {
        options = options.user_and_password(user.clone(), read_secret(path, "the NATS password")?);
    }
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|error| BusError::Secret {
                what: "the NATS credentials",
                path: path.clone(),
                reason: error.to_string(),
            })?;
    }
    if let Some(path) = &config.nkey_seed_file {
        options = options.nkey(read_secret(path, "the NATS nkey seed")?);
    }
    if let Some(tls) = &config.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            require_file(ca, "the NATS CA certificate")?;
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            require_file(cert, "the NATS client certificate")?;
            require_file(key, "the NATS client key")?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options)
}

fn on_event(event: Event, metrics: &BusMetrics, connected_before: &AtomicBool) {
    match event {
        Event::Connected => {
            metrics.set_connected(true);
            if connected_before.swap(true, Ordering::AcqRel) {
                metrics.count_reconnect();
                tracing::info!("reconnected to NATS");
            }
        }
        Event::Disconnected => {
            metrics.set_connected(false);
            tracing::warn!("lost the NATS connection; reconnecting");
        }
        Event::SlowConsumer(_) => {
            metrics.count_dropped("slow_consumer");
            tracing::warn!("a subscription fell behind and NATS dropped messages for it");
        }
        Event::LameDuckMode => tracing::info!("the NATS server is shutting down (lame duck)"),
        Event::ServerError(error) => tracing::warn!(%error, "NATS server error"),
        Event::ClientError(error) => tracing::warn!(%error, "NATS client error"),
        Event::Draining | Event::Closed => {}
    }
}

/// The servers of `url`, parsed; a malformed one is a connect error naming it.
fn server_addrs(config: &NatsConfig) -> Result<Vec<ServerAddr>, BusError> {
    config
        .url
        .to_vec()
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>()
                .map_err(|error| BusError::Connect {
                    servers: url.clone(),
                    reason: error.to_string(),
                })
        })
        .collect()
}

/// Connects to `servers`, retrying with backoff (100 ms doubling up to 5 s) while none
/// answers. Bad credentials or TLS fail at once; so does `connect_timeout` running out.
async fn connect_with_retry(
    config: &NatsConfig,
    agent_id: &str,
    metrics: &BusMetrics,
    servers: &[ServerAddr],
    described: &str,
    connect_timeout: Option<Duration>,
) -> Result<Client, BusError> {
    let connected_before = Arc::new(AtomicBool::new(false));
    let name = format!("bastion {agent_id}");
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let options = options(config, &name, metrics, &connected_before).await?;
        match options.connect(servers.to_vec()).await {
            Ok(client) => return Ok(client),
            Err(error) => match error.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    return Err(BusError::Auth {
                        servers: described.to_string(),
                        reason: error.to_string(),
                    })
                }
                ConnectErrorKind::Tls | ConnectErrorKind::ServerParse => {
                    return Err(BusError::Connect {
                        servers: described.to_string(),
                        reason: error.to_string(),
                    })
                }
                _ => {
                    if let Some(limit) = connect_timeout {
                        if started.elapsed() + backoff >= limit {
                            return Err(BusError::ConnectTimeout {
                                servers: described.to_string(),
                                waited: humantime::format_duration(limit).to_string(),
                            });
                        }
                    }
                    tracing::warn!(servers = %described, %error, retry_in = ?backoff, "NATS is not reachable yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            },
        }
    }
}

/// Tells this process's messages from another's with the same agent id: pid and start time.
fn instance_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros())
    )
}

impl NatsBus {
    /// Connects, retrying with backoff while no server answers. Bad credentials or TLS fail
    /// at once; so does `connect_timeout` running out.
    pub async fn connect(
        config: &NatsConfig,
        agent_id: &str,
        metrics: &Metrics,
        connect_timeout: Option<Duration>,
    ) -> Result<NatsBus, BusError> {
        let metrics: BusMetrics = metrics.component();
        let servers = server_addrs(config)?;
        let described = describe_servers(&servers);
        let client = connect_with_retry(
            config,
            agent_id,
            &metrics,
            &servers,
            &described,
            connect_timeout,
        )
        .await?;
        // The first `Connected` event marks `connected_before`; later ones are reconnects.
        metrics.set_connected(true);
        tracing::info!(servers = %described, "connected to NATS");
        let jetstream = jetstream::new(client.clone());
        let jetstream_deadline = Instant::now() + JETSTREAM_PATIENCE;
        let unsent = Arc::new(AtomicUsize::new(0));
        let (outbox, outbox_receiver) = mpsc::channel(OUTBOX_CAPACITY);
        tokio::spawn(drain_outbox(
            client.clone(),
            outbox_receiver,
            Arc::clone(&unsent),
            metrics.clone(),
        ));
        let durable = if config.results_stream {
            let pattern = format!("{}.results.>", config.subject_prefix);
            ensure_results_stream(
                &jetstream,
                &pattern,
                config.results_max_age,
                config.replicas,
                &mut Patience::until(jetstream_deadline),
            )
            .await?;
            let (sender, receiver) = mpsc::channel(
                crate::config::bounds::RESULTS_BUFFER.clamp_count(config.results_buffer),
            );
            tokio::spawn(drain_durable(
                jetstream.clone(),
                receiver,
                Arc::clone(&unsent),
                metrics.clone(),
            ));
            Some(Durable { sender, pattern })
        } else {
            None
        };
        let instance = instance_id();
        Ok(NatsBus {
            client,
            jetstream,
            outbox,
            durable,
            unsent,
            metrics,
            next_message_id: AtomicU64::new(1),
            settle_subject: Subjects::new(&config.subject_prefix).settle(&instance),
            instance,
            replicas: config.replicas,
            jetstream_deadline,
        })
    }

    /// The checker lease in the JetStream key-value bucket `bucket`, whose entries expire
    /// `ttl` after their last write. The bucket's stream is created here rather than with
    /// `create_key_value`, which fails against nats-server 2.9 (its account info lacks
    /// fields that call expects).
    pub async fn lease_store(
        &self,
        bucket: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<NatsLease, BusError> {
        let stream_name = format!("KV_{bucket}");
        let wanted = stream::Config {
            name: stream_name.clone(),
            description: Some("bastion checker lease".to_string()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            duplicate_window: ttl.min(Duration::from_secs(120)),
            storage: stream::StorageType::Memory,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: self.replicas,
            ..Default::default()
        };
        // Every checker must agree on the TTL and the replicas; the latest configuration wins.
        let mut patience = Patience::until(self.jetstream_deadline);
        ensure_stream(
            &self.jetstream,
            wanted,
            &format!("lease bucket `{bucket}`"),
            |existing, wanted| {
                existing.max_age != wanted.max_age || existing.num_replicas != wanted.num_replicas
            },
            |existing, wanted| stream::Config {
                max_age: wanted.max_age,
                duplicate_window: wanted.duplicate_window,
                num_replicas: wanted.num_replicas,
                ..existing.clone()
            },
            &mut patience,
        )
        .await?;
        // Reading the bucket asks for its stream again: as `ensure_stream` says, a stream
        // another checker created a moment ago can be "not found" to it for a while.
        let store = loop {
            let error = match self.jetstream.get_key_value(bucket).await {
                Ok(store) => break store,
                Err(error) => error.to_string(),
            };
            let error = if not_ready(&error) {
                tracing::warn!(%error, bucket, "the lease bucket is not ready yet; retrying");
                if patience.wait().await {
                    continue;
                }
                patience.gave_up(&error)
            } else {
                error
            };
            return Err(BusError::JetStream(format!(
                "lease bucket `{bucket}`: {error}"
            )));
        };
        Ok(NatsLease {
            store,
            holder: holder.to_string(),
        })
    }

    /// A message to itself, through the server: the server handles a connection's commands in
    /// order, so the message comes back after every SUB sent before it has taken effect. The
    /// client only queues a SUB; without this, a result another client published right after
    /// this agent started could reach the server first and find no subscription. On a NATS
    /// cluster it proves this server has the subscriptions, not yet every other node (their
    /// interest travels on the routes). Bounded, and skipped while disconnected (the client
    /// subscribes again itself once it reconnects), so it never holds up start for long.
    async fn settle_now(&self) -> bool {
        if self.client.connection_state() != State::Connected {
            return false;
        }
        let started = Instant::now();
        let came_back = async {
            let mut own = self.client.subscribe(self.settle_subject.clone()).await?;
            self.client
                .publish(self.settle_subject.clone(), Bytes::new())
                .await?;
            let message = own.next().await;
            let _ = own.unsubscribe().await;
            Ok::<bool, async_nats::Error>(message.is_some())
        };
        match tokio::time::timeout(SETTLE_PATIENCE, came_back).await {
            Ok(Ok(true)) => true,
            outcome => {
                tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                came_back = ?outcome.ok().and_then(Result::ok),
                "the bus's round trip after subscribing did not come back; going on (a result published in the next moments may find no subscription)"
                );
                false
            }
        }
    }

    fn next_message_id(&self) -> String {
        let sequence = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{sequence}", self.instance)
    }

    fn enqueue(
        &self,
        sender: &mpsc::Sender<Outgoing>,
        subject: &str,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let outgoing = Outgoing {
            subject: subject.to_string(),
            payload,
            message_id: self.next_message_id(),
        };
        self.unsent.fetch_add(1, Ordering::AcqRel);
        sender.try_send(outgoing).map_err(|_| {
            self.unsent.fetch_sub(1, Ordering::AcqRel);
            BusError::Full(subject.to_string())
        })
    }
}

/// Start-up's patience with a JetStream that does not answer yet (a cluster electing its
/// leaders) or a stream another process is still creating: one deadline, `JETSTREAM_PATIENCE`
/// after connecting, for every step (each stream, and the lease bucket read after its
/// stream), whatever they retry inside, and a backoff doubling from `FIRST_BACKOFF` to
/// `MAX_BACKOFF`. A step that starts past the deadline still tries once.
struct Patience {
    started: Instant,
    deadline: Instant,
    backoff: Duration,
}

impl Patience {
    fn until(deadline: Instant) -> Patience {
        Patience {
            started: Instant::now(),
            deadline,
            backoff: FIRST_BACKOFF,
        }
    }

    /// Waits before the next try; false, at once, when that try would start past the deadline.
    async fn wait(&mut self) -> bool {
        if Instant::now() + self.backoff >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        true
    }

    /// `error`, the last of a step given up on, with how long this step waited for what.
    fn gave_up(&self, error: &str) -> String {
        // Whole seconds: the text is for a person, not a measurement.
        let waited =
            humantime::format_duration(Duration::from_secs(self.started.elapsed().as_secs()));
        if unanswered(error) {
            format!("{error} (JetStream did not answer for {waited})")
        } else {
            format!("{error} (the stream was still not ready after {waited}: another process may be creating it)")
        }
    }
}

/// Whether a JetStream error at start-up is waited out: no answer yet, or a stream another
/// process is still creating.
fn not_ready(error: &str) -> bool {
    unanswered(error) || being_created(error)
}

/// Gets the stream, or creates it. Several processes starting at once may race to create
/// it; the loser of the race finds it on a second look. A JetStream that does not answer yet
/// (a cluster still electing its leaders, or busy placing a stream's replicas), or a stream
/// another process is still creating, is asked again within `patience`.
async fn get_or_create_stream(
    jetstream: &jetstream::Context,
    wanted: &stream::Config,
    patience: &mut Patience,
) -> Result<stream::Stream, String> {
    let mut refusals = 0;
    loop {
        let error = match jetstream.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(error) => error.to_string(),
        };
        if not_ready(&error) {
            tracing::warn!(%error, stream = %wanted.name, "JetStream does not answer yet, or another process is creating the stream; retrying");
            if !patience.wait().await {
                return Err(patience.gave_up(&error));
            }
        } else if refusals < 3 {
            refusals += 1;
            tracing::debug!(%error, stream = %wanted.name, "creating the stream failed; looking again");
            if !patience.wait().await {
                return Err(error);
            }
        } else {
            return Err(error);
        }
    }
}

/// Whether a JetStream API error says the stream is being created by another process: it is
/// "not found" to one request and "already in use" to the next until its replicas have a
/// leader (a cluster, an HA pair and its runners starting at once).
fn being_created(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    // The stream's own "not found" (10059) only: "account not found" is a refusal.
    error.contains("stream not found")
        || error.contains("error code 10059")
        || error.contains("already in use")
}

/// Whether a JetStream API error means no answer yet rather than a refusal: a request that
/// timed out, or a cluster without a meta leader ("JetStream system temporarily unavailable",
/// error 10008). A server without JetStream ("no responders") is not waited for.
fn unanswered(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("timed out") || error.contains("temporarily unavailable")
}

async fn ensure_results_stream(
    jetstream: &jetstream::Context,
    pattern: &str,
    max_age: Duration,
    replicas: usize,
    patience: &mut Patience,
) -> Result<(), BusError> {
    let wanted = stream::Config {
        name: RESULTS_STREAM.to_string(),
        description: Some("bastion check results".to_string()),
        subjects: vec![pattern.to_string()],
        max_age,
        duplicate_window: max_age.min(Duration::from_secs(120)),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    ensure_stream(
        jetstream,
        wanted,
        &format!("stream {RESULTS_STREAM}"),
        |existing, wanted| {
            existing.max_age != wanted.max_age
                || existing.subjects != wanted.subjects
                || existing.num_replicas != wanted.num_replicas
        },
        |existing, wanted| stream::Config {
            max_age: wanted.max_age,
            duplicate_window: wanted.duplicate_window,
            subjects: wanted.subjects.clone(),
            num_replicas: wanted.num_replicas,
            ..existing.clone()
        },
        patience,
    )
    .await
}

/// Gets or creates the stream `wanted`, and updates it when `differs` says the existing one
/// does not have what bastion needs (its max age, subjects or replicas): to `updated`, the
/// existing configuration with only those changed, so an operator's own limits on the stream
/// (`max_msg_size`, `max_bytes`, say) are kept. A server that refuses
/// the replicas (a single server asked for 3, a cluster smaller than asked) gets an error
/// saying what to set. The stream's configuration is the one the get or create answered with,
/// not asked for again: in a cluster, a stream another process created a moment ago can be
/// "not found" to a second request until its replicas have a leader, and an HA pair with its
/// runners starts at once. An update that meets such a stream, or no answer, is tried again
/// within `patience`, like the get or create.
async fn ensure_stream(
    jetstream: &jetstream::Context,
    wanted: stream::Config,
    what: &str,
    differs: impl Fn(&stream::Config, &stream::Config) -> bool,
    updated: impl Fn(&stream::Config, &stream::Config) -> stream::Config,
    patience: &mut Patience,
) -> Result<(), BusError> {
    let replicas = wanted.num_replicas;
    let failed = |error: String| stream_error(what, replicas, error);
    loop {
        let existing = get_or_create_stream(jetstream, &wanted, patience)
            .await
            .map_err(failed)?;
        let config = &existing.cached_info().config;
        if !differs(config, &wanted) {
            return Ok(());
        }
        if config.num_replicas != replicas {
            tracing::info!(
                stream = %wanted.name,
                from = config.num_replicas,
                to = replicas,
                "changing the stream's replicas"
            );
        }
        let error = match jetstream.update_stream(updated(config, &wanted)).await {
            Ok(_) => return Ok(()),
            Err(error) => error.to_string(),
        };
        if !not_ready(&error) {
            return Err(failed(error));
        }
        tracing::warn!(%error, stream = %wanted.name, "the stream is not ready for an update yet; retrying");
        if !patience.wait().await {
            return Err(failed(patience.gave_up(&error)));
        }
    }
}

/// The error for a stream bastion could not create or update: one that names
/// `bus.nats.replicas` when the server refused the replicas.
fn stream_error(what: &str, replicas: usize, reason: String) -> BusError {
    if refuses_replicas(&reason) {
        BusError::Replicas {
            what: what.to_string(),
            replicas,
            reason,
        }
    } else {
        BusError::JetStream(format!("{what}: {reason}"))
    }
}

/// Whether a JetStream error says the server cannot place the replicas asked for: "replicas >
/// 1 not supported in non-clustered mode" from a single server, "insufficient resources" or
/// "no suitable peers for placement" from a cluster with fewer servers than replicas.
fn refuses_replicas(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    ["replicas", "insufficient resources", "no suitable peers"]
        .iter()
        .any(|sign| reason.contains(sign))
}

/// Hands queued messages to the connection, in order. While the connection is down the
/// client holds them (bounded by its own buffer) and sends them once it is back. A message the
/// client refuses (larger than the server's `max_payload`, or the client closed) is lost: it
/// is counted in `bastion_bus_dropped_total`, since its publisher was already told yes.
async fn drain_outbox(
    client: Client,
    mut outbox: mpsc::Receiver<Outgoing>,
    unsent: Arc<AtomicUsize>,
    metrics: BusMetrics,
) {
    while let Some(outgoing) = outbox.recv().await {
        if let Err(error) = client
            .publish(outgoing.subject.clone(), outgoing.payload)
            .await
        {
            let reason = match error.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => "outbox_too_large",
                _ => "outbox_failed",
            };
            tracing::warn!(subject = %outgoing.subject, %error, reason, "NATS refused a publish; the message is dropped");
            metrics.count_dropped(reason);
        }
        unsent.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Publishes results to the stream, up to `RESULTS_IN_FLIGHT` at once, each retried with
/// backoff until the stream acknowledges it (or refuses it for good). What waits meanwhile is
/// bounded by the buffer; results may reach the stream out of order (the sink orders by run).
async fn drain_durable(
    jetstream: jetstream::Context,
    mut queue: mpsc::Receiver<Outgoing>,
    unsent: Arc<AtomicUsize>,
    metrics: BusMetrics,
) {
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {
                unsent.fetch_sub(1, Ordering::AcqRel);
            }
            next = queue.recv(), if in_flight.len() < RESULTS_IN_FLIGHT => match next {
                Some(outgoing) => {
                    in_flight.push(deliver_durably(jetstream.clone(), outgoing, metrics.clone()));
                }
                None => break,
            },
        }
    }
    while in_flight.next().await.is_some() {
        unsent.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why one attempt at publishing a result failed.
enum Failure {
    /// Retrying cannot make it fit the server's `max_payload`.
    TooLarge(String),
    /// The stream answered with an error (its `max_msg_size`, say): tried a few times more.
    Refused(String),
    /// No answer (disconnected, timed out, no stream yet): tried until it is acknowledged.
    Unanswered(String),
}

fn classify(error: &jetstream::context::PublishError) -> Failure {
    use jetstream::context::PublishErrorKind;
    // The server's own JetStream error travels as the source of an `Other`.
    let answer = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>());
    match (error.kind(), answer) {
        (PublishErrorKind::MaxPayloadExceeded, _) => Failure::TooLarge(error.to_string()),
        (PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence, _) => {
            Failure::Refused(error.to_string())
        }
        (_, Some(answer)) => Failure::Refused(format!("{error}: {answer}")),
        (_, None) => Failure::Unanswered(error.to_string()),
    }
}

async fn publish_once(jetstream: &jetstream::Context, outgoing: &Outgoing) -> Result<(), Failure> {
    let publish = jetstream::message::PublishMessage::build()
        .payload(outgoing.payload.clone())
        .message_id(outgoing.message_id.as_str());
    let acknowledgement = jetstream
        .send_publish(outgoing.subject.clone(), publish)
        .await
        .map_err(|error| classify(&error))?;
    acknowledgement
        .await
        .map(|_| ())
        .map_err(|error| classify(&error))
}

/// Publishes one result until the stream acknowledges it, or drops it, counted, once retrying
/// cannot help. Its message id stays the same on every attempt, so the stream stores it once.
async fn deliver_durably(jetstream: jetstream::Context, outgoing: Outgoing, metrics: BusMetrics) {
    let mut backoff = FIRST_BACKOFF;
    let mut refusals = 0;
    loop {
        let given_up = match publish_once(&jetstream, &outgoing).await {
            Ok(()) => return,
            Err(Failure::TooLarge(error)) => Some(error),
            Err(Failure::Refused(error)) => {
                refusals += 1;
                if refusals >= REFUSED_ATTEMPTS {
                    Some(error)
                } else {
                    tracing::debug!(subject = %outgoing.subject, %error, retry_in = ?backoff, "the results stream refused a result; retrying");
                    None
                }
            }
            Err(Failure::Unanswered(error)) => {
                tracing::debug!(subject = %outgoing.subject, %error, retry_in = ?backoff, "result not acknowledged by the stream; retrying");
                None
            }
        };
        if let Some(error) = given_up {
            tracing::warn!(subject = %outgoing.subject, %error, "the results stream rejected a result; dropped");
            metrics.count_dropped("results_rejected");
            return;
        }
        metrics.count_publish_retry();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Copies one NATS subscription into a bounded channel until either side goes away.
async fn forward(mut subscriber: async_nats::Subscriber, sender: mpsc::Sender<Message>) {
    loop {
        let message = tokio::select! {
            _ = sender.closed() => break,
            message = subscriber.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let message = Message {
            subject: std::sync::Arc::from(message.subject.as_str()),
            payload: Payload::Bytes(message.payload),
            reply: message.reply.map(|reply| reply.to_string()),
        };
        if sender.send(message).await.is_err() {
            break;
        }
    }
    let _ = subscriber.unsubscribe().await;
}

impl Bus for NatsBus {
    fn publish(&self, subject: &str, payload: Payload) -> BoxFuture<'_, Result<(), BusError>> {
        // Bytes leave the process here: a typed payload becomes its JSON.
        let payload = match payload.to_bytes() {
            Ok(bytes) => bytes,
            Err(error) => {
                let error = BusError::Nats(format!("a message could not be encoded: {error}"));
                return Box::pin(async move { Err(error) });
            }
        };
        let result = if !valid_subject(subject, false) {
            Err(BusError::Subject(subject.to_string()))
        } else if let Some(durable) = self
            .durable
            .as_ref()
            .filter(|durable| subject_matches(&durable.pattern, subject))
        {
            // Results wait for the stream, within their buffer, even while disconnected.
            self.enqueue(&durable.sender, subject, payload)
                .inspect_err(|_| {
                    self.metrics.count_dropped("results_buffer_full");
                })
        } else if self.client.connection_state() != State::Connected {
            Err(BusError::Disconnected)
        } else {
            self.enqueue(&self.outbox, subject, payload)
        };
        Box::pin(async move { result })
    }

    fn subscribe(
        &self,
        pattern: &str,
        queue_group: Option<&str>,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        let pattern = pattern.to_string();
        let queue_group = queue_group.map(str::to_string);
        Box::pin(async move {
            if !valid_subject(&pattern, true) {
                return Err(BusError::Subject(pattern));
            }
            let subscriber = match queue_group {
                Some(group) => self.client.queue_subscribe(pattern, group).await,
                None => self.client.subscribe(pattern).await,
            }
            .map_err(|error| BusError::Nats(error.to_string()))?;
            let (sender, receiver) = mpsc::channel(SUBSCRIPTION_CAPACITY);
            tokio::spawn(forward(subscriber, sender));
            Ok(Subscription::new(receiver))
        })
    }

    fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, BusError>> {
        let subject = subject.to_string();
        Box::pin(async move {
            if !valid_subject(&subject, false) {
                return Err(BusError::Subject(subject));
            }
            let request = async_nats::Request::new()
                .payload(payload)
                .timeout(Some(timeout));
            match self.client.send_request(subject.clone(), request).await {
                Ok(reply) => Ok(reply.payload),
                Err(error) => Err(match error.kind() {
                    async_nats::RequestErrorKind::NoResponders => BusError::NoResponders(subject),
                    async_nats::RequestErrorKind::TimedOut => BusError::TimedOut(subject),
                    _ => BusError::Nats(error.to_string()),
                }),
            }
        })
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn settle(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.settle_now())
    }

    fn flush(&self, within: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let deadline = Instant::now() + within;
            while self.unsent.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let left = self.unsent.load(Ordering::Acquire);
            if left > 0 {
                tracing::warn!(
                    messages = left,
                    "messages still unsent when the flush time ran out"
                );
            }
            let _ = tokio::time::timeout_at(deadline, self.client.flush()).await;
        })
    }
}

/// The checker lease as a key in a JetStream key-value bucket.
pub struct NatsLease {
    store: kv::Store,
    holder: String,
}

impl std::fmt::Debug for NatsLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLease")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl NatsLease {
    /// A renewal found another revision than the one this holder last wrote. When a renewal
    /// of its own reached the stream but its answer was lost (timed out while a NATS server
    /// died), the lease still names this holder: it is still ours, at that later revision.
    /// Anyone else's name, or none, means it is lost.
    async fn renew_after_lost_answer(&self, holder: &str) -> Result<Option<u64>, BusError> {
        // From the stream's leader (not a direct get, which a lagging replica may answer).
        let subject = format!("{}{LEASE_KEY}", self.store.prefix);
        let last = match self
            .store
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(last) => last,
            Err(error)
                if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                return Ok(None)
            }
            Err(error) => return Err(BusError::JetStream(format!("checker lease: {error}"))),
        };
        // A delete or purge marker carries a `KV-Operation` header; a put carries none.
        let deleted = last.headers.get("KV-Operation").is_some();
        if deleted || last.payload.as_ref() != holder.as_bytes() {
            return Ok(None);
        }
        match self
            .store
            .update(LEASE_KEY, Bytes::from(holder.to_string()), last.sequence)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(error) => Err(BusError::JetStream(format!("checker lease: {error}"))),
        }
    }
}

impl LeaseStore for NatsLease {
    fn acquire<'a>(&'a self, holder: &'a str) -> BoxFuture<'a, Result<Option<u64>, BusError>> {
        Box::pin(async move {
            match self
                .store
                .create(LEASE_KEY, Bytes::from(holder.to_string()))
                .await
            {
                Ok(revision) => Ok(Some(revision)),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(error) => Err(BusError::JetStream(format!("checker lease: {error}"))),
            }
        })
    }

    fn renew<'a>(
        &'a self,
        holder: &'a str,
        revision: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, BusError>> {
        Box::pin(async move {
            match self
                .store
                .update(LEASE_KEY, Bytes::from(holder.to_string()), revision)
                .await
            {
                Ok(revision) => Ok(Some(revision)),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.renew_after_lost_answer(holder).await
                }
                Err(error) => Err(BusError::JetStream(format!("checker lease: {error}"))),
            }
        })
    }

    fn release(&self, revision: u64) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.store
                .delete_expect_revision(LEASE_KEY, Some(revision))
                .await
                .map_err(|error| BusError::JetStream(format!("checker lease: {error}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_bucket_names_are_checked() {
        assert!(check_url("nats://127.0.0.1:4222").is_ok());
        assert!(check_url("tls://nats.example:4443").is_ok());
        assert!(check_url("http://[::1").is_err());
        let error = check_url("nats://alice:s3cret@127.0.0.1:4222").unwrap_err();
        assert!(error.contains("holds credentials"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        assert!(valid_bucket_name("bastion_checker-1"));
        assert!(!valid_bucket_name("a.b"));
        assert!(!valid_bucket_name(""));
    }

    #[test]
    fn a_refusal_of_the_replicas_says_what_to_set() {
        // What nats-server 2.9 and 2.1x answer a single server asked for 3 replicas, and a
        // cluster too small for them.
        for reason in [
            "replicas > 1 not supported in non-clustered mode (error code 10074)",
            "insufficient resources (error code 10023)",
            "no suitable peers for placement (error code 10005)",
        ] {
            let message = stream_error("stream BASTION_RESULTS", 3, reason.to_string()).to_string();
            assert!(
                message.starts_with("stream BASTION_RESULTS: the NATS server refused 3 replicas"),
                "{message}"
            );
            assert!(message.contains(reason), "{message}");
            assert!(
                message.contains("set bus.nats.replicas to the number of JetStream servers in the cluster (3 or 5), or to 1 for a single server"),
                "{message}"
            );
        }
        let other = stream_error("stream BASTION_RESULTS", 1, "timed out".to_string());
        assert!(matches!(other, BusError::JetStream(_)), "{other}");
    }

    #[test]
    fn a_jetstream_that_does_not_answer_yet_is_waited_for_and_a_refusal_is_not() {
        assert!(unanswered(
            "timed out: request timed out: deadline has elapsed"
        ));
        assert!(unanswered(
            "JetStream system temporarily unavailable (error code 10008)"
        ));
        assert!(!unanswered("no responders"));
        assert!(!unanswered(
            "replicas > 1 not supported in non-clustered mode (error code 10074)"
        ));
    }

    /// The texts a stream another process is still creating answers with, as async-nats
    /// 0.51 words them: a create or update, a get of a KV bucket, and a create that lost the
    /// race (CI saw a second info request answer "not found" when an HA pair and its runners
    /// started on a cluster of nats-server 2.15 at once).
    #[test]
    fn a_stream_another_process_is_creating_is_waited_for_and_a_refusal_is_not() {
        assert!(being_created("stream not found"));
        assert!(!being_created(
            "jetstream error: account not found (code 503, error code 10035)"
        ));
        assert!(being_created(
            "failed to get the bucket: jetstream error: stream not found (code 404, error code 10059)"
        ));
        assert!(being_created(
            "jetstream error: stream name already in use with a different configuration (code 400, error code 10058)"
        ));
        assert!(!being_created("jetstream unavailable"));
        assert!(!being_created(
            "jetstream error: jetstream not enabled for account (code 503, error code 10039)"
        ));
        assert!(!being_created(
            "jetstream error: subjects overlap with an existing stream (code 400, error code 10065)"
        ));
        assert!(!being_created(
            "replicas > 1 not supported in non-clustered mode (error code 10074)"
        ));
    }

    #[test]
    fn a_server_or_an_account_without_jetstream_is_told_where_to_enable_it() {
        let hint = "JetStream must be enabled on the server (nats-server -js)";
        let off = BusError::JetStream("stream BASTION_RESULTS: jetstream unavailable".into());
        assert!(off.to_string().ends_with(hint), "{off}");
        let account = BusError::JetStream(
            "stream BASTION_RESULTS: jetstream error: jetstream not enabled for account (code 503, error code 10039)".into(),
        );
        assert!(
            account.to_string().ends_with(
                "`jetstream: enabled` in the account's block of the server's configuration)"
            ),
            "{account}"
        );
        let lease = BusError::JetStream("checker lease: timed out".into());
        assert_eq!(lease.to_string(), "JetStream: checker lease: timed out");
    }

    #[test]
    fn server_descriptions_leave_credentials_out() {
        let servers = vec!["nats://alice:s3cret@127.0.0.1:4222"
            .parse::<ServerAddr>()
            .unwrap()];
        let described = describe_servers(&servers);
        assert_eq!(described, "127.0.0.1:4222");
    }
}
