//! The fault schedule: drawn from the seed alone ([`Schedule::draw`]), so that a seed names
//! the same faults at the same offsets on every run, and injected into a running cluster
//! ([`Schedule::inject`]). What the faults did to the transactions is the checks' to say.

use std::{
    collections::BTreeMap,
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use sqlx::PgPool;

use crate::{
    cluster::{COORDINATORS, Cluster, SERVICES},
    proxy::Mode,
};

/// What a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Coordinator(usize),
    Participant(usize),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Coordinator(i) => f.write_str(COORDINATORS[*i]),
            Target::Participant(i) => f.write_str(SERVICES[*i]),
        }
    }
}

/// A network fault on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// Every chunk held this many milliseconds.
    Delay(u64),
    /// Connections closed and refused.
    Drop,
    /// Open connections reset (RST), once.
    Reset,
    /// Bytes swallowed, then the connections reset.
    BlackHole,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SIGKILL, and a restart after `down_ms`.
    Kill { down_ms: u64 },
    /// SIGSTOP, and SIGCONT after `ms` (longer than the lease).
    Pause { ms: u64 },
    /// `pg_terminate_backend` of every connection of a coordinator.
    TerminateBackends,
    /// A network fault on the target's link for `ms`.
    Link { net: Net, ms: u64 },
}

impl Kind {
    /// The name faults are counted under.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Kill { .. } => "sigkill+restart",
            Kind::Pause { .. } => "sigstop+sigcont",
            Kind::TerminateBackends => "pg_terminate_backend",
            Kind::Link { net, .. } => match net {
                Net::Delay(_) => "link delay",
                Net::Drop => "link drop",
                Net::Reset => "link reset",
                Net::BlackHole => "link black-hole",
            },
        }
    }
}

/// One fault, `at_ms` after the load starts.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub at_ms: u64,
    pub target: Target,
    pub kind: Kind,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at_ms as f64 / 1000.0;
        let target = self.target;
        match self.kind {
            Kind::Kill { down_ms } => {
                write!(f, "{at:9.3}s  kill {target}, restart after {down_ms} ms")
            }
            Kind::Pause { ms } => write!(f, "{at:9.3}s  pause {target} for {ms} ms"),
            Kind::TerminateBackends => {
                write!(f, "{at:9.3}s  terminate {target}'s PostgreSQL connections")
            }
            Kind::Link { net, ms } => {
                let what = match net {
                    Net::Delay(d) => format!("delay {d} ms per chunk"),
                    Net::Drop => "drop".to_owned(),
                    Net::Reset => "reset".to_owned(),
                    Net::BlackHole => "black-hole".to_owned(),
                };
                write!(f, "{at:9.3}s  link to {target}: {what} for {ms} ms")
            }
        }
    }
}

/// The faults of one run, in time order.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub faults: Vec<Fault>,
}

/// What injecting the schedule saw.
#[derive(Debug, Default)]
pub struct Injected {
    /// Faults applied, by kind.
    pub by_kind: BTreeMap<&'static str, usize>,
    /// For each fault, when it ended (ms after the start), to measure recovery against.
    pub ended_ms: Vec<(&'static str, u64)>,
    /// From restart to listening, per killed process kind.
    pub restarts: BTreeMap<&'static str, Vec<Duration>>,
    /// Backends terminated in all.
    pub terminated: u64,
    /// What went wrong injecting (a process that would not restart): violations.
    pub failures: Vec<String>,
}

impl Schedule {
    /// `faults` faults spread over `duration`, from `seed`; pauses outlast `lease`.
    pub fn draw(seed: u64, faults: usize, duration: Duration, lease: Duration) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let span = duration.as_millis() as u64;
        let lease = lease.as_millis() as u64;
        let mut drawn: Vec<Fault> = (0..faults)
            .map(|_| {
                let at_ms = rng.random_range(span / 20..span * 19 / 20);
                let coordinator = Target::Coordinator(rng.random_range(0..COORDINATORS.len()));
                let participant = Target::Participant(rng.random_range(0..SERVICES.len()));
                let (target, kind) = match rng.random_range(0..100) {
                    0..10 => (
                        coordinator,
                        Kind::Kill {
                            down_ms: rng.random_range(100..2_000),
                        },
                    ),
                    10..22 => (
                        participant,
                        Kind::Kill {
                            down_ms: rng.random_range(100..2_000),
                        },
                    ),
                    22..28 => (
                        coordinator,
                        Kind::Pause {
                            ms: lease + rng.random_range(200..1_500),
                        },
                    ),
                    28..34 => (
                        participant,
                        Kind::Pause {
                            ms: lease + rng.random_range(200..1_500),
                        },
                    ),
                    34..44 => (coordinator, Kind::TerminateBackends),
                    n => {
                        let target = if n < 64 { coordinator } else { participant };
                        let net = match rng.random_range(0..4) {
                            0 => Net::Delay(rng.random_range(20..400)),
                            1 => Net::Drop,
                            2 => Net::Reset,
                            _ => Net::BlackHole,
                        };
                        let ms = if net == Net::Reset {
                            0
                        } else {
                            rng.random_range(200..3_000)
                        };
                        (target, Kind::Link { net, ms })
                    }
                };
                Fault {
                    at_ms,
                    target,
                    kind,
                }
            })
            .collect();
        drawn.sort_by_key(|f| f.at_ms);
        Schedule { faults: drawn }
    }

