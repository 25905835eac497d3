//! History write cost and size, for bench/RESULTS.md (run by `bench/history`).
//!
//!     bench_history <db-file> [checks] [minutes]
//!     bench_history --simulate-30d <db-file> [checks]
//!
//! Feeds `minutes` of synthetic results for `checks` checks at a 60 s interval (one instance
//! each, one run in a hundred failing) through the real path: the sink's `Recorder` into the
//! bounded buffer, the writer task, SQLite. Runs go in the way a live agent sends them: one
//! second's worth (checks / 60) at a time, each written before the next second is fed, so
//! batches are the size they are in production. Prints the process's CPU time per simulated
//! second (the write cost as a share of one core; generating the results is included, so it
//! is an upper bound), and the bytes per raw run and per rollup row measured with SQLite's
//! dbstat, from which 30 days are extrapolated with the default retention.

use bastion_agent::checks::CheckType;
use bastion_agent::config::{CheckConfig, HistoryConfig};
use bastion_agent::history::histogram::{varint, Histograms};
use bastion_agent::history::{Db, History};
use bastion_agent::messages::{CheckResult, Response, Timings, MESSAGE_VERSION};
use bastion_agent::metrics::Metrics;
use bastion_agent::model::{ErrorKind, ProbeError};
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
        location: None,
        run_id: 1,
        scheduled_at: at,
        finished_at: at + Duration::from_millis(3),
        passing: !failing,
        responses: vec![response],
        degraded: None,
    }
}

/// A run's detail as the writer stores it: instance id, outcome code, six phases in µs.
fn detail(instance: u64, code: u8, jitter: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    varint(&mut out, instance);
    out.push(code);
    for micros in [
        0,
        300 + jitter % 100,
        0,
        2100 + jitter % 400,
        20,
        2500 + jitter % 500,
    ] {
        varint(&mut out, micros);
    }
    out
}

fn histogram(samples: u64, seed: u64) -> Vec<u8> {
    let mut histograms = Histograms::default();
    for i in 0..samples {
        let jitter = ((i * 7919 + seed) % 1000) as f64 * 1e-6;
        histograms.observe(&[
            0.0,
            0.0003 + jitter / 10.0,
            0.0,
            0.0021 + jitter / 2.0,
            0.00002,
            0.0025 + jitter,
        ]);
    }
    histograms.encode()
}

