-- SKUs whose stock is also kept in Redis, for an atomic pre-deduction before the database
-- (participants/src/hot.rs). The database stays the truth.
CREATE TABLE hot_sku (
    sku TEXT PRIMARY KEY NOT NULL REFERENCES sku (sku)
);
-- Open reservations of hot SKUs: made durable by a Try, not yet ended by its Confirm or
-- Cancel. Reconciliation reads them with the stock in one statement.
CREATE TABLE hot_hold (
    gid       TEXT NOT NULL,
    branch_id BIGINT NOT NULL,
    sku       TEXT NOT NULL,
    qty       BIGINT NOT NULL CHECK (qty > 0),
    PRIMARY KEY (gid, branch_id)
);
CREATE INDEX hot_hold_sku ON hot_hold (sku);
-- Sales (participants/src/campaign.rs): a window in epoch milliseconds and the most units
-- one user may hold or have bought in it.
CREATE TABLE campaign (
    campaign  TEXT PRIMARY KEY NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at   BIGINT NOT NULL,
    per_user  BIGINT NOT NULL CHECK (per_user >= 1 AND per_user <= 1000000000000000),
    CHECK (starts_at < ends_at)
);
CREATE TABLE campaign_user (
    campaign TEXT NOT NULL,
    user_id  BIGINT NOT NULL,
    qty      BIGINT NOT NULL CHECK (qty >= 0),
    PRIMARY KEY (campaign, user_id)
);
