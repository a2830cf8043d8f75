//! Group commit, the store's optional optimisation: the writes of many concurrent requests
//! of one kind carried out together, a few statements and one database commit for the lot,
//! instead of a statement and a commit each. On PostgreSQL each commit costs the server a
//! WAL flush and each statement a round of work, so this is what makes the log cost the
//! database less per transaction than a naive one; on SQLite it turns many writers waiting
//! on one lock into a queue.
//!
//! A [`Group`] owns a queue and a task. Callers [`Group::submit`] an item and wait for its
//! answer. The task takes whatever has queued (up to `max_batch` items), runs it as one
//! [`Batch`], and repeats. Nothing waits for a batch to fill: a lone request goes out at
//! once, and batches grow only while requests arrive faster than the database commits
//! them, which is exactly when batching pays. One batch of a kind runs at a time: measured,
//! that beat two or four overlapping ones (BENCHMARKS.md).
//! A batch the database refuses (and so rolls back) is run again item by item, so the
//! refusal belongs to the request that caused it and the others still succeed. Any other
//! failure (a lost connection, a timeout) may have come after the commit, so it is
//! answered to every request of the batch rather than risk writing them twice.
//!
//! Every queue is bounded ([`QUEUE`]). A Begin that finds its queue full is refused at
//! once ([`Error::Busy`]): it starts a transaction, and refusing starts is how the
//! coordinator sheds load. Every other write belongs to a transaction already admitted,
//! whose number admission control bounds, so it waits for room instead: admitted work is
//! never refused for load.
//!
//! This module knows nothing about SQL; what each batch writes is in [`writes`], under the
//! same rules (`store/sql.rs`) as the single-request writes of `store/tcc.rs`. Batches run
//! in the group's task, not a caller's, so a caller that goes away (a cancelled gRPC call)
//! never takes other callers' writes with it.

pub(super) mod writes;

use std::{future::Future, panic::AssertUnwindSafe};

use futures::FutureExt;

use tokio::sync::{mpsc, oneshot};

use sqlx::AnyPool;

use super::{
    Decided, Dialect, Error, Result,
    tcc::{Decision, Finished, NewTx, Registration},
};
use crate::{
    metrics::{BatchMeter, BatchMeters},
    model::GlobalTx,
};
use writes::{Begins, Decisions, Registrations, Rounds};

/// The most requests one batch carries.
const MAX_BATCH: usize = 128;

/// The most requests one queue holds: eight batches' worth, far more than arrive while one
/// batch commits at any rate the database sustains.
pub(super) const QUEUE: usize = 8 * MAX_BATCH;

/// The four kinds of TCC write that are committed in groups, each with its own queue.
#[derive(Debug, Clone)]
pub(super) struct Batches {
    begins: Group<Begins>,
    registrations: Group<Registrations>,
    decisions: Group<Decisions>,
    rounds: Group<Rounds>,
}

impl Batches {
    /// Starts the groups' tasks on the current runtime: the durable writes on `durable`,
    /// the round records on `relaxed` (see `Store::record_round`), each batch recorded in
    /// `meters`. Every statement is rendered now, so that a template mistake stops the
    /// start-up instead of a batch.
    pub(super) fn start(
        durable: &AnyPool,
        relaxed: &AnyPool,
        dialect: Dialect,
        meters: BatchMeters,
    ) -> Batches {
        writes::render(dialect);
        Batches {
            begins: Group::start(Begins::new(durable.clone(), dialect), meters.begin),
            registrations: Group::start(
                Registrations::new(durable.clone(), dialect),
                meters.register,
            ),
            decisions: Group::start(Decisions::new(durable.clone(), dialect), meters.decide),
            rounds: Group::start(Rounds::new(relaxed.clone(), dialect), meters.finish),
        }
    }

    /// [`Store::begin_one`](super::Store::begin_one), sharing a commit.
    /// Refused with [`Error::Busy`] when [`QUEUE`] Begins are already waiting.
    pub(super) async fn begin(&self, item: NewTx) -> Result<Option<GlobalTx>> {
        self.begins.offer(item).await
    }

    /// [`Store::register_one`](super::Store::register_one), sharing a commit. All of one
    /// transaction's registrations in a batch are taken together or not at all: `None`
    /// means not taken here, and the store retries it alone.
    pub(super) async fn register(&self, item: Registration) -> Result<Option<u32>> {
        self.registrations.submit(item).await
    }

