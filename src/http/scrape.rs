//! `/metrics`: which checks a scrape asks for, one full render at a time shared among the
//! scrapes that wait for it, and the answer sent in the chunks it was written in, gzipped
//! chunk by chunk (the text and its gzip are never both whole in memory, and nothing the size
//! of the text is ever allocated in one piece).

use super::{accepts_gzip, history_api, ApiState, CheckIndex, GZIP_FROM};
use crate::metrics::{CheckSelection, ChunkedText};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// What `/metrics` takes: `group=` (repeatable, or comma-separated) and `checks=all|none`.
const METRICS_PARAMS: &str = "/metrics takes group=NAME (repeatable, or comma-separated: the per-check series of those groups' checks only) and checks=all|none (none: the agent's own series only)";

/// The checks a scrape asks for, from its query (`None`: every check). Unknown parameters,
/// empty values and `checks=none` with a group are refused with what is accepted.
fn metrics_selection(query: Option<&str>, checks: &CheckIndex) -> Result<CheckSelection, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|error| format!("the query cannot be read ({error}); {METRICS_PARAMS}"))?;
    let mut groups: Vec<String> = Vec::new();
    let mut none = None;
    for (name, value) in pairs {
        match name.as_str() {
            "group" => {
                for group in value.split(',') {
                    if group.is_empty() {
                        return Err(format!("group= has an empty value; {METRICS_PARAMS}"));
                    }
                    groups.push(group.to_string());
                }
            }
            "checks" => {
                let this = match value.as_str() {
                    "all" => false,
                    "none" => true,
                    _ => {
                        let shown: String = value.chars().take(40).collect();
                        return Err(format!(
                            "checks `{shown}` is not all or none; {METRICS_PARAMS}"
                        ));
                    }
                };
                if none.is_some_and(|before| before != this) {
                    return Err(format!(
                        "checks= is given as both all and none; {METRICS_PARAMS}"
                    ));
                }
                none = Some(this);
            }
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!("unknown parameter `{shown}`; {METRICS_PARAMS}"));
            }
        }
    }
    match (none == Some(true), groups.is_empty()) {
        // `checks=none` leaves every check out, whatever groups are named with it: each
        // parameter is valid alone, so their combination answers too (the contract's
        // parameters are independent) and takes the narrower.
        (true, _) => Ok(CheckSelection::None),
        (false, true) => Ok(CheckSelection::All),
        (false, false) => {
            // A group no check has selects nothing: it is not an error (groups come and go
            // with reloads, and a scrape config should not break for it).
            let chosen = checks
                .all()
                .iter()
                .filter(|check| {
                    check
                        .group
                        .as_deref()
                        .is_some_and(|group| groups.iter().any(|asked| asked == group))
                })
                .map(|check| check.name.clone())
                .collect();
            Ok(CheckSelection::Only(Arc::new(chosen)))
        }
    }
}

/// How fresh a shared `/metrics` text must be for a scrape that did not wait for its render.
const SHARED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// How many scrapes of groups may render at once; a full scrape takes every slot, so it
/// renders alone (each holds a whole text, hundreds of MB at 100,000 checks); `checks=none`
/// takes none (a few KB), so the agent's health scrape never waits behind a full one.
pub(super) const RENDER_SLOTS: u32 = 4;

/// `/metrics`'s renders: bounded by `RENDER_SLOTS`, and the last one's body, shared with a
/// scrape of the same selection and encoding that waited for it or came within `SHARED_FOR`.
/// Only a weak reference is kept: the text lives as long as some answer is still sending it,
/// never longer.
#[derive(Debug)]
pub struct Scrapes {
    pub(super) permit: Arc<tokio::sync::Semaphore>,
    last: std::sync::Mutex<Option<LastScrape>>,
}

#[derive(Debug)]
struct LastScrape {
    selection: CheckSelection,
    gzipped: bool,
    done: tokio::time::Instant,
    body: std::sync::Weak<ScrapeBody>,
}

impl Default for Scrapes {
    fn default() -> Self {
        Scrapes {
            permit: Arc::new(tokio::sync::Semaphore::new(RENDER_SLOTS as usize)),
            last: std::sync::Mutex::new(None),
        }
    }
}

