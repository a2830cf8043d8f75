//! Admission control: whether a new transaction (a TCC Begin, a saga Submit) may start now.
//! Two limits, both optional: transactions in flight (`--max-in-flight`: begun here and not
//! yet final) and a token bucket on starts (`--begin-rate`, `--begin-burst`). Over either,
//! the start is refused with [`Overloaded`], which the gRPC edge answers
//! `RESOURCE_EXHAUSTED` with a `RetryInfo` saying when to try again.
//!
//! Only starts are admitted or refused. Everything an admitted transaction does next
//! (RegisterBranch, Commit, Abort, phase two) is never refused for load: admitted work
//! always finishes, and the in-flight limit is what keeps that work bounded.
//!
//! The in-flight count is this instance's: it goes up when a start is admitted and comes
//! down when this instance records a transaction's final status. A transaction another
//! instance finishes (after a lease passed to it) would keep it up for ever, so every few
//! seconds the count is lowered to the number of unfinished transactions in the database
//! plus those admitted while it was counted ([`Admission::observe_unfinished`]), which it
//! can never truly exceed. Recording is an atomic operation or two; nothing here takes a
//! lock.

use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::{InMemoryState, NotKeyed},
};

/// The default `max_in_flight`. By Little's law, more in flight than capacity × latency
/// only adds waiting: at 3× its capacity, a two-core `settled` at this limit answers its
/// admitted transactions in about half a second and stays under 100 MB (BENCHMARKS.md
/// "Overload"); ten thousand, the first default, let a surge take it to seconds and past
/// 250 MB. It stays well above what a 256-worker closed loop keeps in flight.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 512;

/// The limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionConfig {
    /// Most transactions begun here and not yet final.
    pub max_in_flight: Option<u64>,
    /// Starts per second, on average (fractions allowed: 0.5 is one every two seconds).
    pub begin_rate: Option<f64>,
    /// Starts allowed at once above the rate, after a quiet spell (at least 1).
    pub begin_burst: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_in_flight: Some(DEFAULT_MAX_IN_FLIGHT),
            begin_rate: None,
            begin_burst: 100,
        }
    }
}

/// Why a start was refused, and when trying again makes sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; retry in {}ms", retry_after.as_millis())]
pub struct Overloaded {
    /// Which limit, for people.
    pub reason: String,
    /// The earliest a retry could be admitted (the rate limit), or a short pause (the
    /// in-flight limit, which frees up as transactions finish).
    pub retry_after: Duration,
    /// Which limit, for the metrics.
    pub limit: Limit,
}

impl Overloaded {
    /// A start refused because the store's queue of starts was full (`reason` says so).
    pub fn queue(reason: String) -> Overloaded {
        Overloaded {
            reason,
            retry_after: IN_FLIGHT_RETRY,
            limit: Limit::Queue,
        }
    }
}

/// The limit that refused a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `--max-in-flight`.
    InFlight,
    /// `--begin-rate` / `--begin-burst`.
    Rate,
    /// A write queue of the store was full.
    Queue,
}

impl Limit {
    /// The label of `settle_admission_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::InFlight => "in_flight",
            Limit::Rate => "rate",
            Limit::Queue => "queue",
        }
    }
}

/// How long a start refused by the in-flight limit or a full queue is told to wait: about
/// the time a transaction takes, so the retry finds room without hammering.
const IN_FLIGHT_RETRY: Duration = Duration::from_millis(50);

/// The admission state of one coordinator instance. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    in_flight: AtomicU64,
    /// Starts admitted since start-up, and those admitted but not yet written (whose
    /// tickets are out), so that a count read from the database can be told what it may
    /// have missed.
    admitted: AtomicU64,
    unwritten: AtomicU64,
    max_in_flight: Option<u64>,
    rate: Option<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>,
    clock: DefaultClock,
}

