//! The model's own OS thread: the only place `Model::forward` runs, so engines need no locks and
//! compute never blocks the async runtime.

use std::sync::Arc;
use std::time::Duration;

use siesta_models::{Model, Tensor};
use tokio::sync::{mpsc, oneshot};
// tokio's clock, as everywhere in the runtime: a paused test clock moves it, and queue times
// compare with the batcher's deadlines.
use tokio::time::Instant;

use crate::error::ServeError;
use crate::metrics;
use crate::status::{ModelState, ModelStatus};

/// One queued request.
pub struct Job {
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    /// When the request was queued (the batcher's deadline counts from it).
    pub enqueued: Instant,
    pub span: tracing::Span,
    pub reply: oneshot::Sender<Result<JobOutput, ServeError>>,
}

#[derive(Debug)]
pub struct JobOutput {
    pub outputs: Vec<Tensor>,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub queue: Duration,
    pub compute: Duration,
    pub batch_rows: usize,
    /// Set when this batch had to bring the weights back onto the device first.
    pub restored: Option<Duration>,
}

pub enum WorkerMsg {
    Batch(Vec<Job>),
    Release(oneshot::Sender<()>),
}

pub fn spawn(mut model: Box<dyn Model>, status: Arc<ModelStatus>) -> mpsc::Sender<WorkerMsg> {
    // Capacity 1: the batcher can prepare exactly one batch while the current one runs.
    let (tx, mut rx) = mpsc::channel::<WorkerMsg>(1);
    let name = status.name.clone();
    std::thread::Builder::new()
        .name(format!("model-{name}"))
        .spawn(move || {
            let device = model.device_name();
            status.set_device_bytes(&device, model.device_memory_bytes());
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    WorkerMsg::Batch(jobs) => run_batch(model.as_mut(), &status, &device, jobs),
                    WorkerMsg::Release(done) => {
                        model.release_device_memory();
                        status.set_device_bytes(&device, model.device_memory_bytes());
                        if status.state() == ModelState::Ready {
                            status.set_state(ModelState::Released);
                        }
                        tracing::info!(model = %status.name, "device memory released after idle");
                        let _ = done.send(());
                    }
                }
            }
            tracing::debug!(model = %status.name, "model worker stopped");
        })
        .expect("spawning a thread");
    tx
}

fn run_batch(model: &mut dyn Model, status: &ModelStatus, device: &str, mut jobs: Vec<Job>) {
    // Clients that left while the batch waited cost no compute.
    jobs.retain(|j| {
        let gone = j.reply.is_closed();
        if gone {
            metrics::dropped(&status.name, "client_gone");
        }
        !gone
    });
    if jobs.is_empty() {
        return;
    }
    let start = Instant::now();
    // Only a released model pays for a restore; models that hold no device memory (identity)
    // must not log and count one per batch.
    let restored = if status.state() == ModelState::Released {
        let t = Instant::now();
        match model.restore_device_memory() {
            Ok(()) => {
                status.set_device_bytes(device, model.device_memory_bytes());
                status.set_state(ModelState::Ready);
                let took = t.elapsed();
                metrics::restored(&status.name, took);
                tracing::info!(model = %status.name, ms = took.as_secs_f64() * 1e3, "device memory restored");
                Some(took).filter(|_| model.device_memory_bytes() > 0)
            }
            Err(e) => {
                fail_all(
                    jobs,
                    ServeError::Inference(format!("restoring the model failed: {e}")),
                );
                return;
            }
        }
    } else {
        None
    };
    let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
    let batch_rows: usize = rows.iter().sum();
    let span = tracing::info_span!(parent: &jobs[0].span, "batch", model = %status.name, rows = batch_rows, requests = jobs.len());
    let _enter = span.enter();
    let result = forward_batch(model, &jobs, &rows);
    let compute = start.elapsed();
    metrics::batch(&status.name, batch_rows, compute);
    match result {
        Ok(mut per_job) => {
            for (job, outputs) in jobs.into_iter().zip(per_job.drain(..)) {
                let queue = start.saturating_duration_since(job.enqueued);
                metrics::queued(&status.name, queue);
                let timing = Timing {
                    queue,
                    compute,
                    batch_rows,
                    restored,
                };
                let _ = job.reply.send(Ok(JobOutput { outputs, timing }));
            }
        }
        Err(e) => fail_all(jobs, e),
    }
}

fn forward_batch(
    model: &mut dyn Model,
    jobs: &[Job],
    rows: &[usize],
) -> Result<Vec<Vec<Tensor>>, ServeError> {
    let inputs: Vec<Tensor> = if jobs.len() == 1 {
        jobs[0].inputs.clone()
    } else {
        (0..jobs[0].inputs.len())
            .map(|i| {
                let parts: Vec<&Tensor> = jobs.iter().map(|j| &j.inputs[i]).collect();
                Tensor::concat_rows(&parts)
            })
            .collect::<Result<_, _>>()?
    };
    let outputs = model.forward(&inputs)?;
    if jobs.len() == 1 {
        return Ok(vec![outputs]);
    }
    let mut per_job: Vec<Vec<Tensor>> = (0..jobs.len())
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for out in outputs {
        for (slot, piece) in per_job.iter_mut().zip(out.split_rows(rows)?) {
            slot.push(piece);
        }
    }
    Ok(per_job)
}

fn fail_all(jobs: Vec<Job>, e: ServeError) {
    tracing::warn!(error = %e, requests = jobs.len(), "batch failed");
    for job in jobs {
        let _ = job.reply.send(Err(e.clone()));
    }
}
