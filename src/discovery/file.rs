//! File discovery: a Prometheus file_sd file (JSON, or YAML for `.yaml`/`.yml`: a list of
//! `{targets, labels}`), read and checked whole (`read`), and watched (`watch`). The file is
//! read (at most `MAX_FILE_BYTES`) when inotify says its directory changed (`changes.rs`),
//! and otherwise every `POLL_WITH_NOTICES` (a filesystem such as NFS sends no notice for a
//! remote change), or every `POLL` where no notice can come at all. Content that differs
//! from what was last applied is taken once a second read `SETTLE` later finds it the same
//! (the debounce, so a file caught half-written is not taken). A file that cannot be used
//! keeps the last good set, is logged once per distinct problem and counted. The watcher
//! ends when the checker drops its receiver. It must never block the checker: reads run on
//! the blocking pool of the runtime it was started on.

use super::changes::{DirectoryChanges, Notices};
use super::{DiscoveryError, TargetSet, MAX_ENCODED_BYTES, MAX_TARGETS};
use crate::messages::TargetGroup;
use crate::model::{labels_problem, split_host_port, InstanceAddr};
use prometheus_client::metrics::counter::Counter;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a watched file is looked at when no change notice can come.
pub const POLL: Duration = Duration::from_millis(500);
/// How often a watched file is looked at when its directory sends change notices: only for
/// the changes no notice tells of.
pub const POLL_WITH_NOTICES: Duration = Duration::from_secs(5);
/// How long after a notice (or a read that found a change) the file is read again: writes
/// that come in a burst are read once, and a change is taken once it held this long.
pub const SETTLE: Duration = Duration::from_millis(250);
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

/// Where `path` leads: the directory it names, resolved (a directory reached through a
/// symlink that is swapped, or an ancestor renamed, resolves elsewhere), and the file it
/// really is when a symlink leads somewhere other than the name itself (an edit through the
/// link is an event of the target's name, in the target's directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Resolved {
    directory: Option<PathBuf>,
    target: Option<PathBuf>,
}

