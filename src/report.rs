//! Human-readable rendering of results, for `bastion once`: one line per instance.

use crate::messages::CheckResult;
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
            let detail = match (&response.error, &response.http) {
                (Some(error), _) => format!("{}: {}", error.kind.as_str(), error.message),
                (None, Some(http)) => {
                    let failed: Vec<&str> = response
                        .assertions
                        .iter()
                        .filter_map(|assertion| assertion.message.as_deref())
                        .collect();
                    if failed.is_empty() {
                        format!("{} {}", http.status, http.version)
                    } else {
                        format!("{} {}; {}", http.status, http.version, failed.join("; "))
                    }
                }
                (None, None) => String::new(),
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
