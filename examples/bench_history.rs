//! History write cost and size, for bench/RESULTS.md (run by `bench/history`).
//!
//!     bench_history <db-file> [checks] [minutes]
//!
//! Feeds `minutes` of synthetic results for `checks` checks at a 60 s interval (one instance
//! each, one run in a hundred failing) through the real path: the sink's `Recorder` into the
//! bounded buffer, the writer task, SQLite. Runs go in the way a live agent sends them: one
//! second's worth (checks / 60) at a time, each written before the next second is fed, so
//! batches are the size they are in production. Prints the process's CPU time per simulated
//! second (the write cost as a share of one core; generating the results is included, so it
//! is an upper bound), and the bytes per raw run and per rollup row measured with SQLite's
//! dbstat, from which 30 days are extrapolated with the default retention.

use bastion_agent::config::{CheckConfig, HistoryConfig};
use bastion_agent::history::History;
use bastion_agent::messages::{CheckResult, Response, Timings, MESSAGE_VERSION};
use bastion_agent::metrics::Metrics;
use bastion_agent::model::{CheckType, ErrorKind, ProbeError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn result(check: &str, at: SystemTime, failing: bool) -> CheckResult {
    let timings = Timings {
        resolve: 0.0,
        connect: 0.0003 + (at.elapsed().map(|e| e.as_nanos() % 100).unwrap_or(0) as f64) * 1e-6,
        tls: 0.0,
        processing: 0.0021,
        transfer: 0.00002,
        total: 0.0025,
        ..Timings::default()
    };
    let mut response = Response::failed(
        "10.0.0.7:443".into(),
        ProbeError::new(ErrorKind::Connect, "connection refused"),
        timings,
    );
    if !failing {
        response.passing = true;
        response.error = None;
    }
    CheckResult {
        version: MESSAGE_VERSION,
        check: check.to_string(),
        check_type: CheckType::Http,
        agent: "bench".into(),
        run_id: 1,
        scheduled_at: at,
        finished_at: at + Duration::from_millis(3),
        passing: !failing,
        responses: vec![response],
        degraded: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "/tmp/bench-history.db".into());
    let checks: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let minutes: u64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(10);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    let config = HistoryConfig {
        path: path.clone().into(),
        flush_interval: Duration::from_millis(1),
        ..HistoryConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let history = History::open(&config, Arc::clone(&metrics)).expect("history opens");
    let writer = tokio::spawn(history.writer.run());
    let recorder = history.recorder;
    let definitions: Vec<CheckConfig> = (0..checks)
        .map(|i| {
            toml::from_str(&format!(
                "name = \"check-{i:05}\"\ntype = \"http\"\nurl = \"https://svc-{i}.internal/\"\ninterval = \"60s\""
            ))
            .expect("a check")
        })
        .collect();
    let start = SystemTime::now() - Duration::from_secs(minutes * 60);
    let per_second = checks.div_ceil(60);
    let cpu_before = cpu_seconds();
    let mut sent = 0u64;
    for second in 0..minutes * 60 {
        let slot = (second % 60) as usize;
        for check in definitions.iter().skip(slot * per_second).take(per_second) {
            let at = start + Duration::from_secs(second);
            recorder.run(&result(&check.name, at, sent % 100 == 7), check);
            sent += 1;
        }
        // Wait for the writer to take this second's batch, as a live agent would.
        while metrics.history_written.get() < sent {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    drop(recorder);
    let _ = writer.await;
    let cpu = cpu_seconds() - cpu_before;
    let simulated = (minutes * 60) as f64;
    println!("runs written: {sent} ({checks} checks, {minutes} simulated minutes)");
    println!(
        "write cost: {cpu:.2} CPU-s for {simulated:.0} simulated s = {:.2}% of one core",
        cpu / simulated * 100.0
    );
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect(&format!("sqlite://{path}"))
        .await
        .expect("open for stats");
    let size = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = $1",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
        }
    };
    let rows = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
        }
    };
    let (raw_bytes, raw_rows) = (size("runs").await, rows("runs").await);
    let (roll_bytes, roll_rows) = (size("rollups").await, rows("rollups").await);
    let per_run = raw_bytes as f64 / raw_rows.max(1) as f64;
    let per_rollup = roll_bytes as f64 / roll_rows.max(1) as f64;
    println!("raw runs: {raw_rows} rows, {raw_bytes} bytes, {per_run:.1} bytes per run");
    println!("rollups: {roll_rows} rows, {roll_bytes} bytes, {per_rollup:.1} bytes per row");
    // 30 days at the default retention: 1 day of runs, 8 days of hourly rollups and 30 days
    // of daily ones, each a row for the check and one for its instance.
    let c = checks as f64;
    let raw = c * 1440.0 * per_run;
    let hourly = c * 2.0 * 24.0 * 8.0 * per_rollup;
    let daily = c * 2.0 * 30.0 * per_rollup;
    let total = raw + hourly + daily;
    let gib = |bytes: f64| bytes / (1024.0 * 1024.0 * 1024.0);
    println!(
        "30 days at default retention: raw {:.2} GiB + hourly {:.2} GiB + daily {:.3} GiB = {:.2} GiB",
        gib(raw),
        gib(hourly),
        gib(daily),
        gib(total)
    );
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("database file after the run: {file} bytes");
}
