//! End-to-end tests of the Admin API through the real `settlectl` binary, against an
//! in-process coordinator on 127.0.0.1:0 and recording participants, each core behaviour on
//! SQLite and PostgreSQL: a commit stuck on a failing Confirm shows in `list` and `stats`,
//! `show` says why, `resolve` finishes it and the audit trail records who did; `retry` runs
//! a round now; `pause` stops retries until `resume`; `abort` only while TRYING; paging;
//! token rules; TLS, with the operator's certificate in the audit trail; and a message
//! whose service does not answer QueryPrepared.
//!
//! The databases and the recording participants come from `settle-testkit`; only tests in
//! this package can run the `settlectl` binary.

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use settle_coordinator::{
    Config, Coordinator, Running, Security, engine::Engine, model::Status,
    recovery::RecoveryConfig, recovery::RecoveryLoop,
};
use settle_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use settle_security::connect::Target;
use settle_testkit::{Answer, Backend, Pki, Recorder, TestDb, both};
use tonic::transport::Channel;

/// The test kit's settings, with escalation after two failed rounds.
fn test_config(url: &str) -> Config {
    let mut config = settle_testkit::test_config(url);
    config.retry.attention_after_attempts = 2;
    config
}

/// A coordinator serving on 127.0.0.1:0, and its engine for looking behind the API.
struct Harness {
    running: Running,
    engine: Engine,
    client: CoordinatorClient<Channel>,
}

