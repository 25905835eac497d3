//! The runner consumes check requests from the bus, runs them through its dispatcher, and
//! publishes every result. It subscribes only to the types it has workers for, in the runners'
//! queue group, so several runners share the work. It also answers test requests
//! (`{prefix}.test.{type}`: run this definition now, reply with the result). A bad message is
//! logged, counted and dropped; it never stops the runner. A request that arrives after its
//! dispatch deadline (held up in a reconnecting client, say) is counted and not run: it would
//! report a moment that has passed. The deadline is one per run, counted from when the run
//! was due (`run_window.rs`), so the checker's lost window always covers what the runner may
//! still do; a result finished past that window is counted, not published.

mod check_durations;
mod check_series;
pub mod dispatcher;
mod metrics;
pub mod pool;

pub use check_durations::CheckDurations;
pub use metrics::RunnerMetrics;

use crate::bus::{Bus, BusError, Message, Subscription};

use crate::bus::BusMetrics;
use crate::checks::ProbeContext;
use crate::compiled::CompiledCheck;
use crate::config::CheckConfig;
use crate::config::Config;
use crate::messages::{self, DecodeError, Payload, TestFailure, TestRequest, MESSAGE_VERSION};
use crate::metrics::Metrics;
use crate::resolve::{Resolver, ResolverSetupError};
use crate::run_window;
use crate::subjects::{location_queue_group, Subjects, RUNNER_QUEUE_GROUP};
use dispatcher::{Dispatcher, RunOrder};
use pool::WorkerPool;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Check runs one runner holds at once. Past this it stops reading the bus, so requests queue
/// in the bounded subscription and further publishes are refused and counted.
pub const MAX_RUNS_IN_FLIGHT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Resolver(#[from] ResolverSetupError),
    #[error("cannot subscribe to check requests: {0}")]
    Subscribe(#[from] BusError),
}

/// Builds the dispatcher described by `[runner]`.
pub fn build_dispatcher(config: &Config, metrics: &Metrics) -> Result<Dispatcher, RunnerError> {
    let context = Arc::new(ProbeContext {
        resolver: Arc::new(Resolver::from_servers(&config.runner.dns_servers)?),
        tls: Arc::default(),
        max_body_bytes: config.runner.max_body_bytes,
        max_arrival_correction: config.runner.max_arrival_correction,
    });
    let runner: RunnerMetrics = metrics.component();
    let pools = crate::checks::CheckType::ALL
        .into_iter()
        .map(|check_type| {
            WorkerPool::new(
                check_type,
                config.runner.workers.for_type(check_type),
                &runner,
            )
        })
        .collect();
    Ok(Dispatcher::new(
        config.agent.id.clone(),
        config.runner.dispatch_deadline,
        pools,
        context,
        metrics,
    ))
}

/// The series a runner counts in: its own, and the bus's for what it could not decode or
/// publish.
#[derive(Debug)]
struct RunnerSeries {
    runner: RunnerMetrics,
    bus: BusMetrics,
}

#[derive(Debug)]
pub struct Runner {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<RunnerSeries>,
    subscriptions: Vec<(Intake, Subscription)>,
    runs: TaskTracker,
    /// Where this runner probes from (`runner.location`).
    location: Arc<str>,
}

/// What a subscription carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intake {
    /// Scheduled runs; their results go to `{prefix}.results.{check}`.
    Scheduled(crate::checks::CheckType),
    /// Scheduled runs of checks with `locations`, for this runner's location only; their
    /// results say so.
    Located(crate::checks::CheckType),
    /// Test requests; each result is the reply.
    Test,
}

