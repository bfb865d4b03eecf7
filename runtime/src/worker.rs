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
    /// Brings a released model's weights back onto the device now (a parked replica resumed);
    /// answers how long the upload took (zero when nothing was released).
    Restore(oneshot::Sender<Result<Duration, ServeError>>),
}

pub fn spawn(mut model: Box<dyn Model>, status: Arc<ModelStatus>) -> mpsc::Sender<WorkerMsg> {
    // Capacity 1: the batcher can prepare exactly one batch while the current one runs.
    let (tx, mut rx) = mpsc::channel::<WorkerMsg>(1);
    let name = status.name.clone();
    std::thread::Builder::new()
        .name(format!("model-{name}"))
        .spawn(move || {
            let _failed_on_panic = FailOnPanic(status.clone());
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
                        tracing::info!(model = %status.name, "device memory released");
                        let _ = done.send(());
                    }
                    WorkerMsg::Restore(done) => {
                        let restored = restore(model.as_mut(), &status, &device)
                            .map(|took| took.unwrap_or_default())
                            .map_err(|e| {
                                ServeError::Inference(format!("restoring the model failed: {e}"))
                            });
                        let _ = done.send(restored);
                    }
                }
            }
            tracing::debug!(model = %status.name, "model worker stopped");
        })
        .expect("spawning a thread");
    tx
}

