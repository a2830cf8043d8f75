//! Retention: finished transactions (COMMITTED or ABORTED) older than a configured age are
//! deleted in small batches, their branches with them (the foreign key cascades), so the
//! tables do not grow without bound. Batches go through the partial index on the finished
//! rows' `updated_at`, and the due-work index never holds finished rows at all.
//!
//! The audit trail is kept: it records operators' actions, which outlive the transactions.

use super::{Dialect, Result, Store};
use std::sync::OnceLock;

statements! {
    purge_finished = "DELETE FROM global_tx WHERE gid IN \
                          (SELECT gid FROM global_tx \
                           WHERE status IN ('COMMITTED', 'ABORTED') AND updated_at < {now} - $1 \
                           ORDER BY updated_at LIMIT $2)";
}

impl Store {
    /// Deletes up to `batch` transactions that finished more than `age_ms` ago; returns how
    /// many went.
    pub async fn purge_finished(&self, age_ms: i64, batch: i64) -> Result<u64> {
        let sql = Sql::for_dialect(self.dialect());
        let done = sqlx::query(sql.purge_finished)
            .bind(age_ms)
            .bind(batch)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
