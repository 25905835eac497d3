//! Name resolution for probes: the system resolver (getaddrinfo, so /etc/hosts and nsswitch
//! apply), or the DNS servers named in `[runner] dns_servers`, queried with no cache and a
//! single attempt so that the time is real. Every address a name returns is kept, in order.

use crate::model::{ErrorKind, InstanceAddr, ProbeError};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};

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
