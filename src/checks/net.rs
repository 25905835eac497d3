//! Network steps every probe type shares: the fresh TCP connection timed as the connect phase,
//! driving a hyper connection and its exchange in the probe's own task, and error chains that
//! say what failed without repeating a cause. Nothing here knows a check type; it must never
//! reuse a connection or spawn a task that outlives the probe.

use super::{Phase, ProbeRecord};
use crate::model::{ErrorKind, ProbeError};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

/// Opens a probe's fresh TCP connection, timed as the connect phase, from `source` when the
/// check has a `source_ip`. Nagle is off: probes write small requests and must not wait to
/// send them.
pub async fn connect_tcp(
    target: SocketAddr,
    source: Option<IpAddr>,
    record: &mut ProbeRecord,
) -> Result<tokio::net::TcpStream, ProbeError> {
    let socket = match source {
        Some(source) => Some(bound_socket(source, target)?),
        None => None,
    };
    record.begin(Phase::Connect);
    let connected = match socket {
        Some(socket) => socket.connect(target).await,
        None => tokio::net::TcpStream::connect(target).await,
    };
    let tcp = connected.map_err(|error| {
        ProbeError::new(ErrorKind::Connect, format!("connect to {target}: {error}"))
    })?;
    record.end();
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A socket bound to `source`, to connect to `target` from: both of one family, and the
/// address one of this host's.
fn bound_socket(source: IpAddr, target: SocketAddr) -> Result<tokio::net::TcpSocket, ProbeError> {
    let fail = |message: String| ProbeError::new(ErrorKind::Connect, message);
    if source.is_ipv4() != target.is_ipv4() {
        return Err(fail(format!(
            "source_ip {source} and the instance {target} are not of one IP version; set ip_protocol to match"
        )));
    }
    let socket = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|error| fail(format!("opening a socket: {error}")))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|error| fail(format!("binding source_ip {source}: {error}")))?;
    Ok(socket)
}

/// Polls the connection and the exchange together, in this task: no background task outlives
/// the probe, and dropping the probe (on timeout) closes the socket.
pub async fn drive<C, W, T>(connection: C, work: W) -> Result<T, ProbeError>
where
    C: Future<Output = Result<(), hyper::Error>>,
    W: Future<Output = Result<T, ProbeError>>,
{
    tokio::pin!(connection, work);
    tokio::select! {
        biased;
        result = &mut work => result,
        ended = &mut connection => {
            // The connection is over; the exchange now sees its end too and says how it went.
            let result = work.await;
            match (result, ended) {
                (Err(error), Err(cause)) if !error.message.contains(&cause.to_string()) => Err(
                    ProbeError::new(error.kind, format!("{}: {}", error.message, error_chain(&cause))),
                ),
                (result, _) => result,
            }
        }
    }
}

pub fn http_error(error: hyper::Error) -> ProbeError {
    // A TLS alert during the exchange (a server refusing the client certificate after a TLS
    // 1.3 handshake) is a TLS failure, not the server breaking HTTP.
    if is_tls_failure(&error) {
        return ProbeError::new(ErrorKind::Tls, format!("TLS: {}", error_chain(&error)));
    }
    let message = if error.is_incomplete_message() {
        format!(
            "the server closed the connection before a complete response: {}",
            error_chain(&error)
        )
    } else if error.is_parse() {
        format!("invalid HTTP response: {}", error_chain(&error))
    } else {
        error_chain(&error)
    };
    ProbeError::new(ErrorKind::Http, message)
}

/// An error and its causes, joined, without repeating a cause already in the text.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether `error` (or one of its causes) is a TLS failure, such as the server's alert that
/// refuses a client certificate after a TLS 1.3 handshake.
pub fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<rustls::Error>() {
            return true;
        }
        // io::Error and h2::Error keep their cause out of `source()`: look inside. h2 keeps
        // only the kind and text of an I/O error, so a rustls alert read by an HTTP/2
        // connection is known by those (tokio-rustls reports rustls errors as InvalidData).
        let io = error.downcast_ref::<std::io::Error>().or_else(|| {
            error
                .downcast_ref::<h2::Error>()
                .and_then(h2::Error::get_io)
        });
        if let Some(io) = io {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
                || (io.kind() == std::io::ErrorKind::InvalidData
                    && io.to_string().starts_with("received fatal alert"))
            {
                return true;
            }
        }
        current = error.source();
    }
    false
}
