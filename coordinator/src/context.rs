//! What TCC and saga mode share: the store, the participants and how to call them, the
//! settings, admission control, the metrics, and the name this instance takes leases
//! under. `crate::tcc` and `crate::saga` are peers on top of a [`Context`]; neither knows
//! the other.
//!
//! The context holds no rules of its own beyond the few both modes apply the same way
//! (a lease's length, never reusing a retired gid).

use std::{sync::Arc, time::Duration};

use crate::{
    admission::{Admission, Overloaded, Ticket},
    error::{Error, Result},
    metrics::Metrics,
    model::{Mode, Status},
    participants::Participants,
    retry::RetryPolicy,
    store::{self, Store},
    validate::Limits,
};

/// The rules' settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Input limits.
    pub limits: Limits,
    /// Phase-two retry spacing and escalation.
    pub retry: RetryPolicy,
    /// Timeout of one call to a participant.
    pub call_timeout: Duration,
    /// How long a decision or claim owns a transaction. At least twice `call_timeout`, so
    /// that a healthy owner never loses a transaction in the middle of a round (whose calls
    /// run concurrently); it is also how long a crashed owner's work waits to be resumed.
    pub lease: Duration,
    /// Most calls in flight to one participant at once; `None` is no limit.
    pub participant_concurrency: Option<usize>,
    /// TLS for participants at `https://` endpoints.
    pub participant_tls: Option<settle_security::ClientTls>,
}

/// The shared state of both modes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    participants: Participants,
    settings: Settings,
    admission: Admission,
    metrics: Metrics,
    instance: String,
}

impl Context {
    /// A context on `store`, identified as `instance` in leases, admitting starts with
    /// `admission`, recording into `metrics`.
    pub fn new(
        store: Store,
        settings: Settings,
        admission: Admission,
        metrics: Metrics,
        instance: String,
    ) -> Context {
        let participants = Participants::new(
            store.clone(),
            settings.call_timeout,
            settings.participant_concurrency,
            settings.participant_tls.clone(),
            metrics.clone(),
        );
        Context {
            inner: Arc::new(Inner {
                store,
                participants,
                settings,
                admission,
                metrics,
                instance,
            }),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The participants and the calls to them.
    pub fn participants(&self) -> &Participants {
        &self.inner.participants
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Admission control.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// Admits a new transaction, or refuses it for load (counted in the metrics).
    pub fn admit(&self) -> Result<Ticket> {
        self.inner.admission.admit().map_err(|overloaded| {
            self.inner.metrics.refused(overloaded.limit);
            Error::Overloaded(overloaded)
        })
    }

    /// What a store error means for a start: a full queue of starts is load, refused like
    /// the limits are; anything else is the store's failure.
    pub fn start_failed(&self, error: store::Error) -> Error {
        match error {
            store::Error::Busy(_) => {
                let overloaded = Overloaded::queue(error.to_string());
                self.inner.metrics.refused(overloaded.limit);
                Error::Overloaded(overloaded)
            }
            other => Error::Store(other),
        }
    }

    /// A transaction of `mode` that began at `created_at_ms` reached its final `status`
    /// here: counted, and its admission place given back.
    pub fn finished(&self, mode: Mode, status: Status, created_at_ms: i64) {
        self.inner.metrics.finished(mode, status, created_at_ms);
        self.inner.admission.release();
    }

    /// This instance's lease owner id.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The lease length, in the store's milliseconds.
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.inner.settings.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// The gid a saga or message starts with: a generated one when the caller chose none,
    /// else the caller's, checked and not retired.
    pub async fn start_gid(&self, gid: String) -> Result<String> {
        if gid.is_empty() {
            return Ok(crate::id::new_gid());
        }
        crate::validate::gid(&gid)?;
        self.refuse_retired(&gid).await?;
        Ok(gid)
    }

    /// Refuses a client-chosen gid whose earlier transaction was removed by retention:
    /// participants still hold barrier rows under it. (Generated gids are new by
    /// construction.)
    pub async fn refuse_retired(&self, gid: &str) -> Result<()> {
        if self.inner.store.is_retired(gid).await? {
            return Err(Error::FailedPrecondition(format!(
                "gid {gid} belonged to a transaction that finished long ago; gids are never \
                 reused, choose another"
            )));
        }
        Ok(())
    }
}
