//! The recovery loop that runs in every coordinator instance.
//!
//! Each pass claims a batch of due transactions (TRYING past their deadline, or in phase
//! two with their retry time or lease expiry passed), then hands each to the engine,
//! a bounded number at a time. A full batch means more work is waiting, so the next pass
//! starts at once; otherwise the loop sleeps for its interval. Now and then it also deletes
//! finished transactions past the retention age, a few small batches at a time. On
//! shutdown the loop stops claiming and the caller releases this instance's leases.
//!
//! What to do with a claimed transaction is the engine's business, not the loop's.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

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

    /// Claims and drives one batch; returns how many transactions were claimed.
    pub async fn pass(&self) -> usize {
        let lease_ms = self.engine.config().lease().as_millis() as i64;
        let claimed = match self
            .engine
            .store()
            .claim_due(
                self.engine.instance(),
                lease_ms,
                i64::from(self.config.batch),
            )
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                warn!(%error, "claiming due transactions failed");
                return 0;
            }
        };
        let count = claimed.len();
        if count > 0 {
            debug!(count, "claimed due transactions");
        }
        futures::stream::iter(claimed)
            .for_each_concurrent(self.config.concurrency, |tx| {
                let span = info_span!("recover", gid = %tx.gid);
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

    /// Runs passes until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last_purge: Option<tokio::time::Instant> = None;
        while !*shutdown.borrow() {
            if last_purge.is_none_or(|at| at.elapsed() >= self.config.retention_every) {
                self.purge().await;
                last_purge = Some(tokio::time::Instant::now());
            }
            let claimed = self.pass().await;
            if claimed < self.config.batch as usize {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.interval) => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}
