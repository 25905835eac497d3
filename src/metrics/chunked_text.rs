//! Text written in chunks of a fixed size, for `/metrics`: a scrape of 10,000 checks is about
//! 25 MB of text and one of 100,000 about 250 MB. Built as one `String`, it grew by doubling
//! (copying itself at each step and holding up to twice its size), was then copied once more
//! into the answer, and each large buffer freed raised glibc's mmap threshold, so the next
//! scrape's buffers came from the heap and stayed there: 30 to 50 MiB of RSS kept after a
//! scrape at 10,000 checks (the daemon now allocates with jemalloc, which returns freed pages
//! on its own). In chunks, nothing is copied after it is written, a family's samples join the
//! answer by moving their chunks, no allocation is larger than a chunk (every scrape reuses
//! the same size of allocation, whatever the allocator), and the answer is sent chunk by chunk.

use bytes::Bytes;
use std::fmt;

/// The size of a chunk: large enough that a chunk holds hundreds of samples, small enough to
/// be an ordinary allocation (under glibc's mmap threshold of 128 KiB, jemalloc's small and
/// large classes alike: the library is used with either).
const CHUNK: usize = 32 * 1024;

/// The size of a text's first chunk.
const FIRST_CHUNK: usize = 512;

/// Append-only text held as a list of chunks of at most `CHUNK` bytes (a single write longer
/// than that gets a chunk of its own), each chunk valid UTF-8 on its own.
#[derive(Debug, Default)]
pub struct ChunkedText {
    chunks: Vec<String>,
    len: usize,
}

impl ChunkedText {
    pub fn new() -> ChunkedText {
        ChunkedText::default()
    }

    pub fn push_str(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.len += text.len();
        if let Some(last) = self.chunks.last_mut() {
            if last.capacity() - last.len() >= text.len() {
                last.push_str(text);
                return;
            }
        }
        // The first chunks grow from small (a family of one sample, a scrape of one group,
        // stays a few hundred bytes), then every chunk is `CHUNK`.
        let next = self
            .chunks
            .last()
            .map_or(FIRST_CHUNK, |last| (last.capacity() * 2).min(CHUNK));
        let mut chunk = String::with_capacity(next.max(text.len()));
        chunk.push_str(text);
        self.chunks.push(chunk);
    }

    pub fn push(&mut self, c: char) {
        self.push_str(c.encode_utf8(&mut [0; 4]));
    }

    /// Moves `other`'s chunks to the end of this text, copying nothing.
    pub fn append(&mut self, other: ChunkedText) {
        self.len += other.len;
        self.chunks.extend(other.chunks);
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks in order, each ready to send without a copy.
    pub fn into_bytes(self) -> Vec<Bytes> {
        self.chunks.into_iter().map(Bytes::from).collect()
    }

    /// The chunks in order, for a reader that consumes them one at a time.
    pub fn into_chunks(self) -> Vec<String> {
        self.chunks
    }

    /// The whole text as one `String` (one copy): for callers that want it whole (tests, a
    /// small render).
    pub fn into_string(self) -> String {
        let mut whole = String::with_capacity(self.len);
        for chunk in &self.chunks {
            whole.push_str(chunk);
        }
        whole
    }
}

impl fmt::Write for ChunkedText {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.push_str(text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_writes_fill_a_chunk_before_the_next_one_starts() {
        let mut text = ChunkedText::new();
        let line = "probe_success{check=\"web\"} 1\n";
        let lines = 4 * CHUNK / line.len();
        for _ in 0..lines {
            text.push_str(line);
        }
        assert_eq!(text.len(), lines * line.len());
        let chunks = text.into_chunks();
        assert!(chunks.iter().all(|chunk| chunk.len() <= CHUNK));
        // From small to `CHUNK`, each chunk filled before the next begins.
        assert!(chunks[0].capacity() < 1024, "{}", chunks[0].capacity());
        assert!(chunks
            .iter()
            .rev()
            .skip(1)
            .all(|chunk| chunk.len() + line.len() > chunk.capacity()));
        assert_eq!(chunks[chunks.len() - 2].capacity(), CHUNK);
        assert_eq!(chunks.concat(), line.repeat(lines));
    }

    #[test]
    fn a_write_longer_than_a_chunk_gets_its_own_and_the_order_is_kept() {
        let mut text = ChunkedText::new();
        text.push_str("head\n");
        let long = "x".repeat(CHUNK * 2 + 3);
        text.push_str(&long);
        text.push('é');
        let mut tail = ChunkedText::new();
        use std::fmt::Write;
        let _ = write!(tail, "{}-{}", 1, 2);
        text.append(tail);
        text.push_str("");
        assert_eq!(text.len(), 5 + long.len() + 'é'.len_utf8() + 3);
        let whole = format!("head\n{long}é1-2");
        let bytes: Vec<u8> = text
            .into_bytes()
            .iter()
            .flat_map(|chunk| chunk.to_vec())
            .collect();
        assert_eq!(bytes, whole.as_bytes());
    }
}
