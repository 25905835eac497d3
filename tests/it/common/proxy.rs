//! A real HTTP proxy for the proxy tests: Debian's tinyproxy (`$TINYPROXY`, else on PATH,
//! else /usr/bin/tinyproxy; `.ci/test` installs tinyproxy-bin), run in the foreground on a free
//! port of 127.0.0.1 with a config written to a temporary directory, its log kept there, and
//! killed on drop. A missing tinyproxy fails the test with what to install.

use super::nats::free_port;
use super::tools::tool;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tinyproxy {
    pub address: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Tinyproxy {
    /// Starts tinyproxy allowing 127.0.0.1, with `extra` config lines (`BasicAuth user pass`,
    /// `ConnectPort 443`).
    pub fn start(extra: &str) -> Tinyproxy {
        let binary = tool(
            "TINYPROXY",
            "tinyproxy",
            "/usr/bin/tinyproxy",
            "install tinyproxy (apt-get install tinyproxy-bin)",
        );
        let dir = super::temp_path("tinyproxy", "d");
        std::fs::create_dir_all(&dir).expect("tinyproxy directory");
        for _ in 0..20 {
            let port = free_port();
            let conf = dir.join("tinyproxy.conf");
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 15\nMaxClients 100\nAllow 127.0.0.1\n\
                     DisableViaHeader Yes\nLogLevel Connect\n{extra}\n"
                ),
            )
            .expect("tinyproxy config");
            let log = std::fs::File::create(dir.join("tinyproxy.log")).expect("tinyproxy log");
            let mut child = Command::new(&binary)
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("tinyproxy starts");
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                if std::net::TcpStream::connect(address).is_ok() {
                    return Tinyproxy {
                        address,
                        dir,
                        child,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "tinyproxy did not start; its log:\n{}",
            std::fs::read_to_string(dir.join("tinyproxy.log")).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`, for `proxy_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// What tinyproxy logged so far (one line per connection and request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tinyproxy.log")).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