    /// Injects every fault at its offset from `start`; returns once the last one ended.
    pub async fn inject(
        &self,
        cluster: Arc<Cluster>,
        coordinator_db: PgPool,
        start: Instant,
    ) -> Injected {
        let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
        for fault in self.faults.iter().copied() {
            tokio::time::sleep_until((start + Duration::from_millis(fault.at_ms)).into()).await;
            let (cluster, db, done) = (cluster.clone(), coordinator_db.clone(), done.clone());
            tokio::spawn(async move {
                let outcome = apply(&cluster, &db, fault).await;
                let _ = done.send((fault, outcome, start.elapsed()));
            });
        }
        drop(done);
        let mut injected = Injected::default();
        while let Some((fault, outcome, ended)) = results.recv().await {
            *injected.by_kind.entry(fault.kind.name()).or_default() += 1;
            injected
                .ended_ms
                .push((fault.kind.name(), ended.as_millis() as u64));
            match outcome {
                Ok(Applied::Restarted(took)) => {
                    let kind = match fault.target {
                        Target::Coordinator(_) => "settled",
                        Target::Participant(_) => "participant",
                    };
                    injected.restarts.entry(kind).or_default().push(took);
                }
                Ok(Applied::Terminated(n)) => injected.terminated += n,
                Ok(Applied::Done) => {}
                Err(error) => injected
                    .failures
                    .push(format!("fault [{fault}] failed: {error}")),
            }
        }
        injected
    }
}

enum Applied {
    Done,
    Restarted(Duration),
    Terminated(u64),
}

async fn apply(cluster: &Cluster, db: &PgPool, fault: Fault) -> crate::Result<Applied> {
    let process = match fault.target {
        Target::Coordinator(i) => &cluster.coordinators[i],
        Target::Participant(i) => &cluster.participants[i],
    };
    match fault.kind {
        Kind::Kill { down_ms } => {
            let mut process = process.lock().await;
            process.kill();
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            Ok(Applied::Restarted(process.start().await?))
        }
        Kind::Pause { ms } => {
            let process = process.lock().await;
            process.signal("STOP")?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            process.signal("CONT")?;
            Ok(Applied::Done)
        }
        Kind::TerminateBackends => {
            let name = fault.target.to_string();
            let terminated: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1) AS t",
            )
            .bind(name)
            .fetch_one(db)
            .await?;
            Ok(Applied::Terminated(terminated as u64))
        }
        Kind::Link { net, ms } => {
            let (link, lock) = match fault.target {
                Target::Coordinator(i) => (&cluster.coordinator_links[i], &cluster.link_locks[i]),
                Target::Participant(i) => (
                    &cluster.participant_links[i],
                    &cluster.link_locks[COORDINATORS.len() + i],
                ),
            };
            let _held = lock.lock().await;
            match net {
                Net::Reset => link.close_all(true),
                Net::Delay(d) => link.set(Mode::Delay(Duration::from_millis(d))),
                Net::Drop => link.set(Mode::Drop),
                Net::BlackHole => link.set(Mode::BlackHole),
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            link.set(Mode::Pass);
            if net == Net::BlackHole {
                // What was swallowed leaves the connections' streams unusable.
                link.close_all(true);
            }
            Ok(Applied::Done)
        }
    }
}
