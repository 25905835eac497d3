//! bastion: a check-runner daemon that probes the services it can reach and reports honest
//! latency for every instance, on a bus and as Prometheus metrics.
//!
//! The library holds everything; `main.rs` only parses the command line and maps outcomes to
//! exit codes. See `ARCHITECTURE.md` for the map.
#![forbid(unsafe_code)]
// No unwrap or expect outside tests: bad input is an error value, never a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod assertions;
pub mod bus;
pub mod checker;
pub mod checks;
pub mod compiled;
pub mod config;
pub mod discovery;
pub mod episode;
pub mod heartbeat;
pub mod history;
pub mod http;
pub mod lease;
pub mod limits;
pub mod locations;
pub mod message_bounds;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod problem;
pub mod receivers;
pub mod reload;
pub mod report;
pub mod resolve;
pub mod results;
pub mod run_window;
pub mod runner;
pub mod saved_state;
pub mod state;
pub mod subjects;
pub mod systemd;
pub mod telemetry;
mod time_format;
pub mod validate;
