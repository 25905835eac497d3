//! A real Prometheus server for the tests: started on a free port with a scrape config of the
//! test's own (and deploy/prometheus/alerts.yml beside it), asked through its query API, killed
//! on drop.

use super::nats::free_port;
use super::process::scratch_dir;
use super::raw_request_blocking;
use super::tools::prometheus;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");

/// A Prometheus server on 127.0.0.1:`port`, with its data and log in a scratch directory;
/// killed on drop.
pub struct Prometheus {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Prometheus {
    pub fn start(config: &str) -> Prometheus {
        let binary = prometheus();
        let dir = scratch_dir("prometheus");
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("prometheus.yml");
        std::fs::copy(Path::new(DEPLOY).join("alerts.yml"), dir.join("alerts.yml"))
            .expect("alerts.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("{} does not start: {error}", binary.display()));
        Prometheus { port, dir, child }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// `/api/v1/<path>` as JSON, or None while Prometheus does not answer 200.
    pub fn api(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = http_get_1_0(self.port, &format!("/api/v1/{path}"))?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The value of an instant query that must return exactly one series, or None while it
    /// returns none.
    pub fn query_one(&self, query: &str) -> Option<f64> {
        let answer = self.api(&format!("query?query={}", percent_encode(query)))?;
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        let result = answer["data"]["result"].as_array()?;
        match result.as_slice() {
            [] => None,
            [series] => series["value"][1].as_str()?.parse().ok(),
            _ => panic!("{query} returned several series: {answer}"),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GET in HTTP/1.0: Go's server then closes the connection after an unchunked body.
pub fn http_get_1_0(port: u16, path: &str) -> Option<(u16, String)> {
    raw_request_blocking(
        port,
        &format!("GET {path} HTTP/1.0\r\nhost: 127.0.0.1\r\n\r\n"),
    )
}

pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
