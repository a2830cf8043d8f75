//! The measured window and the statistics taken in it. Closed loop (the default):
//! `--concurrency` workers share the client connections and run transactions back to back;
//! those that finish during the warm-up (or outside the window) are only counted, the rest
//! give latencies from Begin to the final status, errors by kind, throughput, nearest-rank
//! percentiles and the CPU time spent in the window. Open loop (`--rate R`): a transaction
//! starts every 1/R s whatever happened to the others, as buyers arrive in a sale; those
//! that start in the window are measured, however long they take to end, so that an
//! overloaded coordinator shows as refusals and latency rather than as a slower arrival
//! rate (which is what a closed loop would turn it into).
//!
//! It does not know what a transaction does ([`crate::workload`]) or how the numbers are
//! printed ([`crate::report`]).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use settle::Client;

use crate::{
    Args, Result,
    process::{CoordinatorHandle, proc_cpu_seconds},
    report::Report,
    workload::Workload,
};

/// When to measure: from `measure_from` until `end` (duration) or until `count`
/// transactions have been started after `measure_from`.
struct Plan {
    measure_from: Instant,
    end: Option<Instant>,
    count: Option<u64>,
    tickets: AtomicU64,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    last_done: Option<Instant>,
    warmup: u64,
}

async fn worker(client: Client, workload: Arc<Workload>, plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::default();
    loop {
        let started = Instant::now();
        if plan.end.is_some_and(|end| started >= end) {
            break;
        }
        let ticketed = started >= plan.measure_from && plan.count.is_some();
        if ticketed
            && plan
                .count
                .is_some_and(|count| plan.tickets.fetch_add(1, Ordering::Relaxed) >= count)
        {
            break;
        }
        let result = workload.run_one(&client).await;
        let done = Instant::now();
        let measured = match plan.end {
            // Duration: every transaction that completed inside the window.
            Some(end) => done >= plan.measure_from && done <= end,
            // Count: every transaction that drew a ticket.
            None => ticketed,
        };
        if !measured {
            tally.warmup += 1;
            continue;
        }
        tally.last_done = Some(tally.last_done.map_or(done, |t| t.max(done)));
        match result {
            Ok(()) => tally
                .latencies_us
                .push(done.duration_since(started).as_micros() as u64),
            Err(kind) => *tally.errors.entry(kind).or_default() += 1,
        }
    }
    tally
}

pub async fn measure(
    args: &Args,
    clients: &[Client],
    workload: Arc<Workload>,
    coordinator: &CoordinatorHandle,
) -> Result<Report> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = match args.count {
        Some(_) => None,
        None => Some(measure_from + Duration::from_secs_f64(args.duration.max(0.001))),
    };
    let plan = Arc::new(Plan {
        measure_from,
        end,
        count: args.count,
        tickets: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            tokio::spawn(worker(client, workload.clone(), plan.clone()))
        })
        .collect();

    // CPU at the start of the measured window, for the coordinator and for this process.
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_from = coordinator.cpu_seconds();
    let own_from = proc_cpu_seconds("/proc/self/stat");
    let cpu_to = match end {
        Some(end) => {
            tokio::time::sleep_until(end.into()).await;
            Some((
                coordinator.cpu_seconds(),
                proc_cpu_seconds("/proc/self/stat"),
            ))
        }
        None => None,
    };

    let mut tally = Tally::default();
    for w in workers {
        let t = w.await?;
        tally.latencies_us.extend(t.latencies_us);
        for (kind, n) in t.errors {
            *tally.errors.entry(kind).or_default() += n;
        }
        tally.last_done = match (tally.last_done, t.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        tally.warmup += t.warmup;
    }
    let (cpu_to, own_to) = match cpu_to {
        Some(sampled) => sampled,
        None => (
            coordinator.cpu_seconds(),
            proc_cpu_seconds("/proc/self/stat"),
        ),
    };
    let window_end = end.unwrap_or_else(|| tally.last_done.unwrap_or_else(Instant::now));
    let window = window_end.saturating_duration_since(measure_from);

    Ok(report(
        tally.latencies_us,
        tally.errors,
        tally.warmup,
        window,
        cpu_from.zip(cpu_to).map(|(a, b)| b - a),
        own_from.zip(own_to).map(|(a, b)| b - a),
    ))
}

