//! Logging: tracing to stderr, as text or JSON lines, level from `RUST_LOG` (default `info`, with async-nats's own chatter at `warn`: bastion logs connection changes itself).
//! Logging never stops the daemon: a line that cannot be written is dropped.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. A second call (tests) leaves the first in place.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    // A failed write to stderr (a closed pipe, a full disk behind a redirect) drops the line.
    // tracing-subscriber's default would report it with `eprintln!`, which panics when stderr
    // is the thing that fails, and the panic takes down whatever task was logging.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
