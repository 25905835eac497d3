//! The real `bastion` binary as a child process: started with a config file, its stderr kept
//! in a file, killed on drop. For tests where processes, signals and exits are the contract.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Bastion {
    pub name: String,
    pub listen: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory for one test's files.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bastion-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

impl Bastion {
    /// Starts `bastion <args> --config <file holding config>`; the config should listen on
    /// `listen`. `$STATE_DIRECTORY` is its own directory, so each agent has a history
    /// database of its own.
    pub fn start(name: &str, listen: u16, config: &str, args: &[&str]) -> Bastion {
        Bastion::start_with_env(name, listen, config, args, &[])
    }

    /// `start`, with extra environment variables.
    pub fn start_with_env(
        name: &str,
        listen: u16,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Bastion {
        Bastion::start_under(&[], name, listen, config, args, env)
    }

    /// `start_with_env`, run through `wrapper` (e.g. `["prlimit", "--nofile=64:64", "--"]`),
    /// which must exec the binary so that the child is bastion itself.
    pub fn start_under(
        wrapper: &[&str],
        name: &str,
        listen: u16,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Bastion {
        let dir = scratch_dir(name);
        let path = dir.join("bastion.toml");
        std::fs::write(&path, config).expect("config file");
        let log = std::fs::File::create(dir.join("stderr.log")).expect("log file");
        let binary = env!("CARGO_BIN_EXE_bastion");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(args)
            .arg("--config")
            .arg(&path)
            .env_remove("BASTION_CONFIG")
            .env_remove("BASTION_ROLE")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            // The default history database goes into this run's own directory, as systemd's
            // StateDirectory= would put it (unless the config names one, or `env` another).
            .env("STATE_DIRECTORY", &dir)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the binary starts");
        Bastion {
            name: name.to_string(),
            listen,
            dir,
            child: Some(child),
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory in KiB (VmRSS), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("wait").is_none(),
            None => false,
        }
    }

    /// SIGKILL: gone with no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...) without waiting.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(child.id().to_string())
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -{name} failed");
        }
    }

    /// The config file it was started with, to rewrite before a reload.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("bastion.toml")
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        wait_for_exit(&mut child, Duration::from_secs(60))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_for_exit(child, within);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// The text of `/metrics`, or None while it does not answer.
    pub fn metrics(&self) -> Option<String> {
        http_get_blocking(self.listen, "/metrics").map(|(_, body)| body)
    }

    /// One sample's value from `/metrics`, by its full series text (name and labels).
    pub fn sample(&self, series: &str) -> Option<f64> {
        super::metric(&self.metrics()?, series)
    }

    /// Waits until `/metrics` answers; fails at once if the process exits instead.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metrics().is_none() {
            assert!(
                self.alive(),
                "{} exited before serving /metrics; its log:\n{}",
                self.name,
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "{} never served /metrics; its log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bastion {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking HTTP GET on 127.0.0.1:`port`, for tests outside async code. None when nothing
/// answers.
pub fn http_get_blocking(port: u16, path: &str) -> Option<(u16, String)> {
    super::http_request_blocking(port, "GET", path, &[])
}
