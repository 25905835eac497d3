//! Discovery of instances: where a check's instances come from when they change while bastion
//! runs (`instances_from`). A source of the checker (`file`) is watched beside the checker and
//! hands the current set over through a `watch` channel, so a run never waits for it; what it
//! found travels in the run's request. A source resolved where the probe runs (DNS SRV) lives
//! with the dispatcher's resolver (`resolve::Resolver::srv`). It never probes, publishes or
//! schedules anything, and bad input (a broken file) is an error value, never a panic.

pub mod changes;
pub mod file;

use crate::messages::TargetGroup;
use std::sync::Arc;

/// The target groups a watched source holds now.
pub type TargetSet = Arc<Vec<TargetGroup>>;

/// At most this many targets (and target groups) in one source; past it the source is
/// refused as broken.
pub const MAX_TARGETS: usize = 10_000;
/// The target groups travel in every run's request; past this many bytes of JSON they are
/// refused, so a request always fits the bus (`messages::MAX_MESSAGE_BYTES`, 1 MiB).
pub const MAX_ENCODED_BYTES: usize = 768 * 1024;

/// Why a discovery source could not be used; each message names the source and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{path}: cannot be read: {source}; create it or fix its permissions")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: is larger than {limit} bytes; split its targets over several checks")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: is not a file_sd list of target groups ({reason}); write [{{\"targets\": [\"10.0.0.5:80\"], \"labels\": {{}}}}]")]
    Format { path: String, reason: String },
    #[error("{path}: target `{target}`: {reason}; write ip, ip:port or host:port")]
    Target {
        path: String,
        target: String,
        reason: String,
    },
    #[error("{path}: group #{group}: {reason}")]
    Labels {
        path: String,
        group: usize,
        reason: String,
    },
    #[error("{path}: has {count} targets; the most allowed is {MAX_TARGETS}")]
    TooMany { path: String, count: usize },
    #[error("{path}: has {count} target groups; the most allowed is {MAX_TARGETS}; merge groups that share their labels")]
    TooManyGroups { path: String, count: usize },
    #[error("{path}: its targets and labels come to {bytes} bytes, more than a run's request carries ({MAX_ENCODED_BYTES}); split them over several checks")]
    TooLargeEncoded { path: String, bytes: usize },
}
