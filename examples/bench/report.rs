//! The results of a run and how they are printed: a table for people, then the same
//! figures as one JSON line — the last line of stdout, which `bench/floor.sh` reads (`tps`,
//! `errors`); its keys change only together with that script.
//!
//! It computes nothing beyond rounding and per-transaction ratios; the figures come from
//! [`crate::measure`] and [`crate::process`].

use std::{collections::BTreeMap, time::Duration};

use crate::{Args, Form, Mode, measure::OpenLoop};

/// The results of a run.
pub struct Report {
    pub committed: u64,
    pub errors: BTreeMap<String, u64>,
    pub unmeasured: u64,
    pub window: Duration,
    pub tps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The external coordinator's CPU time during the measured window.
    pub cpu_s: Option<f64>,
    /// This process's CPU time during the measured window (client side, participants and,
    /// when in-process, the coordinator).
    pub bench_cpu_s: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub rss_mb: Option<f64>,
    /// Shop mode: the invariants' violations after the run (empty: all hold).
    pub invariants: Option<Vec<String>>,
    /// `--rate`: the open loop's own figures.
    pub open_loop: Option<OpenLoop>,
}

impl Report {
    pub fn print(&self, args: &Args, store: &str) {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        let opt = |x: Option<f64>| x.map(round);
        let workload = match args.mode {
            Mode::Noop => format!(
                "noop, {} branches {}",
                args.branches,
                if args.batched {
                    "registered with Begin (batched), Trys concurrent"
                } else if args.serial {
                    "registered one after another (RegisterBranch + Try each)"
                } else {
                    "registered concurrently (RegisterBranch + Try each)"
                }
            ),
            Mode::Shop => format!(
                "shop purchase (inventory, order, payment, points) as {}, {} SKU(s)",
                match args.form {
                    Form::Tcc => "a TCC transaction".to_owned(),
                    Form::Message if args.message_wait_ms == 0 => {
                        "a message, answered once submitted".to_owned()
                    }
                    Form::Message => "a message, answered once the order is paid".to_owned(),
                },
                args.skus
            ),
        };
        let secs = self.window.as_secs_f64();
        println!("workload     {workload}");
        println!(
            "coordinator  {store}, {}{}",
            if args.external {
                "separate settled process"
            } else {
                "in this process"
            },
            if args.tls {
                ", mutual TLS on every hop"
            } else {
                ""
            }
        );
        match &self.open_loop {
            Some(open) => println!(
                "load         open loop, {:.1} transactions/s offered over {} client connection(s)",
                open.offered, args.connections
            ),
            None => println!(
                "concurrency  {} workers over {} client connection(s)",
                args.concurrency, args.connections
            ),
        }
        println!(
            "measured     {secs:.2} s: {} committed, {} errors (after {} s warm-up; {} transactions outside the window)",
            self.committed,
            self.errors.values().sum::<u64>(),
            args.warmup,
            self.unmeasured
        );
        println!("throughput   {:.1} global transactions/s", self.tps);
        println!(
            "latency      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (Begin to final)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        );
        for (kind, n) in &self.errors {
            println!("error        {n:>8}  {kind}");
        }
        if let Some(open) = &self.open_loop {
            println!(
                "refused      {:.1}/s for load, answered in p99 {:.2} ms, max {:.2} ms",
                open.refused_per_s, open.refusal_p99_ms, open.refusal_max_ms
            );
            if let Some(bound) = open.server_refusal_p99_ms {
                println!("refused      p99 within {bound} ms as settled measured them");
            }
            let count = |n: Option<u64>| n.map_or("unknown".to_owned(), |n| n.to_string());
            println!(
                "after        {} unfinished, {} needing attention",
                count(open.unfinished_after),
                count(open.needs_attention_after)
            );
        }
        if let Some(cpu) = self.cpu_s {
            let per_tx = if self.committed > 0 {
                cpu * 1000.0 / self.committed as f64
            } else {
                0.0
            };
            println!(
                "settled cpu  {cpu:.2} s in the window ({:.2} cores, {per_tx:.3} ms per transaction)",
                cpu / secs.max(1e-9)
            );
        }
        if let (Some(peak), Some(rss)) = (self.peak_rss_mb, self.rss_mb) {
            println!("settled rss  peak {peak:.1} MB, at the end {rss:.1} MB");
        }
        if let Some(cpu) = self.bench_cpu_s {
            println!(
                "bench cpu    {cpu:.2} s in the window ({:.2} cores)",
                cpu / secs.max(1e-9)
            );
        }
        match &self.invariants {
            Some(violations) if violations.is_empty() => println!("invariants   all hold"),
            Some(violations) => {
                for violation in violations {
                    println!("VIOLATION    {violation}");
                }
            }
            None => {}
        }
        let json = serde_json::json!({
            "mode": args.mode.as_str(),
            "form": (args.mode == Mode::Shop).then_some(args.form.as_str()),
            "message_wait_ms": (args.mode == Mode::Shop && args.form == Form::Message)
                .then_some(args.message_wait_ms),
            "store": store,
            "external": args.external,
            "tls": args.tls,
            "branches": if args.mode == Mode::Noop { args.branches } else { settle_participants::shop::SERVICES.len() },
            // The shop's purchase flow decides for itself (settle_participants::flows).
            "batched": (args.mode == Mode::Noop).then_some(args.batched),
            "serial": (args.mode == Mode::Noop).then_some(!args.batched && args.serial),
            "concurrency": args.concurrency,
            "connections": args.connections,
            "duration_s": round(secs),
            "committed": self.committed,
            "tps": round(self.tps),
            "p50_ms": round(self.p50_ms),
            "p90_ms": round(self.p90_ms),
            "p99_ms": round(self.p99_ms),
            "max_ms": round(self.max_ms),
            "errors": self.errors,
            "cpu_s": opt(self.cpu_s),
            "peak_rss_mb": opt(self.peak_rss_mb),
            "bench_cpu_s": opt(self.bench_cpu_s),
            "invariants_hold": self.invariants.as_ref().map(Vec::is_empty),
            "rate": args.rate,
            "offered": self.open_loop.as_ref().map(|o| round(o.offered)),
            "refused_per_s": self.open_loop.as_ref().map(|o| round(o.refused_per_s)),
            "refusal_p99_ms": self.open_loop.as_ref().map(|o| round(o.refusal_p99_ms)),
            "server_refusal_p99_ms": self.open_loop.as_ref().and_then(|o| o.server_refusal_p99_ms),
            "unfinished_after": self.open_loop.as_ref().and_then(|o| o.unfinished_after),
            "needs_attention_after": self.open_loop.as_ref().and_then(|o| o.needs_attention_after),
        });
        println!("{json}");
    }
}