fn resolve(path: &Path) -> Resolved {
    let directory = std::fs::canonicalize(
        path.parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
    .ok();
    let named = directory
        .as_ref()
        .zip(path.file_name())
        .map(|(directory, name)| directory.join(name));
    let target = std::fs::canonicalize(path)
        .ok()
        .filter(|file| Some(file) != named.as_ref());
    Resolved { directory, target }
}

/// Waits for the next notice of `notices`; never, when there are none.
async fn changed(notices: &Option<Notices>) {
    match notices {
        Some(notices) => notices.changed().await,
        None => std::future::pending().await,
    }
}

/// Reads and checks the file once (`bastion once`, and each change the watcher takes).
pub fn read(path: &Path) -> Result<Vec<TargetGroup>, DiscoveryError> {
    let bytes = read_bytes(path)?;
    parse(path, &bytes)
}

/// Watches `path` for `check` on the runtime of `changes`: the receiver holds the groups last
/// read well (none until the first good read); `errors` counts each distinct problem once.
pub fn watch(
    changes: &DirectoryChanges,
    check: &str,
    path: PathBuf,
    errors: Counter,
) -> watch::Receiver<TargetSet> {
    let polls = Polls {
        with_notices: POLL_WITH_NOTICES,
        without: POLL,
    };
    watch_polling_every(changes, check, path, errors, polls)
}

/// How often a watcher reads its file when nothing told it to.
#[derive(Clone, Copy)]
struct Polls {
    /// While its directory sends change notices.
    with_notices: Duration,
    /// While no notice can come.
    without: Duration,
}

fn watch_polling_every(
    changes: &DirectoryChanges,
    check: &str,
    path: PathBuf,
    errors: Counter,
    polls: Polls,
) -> watch::Receiver<TargetSet> {
    let (sender, receiver) = watch::channel(Arc::new(Vec::new()));
    let watcher = Watcher {
        check: check.to_string(),
        path,
        errors,
        changes: changes.clone(),
        notices: None,
        directory: None,
        target: None,
        target_notices: None,
        polls,
        applied: None,
        candidate: None,
        last_problem: None,
    };
    changes.runtime().spawn(watcher.run(sender));
    receiver
}

struct Watcher {
    check: String,
    path: PathBuf,
    errors: Counter,
    changes: DirectoryChanges,
    /// Change notices for the file's directory, while they come.
    notices: Option<Notices>,
    /// The file's directory, resolved at the last read (the watch follows it).
    directory: Option<PathBuf>,
    /// Where the file really is, when a symlink leads elsewhere (resolved at each read), and
    /// change notices for that file: an edit through the link is an event of the target.
    target: Option<PathBuf>,
    target_notices: Option<Notices>,
    /// `POLL_WITH_NOTICES` and `POLL`; longer in the tests that show notices alone suffice.
    polls: Polls,
    /// The content whose groups the channel holds.
    applied: Option<Vec<u8>>,
    /// Changed content seen at the last read, taken if it is still the same at the next.
    candidate: Option<Vec<u8>>,
    /// The problem last logged, so a file that stays broken is logged and counted once.
    last_problem: Option<String>,
}

impl Watcher {
    async fn run(mut self, sender: watch::Sender<TargetSet>) {
        // The first read comes at once; the watch is made at the first wait, where the path
        // is known to lead, and a read follows it (`wait`), so no change is missed between.
        let mut first = true;
        loop {
            if !first && !self.wait(&sender).await {
                return;
            }
            let path = self.path.clone();
            let read =
                tokio::task::spawn_blocking(move || (read_bytes(&path), resolve(&path))).await;
            let read = read.map(|(bytes, resolved)| {
                self.follow(resolved);
                bytes
            });
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
            // A change is taken once a second read finds it the same; the very first read at
            // once.
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

    /// Waits until the file is to be read again: a change notice (then `SETTLE`, so a burst
    /// of writes is read once), `SETTLE` after a read that found a change, or the poll
    /// interval. False once the checker dropped its receiver.
    async fn wait(&mut self, sender: &watch::Sender<TargetSet>) -> bool {
        // A watch that ended (the directory was removed, moved or replaced) is made again
        // if it can be; until then the file is polled. A watch made now did not see what
        // changed since the last read: the file is read again soon.
        let mut fresh = false;
        if !self.notices.as_ref().is_some_and(Notices::is_live) {
            self.notices = self.subscribe(self.path.clone()).await;
            fresh |= self.notices.is_some();
        }
        if let Some(target) = self.target.clone() {
            if !self.target_notices.as_ref().is_some_and(Notices::is_live) {
                self.target_notices = self.subscribe(target).await;
                fresh |= self.target_notices.is_some();
            }
        }
        let watched =
            self.notices.is_some() && (self.target.is_none() || self.target_notices.is_some());
        let pause = match (&self.candidate, watched) {
            (Some(_), _) => SETTLE,
            _ if fresh => SETTLE,
            (None, true) => self.polls.with_notices,
            (None, false) => self.polls.without,
        };
        let noticed = async {
            tokio::select! {
                _ = changed(&self.notices) => {}
                _ = changed(&self.target_notices) => {}
            }
        };
        tokio::select! {
            _ = sender.closed() => return false,
            _ = tokio::time::sleep(pause) => return true,
            _ = noticed => {}
        }
        tokio::select! {
            _ = sender.closed() => false,
            _ = tokio::time::sleep(SETTLE) => true,
        }
    }

    /// Takes where the path leads now: a watch of a directory or target the path no longer
    /// leads to is dropped, to be made again where it leads.
    fn follow(&mut self, resolved: Resolved) {
        if resolved.directory != self.directory {
            self.directory = resolved.directory;
            self.notices = None;
        }
        if resolved.target != self.target {
            self.target = resolved.target;
            self.target_notices = None;
        }
    }

    /// Notices for `path`, subscribed on the blocking pool: adding a watch resolves the path,
    /// which a hung mount can stall.
    async fn subscribe(&self, path: PathBuf) -> Option<Notices> {
        let changes = self.changes.clone();
        tokio::task::spawn_blocking(move || changes.subscribe(&path))
            .await
            .ok()
            .flatten()
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

    /// Waits (generously) until the watched set holds `first_target` as its first target.
    async fn until_first_target(receiver: &mut watch::Receiver<TargetSet>, first_target: &str) {
        let seen = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let now = receiver
                    .borrow_and_update()
                    .first()
                    .and_then(|group| group.targets.first())
                    .cloned();
                if now.as_deref() == Some(first_target) {
                    return;
                }
                receiver.changed().await.unwrap();
            }
        })
        .await;
        assert!(seen.is_ok(), "{first_target} was not taken");
    }

    /// A directory removed with the test.
    struct Scratch(PathBuf);

    impl Scratch {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn targets(address: &str) -> String {
        format!(r#"[{{"targets": ["{address}"]}}]"#)
    }

    /// With polls an hour apart, only inotify's notices can bring these changes in: a write in
    /// place, a replacement by rename, a ConfigMap-style symlink swap, an edit behind a
    /// symlink into another directory, and a directory that is removed or moved away and
    /// made again (its watch ends; the watcher polls until it can watch again).
    #[tokio::test]
    async fn change_notices_bring_each_kind_of_change_without_polling() {
        let root = std::env::temp_dir().join(format!("bastion-notices-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let root = Scratch(root);
        let changes = DirectoryChanges::new(tokio::runtime::Handle::current());
        let hour = Duration::from_secs(3600);
        let never = Polls {
            with_notices: hour,
            without: hour,
        };

        let in_place = root.path().join("in_place.json");
        std::fs::write(&in_place, targets("10.0.0.1:80")).unwrap();
        let mut receiver =
            watch_polling_every(&changes, "a", in_place.clone(), Counter::default(), never);
        until_first_target(&mut receiver, "10.0.0.1:80").await;
        std::fs::write(&in_place, targets("10.0.0.2:80")).unwrap();
        until_first_target(&mut receiver, "10.0.0.2:80").await;

        let renamed = root.path().join("renamed.json");
        std::fs::write(&renamed, targets("10.0.1.1:80")).unwrap();
        let mut receiver =
            watch_polling_every(&changes, "b", renamed.clone(), Counter::default(), never);
        until_first_target(&mut receiver, "10.0.1.1:80").await;
        let staged = root.path().join(".renamed.json.tmp");
        std::fs::write(&staged, targets("10.0.1.2:80")).unwrap();
        std::fs::rename(&staged, &renamed).unwrap();
        until_first_target(&mut receiver, "10.0.1.2:80").await;

        // A ConfigMap: web.json -> ..data/web.json, ..data -> ..v1, swapped to ..v2 by rename.
        let mounted = root.path().join("configmap");
        for version in ["..v1", "..v2"] {
            std::fs::create_dir_all(mounted.join(version)).unwrap();
        }
        std::fs::write(mounted.join("..v1/web.json"), targets("10.0.2.1:80")).unwrap();
        std::fs::write(mounted.join("..v2/web.json"), targets("10.0.2.2:80")).unwrap();
        std::os::unix::fs::symlink("..v1", mounted.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/web.json", mounted.join("web.json")).unwrap();
        let mut receiver = watch_polling_every(
            &changes,
            "c",
            mounted.join("web.json"),
            Counter::default(),
            never,
        );
        until_first_target(&mut receiver, "10.0.2.1:80").await;
        std::os::unix::fs::symlink("..v2", mounted.join("..data_tmp")).unwrap();
        std::fs::rename(mounted.join("..data_tmp"), mounted.join("..data")).unwrap();
        until_first_target(&mut receiver, "10.0.2.2:80").await;

        let directory = root.path().join("comes_and_goes");
        std::fs::create_dir(&directory).unwrap();
        let file = directory.join("web.json");
        std::fs::write(&file, targets("10.0.3.1:80")).unwrap();
        // Here polling must take over while the directory is gone, and only then.
        let polls = Polls {
            with_notices: hour,
            without: POLL,
        };
        let mut receiver =
            watch_polling_every(&changes, "d", file.clone(), Counter::default(), polls);
        until_first_target(&mut receiver, "10.0.3.1:80").await;
        std::fs::remove_dir_all(&directory).unwrap();
        // Long enough for the watcher to see the watch end and poll the missing directory.
        tokio::time::sleep(POLL * 3).await;
        std::fs::create_dir(&directory).unwrap();
        std::fs::write(&file, targets("10.0.3.2:80")).unwrap();
        until_first_target(&mut receiver, "10.0.3.2:80").await;
        // Watched again (or polled, were it not): a later write is taken too.
        tokio::time::sleep(POLL * 3).await;
        std::fs::write(&file, targets("10.0.3.3:80")).unwrap();
        until_first_target(&mut receiver, "10.0.3.3:80").await;

        // A directory moved away (its watch would follow it) and another made in its place.
        let moved = root.path().join("moved_away");
        std::fs::rename(&directory, &moved).unwrap();
        tokio::time::sleep(POLL * 3).await;
        std::fs::create_dir(&directory).unwrap();
        std::fs::write(&file, targets("10.0.3.4:80")).unwrap();
        until_first_target(&mut receiver, "10.0.3.4:80").await;
        // The old directory's changes are not the file's any more; the new one's are.
        std::fs::write(moved.join("web.json"), targets("10.9.9.9:80")).unwrap();
        tokio::time::sleep(POLL * 3).await;
        let now = receiver.borrow()[0].targets[0].clone();
        assert_eq!(now, "10.0.3.4:80", "the moved directory's file was taken");
        std::fs::write(&file, targets("10.0.3.5:80")).unwrap();
        until_first_target(&mut receiver, "10.0.3.5:80").await;

        // A symlink into another directory: an edit there is noticed, without polling.
        let real = root.path().join("real");
        let links = root.path().join("links");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&links).unwrap();
        std::fs::write(real.join("web.json"), targets("10.0.4.1:80")).unwrap();
        std::os::unix::fs::symlink(real.join("web.json"), links.join("web.json")).unwrap();
        let mut receiver = watch_polling_every(
            &changes,
            "e",
            links.join("web.json"),
            Counter::default(),
            never,
        );
        until_first_target(&mut receiver, "10.0.4.1:80").await;
        std::fs::write(real.join("web.json"), targets("10.0.4.2:80")).unwrap();
        until_first_target(&mut receiver, "10.0.4.2:80").await;

        // A symlink to another file of the same directory, edited in place through the link:
        // the event names the target.
        let same = root.path().join("same");
        std::fs::create_dir_all(&same).unwrap();
        std::fs::write(same.join("web-prod.json"), targets("10.0.5.1:80")).unwrap();
        std::os::unix::fs::symlink("web-prod.json", same.join("web.json")).unwrap();
        let mut receiver = watch_polling_every(
            &changes,
            "f",
            same.join("web.json"),
            Counter::default(),
            never,
        );
        until_first_target(&mut receiver, "10.0.5.1:80").await;
        std::fs::write(same.join("web.json"), targets("10.0.5.2:80")).unwrap();
        until_first_target(&mut receiver, "10.0.5.2:80").await;
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
