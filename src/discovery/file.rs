//! File discovery: a Prometheus file_sd file (JSON, or YAML for `.yaml`/`.yml`: a list of
//! `{targets, labels}`), read and checked whole (`read`), and watched by polling (`watch`):
//! about every `POLL` the file is read (at most `MAX_FILE_BYTES`), and content that differs
//! from what was last applied is taken once it has stayed the same over one more poll (the
//! debounce, so a file caught half-written is not taken). A file that cannot be used keeps
//! the last good set, is logged once per distinct problem and counted. Polling rather than
//! inotify keeps it in std and tokio, works on every filesystem (NFS, bind mounts,
//! ConfigMaps swapped by symlink) and costs one small read per check and poll. The watcher
//! ends when the checker drops its receiver. It must never block the checker: reads run on
//! the blocking pool of the runtime it was started on.

use super::{DiscoveryError, TargetSet, MAX_ENCODED_BYTES, MAX_TARGETS};
use crate::messages::TargetGroup;
use crate::model::{labels_problem, split_host_port, InstanceAddr};
use prometheus_client::metrics::counter::Counter;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a watched file is looked at.
pub const POLL: Duration = Duration::from_millis(500);
/// Larger files are refused (the targets travel in every run's request).
pub const MAX_FILE_BYTES: u64 = 512 * 1024;

