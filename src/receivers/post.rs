//! The one HTTP request every HTTP receiver makes: a POST of a JSON body, its answer sorted
//! into delivered, worth retrying (network errors, timeouts, 408, 429 and 5xx, with the
//! receiver's `Retry-After`) or refused (any other status). Error texts never carry the URL:
//! it may hold a token.

use super::{Answer, SendError};
use std::time::{Duration, SystemTime};

/// Characters of a receiver's answer kept for logs and `bastion notify test`.
const ANSWER_CHARS: usize = 300;

/// POSTs `body` as JSON to `url` with `headers`, in at most `timeout`.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
    timeout: Duration,
) -> Result<Answer, SendError> {
    let mut request = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.map_err(|error| SendError::Retry {
        reason: describe(error),
        after: None,
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    let text = match tokio::time::timeout(timeout, response.text()).await {
        Ok(Ok(text)) => excerpt(&text),
        _ => String::new(),
    };
    let said = if text.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {text}", status.as_u16())
    };
    if status.is_success() {
        Ok(Answer(said))
    } else if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
        Err(SendError::Retry {
            reason: said,
            after: retry_after,
        })
    } else {
        Err(SendError::Reject(said))
    }
}

/// A reqwest error in words, with its causes, without its URL.
fn describe(error: reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let mut text = format!("{what}: {}", error.without_url());
    for cause in causes {
        if !text.contains(&cause) {
            text.push_str(&format!(": {cause}"));
        }
    }
    text
}

/// The first `ANSWER_CHARS` characters of an answer, on one line.
fn excerpt(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ANSWER_CHARS)
        .collect();
    line.trim().to_string()
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 section 10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let now = jiff::Timestamp::try_from(now).ok()?;
    let wait = now.duration_until(when);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn excerpts_are_one_bounded_line() {
        assert_eq!(excerpt(" ok\n"), "ok");
        assert_eq!(excerpt(&"x".repeat(1000)).len(), ANSWER_CHARS);
    }
}
