//! Retention: finished transactions (COMMITTED or ABORTED) older than a configured age are
//! deleted in small batches, their branches with them, so the tables do not grow without
//! bound. Batches go through the partial index on the finished rows' `updated_at`, and the
//! due-work index never holds finished rows at all. The branches are deleted here, not by
//! a cascading foreign key: PostgreSQL's schema has none (migration 0005).
//!
//! Each purged gid leaves a tombstone in `retired_gid`, written in the same database
//! transaction, so that a client-chosen gid is never reused: participants keep barrier rows
//! by gid, and a new transaction under an old gid would be taken for a duplicate there.
//! The audit trail is kept: it records operators' actions, which outlive the transactions.

use super::{
    Result, Store,
    rows::{Gid, to_json},
    sql::{finished, statements},
};

statements! {
    retire = concat!(
        "INSERT INTO retired_gid (gid, retired_at) \
         SELECT gid, {now} FROM global_tx \
         WHERE ", finished!(), " AND global_tx.updated_at < {now} - $1 \
         ORDER BY updated_at LIMIT $2 \
         ON CONFLICT (gid) DO NOTHING"
    );
    purge_retired = concat!(
        "DELETE FROM global_tx WHERE gid IN \
             (SELECT global_tx.gid FROM global_tx \
                  JOIN retired_gid ON retired_gid.gid = global_tx.gid \
              WHERE ", finished!(), " AND global_tx.updated_at < {now} - $1 \
              ORDER BY global_tx.updated_at LIMIT $2) \
         RETURNING gid"
    );
    purge_branches = "DELETE FROM branch WHERE gid {in_ids $1}";
    is_retired = "SELECT COUNT(*) FROM retired_gid WHERE gid = $1";
}

impl Store {
    /// Deletes up to `batch` transactions that finished more than `age_ms` ago; returns how
    /// many went.
    pub async fn purge_finished(&self, age_ms: i64, batch: i64) -> Result<u64> {
        let sql = Sql::for_dialect(self.dialect);
        let mut tx = self.write_tx().await?;
        sqlx::query(sql.retire)
            .bind(age_ms)
            .bind(batch)
            .execute(&mut *tx)
            .await?;
        // Only rows with a tombstone go, whatever else became due meanwhile.
        let gone: Vec<String> = sqlx::query_scalar(sql.purge_retired)
            .bind(age_ms)
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
        if !gone.is_empty() {
            let ids: Vec<Gid<&str>> = gone.iter().map(|id| Gid { id: id.as_str() }).collect();
            sqlx::query(sql.purge_branches)
                .bind(to_json(&ids)?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone.len() as u64)
    }

    /// Whether `gid` belonged to a transaction removed by retention.
    pub async fn is_retired(&self, gid: &str) -> Result<bool> {
        let sql = Sql::for_dialect(self.dialect);
        let n: i64 = sqlx::query_scalar(sql.is_retired)
            .bind(gid)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }
}
