//! Group commit: the writes of many concurrent requests of one kind carried out together —
//! a few statements and one database commit for the lot — instead of a statement and a
//! commit each. On PostgreSQL this is what lets the coordinator log more transactions per
//! second than a naive log does (each commit costs the server a WAL flush and a round of
//! work per statement); on SQLite it turns many writers waiting on one lock into a queue.
//!
//! A [`Group`] owns a queue and a task. Callers [`Group::submit`] an item and wait for its
//! answer. Whenever one of the group's `in_flight` slots is free, the task takes whatever
//! has queued (up to `max_batch` items) and runs it as one [`Batch`]. Nothing waits for a
//! batch to fill: a lone request goes out at once, and batches grow only while requests
//! arrive faster than the database commits them, which is exactly when batching pays.
//! A batch that fails is run again item by item, so an error belongs to the request that
//! caused it and the others still succeed.
//!
//! This module knows nothing about SQL; what a batch writes is in `store/batches.rs`.
//! Batches run in their own tasks, so a caller that goes away (a cancelled gRPC call) never
//! takes other callers' writes with it.

use std::{future::Future, sync::Arc};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Error, Result};

/// One kind of write that can be done for many requests at once.
pub(super) trait Batch: Send + Sync + 'static {
    /// One request.
    type Item: Send + Sync + 'static;
    /// Its answer.
    type Output: Send + 'static;

    /// Carries out `items` together, atomically: one output per item, in order.
    fn run(&self, items: &[Self::Item])
    -> impl Future<Output = Result<Vec<Self::Output>>> + Send;
}

type Entry<B> = (
    <B as Batch>::Item,
    oneshot::Sender<Result<<B as Batch>::Output>>,
);

/// A queue of writes of one kind and the task that carries them out in batches.
pub(super) struct Group<B: Batch> {
    queue: mpsc::UnboundedSender<Entry<B>>,
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
    /// Starts the group's task on the current runtime. It ends when the last clone of the
    /// group is dropped.
    pub(super) fn start(batch: B, in_flight: usize, max_batch: usize) -> Group<B> {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Entry<B>>();
        let batch = Arc::new(batch);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = incoming.recv().await else {
                    return;
                };
                let mut entries = vec![first];
                while entries.len() < max_batch {
                    match incoming.try_recv() {
                        Ok(entry) => entries.push(entry),
                        Err(_) => break,
                    }
                }
                let batch = batch.clone();
                tokio::spawn(async move {
                    run(&*batch, entries).await;
                    drop(slot);
                });
            }
        });
        Group { queue }
    }

    /// Queues `item` and waits for its batch to be committed.
    pub(super) async fn submit(&self, item: B::Item) -> Result<B::Output> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((item, reply)).map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

async fn run<B: Batch>(batch: &B, entries: Vec<Entry<B>>) {
    let (items, replies): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
    let outputs = match batch.run(&items).await {
        Ok(outputs) if outputs.len() == items.len() => outputs,
        Ok(outputs) => {
            let error = format!("a batch of {} answered {}", items.len(), outputs.len());
            for reply in replies {
                let _ = reply.send(Err(Error::Corrupt(error.clone())));
            }
            return;
        }
        Err(error) if items.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(error));
            }
            return;
        }
        Err(error) => {
            tracing::warn!(%error, items = items.len(), "batch failed; running its items one by one");
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
    };
    for (reply, output) in replies.into_iter().zip(outputs) {
        // The caller may have gone away; its write is done all the same.
        let _ = reply.send(Ok(output));
    }
}