/// The report of a window: throughput and percentiles from the committed transactions'
/// latencies (µs, in any order), with the CPU each side spent in it.
fn report(
    mut latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    unmeasured: u64,
    window: Duration,
    cpu_s: Option<f64>,
    bench_cpu_s: Option<f64>,
) -> Report {
    latencies_us.sort_unstable();
    let ok = latencies_us.len() as u64;
    let pct = |p: f64| percentile_ms(&latencies_us, p);
    Report {
        committed: ok,
        errors,
        unmeasured,
        window,
        tps: ok as f64 / window.as_secs_f64().max(1e-9),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        cpu_s,
        bench_cpu_s,
        peak_rss_mb: None,
        rss_mb: None,
        invariants: None,
        open_loop: None,
    }
}

/// What an open-loop run adds to a report.
pub struct OpenLoop {
    /// Transactions started per second in the window.
    pub offered: f64,
    /// Refused for load (`RESOURCE_EXHAUSTED`), per second of the window.
    pub refused_per_s: f64,
    /// How long a refusal took to arrive: p99 and max, in ms.
    pub refusal_p99_ms: f64,
    pub refusal_max_ms: f64,
    /// The bucket bound, in ms, under which 99 % of the window's refusals were answered as
    /// `settled` measured them (`settle_admission_refusal_seconds`): the client's own wait
    /// for a CPU left out. `None` in process, or from a `settled` without that histogram.
    pub server_refusal_p99_ms: Option<f64>,
    /// Transactions still unfinished, and flagged for an operator, once the run's last
    /// transactions are done (read with Admin Stats); `None` when it could not be read.
    pub unfinished_after: Option<u64>,
    pub needs_attention_after: Option<u64>,
}

/// The error kind of a start refused for load (see `workload::error_kind`).
pub const REFUSED_FOR_LOAD: &str = "coordinator ResourceExhausted";

/// One open-loop transaction's outcome: how long it took, how it ended.
type Outcome = (Duration, std::result::Result<(), String>);

