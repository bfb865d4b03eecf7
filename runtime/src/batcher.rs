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
    /// Bring it back (a resumed replica) before anything queued after it runs.
    Restore(tokio::sync::oneshot::Sender<Result<Duration, ServeError>>),
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
            Queued::Restore(done) => {
                slot.send(WorkerMsg::Restore(done));
                continue;
            }
        };
        if first.reply.is_closed() {
            metrics::dropped(&model, "client_gone");
            continue;
        }
        let mut rows = first.rows;
        let deadline = first.enqueued + policy.max_queue_delay;
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
                control @ (Queued::Release(_) | Queued::Restore(_)) => {
                    carry = Some(control);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use siesta_models::Tensor;
    use tokio::sync::{mpsc, oneshot};
    use tokio::time::Instant;

    use super::*;
    use crate::worker::JobOutput;

    type Reply = oneshot::Receiver<Result<JobOutput, ServeError>>;

    fn job(rows: usize, width: usize) -> (Job, Reply) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs: vec![Tensor::from_f32(
                "x",
                vec![rows, width],
                &vec![0.0; rows * width],
            )],
            rows,
            enqueued: Instant::now(),
            span: tracing::Span::none(),
            reply,
        };
        (job, rx)
    }

    struct Harness {
        queue: mpsc::UnboundedSender<Queued>,
        worker: mpsc::Receiver<WorkerMsg>,
    }

    fn start(max_batch_size: usize, delay_ms: u64) -> Harness {
        let (queue, rx) = mpsc::unbounded_channel();
        let (worker_tx, worker) = mpsc::channel(1);
        tokio::spawn(run(
            "m".into(),
            BatchPolicy {
                max_batch_size,
                max_queue_delay: Duration::from_millis(delay_ms),
            },
            rx,
            worker_tx,
        ));
        Harness { queue, worker }
    }

    /// The next batch the worker gets: its rows per job, and when it came.
    async fn next_batch(h: &mut Harness) -> (Vec<usize>, Instant) {
        match h.worker.recv().await.expect("a batch") {
            WorkerMsg::Batch(jobs) => (jobs.iter().map(|j| j.rows).collect(), Instant::now()),
            WorkerMsg::Release(_) | WorkerMsg::Restore(_) => {
                panic!("a control message, not a batch")
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_request_waits_the_queue_delay_and_no_longer() {
        let mut h = start(8, 5);
        let t0 = Instant::now();
        let (j, _r) = job(1, 4);
        h.queue.send(Queued::Job(j)).ok().unwrap();
        let (rows, at) = next_batch(&mut h).await;
        assert_eq!(rows, [1]);
        assert_eq!(at - t0, Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_within_the_delay_share_a_batch_up_to_its_size() {
        let mut h = start(4, 10);
        let t0 = Instant::now();
        let mut replies = Vec::new();
        for rows in [1, 2] {
            let (j, r) = job(rows, 4);
            replies.push(r);
            h.queue.send(Queued::Job(j)).ok().unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        // 1 + 2 rows, then a 2-row request that does not fit in 4: it starts the next batch.
        let (j, r) = job(2, 4);
        replies.push(r);
        h.queue.send(Queued::Job(j)).ok().unwrap();
        let (rows, at) = next_batch(&mut h).await;
        assert_eq!(rows, [1, 2]);
        assert_eq!(
            at - t0,
            Duration::from_millis(6),
            "full-enough batches go at once"
        );
        let (rows, at) = next_batch(&mut h).await;
        assert_eq!(rows, [2]);
        assert_eq!(
            at - t0,
            Duration::from_millis(16),
            "its own delay, from its own enqueue time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rows_of_another_shape_are_not_mixed_into_a_batch() {
        let mut h = start(8, 10);
        let (a, _ra) = job(1, 4);
        let (b, _rb) = job(1, 5);
        h.queue.send(Queued::Job(a)).ok().unwrap();
        h.queue.send(Queued::Job(b)).ok().unwrap();
        assert_eq!(next_batch(&mut h).await.0, [1]);
        assert_eq!(next_batch(&mut h).await.0, [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_client_left_costs_no_compute() {
        let mut h = start(8, 1);
        let (gone, r) = job(1, 4);
        drop(r);
        let (kept, _r) = job(3, 4);
        h.queue.send(Queued::Job(gone)).ok().unwrap();
        h.queue.send(Queued::Job(kept)).ok().unwrap();
        assert_eq!(next_batch(&mut h).await.0, [3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_runs_after_what_was_queued_before_it() {
        let mut h = start(8, 50);
        let (j, _r) = job(1, 4);
        let (done, _done_rx) = oneshot::channel();
        h.queue.send(Queued::Job(j)).ok().unwrap();
        h.queue.send(Queued::Release(done)).ok().unwrap();
        let (rows, _) = next_batch(&mut h).await;
        assert_eq!(rows, [1], "the release ends the batch early, after the job");
        assert!(matches!(h.worker.recv().await, Some(WorkerMsg::Release(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_worker_is_gone_queued_requests_are_answered() {
        let h = start(8, 1);
        drop(h.worker);
        let (j, r) = job(1, 4);
        h.queue.send(Queued::Job(j)).ok();
        let answer = tokio::time::timeout(Duration::from_secs(1), r)
            .await
            .expect("answered, not left hanging")
            .expect("a reply");
        assert!(matches!(answer, Err(ServeError::WorkerGone(m)) if m == "m"));
    }
}
