//! What an agent keeps across restarts: one JSON file (`episodes.json` beside the history
//! database) of named sections, each a map from a key to an entry its owner serialises. The
//! results sink keeps each troubled check's state and failure episode there, notifications
//! which receivers accepted what; both resume from it at the next start, so a restart in the
//! middle of an outage continues the episode instead of starting another.
//!
//! Owners `put` and `remove` entries as things change (a changed entry is serialised once,
//! at that moment, never per save); one task writes the file when it changed, to a temporary
//! file that is synced and renamed over the old one, so a crash leaves one whole version or
//! the other. Each change has a generation number: `written` waits until the file holds a
//! generation, so notifications can save an episode before telling anyone of it, and a crash
//! right after the first trigger still resumes that episode's id.
//!
//! A file that cannot be written is logged once per failing stretch and counts as written
//! (notifications are delivered rather than withheld); it never stops anything else. It
//! imports nothing from the crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// The file's format; another version is ignored with a warning.
pub const SAVED_STATE_VERSION: u64 = 2;
/// Writes at most this often, so a mass outage costs a few writes a second, not one per check.
const MIN_WRITE_GAP: Duration = Duration::from_millis(100);

/// The entries read at start, per section, by key (unparsed: each owner reads its own).
pub type Loaded = BTreeMap<String, BTreeMap<String, serde_json::Value>>;

#[derive(Debug, Default)]
struct Inner {
    /// Section, then key, then the entry as JSON text (shared, so that a write copies
    /// pointers under the lock and renders the file outside it).
    sections: BTreeMap<&'static str, BTreeMap<String, Arc<str>>>,
    /// Bumped by every change.
    generation: u64,
}

/// Why the saved state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SavedStateError {
    #[error("{0} is in use by another bastion process; give each checker a state directory of its own (the directory of history.path)")]
    InUse(String),
}

/// The agent's saved state: cheap to share, never waits on the disk for a `put`.
#[derive(Debug)]
pub struct SavedState {
    path: Option<PathBuf>,
    /// Held while this process owns the file: two processes writing one file would each
    /// overwrite what the other saved.
    _lock: Option<std::fs::File>,
    inner: Mutex<Inner>,
    wake: Notify,
    /// The newest generation the file holds (or that counts as written).
    written: watch::Sender<u64>,
}

impl SavedState {
    /// State saved in `path` (None: nothing is saved), and what the file held. Refused when
    /// another process holds the file (`<path>.lock`); a directory that cannot be written is
    /// not refused here (saving says so, once).
    pub fn open(path: Option<PathBuf>) -> Result<(Arc<SavedState>, Loaded), SavedStateError> {
        let lock = match path.as_deref() {
            Some(path) => take_lock(path)?,
            None => None,
        };
        let loaded = path.as_deref().map(load).unwrap_or_default();
        // Entries are carried over only as their owners put them back: one that nobody
        // claims (a check gone while the agent was down, its episode resolved) is dropped.
        let state = SavedState {
            _lock: lock,
            ..SavedState::empty(path)
        };
        Ok((Arc::new(state), loaded))
    }

    /// Saved state that lives only in memory.
    pub fn in_memory() -> Arc<SavedState> {
        Arc::new(SavedState::empty(None))
    }

    fn empty(path: Option<PathBuf>) -> SavedState {
        SavedState {
            path,
            _lock: None,
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            written: watch::channel(0).0,
        }
    }

    /// Where the state is saved.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Sets `key` of `section` to `entry`; returns the change's generation.
    pub fn put<T: serde::Serialize>(&self, section: &'static str, key: &str, entry: &T) -> u64 {
        let text = match serde_json::to_string(entry) {
            Ok(text) => text,
            Err(error) => {
                // Plain data always serialises; say so loudly if it ever does not.
                tracing::error!(section, key, %error, "cannot save an entry of the agent's state");
                return self.generation();
            }
        };
        let mut inner = self.lock();
        let entries = inner.sections.entry(section).or_default();
        if entries.get(key).is_some_and(|saved| **saved == *text) {
            return inner.generation;
        }
        entries.insert(key.to_string(), Arc::from(text));
        self.changed(inner)
    }

