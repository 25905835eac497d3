//! Human-readable rendering of results, for `bastion once`: one line per instance.

use crate::messages::{CheckResult, Response};
use std::fmt::Write;

/// A fixed-width table: check, target, verdict, what was seen, total seconds.
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
                format!("{:.4}s", response.timings.total),
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

/// What the probe saw, in a few words, by the section its type fills.
fn seen(response: &Response) -> String {
    if let Some(http) = &response.http {
        return format!("{} {}", http.status, http.version);
    }
    if let Some(tcp) = &response.tcp {
        return format!("connected, {} bytes received", tcp.body.len());
    }
    if let Some(dns) = &response.dns {
        return format!("{}, {} answers", dns.rcode, dns.answers.len());
    }
    if let Some(icmp) = &response.icmp {
        return format!(
            "{}/{} replies, rtt avg {:.3}ms",
            icmp.received,
            icmp.sent,
            icmp.rtt_avg * 1000.0
        );
    }
    if let Some(grpc) = &response.grpc {
        return grpc.status.clone();
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