impl Harness {
    async fn start(config: Config) -> Harness {
        let coordinator = Coordinator::open(config).await.expect("open coordinator");
        let engine = coordinator.engine().clone();
        let running = coordinator
            .spawn("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("spawn coordinator");
        let client = CoordinatorClient::connect(running.url())
            .await
            .expect("connect to coordinator");
        Harness {
            running,
            engine,
            client,
        }
    }

    fn url(&self) -> String {
        self.running.url()
    }

    async fn participant(&mut self, name: &str) -> Recorder {
        let recorder = Recorder::start().await;
        recorder.register(&mut self.client, name).await;
        recorder
    }

    /// Begins `gid` with `labels` and registers one branch per participant.
    async fn begin(&mut self, gid: &str, labels: &[(&str, &str)], participants: &[&str]) {
        self.client
            .begin(pb::BeginRequest {
                gid: gid.to_owned(),
                timeout_ms: 60_000,
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            })
            .await
            .expect("begin");
        for participant in participants {
            self.client
                .register_branch(pb::RegisterBranchRequest {
                    gid: gid.to_owned(),
                    participant: (*participant).to_owned(),
                    action: "reserve".to_owned(),
                    payload: format!("{{\"sku\":\"{participant}-1\"}}")
                        .into_bytes()
                        .into(),
                })
                .await
                .expect("register branch");
        }
    }

    async fn commit(&mut self, gid: &str) -> pb::Status {
        self.client
            .commit(pb::CommitRequest {
                gid: gid.to_owned(),
                wait_ms: 5_000,
            })
            .await
            .expect("commit")
            .into_inner()
            .status()
    }

    async fn get(&mut self, gid: &str) -> pb::Transaction {
        self.client
            .get(pb::GetRequest {
                gid: gid.to_owned(),
            })
            .await
            .expect("get")
            .into_inner()
    }

    /// Waits until no round is in flight for `gid` (its lease is given back).
    async fn wait_idle(&self, gid: &str) -> settle_coordinator::model::GlobalTx {
        let store = self.engine.store().clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let tx = store.get(gid).await.expect("get").expect("exists");
            if tx.owner.is_none() {
                return tx;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round never ended: {tx:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for(
        &mut self,
        gid: &str,
        what: &str,
        pred: impl Fn(&pb::Transaction) -> bool,
    ) -> pb::Transaction {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let tx = self.get(gid).await;
            if pred(&tx) {
                return tx;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{gid} never became {what}: {tx:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.running.stop().await.expect("stop coordinator");
    }
}

/// One finished `settlectl` run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "settlectl failed: {self:?}");
        self
    }

    #[track_caller]
    fn fails(self, code: i32, stderr_has: &str) -> Run {
        assert_eq!(self.code, code, "exit code: {self:?}");
        assert!(
            self.stderr.contains(stderr_has),
            "stderr lacks {stderr_has:?}: {self:?}"
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "one-line error: {self:?}"
        );
        self
    }

    /// A usage error as clap reports it: exit code 2, several lines of help.
    #[track_caller]
    fn usage(self, stderr_has: &str) -> Run {
        assert_eq!(self.code, 2, "exit code: {self:?}");
        assert!(
            self.stderr.contains(stderr_has),
            "stderr lacks {stderr_has:?}: {self:?}"
        );
        self
    }
}

/// Runs `settlectl --coordinator URL ARGS...` with a clean environment plus `env`.
async fn settlectl_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_settlectl"));
    command
        .arg("--coordinator")
        .arg(url)
        .args(args)
        .env_remove("SETTLE_ADMIN_TOKEN")
        .env_remove("SETTLE_COORDINATOR")
        .env_remove("SETTLE_ACTOR")
        .env_remove("SETTLECTL_TLS_CA")
        .env_remove("SETTLECTL_TLS_CERT")
        .env_remove("SETTLECTL_TLS_KEY")
        .env_remove("USER")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output: Output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("runner")
        .expect("run settlectl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn settlectl(url: &str, args: &[&str]) -> Run {
    settlectl_env(url, args, &[]).await
}

/// The gids of a `list --output json` document, in order.
fn gids(list: &Value) -> Vec<String> {
    list["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .map(|tx| tx["gid"].as_str().expect("gid").to_owned())
        .collect()
}

async fn stuck_commit_is_listed_explained_and_resolved(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut h = Harness::start(test_config(&db.url)).await;
    let url = h.url();
    let _inventory = h.participant("inventory").await;
    let payment = h.participant("payment").await;
    payment.answer("confirm", Answer::Fail);

    h.begin(
        "order-1001",
        &[("shop", "spring")],
        &["inventory", "payment"],
    )
    .await;
    assert_eq!(h.commit("order-1001").await, pb::Status::Committing);
    h.begin("order-1002", &[("shop", "Spring")], &["inventory"])
        .await;
    assert_eq!(h.commit("order-1002").await, pb::Status::Committed);
    h.wait_for("order-1001", "needs_attention", |tx| tx.needs_attention)
        .await;

    // It shows up, and only where it should.
    let listed = settlectl(
        &url,
        &["list", "--status", "committing", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(gids(&listed), ["order-1001"]);
    assert_eq!(listed["transactions"][0]["status"], "COMMITTING");
    let flagged = settlectl(&url, &["list", "--needs-attention", "--output", "json"]).await;
    assert_eq!(gids(&flagged.ok().json()), ["order-1001"]);
    let on_payment = settlectl(
        &url,
        &["list", "--participant", "payment", "--output", "json"],
    );
    assert_eq!(gids(&on_payment.await.ok().json()), ["order-1001"]);
    let on_inventory = settlectl(
        &url,
        &["list", "--participant", "inventory", "--output=json"],
    );
    assert_eq!(gids(&on_inventory.await.ok().json()).len(), 2);
    let spring = settlectl(
        &url,
        &["list", "--label", "shop=spring", "--output", "json"],
    );
    assert_eq!(
        gids(&spring.await.ok().json()),
        ["order-1001"],
        "labels match exactly"
    );
    let capital = settlectl(
        &url,
        &["list", "--label", "shop=Spring", "--output", "json"],
    );
    assert_eq!(gids(&capital.await.ok().json()), ["order-1002"]);
    let table = settlectl(&url, &["list", "--unfinished"]).await.ok().stdout;
    assert!(table.starts_with("GID"), "{table}");
    for expected in [
        "order-1001",
        "COMMITTING",
        "needs-attention",
        "waiting: payment",
    ] {
        assert!(
            table.contains(expected),
            "list table lacks {expected}: {table}"
        );
    }
    assert!(!table.contains("order-1002"), "{table}");

    let stats = settlectl(&url, &["stats", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(stats["by_status"]["COMMITTING"], 1);
    assert_eq!(stats["by_status"]["COMMITTED"], 1);
    assert_eq!(stats["by_status"]["ABORTED"], 0);
    assert_eq!(stats["needs_attention"], 1);
    assert!(
        stats["oldest_unfinished_age_ms"].as_i64() > Some(0),
        "{stats}"
    );
    let stats = settlectl(&url, &["stats"]).await.ok().stdout;
    assert!(stats.contains("needs attention    1"), "{stats}");

    // `show` says why: the failing branch and its last error.
    let shown = settlectl(&url, &["show", "order-1001"]).await.ok().stdout;
    for expected in [
        "waiting on branch 2 (payment)",
        "temporarily failing",
        "needs-attention",
        "next step     fix payment and `settlectl retry order-1001`, or fix it by hand and \
         `settlectl resolve order-1001 2 --note ...`",
        "no operator actions",
    ] {
        assert!(
            shown.contains(expected),
            "show lacks {expected:?}:\n{shown}"
        );
    }
    let shown = settlectl(&url, &["show", "order-1001", "--output", "json"])
        .await
        .ok()
        .json();
    let branch = &shown["transaction"]["branches"][1];
    assert_eq!(branch["status"], "PENDING");
    assert!(branch["attempts"].as_u64() >= Some(2), "{branch}");
    assert!(
        branch["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("temporarily failing")),
        "{branch}"
    );
    assert_eq!(branch["payload"], "{\"sku\":\"payment-1\"}");

    // Refusals, with exit codes scripts can rely on.
    settlectl(&url, &["show", "order-404"])
        .await
        .fails(3, "not found: no transaction order-404");
    settlectl(&url, &["resolve", "order-1001", "2"])
        .await
        .usage("--note");
    settlectl(&url, &["resolve", "order-1001", "2", "--note", " "])
        .await
        .fails(2, "--note must say what was fixed by hand");
    settlectl(&url, &["resolve", "order-1001", "1", "--note", "x"])
        .await
        .fails(1, "branch 1 of order-1001 is CONFIRMED");
    settlectl(&url, &["resolve", "order-1001", "9", "--note", "x"])
        .await
        .fails(3, "has no branch 9");
    settlectl(&url, &["abort", "order-1001"])
        .await
        .fails(1, "commit was decided");

    // Resolving the failing branch by hand finishes the commit, although payment still
    // fails. A branch cannot be resolved while a round may be calling it, so the operator
    // pauses first.
    settlectl(&url, &["pause", "order-1001", "--actor", "alice"])
        .await
        .ok();
    h.wait_idle("order-1001").await;
    let resolved = settlectl(
        &url,
        &[
            "resolve",
            "order-1001",
            "2",
            "--note",
            "captured in the PSP console",
            "--actor",
            "alice",
        ],
    )
    .await
    .ok();
    assert!(
        resolved.stdout.contains("resolved branch 2 of order-1001"),
        "{resolved:?}"
    );
    settlectl(&url, &["resume", "order-1001", "--actor", "alice"])
        .await
        .ok();
    let tx = h
        .wait_for("order-1001", "COMMITTED", |tx| {
            tx.status() == pb::Status::Committed
        })
        .await;
    assert_eq!(tx.branches[0].status(), pb::BranchStatus::Confirmed);
    assert_eq!(tx.branches[1].status(), pb::BranchStatus::Resolved);

    let shown = settlectl(&url, &["show", "order-1001", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["explanation"], "finished: committed");
    let audit = shown["audit"].as_array().expect("audit");
    let actions: Vec<&str> = audit.iter().filter_map(|a| a["action"].as_str()).collect();
    assert_eq!(actions, ["pause", "resolve", "resume"], "{shown}");
    assert!(audit.iter().all(|a| a["actor"] == "alice"), "{shown}");
    assert_eq!(
        audit[1]["note"],
        "branch 2 (payment): captured in the PSP console"
    );
    let shown = settlectl(&url, &["show", "order-1001"]).await.ok().stdout;
    assert!(shown.contains("alice  resolve"), "{shown}");

    settlectl(&url, &["retry", "order-1001"])
        .await
        .fails(1, "order-1001 is COMMITTED: nothing to retry");
    let stats = settlectl(&url, &["stats", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(stats["by_status"]["COMMITTED"], 2);
    assert_eq!(stats["needs_attention"], 0);
    assert_eq!(stats["oldest_unfinished_age_ms"], 0);
    h.stop().await;
}
both!(stuck_commit_is_listed_explained_and_resolved);

async fn retry_runs_a_round_now(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The recovery loop passes once at start and then sleeps: only `retry` drives rounds.
    let mut config = test_config(&db.url);
    config.recovery.interval = Duration::from_secs(3_600);
    let mut h = Harness::start(config).await;
    let url = h.url();
    let payment = h.participant("payment").await;
    payment.answer("confirm", Answer::Fail);
    h.begin("pay-7", &[], &["payment"]).await;
    assert_eq!(h.commit("pay-7").await, pb::Status::Committing);
    assert_eq!(payment.calls_of("confirm", "pay-7"), 1);

    // While the participant still fails, a retry is one more failed round.
    let again = settlectl(&url, &["retry", "pay-7"]).await.ok();
    assert!(
        again.stdout.contains("retried pay-7: still COMMITTING")
            && again.stdout.contains("temporarily failing"),
        "{again:?}"
    );
    assert_eq!(payment.calls_of("confirm", "pay-7"), 2);
    assert_eq!(h.get("pay-7").await.attempts, 2);

    // Once it recovers, a retry finishes the commit at once.
    payment.answer("confirm", Answer::Ok);
    let done = settlectl_env(
        &url,
        &[
            "retry",
            "pay-7",
            "--note",
            "PSP back up",
            "--output",
            "json",
        ],
        &[("USER", "bob")],
    )
    .await
    .ok()
    .json();
    assert_eq!(done["changed"], true);
    assert_eq!(done["transaction"]["status"], "COMMITTED");
    assert_eq!(h.get("pay-7").await.status(), pb::Status::Committed);
    assert_eq!(payment.calls_of("confirm", "pay-7"), 3);

    let shown = settlectl(&url, &["show", "pay-7", "--output", "json"])
        .await
        .ok()
        .json();
    let audit: Vec<(String, String, String)> = shown["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .map(|a| {
            let field = |k: &str| a[k].as_str().expect("text").to_owned();
            (field("actor"), field("action"), field("note"))
        })
        .collect();
    assert_eq!(
        audit,
        [
            ("admin".to_owned(), "retry".to_owned(), String::new()),
            (
                "bob".to_owned(),
                "retry".to_owned(),
                "PSP back up".to_owned()
            ),
        ],
        "the actor is --actor, else $USER, else the coordinator's default"
    );
    h.stop().await;
}
both!(retry_runs_a_round_now);

async fn pause_stops_retries_until_resume(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut h = Harness::start(test_config(&db.url)).await;
    let url = h.url();
    let points = h.participant("points").await;
    points.answer("confirm", Answer::Fail);
    h.begin("grant-3", &[], &["points"]).await;
    assert_eq!(h.commit("grant-3").await, pb::Status::Committing);
    h.wait_for("grant-3", "retried", |tx| tx.attempts >= 2)
        .await;

    let paused = settlectl(
        &url,
        &["pause", "grant-3", "--note", "points ledger frozen"],
    )
    .await
    .ok();
    assert!(
        paused.stdout.contains("paused grant-3 (COMMITTING)"),
        "{paused:?}"
    );
    let again = settlectl(&url, &["pause", "grant-3"]).await.ok();
    assert!(
        again.stdout.contains("grant-3 was already paused"),
        "{again:?}"
    );

    // A round that was running when the pause landed ends without scheduling another.
    let tx = h.wait_idle("grant-3").await;
    assert!(tx.paused);
    assert_eq!(
        tx.next_attempt_at, None,
        "a paused transaction is not scheduled"
    );

    // Even with the participant healthy again, recovery leaves it alone.
    points.answer("confirm", Answer::Ok);
    let confirms = points.calls_of("confirm", "grant-3");
    let recovery = RecoveryLoop::new(h.engine.clone(), RecoveryConfig::default());
    for _ in 0..3 {
        recovery.pass().await;
    }
    let after = h
        .engine
        .store()
        .get("grant-3")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(after.status, Status::Committing);
    assert_eq!(
        after.attempts, tx.attempts,
        "attempts stop growing while paused"
    );
    assert_eq!(points.calls_of("confirm", "grant-3"), confirms);
    settlectl(&url, &["retry", "grant-3"])
        .await
        .fails(1, "grant-3 is paused; resume it to retry");
    let listed = settlectl(&url, &["list", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(listed["transactions"][0]["paused"], true);
    let shown = settlectl(&url, &["show", "grant-3"]).await.ok().stdout;
    assert!(shown.contains("paused by an operator"), "{shown}");

    let resumed = settlectl(&url, &["resume", "grant-3", "--note", "ledger thawed"])
        .await
        .ok();
    assert!(resumed.stdout.contains("resumed grant-3"), "{resumed:?}");
    h.wait_for("grant-3", "COMMITTED", |tx| {
        tx.status() == pb::Status::Committed
    })
    .await;
    let unpaused = settlectl(&url, &["resume", "grant-3"]).await.ok();
    assert!(
        unpaused.stdout.contains("grant-3 was not paused"),
        "{unpaused:?}"
    );
    settlectl(&url, &["pause", "grant-3"])
        .await
        .fails(1, "grant-3 is COMMITTED");

    let shown = settlectl(&url, &["show", "grant-3", "--output", "json"])
        .await
        .ok()
        .json();
    let actions: Vec<&str> = shown["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .map(|a| a["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, ["pause", "resume"], "no-op calls are not audited");
    h.stop().await;
}
both!(pause_stops_retries_until_resume);

async fn abort_only_while_trying(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut h = Harness::start(test_config(&db.url)).await;
    let url = h.url();
    let inventory = h.participant("inventory").await;

    h.begin("cart-1", &[], &["inventory"]).await;
    let aborted = settlectl(
        &url,
        &[
            "abort",
            "cart-1",
            "--note",
            "initiator crashed",
            "--actor",
            "carol",
        ],
    )
    .await
    .ok();
    assert!(
        aborted.stdout.contains("aborted cart-1: now ABORTED"),
        "{aborted:?}"
    );
    assert_eq!(inventory.calls_of("cancel", "cart-1"), 1);
    let tx = h.get("cart-1").await;
    assert_eq!(tx.status(), pb::Status::Aborted);
    assert_eq!(tx.reason, "force-aborted by carol: initiator crashed");
    let again = settlectl(&url, &["abort", "cart-1", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(again["changed"], false);

    h.begin("cart-2", &[], &["inventory"]).await;
    assert_eq!(h.commit("cart-2").await, pb::Status::Committed);
    settlectl(&url, &["abort", "cart-2"])
        .await
        .fails(1, "cart-2 is COMMITTED: commit was decided");
    assert_eq!(h.get("cart-2").await.status(), pb::Status::Committed);
    assert_eq!(inventory.calls_of("cancel", "cart-2"), 0);

    h.begin("cart-3", &[], &["inventory"]).await;
    settlectl(&url, &["pause", "cart-3"])
        .await
        .fails(1, "cart-3 is TRYING");
    settlectl(&url, &["retry", "cart-3"])
        .await
        .fails(1, "cart-3 is TRYING");
    assert_eq!(h.get("cart-3").await.status(), pb::Status::Trying);

    let shown = settlectl(&url, &["show", "cart-1", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["audit"][0]["action"], "force-abort");
    assert_eq!(shown["audit"][0]["actor"], "carol");
    assert_eq!(shown["audit"].as_array().map(Vec::len), Some(1));
    h.stop().await;
}
both!(abort_only_while_trying);

async fn list_pages_with_an_opaque_cursor(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut h = Harness::start(test_config(&db.url)).await;
    let url = h.url();
    for i in 0..7 {
        h.begin(&format!("page-{i}"), &[], &[]).await;
    }

    let walk = |oldest_first: bool| {
        let url = url.clone();
        async move {
            let mut seen = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut args = vec!["list", "--limit", "3", "--output", "json"];
                if oldest_first {
                    args.push("--oldest-first");
                }
                if let Some(token) = &token {
                    args.extend(["--page-token", token.as_str()]);
                }
                let page = settlectl(&url, &args).await.ok().json();
                let gids = gids(&page);
                assert!(gids.len() <= 3, "{page}");
                let created: Vec<i64> = page["transactions"]
                    .as_array()
                    .expect("transactions")
                    .iter()
                    .map(|tx| tx["created_at_ms"].as_i64().expect("created"))
                    .collect();
                seen.extend(gids.into_iter().zip(created));
                match page["next_page_token"].as_str() {
                    Some(next) => token = Some(next.to_owned()),
                    None => break,
                }
            }
            seen
        }
    };
    let newest = walk(false).await;
    let oldest = walk(true).await;
    assert_eq!(newest.len(), 7, "{newest:?}");
    let mut distinct: Vec<&String> = newest.iter().map(|(gid, _)| gid).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 7, "{newest:?}");
    assert!(
        newest.windows(2).all(|w| w[0].1 >= w[1].1),
        "newest first: {newest:?}"
    );
    let mut reversed = oldest.clone();
    reversed.reverse();
    assert_eq!(reversed, newest, "oldest first is the exact reverse");

    let first = settlectl(&url, &["list", "--limit", "3", "--output", "json"])
        .await
        .ok()
        .json();
    let token = first["next_page_token"].as_str().expect("token").to_owned();
    settlectl(&url, &["list", "--oldest-first", "--page-token", &token])
        .await
        .fails(2, "other order");
    settlectl(&url, &["list", "--page-token", "not-a-token"])
        .await
        .fails(2, "invalid: page_token");
    let table = settlectl(&url, &["list", "--limit", "3"]).await.ok().stdout;
    assert!(table.contains(&format!("--page-token {token}")), "{table}");

    let trying = settlectl(&url, &["list", "--status", "TRYING", "--output", "json"]);
    assert_eq!(gids(&trying.await.ok().json()).len(), 7);
    let old = settlectl(&url, &["list", "--older-than", "1h", "--output", "json"]);
    assert!(gids(&old.await.ok().json()).is_empty());
    let none = settlectl(&url, &["list", "--status", "aborted"]).await.ok();
    assert_eq!(none.stdout, "no transactions match\n");
    settlectl(&url, &["list", "--status", "bogus"])
        .await
        .usage("bogus");
    settlectl(&url, &["list", "--limit", "501"])
        .await
        .usage("501");
    settlectl(&url, &["list", "--older-than", "5 minutes"])
        .await
        .usage("not a duration");
    h.stop().await;
}
both!(list_pages_with_an_opaque_cursor);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_calls_need_the_token_when_one_is_configured() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.security.admin_token = Some("s3cret-token".into());
    let mut h = Harness::start(config).await;
    let url = h.url();

    settlectl(&url, &["stats"])
        .await
        .fails(1, "unauthenticated: admin token required");
    settlectl(&url, &["stats", "--token", "guess"])
        .await
        .fails(1, "unauthenticated: wrong admin token");
    settlectl(&url, &["show", "x-1", "--token", "s3cret-token!"])
        .await
        .fails(1, "unauthenticated");
    settlectl(&url, &["stats", "--token", "s3cret-token"])
        .await
        .ok();
    settlectl_env(&url, &["stats"], &[("SETTLE_ADMIN_TOKEN", "s3cret-token")])
        .await
        .ok();

    // The Coordinator service does not ask for the admin token.
    h.begin("open-1", &[], &[]).await;
    assert_eq!(h.commit("open-1").await, pb::Status::Committed);
    let shown = settlectl(&url, &["show", "open-1", "--token", "s3cret-token"])
        .await
        .ok();
    assert!(shown.stdout.contains("finished: committed"), "{shown:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settlectl_speaks_tls_and_the_audit_trail_names_its_certificate() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pki = Pki::new("settle test CA");
    let mut config = test_config(&db.url);
    config.security = Security {
        tls: Some(pki.server("coordinator")),
        admin_token: Some("s3cret-token".into()),
        ..Security::default()
    };
    let running = settle_testkit::start_coordinator(config).await;
    let url = running.url();
    let channel = Target::new(&url, Some(&pki.client(Some("checkout"))))
        .expect("target")
        .connect()
        .await
        .expect("connect");
    CoordinatorClient::new(channel)
        .begin(pb::BeginRequest {
            gid: "cart-1".to_owned(),
            timeout_ms: 60_000,
            ..Default::default()
        })
        .await
        .expect("begin");

    let ops = pki.issue("ops");
    let (ca, cert, key) = (
        pki.ca().display().to_string(),
        ops.cert.display().to_string(),
        ops.key.display().to_string(),
    );
    let tls = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let with = |args: &[&'static str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--token", "s3cret-token", "--actor", "carol"]);
        all.extend(tls);
        all.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let run = async |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        settlectl(&url, &args).await
    };
    run(with(&["abort", "cart-1", "--note", "stuck"]))
        .await
        .ok();
    let shown = run(with(&["show", "cart-1", "--output", "json"]))
        .await
        .ok()
        .json();
    assert_eq!(shown["transaction"]["status"], "ABORTED", "{shown}");
    assert_eq!(shown["transaction"]["began_by"], "checkout", "{shown}");
    assert_eq!(
        shown["transaction"]["decided_by"], "admin:carol via ops",
        "{shown}"
    );
    assert_eq!(shown["audit"][0]["actor"], "carol via ops", "{shown}");
    let table = run(with(&["show", "cart-1"])).await.ok();
    assert!(table.stdout.contains("began by"), "{table:?}");

    settlectl(&url, &["stats", "--token", "s3cret-token"])
        .await
        .fails(2, "no CA was given to verify it (--tls-ca)");
    settlectl(
        &url,
        &[
            "stats",
            "--tls-ca",
            &pki.ca().display().to_string(),
            "--tls-cert",
            &cert,
        ],
    )
    .await
    .usage("--tls-key");
    running.stop().await.expect("stop");
}

#[tokio::test]
async fn settlectl_reports_an_unreachable_coordinator_and_usage_errors() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    settlectl(&closed, &["stats"])
        .await
        .fails(1, &format!("cannot reach the coordinator at {closed}"));
    settlectl("not a url", &["stats"])
        .await
        .fails(2, "is not a URL");
    let usage = settlectl(&closed, &["frobnicate"]).await;
    assert_eq!(usage.code, 2, "{usage:?}");
    let help = settlectl(&closed, &["--help"]).await.ok();
    assert!(help.stdout.contains("resolve"), "{help:?}");
}

async fn a_message_whose_service_does_not_answer_is_shown_paused_and_resumed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut h = Harness::start(test_config(&db.url)).await;
    let url = h.url();
    let steps = h.participant("points").await;
    let service = Recorder::start().await;
    service.answer("query_prepared", Answer::Fail);
    h.client
        .prepare(pb::PrepareRequest {
            gid: "msg-1".to_owned(),
            steps: vec![pb::MessageStep {
                participant: "points".to_owned(),
                action: "reward".to_owned(),
                payload: b"{\"points\":5}".to_vec().into(),
                group: 0,
            }],
            timeout_ms: 100,
            query_endpoint: service.url.clone(),
            ..Default::default()
        })
        .await
        .expect("prepare");
    h.wait_for("msg-1", "needs_attention", |tx| tx.needs_attention)
        .await;

    let listed = settlectl(&url, &["list", "--status", "prepared", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(gids(&listed), ["msg-1"]);
    let unfinished = settlectl(&url, &["list", "--unfinished", "--output", "json"]).await;
    assert_eq!(gids(&unfinished.ok().json()), ["msg-1"]);
    let shown = settlectl(&url, &["show", "msg-1"]).await.ok().stdout;
    for expected in [
        "MESSAGE",
        "PREPARED (needs-attention)",
        "temporarily failing",
        "bring back the message's service",
        "settlectl retry msg-1",
    ] {
        assert!(
            shown.contains(expected),
            "show lacks {expected:?}:\n{shown}"
        );
    }
    settlectl(&url, &["abort", "msg-1"])
        .await
        .fails(1, "only its service can say");

    // Paused, its service is not asked; resumed, it is asked at once and answers.
    settlectl(&url, &["pause", "msg-1"]).await.ok();
    let paused = h.wait_idle("msg-1").await;
    let asked = service.calls_of("query_prepared", "msg-1");
    service.answer("query_prepared", Answer::Ok);
    // Nothing to await here: the check is that nothing happens over several recovery
    // passes (50 ms) and the longest retry delay (200 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    settlectl(&url, &["retry", "msg-1"])
        .await
        .fails(1, "paused");
    assert_eq!(paused.status, Status::Prepared);
    assert!(
        paused.paused && paused.next_attempt_at.is_none(),
        "{paused:?}"
    );
    assert_eq!(service.calls_of("query_prepared", "msg-1"), asked);
    settlectl(&url, &["resume", "msg-1"]).await.ok();
    let done = h
        .wait_for("msg-1", "committed", |tx| {
            tx.status() == pb::Status::Committed
        })
        .await;
    assert_eq!(done.decided_by, "(query)");
    assert_eq!(steps.calls_of("execute", "msg-1"), 1);
    h.stop().await;
}
both!(a_message_whose_service_does_not_answer_is_shown_paused_and_resumed);