impl Admission {
    /// Admission under `config`. A rate that is not a positive finite number is an error.
    pub fn new(config: AdmissionConfig) -> Result<Admission, String> {
        let rate = match config.begin_rate {
            None => None,
            Some(rate) if rate.is_finite() && rate > 0.0 => {
                let burst = NonZeroU32::new(config.begin_burst)
                    .ok_or("--begin-burst must be at least 1")?;
                let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
                    .ok_or("--begin-rate is too high")?
                    .allow_burst(burst);
                Some(RateLimiter::direct(quota))
            }
            Some(rate) => return Err(format!("--begin-rate must be above 0, not {rate}")),
        };
        if config.max_in_flight == Some(0) {
            return Err("--max-in-flight must be at least 1".to_owned());
        }
        Ok(Admission {
            inner: Arc::new(Inner {
                in_flight: AtomicU64::new(0),
                admitted: AtomicU64::new(0),
                unwritten: AtomicU64::new(0),
                max_in_flight: config.max_in_flight,
                rate,
                clock: DefaultClock::default(),
            }),
        })
    }

    /// Admits one start, or says why not. The returned [`Ticket`] gives the place back
    /// when dropped, unless [`Ticket::keep`] says the transaction was created.
    pub fn admit(&self) -> Result<Ticket, Overloaded> {
        let inner = &self.inner;
        if let Some(max) = inner.max_in_flight {
            let taken = inner
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                });
            if taken.is_err() {
                return Err(Overloaded {
                    reason: format!(
                        "{max} transactions in flight, the most this coordinator admits"
                    ),
                    retry_after: IN_FLIGHT_RETRY,
                    limit: Limit::InFlight,
                });
            }
        } else {
            inner.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        // Gives the place back if the rate refuses.
        let mut ticket = Ticket {
            admission: Some(self.clone()),
            unwritten: false,
        };
        if let Some(rate) = &inner.rate
            && let Err(not_until) = rate.check()
        {
            return Err(Overloaded {
                reason: "transactions are starting faster than --begin-rate allows".to_owned(),
                retry_after: not_until.wait_time_from(inner.clock.now()),
                limit: Limit::Rate,
            });
        }
        inner.unwritten.fetch_add(1, Ordering::AcqRel);
        ticket.unwritten = true;
        inner.admitted.fetch_add(1, Ordering::AcqRel);
        Ok(ticket)
    }

    /// A transaction this instance admitted, or one it took over, reached its final status.
    pub fn release(&self) {
        let _ = self
            .inner
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Where the admissions stand, to take before counting the database's unfinished
    /// transactions for [`Admission::observe_unfinished`].
    pub fn mark(&self) -> Mark {
        let inner = &self.inner;
        // Unwritten first: a start admitted in between is then counted twice, never missed.
        let unwritten = inner.unwritten.load(Ordering::Acquire);
        Mark {
            admitted: inner.admitted.load(Ordering::Acquire),
            unwritten,
        }
    }

    /// The database held `unfinished` transactions when counted after `mark`. The count
    /// may have missed starts not yet written at the mark and starts admitted since; more
    /// than all those cannot be in flight.
    pub fn observe_unfinished(&self, mark: Mark, unfinished: u64) {
        let inner = &self.inner;
        let since = inner
            .admitted
            .load(Ordering::Acquire)
            .saturating_sub(mark.admitted);
        inner
            .in_flight
            .fetch_min(unfinished + mark.unwritten + since, Ordering::AcqRel);
    }

    /// Transactions in flight, as counted now.
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::Acquire)
    }
}

/// Admissions so far, as [`Admission::mark`] found them.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    admitted: u64,
    unwritten: u64,
}

/// A place taken by an admitted start, until the start is written or given up.
#[derive(Debug)]
#[must_use = "dropping the ticket gives the place back at once"]
pub struct Ticket {
    admission: Option<Admission>,
    /// Whether the start counts as admitted but not yet written.
    unwritten: bool,
}

impl Ticket {
    /// The transaction was created (and is in the database): its place is given back when
    /// it finishes ([`Admission::release`]), not now.
    pub fn keep(mut self) {
        self.settle(false);
    }

