//! Change notices for watched files, from inotify: one inotify instance per process (the
//! kernel allows a user only 128 instances by default, so one per check would run out),
//! watching the directory of each watched file, not the file itself. A directory watch still
//! sees a file that is replaced by a rename (how editors and config tools write) or swapped
//! by symlink (Kubernetes ConfigMaps), where a watch on the old inode would go quiet.
//!
//! A notice only says "look again": the file watcher reads the file and decides. A watcher
//! is woken by what can change its file: an event naming it, an entry created, moved or
//! deleted (a rename into place, a symlink swapped), or the directory itself moved or
//! removed, which ends the watch; writes to other files of a busy directory wake nobody. Where no
//! notice can come (inotify unavailable, the directory missing or unwatchable, the instance
//! broken, a filesystem such as NFS that sends none for remote changes) the watcher keeps
//! polling; `Notices::is_live` tells it which.

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio::sync::{oneshot, Notify};

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

/// Events that can change what any name of the directory leads to: an entry created, moved
/// or deleted (a file renamed into place, a symlink the file goes through swapped).
fn entry_events() -> EventMask {
    EventMask::CREATE | EventMask::MOVED_TO | EventMask::MOVED_FROM | EventMask::DELETE
}

/// Events after which the watch no longer follows the path: the directory was moved or
/// removed (its watch follows the inode), or the kernel dropped the watch.
fn end_events() -> EventMask {
    EventMask::MOVE_SELF | EventMask::DELETE_SELF | EventMask::IGNORED | EventMask::UNMOUNT
}

/// The directory watches of one checker (one per process in the daemon), started on first
/// use and shared by every file watcher; its reader ends with the last clone.
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

    /// Notices of changes to `file` as its directory sees them, or `None` when none can come
    /// (the caller polls). It may wait on the filesystem (adding a watch resolves the path):
    /// call it where blocking is allowed.
    pub fn subscribe(&self, file: &Path) -> Option<Notices> {
        let hub = self
            .hub
            .get_or_init(|| Hub::start(&self.runtime))
            .as_ref()?;
        hub.subscribe(&directory_of(file), file.file_name())
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

    /// False once the watch has ended (the directory was removed or moved, events were lost,
    /// the instance broke): no more notices will come, so the caller subscribes again or
    /// polls.
    pub fn is_live(&self) -> bool {
        !self.subscriber.ended.load(Ordering::Relaxed)
    }
}

struct Subscriber {
    /// The name in the directory the watcher reads (None: the directory itself).
    name: Option<OsString>,
    notify: Notify,
    ended: AtomicBool,
}

impl Subscriber {
    fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Whether an event about `name` can change what this subscriber reads.
    fn concerned(&self, mask: EventMask, name: Option<&OsStr>) -> bool {
        match name {
            None => true,
            Some(name) => mask.intersects(entry_events()) || self.name.as_deref() == Some(name),
        }
    }
}

struct Hub {
    watched: Mutex<Watched>,
    /// Dropped with the hub, which tells the reader to stop.
    _stop: oneshot::Sender<()>,
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
        let (stop, stopped) = oneshot::channel();
        let hub = Arc::new(Hub {
            watched: Mutex::new(Watched {
                watches: events.watches(),
                subscribers: HashMap::new(),
                broken: false,
            }),
            _stop: stop,
        });
        runtime.spawn(read_events(Arc::downgrade(&hub), events, stopped));
        Some(hub)
    }

    fn subscribe(&self, directory: &Path, name: Option<&OsStr>) -> Option<Notices> {
        let mut watches = {
            let watched = self.lock();
            if watched.broken {
                return None;
            }
            watched.watches.clone()
        };
        // Outside the lock: adding a watch resolves the path, which a hung mount can stall.
        // Adding a directory already watched returns its descriptor again.
        let descriptor = match watches.add(directory, directory_events()) {
            Ok(descriptor) => descriptor,
            Err(error) => {
                tracing::debug!(directory = %directory.display(), %error, "cannot watch the directory; polling it");
                return None;
            }
        };
        let subscriber = Arc::new(Subscriber {
            name: name.map(OsStr::to_os_string),
            notify: Notify::new(),
            ended: AtomicBool::new(false),
        });
        let mut watched = self.lock();
        if watched.broken {
            return None;
        }
        let list = watched.subscribers.entry(descriptor).or_default();
        list.retain(|weak| weak.strong_count() > 0);
        list.push(Arc::downgrade(&subscriber));
        Some(Notices { subscriber })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands one event to the subscribers it concerns.
    fn deliver(&self, event: inotify::Event<OsString>) {
        let mut watched = self.lock();
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost, an end among them maybe: every subscriber looks again and
            // subscribes again (the kernel's watches stay, and are found again).
            for subscriber in watched.subscribers.drain().flat_map(|(_, list)| list) {
                if let Some(subscriber) = subscriber.upgrade() {
                    subscriber.end();
                }
            }
            return;
        }
        let ended = event.mask.intersects(end_events());
        let Some(list) = watched.subscribers.get_mut(&event.wd) else {
            return;
        };
        list.retain(|weak| weak.strong_count() > 0);
        for subscriber in list.iter().filter_map(Weak::upgrade) {
            if ended {
                subscriber.end();
            } else if subscriber.concerned(event.mask, event.name.as_deref()) {
                subscriber.notify.notify_one();
            }
        }
        if ended || list.is_empty() {
            watched.subscribers.remove(&event.wd);
            if !event.mask.contains(EventMask::IGNORED) {
                // Moved away or unwatched by everyone: the kernel's watch goes too.
                let _ = watched.watches.remove(event.wd);
            }
        }
    }

    /// The event stream ended: no watch sends anything again; every subscriber polls.
    fn break_down(&self) {
        let mut watched = self.lock();
        watched.broken = true;
        for subscriber in watched.subscribers.drain().flat_map(|(_, list)| list) {
            if let Some(subscriber) = subscriber.upgrade() {
                subscriber.end();
            }
        }
    }
}

/// Reads the instance's events until the hub is dropped or the stream fails.
async fn read_events(
    hub: Weak<Hub>,
    mut events: inotify::EventStream<Vec<u8>>,
    mut stopped: oneshot::Receiver<()>,
) {
    use futures_util::StreamExt;
    loop {
        let next = tokio::select! {
            _ = &mut stopped => return,
            next = events.next() => next,
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        match next {
            Some(Ok(event)) => hub.deliver(event),
            Some(Err(error)) => {
                tracing::warn!(%error, "inotify stopped; discovery files are polled");
                hub.break_down();
                return;
            }
            None => {
                hub.break_down();
                return;
            }
        }
    }
}
