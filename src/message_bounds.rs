//! What of a `CheckResult` travels on the bus. A message may hold at most `MAX_MESSAGE_BYTES`
//! (the sink refuses larger ones before parsing, and so does a default nats-server), while a
//! probe may read up to 64 MiB of body. So a published result is bounded by design: each body
//! is cut to its first `BUS_BODY_BYTES` (with `truncated` set and `body_bytes` keeping the
//! length read), and every other field whose size a server decides (headers, messages,
//! certificate names, DNS answers) has a bound too. A result's size then depends on its number
//! of instances, not on what the servers sent.
//!
//! A result still too large (thousands of instances) is reduced in two documented steps, each
//! counted in `bastion_results_degraded_total{form}`: `detail_dropped` (every response, without
//! bodies, headers, chains or answers, texts cut short), then `summarised` (only the responses
//! that fit, failing ones first, with the counts over every instance in `degraded`). It never
//! drops a result, so the checker and the sink both see every run end.
//!
//! Assertions were judged before any of this, on everything the probe read; this module must
//! never change a verdict.

use crate::checks::response::{cut, Body, TextBounds};
use crate::messages::{CheckResult, Degraded, DegradedForm, Response, MAX_MESSAGE_BYTES};
use bytes::Bytes;
use std::borrow::Cow;

/// Bytes of each response body (http, and each type's section's) a published result carries. The API keeps as
/// much (`results::STORED_BODY_BYTES`), so nothing the API shows is lost on the way.
pub const BUS_BODY_BYTES: usize = 4096;
/// Bytes of all the headers of one response, names and values together.
pub const BUS_HEADER_BYTES: usize = 4096;
/// Bytes of any other text a server or a probe decides: error messages, header values,
/// certificate subjects, DNS answers, assertion values.
pub const BUS_TEXT_BYTES: usize = 1024;
/// Entries of any list a server decides: DNS answers, certificates, names per certificate.
pub const BUS_LIST_ITEMS: usize = 64;
/// What a type's own section keeps on the bus (`checks::response::Section`).
pub const BUS_BOUNDS: TextBounds = TextBounds {
    body_bytes: BUS_BODY_BYTES,
    text_bytes: BUS_TEXT_BYTES,
    list_items: BUS_LIST_ITEMS,
};
/// Bytes of each text in the `detail_dropped` and `summarised` forms.
const SHORT_TEXT_BYTES: usize = 128;

/// A result encoded for the bus, and the reduced form it took, if any.
#[derive(Debug)]
pub struct Encoded {
    pub payload: Bytes,
    pub degraded: Option<DegradedForm>,
}

/// Encodes `result` within `MAX_MESSAGE_BYTES`: bounded always, reduced when still too large.
pub fn encode(result: CheckResult) -> Result<Encoded, serde_json::Error> {
    encode_within(result, MAX_MESSAGE_BYTES)
}

/// `result` with every field bounded as on the bus (bodies, headers, texts, lists), for a
/// result that stays in the process: no encoding, and no size limit that would reduce it.
pub fn bound(mut result: CheckResult) -> CheckResult {
    for response in &mut result.responses {
        bound_response(response);
        response.assertions.shrink_to_fit();
    }
    // The dispatcher collects responses through an iterator without an exact size, so the
    // vector may hold room for several times as many; the sink keeps each result for as long
    // as its check exists, so it keeps no slack.
    result.responses.shrink_to_fit();
    result
}

fn encode_within(result: CheckResult, limit: usize) -> Result<Encoded, serde_json::Error> {
    let mut result = bound(result);
    let payload = serde_json::to_vec(&result)?;
    if payload.len() <= limit {
        return Ok(Encoded {
            payload: Bytes::from(payload),
            degraded: None,
        });
    }
    let instances = result.instances();
    let failing = result.failing();
    let unmeasured = result.unmeasured();
    for response in &mut result.responses {
        drop_detail(response);
    }
    result.degraded = Some(Box::new(Degraded {
        form: DegradedForm::DetailDropped,
        instances,
        failing,
        omitted: 0,
        unmeasured,
        locations: Vec::new(),
    }));
    let payload = serde_json::to_vec(&result)?;
    if payload.len() <= limit {
        return Ok(Encoded {
            payload: Bytes::from(payload),
            degraded: Some(DegradedForm::DetailDropped),
        });
    }
    summarise(&mut result, instances, failing, limit)?;
    Ok(Encoded {
        payload: Bytes::from(serde_json::to_vec(&result)?),
        degraded: Some(DegradedForm::Summarised),
    })
}

