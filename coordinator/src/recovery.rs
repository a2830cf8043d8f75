//! The recovery loop that runs in every coordinator instance.
//!
//! The loop claims due transactions (TRYING past their deadline, or in phase two with their
//! retry time or lease expiry passed) and hands each to the engine in a task of its own, at
//! most `concurrency` at a time. It claims only as many as it has free slots for, so no
//! claimed transaction waits in a queue while its lease runs out, and a slow transaction
//! (a long saga) holds one slot, not the whole loop. When a claim comes back short the loop
//! sleeps for its interval. Now and then it also deletes
//! finished transactions past the retention age, a few small batches at a time. On
//! shutdown the loop stops claiming and the caller releases this instance's leases.
//!
//! What to do with a claimed transaction is the engine's business, not the loop's.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use settle_telemetry::trace;
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, Span, debug, info_span, warn};

use crate::engine::Engine;

/// Recovery settings.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryConfig {
    /// Sleep between passes that found less than a full batch.
    pub interval: Duration,
    /// Transactions claimed per pass.
    pub batch: u32,
    /// Claimed transactions driven at once.
    pub concurrency: usize,
    /// Finished transactions older than this are deleted; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// How often retention runs.
    pub retention_every: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            interval: Duration::from_secs(1),
            batch: 100,
            concurrency: 32,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_every: Duration::from_secs(60),
        }
    }
}

/// Claims and resumes due work until told to stop.
#[derive(Debug)]
pub struct RecoveryLoop {
    engine: Engine,
    config: RecoveryConfig,
}

impl RecoveryLoop {
    /// A loop driving `engine`.
    pub fn new(engine: Engine, config: RecoveryConfig) -> RecoveryLoop {
        RecoveryLoop { engine, config }
    }

    async fn claim(&self, limit: usize) -> Vec<crate::model::GlobalTx> {
        let lease_ms = self.engine.context().lease_ms();
        match self
            .engine
            .store()
            .claim_due(self.engine.context().instance(), lease_ms, limit as i64)
            .await
        {
            Ok(claimed) => {
                if !claimed.is_empty() {
                    debug!(count = claimed.len(), "claimed due transactions");
                }
                claimed
            }
            Err(error) => {
                warn!(%error, "claiming due transactions failed");
                Vec::new()
            }
        }
    }

    /// Claims one batch and drives it to the end of its rounds before returning; returns
    /// how many transactions were claimed. For tools and tests that want one step at a time.
    pub async fn pass(&self) -> usize {
        let claimed = self.claim(self.config.batch as usize).await;
        let count = claimed.len();
        futures::stream::iter(claimed)
            .for_each_concurrent(self.config.concurrency, |tx| {
                let span = span(&tx);
                async {
                    if let Err(error) = self.engine.resume(tx).await {
                        warn!(%error, "resuming failed; it will be retried");
                    }
                }
                .instrument(span)
            })
            .await;
        count
    }

    /// Deletes finished transactions past the retention age: at most ten batches of 500,
    /// so one call stays short however large the backlog; the next call continues.
    pub async fn purge(&self) -> u64 {
        let Some(age) = self.config.retention else {
            return 0;
        };
        const BATCH: i64 = 500;
        let mut purged = 0;
        for _ in 0..10 {
            match self
                .engine
                .store()
                .purge_finished(age.as_millis() as i64, BATCH)
                .await
            {
                Ok(n) => {
                    purged += n;
                    if n < BATCH as u64 {
                        break;
                    }
                }
                Err(error) => {
                    warn!(%error, "deleting finished transactions failed");
                    break;
                }
            }
        }
        if purged > 0 {
            debug!(purged, "finished transactions past retention deleted");
        }
        purged
    }

    /// Claims and drives due work until `shutdown` turns true, then waits (up to one lease)
    /// for the transactions it is driving.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut last_purge: Option<tokio::time::Instant> = None;
        while !*shutdown.borrow() {
            if last_purge.is_none_or(|at| at.elapsed() >= self.config.retention_every) {
                self.purge().await;
                last_purge = Some(tokio::time::Instant::now());
            }
            let free = slots.available_permits().min(self.config.batch as usize);
            if free == 0 {
                // Every slot is busy: wait until one frees up.
                tokio::select! {
                    slot = slots.acquire() => drop(slot),
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let claimed = self.claim(free).await;
            let short = claimed.len() < free;
            for tx in claimed {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let engine = self.engine.clone();
                let span = span(&tx);
                tokio::spawn(
                    async move {
                        if let Err(error) = engine.resume(tx).await {
                            warn!(%error, "resuming failed; it will be retried");
                        }
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            if short {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.interval) => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        let all = self.config.concurrency.max(1) as u32;
        let lease = self.engine.context().settings().lease;
        if tokio::time::timeout(lease, slots.acquire_many(all))
            .await
            .is_err()
        {
            warn!("transactions still being driven at shutdown; their leases expire on their own");
        }
    }
}

/// The span a claimed transaction is driven in: a child of the trace it began in, so that
/// phase two after a crash or a retry joins that trace.
fn span(tx: &crate::model::GlobalTx) -> Span {
    let span = info_span!("recover", gid = %tx.gid);
    trace::continue_stored(&span, tx.traceparent.as_deref());
    span
}
