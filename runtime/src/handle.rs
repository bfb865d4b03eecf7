//! A loaded model as the request path sees it: its config, its status, and the way into its queue.

use std::sync::Arc;
use std::time::Duration;

use siesta_models::{Model, ModelConfig, Tensor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::batcher::{self, BatchPolicy, Queued};
use crate::error::{Result, ServeError};
use crate::metrics;
use crate::status::{InFlightGuard, ModelState, ModelStatus};
use crate::worker::{self, Job, JobOutput};

pub struct ModelHandle {
    pub config: Arc<ModelConfig>,
    pub status: Arc<ModelStatus>,
    queue: mpsc::UnboundedSender<Queued>,
    /// Bounds queued plus running requests; empty means overloaded.
    permits: Arc<Semaphore>,
    queue_limit: usize,
}

/// Held for the life of a request: its queue slot and its in-flight count.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _in_flight: InFlightGuard,
    permits: Arc<Semaphore>,
    queue_limit: usize,
    model: String,
}

impl Drop for Admission {
    fn drop(&mut self) {
        // +1: our own permit is still held while this runs.
        let depth = self.queue_limit - self.permits.available_permits() - 1;
        metrics::queue_depth(&self.model, depth);
    }
}

impl ModelHandle {
    /// Starts the worker thread and the batcher task for a loaded (and warmed up) model.
    pub fn start(model: Box<dyn Model>, status: Arc<ModelStatus>, queue_limit: usize) -> Arc<Self> {
        let config = Arc::new(model.config().clone());
        let worker = worker::spawn(model, status.clone());
        let (jobs, rx) = mpsc::unbounded_channel();
        let policy = BatchPolicy {
            max_batch_size: config.max_batch_size,
            max_queue_delay: Duration::from_micros(config.max_queue_delay_us),
        };
        tokio::spawn(batcher::run(
            config.name.clone(),
            policy,
            rx,
            worker.clone(),
        ));
        status.set_state(ModelState::Ready);
        Arc::new(ModelHandle {
            config,
            status,
            queue: jobs,
            permits: Arc::new(Semaphore::new(queue_limit)),
            queue_limit,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Takes a queue slot or fails at once with `Overloaded`: an overloaded server answers fast.
    pub fn admit(&self) -> Result<Admission> {
        let permit =
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| ServeError::Overloaded {
                    model: self.config.name.clone(),
                    queued: self.queue_limit,
                    limit: self.queue_limit,
                })?;
        let depth = self.queue_limit - self.permits.available_permits();
        metrics::queue_depth(&self.config.name, depth);
        Ok(Admission {
            _permit: permit,
            _in_flight: self.status.begin_request(),
            permits: self.permits.clone(),
            queue_limit: self.queue_limit,
            model: self.config.name.clone(),
        })
    }

    /// Queues validated inputs and waits for the batch they land in.
    pub async fn infer(
        &self,
        _admission: &Admission,
        inputs: Vec<Tensor>,
        rows: usize,
    ) -> Result<JobOutput> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            enqueued: Instant::now(),
            span: tracing::Span::current(),
            reply,
        };
        self.queue
            .send(Queued::Job(job))
            .map_err(|_| ServeError::WorkerGone(self.config.name.clone()))?;
        rx.await
            .map_err(|_| ServeError::WorkerGone(self.config.name.clone()))?
    }

    /// Uploads the weights again if they were released; how long that took.
    pub async fn restore_device_memory(&self) -> Result<Duration> {
        let (done, rx) = oneshot::channel();
        self.queue
            .send(Queued::Restore(done))
            .map_err(|_| ServeError::WorkerGone(self.config.name.clone()))?;
        rx.await
            .map_err(|_| ServeError::WorkerGone(self.config.name.clone()))?
    }

    /// Gives the model's device memory back; the next request restores it.
    pub async fn release_device_memory(&self) {
        let (done, rx) = oneshot::channel();
        if self.queue.send(Queued::Release(done)).is_ok() {
            let _ = rx.await;
        }
    }
}
