//! Benchmark harness for bastion's timing accuracy: runs the agent on the embedded bus, as
//! `bastion run` does, and also watches every result in process, so each probe's `processing`
//! phase is recorded without a scrape or a broker disturbing the measurement. Used by
//! `bench/run`; not part of bastion.
//!
//! Usage: bench_agent <config file> <seconds to watch> <expected processing seconds>
//! Prints one JSON object: results, responses, failed responses, and the processing error
//! (reported minus expected) of every response, in seconds.

use bastion_agent::agent::Agent;
use bastion_agent::config::Config;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: bench_agent <config> <seconds> <expected processing seconds>");
        std::process::exit(2);
    }
    let config = Config::load(std::path::Path::new(&args[1])).unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(2);
    });
    let seconds: f64 = args[2].parse().unwrap_or(30.0);
    let expected: f64 = args[3].parse().unwrap_or(0.05);
    let agent = Agent::build(config).await.expect("agent starts");
    let mut results = agent
        .bus()
        .subscribe("bastion.results.>", None)
        .await
        .expect("subscribe");
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.run(stop.clone()));
    let mut errors: Vec<f64> = Vec::new();
    let (mut seen, mut responses, mut failed) = (0u64, 0u64, 0u64);
    let watch = tokio::time::sleep(Duration::from_secs_f64(seconds));
    tokio::pin!(watch);
    loop {
        tokio::select! {
            _ = &mut watch => break,
            message = results.next() => {
                let Some(message) = message else { break };
                let Ok(result) = message.payload.result() else { continue };
                seen += 1;
                for response in &result.responses {
                    responses += 1;
                    if response.passing {
                        errors.push(response.timings.processing - expected);
                    } else {
                        failed += 1;
                    }
                }
            }
        }
    }
    stop.cancel();
    let _ = running.await;
    let values: Vec<String> = errors.iter().map(|v| format!("{v}")).collect();
    println!(
        "{{\"results\":{seen},\"responses\":{responses},\"failed\":{failed},\"processing_error\":[{}]}}",
        values.join(",")
    );
}
