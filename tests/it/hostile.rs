//! Hostile targets: one test server per misbehaviour (silent, slowloris, a huge header block,
//! endless or over-long bodies, resets, garbage, stalled or refused TLS, the wrong certificate,
//! endless redirects, a gzip bomb, a thousand hanging instances). Each case asserts the exact
//! error kind, that the probe ends within its timeout (bounds are generous: the point is that
//! it ends), and that the open file descriptors of this process come back to their baseline
//! once the probe and the server are gone. A last test repeats the heavy cases and bounds the
//! growth of the resident memory.

use crate::common;

use bastion_agent::messages::Response;
use bastion_agent::model::ErrorKind;
use common::*;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Descriptors that may stay open beyond the baseline (the runtime may open one lazily).
const FD_SLACK: usize = 2;

/// Open file descriptors of this process (entries of /proc/self/fd).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd is readable")
        .count()
}

/// Resident memory of this process, in KiB (VmRSS of /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Waits (generously) until the descriptor count is back to `baseline` plus slack. Sockets
/// of aborted server tasks close when the runtime drops those tasks, a moment later.
async fn assert_fds_back_to(baseline: usize, case: &str) {
    let started = Instant::now();
    loop {
        let now = open_fds();
        if now <= baseline + FD_SLACK {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{case}: {now} descriptors open after the probe, {baseline} before"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server that hands each accepted connection to a misbehaving handler. `stop` aborts the
/// accept loop and every handler, which closes the server's side of every connection; what
/// stays open after that belongs to the prober.
struct HostileServer {
    address: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    accepted: Arc<AtomicUsize>,
}

impl HostileServer {
    async fn start<F, Fut>(ip: &str, handler: F) -> HostileServer
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        let address = listener.local_addr().expect("address");
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let accept_loop = {
            let tasks = Arc::clone(&tasks);
            let accepted = Arc::clone(&accepted);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let handler = Arc::clone(&handler);
                    let task = tokio::spawn(async move { handler(stream).await });
                    tasks.lock().unwrap().push(task.abort_handle());
                }
            })
        };
        tasks.lock().unwrap().push(accept_loop.abort_handle());
        HostileServer {
            address,
            tasks,
            accepted,
        }
    }

    fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Holds a connection open, doing nothing, until the server stops.
async fn hold(stream: TcpStream) {
    let _open = stream;
    std::future::pending::<()>().await;
}

/// Reads the request head, then writes `bytes` and holds the connection.
async fn answer_then_hold(mut stream: TcpStream, bytes: Vec<u8>) {
    if read_head(&mut stream).await.is_none() {
        return;
    }
    let _ = stream.write_all(&bytes).await;
    hold(stream).await;
}

/// Reads the request head, writes `bytes`, then resets the connection (RST, not FIN).
async fn answer_then_reset(mut stream: TcpStream, bytes: Vec<u8>, pause: Duration) {
    if read_head(&mut stream).await.is_none() {
        return;
    }
    let _ = stream.write_all(&bytes).await;
    let _ = stream.flush().await;
    tokio::time::sleep(pause).await;
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// One hostile case: a check of `url` with `extra` keys (`{address}`, `{ip}` and `{port}` stand
/// for the server's),
/// probed once. Returns the response and how long the run took, after asserting that every
/// descriptor opened for it was closed again.
async fn probe_hostile<F, Fut>(
    case: &str,
    url: &str,
    extra: &str,
    handler: F,
) -> (Response, Duration, usize)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let baseline = open_fds();
    let server = HostileServer::start("127.0.0.2", handler).await;
    let fill = |text: &str| {
        text.replace("{address}", &server.address.to_string())
            .replace("{ip}", &server.address.ip().to_string())
            .replace("{port}", &server.address.port().to_string())
    };
    let (url, extra) = (fill(url), fill(extra));
    let config = config(&format!(
        r#"
        [runner]
        max_body_bytes = 65536
        [[checks]]
        name = "hostile"
        type = "http"
        interval = "30s"
        url = "{url}"
        {extra}
        "#
    ));
    let started = Instant::now();
    let mut result = run_single(&config).await;
    let elapsed = started.elapsed();
    assert_eq!(result.responses.len(), 1, "{case}: {result:?}");
    let accepted = server.accepted.load(Ordering::SeqCst);
    server.stop();
    drop(server);
    assert_fds_back_to(baseline, case).await;
    (result.responses.remove(0), elapsed, accepted)
}

