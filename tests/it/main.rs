//! The integration tests, as one binary: a module per area, each starting real servers on
//! 127.0.0.x, a real nats-server or the real `bastion` binary, and one copy of every helper
//! they share in `common`. One binary links the crate once instead of once per area; nextest
//! still runs every test in a process of its own, so tests that change process-wide state
//! (the open-file limit, `/proc/self/fd` baselines) stay isolated. Run one area with
//! `cargo nextest run --test it -E 'test(/^nats::/)'`.

mod common;

mod agent;
pub(crate) mod api_contract;
mod architecture;
mod blackbox_probe;
mod build_script;
mod checker;
mod cli;
mod config_schema;
mod container;
mod dashboard;
mod delivery;
mod deploy;
mod discovery;
mod dns;
pub(crate) mod docs;
mod episodes;
mod fair_share;
mod faults;
mod fresh_probes;
mod fuzz;
mod grpc;
mod history;
mod history_api;
mod hostile;
mod http_addresses;
mod http_compression;
mod http_oauth2;
mod http_options;
mod http_proxy;
mod icmp;
mod locations;
mod locations_sink;
mod logs;
mod metrics_scrape;
mod nats;
mod nats_cluster;
mod netns_harness;
mod notify;
mod operations;
mod package;
mod pipeline;
mod prometheus;
mod resources;
mod scale;
mod secrets;
mod starttls;
mod status_page;
mod tcp;
mod tls_and_dns;
mod tls_check;
mod tls_settings;
mod udp;
mod websocket;