impl Scrapes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<LastScrape>> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last render's body, if it fits a scrape that arrived at `arrived`.
    fn shared(
        &self,
        selection: &CheckSelection,
        gzip: bool,
        arrived: tokio::time::Instant,
    ) -> Option<Arc<ScrapeBody>> {
        let last = self.lock();
        let last = last.as_ref()?;
        let fresh = last.done >= arrived || last.done.elapsed() < SHARED_FOR;
        // A gzipped body serves only a client that takes gzip; a plain one only one that
        // does not (it asked for plain, or the body was too small to be worth it).
        let fits = &last.selection == selection && last.gzipped == gzip;
        if fresh && fits {
            last.body.upgrade()
        } else {
            None
        }
    }
}

/// A rendered `/metrics` answer: its chunks in order, gzipped or not, shared with the
/// scrapes that came for the same render.
#[derive(Debug)]
pub(super) struct ScrapeBody {
    chunks: Vec<Bytes>,
    len: u64,
    gzipped: bool,
}

impl ScrapeBody {
    /// `text` as the client takes it: gzipped (at the fastest level: the agent's CPU is for
    /// probes) when it accepts gzip and the text is large enough to be worth it. Each chunk
    /// of text is dropped once it is compressed. None when gzip fails (it writes to memory,
    /// so it should not): the answer is then an error, never a truncated body.
    fn encode(text: ChunkedText, gzip: bool) -> Option<ScrapeBody> {
        if !gzip || text.len() < GZIP_FROM {
            let len = text.len() as u64;
            return Some(ScrapeBody {
                chunks: text.into_bytes(),
                len,
                gzipped: false,
            });
        }
        use std::io::Write;
        let mut encoder =
            flate2::write::GzEncoder::new(GzipChunks::default(), flate2::Compression::fast());
        for chunk in text.into_chunks() {
            encoder.write_all(chunk.as_bytes()).ok()?;
        }
        let mut out = encoder.finish().ok()?;
        out.close();
        Some(ScrapeBody {
            len: out.chunks.iter().map(|chunk| chunk.len() as u64).sum(),
            chunks: out.chunks,
            gzipped: true,
        })
    }
}

/// Where gzip writes: chunks of `GZIP_CHUNK` bytes, never one growing buffer.
#[derive(Debug, Default)]
struct GzipChunks {
    chunks: Vec<Bytes>,
    current: Vec<u8>,
}

/// The size of a chunk of gzipped output (the text's size, for the same reasons).
const GZIP_CHUNK: usize = 32 * 1024;

impl GzipChunks {
    fn close(&mut self) {
        if !self.current.is_empty() {
            self.chunks
                .push(Bytes::from(std::mem::take(&mut self.current)));
        }
    }
}