fn error_of<'a>(case: &str, response: &'a Response) -> &'a bastion_agent::model::ProbeError {
    response
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("{case}: expected an error, got {response:?}"))
}

/// The probe's own timeout plus a generous margin for a loaded machine.
fn within(timeout_seconds: u64) -> Duration {
    Duration::from_secs(timeout_seconds) + PATIENCE
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_accepts_and_then_says_nothing_times_out_in_processing() {
    let (response, elapsed, _) =
        probe_hostile("silent", "http://{address}/", r#"timeout = "1s""#, hold).await;
    let error = error_of("silent", &response);
    assert_eq!(error.kind, ErrorKind::Timeout, "{error:?}");
    assert!(
        error.message.ends_with("during processing"),
        "{}",
        error.message
    );
    assert!(!response.passing);
    assert!(elapsed < within(1), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_one_byte_a_second_time_out() {
    let (response, elapsed, _) = probe_hostile(
        "slowloris",
        "http://{address}/",
        r#"timeout = "2s""#,
        |mut stream: TcpStream| async move {
            if read_head(&mut stream).await.is_none() {
                return;
            }
            for byte in b"HTTP/1.1 200 OK\r\nx-slow: ".iter().cycle() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        },
    )
    .await;
    let error = error_of("slowloris", &response);
    assert_eq!(error.kind, ErrorKind::Timeout, "{error:?}");
    assert!(
        error.message.ends_with("during processing"),
        "{}",
        error.message
    );
    assert!(elapsed < within(2), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_over_one_mebibyte_is_refused_as_invalid_http() {
    let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
    head.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
    let head = Arc::new(head);
    let (response, elapsed, _) = probe_hostile(
        "huge header",
        "http://{address}/",
        r#"timeout = "10s""#,
        move |stream| answer_then_hold(stream, head.to_vec()),
    )
    .await;
    let error = error_of("huge header", &response);
    assert_eq!(error.kind, ErrorKind::Http, "{error:?}");
    assert!(
        error.message.contains("invalid HTTP response") && error.message.contains("too large"),
        "{}",
        error.message
    );
    assert!(response.http.is_none());
    assert!(elapsed < within(10), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_cut_at_max_body_bytes_before_the_timeout() {
    let (response, elapsed, _) = probe_hostile(
        "endless body",
        "http://{address}/",
        r#"timeout = "20s""#,
        |mut stream: TcpStream| async move {
            if read_head(&mut stream).await.is_none() {
                return;
            }
            let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head).await.is_err() {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
            while stream.write_all(chunk.as_bytes()).await.is_ok() {}
        },
    )
    .await;
    assert!(response.error.is_none(), "{response:?}");
    let http = response.http.as_ref().expect("http details");
    assert_eq!(http.status, 200);
    assert!(http.truncated);
    assert_eq!(http.body.len(), 65536);
    assert!(http.body.bytes().all(|b| b == b'x'));
    // It ended on the cap, not on the timeout.
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_its_content_length_is_read_to_the_length_only() {
    let answer =
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello, and bytes past the length".to_vec();
    let (response, elapsed, _) = probe_hostile(
        "body past length",
        "http://{address}/",
        r#"timeout = "10s""#,
        move |stream| answer_then_hold(stream, answer.clone()),
    )
    .await;
    assert!(response.error.is_none(), "{response:?}");
    let http = response.http.as_ref().expect("http details");
    assert_eq!(http.body, "hello");
    assert!(!http.truncated);
    assert!(response.passing);
    assert!(elapsed < within(10), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_content_length_is_a_body_error() {
    let (response, _, _) = probe_hostile(
        "closed mid-body",
        "http://{address}/",
        r#"timeout = "10s""#,
        |mut stream: TcpStream| async move {
            if read_head(&mut stream).await.is_none() {
                return;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nonly this")
                .await;
            let _ = stream.shutdown().await;
        },
    )
    .await;
    let error = error_of("closed mid-body", &response);
    assert_eq!(error.kind, ErrorKind::Body, "{error:?}");
    assert!(
        error.message.starts_with("reading the body"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_in_the_middle_of_the_headers_is_an_http_error() {
    let (response, elapsed, _) = probe_hostile(
        "reset mid-headers",
        "http://{address}/",
        r#"timeout = "10s""#,
        |stream| {
            answer_then_reset(
                stream,
                b"HTTP/1.1 200 OK\r\ncontent-le".to_vec(),
                Duration::ZERO,
            )
        },
    )
    .await;
    let error = error_of("reset mid-headers", &response);
    assert_eq!(error.kind, ErrorKind::Http, "{error:?}");
    assert!(response.http.is_none());
    assert!(elapsed < within(10), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_in_the_middle_of_the_body_is_a_body_error() {
    // The pause lets the head arrive and be read before the reset; a reset that overtook the
    // head would be the previous case.
    let (response, elapsed, _) = probe_hostile(
        "reset mid-body",
        "http://{address}/",
        r#"timeout = "10s""#,
        |stream| {
            answer_then_reset(
                stream,
                b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nsome of it".to_vec(),
                Duration::from_millis(300),
            )
        },
    )
    .await;
    let error = error_of("reset mid-body", &response);
    assert_eq!(error.kind, ErrorKind::Body, "{error:?}");
    assert!(elapsed < within(10), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_http_and_random_bytes_are_http_errors() {
    let mut rng = XorShift(0xB45_7104);
    let random: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    for (case, answer) in [
        ("invalid HTTP", b"HELLO THERE\r\n\r\n".to_vec()),
        ("random bytes", random),
    ] {
        let answer = Arc::new(answer);
        let (response, elapsed, _) = probe_hostile(
            case,
            "http://{address}/",
            r#"timeout = "10s""#,
            move |stream| answer_then_hold(stream, answer.to_vec()),
        )
        .await;
        let error = error_of(case, &response);
        assert_eq!(error.kind, ErrorKind::Http, "{case}: {error:?}");
        assert!(
            error.message.starts_with("invalid HTTP response"),
            "{case}: {}",
            error.message
        );
        assert!(elapsed < within(10), "{case}: took {elapsed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_times_out_in_the_tls_phase() {
    let (response, elapsed, _) = probe_hostile(
        "stalled TLS",
        "https://{address}/",
        r#"timeout = "1s""#,
        hold,
    )
    .await;
    let error = error_of("stalled TLS", &response);
    assert_eq!(error.kind, ErrorKind::Timeout, "{error:?}");
    assert!(error.message.ends_with("during tls"), "{}", error.message);
    assert!(elapsed < within(1), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_alert_is_a_tls_error() {
    let (response, elapsed, _) = probe_hostile(
        "TLS alert",
        "https://{address}/",
        r#"timeout = "10s""#,
        |mut stream: TcpStream| async move {
            // Wait for the ClientHello, then refuse it: a fatal handshake_failure alert.
            let mut hello = [0u8; 5];
            if stream.read_exact(&mut hello).await.is_err() {
                return;
            }
            let _ = stream
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
                .await;
            hold(stream).await;
        },
    )
    .await;
    let error = error_of("TLS alert", &response);
    assert_eq!(error.kind, ErrorKind::Tls, "{error:?}");
    assert!(
        error.message.contains("HandshakeFailure"),
        "{}",
        error.message
    );
    assert!(elapsed < within(10), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_a_tls_error() {
    let ca = TestCa::new("hostile CA");
    let leaf = ca.leaf(
        &["somebody-else.test"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let server_config = leaf.server_config(&[b"http/1.1"]);
    let extra = format!(
        "timeout = \"10s\"\ninstances = [\"{{ip}}\"]\ntls = {{ ca_file = \"{}\" }}",
        ca.ca_file.display()
    );
    let (response, elapsed, _) = probe_hostile(
        "wrong name",
        "https://svc.test:{port}/",
        &extra,
        move |stream| {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&server_config));
            async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    let _open = tls;
                    std::future::pending::<()>().await;
                }
            }
        },
    )
    .await;
    let error = error_of("wrong name", &response);
    assert_eq!(error.kind, ErrorKind::Tls, "{error:?}");
    assert!(
        error
            .message
            .contains("certificate not valid for name \"svc.test\""),
        "{}",
        error.message
    );
    assert!(elapsed < within(10), "took {elapsed:?}");
}

/// Answers `/r/N` with a redirect to `/r/N+1` until `last`, and `200 OK` there.
async fn redirect_chain(mut stream: TcpStream, last: usize) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let hop: usize = head
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.strip_prefix("/r/"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if hop >= last {
        respond(&mut stream, "200 OK", &[], "arrived").await;
    } else {
        let location = format!("/r/{}", hop + 1);
        respond(&mut stream, "302 Found", &[("location", &location)], "").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_redirects_stop_after_ten() {
    let (response, elapsed, accepted) = probe_hostile(
        "redirect loop",
        "http://{address}/r/0",
        "timeout = \"20s\"\nfollow_redirects = true",
        |stream| redirect_chain(stream, 10_000),
    )
    .await;
    let error = error_of("redirect loop", &response);
    assert_eq!(error.kind, ErrorKind::Http, "{error:?}");
    assert!(
        error
            .message
            .starts_with("stopped after 10 redirects; the last pointed to http://")
            && error.message.ends_with("/r/11"),
        "{}",
        error.message
    );
    // The first request and ten redirects followed: eleven connections, no more.
    assert_eq!(accepted, 11);
    assert!(elapsed < within(20), "took {elapsed:?}");

    // Exactly ten redirects are still followed to the end.
    let (response, _, accepted) = probe_hostile(
        "ten redirects",
        "http://{address}/r/0",
        "timeout = \"20s\"\nfollow_redirects = true",
        |stream| redirect_chain(stream, 10),
    )
    .await;
    assert!(response.passing, "{response:?}");
    let http = response.http.as_ref().expect("http details");
    assert_eq!((http.redirects, http.body.as_str()), (10, "arrived"));
    assert_eq!(accepted, 11);
}

/// 128 MiB of zeros, gzipped by the system's gzip (about 128 KiB on the wire).
fn gzip_bomb() -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut gzip = Command::new("gzip")
        .args(["-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip runs");
    let mut stdin = gzip.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..128 {
            stdin.write_all(&zeros).expect("feed gzip");
        }
    });
    let output = gzip.wait_with_output().expect("gzip output");
    writer.join().expect("writer");
    assert!(output.status.success());
    assert_eq!(&output.stdout[..2], &[0x1f, 0x8b], "a gzip stream");
    output.stdout
}

/// bastion asks for no compression and never decompresses: a gzip bomb is reported as the
/// compressed bytes it is, cut at max_body_bytes, and memory never sees the 128 MiB inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_reported_raw_and_capped_never_inflated() {
    let bomb = Arc::new(gzip_bomb());
    assert!(bomb.len() > 65536, "the bomb is larger than the cap");
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let (response, _, _) = probe_hostile("gzip bomb", "http://{address}/", r#"timeout = "10s""#, {
        let bomb = Arc::clone(&bomb);
        let heads = Arc::clone(&heads);
        move |mut stream: TcpStream| {
            let bomb = Arc::clone(&bomb);
            let heads = Arc::clone(&heads);
            async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                heads.lock().unwrap().push(head);
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
                    bomb.len()
                )
                .into_bytes();
                answer.extend_from_slice(&bomb);
                let _ = stream.write_all(&answer).await;
                hold(stream).await;
            }
        }
    })
    .await;
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!(
        header(&heads[0], "accept-encoding"),
        None,
        "the probe asks for no compression: {}",
        heads[0]
    );
    assert!(response.error.is_none(), "{response:?}");
    let http = response.http.as_ref().expect("http details");
    assert_eq!(http.headers.get("content-encoding"), Some("gzip"));
    assert!(http.truncated);
    assert_eq!(http.body, String::from_utf8_lossy(&bomb[..65536]));
}

/// A thousand instances behind one check, every one hanging: the pool never runs more probes
/// than it has workers, the tasks that get no worker by the dispatch deadline end as
/// `dispatch_timeout`, the run ends within deadline + timeout, and a check of another type on
/// the same dispatcher keeps passing on schedule all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hanging_instances_hold_the_pool_bounds_and_spare_other_checks() {
    const INSTANCES: usize = 1000;
    const WORKERS: usize = 50;
    ensure_fd_limit(4 * INSTANCES as u64);
    let baseline = open_fds();
    // Listeners that never accept: the kernel completes each connection and nobody answers.
    let mut hanging = Vec::new();
    for _ in 0..INSTANCES {
        hanging.push(TcpListener::bind("127.0.0.2:0").await.expect("bind"));
    }
    let instances: Vec<String> = hanging
        .iter()
        .map(|listener| format!("\"{}\"", listener.local_addr().expect("address")))
        .collect();
    let healthy = TcpListener::bind("127.0.0.3:0").await.expect("bind");
    let healthy_address = healthy.local_addr().expect("address");
    let healthy_task = tokio::spawn(async move {
        while let Ok((stream, _)) = healthy.accept().await {
            drop(stream);
        }
    });
    let config = config(&format!(
        r#"
        [runner]
        dispatch_deadline = "2s"
        [runner.workers]
        http = {WORKERS}
        tcp = 2
        [[checks]]
        name = "hanging"
        type = "http"
        interval = "30s"
        timeout = "1s"
        url = "http://svc.internal/"
        instances = [{}]
        [[checks]]
        name = "bystander"
        type = "tcp"
        interval = "5s"
        timeout = "2s"
        address = "{healthy_address}"
        "#,
        instances.join(", ")
    ));
    let (dispatcher, _) = dispatcher(&config);
    let started = Instant::now();
    let run = {
        let dispatcher = Arc::clone(&dispatcher);
        let config = config.clone();
        tokio::spawn(async move { run_check(&dispatcher, &config, "hanging").await })
    };
    // While it runs: watch the pool, and run the bystander every 200 ms.
    let mut most_busy = 0;
    let mut bystander_runs = 0;
    while !run.is_finished() {
        let usage = dispatcher.usage();
        most_busy = most_busy.max(usage[&bastion_agent::checks::CheckType::Http].busy);
        let bystander_started = Instant::now();
        let bystander = run_check(&dispatcher, &config, "bystander").await;
        assert!(bystander.passing, "{bystander:?}");
        assert!(
            bystander_started.elapsed() < Duration::from_secs(10),
            "the bystander waited {:?}",
            bystander_started.elapsed()
        );
        bystander_runs += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = run.await.expect("the run");
    let elapsed = started.elapsed();
    assert!(
        bystander_runs >= 3,
        "the bystander ran {bystander_runs} times"
    );
    assert!(most_busy <= WORKERS, "{most_busy} workers busy");
    assert_eq!(result.responses.len(), INSTANCES);
    let count = |kind| {
        result
            .responses
            .iter()
            .filter(|response| response.error.as_ref().map(|error| error.kind) == Some(kind))
            .count()
    };
    let (timeouts, undispatched) = (count(ErrorKind::Timeout), count(ErrorKind::DispatchTimeout));
    assert_eq!(timeouts + undispatched, INSTANCES, "{result:?}");
    // Each worker can start a 1 s probe at 0 s, 1 s and 2 s at the latest: at most three each.
    assert!(
        (WORKERS..=3 * WORKERS).contains(&timeouts),
        "{timeouts} probes ran"
    );
    assert!(undispatched >= INSTANCES - 3 * WORKERS);
    assert!(!result.passing);
    assert!(
        elapsed < Duration::from_secs(3) + PATIENCE,
        "the run took {elapsed:?}"
    );
    drop(hanging);
    healthy_task.abort();
    drop(dispatcher);
    assert_fds_back_to(baseline, "a thousand instances").await;
}

/// Raises this process's soft descriptor limit to at least `needed` (up to the hard limit),
/// with util-linux's prlimit: no unsafe code in the tests either.
fn ensure_fd_limit(needed: u64) {
    let soft = || {
        std::fs::read_to_string("/proc/self/limits")
            .expect("/proc/self/limits")
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3).map(str::to_string))
            .expect("Max open files")
    };
    let current = soft();
    if current == "unlimited" || current.parse::<u64>().is_ok_and(|soft| soft >= needed) {
        return;
    }
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={needed}:"))
        .status()
        .expect("prlimit runs");
    assert!(
        status.success(),
        "this test needs {needed} open files; raise `ulimit -n`"
    );
    let raised = soft();
    assert!(
        raised == "unlimited" || raised.parse::<u64>().is_ok_and(|soft| soft >= needed),
        "the soft limit is {raised}, the test needs {needed}"
    );
}

/// Repeated hostile probes do not make memory grow: after a warm-up, 40 more rounds of the
/// heaviest cases (a 2 MiB header block, an endless body, random bytes) must not add more than
/// 32 MiB of resident memory, and descriptors return to their baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_hostile_probes_do_not_grow_memory_or_descriptors() {
    let mut huge = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let huge = Arc::new(huge);
    let mut rng = XorShift(0x5EED);
    let random: Arc<Vec<u8>> = Arc::new((0..65536).map(|_| rng.next() as u8).collect());
    let server = HostileServer::start("127.0.0.2", move |mut stream: TcpStream| {
        let huge = Arc::clone(&huge);
        let random = Arc::clone(&random);
        async move {
            let Some(head) = read_head(&mut stream).await else {
                return;
            };
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            match path.as_str() {
                "/huge" => {
                    let _ = stream.write_all(&huge).await;
                }
                "/endless" => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    let chunk = format!("4000\r\n{}\r\n", "y".repeat(0x4000));
                    while stream.write_all(chunk.as_bytes()).await.is_ok() {}
                }
                _ => {
                    let _ = stream.write_all(&random).await;
                }
            }
        }
    })
    .await;
    let address = server.address;
    let config = config(&format!(
        r#"
        [runner]
        max_body_bytes = 1048576
        [[checks]]
        name = "huge"
        type = "http"
        interval = "30s"
        timeout = "10s"
        url = "http://{address}/huge"
        [[checks]]
        name = "endless"
        type = "http"
        interval = "30s"
        timeout = "10s"
        url = "http://{address}/endless"
        [[checks]]
        name = "random"
        type = "http"
        interval = "30s"
        timeout = "10s"
        url = "http://{address}/random"
        "#
    ));
    let (dispatcher, _) = dispatcher(&config);
    let round = || async {
        for (name, kind) in [
            ("huge", Some(ErrorKind::Http)),
            ("endless", None),
            ("random", Some(ErrorKind::Http)),
        ] {
            let result = run_check(&dispatcher, &config, name).await;
            assert_eq!(result.responses[0].error_kind(), kind, "{name}: {result:?}");
        }
    };
    for _ in 0..10 {
        round().await;
    }
    let fds_after_warm_up = open_fds();
    let rss_after_warm_up = rss_kib();
    for _ in 0..40 {
        round().await;
    }
    let rss_after = rss_kib();
    assert!(
        rss_after <= rss_after_warm_up + 32 * 1024,
        "resident memory grew from {rss_after_warm_up} KiB to {rss_after} KiB"
    );
    assert_fds_back_to(fds_after_warm_up, "repeated probes").await;
    eprintln!("rss after warm-up {rss_after_warm_up} KiB, after 120 more probes {rss_after} KiB");
}
