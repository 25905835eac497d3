//! Runs a future on a thread of its own, with a single-threaded runtime, so its timers keep
//! time however busy the shared runtime is (the checker's schedule depends on it). When the
//! system refuses a thread or a runtime, it falls back to the shared runtime. It must never
//! panic, neither on that fallback nor when dropping a runtime from async code.

use std::sync::Arc;

/// Runs `work` on a thread of its own with a single-threaded runtime, so that its timers fire
/// on time however busy the probe workers are; the checker's schedule lag depends on it. The
/// returned task ends when `work` does. Without a thread (the system refused one) it runs on
/// the shared runtime instead.
pub(super) fn spawn_on_own_thread<F>(name: &str, work: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    spawn_on_own_thread_with(name, work, |builder, body| builder.spawn(body).map(drop))
}

/// What runs on the checker's own thread.
type ThreadBody = Box<dyn FnOnce() + Send + 'static>;

/// `spawn_on_own_thread`, with the thread started by `start` (std's, or a refusal in tests).
fn spawn_on_own_thread_with<F, S>(name: &str, work: F, start: S) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
    S: FnOnce(std::thread::Builder, ThreadBody) -> std::io::Result<()>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::warn!(%error, "cannot build a runtime for {name}; sharing the main one");
            return tokio::spawn(work);
        }
    };
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    // The runtime and the work reach the thread through this slot rather than inside the
    // closure: when the thread cannot start, std drops the closure right here, and dropping a
    // runtime inside an async context panics. From the slot both can be taken back.
    let slot = Arc::new(std::sync::Mutex::new(Some((runtime, work))));
    let on_thread = Arc::clone(&slot);
    let body: ThreadBody = Box::new(move || {
        let taken = on_thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some((runtime, work)) = taken {
            runtime.block_on(work);
        }
        let _ = done.send(());
    });
    match start(std::thread::Builder::new().name(name.to_string()), body) {
        Ok(()) => tokio::spawn(async move {
            let _ = finished.await;
        }),
        Err(error) => {
            tracing::warn!(%error, "cannot start a thread for {name}; sharing the main runtime");
            let taken = slot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            match taken {
                Some((runtime, work)) => {
                    // Unlike a plain drop, this may be called from async code.
                    runtime.shutdown_background();
                    tokio::spawn(work)
                }
                None => tokio::spawn(async {}),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_checker_thread_runs_the_work_on_a_thread_of_its_own() {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let task = spawn_on_own_thread("bastion-test-own", async move {
            let _ = sender.send(std::thread::current().name().map(str::to_string));
        });
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the work ends")
            .expect("the task does not panic");
        assert_eq!(receiver.await.unwrap().as_deref(), Some("bastion-test-own"));
    }

    #[tokio::test]
    async fn without_a_thread_the_work_runs_on_the_shared_runtime_without_a_panic() {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let main_thread = std::thread::current().id();
        let task = spawn_on_own_thread_with(
            "bastion-test-refused",
            async move {
                let _ = sender.send(std::thread::current().id());
            },
            |_builder, body| {
                // What std does when the system refuses a thread: the closure is dropped.
                drop(body);
                Err(std::io::Error::from(std::io::ErrorKind::WouldBlock))
            },
        );
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the work ends")
            .expect("the task does not panic");
        // A current-thread test runtime: the fallback ran the work on this very thread.
        assert_eq!(receiver.await.unwrap(), main_thread);
    }
}
