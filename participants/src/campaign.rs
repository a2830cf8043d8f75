//! Sales: a campaign's window (`starts_at` to `ends_at`, epoch milliseconds) and the most
//! units one user may take in it.
//!
//! A reservation that names a campaign the inventory knows is refused outside its window
//! from memory (no database, no Redis), and its units count against the buyer's limit in
//! `campaign_user`, in the same local transaction as the reservation; a Cancel gives them
//! back. A refund does not: the units were bought. Campaigns are read at start-up and on
//! every reconcile tick, so a campaign defined through another replica is known here within
//! one tick. Stock is [`crate::inventory`]'s; one live order per user and campaign is the
//! order service's own rule.

use serde::{Deserialize, Serialize};
use settle::participant::Error;
use sqlx::{AnyConnection, Row};

use crate::service;

/// A sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    /// Its name, as purchases give it.
    pub campaign: String,
    /// When Trys start being accepted, epoch milliseconds.
    pub starts_at: i64,
    /// When they stop being accepted (exclusive).
    pub ends_at: i64,
    /// The most units one user may hold or have bought in it.
    pub per_user: i64,
}

impl Campaign {
    /// Checks the campaign's own values.
    pub fn validate(&self) -> Result<(), String> {
        if self.campaign.is_empty() || self.campaign.len() > service::MAX_NAME {
            return Err(format!(
                "campaign must be 1 to {} bytes, got {}",
                service::MAX_NAME,
                self.campaign.len()
            ));
        }
        if self.starts_at >= self.ends_at {
            return Err(format!(
                "campaign {} must start before it ends ({} >= {})",
                self.campaign, self.starts_at, self.ends_at
            ));
        }
        service::bounded("per_user", self.per_user, 1)?;
        Ok(())
    }

    /// Refuses a Try at `now` (epoch milliseconds) outside the window.
    pub fn admits(&self, now: i64) -> Result<(), Error> {
        if now < self.starts_at {
            return Err(Error::refuse(format!(
                "campaign {} has not started: it starts at {} ms, {} ms from now",
                self.campaign,
                self.starts_at,
                self.starts_at - now
            )));
        }
        if now >= self.ends_at {
            return Err(Error::refuse(format!(
                "campaign {} has ended at {} ms",
                self.campaign, self.ends_at
            )));
        }
        Ok(())
    }

    /// Counts `qty` units against `user_id`'s limit, or refuses.
    pub(crate) async fn take(
        &self,
        conn: &mut AnyConnection,
        user_id: i64,
        qty: i64,
    ) -> Result<(), Error> {
        if qty > self.per_user {
            return Err(self.over(user_id, qty));
        }
        let taken = sqlx::query(
            "INSERT INTO campaign_user (campaign, user_id, qty) VALUES ($1, $2, $3) \
             ON CONFLICT (campaign, user_id) DO UPDATE SET qty = campaign_user.qty + excluded.qty \
             WHERE campaign_user.qty + excluded.qty <= $4",
        )
        .bind(&self.campaign)
        .bind(user_id)
        .bind(qty)
        .bind(self.per_user)
        .execute(conn)
        .await?;
        if taken.rows_affected() == 0 {
            return Err(self.over(user_id, qty));
        }
        Ok(())
    }

    /// Gives `qty` units back to `user_id`'s limit (a cancelled reservation).
    pub(crate) async fn give_back(
        &self,
        conn: &mut AnyConnection,
        user_id: i64,
        qty: i64,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE campaign_user SET qty = qty - $1 \
             WHERE campaign = $2 AND user_id = $3 AND qty >= $1",
        )
        .bind(qty)
        .bind(&self.campaign)
        .bind(user_id)
        .execute(conn)
        .await?;
        Ok(())
    }

    fn over(&self, user_id: i64, qty: i64) -> Error {
        Error::refuse(format!(
            "user {user_id} may take at most {} in campaign {}; {qty} more is over it",
            self.per_user, self.campaign
        ))
    }
}

/// Every campaign in the inventory database.
pub(crate) async fn load(pool: &sqlx::AnyPool) -> Result<Vec<Campaign>, sqlx::Error> {
    let rows = sqlx::query("SELECT campaign, starts_at, ends_at, per_user FROM campaign")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Campaign {
                campaign: row.try_get("campaign")?,
                starts_at: row.try_get("starts_at")?,
                ends_at: row.try_get("ends_at")?,
                per_user: row.try_get("per_user")?,
            })
        })
        .collect()
}

/// Defines `campaign`, or changes it.
pub(crate) async fn save(pool: &sqlx::AnyPool, campaign: &Campaign) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO campaign (campaign, starts_at, ends_at, per_user) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (campaign) DO UPDATE SET starts_at = excluded.starts_at, \
         ends_at = excluded.ends_at, per_user = excluded.per_user",
    )
    .bind(&campaign.campaign)
    .bind(campaign.starts_at)
    .bind(campaign.ends_at)
    .bind(campaign.per_user)
    .execute(pool)
    .await?;
    Ok(())
}
