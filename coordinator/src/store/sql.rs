//! The vocabulary the store's statements are written in: [`statements!`], which renders a
//! module's statements once per dialect, the column lists rows are read with, and every
//! compare-and-set rule of the log as a named fragment.
//!
//! A rule is written here once and used by each statement that applies it, single-request
//! and batched alike, so the two paths cannot drift apart: "TRYING and before the deadline"
//! is [`open!`] wherever a branch is added, "this owner at this version" is [`held!`]
//! wherever a lease fences a write. Fragments are `macro_rules!` that expand to string
//! literals, so statements stay `concat!`ed literals, rendered once per dialect by
//! [`Dialect::render`](super::Dialect::render); a fragment's arguments say where its values
//! come from (a `$N` parameter, or a column of a batch's rows). Every fragment names its
//! columns with their table, so that it means the same in `UPDATE global_tx … FROM rows`.
//!
//! What a statement does with a rule — and which statements exist — is each store module's
//! business, not this one's.

/// Declares a module's statements: `statements! { name = "SQL"; … }` makes a `Sql` struct
/// with one rendered `&'static str` per name, and `Sql::for_dialect`, which renders them
/// all on first use.
macro_rules! statements {
    ($($name:ident = $sql:expr;)*) => {
        /// Every statement of this module, rendered for one dialect.
        struct Sql { $($name: &'static str,)* }

        impl Sql {
            fn for_dialect(dialect: $crate::store::Dialect) -> &'static Sql {
                static SQLITE: std::sync::OnceLock<Sql> = std::sync::OnceLock::new();
                static POSTGRES: std::sync::OnceLock<Sql> = std::sync::OnceLock::new();
                let cell = match dialect {
                    $crate::store::Dialect::Sqlite => &SQLITE,
                    $crate::store::Dialect::Postgres => &POSTGRES,
                };
                cell.get_or_init(|| Sql { $($name: dialect.render($sql),)* })
            }
        }

        impl std::fmt::Debug for Sql {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Sql")
            }
        }
    };
}
pub(super) use statements;

/// Every column of `global_tx`, as `rows::tx` reads them.
macro_rules! tx_columns {
    () => {
        "gid, mode, status, deadline, next_attempt_at, attempts, owner, version, branch_count, \
         labels, reason, needs_attention, paused, decided_at, created_at, updated_at, \
         traceparent, began_by, decided_by"
    };
}
pub(super) use tx_columns;

/// Every column of `branch` that `rows::branch` reads.
macro_rules! branch_columns {
    () => {
        "gid, branch_id, participant, action, payload, status, attempts, last_error, \
         next_attempt_at"
    };
}
pub(super) use branch_columns;

/// The transaction is TRYING. Spelled `(SELECT 'TRYING')` rather than `'TRYING'`: from the
/// constant, PostgreSQL can prove that the partial index `global_tx_due` (unfinished
/// transactions only) applies, and when its statistics say few transactions are unfinished
/// it reads that whole index instead of looking the gid up, a read that grows with the
/// backlog. A subquery's value proves nothing, so the gid goes through the primary key.
macro_rules! trying {
    () => {
        "global_tx.status = (SELECT 'TRYING')"
    };
}
pub(super) use trying;

/// Open for branches: TRYING and before its deadline (by the database's clock).
macro_rules! open {
    () => {
        concat!(
            $crate::store::sql::trying!(),
            " AND global_tx.deadline > {now}"
        )
    };
}
pub(super) use open;

/// May be decided `to` (COMMITTING or ABORTING): TRYING, and for a commit also before its
/// deadline. An abort is allowed whatever the deadline.
macro_rules! decidable {
    ($to:expr) => {
        concat!(
            $crate::store::sql::trying!(),
            " AND (",
            $to,
            " = 'ABORTING' OR global_tx.deadline > {now})"
        )
    };
}
pub(super) use decidable;

/// The lease fence: the transaction is still owned by `owner` at `version`. Every write
/// after a decision or claim carries it, so a previous owner's late write changes nothing.
macro_rules! held {
    ($owner:expr, $version:expr) => {
        concat!(
            "global_tx.owner = ",
            $owner,
            " AND global_tx.version = ",
            $version
        )
    };
}
pub(super) use held;