    /// Removes `key` of `section`; returns the change's generation.
    pub fn remove(&self, section: &'static str, key: &str) -> u64 {
        let mut inner = self.lock();
        let removed = inner
            .sections
            .get_mut(section)
            .and_then(|entries| entries.remove(key))
            .is_some();
        if !removed {
            return inner.generation;
        }
        self.changed(inner)
    }

    fn changed(&self, mut inner: std::sync::MutexGuard<'_, Inner>) -> u64 {
        inner.generation += 1;
        let generation = inner.generation;
        drop(inner);
        if self.path.is_none() {
            self.written.send_replace(generation);
        } else {
            self.wake.notify_one();
        }
        generation
    }

    /// The newest change's generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Waits until the file holds `generation` (or `limit` passes); true if it does.
    pub async fn written(&self, generation: u64, limit: Duration) -> bool {
        let mut written = self.written.subscribe();
        tokio::time::timeout(limit, written.wait_for(|saved| *saved >= generation))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Writes the file whenever it changed, until `stop`; then once more if needed.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
            }
            self.write(&mut failing).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(MIN_WRITE_GAP) => {}
            }
        }
        self.write(&mut failing).await;
    }

    /// Writes the file now if it changed since it was last written.
    pub async fn flush(&self) {
        let mut failing = false;
        self.write(&mut failing).await;
    }

    async fn write(&self, failing: &mut bool) {
        let Some(path) = &self.path else {
            return;
        };
        let (generation, sections) = {
            let inner = self.lock();
            if inner.generation <= *self.written.borrow() {
                return;
            }
            (inner.generation, inner.sections.clone())
        };
        let text = render(&sections);
        let result = write_atomically(path, text.into_bytes()).await;
        match result {
            Ok(()) => {
                if *failing {
                    tracing::info!(path = %path.display(), "the agent's state is saved again");
                }
                *failing = false;
            }
            Err(error) => {
                // Once per failing stretch: a missing directory must not flood the log.
                if !*failing {
                    tracing::warn!(path = %path.display(), %error, "cannot save open failure episodes; a restart will not resume them (check that the directory of [history] path exists and is writable)");
                }
                *failing = true;
            }
        }
        // Written, or not writable: either way nobody should wait for it any longer.
        self.written.send_if_modified(|written| {
            let newer = generation > *written;
            if newer {
                *written = generation;
            }
            newer
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change leaves the maps consistent; a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The file's text: `{"version":2,"sections":{"<section>":{"<key>":<entry>,...},...}}`, built
/// from the entries' saved text without parsing them again.
fn render(sections: &BTreeMap<&'static str, BTreeMap<String, Arc<str>>>) -> String {
    let size: usize = sections
        .values()
        .flat_map(|entries| entries.iter())
        .map(|(key, entry)| key.len() + entry.len() + 8)
        .sum();
    let mut out = String::with_capacity(size + 64);
    out.push_str(&format!(
        "{{\"version\":{SAVED_STATE_VERSION},\"sections\":{{"
    ));
    for (index, (section, entries)) in sections.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&json_string(section));
        out.push_str(":{");
        for (index, (key, entry)) in entries.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push('\n');
            out.push_str(&json_string(key));
            out.push(':');
            out.push_str(entry);
        }
        out.push('}');
    }
    out.push_str("}}\n");
    out
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

async fn write_atomically(path: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    let path = path.to_path_buf();
    // Blocking calls (sync_all) belong on the blocking pool, never on an async worker.
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // A name of this process's own: never another writer's half-written file.
        let temporary = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let mut file = create_private(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A new file only its owner may read (episode ids and check names are not for everyone).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Takes `<path>.lock` for this process, or says who has it. A directory that does not
/// exist or cannot be written gives no lock (and no error: saving will say why).
fn take_lock(path: &Path) -> Result<Option<std::fs::File>, SavedStateError> {
    let lock_path = path.with_extension("lock");
    let Ok(file) = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
    else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(SavedStateError::InUse(path.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(_)) => Ok(None),
    }
}

/// What the file at `path` holds; nothing (with a warning) when it cannot be read.
fn load(path: &Path) -> Loaded {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Loaded::new(),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the agent's saved state; open failure episodes of the last run will not be resumed");
            return Loaded::new();
        }
    };
    #[derive(serde::Deserialize)]
    struct File {
        version: u64,
        #[serde(default)]
        sections: Loaded,
    }
    match serde_json::from_str::<File>(&text) {
        Ok(file) if file.version == SAVED_STATE_VERSION => file.sections,
        Ok(file) => {
            tracing::warn!(path = %path.display(), version = file.version, "the agent's saved state is of another version and is ignored");
            Loaded::new()
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "the agent's saved state is not readable and is ignored");
            Loaded::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test, removed when it ends.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("bastion-saved-state-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn entries_survive_a_restart_and_unchanged_puts_change_nothing() {
        let dir = TempDir::new("restart");
        let path = dir.path().join("episodes.json");
        let (state, loaded) = SavedState::open(Some(path.clone())).unwrap();
        assert!(loaded.is_empty());
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&state).run(stop.clone()));
        let first = state.put("checks", "web", &serde_json::json!({"state": "FAIL"}));
        assert_eq!(
            state.put("checks", "web", &serde_json::json!({"state": "FAIL"})),
            first
        );
        let second = state.put("checks", "api \"quoted\"", &vec![1, 2]);
        assert!(second > first);
        assert!(state.written(second, Duration::from_secs(5)).await);
        stop.cancel();
        task.await.unwrap();
        // Another process (here: another open) cannot take the file while it is held.
        let error = SavedState::open(Some(path.clone())).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("in use by another bastion process"),
            "{error}"
        );
        drop(state);

        let (_, loaded) = SavedState::open(Some(path.clone())).unwrap();
        let checks = &loaded["checks"];
        assert_eq!(checks["web"], serde_json::json!({"state": "FAIL"}));
        assert_eq!(checks["api \"quoted\""], serde_json::json!([1, 2]));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "private: it names checks and receivers"
        );
    }

    #[tokio::test]
    async fn removing_writes_the_file_without_the_entry() {
        let dir = TempDir::new("remove");
        let path = dir.path().join("episodes.json");
        let (state, _) = SavedState::open(Some(path.clone())).unwrap();
        state.put("checks", "web", &1);
        state.flush().await;
        let generation = state.remove("checks", "web");
        assert_eq!(
            state.remove("checks", "web"),
            generation,
            "nothing left to remove"
        );
        state.flush().await;
        assert!(state.written(generation, Duration::ZERO).await);
        drop(state);
        let (_, loaded) = SavedState::open(Some(path)).unwrap();
        assert!(loaded["checks"].is_empty());
    }

    #[tokio::test]
    async fn an_unwritable_file_counts_as_written_and_a_bad_one_is_ignored() {
        let dir = TempDir::new("unwritable");
        let (state, _) = SavedState::open(Some(dir.path().join("missing/episodes.json"))).unwrap();
        let generation = state.put("checks", "web", &1);
        state.flush().await;
        assert!(state.written(generation, Duration::ZERO).await);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        assert!(SavedState::open(Some(bad.clone())).unwrap().1.is_empty());
        std::fs::write(&bad, "{\"version\": 1, \"episodes\": []}").unwrap();
        assert!(SavedState::open(Some(bad)).unwrap().1.is_empty());
    }

    #[tokio::test]
    async fn without_a_file_every_change_is_written_at_once() {
        let (state, loaded) = (SavedState::in_memory(), Loaded::new());
        assert!(loaded.is_empty());
        let generation = state.put("checks", "web", &1);
        assert!(state.written(generation, Duration::ZERO).await);
    }
}
