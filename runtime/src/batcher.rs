//! Dynamic batching: one task owns the queue and forms batches of up to `max_batch_size` rows,
//! waiting at most `max_queue_delay` after the oldest request, and drops requests whose client
//! went away before they cost compute.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::error::ServeError;
use crate::metrics;
use crate::worker::{Job, WorkerMsg};

/// What reaches the queue: requests, and control messages that must stay in order with them.
pub enum Queued {
    Job(Job),
    /// Give device memory back once everything queued before it has run.
    Release(tokio::sync::oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Rows per batch; 0 = the model has no batch dimension, one request per run.
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
}

pub async fn run(
    model: String,
    policy: BatchPolicy,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    worker: mpsc::Sender<WorkerMsg>,
) {
    let mut carry: Option<Queued> = None;
    loop {
        // Wait until the worker can take a batch, then collect it: while the worker is busy the
        // queue keeps growing, and the next batch is formed from it at once.
        let Ok(slot) = worker.reserve().await else {
            break;
        };
        let next = match carry.take() {
            Some(q) => q,
            None => match queue.recv().await {
                Some(q) => q,
                None => break,
            },
        };
        let first = match next {
            Queued::Job(j) => j,
            Queued::Release(done) => {
                slot.send(WorkerMsg::Release(done));
                continue;
            }
        };
        if first.reply.is_closed() {
            metrics::dropped(&model, "client_gone");
            continue;
        }
        let mut rows = first.rows;
        let deadline = tokio::time::Instant::from_std(first.enqueued) + policy.max_queue_delay;
        let mut batch = vec![first];
        while policy.max_batch_size > 0 && rows < policy.max_batch_size {
            let queued = match queue.try_recv() {
                Ok(q) => q,
                Err(TryRecvError::Disconnected) => break,
                // An expired deadline must not go through the timer: its 1 ms resolution would
                // add a millisecond to every lone request.
                Err(TryRecvError::Empty) if tokio::time::Instant::now() >= deadline => break,
                Err(TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, queue.recv()).await {
                        Ok(Some(q)) => q,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            let next = match queued {
                Queued::Job(j) => j,
                release @ Queued::Release(_) => {
                    carry = Some(release);
                    break;
                }
            };
            if next.reply.is_closed() {
                metrics::dropped(&model, "client_gone");
                continue;
            }
            if rows + next.rows > policy.max_batch_size || !same_row_shape(&batch[0], &next) {
                carry = Some(Queued::Job(next));
                break;
            }
            rows += next.rows;
            batch.push(next);
        }
        slot.send(WorkerMsg::Batch(batch));
    }
    // The worker is gone: answer whatever is still queued rather than leaving it hanging.
    queue.close();
    let mut pending = carry;
    loop {
        let q = match pending.take() {
            Some(q) => q,
            None => match queue.recv().await {
                Some(q) => q,
                None => break,
            },
        };
        if let Queued::Job(job) = q {
            let _ = job.reply.send(Err(ServeError::WorkerGone(model.clone())));
        }
    }
}

fn same_row_shape(a: &Job, b: &Job) -> bool {
    a.inputs.len() == b.inputs.len()
        && a.inputs
            .iter()
            .zip(&b.inputs)
            .all(|(x, y)| x.datatype == y.datatype && x.shape.get(1..) == y.shape.get(1..))
}