/// Not yet COMMITTED or ABORTED (the predicate of the partial index `global_tx_due`).
macro_rules! unfinished {
    () => {
        "global_tx.status NOT IN ('COMMITTED', 'ABORTED')"
    };
}
pub(super) use unfinished;

/// COMMITTED or ABORTED (the predicate of the partial index `global_tx_finished`).
macro_rules! finished {
    () => {
        "global_tx.status IN ('COMMITTED', 'ABORTED')"
    };
}
pub(super) use finished;

/// Decided or running: a phase two (or a saga, or a message) that the coordinator drives,
/// or a PREPARED message, whose service the coordinator asks.
macro_rules! driven {
    () => {
        "global_tx.status IN ('COMMITTING', 'ABORTING', 'RUNNING', 'COMPENSATING', 'PREPARED')"
    };
}
pub(super) use driven;

/// Nobody holds a live lease on the transaction.
macro_rules! lease_free {
    () => {
        "(global_tx.owner IS NULL OR global_tx.lease_until <= {now})"
    };
}
pub(super) use lease_free;

/// SET clause: `owner` takes the lease for `ms` milliseconds, and the version moves on,
/// fencing out whoever held it before. It is due again when the lease runs out.
macro_rules! take_lease {
    ($owner:expr, $ms:expr) => {
        concat!(
            "owner = ",
            $owner,
            ", version = version + 1, lease_until = {now} + ",
            $ms,
            ", next_attempt_at = {now} + ",
            $ms
        )
    };
}
pub(super) use take_lease;

/// SET clause: the transaction reaches its final `status`, and nobody owns it any more.
macro_rules! finish {
    ($status:expr) => {
        concat!(
            "status = ",
            $status,
            ", owner = NULL, lease_until = NULL, next_attempt_at = NULL, updated_at = {now}"
        )
    };
}
pub(super) use finish;

/// A due time, unless the transaction is paused: a paused one is never due.
macro_rules! unless_paused {
    ($at:expr) => {
        concat!(
            "CASE WHEN global_tx.paused = 1 THEN NULL ELSE ",
            $at,
            " END"
        )
    };
}
pub(super) use unless_paused;

/// Due now, unless paused, or at the end of a live lease (its owner may still finish).
macro_rules! due_when_free {
    () => {
        "CASE WHEN global_tx.paused = 1 THEN NULL \
             WHEN global_tx.owner IS NOT NULL AND global_tx.lease_until > {now} \
                 THEN global_tx.lease_until \
             ELSE {now} END"
    };
}
pub(super) use due_when_free;

/// The escalation rule of a rescheduled round: flagged once the unfinished rounds reach
/// `attempts`, or once `age_ms` has passed since the decision.
macro_rules! escalates {
    ($attempts:expr, $age_ms:expr) => {
        concat!(
            "(global_tx.attempts + 1 >= ",
            $attempts,
            " OR {now} - COALESCE(global_tx.decided_at, global_tx.created_at) >= ",
            $age_ms,
            ")"
        )
    };
}
pub(super) use escalates;

/// The branch still waits for its phase-two call.
macro_rules! branch_pending {
    () => {
        "branch.status = 'PENDING'"
    };
}
pub(super) use branch_pending;

/// Room for `n` more branches under the limit `max`.
macro_rules! room_for {
    ($n:expr, $max:expr) => {
        concat!("global_tx.branch_count + ", $n, " <= ", $max)
    };
}
pub(super) use room_for;

// The TCC writes, each written once over a table `v` of requests: a batch's JSON rows, or
// one request's parameters as a one-row table. `$gid_in` narrows `global_tx` (or `branch`)
// to the requests' gids, so that PostgreSQL looks them up by primary key whatever it thinks
// of `v`.

