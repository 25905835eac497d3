//! Name resolution for probes: the system resolver (getaddrinfo, so /etc/hosts and nsswitch
//! apply), or the DNS servers named in `[runner] dns_servers`, queried with no cache and a
//! single attempt so that the time is real. Every address a name returns is kept, in order.
//! SRV records (`instances_from = { srv }`) are asked of the same servers, or of the
//! `nameserver`s of `/etc/resolv.conf` when none are configured (getaddrinfo knows no SRV);
//! their answers alone are kept for their TTL (`SrvCache`), bounded in names.

use crate::model::{ErrorKind, InstanceAddr, ProbeError};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Where the system's name servers are listed.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// SRV answers kept at most; past it, expired ones make room, else the answer is not kept.
pub const MAX_SRV_NAMES: usize = 10_000;
/// An SRV answer is kept at most this long, whatever its TTL.
pub const MAX_SRV_TTL: Duration = Duration::from_secs(3600);

/// The targets of an SRV answer: `(host, port)` each.
pub type SrvTargets = Arc<Vec<(String, u16)>>;

/// The targets of one SRV answer (`host`, `port`), ordered by priority, weight and name, and
/// how long it may be reused (its least TTL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvAnswer {
    pub targets: SrvTargets,
    pub ttl: Duration,
}

/// SRV answers kept until their TTL passes: the one cache of name resolution, so that a
/// record's TTL is honoured as the refresh interval of the instances it lists. Never locked
/// across an await.
#[derive(Debug, Default)]
pub struct SrvCache {
    answers: Mutex<HashMap<String, (Instant, SrvTargets)>>,
}

impl SrvCache {
    /// The targets of `name`: kept ones while their TTL lasts, else a fresh lookup (kept if
    /// its TTL is above 0). The bool says whether the answer came from the cache.
    pub async fn lookup(
        &self,
        resolver: &Resolver,
        name: &str,
    ) -> Result<(SrvTargets, bool), ProbeError> {
        if let Some(kept) = self.kept(name) {
            return Ok((kept, true));
        }
        let answer = resolver.srv(name).await?;
        self.keep(name, &answer);
        Ok((answer.targets, false))
    }

    fn kept(&self, name: &str) -> Option<SrvTargets> {
        let answers = self.answers.lock().ok()?;
        let (until, targets) = answers.get(name)?;
        (Instant::now() < *until).then(|| Arc::clone(targets))
    }

    fn keep(&self, name: &str, answer: &SrvAnswer) {
        let ttl = answer.ttl.min(MAX_SRV_TTL);
        if ttl.is_zero() {
            return;
        }
        let Ok(mut answers) = self.answers.lock() else {
            return;
        };
        let now = Instant::now();
        if answers.len() >= MAX_SRV_NAMES && !answers.contains_key(name) {
            answers.retain(|_, (until, _)| *until > now);
            if answers.len() >= MAX_SRV_NAMES {
                return;
            }
        }
        answers.insert(name.to_string(), (now + ttl, Arc::clone(&answer.targets)));
    }
}

/// The `nameserver` lines of a resolv.conf text.
fn nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next().map(str::to_string))
                .flatten()
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ResolverSetupError {
    #[error("dns server `{0}`: {1}")]
    Server(String, String),
    #[error("cannot build the DNS resolver: {0}")]
    Build(String),
}

/// Resolves host names to every address behind them.
#[derive(Debug)]
pub enum Resolver {
    System,
    Servers(Box<TokioResolver>),
}

/// Parses `ip` or `ip:port` (port 53 by default).
pub fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    InstanceAddr::parse(text)
        .map(|address| address.with_default_port(53))
        .ok_or_else(|| format!("`{}` is not an IP address or IP:port", text.trim()))
}

impl Resolver {
    /// The SRV records of `name` (taken as fully qualified), with their targets and ports.
    /// A target of `.` (the service is not offered there) is left out.
    pub async fn srv(&self, name: &str) -> Result<SrvAnswer, ProbeError> {
        let system;
        let resolver = match self {
            Resolver::Servers(resolver) => resolver,
            Resolver::System => {
                let text = std::fs::read_to_string(RESOLV_CONF).map_err(|error| {
                    ProbeError::new(
                        ErrorKind::Resolve,
                        format!("SRV {name}: cannot read {RESOLV_CONF}: {error}; set runner.dns_servers"),
                    )
                })?;
                system = Resolver::from_servers(&nameservers(&text)).map_err(|error| {
                    ProbeError::new(ErrorKind::Resolve, format!("SRV {name}: {error}"))
                })?;
                match &system {
                    Resolver::Servers(resolver) => resolver,
                    Resolver::System => {
                        return Err(ProbeError::new(
                            ErrorKind::Resolve,
                            format!(
                            "SRV {name}: {RESOLV_CONF} names no nameserver; set runner.dns_servers"
                        ),
                        ))
                    }
                }
            }
        };
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let lookup = resolver
            .srv_lookup(fqdn.as_str())
            .await
            .map_err(|error| ProbeError::new(ErrorKind::Resolve, format!("SRV {name}: {error}")))?;
        let mut ttl = u32::MAX;
        let mut records: Vec<(u16, u16, String, u16)> = Vec::new();
        for record in lookup.answers() {
            if let hickory_proto::rr::RData::SRV(srv) = &record.data {
                ttl = ttl.min(record.ttl);
                let target = srv.target.to_ascii();
                let target = target.trim_end_matches('.');
                if target.is_empty() {
                    continue;
                }
                records.push((
                    srv.priority,
                    u16::MAX - srv.weight,
                    target.to_string(),
                    srv.port,
                ));
            }
        }
        if records.is_empty() {
            return Err(ProbeError::new(
                ErrorKind::Resolve,
                format!("SRV {name}: no targets"),
            ));
        }
        records.sort();
        records.dedup();
        Ok(SrvAnswer {
            targets: Arc::new(
                records
                    .into_iter()
                    .map(|(_, _, target, port)| (target, port))
                    .collect(),
            ),
            ttl: Duration::from_secs(u64::from(ttl)),
        })
    }

