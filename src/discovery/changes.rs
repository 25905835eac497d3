//! Change notices for watched files, from inotify: one inotify instance per process (the
//! kernel allows a user only 128 instances by default, so one per check would run out),
//! watching the directory of each watched file, not the file itself. A directory watch still
//! sees a file that is replaced by a rename (how editors and config tools write) or swapped
//! by symlink (Kubernetes ConfigMaps), where a watch on the old inode would go quiet.
//!
//! A notice only says "look again": the file watcher reads the file and decides. Where no
//! notice can come (inotify unavailable, the directory missing or unwatchable, the instance
//! broken, a filesystem such as NFS that sends none for remote changes) the watcher keeps
//! polling; `Notices::is_live` tells it which.

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio::sync::Notify;

/// What a directory watch is told about: anything that can change a file in it.
fn directory_events() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// The process's directory watches, started on first use; shared by every file watcher.
#[derive(Clone)]
pub struct DirectoryChanges {
    runtime: tokio::runtime::Handle,
    hub: Arc<OnceLock<Option<Arc<Hub>>>>,
}

impl DirectoryChanges {
    /// Watches that will run on `runtime` once a file asks for them.
    pub fn new(runtime: tokio::runtime::Handle) -> DirectoryChanges {
        DirectoryChanges {
            runtime,
            hub: Arc::new(OnceLock::new()),
        }
    }

    /// The runtime the file watchers run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Notices of changes in the directory holding `file`, or `None` when none can come
    /// (the caller polls).
    pub fn subscribe(&self, file: &Path) -> Option<Notices> {
        let hub = self
            .hub
            .get_or_init(|| Hub::start(&self.runtime))
            .as_ref()?;
        hub.subscribe(&directory_of(file))
    }
}

/// The directory whose entries name `file` (the current directory for a bare name).
fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// One watcher's subscription to one directory; dropping it ends it. Its entry leaves the
/// directory's list at the directory's next event, and the kernel's watch with the last one.
pub struct Notices {
    subscriber: Arc<Subscriber>,
}

impl Notices {
    /// Waits for the next change in the directory (a change since the last wait counts).
    pub async fn changed(&self) {
        self.subscriber.notify.notified().await;
    }

    /// False once the watch has ended (the directory was removed or moved, the instance
    /// broke): no more notices will come, so the caller subscribes again or polls.
    pub fn is_live(&self) -> bool {
        !self.subscriber.ended.load(Ordering::Relaxed)
    }
}

struct Subscriber {
    notify: Notify,
    ended: AtomicBool,
}

impl Subscriber {
    fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

struct Hub {
    watches: Mutex<Watched>,
}

struct Watched {
    watches: Watches,
    subscribers: HashMap<WatchDescriptor, Vec<Weak<Subscriber>>>,
    /// Set when the event stream ended: no watch will send anything again.
    broken: bool,
}

impl Hub {
    /// Starts the instance and the task that reads its events; `None`, logged, when inotify
    /// is not available (then every file is polled).
    fn start(runtime: &tokio::runtime::Handle) -> Option<Arc<Hub>> {
        let _entered = runtime.enter();
        let started = Inotify::init().and_then(|inotify| {
            // Room for many events per read; an event is 16 bytes and a name.
            inotify.into_event_stream(vec![0u8; 64 * 1024])
        });
        let events = match started {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "inotify is not available; discovery files are polled");
                return None;
            }
        };
        let hub = Arc::new(Hub {
            watches: Mutex::new(Watched {
                watches: events.watches(),
                subscribers: HashMap::new(),
                broken: false,
            }),
        });
        runtime.spawn(Arc::clone(&hub).read_events(events));
        Some(hub)
    }

    fn subscribe(&self, directory: &Path) -> Option<Notices> {
        let mut watched = self.lock();
        if watched.broken {
            return None;
        }
        // Adding a directory already watched returns its descriptor again.
        let descriptor = match watched.watches.add(directory, directory_events()) {
            Ok(descriptor) => descriptor,
            Err(error) => {
                tracing::debug!(directory = %directory.display(), %error, "cannot watch the directory; polling it");
                return None;
            }
        };
        let subscriber = Arc::new(Subscriber {
            notify: Notify::new(),
            ended: AtomicBool::new(false),
        });
        let list = watched.subscribers.entry(descriptor).or_default();
        list.retain(|weak| weak.strong_count() > 0);
        list.push(Arc::downgrade(&subscriber));
        Some(Notices { subscriber })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn read_events(self: Arc<Hub>, mut events: inotify::EventStream<Vec<u8>>) {
        use futures_util::StreamExt;
        loop {
            let event = match events.next().await {
                Some(Ok(event)) => event,
                Some(Err(error)) => {
                    tracing::warn!(%error, "inotify stopped; discovery files are polled");
                    break;
                }
                None => break,
            };
            let mut watched = self.lock();
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                // Events were lost: every watcher looks again.
                for subscriber in watched.subscribers.values().flatten() {
                    if let Some(subscriber) = subscriber.upgrade() {
                        subscriber.notify.notify_one();
                    }
                }
                continue;
            }
            let ended = event.mask.contains(EventMask::IGNORED);
            let Some(list) = watched.subscribers.get_mut(&event.wd) else {
                continue;
            };
            list.retain(|weak| weak.strong_count() > 0);
            for subscriber in list.iter().filter_map(Weak::upgrade) {
                if ended {
                    subscriber.end();
                } else {
                    subscriber.notify.notify_one();
                }
            }
            if ended || list.is_empty() {
                let removed = watched.subscribers.remove(&event.wd);
                if !ended && removed.is_some() {
                    // Nobody listens any more: stop the kernel's watch too.
                    let _ = watched.watches.remove(event.wd);
                }
            }
        }
        let mut watched = self.lock();
        watched.broken = true;
        for subscriber in watched.subscribers.drain().flat_map(|(_, list)| list) {
            if let Some(subscriber) = subscriber.upgrade() {
                subscriber.end();
            }
        }
    }
}