    /// [`Store::decide_one`](super::Store::decide_one), sharing a commit.
    pub(super) async fn decide(&self, item: Decision) -> Result<Option<Decided>> {
        self.decisions.submit(item).await
    }

    /// [`Store::finish_one`](super::Store::finish_one), sharing a commit.
    pub(super) async fn finish(&self, item: Finished) -> Result<bool> {
        self.rounds.submit(item).await
    }
}

/// One kind of write that can be done for many requests at once.
pub(super) trait Batch: Send + Sync + 'static {
    /// One request.
    type Item: Send + Sync + 'static;
    /// Its answer.
    type Output: Send + 'static;

    /// Carries out `items` together, atomically: one output per item, in order.
    fn run(&self, items: &[Self::Item]) -> impl Future<Output = Result<Vec<Self::Output>>> + Send;
}

type Entry<B> = (
    <B as Batch>::Item,
    oneshot::Sender<Result<<B as Batch>::Output>>,
);

/// A queue of writes of one kind and the task that carries them out in batches.
pub(super) struct Group<B: Batch> {
    queue: mpsc::Sender<Entry<B>>,
}

impl<B: Batch> Clone for Group<B> {
    fn clone(&self) -> Self {
        Group {
            queue: self.queue.clone(),
        }
    }
}

impl<B: Batch> std::fmt::Debug for Group<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("batch", &std::any::type_name::<B>())
            .finish()
    }
}

impl<B: Batch> Group<B> {
    /// Starts the group's task on the current runtime, each batch recorded in `meter`. It
    /// ends when the last clone of the group is dropped.
    pub(super) fn start(batch: B, meter: BatchMeter) -> Group<B> {
        let (queue, mut incoming) = mpsc::channel::<Entry<B>>(QUEUE);
        tokio::spawn(async move {
            while let Some(first) = incoming.recv().await {
                let mut entries = vec![first];
                while entries.len() < MAX_BATCH {
                    match incoming.try_recv() {
                        Ok(entry) => entries.push(entry),
                        Err(_) => break,
                    }
                }
                let (size, started) = (entries.len(), std::time::Instant::now());
                run(&batch, entries).await;
                meter.batch(size, started.elapsed());
            }
        });
        Group { queue }
    }

    /// Queues `item`, waiting for room if the queue is full, and waits for its batch to be
    /// committed.
    pub(super) async fn submit(&self, item: B::Item) -> Result<B::Output> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Queues `item` if there is room, else refuses it with [`Error::Busy`]; then waits for
    /// its batch to be committed.
    pub(super) async fn offer(&self, item: B::Item) -> Result<B::Output> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send((item, reply))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => Error::Busy(QUEUE),
                mpsc::error::TrySendError::Closed(_) => Error::Closed,
            })?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