/// Keeps the responses that fit in `limit`, failing ones first, in their original order.
fn summarise(
    result: &mut CheckResult,
    instances: usize,
    failing: usize,
    limit: usize,
) -> Result<(), serde_json::Error> {
    let unmeasured = result.unmeasured();
    let responses = std::mem::take(&mut result.responses);
    // The frame is measured with the largest `omitted` it can hold, so the count never
    // outgrows the room left for it.
    result.degraded = Some(Box::new(Degraded {
        form: DegradedForm::Summarised,
        instances,
        failing,
        omitted: responses.len(),
        unmeasured,
        locations: Vec::new(),
    }));
    let frame = serde_json::to_vec(&*result)?.len();
    let mut room = limit.saturating_sub(frame);
    let mut sizes = Vec::with_capacity(responses.len());
    for response in &responses {
        // One comma between responses.
        sizes.push(serde_json::to_vec(response)?.len() + 1);
    }
    // Failing responses first, in order, until one does not fit; passing ones only once
    // every failing one is in, so a kept passing response never takes a failing one's room.
    let mut keep = vec![false; responses.len()];
    'passes: for failing_first in [true, false] {
        for (index, response) in responses.iter().enumerate() {
            if response.passing == failing_first {
                continue;
            }
            if sizes[index] > room {
                break 'passes;
            }
            room -= sizes[index];
            keep[index] = true;
        }
    }
    result.responses = responses
        .into_iter()
        .zip(keep)
        .filter_map(|(response, kept)| kept.then_some(response))
        .collect();
    let omitted = instances.saturating_sub(result.responses.len());
    result.degraded = Some(Box::new(Degraded {
        form: DegradedForm::Summarised,
        instances,
        failing,
        omitted,
        unmeasured,
        locations: Vec::new(),
    }));
    Ok(())
}

/// The bounds every published response keeps.
fn bound_response(response: &mut Response) {
    if let Some(error) = response.error.as_mut() {
        cut(&mut error.message, BUS_TEXT_BYTES);
    }
    if let Some(http) = response.http.as_mut() {
        Body {
            text: &mut http.body,
            truncated: &mut http.truncated,
            bytes: &mut http.body_bytes,
        }
        .bound(BUS_BODY_BYTES);
        let mut room = BUS_HEADER_BYTES;
        let left_out = http.headers.rewrite(
            |value| {
                let mut value = Cow::Borrowed(value);
                if value.len() > BUS_TEXT_BYTES {
                    cut(value.to_mut(), BUS_TEXT_BYTES);
                }
                value
            },
            |name, value| {
                let size = name.len() + value.len();
                let fits = size <= room;
                if fits {
                    room -= size;
                }
                fits
            },
        );
        http.headers_truncated |= left_out;
    }
    if let Some(chain) = response.tls.as_mut().and_then(|tls| tls.chain.as_mut()) {
        if let Some(error) = chain.error.as_mut() {
            cut(error, BUS_TEXT_BYTES);
        }
        chain.certificates.truncate(BUS_LIST_ITEMS);
        for certificate in &mut chain.certificates {
            cut(&mut certificate.subject, BUS_TEXT_BYTES);
            cut(&mut certificate.issuer, BUS_TEXT_BYTES);
            certificate.san.truncate(BUS_LIST_ITEMS);
            for name in &mut certificate.san {
                cut(name, BUS_TEXT_BYTES);
            }
        }
    }
    response.sections.bound(&BUS_BOUNDS);
    for assertion in &mut response.assertions {
        cut(&mut assertion.actual, BUS_TEXT_BYTES);
        if let Some(message) = assertion.message.as_mut() {
            cut(message, BUS_TEXT_BYTES);
        }
    }
}