impl Runner {
    /// Subscribes now, so that nothing published after `build` returns is missed.
    pub async fn build(
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        dispatcher: Dispatcher,
        metrics: &Metrics,
        location: &str,
    ) -> Result<Runner, RunnerError> {
        let runner: RunnerMetrics = metrics.component();
        runner.publishes_results();
        let mut subscriptions = Vec::new();
        for check_type in dispatcher.check_types() {
            subscriptions.push((
                Intake::Scheduled(check_type),
                bus.subscribe(&subjects.checks(check_type), Some(RUNNER_QUEUE_GROUP))
                    .await?,
            ));
            subscriptions.push((
                Intake::Located(check_type),
                bus.subscribe(
                    &subjects.checks_at(location, check_type),
                    Some(&location_queue_group(location)),
                )
                .await?,
            ));
            subscriptions.push((
                Intake::Test,
                bus.subscribe(&subjects.test(check_type), Some(RUNNER_QUEUE_GROUP))
                    .await?,
            ));
        }
        Ok(Runner {
            bus,
            subjects,
            dispatcher: Arc::new(dispatcher),
            metrics: Arc::new(RunnerSeries {
                runner,
                bus: metrics.component(),
            }),
            subscriptions,
            runs: TaskTracker::new(),
            location: Arc::from(location),
        })
    }

    /// The runs in flight, to wait for on shutdown.
    pub fn runs(&self) -> TaskTracker {
        self.runs.clone()
    }

    /// The dispatcher, to report its workers' usage.
    pub fn dispatcher(&self) -> Arc<Dispatcher> {
        Arc::clone(&self.dispatcher)
    }

    /// Consumes requests until `stop` is cancelled. Runs already started go on; wait for them
    /// with `runs()`.
    pub async fn run(self, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_RUNS_IN_FLIGHT));
        let mut consumers = tokio::task::JoinSet::new();
        for (intake, subscription) in self.subscriptions {
            let consumer = Consumer {
                intake,
                compiled: CompiledChecks::default(),
                bus: Arc::clone(&self.bus),
                subjects: self.subjects.clone(),
                dispatcher: Arc::clone(&self.dispatcher),
                metrics: Arc::clone(&self.metrics),
                runs: self.runs.clone(),
                slots: Arc::clone(&slots),
                location: Arc::clone(&self.location),
            };
            consumers.spawn(consumer.consume(subscription, stop.clone()));
        }
        while consumers.join_next().await.is_some() {}
        self.runs.close();
    }
}

/// Compiled checks a consumer keeps at most. Past it, the least recently used one makes room
/// once it has not run for three of its intervals (its check was removed, renamed or moved to
/// other runners); while every kept check still runs, a new one is compiled for its run and not
/// kept, so a runner that sees more checks than this recompiles only the excess, never all.
pub const MAX_COMPILED_CHECKS: usize = 64 * 1024;

/// The compiled checks worth keeping (`CompiledCheck::worth_keeping`: a regex, a JSON path, an
/// OAuth2 token, TLS settings of its own, a proxy, credentials, a large body, many listed
/// instances, or a type other than http and tcp), compiled once per definition and reused while
/// it stays the same; every other check is compiled for each run (about a microsecond) and not
/// kept, since keeping it would cost about 860 bytes for every check, all the time. On the embedded bus a request
/// shares the checker's definition, so the match is a pointer comparison; over NATS it is a
/// comparison of the decoded definition. Entries are kept in order of last use (a linked hash
/// map): a lookup, an insertion and an eviction are O(1).
#[derive(Debug)]
struct CompiledChecks {
    by_name: hashlink::LruCache<String, Compiled>,
    capacity: usize,
}

#[derive(Debug)]
struct Compiled {
    config: Arc<CheckConfig>,
    check: Arc<CompiledCheck>,
    used: Instant,
}

impl Compiled {
    /// Has its check gone quiet: no run for three of its intervals?
    fn quiet(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.used) > self.config.interval.saturating_mul(3)
    }
}

impl Default for CompiledChecks {
    fn default() -> Self {
        CompiledChecks::with_capacity(MAX_COMPILED_CHECKS)
    }
}