/// Inserts `rows` with one multi-row INSERT per 500, in transactions of 50,000.
async fn insert_many(
    pool: &sqlx::SqlitePool,
    table_and_columns: &str,
    columns: usize,
    rows: impl Iterator<Item = Vec<Value>>,
) {
    let mut chunk: Vec<Vec<Value>> = Vec::with_capacity(500);
    let mut tx = pool.begin().await.expect("begin");
    let mut in_tx = 0usize;
    let flush = |chunk: Vec<Vec<Value>>| {
        let placeholders: Vec<String> = (0..chunk.len())
            .map(|row| {
                let cells: Vec<String> = (0..columns)
                    .map(|c| format!("${}", row * columns + c + 1))
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        (
            format!(
                "INSERT INTO {table_and_columns} VALUES {}",
                placeholders.join(", ")
            ),
            chunk,
        )
    };
    for row in rows {
        chunk.push(row);
        if chunk.len() == 500 {
            let (sql, values) = flush(std::mem::take(&mut chunk));
            run(&mut tx, &sql, values).await;
            in_tx += 500;
            if in_tx >= 50_000 {
                tx.commit().await.expect("commit");
                tx = pool.begin().await.expect("begin");
                in_tx = 0;
            }
        }
    }
    if !chunk.is_empty() {
        let (sql, values) = flush(chunk);
        run(&mut tx, &sql, values).await;
    }
    tx.commit().await.expect("commit");
}

enum Value {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

async fn run(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, sql: &str, values: Vec<Vec<Value>>) {
    let mut query = sqlx::query(sql);
    for value in values.into_iter().flatten() {
        query = match value {
            Value::Int(v) => query.bind(v),
            Value::Text(v) => query.bind(v),
            Value::Blob(v) => query.bind(v),
        };
    }
    query.execute(&mut **tx).await.expect("insert");
}

/// The database 30 days into a run of `checks` checks at 60 s, at the default retention:
/// one day of runs, 8 days of hourly rollups, 30 days of daily ones (earlier rows have been
/// expired), inserted directly in the writer's encoding.
async fn simulate_30_days(path: &str, checks: i64) {
    let config = HistoryConfig {
        path: path.into(),
        ..HistoryConfig::default()
    };
    let db = bastion_agent::history::Db::lazy(&config).expect("db");
    db.ensure_schema().await.expect("schema");
    let Db::Sqlite(pool) = db else { return };
    let started = std::time::Instant::now();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    insert_many(
        &pool,
        "checks (id, name)",
        2,
        (1..=checks).map(|id| vec![Value::Int(id), Value::Text(format!("check-{id:05}"))]),
    )
    .await;
    insert_many(
        &pool,
        "instances (id, check_id, address)",
        3,
        (1..=checks).map(|id| {
            vec![
                Value::Int(id),
                Value::Int(id),
                Value::Text(format!(
                    "10.{}.{}.{}:443",
                    id / 65536,
                    id / 256 % 256,
                    id % 256
                )),
            ]
        }),
    )
    .await;
    // One day of runs: each check once a minute, one run in a hundred down.
    let first = (now - 86_400) * 1000;
    insert_many(
        &pool,
        "runs (check_id, at_ms, outcome, detail)",
        4,
        (0..1440i64).flat_map(move |minute| {
            (1..=checks).map(move |id| {
                let down = (minute * checks + id) % 100 == 7;
                let seed = (minute * 31 + id * 17) as u64;
                vec![
                    Value::Int(id),
                    Value::Int(first + minute * 60_000 + id % 60_000),
                    Value::Int(i64::from(down)),
                    Value::Blob(detail(id as u64, if down { 3 } else { 0 }, seed)),
                ]
            })
        }),
    )
    .await;
    println!(
        "inserted 1 day of runs ({} rows) in {:.0?}",
        checks * 1440,
        started.elapsed()
    );
    // Rollups: per check and per instance, 8 days hourly, 30 days daily.
    for (tier, span, buckets, samples) in
        [(1i64, 3_600i64, 8 * 24i64, 60u64), (2, 86_400, 30, 1440)]
    {
        let last = now - now.rem_euclid(span);
        insert_many(
            &pool,
            "rollups (tier, check_id, instance_id, bucket, runs, down, unmeasured, hist)",
            8,
            (0..buckets).flat_map(move |b| {
                (1..=checks).flat_map(move |id| {
                    [0, id].into_iter().map(move |instance| {
                        vec![
                            Value::Int(tier),
                            Value::Int(id),
                            Value::Int(instance),
                            Value::Int(last - b * span),
                            Value::Int(samples as i64),
                            Value::Int(samples as i64 / 100),
                            Value::Int(0),
                            Value::Blob(histogram(samples - samples / 100, (b * 13 + id) as u64)),
                        ]
                    })
                })
            }),
        )
        .await;
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .ok();
    let bytes: u64 = ["", "-wal"]
        .iter()
        .map(|suffix| {
            std::fs::metadata(format!("{path}{suffix}"))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    println!(
        "30 simulated days, {checks} checks: database {:.2} GiB ({bytes} bytes), inserted in {:.0?}",
        bytes as f64 / (1024.0 * 1024.0 * 1024.0),
        started.elapsed()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--simulate-30d") {
        let path = args
            .get(2)
            .cloned()
            .unwrap_or_else(|| "/tmp/bench-history-30d.db".into());
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
        let checks = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(10_000);
        simulate_30_days(&path, checks).await;
        return;
    }
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
    let metrics = Metrics::new();
    let history = History::open(&config, &metrics, true).expect("history opens");
    let history_metrics: bastion_agent::history::HistoryMetrics = metrics.component();
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
            recorder.run(&result(&check.name, at, sent % 100 == 7), check, 0);
            sent += 1;
        }
        // Wait for the writer to take this second's batch, as a live agent would.
        while history_metrics.written() < sent {
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