/// Open loop: starts a transaction every `1 / rate` s from the start of the warm-up to the
/// end of the window, each in a task of its own, then waits (at most the transaction
/// timeout and a minute) for the last ones.
pub async fn open_loop(
    args: &Args,
    clients: &[Client],
    url: &str,
    workload: Arc<Workload>,
    coordinator: &CoordinatorHandle,
    rate: f64,
) -> Result<Report> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = measure_from + Duration::from_secs_f64(args.duration.max(0.001));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Late ticks are made up at once: the offered rate stays R even when this process
    // falls behind for a moment.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut running = tokio::task::JoinSet::new();
    let mut cpu_from = None;
    let mut refusals_from = None;
    let mut n = 0usize;
    loop {
        let at = tick.tick().await.into_std();
        if at >= end {
            break;
        }
        if cpu_from.is_none() && at >= measure_from {
            refusals_from = server_refusals(coordinator).await;
            cpu_from = Some((
                coordinator.cpu_seconds(),
                proc_cpu_seconds("/proc/self/stat"),
            ));
        }
        let client = clients[n % clients.len()].clone();
        n += 1;
        let (workload, outcomes) = (workload.clone(), outcomes.clone());
        running.spawn(async move {
            let started = Instant::now();
            let result = workload.run_one(&client).await;
            let took = started.elapsed();
            if started >= measure_from {
                outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((took, result));
            }
        });
        // Finished tasks are reaped as we go, so the set holds only those running.
        while running.try_join_next().is_some() {}
    }
    let cpu_to = (
        coordinator.cpu_seconds(),
        proc_cpu_seconds("/proc/self/stat"),
    );
    let refusals_to = server_refusals(coordinator).await;
    let patience = Duration::from_millis(args.timeout_ms) + Duration::from_secs(60);
    let drained = tokio::time::timeout(patience, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "{} transactions still running {patience:?} after the window",
            running.len()
        );
    }
    let (unfinished_after, needs_attention_after) = match settled_work(url).await {
        Some((unfinished, flagged)) => (Some(unfinished), Some(flagged)),
        None => (None, None),
    };

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    let secs = end.duration_since(measure_from).as_secs_f64();
    let mut latencies = Vec::new();
    let mut refusals = Vec::new();
    let mut errors = BTreeMap::new();
    for (took, result) in &outcomes {
        match result {
            Ok(()) => latencies.push(took.as_micros() as u64),
            Err(kind) => {
                if kind == REFUSED_FOR_LOAD {
                    refusals.push(took.as_micros() as u64);
                }
                *errors.entry(kind.clone()).or_default() += 1;
            }
        }
    }
    refusals.sort_unstable();
    let ((cpu_a, own_a), (cpu_b, own_b)) = (cpu_from.unwrap_or(cpu_to), cpu_to);
    let mut report = report(
        latencies,
        errors,
        (n - outcomes.len()) as u64,
        end.duration_since(measure_from),
        cpu_a.zip(cpu_b).map(|(a, b)| b - a),
        own_a.zip(own_b).map(|(a, b)| b - a),
    );
    report.open_loop = Some(OpenLoop {
        offered: outcomes.len() as f64 / secs,
        refused_per_s: refusals.len() as f64 / secs,
        refusal_p99_ms: percentile_ms(&refusals, 0.99),
        refusal_max_ms: percentile_ms(&refusals, 1.0),
        server_refusal_p99_ms: refusals_from
            .zip(refusals_to)
            .and_then(|(from, to)| p99_bound_ms(&from, &to)),
        unfinished_after,
        needs_attention_after,
    });
    Ok(report)
}

/// Unfinished and flagged transactions once none is left moving (Admin Stats, polled for
/// up to 60 s until nothing is unfinished).
async fn settled_work(url: &str) -> Option<(u64, u64)> {
    let mut admin = settle_proto::v1::admin_client::AdminClient::connect(url.to_owned())
        .await
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = admin
            .stats(settle_proto::v1::StatsRequest {})
            .await
            .ok()?
            .into_inner();
        let unfinished: u64 = [
            "TRYING",
            "COMMITTING",
            "ABORTING",
            "RUNNING",
            "COMPENSATING",
        ]
        .iter()
        .filter_map(|status| stats.by_status.get(*status))
        .sum();
        if unfinished == 0 || Instant::now() > deadline {
            return Some((unfinished, stats.needs_attention));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The external coordinator's refusal histogram: (bucket bound in s, cumulative count).
async fn server_refusals(coordinator: &CoordinatorHandle) -> Option<Vec<(f64, f64)>> {
    const BUCKET: &str = "settle_admission_refusal_seconds_bucket{le=\"";
    let samples = settle_testkit::scrape(coordinator.metrics_addr()?).await;
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(key, count)| {
            let le = key.strip_prefix(BUCKET)?.strip_suffix("\"}")?;
            Some((le.parse().ok()?, *count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!buckets.is_empty()).then_some(buckets)
}

/// The smallest bucket bound (ms) holding 99 % of the refusals between two readings of the
/// histogram; `None` when there were none.
fn p99_bound_ms(from: &[(f64, f64)], to: &[(f64, f64)]) -> Option<f64> {
    let counts: Vec<(f64, f64)> = to
        .iter()
        .zip(from)
        .map(|((le, b), (_, a))| (*le, b - a))
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    counts
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map(|(le, _)| le * 1000.0)
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}
