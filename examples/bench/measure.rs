//! The measured window and the statistics taken in it: `--concurrency` workers share the
//! client connections and run transactions back to back; those that finish during the
//! warm-up (or outside the window) are only counted, the rest give latencies from Begin to
//! the final status, errors by kind, throughput, nearest-rank percentiles and the CPU time
//! spent in the window.
//!
//! It does not know what a transaction does ([`crate::workload`]) or how the numbers are
//! printed ([`crate::report`]).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
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

    let mut latencies = tally.latencies_us;
    latencies.sort_unstable();
    let ok = latencies.len() as u64;
    let secs = window.as_secs_f64().max(1e-9);
    let pct = |p: f64| percentile_ms(&latencies, p);
    Ok(Report {
        committed: ok,
        errors: tally.errors,
        unmeasured: tally.warmup,
        window,
        tps: ok as f64 / secs,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        cpu_s: cpu_from.zip(cpu_to).map(|(a, b)| b - a),
        bench_cpu_s: own_from.zip(own_to).map(|(a, b)| b - a),
        peak_rss_mb: None,
        rss_mb: None,
        invariants: None,
    })
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}
