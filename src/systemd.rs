//! systemd's notify protocol (`sd_notify`), spoken over the `NOTIFY_SOCKET` datagram socket:
//! `READY=1` once the config is loaded and the bus is up, `RELOADING=1` then `READY=1` around a
//! reload, `STOPPING=1` on shutdown, `STATUS=` with a one-line summary, and `WATCHDOG=1` at half
//! of `WATCHDOG_USEC`. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing. A failed
//! send is logged at debug level and never stops the agent.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go: a socket path, or a Linux abstract socket name (`@name`).
#[derive(Debug)]
enum Address {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

#[derive(Debug)]
pub struct ServiceManager {
    socket: UnixDatagram,
    address: Address,
}

impl ServiceManager {
    /// The notifier systemd asked for in `NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Option<ServiceManager> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        let text = value.to_string_lossy().into_owned();
        let address = match text.strip_prefix('@') {
            Some(name) => Address::Abstract(name.as_bytes().to_vec()),
            None if text.starts_with('/') => Address::Path(PathBuf::from(&text)),
            None => {
                tracing::warn!(socket = %text, "NOTIFY_SOCKET is neither a path nor @name; not notifying systemd");
                return None;
            }
        };
        match UnixDatagram::unbound() {
            Ok(socket) => Some(ServiceManager { socket, address }),
            Err(error) => {
                tracing::warn!(%error, "cannot open a socket to notify systemd");
                None
            }
        }
    }

    /// Sends one notification (newline-separated `KEY=VALUE` lines).
    pub fn notify(&self, state: &str) {
        let sent = match &self.address {
            Address::Path(path) => self.socket.send_to(state.as_bytes(), path),
            Address::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|address| self.socket.send_to_addr(state.as_bytes(), &address))
            }
        };
        if let Err(error) = sent {
            tracing::debug!(%error, "could not notify systemd");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn reloading(&self) {
        self.notify("RELOADING=1\nSTATUS=reloading the config");
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=shutting down");
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// A status is one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (micros > 0).then(|| Duration::from_micros(micros / 2))
}