/// The file's bytes, at most `MAX_FILE_BYTES` (one more tells it is too large).
fn read_bytes(path: &Path) -> Result<Vec<u8>, DiscoveryError> {
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| DiscoveryError::Read {
        path: shown(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| DiscoveryError::Read {
            path: shown(),
            source,
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(DiscoveryError::TooLarge {
            path: shown(),
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(bytes)
}

/// Parses and checks a file_sd document: every target an address or `host:port`, every
/// group's labels Prometheus label names (none of bastion's own), at most `MAX_TARGETS`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<TargetGroup>, DiscoveryError> {
    let shown = || path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|_| DiscoveryError::Format {
        path: shown(),
        reason: "not UTF-8 text".to_string(),
    })?;
    let yaml = matches!(
        path.extension().and_then(|extension| extension.to_str()),
        Some("yaml" | "yml")
    );
    let groups: Vec<TargetGroup> = if yaml {
        serde_saphyr::from_str(text).map_err(|error| DiscoveryError::Format {
            path: shown(),
            reason: error.to_string(),
        })?
    } else {
        serde_json::from_str(text).map_err(|error| DiscoveryError::Format {
            path: shown(),
            reason: error.to_string(),
        })?
    };
    if groups.len() > MAX_TARGETS {
        return Err(DiscoveryError::TooManyGroups {
            path: shown(),
            count: groups.len(),
        });
    }
    let count: usize = groups.iter().map(|group| group.targets.len()).sum();
    if count > MAX_TARGETS {
        return Err(DiscoveryError::TooMany {
            path: shown(),
            count,
        });
    }
    for (index, group) in groups.iter().enumerate() {
        if let Some(reason) = labels_problem(group.labels.iter()) {
            return Err(DiscoveryError::Labels {
                path: shown(),
                group: index + 1,
                reason,
            });
        }
        for target in &group.targets {
            if InstanceAddr::parse(target).is_some() {
                continue;
            }
            if let Err(reason) = split_host_port(target) {
                return Err(DiscoveryError::Target {
                    path: shown(),
                    target: target.clone(),
                    reason,
                });
            }
        }
    }
    // YAML aliases can make a small file a large set; what travels is what counts.
    let bytes = serde_json::to_vec(&groups).map_or(usize::MAX, |encoded| encoded.len());
    if bytes > MAX_ENCODED_BYTES {
        return Err(DiscoveryError::TooLargeEncoded {
            path: shown(),
            bytes,
        });
    }
    Ok(groups)
}

/// Reads and checks the file once (`bastion once`, and each change the watcher takes).
pub fn read(path: &Path) -> Result<Vec<TargetGroup>, DiscoveryError> {
    let bytes = read_bytes(path)?;
    parse(path, &bytes)
}

/// Watches `path` for `check` on `runtime`: the receiver holds the groups last read well
/// (none until the first good read); `errors` counts each distinct problem once.
pub fn watch(
    runtime: &tokio::runtime::Handle,
    check: &str,
    path: PathBuf,
    errors: Counter,
) -> watch::Receiver<TargetSet> {
    let (sender, receiver) = watch::channel(Arc::new(Vec::new()));
    let watcher = Watcher {
        check: check.to_string(),
        path,
        errors,
        applied: None,
        candidate: None,
        last_problem: None,
    };
    runtime.spawn(watcher.run(sender));
    receiver
}

struct Watcher {
    check: String,
    path: PathBuf,
    errors: Counter,
    /// The content whose groups the channel holds.
    applied: Option<Vec<u8>>,
    /// Changed content seen at the last poll, taken if it is still the same at the next.
    candidate: Option<Vec<u8>>,
    /// The problem last logged, so a file that stays broken is logged and counted once.
    last_problem: Option<String>,
}

impl Watcher {
    async fn run(mut self, sender: watch::Sender<TargetSet>) {
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    _ = sender.closed() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            let path = self.path.clone();
            let read = tokio::task::spawn_blocking(move || read_bytes(&path)).await;
            let bytes = match read {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(error)) => {
                    self.candidate = None;
                    self.problem(&error);
                    first = false;
                    continue;
                }
                // The runtime is shutting down.
                Err(_) => return,
            };
            if self.applied.as_ref() == Some(&bytes) {
                self.candidate = None;
                self.last_problem = None;
                first = false;
                continue;
            }
            // A change is taken once it has held for one poll; the very first read at once.
            if !first && self.candidate.as_ref() != Some(&bytes) {
                self.candidate = Some(bytes);
                continue;
            }
            first = false;
            self.candidate = None;
            match parse(&self.path, &bytes) {
                Ok(groups) => {
                    let targets: usize = groups.iter().map(|group| group.targets.len()).sum();
                    tracing::info!(check = %self.check, file = %self.path.display(), targets, "discovered instances changed");
                    self.applied = Some(bytes);
                    self.last_problem = None;
                    sender.send_replace(Arc::new(groups));
                }
                Err(error) => {
                    // Not applied: the same broken content is not parsed again until it changes.
                    self.applied = Some(bytes);
                    self.problem(&error);
                }
            }
        }
    }

    fn problem(&mut self, error: &DiscoveryError) {
        let text = error.to_string();
        if self.last_problem.as_deref() == Some(text.as_str()) {
            return;
        }
        tracing::warn!(check = %self.check, error = %text, "discovery file not used; the last good targets stay");
        self.errors.inc();
        self.last_problem = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(path: &str, text: &str) -> Result<Vec<TargetGroup>, String> {
        parse(Path::new(path), text.as_bytes()).map_err(|error| error.to_string())
    }

    #[test]
    fn json_and_yaml_lists_of_target_groups_parse() {
        let json = parsed(
            "t.json",
            r#"[{"targets": ["10.0.0.5", "[::1]:8443", "web.internal:80"], "labels": {"zone": "a"}}]"#,
        )
        .unwrap();
        assert_eq!(json[0].targets.len(), 3);
        assert_eq!(json[0].labels["zone"], "a");
        let yaml = parsed(
            "t.yaml",
            "- targets: ['10.0.0.5:80']\n  labels:\n    zone: b\n- targets: []\n",
        )
        .unwrap();
        assert_eq!(yaml.len(), 2);
        assert_eq!(yaml[0].labels["zone"], "b");
    }

    #[test]
    fn broken_files_say_what_to_fix() {
        let cases = [
            ("{", "is not a file_sd list of target groups"),
            (r#"{"targets": []}"#, "is not a file_sd list"),
            (r#"[{"targets": ["web"]}]"#, "target `web`: it has no port"),
            (r#"[{"targets": ["a b:80"]}]"#, "target `a b:80`"),
            (
                r#"[{"targets": [], "labels": {"check": "x"}}]"#,
                "group #1: label name `check` is one bastion sets itself",
            ),
            (
                r#"[{"targets": [], "labels": {"a-b": "x"}}]"#,
                "not a Prometheus label name",
            ),
            (r#"[{"targets": [], "extra": 1}]"#, "unknown field"),
        ];
        for (text, expected) in cases {
            let error = parsed("t.json", text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(error.starts_with("t.json: "), "{error}");
        }
        let many = format!(
            r#"[{{"targets": [{}]}}]"#,
            vec!["\"10.0.0.1\""; MAX_TARGETS + 1].join(",")
        );
        assert!(parsed("t.json", &many)
            .unwrap_err()
            .contains("has 10001 targets; the most allowed is 10000"));
        let groups = format!(
            "[{}]",
            vec![r#"{"targets": []}"#; MAX_TARGETS + 1].join(",")
        );
        assert!(parsed("t.json", &groups)
            .unwrap_err()
            .contains("has 10001 target groups"));
        // A group repeated by YAML aliases: the reader's alias budget refuses it (and had it
        // not, the group count would).
        let mut repeated = String::from("- &g {targets: ['10.0.0.1']}\n");
        repeated.push_str(&"- *g\n".repeat(MAX_TARGETS));
        let error = parsed("t.yaml", &repeated).unwrap_err();
        assert!(
            error.contains("budget breached") || error.contains("has 10001 target groups"),
            "{error}"
        );
        let long = format!(
            r#"[{{"targets": ["10.0.0.1"], "labels": {{ {} }}}}]"#,
            (0..32)
                .map(|n| format!(r#""l{n}": "{}""#, "v".repeat(1000)))
                .collect::<Vec<_>>()
                .join(",")
        );
        let many_groups = format!(
            "[{}]",
            vec![long.trim_matches(|c| c == '[' || c == ']'); 40].join(",")
        );
        assert!(parsed("t.json", &many_groups)
            .unwrap_err()
            .contains("more than a run's request carries"));
        let bytes = [0xff, 0xfe];
        assert!(parse(Path::new("t.json"), &bytes)
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
    }
}