impl CompiledChecks {
    fn with_capacity(capacity: usize) -> CompiledChecks {
        let capacity = capacity.max(1);
        CompiledChecks {
            // Never more than `capacity`: `keep` makes room itself before inserting.
            by_name: hashlink::LruCache::new_unbounded(),
            capacity,
        }
    }

    fn get(&mut self, config: &Arc<CheckConfig>) -> Result<Arc<CompiledCheck>, DecodeError> {
        let now = Instant::now();
        if let Some(known) = self.by_name.get_mut(&config.name) {
            if Arc::ptr_eq(&known.config, config) || *known.config == **config {
                known.used = now;
                return Ok(Arc::clone(&known.check));
            }
        }
        let compiled =
            Arc::new(CompiledCheck::compile(config).map_err(|error| {
                DecodeError::Invalid(format!("check `{}`: {error}", config.name))
            })?);
        if compiled.worth_keeping() {
            self.keep(config, &compiled, now);
        } else if let Some(replaced) = self.by_name.remove(&config.name) {
            // Its definition changed to one not worth keeping: the old one goes.
            drop(replaced);
        }
        Ok(compiled)
    }

    /// Keeps `compiled` if there is room, or the least recently used check has gone quiet.
    fn keep(&mut self, config: &Arc<CheckConfig>, compiled: &Arc<CompiledCheck>, now: Instant) {
        let kept = Compiled {
            config: Arc::clone(config),
            check: Arc::clone(compiled),
            used: now,
        };
        if let Some(known) = self.by_name.get_mut(&config.name) {
            // A changed definition replaces the old one in place.
            *known = kept;
            return;
        }
        if self.by_name.len() >= self.capacity {
            let quiet = self
                .by_name
                .iter()
                .next()
                .is_some_and(|(_, oldest)| oldest.quiet(now));
            if !quiet {
                return;
            }
            self.by_name.remove_lru();
        }
        self.by_name.insert(config.name.clone(), kept);
    }
}

/// Reads one subscription; everything it uses it owns.
struct Consumer {
    intake: Intake,
    compiled: CompiledChecks,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<RunnerSeries>,
    runs: TaskTracker,
    slots: Arc<Semaphore>,
    location: Arc<str>,
}