/// Begin: inserts the transactions of `v` (id, mode, status, timeout_ms, labels,
/// branch_count, traceparent, began_by) that do not exist yet, returning each one created.
macro_rules! insert_tx_from {
    ($v:expr) => {
        concat!(
            "INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, labels, \
                 branch_count, traceparent, began_by, created_at, updated_at) \
             SELECT v.id, v.mode, v.status, {now} + v.timeout_ms, {now} + v.timeout_ms, \
                 v.labels, v.branch_count, v.traceparent, v.began_by, {now}, {now} \
             FROM ",
            $v,
            " AS v WHERE true ON CONFLICT (gid) DO NOTHING RETURNING ",
            $crate::store::sql::tx_columns!()
        )
    };
}
pub(super) use insert_tx_from;

/// Inserts the PENDING branches of `v` (id, branch_id, participant, action, payload);
/// `$and` is what follows the source (a filter or a join).
macro_rules! insert_branches_from {
    ($v:expr, $and:expr) => {
        concat!(
            "INSERT INTO branch (gid, branch_id, participant, action, payload, status, \
                 created_at, updated_at) \
             SELECT v.id, v.branch_id, v.participant, v.action, v.payload, 'PENDING', \
                 {now}, {now} \
             FROM ",
            $v,
            " AS v",
            $and
        )
    };
}
pub(super) use insert_branches_from;

/// Takes `v.n` branch ids on each transaction of `v` (id, n, max_branches) that is open and
/// has room, returning the new count.
macro_rules! take_slots_from {
    ($v:expr, $gid_in:expr) => {
        concat!(
            "UPDATE global_tx SET branch_count = branch_count + v.n, updated_at = {now} \
             FROM ",
            $v,
            " AS v WHERE global_tx.gid = v.id AND global_tx.gid ",
            $gid_in,
            " AND ",
            $crate::store::sql::open!(),
            " AND ",
            $crate::store::sql::room_for!("v.n", "v.max_branches"),
            " RETURNING gid, branch_count"
        )
    };
}
pub(super) use take_slots_from;

/// The decision: each transaction of `v` (id, to_status, lease_owner, lease_ms,
/// abort_reason, decided_by) that is decidable moves to `to_status`, leased to
/// `lease_owner`.
macro_rules! decide_from {
    ($v:expr, $gid_in:expr) => {
        concat!(
            "UPDATE global_tx SET status = v.to_status, ",
            $crate::store::sql::take_lease!("v.lease_owner", "v.lease_ms"),
            ", decided_at = {now}, decided_by = v.decided_by, \
                 reason = COALESCE(v.abort_reason, reason), updated_at = {now} \
             FROM ",
            $v,
            " AS v WHERE global_tx.gid = v.id AND global_tx.gid ",
            $gid_in,
            " AND ",
            $crate::store::sql::decidable!("v.to_status"),
            " RETURNING gid, version, branch_count, created_at, traceparent"
        )
    };
}
pub(super) use decide_from;

/// A finished round's branches: each branch of `v` (id, branch_id, done) still pending
/// moves to `done`. Kept whatever happened to the lease: they are facts.
macro_rules! finish_branches_from {
    ($v:expr, $gid_in:expr) => {
        concat!(
            "UPDATE branch SET status = v.done, updated_at = {now}, next_attempt_at = NULL \
             FROM ",
            $v,
            " AS v WHERE branch.gid = v.id AND branch.branch_id = v.branch_id \
                 AND branch.gid ",
            $gid_in,
            " AND ",
            $crate::store::sql::branch_pending!()
        )
    };
}
pub(super) use finish_branches_from;

/// A finished round's transaction: each of `v` (id, lease_owner, lease_version,
/// final_status, seen) still held reaches its final status, if the round saw every branch
/// it has (`seen`): a branch the round did not call stays PENDING, and the transaction with
/// it, for the next owner.
macro_rules! finish_from {
    ($v:expr, $gid_in:expr) => {
        concat!(
            "UPDATE global_tx SET ",
            $crate::store::sql::finish!("v.final_status"),
            " FROM ",
            $v,
            " AS v WHERE global_tx.gid = v.id AND global_tx.gid ",
            $gid_in,
            " AND ",
            $crate::store::sql::held!("v.lease_owner", "v.lease_version"),
            " AND global_tx.branch_count = v.seen RETURNING gid, version"
        )
    };
}
pub(super) use finish_from;
