//! `compression` against a real server: each coding (gzip, deflate, br, zstd, compressed here by
//! the system's gzip, brotli and zstd and by flate2) is asked for in Accept-Encoding and decoded
//! before the body is judged, in the transfer phase; without the key the same body is judged
//! as the compressed bytes it is. A body that decodes to more than `runner.max_body_bytes`, or
//! a zstd frame that asks for a huge window, is a `body` error, never memory growth.

use crate::common;

use bastion_agent::messages::Response;
use bastion_agent::model::ErrorKind;
use common::tools::tool;
use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// `input` through `program args` (stdin to stdout).
fn through(program: std::path::PathBuf, args: &[&str], input: Vec<u8>) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(&program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{}: {error}", program.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input).expect("feed the compressor"));
    let output = child.wait_with_output().expect("compressor output");
    writer.join().expect("writer");
    assert!(output.status.success(), "{} failed", program.display());
    output.stdout
}

fn compress(coding: &str, input: Vec<u8>, extra: &[&str]) -> Vec<u8> {
    match coding {
        "gzip" => through(
            tool("GZIP_PROGRAM", "gzip", "/usr/bin/gzip", "install gzip"),
            &[&["-c"], extra].concat(),
            input,
        ),
        "br" => through(
            tool(
                "BROTLI",
                "brotli",
                "/usr/bin/brotli",
                "install brotli (apt-get install brotli)",
            ),
            &[&["-c"], extra].concat(),
            input,
        ),
        "zstd" => through(
            tool(
                "ZSTD",
                "zstd",
                "/usr/bin/zstd",
                "install zstd (apt-get install zstd)",
            ),
            &[&["-c", "-q"], extra].concat(),
            input,
        ),
        "deflate" => {
            use std::io::Write;
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(&input).unwrap();
            encoder.finish().unwrap()
        }
        other => panic!("no compressor for {other}"),
    }
}

/// Serves `body` with `Content-Encoding: coding` (none when empty) to every request, and
/// records the Accept-Encoding each asked for.
async fn serve_encoded(
    coding: &'static str,
    body: Vec<u8>,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&asked);
    let body = Arc::new(body);
    serve(listener, move |mut request| {
        seen.lock().unwrap().push(
            header(&request.head, "accept-encoding")
                .unwrap_or("")
                .to_string(),
        );
        let body = Arc::clone(&body);
        async move {
            let encoding = if coding.is_empty() {
                String::new()
            } else {
                format!("content-encoding: {coding}\r\n")
            };
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{encoding}content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(&body);
            let _ = request.stream.write_all(&answer).await;
            let _ = request.stream.shutdown().await;
        }
    });
    (address, asked)
}

async fn probe(address: SocketAddr, keys: &str) -> Response {
    let config = config(&format!(
        "[runner]\nmax_body_bytes = 1048576\n[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"10s\"\ntimeout = \"8s\"\nurl = \"http://{address}/\"\n{keys}\n\
         [[checks.assertions]]\nkey = \"json\"\nvalue = \"$.status\"\nrelationship = \"equal\"\noperand = \"UP\"\n"
    ));
    run_single(&config).await.responses.remove(0)
}

#[tokio::test]
async fn each_coding_is_asked_for_and_decoded_before_the_body_is_judged() {
    let json = format!(
        "{{\"status\":\"UP\",\"padding\":\"{}\"}}",
        "abc".repeat(2000)
    );
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let (address, asked) =
            serve_encoded(coding, compress(coding, json.clone().into_bytes(), &[])).await;
        // As it comes, the body is compressed bytes: the JSON assertion cannot hold.
        let raw = probe(address, "").await;
        assert!(raw.error.is_none() && !raw.passing, "{coding}: {raw:?}");
        // Asked for and decoded, it is the JSON.
        let decoded = probe(address, &format!("compression = \"{coding}\"")).await;
        assert!(decoded.passing, "{coding}: {decoded:?}");
        let http = decoded.http.as_ref().expect("a response");
        assert_eq!(http.headers.get("content-encoding"), Some(coding));
        assert!(http.body.starts_with("{\"status\":\"UP\""), "{coding}");
        assert_eq!(
            *asked.lock().unwrap(),
            vec![String::new(), coding.to_string()],
            "{coding}"
        );
        // Decoding is in the transfer phase, and the phases still add up to the total.
        let t = &decoded.timings;
        let sum = t.resolve + t.connect + t.tls + t.processing + t.transfer;
        assert!((sum - t.total).abs() < 1e-6, "{coding}: {t:?}");
    }
}

#[tokio::test]
async fn a_decompression_bomb_is_a_body_error() {
    let zeros = vec![0u8; 32 * 1024 * 1024];
    let bombs = [
        ("gzip", compress("gzip", zeros.clone(), &["-9"])),
        ("br", compress("br", zeros.clone(), &["-q", "5"])),
        ("zstd", compress("zstd", zeros.clone(), &[])),
        // A frame that sets aside a 128 MiB window before it decodes anything.
        ("zstd", compress("zstd", zeros.clone(), &["--long=27"])),
    ];
    drop(zeros);
    for (coding, bomb) in bombs {
        assert!(
            bomb.len() < 1024 * 1024,
            "{coding}: {} bytes on the wire, under the cap",
            bomb.len()
        );
        let (address, _) = serve_encoded(coding, bomb).await;
        let response = probe(address, &format!("compression = \"{coding}\"")).await;
        let error = response.error.as_ref().expect("a bomb is refused");
        assert_eq!(error.kind, ErrorKind::Body, "{coding}: {error:?}");
        assert!(
            error.message.contains("decompression bomb"),
            "{coding}: {}",
            error.message
        );
        assert!(response.http.is_none(), "nothing of the body is kept");
    }
}

#[tokio::test]
async fn a_body_in_another_coding_is_a_body_error_and_an_uncompressed_one_is_judged() {
    let json = b"{\"status\":\"UP\"}".to_vec();
    let (address, _) = serve_encoded("br", compress("br", json.clone(), &[])).await;
    let response = probe(address, "compression = \"gzip\"").await;
    let error = response.error.expect("another coding");
    assert_eq!(error.kind, ErrorKind::Body);
    assert_eq!(
        error.message,
        "the body came with Content-Encoding `br`, not the gzip that compression asked for"
    );
    let (address, _) = serve_encoded("", json).await;
    let response = probe(address, "compression = \"zstd\"").await;
    assert!(response.passing, "{response:?}");
}