impl std::io::Write for GzipChunks {
    fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<usize> {
        let written = bytes.len();
        while !bytes.is_empty() {
            if self.current.capacity() == 0 {
                self.current.reserve_exact(GZIP_CHUNK);
            }
            let room = GZIP_CHUNK.saturating_sub(self.current.len()).max(1);
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.current.extend_from_slice(now);
            bytes = later;
            if self.current.len() >= GZIP_CHUNK {
                self.close();
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The answer's body: the shared chunks, sent one frame each, with their exact length (so
/// the answer has a `Content-Length`, as a whole body had).
struct ChunksBody {
    body: Arc<ScrapeBody>,
    next: usize,
    remaining: u64,
}

impl http_body::Body for ChunksBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(chunk) = this.body.chunks.get(this.next) else {
            return Poll::Ready(None);
        };
        this.next += 1;
        this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.body.chunks.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

pub(super) async fn metrics(
    State(state): State<ApiState>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let arrived = tokio::time::Instant::now();
    let selection = match metrics_selection(query.as_deref(), &state.checks.current()) {
        Ok(selection) => selection,
        Err(message) => return history_api::error(StatusCode::BAD_REQUEST, message),
    };
    let gzip = accepts_gzip(&headers);
    let scrapes = Arc::clone(&state.scrapes);
    let slots = match &selection {
        CheckSelection::All => RENDER_SLOTS,
        CheckSelection::Only(_) => 1,
        CheckSelection::None => 0,
    };
    // A full render at a time: concurrent scrapes wait here, then share what it made.
    let Ok(permit) = Arc::clone(&scrapes.permit).acquire_many_owned(slots).await else {
        return history_api::error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    };
    let rendered = match scrapes.shared(&selection, gzip, arrived) {
        Some(shared) => Ok(Some(shared)),
        None => {
            // Rendering thousands of checks' series (and gzipping them: Prometheus asks for
            // gzip) is CPU work of tens to hundreds of milliseconds: on the blocking pool it
            // cannot hold up the probes that share the async workers.
            let metrics = Arc::clone(&state.metrics);
            let scrapes = Arc::clone(&scrapes);
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let text = metrics.render_chunks(&selection);
                let body = Arc::new(ScrapeBody::encode(text, gzip)?);
                *scrapes.lock() = Some(LastScrape {
                    selection,
                    gzipped: body.gzipped,
                    done: tokio::time::Instant::now(),
                    body: Arc::downgrade(&body),
                });
                Some(body)
            })
            .await
        }
    };
    match rendered {
        Ok(Some(body)) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            if body.gzipped {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            let remaining = body.len;
            let body = axum::body::Body::new(ChunksBody {
                body,
                next: 0,
                remaining,
            });
            (StatusCode::OK, headers, body).into_response()
        }
        Ok(None) => {
            tracing::warn!("gzipping /metrics failed");
            render_failed()
        }
        Err(error) => {
            tracing::warn!(%error, "rendering /metrics failed");
            render_failed()
        }
    }
}

/// The answer when a render failed; the log says why.
fn render_failed() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "rendering the metrics failed; see the agent's log\n".to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A text of `lines` samples, written as a render writes it.
    fn sample_text(lines: usize) -> (ChunkedText, String) {
        let mut text = ChunkedText::new();
        let mut whole = String::new();
        for at in 0..lines {
            let line = format!("probe_success{{check=\"web-{at}\",target=\"10.0.0.1:443\"}} 1\n");
            text.push_str(&line);
            whole.push_str(&line);
        }
        (text, whole)
    }

    async fn sent(body: ScrapeBody) -> (Option<u64>, Vec<u8>) {
        let body = ChunksBody {
            remaining: body.len,
            body: Arc::new(body),
            next: 0,
        };
        let exact = http_body::Body::size_hint(&body).exact();
        let bytes = body.collect().await.map(|all| all.to_bytes());
        (exact, bytes.map(|bytes| bytes.to_vec()).unwrap_or_default())
    }

    #[tokio::test]
    async fn a_plain_answer_is_the_text_in_its_chunks_with_its_exact_length() {
        let (text, whole) = sample_text(5_000);
        let body = ScrapeBody::encode(text, false).unwrap();
        assert!(!body.gzipped);
        assert!(body.chunks.len() > 3, "{} chunks", body.chunks.len());
        let (exact, bytes) = sent(body).await;
        assert_eq!(exact, Some(whole.len() as u64));
        assert_eq!(bytes, whole.as_bytes());
    }

    #[tokio::test]
    async fn a_gzipped_answer_unzips_to_the_text_and_small_ones_stay_plain() {
        let (text, whole) = sample_text(20_000);
        let body = ScrapeBody::encode(text, true).unwrap();
        assert!(body.gzipped);
        assert!(body.chunks.iter().all(|chunk| chunk.len() <= GZIP_CHUNK));
        let (exact, zipped) = sent(body).await;
        assert_eq!(exact, Some(zipped.len() as u64));
        let mut unzipped = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(zipped.as_slice()),
            &mut unzipped,
        )
        .unwrap();
        assert_eq!(unzipped, whole);

        let (small, whole) = sample_text(1);
        let body = ScrapeBody::encode(small, true).unwrap();
        assert!(!body.gzipped, "below GZIP_FROM nothing is gained");
        assert_eq!(sent(body).await.1, whole.as_bytes());
    }
}
