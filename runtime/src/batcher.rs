//! Dynamic batching: one task owns the queue and forms batches of up to `max_batch_size` rows,
//! waiting at most `max_queue_delay` after the oldest request, and drops requests whose client
//! went away before they cost compute.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::error::ServeError;
use crate::metrics;
use crate::worker::{Job, WorkerMsg};

#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Rows per batch; 0 = the model has no batch dimension, one request per run.
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
}

pub async fn run(
    model: String,
    policy: BatchPolicy,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    worker: mpsc::Sender<WorkerMsg>,
) {
    let mut carry: Option<Job> = None;
    loop {
        // Wait until the worker can take a batch, then collect it: while the worker is busy the
        // queue keeps growing, and the next batch is formed from it at once.
        let Ok(slot) = worker.reserve().await else {
            break;
        };
        let first = match carry.take() {
            Some(j) => j,
            None => match jobs.recv().await {
                Some(j) => j,
                None => break,
            },
        };
        if first.reply.is_closed() {
            metrics::dropped(&model, "client_gone");
            continue;
        }
        let mut rows = first.rows;
        let deadline = tokio::time::Instant::from_std(first.enqueued) + policy.max_queue_delay;
        let mut batch = vec![first];
        while policy.max_batch_size > 0 && rows < policy.max_batch_size {
            let next = match jobs.try_recv() {
                Ok(j) => j,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, jobs.recv()).await {
                        Ok(Some(j)) => j,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if next.reply.is_closed() {
                metrics::dropped(&model, "client_gone");
                continue;
            }
            if rows + next.rows > policy.max_batch_size || !same_row_shape(&batch[0], &next) {
                carry = Some(next);
                break;
            }
            rows += next.rows;
            batch.push(next);
        }
        slot.send(WorkerMsg::Batch(batch));
    }
    // The worker is gone: answer whatever is still queued rather than leaving it hanging.
    for job in carry.into_iter() {
        let _ = job.reply.send(Err(ServeError::WorkerGone(model.clone())));
    }
    jobs.close();
    while let Some(job) = jobs.recv().await {
        let _ = job.reply.send(Err(ServeError::WorkerGone(model.clone())));
    }
}

fn same_row_shape(a: &Job, b: &Job) -> bool {
    a.inputs.len() == b.inputs.len()
        && a.inputs
            .iter()
            .zip(&b.inputs)
            .all(|(x, y)| x.datatype == y.datatype && x.shape.get(1..) == y.shape.get(1..))
}