/// A panic in the model's code (an engine bug, a library assertion) ends the worker thread; the
/// model is then marked failed, so readiness and liveness fail and the server exits to be
/// replaced, instead of answering "worker stopped" forever. The batch's waiting requests get
/// `WorkerGone` when their reply channels drop with the thread.
struct FailOnPanic(Arc<ModelStatus>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(model = %self.0.name, "the model's worker panicked; the model is failed");
            self.0.set_state(ModelState::Failed);
        }
    }
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
    let restored = match restore(model, status, device) {
        Ok(took) => took,
        Err(e) => {
            fail_all(
                jobs,
                ServeError::Inference(format!("restoring the model failed: {e}")),
            );
            return;
        }
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

/// Uploads a released model's weights again. Only a released model pays for a restore; models
/// that hold no device memory (identity) must not log and count one per batch.
fn restore(
    model: &mut dyn Model,
    status: &ModelStatus,
    device: &str,
) -> Result<Option<Duration>, siesta_models::ModelError> {
    if status.state() != ModelState::Released {
        return Ok(None);
    }
    let t = Instant::now();
    model.restore_device_memory()?;
    status.set_device_bytes(device, model.device_memory_bytes());
    status.set_state(ModelState::Ready);
    let took = t.elapsed();
    metrics::restored(&status.name, took);
    tracing::info!(model = %status.name, ms = took.as_secs_f64() * 1e3, "device memory restored");
    Ok(Some(took).filter(|_| model.device_memory_bytes() > 0))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use siesta_models::{Model, ModelConfig, ModelError, Tensor};
    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::*;

    /// Doubles its input; counts the rows of every forward; fails on a negative value; holds
    /// 1 KiB of "device memory" until released.
    struct Doubler {
        config: ModelConfig,
        forwards: Arc<Mutex<Vec<usize>>>,
        on_device: bool,
    }

    impl Model for Doubler {
        fn config(&self) -> &ModelConfig {
            &self.config
        }
        fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
            let x = inputs[0]
                .to_f32_vec()
                .map_err(|e| ModelError::Input(e.to_string()))?;
            if x.iter().any(|v| *v < 0.0) {
                return Err(ModelError::Inference("negative input".into()));
            }
            assert!(x.iter().all(|v| v.is_finite()), "the engine chokes on NaN");
            self.forwards.lock().push(inputs[0].shape[0]);
            let y: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
            Ok(vec![Tensor::from_f32("y", inputs[0].shape.clone(), &y)])
        }
        fn release_device_memory(&mut self) {
            self.on_device = false;
        }
        fn restore_device_memory(&mut self) -> Result<(), ModelError> {
            self.on_device = true;
            Ok(())
        }
        fn device_memory_bytes(&self) -> u64 {
            if self.on_device { 1024 } else { 0 }
        }
        fn device_name(&self) -> String {
            "cpu".into()
        }
    }

    fn start() -> (
        mpsc::Sender<WorkerMsg>,
        Arc<ModelStatus>,
        Arc<Mutex<Vec<usize>>>,
    ) {
        let config: ModelConfig = serde_json::from_value(serde_json::json!({
            "name": "double", "architecture": "identity", "max_batch_size": 8,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
        }))
        .unwrap();
        let forwards = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(ModelStatus::new("double"));
        status.set_state(ModelState::Ready);
        let model = Doubler {
            config,
            forwards: forwards.clone(),
            on_device: true,
        };
        (spawn(Box::new(model), status.clone()), status, forwards)
    }

    type Reply = oneshot::Receiver<Result<JobOutput, ServeError>>;

    fn job(values: &[f32]) -> (Job, Reply) {
        let rows = values.len() / 2;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs: vec![Tensor::from_f32("x", vec![rows, 2], values)],
            rows,
            enqueued: Instant::now(),
            span: tracing::Span::none(),
            reply,
        };
        (job, rx)
    }

    #[tokio::test]
    async fn a_batch_runs_as_one_forward_and_each_request_gets_its_own_rows() {
        let (worker, _status, forwards) = start();
        let (a, ra) = job(&[1.0, 2.0]);
        let (b, rb) = job(&[3.0, 4.0, 5.0, 6.0]);
        worker
            .send(WorkerMsg::Batch(vec![a, b]))
            .await
            .ok()
            .unwrap();
        let a = ra.await.unwrap().unwrap();
        let b = rb.await.unwrap().unwrap();
        assert_eq!(a.outputs[0].to_f32_vec().unwrap(), [2.0, 4.0]);
        assert_eq!(b.outputs[0].to_f32_vec().unwrap(), [6.0, 8.0, 10.0, 12.0]);
        assert_eq!((a.timing.batch_rows, b.timing.batch_rows), (3, 3));
        assert_eq!(*forwards.lock(), [3]);
    }

    #[tokio::test]
    async fn a_failed_forward_answers_every_request_with_the_error() {
        let (worker, _status, _) = start();
        let (a, ra) = job(&[1.0, -2.0]);
        let (b, rb) = job(&[3.0, 4.0]);
        worker
            .send(WorkerMsg::Batch(vec![a, b]))
            .await
            .ok()
            .unwrap();
        for r in [ra, rb] {
            let e = r.await.unwrap().unwrap_err();
            assert!(
                matches!(&e, ServeError::Inference(m) if m == "negative input"),
                "{e:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_panic_in_the_model_fails_it_and_answers_its_batch() {
        let (worker, status, _) = start();
        let (a, ra) = job(&[1.0, f32::NAN]);
        let (b, rb) = job(&[3.0, 4.0]);
        worker
            .send(WorkerMsg::Batch(vec![a, b]))
            .await
            .ok()
            .unwrap();
        for r in [ra, rb] {
            assert!(r.await.is_err(), "the reply channel closes with the thread");
        }
        assert_eq!(status.state(), ModelState::Failed);
        let (c, _rc) = job(&[1.0, 2.0]);
        assert!(worker.send(WorkerMsg::Batch(vec![c])).await.is_err());
    }

    #[tokio::test]
    async fn a_request_whose_client_left_is_not_computed() {
        let (worker, _status, forwards) = start();
        let (gone, r) = job(&[1.0, 2.0]);
        drop(r);
        let (kept, rk) = job(&[3.0, 4.0]);
        worker
            .send(WorkerMsg::Batch(vec![gone, kept]))
            .await
            .ok()
            .unwrap();
        assert_eq!(
            rk.await.unwrap().unwrap().outputs[0].to_f32_vec().unwrap(),
            [6.0, 8.0]
        );
        assert_eq!(*forwards.lock(), [1]);
    }

    #[tokio::test]
    async fn release_frees_device_memory_and_the_next_batch_restores_it() {
        let (worker, status, _) = start();
        let (done, released) = oneshot::channel();
        worker.send(WorkerMsg::Release(done)).await.ok().unwrap();
        released.await.unwrap();
        assert_eq!(status.state(), ModelState::Released);
        let (a, ra) = job(&[1.0, 2.0]);
        worker.send(WorkerMsg::Batch(vec![a])).await.ok().unwrap();
        let out = ra.await.unwrap().unwrap();
        assert!(out.timing.restored.is_some(), "this batch paid the restore");
        assert_eq!(status.state(), ModelState::Ready);
    }
}
