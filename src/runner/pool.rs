//! A worker pool for one check type: a fixed number of workers, handed out in arrival order.
//! A task either gets a worker before its dispatch deadline or never runs; waiting longer would
//! report a probe of a moment that has already passed.

use crate::metrics::{Metrics, TypeLabels};
use crate::model::CheckType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
pub struct WorkerPool {
    check_type: CheckType,
    size: usize,
    // tokio's semaphore is fair: waiters are served first come, first served.
    semaphore: Arc<Semaphore>,
    busy: Gauge,
    wait_seconds: Histogram,
    dispatch_timeouts: Counter,
}

/// A worker, held while one probe runs. Dropping it frees the worker.
#[derive(Debug)]
pub struct Worker {
    _permit: OwnedSemaphorePermit,
    busy: Gauge,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.busy.dec();
    }
}

impl WorkerPool {
    pub fn new(check_type: CheckType, size: usize, metrics: &Metrics) -> WorkerPool {
        metrics.register_pool(check_type, size);
        let labels = TypeLabels {
            r#type: check_type.as_str(),
        };
        WorkerPool {
            check_type,
            size,
            semaphore: Arc::new(Semaphore::new(size)),
            busy: metrics.workers_busy.get_or_create(&labels).clone(),
            wait_seconds: metrics.dispatch_wait_seconds.get_or_create(&labels).clone(),
            dispatch_timeouts: metrics.dispatch_timeouts.get_or_create(&labels).clone(),
        }
    }

    pub fn check_type(&self) -> CheckType {
        self.check_type
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Workers running a probe now.
    pub fn busy(&self) -> usize {
        self.size.saturating_sub(self.semaphore.available_permits())
    }

    /// Waits for a worker until `deadline`. None means the deadline passed first; that is
    /// counted as a dispatch timeout.
    pub async fn acquire_until(&self, waiting_since: Instant, deadline: Instant) -> Option<Worker> {
        // `timeout_at` polls the acquire first, so a free worker is taken even at the deadline.
        match tokio::time::timeout_at(deadline, self.semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.wait_seconds
                    .observe(waiting_since.elapsed().as_secs_f64());
                self.busy.inc();
                Some(Worker {
                    _permit: permit,
                    busy: self.busy.clone(),
                })
            }
            // The semaphore is never closed; treat it like a timeout if it ever is.
            Ok(Err(_)) | Err(_) => {
                self.dispatch_timeouts.inc();
                None
            }
        }
    }
}
