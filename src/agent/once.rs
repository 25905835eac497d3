//! The one-shot commands: `bastion once` (each check run now, in this process), `once
//! --remote` (run on the runners of a NATS bus through the test-check request/reply) and
//! `healthcheck` (one GET through the same HTTP probe). They schedule nothing and record
//! nothing: they must never start an agent, only run checks and hand back their results.

use super::AgentError;
use crate::bus::nats::NatsBus;
use crate::bus::{Bus, BusError};
use crate::compiled::CompiledCheck;
use crate::config::{BusKind, Config};
use crate::messages::{self, CheckResult, TestFailure, TestRequest, MESSAGE_VERSION};
use crate::metrics::Metrics;
use crate::runner::build_dispatcher;
use crate::runner::dispatcher::RunOrder;
use crate::subjects::Subjects;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long `bastion once --remote` waits for NATS when neither the flag nor the config says.
const REMOTE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond the dispatch deadline and the check's timeout, how long a test reply may take.
const REPLY_GRACE: Duration = Duration::from_secs(5);

/// Asks the agent at `url` whether it is alive: a single GET that must answer 200, through
/// the same probe the checks use.
pub async fn healthcheck(url: &str, insecure: bool, timeout: Duration) -> Result<(), AgentError> {
    let text = format!(
        "[[checks]]\nname = \"healthcheck\"\ntype = \"http\"\nurl = {url}\ninterval = \"1h\"\ntimeout = \"{timeout}\"\ntls = {{ insecure_skip_verify = {insecure} }}\n[[checks.assertions]]\nkey = \"code\"\nrelationship = \"equal\"\noperand = \"200\"\n",
        url = toml::Value::String(url.to_string()),
        timeout = humantime::format_duration(timeout),
    );
    let config = crate::validate::parse(
        &text,
        crate::config::Format::Toml,
        std::path::Path::new("--url"),
    )
    .map_err(|error| AgentError::InvalidCheck("healthcheck".to_string(), error.to_string()))?;
    let results = run_once(&config, None).await?;
    let response = results
        .first()
        .and_then(|result| result.responses.first())
        .ok_or_else(|| AgentError::RunFailed("no response".to_string()))?;
    if response.passing {
        return Ok(());
    }
    let reason = match (&response.error, &response.http) {
        (Some(error), _) => error.to_string(),
        (None, Some(http)) => format!("{url} answered {}", http.status),
        (None, None) => "no answer".to_string(),
    };
    Err(AgentError::RunFailed(reason))
}

/// Runs each selected check once, now, in this process, and returns the results in config
/// order. `only` selects one check by name.
pub async fn run_once(config: &Config, only: Option<&str>) -> Result<Vec<CheckResult>, AgentError> {
    let checks: Vec<_> = config
        .checks
        .iter()
        .filter(|check| only.is_none_or(|name| check.name == name))
        .collect();
    if let Some(name) = only {
        if checks.is_empty() {
            return Err(AgentError::NoSuchCheck(name.to_string()));
        }
    }
    let dispatcher = Arc::new(build_dispatcher(config, &Metrics::new())?);
    let mut runs = tokio::task::JoinSet::new();
    for (position, check) in checks.into_iter().enumerate() {
        // Config::validate compiled every check already; a failure here is reported, not hidden.
        let compiled = CompiledCheck::compile(check)
            .map_err(|error| AgentError::InvalidCheck(check.name.clone(), error.to_string()))?;
        // No checker here: a discovery file is read once, now, as the checker would.
        let discovered = match &check.instances_from {
            Some(crate::config::InstancesFrom::File(path)) => {
                Some(Arc::new(crate::discovery::file::read(path).map_err(
                    |error| AgentError::InvalidCheck(check.name.clone(), error.to_string()),
                )?))
            }
            _ => None,
        };
        let order = RunOrder {
            check: Arc::new(compiled),
            run_id: u64::try_from(position).unwrap_or(u64::MAX),
            scheduled_at: SystemTime::now(),
            discovered,
        };
        let dispatcher = Arc::clone(&dispatcher);
        runs.spawn(async move { (position, dispatcher.run(order).await) });
    }
    let mut results: Vec<(usize, CheckResult)> = Vec::new();
    while let Some(joined) = runs.join_next().await {
        results.push(joined.map_err(|error| AgentError::RunFailed(error.to_string()))?);
    }
    results.sort_by_key(|(position, _)| *position);
    Ok(results.into_iter().map(|(_, result)| result).collect())
}

/// Runs each selected check once, now, on the runners of the NATS bus (the test-check
/// request/reply), and returns the results in config order.
pub async fn run_remote(
    config: &Config,
    only: Option<&str>,
    connect_timeout: Option<Duration>,
) -> Result<Vec<CheckResult>, AgentError> {
    let checks: Vec<_> = config
        .checks
        .iter()
        .filter(|check| only.is_none_or(|name| check.name == name))
        .cloned()
        .collect();
    if let Some(name) = only {
        if checks.is_empty() {
            return Err(AgentError::NoSuchCheck(name.to_string()));
        }
    }
    let Some(nats_config) = config
        .bus
        .nats
        .as_ref()
        .filter(|_| config.bus.kind == BusKind::Nats)
    else {
        return Err(AgentError::RemoteNeedsNats);
    };
    let metrics = Arc::new(Metrics::new());
    let timeout = connect_timeout
        .or(nats_config.connect_timeout)
        .unwrap_or(REMOTE_CONNECT_TIMEOUT);
    let bus: Arc<dyn Bus> =
        Arc::new(NatsBus::connect(nats_config, &config.agent.id, &metrics, Some(timeout)).await?);
    let subjects = Subjects::new(config.subject_prefix());
    let mut requests = tokio::task::JoinSet::new();
    for (position, check) in checks.into_iter().enumerate() {
        let bus = Arc::clone(&bus);
        let subject = subjects.test(check.check_type());
        let wait = config
            .runner
            .dispatch_deadline
            .saturating_add(check.timeout())
            .saturating_add(REPLY_GRACE);
        requests
            .spawn(async move { (position, test_remotely(&*bus, &subject, check, wait).await) });
    }
    let mut results = Vec::new();
    while let Some(joined) = requests.join_next().await {
        let (position, result) =
            joined.map_err(|error| AgentError::RunFailed(error.to_string()))?;
        results.push((position, result?));
    }
    results.sort_by_key(|(position, _)| *position);
    Ok(results.into_iter().map(|(_, result)| result).collect())
}

async fn test_remotely(
    bus: &dyn Bus,
    subject: &str,
    check: crate::config::CheckConfig,
    wait: Duration,
) -> Result<CheckResult, AgentError> {
    let name = check.name.clone();
    let check_type = check.check_type();
    let request = TestRequest {
        version: MESSAGE_VERSION,
        check,
    };
    let payload = messages::encode(&request)
        .map_err(|error| AgentError::RunFailed(format!("check `{name}`: {error}")))?;
    let reply = bus
        .request(subject, payload, wait)
        .await
        .map_err(|error| match error {
            BusError::NoResponders(_) => AgentError::NoRunner(check_type.as_str().to_string()),
            other => AgentError::RunFailed(format!("check `{name}`: {other}")),
        })?;
    if let Ok(result) = messages::decode::<CheckResult>(&reply) {
        return Ok(result);
    }
    match messages::decode::<TestFailure>(&reply) {
        Ok(failure) => Err(AgentError::InvalidCheck(name, failure.error)),
        Err(error) => Err(AgentError::RunFailed(format!(
            "check `{name}`: the runner's reply is not a result: {error}"
        ))),
    }
}
