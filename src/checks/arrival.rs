//! A probe's TCP stream whose reads carry the kernel's receive time (`SO_TIMESTAMPNS`), so a
//! phase that ends when the server's answer arrives ends when it arrived, not when a busy
//! worker got round to reading it. On a loaded agent a tokio worker can poll a readable socket
//! milliseconds late; the kernel stamps each packet as it is received.
//!
//! An arrival is never later than the read that saw it, never earlier than the stream's last
//! write, and never more than `runner.max_arrival_correction` before the read. That last bound
//! is what a wrong stamp can cost: for TCP the kernel gives the stamp of the last segment a read
//! took data from, and when a segment was lost and a later one arrived before its
//! retransmission, that is the later segment's (earlier) time. Nothing safe tells a probe that
//! it happened (`TCP_INFO` counts out-of-order packets, but only through `unsafe` code), so the
//! correction is bounded instead.
//!
//! The kernel turns receive stamping on for the whole host while at least one socket asks for
//! it, and turning it on from nothing patches kernel code (a deferred work item, with an IPI to
//! every CPU). A probe's socket lives for a millisecond, so at a low rate every probe would
//! switch it on and off: one socket held for the life of the process keeps it on, and each
//! probe's request is then an atomic increment in the kernel.

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Room for one `SCM_TIMESTAMPNS` control message (`CMSG_SPACE` of a `timespec` is 32 bytes on
/// 64-bit Linux), with margin, aligned as a `cmsghdr` must be (nix reads the header in place).
#[repr(C, align(8))]
struct ControlRoom([u8; 64]);

/// The most of hyper's read buffer one read fills: `ReadBuf` must be initialised before
/// `recvmsg` writes into it, and hyper hands it over uninitialised on every read.
const MOST_PER_READ: usize = 64 * 1024;

/// When the latest read of a [`StampedStream`] arrived; shared with the probe, which gives
/// the stream itself away (to hyper, to rustls).
#[derive(Clone, Debug)]
pub struct Arrivals {
    base: Instant,
    /// Nanoseconds from `base` to the latest arrival, plus one; 0 while nothing was read.
    latest: Arc<AtomicU64>,
}

impl Arrivals {
    fn new() -> Arrivals {
        Arrivals {
            base: Instant::now(),
            latest: Arc::new(AtomicU64::new(0)),
        }
    }

    /// When the data of the latest read arrived, if anything was read.
    pub fn latest(&self) -> Option<Instant> {
        match self.latest.load(Ordering::Relaxed) {
            0 => None,
            plus_one => Some(self.base + Duration::from_nanos(plus_one - 1)),
        }
    }

    fn record(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        let plus_one = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        self.latest.store(plus_one, Ordering::Relaxed);
    }
}

/// A TCP stream that remembers when the data of its latest read arrived.
#[derive(Debug)]
pub struct StampedStream {
    inner: TcpStream,
    arrivals: Arrivals,
    /// Whether the kernel agreed to stamp this socket's reads; if not, a read's arrival is
    /// when the read returned, as without this stream.
    stamped: bool,
    /// How far before its read an arrival may be (`runner.max_arrival_correction`).
    max_correction: Duration,
    /// When the latest write returned. The answer to it cannot have arrived before it, so a
    /// stamp before it (a banner read only now, a clock stepped forward) counts from it.
    last_write: Option<Instant>,
}

impl StampedStream {
    /// Asks the kernel to stamp `stream`'s reads, unless `max_correction` is zero; returns
    /// the stream and the handle its arrivals are read from.
    pub fn new(stream: TcpStream, max_correction: Duration) -> (StampedStream, Arrivals) {
        let stamped = !max_correction.is_zero()
            && host_stamping_held()
            && setsockopt(&stream, sockopt::ReceiveTimestampns, &true).is_ok();
        let arrivals = Arrivals::new();
        let stream = StampedStream {
            inner: stream,
            arrivals: arrivals.clone(),
            stamped,
            max_correction,
            last_write: None,
        };
        (stream, arrivals)
    }

    /// Whether the kernel stamps this stream's reads.
    pub fn is_stamped(&self) -> bool {
        self.stamped
    }

    fn arrived(&self, stamp: Option<SystemTime>) -> Instant {
        // The stamp is on the realtime clock; how long ago it was is the same on both clocks.
        // The realtime clock is read first: a pause between the two reads makes the arrival
        // later, never earlier.
        let ago = stamp.and_then(|stamp| SystemTime::now().duration_since(stamp).ok());
        let now = Instant::now();
        let Some(ago) = ago else { return now };
        let mut arrived = now.checked_sub(ago.min(self.max_correction)).unwrap_or(now);
        if let Some(written) = self.last_write {
            arrived = arrived.max(written);
        }
        arrived
    }
}

/// Holds one socket with receive stamping on for the life of the process (see the module
/// comment). Until that succeeds no probe asks for stamps, and the next probe tries again (a
/// failure may pass: no file descriptor free at the first probe); the first failure is logged.
fn host_stamping_held() -> bool {
    static HOLDER: OnceLock<socket2::Socket> = OnceLock::new();
    static FAILURE_LOGGED: AtomicBool = AtomicBool::new(false);
    if HOLDER.get().is_some() {
        return true;
    }
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(|error| ("opening the socket that holds receive stamps on", error))
        .and_then(|socket| {
            setsockopt(&socket.as_fd(), sockopt::ReceiveTimestampns, &true)
                .map_err(|errno| ("turning receive stamps (SO_TIMESTAMPNS) on", errno.into()))?;
            Ok(socket)
        });
    match held {
        // Two probes may race here; the loser's socket is closed, the winner's held.
        Ok(socket) => {
            let _ = HOLDER.set(socket);
            true
        }
        Err((step, error)) => {
            if !FAILURE_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %error,
                    "{step} failed: until it succeeds, phases that end on an answer end when the probe reads it"
                );
            }
            false
        }
    }
}