impl Consumer {
    async fn consume(mut self, mut subscription: Subscription, stop: CancellationToken) {
        loop {
            let slot = tokio::select! {
                _ = stop.cancelled() => return,
                slot = Arc::clone(&self.slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                message = subscription.next() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let Some((order, requested_deadline)) = self.decode(&message).await else {
                continue;
            };
            let Some(start_probes_by) = self.start_probes_by(&order, requested_deadline) else {
                continue;
            };
            let dispatcher = Arc::clone(&self.dispatcher);
            let bus = Arc::clone(&self.bus);
            let subject = match (self.intake, message.reply) {
                (Intake::Test, Some(reply)) => reply,
                _ => self.subjects.results(&order.check.name),
            };
            let metrics = Arc::clone(&self.metrics);
            let scheduled = matches!(self.intake, Intake::Scheduled(_) | Intake::Located(_));
            let location =
                matches!(self.intake, Intake::Located(_)).then(|| self.location.to_string());
            let span =
                tracing::debug_span!("check_run", check = %order.check.name, run_id = order.run_id);
            self.runs.spawn(
                async move {
                    let _slot = slot;
                    let timeout = order.check.timeout;
                    let check_type = order.check.check_type();
                    let mut result = dispatcher.run_by(order, start_probes_by).await;
                    result.location = location;
                    if scheduled && Instant::now() > run_window::publish_by(start_probes_by, timeout) {
                        tracing::warn!(check = %result.check, run_id = result.run_id, "a run finished after its window (the runner was held up); its result is not published");
                        metrics.runner.count_result_expired(check_type);
                        return;
                    }
                    tracing::debug!(
                        passing = result.passing,
                        responses = result.responses.len(),
                        "run finished"
                    );
                    publish_result(&*bus, &subject, result, &metrics).await;
                }
                .instrument(span),
            );
        }
    }
}

impl Consumer {
    /// The run a message asks for, with the dispatch deadline it requests; None for a bad
    /// message, which is logged, counted and (for a test request) answered with the failure.
    async fn decode(
        &mut self,
        message: &Message,
    ) -> Option<(RunOrder, Option<std::time::Duration>)> {
        let decoded = match self.intake {
            Intake::Scheduled(_) | Intake::Located(_) => self.decode_request(&message.payload),
            Intake::Test => decode_test(&message.payload, message.reply.is_some()),
        };
        match decoded {
            Ok(order) => Some(order),
            Err(error) => {
                tracing::warn!(subject = %message.subject, reason = error.reason(), %error, "dropping a bad check request");
                self.metrics.bus.count_decode_error(error.reason());
                if let (Intake::Test, Some(reply)) = (self.intake, &message.reply) {
                    self.reply_failure(reply, &error).await;
                }
                None
            }
        }
    }

    /// When the run's probes must have started: one absolute deadline per run, the rule the
    /// checker's lost window is built on. None for a scheduled run that arrived too late to
    /// start (logged and counted, not run).
    fn start_probes_by(
        &self,
        order: &RunOrder,
        requested_deadline: Option<std::time::Duration>,
    ) -> Option<Instant> {
        match self.intake {
            Intake::Scheduled(check_type) | Intake::Located(check_type) => {
                let deadline =
                    run_window::effective_deadline(requested_deadline, self.dispatcher.deadline());
                let by = run_window::start_probes_by(
                    order.scheduled_at,
                    deadline,
                    SystemTime::now(),
                    Instant::now(),
                );
                if by.is_none() {
                    tracing::warn!(check = %order.check.name, run_id = order.run_id, "a check request arrived after its dispatch deadline; not run");
                    self.metrics.runner.count_request_expired(check_type);
                }
                by
            }
            Intake::Test => Some(Instant::now() + self.dispatcher.deadline()),
        }
    }

    async fn reply_failure(&self, reply: &str, error: &DecodeError) {
        let failure = TestFailure {
            version: MESSAGE_VERSION,
            error: error.to_string(),
        };
        if let Ok(payload) = messages::encode(&failure) {
            let _ = self.bus.publish(reply, payload.into()).await;
        }
    }
}

fn decode_test(
    payload: &Payload,
    has_reply: bool,
) -> Result<(RunOrder, Option<std::time::Duration>), DecodeError> {
    if !has_reply {
        return Err(DecodeError::Invalid(
            "a test request needs a reply subject; send it as a request".to_string(),
        ));
    }
    let request: TestRequest = payload.decode()?;
    let check = CompiledCheck::compile(&request.check).map_err(|error| {
        DecodeError::Invalid(format!("check `{}`: {error}", request.check.name))
    })?;
    let order = RunOrder {
        check: Arc::new(check),
        run_id: 0,
        scheduled_at: SystemTime::now(),
        discovered: None,
    };
    Ok((order, None))
}

impl Consumer {
    /// The run, and the dispatch deadline its request carries.
    fn decode_request(
        &mut self,
        payload: &Payload,
    ) -> Result<(RunOrder, Option<std::time::Duration>), DecodeError> {
        let request = payload.request()?;
        // Subjects keep runs where they belong; a request that names another location (a
        // publisher with its own idea of subjects) is refused rather than run in the wrong
        // place, and one for no location arriving on a location's subject likewise.
        let expected = matches!(self.intake, Intake::Located(_)).then_some(&*self.location);
        if request.location.as_deref() != expected {
            return Err(DecodeError::Invalid(format!(
                "check `{}`: a run for location {} reached a runner taking runs for {}; not run",
                request.check.name,
                request.location.as_deref().unwrap_or("(any)"),
                expected.unwrap_or("(any)")
            )));
        }
        let order = RunOrder {
            check: self.compiled.get(&request.check)?,
            run_id: request.run_id,
            scheduled_at: request.scheduled_at,
            discovered: request.discovered.clone(),
        };
        Ok((order, request.dispatch_deadline))
    }
}

async fn publish_result(
    bus: &dyn Bus,
    subject: &str,
    result: messages::CheckResult,
    metrics: &RunnerSeries,
) {
    let check = result.check.clone();
    let outcome = if bus.in_process() {
        // The result never leaves the process: it travels as itself, with every field
        // bounded as on the network, and no size limit to reduce it for.
        let result = crate::message_bounds::bound(result);
        bus.publish(subject, Payload::Result(Arc::new(result)))
            .await
            .map_err(|e| e.to_string())
    } else {
        match crate::message_bounds::encode(result) {
            Ok(encoded) => {
                if let Some(form) = encoded.degraded {
                    tracing::warn!(%check, form = form.as_str(), "a result too large for the bus was published reduced");
                    metrics.runner.count_degraded(form);
                }
                bus.publish(subject, encoded.payload.into())
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        }
    };
    if let Err(error) = outcome {
        tracing::warn!(%check, %error, "could not publish a result");
        metrics.bus.count_publish_error("results");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parsed(text: &str) -> Arc<CheckConfig> {
        let config = Config::parse(
            text,
            crate::config::Format::Toml,
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        Arc::new(config.checks[0].clone())
    }

    /// A check worth keeping compiled: its assertion has a regex.
    fn check(name: &str, url: &str) -> Arc<CheckConfig> {
        parsed(&format!(
            "[[checks]]\nname = \"{name}\"\ntype = \"http\"\nurl = \"{url}\"\ninterval = \"10s\"\n\
             [[checks.assertions]]\nkey = \"body\"\nrelationship = \"regExp\"\noperand = \"^ok\"\n"
        ))
    }

    /// A check not worth keeping: compiled again for each run.
    fn plain(name: &str, url: &str) -> Arc<CheckConfig> {
        parsed(&format!(
            "[[checks]]\nname = \"{name}\"\ntype = \"http\"\nurl = \"{url}\"\ninterval = \"10s\"\n\
             [[checks.assertions]]\nkey = \"code\"\nrelationship = \"equal\"\noperand = \"200\"\n"
        ))
    }

    #[test]
    fn a_plain_check_is_compiled_for_each_run_and_not_kept() {
        let mut compiled = CompiledChecks::default();
        let shared = plain("web", "http://127.0.0.1:1/");
        let first = compiled.get(&shared).unwrap();
        let second = compiled.get(&shared).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.probe.host_and_port(), ("127.0.0.1", 1));
        assert!(compiled.by_name.is_empty());
        // A kept check whose definition changes to a plain one leaves the cache.
        compiled.get(&check("web", "http://127.0.0.1:1/")).unwrap();
        assert_eq!(kept(&compiled), ["web"]);
        compiled.get(&plain("web", "http://127.0.0.1:2/")).unwrap();
        assert!(compiled.by_name.is_empty());
    }

    #[test]
    fn what_is_worth_keeping_compiled() {
        let worth = |body: &str| {
            let text = format!("[[checks]]\nname = \"c\"\ninterval = \"10s\"\n{body}");
            CompiledCheck::compile(&parsed(&text))
                .unwrap()
                .worth_keeping()
        };
        let http = "type = \"http\"\nurl = \"https://127.0.0.1:1/\"\n";
        assert!(!worth(http));
        assert!(!worth(&format!(
            "{http}headers = {{ accept = \"text/plain\" }}\n"
        )));
        assert!(worth(&format!(
            "{http}proxy_url = \"http://127.0.0.1:3128\"\n"
        )));
        assert!(worth(&format!(
            "{http}[checks.tls]\nmin_version = \"TLS13\"\n"
        )));
        // Files read when the definition is: an OAuth2 secret, a bearer token, a CA file.
        let secret =
            std::env::temp_dir().join(format!("bastion-worth-keeping-{}", std::process::id()));
        std::fs::write(&secret, "s3cret").unwrap();
        let with_files = [
            "[checks.oauth2]\nclient_id = \"bastion\"\ntoken_url = \"http://127.0.0.1:1/token\"\n\
             client_secret_file = \"FILE\"\n",
            "bearer_token_file = \"FILE\"\n",
            "[checks.tls]\nca_file = \"FILE\"\n",
        ]
        .map(|keys| {
            worth(&format!(
                "{http}{}",
                keys.replace("FILE", &secret.to_string_lossy())
            ))
        });
        std::fs::remove_file(&secret).unwrap();
        assert_eq!(with_files, [true; 3]);
        // The plain scheme, a small body and a few instances compile again; a large body and
        // a long list of instances are kept.
        assert!(!worth(
            "type = \"http\"\nurl = \"http://127.0.0.1:1/\"\nmethod = \"POST\"\nbody = \"{}\"\n"
        ));
        let body = |bytes: usize| {
            format!(
                "{http}method = \"POST\"\nbody = \"{}\"\n",
                "x".repeat(bytes)
            )
        };
        assert!(!worth(&body(1024)));
        assert!(worth(&body(1025)));
        let instances = |n: u16| {
            let list: Vec<String> = (0..n)
                .map(|i| format!("\"127.0.0.1:{}\"", 1000 + i))
                .collect();
            format!("{http}instances = [{}]\n", list.join(", "))
        };
        assert!(!worth(&instances(16)));
        assert!(worth(&instances(17)));
        let headers = |n: usize, bytes: usize| {
            let list: Vec<String> = (0..n)
                .map(|i| format!("x-h{i:02} = \"{}\"", "v".repeat(bytes)))
                .collect();
            format!("{http}headers = {{ {} }}\n", list.join(", "))
        };
        assert!(!worth(&headers(16, 1)));
        assert!(worth(&headers(17, 1)));
        // 5 bytes of name and 59 of value, 16 times: exactly 1 KiB; then 16 bytes more.
        assert!(!worth(&headers(16, 59)));
        assert!(worth(&headers(16, 60)));
        let assertions = |n: usize| {
            let one = "[[checks.assertions]]\nkey = \"code\"\nrelationship = \"equal\"\noperand = \"200\"\n";
            format!("{http}{}", one.repeat(n))
        };
        assert!(!worth(&assertions(16)));
        assert!(worth(&assertions(17)));
        assert!(worth(&format!(
            "{http}[[checks.assertions]]\nkey = \"json\"\nvalue = \"$.status\"\nrelationship = \"equal\"\noperand = \"up\"\n"
        )));
        let tcp = "type = \"tcp\"\naddress = \"127.0.0.1:25\"\n";
        assert!(!worth(tcp));
        assert!(!worth(&format!(
            "{tcp}[[checks.steps]]\nsend = \"QUIT\\r\\n\"\n"
        )));
        assert!(worth(&format!(
            "{tcp}[[checks.steps]]\nexpect = \"^220\"\n"
        )));
        let sends = |n: usize, bytes: usize| {
            let step = format!("[[checks.steps]]\nsend = \"{}\"\n", "s".repeat(bytes));
            format!("{tcp}{}", step.repeat(n))
        };
        assert!(!worth(&sends(16, 64)));
        assert!(worth(&sends(16, 65)));
        assert!(worth(&sends(17, 1)));
        assert!(!worth(&format!("{tcp}tls = true\n")));
        assert!(worth(&format!(
            "{tcp}tls = true\nserver_name = \"mail.example\"\n"
        )));
        // Every other type keeps its compiled checks, as the trait's default says.
        assert!(worth(
            "type = \"dns\"\nquery = \"example.com\"\nserver = \"127.0.0.1\"\n"
        ));
    }

    #[test]
    fn a_definition_is_compiled_once_and_again_only_when_it_changes() {
        let mut compiled = CompiledChecks::default();
        let shared = check("web", "http://127.0.0.1:1/");
        let first = compiled.get(&shared).unwrap();
        // The same shared definition (the embedded bus), and an equal one decoded afresh (NATS).
        assert!(Arc::ptr_eq(&first, &compiled.get(&shared).unwrap()));
        let decoded = check("web", "http://127.0.0.1:1/");
        assert!(Arc::ptr_eq(&first, &compiled.get(&decoded).unwrap()));
        // A changed definition of the same check is compiled again, and then kept.
        let changed = check("web", "http://127.0.0.1:2/");
        let second = compiled.get(&changed).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.probe.host_and_port(), ("127.0.0.1", 2));
        assert!(Arc::ptr_eq(&second, &compiled.get(&changed).unwrap()));
    }

    fn kept(compiled: &CompiledChecks) -> Vec<String> {
        compiled
            .by_name
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_compiled_checks_kept_are_bounded() {
        let mut compiled = CompiledChecks::with_capacity(3);
        for n in 0..10 {
            compiled
                .get(&check(&format!("c{n}"), "http://127.0.0.1:1/"))
                .unwrap();
            assert!(compiled.by_name.len() <= 3);
            // Each check runs every 10 s; these stop after one run.
            tokio::time::advance(Duration::from_secs(31)).await;
        }
        assert_eq!(kept(&compiled), ["c7", "c8", "c9"]);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_bound_the_checks_that_still_run_stay_compiled() {
        // Four checks every 10 s through a cache of three: each round, the three kept are found
        // and only the fourth is compiled again. (Evicting the least recently used one for it
        // would recompile every run: a cycle longer than the cache defeats plain LRU.)
        let mut compiled = CompiledChecks::with_capacity(3);
        let checks: Vec<Arc<CheckConfig>> = (0..4)
            .map(|n| check(&format!("c{n}"), "http://127.0.0.1:1/"))
            .collect();
        let first: Vec<Arc<CompiledCheck>> =
            checks.iter().map(|c| compiled.get(c).unwrap()).collect();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(10)).await;
            for (n, check) in checks.iter().enumerate() {
                let again = compiled.get(check).unwrap();
                assert_eq!(Arc::ptr_eq(&first[n], &again), n < 3, "c{n}");
            }
        }
        assert_eq!(kept(&compiled), ["c0", "c1", "c2"]);
        // c1 stops running: once quiet for three of its intervals, the newcomer takes its place.
        tokio::time::advance(Duration::from_secs(31)).await;
        let others = [&checks[0], &checks[2]];
        for check in others {
            compiled.get(check).unwrap();
        }
        compiled.get(&checks[3]).unwrap();
        assert_eq!(kept(&compiled), ["c0", "c2", "c3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_marks_the_check_used() {
        let mut compiled = CompiledChecks::with_capacity(2);
        let a = check("a", "http://127.0.0.1:1/");
        let b = check("b", "http://127.0.0.1:1/");
        compiled.get(&a).unwrap();
        compiled.get(&b).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        // a runs again; b has been quiet for six of its intervals and makes room for c.
        compiled.get(&a).unwrap();
        compiled.get(&check("c", "http://127.0.0.1:1/")).unwrap();
        assert_eq!(kept(&compiled), ["a", "c"]);
    }

    #[test]
    fn a_definition_that_does_not_compile_is_an_invalid_request() {
        let mut compiled = CompiledChecks::default();
        let mut bad = (*check("web", "http://127.0.0.1:1/")).clone();
        bad.name = "Not Valid".to_string();
        let error = compiled.get(&Arc::new(bad)).unwrap_err();
        assert_eq!(error.reason(), "invalid");
        assert!(compiled.by_name.is_empty());
    }
}
