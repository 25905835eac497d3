//! What notifications cost in a mass outage (bench/RESULTS.md, "Notifications at scale"):
//! N checks fail at once, each opening an episode told to one receiver, with three recurring
//! maintenance windows configured; then the agent idles with every episode open. Prints the
//! time to open them all, the CPU the notifications' once-a-second ticker spends per tick
//! while they stay open, and the size and write time of the saved state.
//!
//! Usage: bench_notify [episodes] [idle seconds]

use bastion_agent::config::{CheckConfig, MaintenanceConfig, NotifierConfig};
use bastion_agent::episode::{RunTimes, Track};
use bastion_agent::messages::CheckResult;
use bastion_agent::metrics::Metrics;
use bastion_agent::model::CheckState;
use bastion_agent::notify::{Maintenance, Notifications, NotificationsOptions};
use bastion_agent::receivers::{Answer, Notification, Notifier, SendError};
use bastion_agent::saved_state::SavedState;
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accepts everything at once and counts it.
#[derive(Debug, Default)]
struct Sink(AtomicUsize);

impl Notifier for Sink {
    fn send<'a>(&'a self, _: &'a Notification) -> BoxFuture<'a, Result<Answer, SendError>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(Answer("ok".to_string())) })
    }
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after the name.
    (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let episodes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(9_000);
    let idle: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("bastion-bench-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (saved, _) =
        SavedState::open(Some(dir.join("episodes.json"))).expect("the saved state opens");
    let stop = CancellationToken::new();
    let saver = tokio::spawn(Arc::clone(&saved).run(stop.clone()));
    let windows: Vec<MaintenanceConfig> = ["mon", "wed", "fri"]
        .iter()
        .map(|day| {
            toml::from_str(&format!(
                "name = \"nightly-{day}\"\nchecks = [\"db-*\", \"web-1*\"]\nat = \"03:00\"\nduration = \"1h\"\ndays = [\"{day}\"]\ntime_zone = \"Europe/Berlin\""
            ))
            .expect("a window")
        })
        .collect();
    let receiver = Arc::new(Sink::default());
    let notifier: NotifierConfig = toml::from_str(
        "name = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\ndefault = true\nrepeat_interval = \"1h\"\nqueue_size = 100000",
    )
    .expect("a notifier");
    let tasks = TaskTracker::new();
    let notifications = Notifications::start(
        NotificationsOptions {
            notifiers: vec![(notifier, Arc::clone(&receiver) as Arc<dyn Notifier>)],
            maintenance: Maintenance::compile(&windows).expect("windows compile"),
            maintenance_updates: None,
            agent: "bench".to_string(),
            link_base: "http://127.0.0.1:9464".to_string(),
            metrics: Arc::new(Metrics::new()),
            leadership: None,
            saved: Arc::clone(&saved),
            resumed: BTreeMap::new(),
        },
        &stop,
        &tasks,
    );
    let checks: Vec<CheckConfig> = (0..episodes)
        .map(|n| {
            toml::from_str(&format!(
                "name = \"web-{n}\"\ntype = \"http\"\nurl = \"http://127.0.0.1/\"\ninterval = \"10s\"\nmin_failing_time = \"0s\""
            ))
            .expect("a check")
        })
        .collect();
    let now = SystemTime::now();
    let opening = Instant::now();
    for check in &checks {
        let result: CheckResult = serde_json::from_value(serde_json::json!({
            "version": 1, "check": check.name, "type": "http", "agent": "bench", "run_id": 1,
            "scheduled_at": humantime::format_rfc3339_micros(now).to_string(),
            "finished_at": humantime::format_rfc3339_micros(now).to_string(),
            "passing": false, "responses": [],
            "degraded": {"form": "summarised", "instances": 1, "failing": 1, "omitted": 1}
        }))
        .expect("a result");
        let mut track = Track::default();
        let event = track.observe(
            &check.name,
            false,
            CheckState::Fail,
            RunTimes {
                scheduled_at: now,
                finished_at: now,
            },
        );
        notifications.observe(check, CheckState::Fail, &Arc::new(result), event.as_ref());
    }
    let opened = opening.elapsed();
    while receiver.0.load(Ordering::Relaxed) < episodes {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let told = opening.elapsed();
    // Let the last acceptances be saved, then watch the ticker alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let ticking = cpu_seconds() - before;
    let written = Instant::now();
    saved.put("bench", "marker", &written.elapsed().as_nanos().to_string());
    saved.flush().await;
    let write = written.elapsed();
    let size = std::fs::metadata(dir.join("episodes.json"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("episodes                      {episodes}");
    println!(
        "opening them (sink calls)     {:.1} ms",
        opened.as_secs_f64() * 1e3
    );
    println!(
        "until every trigger accepted  {:.1} ms",
        told.as_secs_f64() * 1e3
    );
    println!(
        "idle ticker CPU               {:.2} ms per tick ({idle} ticks)",
        ticking * 1e3 / idle as f64
    );
    println!(
        "saved state                   {:.1} KiB, written in {:.1} ms",
        size as f64 / 1024.0,
        write.as_secs_f64() * 1e3
    );
    stop.cancel();
    let _ = saver.await;
    let _ = std::fs::remove_dir_all(&dir);
}