/// One `recvmsg` into `buf`: the bytes read and, if the kernel stamped them, when the last of
/// them arrived (for TCP, the stamp of the last segment the read took data from).
fn receive(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    let mut control = ControlRoom([0u8; 64]);
    let mut iov = [IoSliceMut::new(buf)];
    let message = recvmsg::<()>(fd, &mut iov, Some(&mut control.0), MsgFlags::empty())?;
    let mut stamp = None;
    if let Ok(messages) = message.cmsgs() {
        for control in messages {
            if let ControlMessageOwned::ScmTimestampns(at) = control {
                let seconds = u64::try_from(at.tv_sec()).ok();
                let nanos = u32::try_from(at.tv_nsec()).ok();
                if let (Some(seconds), Some(nanos)) = (seconds, nanos) {
                    stamp = UNIX_EPOCH.checked_add(Duration::new(seconds, nanos));
                }
            }
        }
    }
    Ok((message.bytes, stamp))
}

impl AsyncRead for StampedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.stamped || buf.remaining() == 0 {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                let at = this.arrived(None);
                this.arrivals.record(at);
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let unfilled = buf.initialize_unfilled_to(buf.remaining().min(MOST_PER_READ));
            match this
                .inner
                .try_io(Interest::READABLE, || receive(fd, unfilled))
            {
                Ok((read, stamp)) => {
                    buf.advance(read);
                    if read > 0 {
                        let at = this.arrived(stamp);
                        this.arrivals.record(at);
                    }
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: tokio cleared it, so the next poll waits for the socket.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for StampedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.last_write = Some(Instant::now());
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.last_write = Some(Instant::now());
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The stamp is when the bytes reached this host, not when the read ran: a read made
    /// 300 ms after the answer arrived still reports the arrival.
    #[tokio::test]
    async fn a_late_read_reports_when_the_data_arrived() {
        // The kernel turns stamping on for the host in the background, a moment after the
        // first socket asks (until then reads carry no stamp): the answer comes 100 ms after
        // the request, the first socket asked for stamps before it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4];
            socket.read_exact(&mut request).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            socket.write_all(b"pong").await.unwrap();
            // Hold the connection open until the client has read.
            let _ = socket.read(&mut request).await;
        });
        let (mut stream, arrivals) = StampedStream::new(
            TcpStream::connect(address).await.unwrap(),
            Duration::from_secs(5),
        );
        assert!(stream.is_stamped(), "this kernel stamps TCP reads");
        assert_eq!(arrivals.latest(), None);
        stream.write_all(b"ping").await.unwrap();
        let written = Instant::now();
        // Wait until the answer is surely here, then read it late.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await.unwrap();
        let read = Instant::now();
        assert_eq!(&answer, b"pong");
        let arrived = arrivals.latest().expect("an arrival was recorded");
        assert!(
            arrived >= written + Duration::from_millis(100),
            "not before the server answered"
        );
        assert!(
            read - arrived >= Duration::from_millis(250),
            "the arrival ({:?} after the write) is the kernel's, not the read's ({:?})",
            arrived - written,
            read - written
        );
        drop(stream);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn arrivals_keep_the_latest_read_only() {
        let arrivals = Arrivals::new();
        let first = Instant::now() + Duration::from_millis(5);
        let second = first + Duration::from_millis(7);
        arrivals.record(first);
        arrivals.record(second);
        assert_eq!(arrivals.latest(), Some(second));
        // Before its own start (a stamp from before the stream existed) is its start.
        arrivals.record(arrivals.base - Duration::from_millis(1));
        assert_eq!(arrivals.latest(), Some(arrivals.base));
    }

    /// A stamp further back than `max_arrival_correction` (a lost segment's successor, a clock
    /// stepped) moves the phase's end back by that much only.
    #[tokio::test]
    async fn an_arrival_is_at_most_the_correction_before_its_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move { listener.accept().await.unwrap() });
        let (stream, _) = StampedStream::new(
            TcpStream::connect(address).await.unwrap(),
            Duration::from_millis(20),
        );
        let _server = accepting.await.unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let before = Instant::now();
        let arrived = stream.arrived(Some(hour_ago));
        let after = Instant::now();
        assert!(
            arrived + Duration::from_millis(20) >= before,
            "{:?}",
            before - arrived
        );
        assert!(arrived + Duration::from_millis(20) <= after);
        // No stamp, or one from the future (a clock stepped back): the read's own time.
        let future = SystemTime::now() + Duration::from_secs(60);
        assert!(stream.arrived(Some(future)) >= after);
        assert!(stream.arrived(None) >= after);
    }

    /// `max_arrival_correction = "0s"` asks the kernel for nothing.
    #[tokio::test]
    async fn a_zero_correction_turns_stamping_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stream, _) =
            StampedStream::new(TcpStream::connect(address).await.unwrap(), Duration::ZERO);
        assert!(!stream.is_stamped());
    }
}