    fn settle(&mut self, give_back: bool) {
        if let Some(admission) = self.admission.take() {
            if self.unwritten {
                admission.inner.unwritten.fetch_sub(1, Ordering::AcqRel);
            }
            if give_back {
                admission.release();
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_flight_limit_refuses_until_a_place_is_released() {
        let admission = Admission::new(AdmissionConfig {
            max_in_flight: Some(2),
            begin_rate: None,
            begin_burst: 1,
        })
        .expect("config");
        admission.admit().expect("first").keep();
        admission.admit().expect("second").keep();
        let refused = admission.admit().expect_err("third");
        assert_eq!(refused.limit, Limit::InFlight);
        assert_eq!(refused.retry_after, IN_FLIGHT_RETRY);
        admission.release();
        admission.admit().expect("after a release").keep();
        assert_eq!(admission.in_flight(), 2);
    }

    #[test]
    fn a_ticket_not_kept_gives_its_place_back() {
        let admission = Admission::new(AdmissionConfig {
            max_in_flight: Some(1),
            ..AdmissionConfig::default()
        })
        .expect("config");
        drop(admission.admit().expect("first"));
        assert_eq!(admission.in_flight(), 0);
        admission.admit().expect("the place is free again").keep();
    }

    #[test]
    fn the_rate_limit_says_when_a_token_is_next_free() {
        let admission = Admission::new(AdmissionConfig {
            max_in_flight: None,
            begin_rate: Some(0.1),
            begin_burst: 2,
        })
        .expect("config");
        admission.admit().expect("burst 1").keep();
        admission.admit().expect("burst 2").keep();
        let refused = admission.admit().expect_err("over the burst");
        assert_eq!(refused.limit, Limit::Rate);
        // One token every 10 s: the next is 10 s after the burst began, give or take the
        // time this test took.
        assert!(
            refused.retry_after > Duration::from_secs(9)
                && refused.retry_after <= Duration::from_secs(10),
            "{refused:?}"
        );
        assert_eq!(admission.in_flight(), 2, "a refused start holds no place");
    }

    #[test]
    fn the_count_is_lowered_to_what_the_database_holds() {
        let admission = Admission::new(AdmissionConfig::default()).expect("config");
        for _ in 0..5 {
            admission.admit().expect("admit").keep();
        }
        admission.observe_unfinished(admission.mark(), 3);
        assert_eq!(admission.in_flight(), 3);
        admission.observe_unfinished(admission.mark(), 10);
        assert_eq!(admission.in_flight(), 3, "never raised");
        // Two admitted while the database was being counted: the count may have missed
        // them, so they stay in flight.
        let mark = admission.mark();
        admission.admit().expect("admit").keep();
        admission.admit().expect("admit").keep();
        admission.observe_unfinished(mark, 0);
        assert_eq!(admission.in_flight(), 2);
        for _ in 0..3 {
            admission.release();
        }
        assert_eq!(admission.in_flight(), 0, "never below zero");
        // Admitted before the mark but not yet written: the count cannot have seen it.
        let ticket = admission.admit().expect("admit");
        admission.observe_unfinished(admission.mark(), 0);
        assert_eq!(
            admission.in_flight(),
            1,
            "a start being written is not lost"
        );
        ticket.keep();
        admission.observe_unfinished(admission.mark(), 1);
        assert_eq!(admission.in_flight(), 1);
    }

    #[test]
    fn nonsense_limits_are_refused() {
        for config in [
            AdmissionConfig {
                begin_rate: Some(0.0),
                ..AdmissionConfig::default()
            },
            AdmissionConfig {
                begin_rate: Some(f64::NAN),
                ..AdmissionConfig::default()
            },
            AdmissionConfig {
                begin_rate: Some(10.0),
                begin_burst: 0,
                ..AdmissionConfig::default()
            },
            AdmissionConfig {
                max_in_flight: Some(0),
                ..AdmissionConfig::default()
            },
        ] {
            assert!(Admission::new(config).is_err(), "{config:?}");
        }
    }
}