/// The `detail_dropped` form of one response: what it was, not what it carried.
fn drop_detail(response: &mut Response) {
    if let Some(error) = response.error.as_mut() {
        cut(&mut error.message, SHORT_TEXT_BYTES);
    }
    if let Some(http) = response.http.as_mut() {
        http.body.clear();
        http.truncated = true;
        http.headers_truncated |= !http.headers.is_empty();
        http.headers.clear();
    }
    if let Some(chain) = response.tls.as_mut().and_then(|tls| tls.chain.as_mut()) {
        if let Some(error) = chain.error.as_mut() {
            cut(error, SHORT_TEXT_BYTES);
        }
        chain.certificates.clear();
    }
    response.sections.drop_detail(SHORT_TEXT_BYTES);
    for assertion in &mut response.assertions {
        cut(&mut assertion.actual, SHORT_TEXT_BYTES);
        if let Some(message) = assertion.message.as_mut() {
            cut(message, SHORT_TEXT_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{self, HttpDetails, Timings};
    use crate::model::{ErrorKind, ProbeError};

    fn response(index: usize, body: &str, passing: bool) -> Response {
        let long = "v".repeat(10_000);
        let headers = [("x-long", long.as_str()), ("content-type", "text/plain")]
            .into_iter()
            .collect();
        let mut response = Response::failed(
            format!("127.0.{}.{}:80", index / 250, index % 250),
            ProbeError::new(ErrorKind::Connect, "e".repeat(5000)),
            Timings::default(),
        );
        response.passing = passing;
        if passing {
            response.error = None;
        }
        response.http = Some(Box::new(HttpDetails {
            status: 200,
            version: "HTTP/1.1".into(),
            headers,
            body: body.to_string(),
            truncated: false,
            body_bytes: None,
            headers_truncated: false,
            redirects: 0,
        }));
        response
    }

    fn result(responses: Vec<Response>) -> CheckResult {
        CheckResult::of_web(responses)
    }

    #[test]
    fn bodies_headers_and_messages_are_bounded_and_say_so() {
        let body = format!("{}é", "x".repeat(BUS_BODY_BYTES - 1));
        let encoded = encode(result(vec![response(0, &body, false)])).unwrap();
        assert_eq!(encoded.degraded, None);
        let back: CheckResult = messages::decode(&encoded.payload).unwrap();
        let response = &back.responses[0];
        let http = response.http.as_ref().unwrap();
        assert_eq!(
            http.body,
            "x".repeat(BUS_BODY_BYTES - 1),
            "cut on a char boundary"
        );
        assert!(http.truncated);
        assert_eq!(http.body_bytes, Some(BUS_BODY_BYTES + 1));
        assert_eq!(
            http.headers.get("x-long").map(str::len),
            Some(BUS_TEXT_BYTES)
        );
        assert_eq!(http.headers.get("content-type"), Some("text/plain"));
        let message = &response.error.as_ref().unwrap().message;
        assert_eq!(message.len(), BUS_TEXT_BYTES);
        assert_eq!(back.degraded, None);
    }

    #[test]
    fn a_result_too_large_is_reduced_step_by_step_and_keeps_its_counts() {
        // Eight whole bodies fit once cut; the limit then forces each step in turn.
        let big = "y".repeat(300 * 1024);
        let whole = result((0..8).map(|n| response(n, &big, n % 2 == 0)).collect());
        let bounded = encode_within(whole.clone(), MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(bounded.degraded, None);
        assert!(
            bounded.payload.len() < 100 * 1024,
            "{}",
            bounded.payload.len()
        );

        let dropped = encode_within(whole.clone(), bounded.payload.len() - 1).unwrap();
        assert_eq!(dropped.degraded, Some(DegradedForm::DetailDropped));
        let back: CheckResult = messages::decode(&dropped.payload).unwrap();
        assert_eq!(back.responses.len(), 8);
        assert!(back
            .responses
            .iter()
            .all(|r| r.http.as_ref().unwrap().body.is_empty()));
        assert_eq!(back.instances(), 8);
        assert_eq!(back.failing(), 4);

        let limit = 2000;
        let summarised = encode_within(whole, limit).unwrap();
        assert_eq!(summarised.degraded, Some(DegradedForm::Summarised));
        assert!(
            summarised.payload.len() <= limit,
            "{}",
            summarised.payload.len()
        );
        let back: CheckResult = messages::decode(&summarised.payload).unwrap();
        let degraded = back.degraded.unwrap();
        assert_eq!((degraded.instances, degraded.failing), (8, 4));
        assert_eq!(back.responses.len() + degraded.omitted, 8);
        assert!(degraded.omitted >= 1);
        let kept_failing = back.responses.iter().filter(|r| !r.passing).count();
        assert!(kept_failing >= 1, "some responses fit");
        assert!(
            kept_failing == 4 || back.responses.iter().all(|r| !r.passing),
            "failing responses get the room first"
        );
    }

    /// A summarised result still says how many of the instances it left out never ran for
    /// want of a worker, so they count as unmeasured, not down (one rule with the state).
    #[test]
    fn a_summarised_result_counts_the_dispatch_timeouts_it_left_out() {
        let responses: Vec<Response> = (0..20_000)
            .map(|n| {
                let mut response = response(n, "ok", false);
                if n % 4 != 0 {
                    response.error = Some(Box::new(ProbeError::new(
                        ErrorKind::DispatchTimeout,
                        "no worker",
                    )));
                }
                response
            })
            .collect();
        let encoded = encode(result(responses)).unwrap();
        assert_eq!(encoded.degraded, Some(DegradedForm::Summarised));
        let back: CheckResult = messages::decode(&encoded.payload).unwrap();
        assert!(back.degraded.as_ref().unwrap().omitted > 0);
        let counts = back.counts();
        assert_eq!(
            (counts.instances, counts.failing, counts.unmeasured),
            (20_000, 5_000, 15_000)
        );
    }

    #[test]
    fn thousands_of_instances_fit_in_one_message() {
        let many = result((0..20_000).map(|n| response(n, "ok", false)).collect());
        let encoded = encode(many).unwrap();
        assert!(encoded.payload.len() <= MAX_MESSAGE_BYTES);
        let back: CheckResult = messages::decode(&encoded.payload).unwrap();
        assert_eq!(back.instances(), 20_000);
        assert_eq!(back.failing(), 20_000);
        assert_eq!(encoded.degraded, Some(DegradedForm::Summarised));
    }
}
