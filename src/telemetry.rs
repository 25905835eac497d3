//! Logging: tracing to stderr, as text or JSON lines, level from `RUST_LOG` (default `info`, with async-nats's own chatter at `warn`: bastion logs connection changes itself).
//! Colour only reaches a person at a terminal: ANSI escapes are written only when stderr is a
//! terminal and `NO_COLOR` is unset, never in JSON. When stderr is the journal (systemd's
//! `JOURNAL_STREAM` names it), each line starts with the sd-daemon priority prefix (`<4>`
//! for a warning), so `journalctl -p warning` selects by level; journald strips the prefix
//! and stamps the time itself, so the line carries no timestamp of its own.
//! Logging never stops the daemon: a line that cannot be written is dropped.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How lines are dressed for whoever reads stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A person at a terminal: coloured text with timestamps.
    Colour,
    /// A file, a pipe, `docker logs`: plain lines with timestamps.
    Plain,
    /// The systemd journal: a `<N>` priority prefix, no timestamp, no colour.
    Journal,
}

impl Output {
    /// Decides from the facts about stderr: whether it is a terminal, `NO_COLOR` (any
    /// non-empty value turns colour off, as no-color.org says), `JOURNAL_STREAM` ("DEV:INODE"
    /// as systemd sets it) and stderr's own device and inode. The journal counts only when
    /// `JOURNAL_STREAM` names stderr itself: a shell started by a service and redirected to
    /// a file inherits the variable but does not write to the journal.
    pub fn choose(
        format: LogFormat,
        terminal: bool,
        no_color: Option<&str>,
        journal_stream: Option<&str>,
        stderr_id: Option<(u64, u64)>,
    ) -> Output {
        let journal = journal_stream
            .and_then(|value| {
                let (device, inode) = value.trim().split_once(':')?;
                Some((device.parse::<u64>().ok()?, inode.parse::<u64>().ok()?))
            })
            .is_some_and(|named| Some(named) == stderr_id);
        let colour_off = no_color.is_some_and(|value| !value.is_empty());
        if journal {
            Output::Journal
        } else if format == LogFormat::Text && terminal && !colour_off {
            Output::Colour
        } else {
            Output::Plain
        }
    }

    /// [`Output::choose`] with this process's stderr and environment.
    pub fn detect(format: LogFormat) -> Output {
        let stderr = std::io::stderr();
        let stderr_id = stderr
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(std::fs::File::from)
            .and_then(|file| file.metadata().ok())
            .map(|metadata| (metadata.dev(), metadata.ino()));
        let no_color = std::env::var("NO_COLOR").ok();
        let journal_stream = std::env::var("JOURNAL_STREAM").ok();
        Output::choose(
            format,
            stderr.is_terminal(),
            no_color.as_deref(),
            journal_stream.as_deref(),
            stderr_id,
        )
    }
}

/// The sd-daemon(3) prefix journald reads as the line's priority.
pub fn journal_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Writes `<N>` before whatever the inner formatter writes.
struct JournalPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", journal_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber. A second call (tests) leaves the first in place.
pub fn init(format: LogFormat) {
    init_for(format, Output::detect(format));
}

fn init_for(format: LogFormat, output: Output) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    // A failed write to stderr (a closed pipe, a full disk behind a redirect) drops the line.
    // tracing-subscriber's default would report it with `eprintln!`, which panics when stderr
    // is the thing that fails, and the panic takes down whatever task was logging.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(output == Output::Colour)
        .log_internal_errors(false);
    let _ = match (format, output) {
        (LogFormat::Text, Output::Journal) => {
            let lines = tracing_subscriber::fmt::format()
                .without_time()
                .with_level(false)
                .with_ansi(false);
            builder.event_format(JournalPrefix(lines)).try_init()
        }
        (LogFormat::Text, _) => builder.try_init(),
        (LogFormat::Json, Output::Journal) => {
            let lines = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .without_time();
            builder
                .json()
                .flatten_event(true)
                .event_format(JournalPrefix(lines))
                .try_init()
        }
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_text_on_a_terminal_without_no_color() {
        use LogFormat::{Json, Text};
        assert_eq!(Output::choose(Text, true, None, None, None), Output::Colour);
        assert_eq!(Output::choose(Text, false, None, None, None), Output::Plain);
        assert_eq!(
            Output::choose(Text, true, Some("1"), None, None),
            Output::Plain
        );
        // An empty NO_COLOR does not count (no-color.org).
        assert_eq!(
            Output::choose(Text, true, Some(""), None, None),
            Output::Colour
        );
        assert_eq!(Output::choose(Json, true, None, None, None), Output::Plain);
    }

    #[test]
    fn the_journal_only_when_journal_stream_names_stderr() {
        let id = Some((64769, 1234));
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(
                Output::choose(format, false, None, Some("64769:1234"), id),
                Output::Journal
            );
            assert_eq!(
                Output::choose(format, false, None, Some("64769:1235"), id),
                Output::Plain
            );
            assert_eq!(
                Output::choose(format, false, None, Some("garbage"), id),
                Output::Plain
            );
            assert_eq!(
                Output::choose(format, false, None, Some("64769:1234"), None),
                Output::Plain
            );
        }
    }

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(journal_priority(&Level::ERROR), 3);
        assert_eq!(journal_priority(&Level::WARN), 4);
        assert_eq!(journal_priority(&Level::INFO), 6);
        assert_eq!(journal_priority(&Level::DEBUG), 7);
    }
}