async fn run<B: Batch>(batch: &B, entries: Vec<Entry<B>>) {
    let (items, replies): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
    // A panic (a bug) fails this batch's requests, not every later one.
    let ran = AssertUnwindSafe(batch.run(&items)).catch_unwind().await;
    let outputs = match ran {
        Ok(Ok(outputs)) if outputs.len() == items.len() => outputs,
        Ok(Ok(outputs)) => {
            let error = format!("a batch of {} answered {}", items.len(), outputs.len());
            for reply in replies {
                let _ = reply.send(Err(Error::Corrupt(error.clone())));
            }
            return;
        }
        // The database refused the batch and rolled it back: run each item alone, so
        // that the refusal belongs to the item that caused it.
        Ok(Err(Error::Database(sqlx::Error::Database(refusal)))) if items.len() > 1 => {
            tracing::warn!(error = %refusal, items = items.len(), "batch refused; running its items one by one");
            for (item, reply) in items.iter().zip(replies) {
                let output = batch
                    .run(std::slice::from_ref(item))
                    .await
                    .and_then(|mut outputs| {
                        outputs
                            .pop()
                            .ok_or_else(|| Error::Corrupt("a batch of 1 answered 0".to_owned()))
                    });
                let _ = reply.send(output);
            }
            return;
        }
        // Anything else (a lost connection, a timeout) may have happened after the commit:
        // running the items again could write them twice, so each gets the error.
        Ok(Err(error)) if replies.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(error));
            }
            return;
        }
        Ok(Err(error)) => {
            let error = error.to_string();
            for reply in replies {
                let _ = reply.send(Err(Error::Batch {
                    size: items.len(),
                    error: error.clone(),
                }));
            }
            return;
        }
        Err(_) => {
            tracing::error!(
                batch = std::any::type_name::<B>(),
                items = items.len(),
                "batch panicked"
            );
            for reply in replies {
                let _ = reply.send(Err(Error::Corrupt("the batch panicked".to_owned())));
            }
            return;
        }
    };
    for (reply, output) in replies.into_iter().zip(outputs) {
        // The caller may have gone away; its write is done all the same.
        let _ = reply.send(Ok(output));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::future::join_all;
    use tokio::sync::Notify;

    use super::*;

    /// What a database says when it refuses a statement.
    #[derive(Debug)]
    struct Refused;

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("13 is refused")
        }
    }

    impl std::error::Error for Refused {}

    impl sqlx::error::DatabaseError for Refused {
        fn message(&self) -> &str {
            "13 is refused"
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::CheckViolation
        }
    }

    /// Doubles numbers; the database refuses a batch holding 13; a batch holding 7 loses
    /// its connection; the first batch waits for `gate`.
    struct Doubler {
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: Arc<Notify>,
    }

    impl Batch for Doubler {
        type Item = u32;
        type Output = u32;

        async fn run(&self, items: &[u32]) -> Result<Vec<u32>> {
            let first = {
                let mut sizes = self.sizes.lock().expect("sizes");
                sizes.push(items.len());
                sizes.len() == 1
            };
            if first {
                self.gate.notified().await;
            }
            if items.contains(&13) {
                return Err(Error::Database(sqlx::Error::Database(Box::new(Refused))));
            }
            if items.contains(&7) {
                return Err(Error::Database(sqlx::Error::PoolTimedOut));
            }
            Ok(items.iter().map(|i| i * 2).collect())
        }
    }

    fn doubler() -> (Group<Doubler>, Arc<Mutex<Vec<usize>>>, Arc<Notify>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Notify::new());
        let group = Group::start(
            Doubler {
                sizes: sizes.clone(),
                gate: gate.clone(),
            },
            BatchMeter::default(),
        );
        (group, sizes, gate)
    }

    /// Submits `first` alone, then `rest` while its batch runs; answers all.
    async fn behind_one(
        first: u32,
        rest: std::ops::RangeInclusive<u32>,
    ) -> (Result<u32>, Vec<Result<u32>>, Vec<usize>) {
        let (group, sizes, gate) = doubler();
        let alone = tokio::spawn({
            let group = group.clone();
            async move { group.submit(first).await }
        });
        while sizes.lock().expect("sizes").is_empty() {
            tokio::task::yield_now().await;
        }
        let (rest, ()) = tokio::join!(join_all(rest.map(|i| group.submit(i))), async {
            gate.notify_one()
        });
        let alone = alone.await.expect("first");
        let sizes = sizes.lock().expect("sizes").clone();
        (alone, rest, sizes)
    }

    #[tokio::test]
    async fn requests_behind_a_running_batch_share_the_next_and_a_refused_one_fails_alone() {
        let (first, rest, sizes) = behind_one(1, 8..=20).await;
        assert_eq!(first.expect("doubled"), 2);
        for (i, answer) in (8..=20).zip(rest) {
            match answer {
                Ok(doubled) => assert_eq!(doubled, i * 2),
                Err(error) => assert_eq!(i, 13, "{i}: {error}"),
            }
        }
        // The batch of 13 was refused because of 13, and each of its items ran alone.
        assert_eq!(sizes[..2], [1, 13]);
        assert_eq!(sizes[2..], [1; 13]);
    }

    #[tokio::test]
    async fn a_batch_that_may_have_committed_is_not_run_again() {
        let (first, rest, sizes) = behind_one(1, 2..=9).await;
        assert_eq!(first.expect("doubled"), 2);
        for answer in rest {
            assert!(
                matches!(answer, Err(Error::Batch { size: 8, .. })),
                "{answer:?}"
            );
        }
        assert_eq!(sizes, [1, 8], "no item ran twice");
    }
}