    pub fn from_servers(servers: &[String]) -> Result<Resolver, ResolverSetupError> {
        if servers.is_empty() {
            return Ok(Resolver::System);
        }
        let mut name_servers = Vec::with_capacity(servers.len());
        for text in servers {
            let address = parse_dns_server(text)
                .map_err(|reason| ResolverSetupError::Server(text.clone(), reason))?;
            let mut server = NameServerConfig::udp_and_tcp(address.ip());
            for connection in &mut server.connections {
                connection.port = address.port();
            }
            name_servers.push(server);
        }
        let mut options = ResolverOpts::default();
        options.cache_size = 0;
        options.attempts = 1;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .map_err(|error| ResolverSetupError::Build(error.to_string()))?;
        Ok(Resolver::Servers(Box::new(resolver)))
    }

    /// Every address of `host`, with `port`. An IP literal is returned as it is, unresolved.
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ProbeError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut addresses: Vec<SocketAddr> = match self {
            Resolver::System => tokio::net::lookup_host((host, port))
                .await
                .map_err(|error| {
                    ProbeError::new(ErrorKind::Resolve, format!("resolving {host}: {error}"))
                })?
                .collect(),
            Resolver::Servers(resolver) => resolver
                .lookup_ip(host)
                .await
                .map_err(|error| {
                    ProbeError::new(ErrorKind::Resolve, format!("resolving {host}: {error}"))
                })?
                .iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        };
        // getaddrinfo may list an address once per socket type; each instance counts once.
        let mut seen = std::collections::HashSet::new();
        addresses.retain(|address| seen.insert(*address));
        if addresses.is_empty() {
            return Err(ProbeError::new(
                ErrorKind::Resolve,
                format!("resolving {host}: no addresses"),
            ));
        }
        Ok(addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let text = "# comment\nsearch x\nnameserver 10.0.0.53\nnameserver ::1\nnameserver\n";
        assert_eq!(nameservers(text), vec!["10.0.0.53", "::1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn srv_answers_are_kept_for_their_ttl_only() {
        let cache = SrvCache::default();
        let answer = SrvAnswer {
            targets: Arc::new(vec![("a.test".to_string(), 80)]),
            ttl: Duration::from_secs(30),
        };
        cache.keep("_http._tcp.x", &answer);
        assert_eq!(
            cache.kept("_http._tcp.x"),
            Some(Arc::clone(&answer.targets))
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(cache.kept("_http._tcp.x").is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.kept("_http._tcp.x"), None);
        // A TTL of 0 is not kept; a huge one is capped.
        cache.keep(
            "zero",
            &SrvAnswer {
                ttl: Duration::ZERO,
                ..answer.clone()
            },
        );
        assert_eq!(cache.kept("zero"), None);
        cache.keep(
            "long",
            &SrvAnswer {
                ttl: Duration::from_secs(u64::from(u32::MAX)),
                ..answer.clone()
            },
        );
        tokio::time::advance(MAX_SRV_TTL + Duration::from_secs(1)).await;
        assert_eq!(cache.kept("long"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_srv_cache_is_bounded_and_expired_answers_make_room() {
        let cache = SrvCache::default();
        let answer = SrvAnswer {
            targets: Arc::new(Vec::new()),
            ttl: Duration::from_secs(10),
        };
        for index in 0..MAX_SRV_NAMES {
            cache.keep(&format!("n{index}"), &answer);
        }
        cache.keep("one-more", &answer);
        assert_eq!(cache.kept("one-more"), None, "full: not kept");
        assert_eq!(cache.answers.lock().unwrap().len(), MAX_SRV_NAMES);
        tokio::time::advance(Duration::from_secs(11)).await;
        cache.keep("one-more", &answer);
        assert!(cache.kept("one-more").is_some());
        assert_eq!(cache.answers.lock().unwrap().len(), 1);
    }

    #[test]
    fn dns_servers_take_port_53_unless_given() {
        assert_eq!(
            parse_dns_server("10.0.0.53"),
            Ok("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("[::1]:5353"),
            Ok("[::1]:5353".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("dns.internal"),
            Err("`dns.internal` is not an IP address or IP:port".to_string())
        );
    }
}
