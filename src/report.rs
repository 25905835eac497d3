//! Human-readable rendering of results, for `bastion once`: one line per instance, with
//! durations written for people (`2.3ms`, `1.20s`); `--json` keeps seconds for machines.

use crate::messages::{CheckResult, Response};
use std::fmt::Write;

/// A fixed-width table: check, target, verdict, total time, what was seen.
pub fn table(results: &[CheckResult]) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "CHECK".into(),
        "TARGET".into(),
        "RESULT".into(),
        "TOTAL".into(),
        "DETAIL".into(),
    ]];
    for result in results {
        for response in &result.responses {
            let detail = match &response.error {
                Some(error) => format!("{}: {}", error.kind.as_str(), error.message),
                None => {
                    let failed: Vec<&str> = response
                        .assertions
                        .iter()
                        .filter_map(|assertion| assertion.message.as_deref())
                        .collect();
                    let seen = seen(response);
                    if failed.is_empty() {
                        seen
                    } else {
                        format!("{seen}; {}", failed.join("; "))
                    }
                }
            };
            rows.push([
                result.check.clone(),
                response.target.clone(),
                if response.passing { "PASS" } else { "FAIL" }.into(),
                human_duration(response.timings.total),
                detail,
            ]);
        }
    }
    let mut widths = [0usize; 4];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (width, cell) in widths.iter().zip(row.iter()) {
            let _ = write!(out, "{cell:<width$}  ");
        }
        let _ = writeln!(out, "{}", row[4]);
    }
    out
}

/// Seconds as a person reads them, with two or three significant digits: `850ns`, `42µs`,
/// `2.3ms`, `120ms`, `1.20s`, `12.5s`, `2m05s`. Negative or non-finite input (never produced by
/// a probe) reads `-`.
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_string();
    }
    let scaled = |value: f64, unit: &str| {
        if value < 9.95 {
            format!("{value:.1}{unit}")
        } else {
            format!("{value:.0}{unit}")
        }
    };
    if seconds < 0.9995e-6 {
        format!("{:.0}ns", seconds * 1e9)
    } else if seconds < 0.9995e-3 {
        scaled(seconds * 1e6, "µs")
    } else if seconds < 0.9995 {
        scaled(seconds * 1e3, "ms")
    } else if seconds < 9.995 {
        format!("{seconds:.2}s")
    } else if seconds < 59.95 {
        format!("{seconds:.1}s")
    } else {
        let whole = seconds.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// What the probe saw, in a few words, by the section its type fills.
fn seen(response: &Response) -> String {
    if let Some(http) = &response.http {
        return format!("{} {}", http.status, http.version);
    }
    if let Some(seen) = response.sections.seen() {
        return seen;
    }
    if let Some(tls) = &response.tls {
        let expiry = tls
            .earliest_cert_expiry
            .map(|expiry| format!(", expires {}", humantime::format_rfc3339_seconds(expiry)))
            .unwrap_or_default();
        return format!("{}{expiry}", tls.version);
    }
    String::new()
}

#[cfg(test)]
mod duration_tests {
    use super::human_duration;

    #[test]
    fn durations_read_as_people_write_them() {
        let cases = [
            (0.0, "0ns"),
            (0.000_000_85, "850ns"),
            (0.000_042, "42µs"),
            (0.000_999_9, "1.0ms"),
            (0.0023, "2.3ms"),
            (0.009_96, "10ms"),
            (0.120_4, "120ms"),
            (0.999_9, "1.00s"),
            (1.2, "1.20s"),
            (12.54, "12.5s"),
            (125.0, "2m05s"),
            (-1.0, "-"),
            (f64::NAN, "-"),
        ];
        for (seconds, shown) in cases {
            assert_eq!(human_duration(seconds), shown, "{seconds}");
        }
    }
}

#[cfg(test)]
mod seen_tests {
    use super::*;
    use crate::checks::udp::UdpDetails;
    use crate::checks::websocket::WebsocketDetails;
    use crate::messages::Timings;
    use crate::model::{ErrorKind, ProbeError};

    fn response() -> Response {
        let mut response = Response::failed(
            "127.0.0.1:9".into(),
            ProbeError::new(ErrorKind::Expect, "no match"),
            Timings::default(),
        );
        response.error = None;
        response
    }

    /// Every type's section says what it saw, udp and websocket as much as the older types.
    #[test]
    fn the_detail_column_tells_what_each_types_section_saw() {
        let mut udp = response();
        udp.sections.udp = Some(Box::new(UdpDetails {
            sent_bytes: 4,
            replied: true,
            body: "pong".into(),
            truncated: false,
            body_bytes: None,
        }));
        assert_eq!(seen(&udp), "4 bytes sent, a reply of 4 bytes");
        let mut silent = response();
        silent.sections.udp = Some(Box::new(UdpDetails {
            sent_bytes: 4,
            replied: false,
            body: String::new(),
            truncated: false,
            body_bytes: None,
        }));
        assert_eq!(seen(&silent), "4 bytes sent, no reply");
        let mut websocket = response();
        websocket.sections.websocket = Some(Box::new(WebsocketDetails {
            status: Some(403),
            ..WebsocketDetails::default()
        }));
        assert_eq!(seen(&websocket), "upgrade answered 403");
        assert_eq!(seen(&response()), "");
    }
}
