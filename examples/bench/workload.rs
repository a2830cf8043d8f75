//! The two workloads, `noop` and `shop`: the participants each needs (started, registered,
//! stocked and funded before the clock starts), what one global transaction is, and how a
//! failed one is counted — by kind, so that the report can say who failed and how.
//!
//! It does not time anything or decide how many transactions run; that is
//! [`crate::measure`]'s. The shop's own logic is `settle_participants`'; this module only
//! drives it and checks its invariants after the run.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use settle::{
    Client, Credentials,
    client::{BeginOptions, BranchSpec, Status},
    security::ServerTls,
};
use settle_participants::{
    Shop,
    flows::{self, Outcome, Purchase},
    invariants::{self, Opening},
    inventory::Inventory,
    shop,
};
use settle_proto::v1::{
    self as pb,
    participant_server::{Participant, ParticipantServer},
};
use tokio::{net::TcpListener, task::JoinHandle};

use settle_testkit::Pki;

use crate::{Args, CLIENT, COORDINATOR, Form, Mode, PARTICIPANT, Result};

/// A workload ready to run, and what keeps its participants up until the end.
pub struct Prepared {
    pub workload: Workload,
    /// Noop mode: the participants' servers, aborted at the end.
    pub servers: Vec<JoinHandle<()>>,
    /// Shop mode: the four services, checked and stopped at the end.
    pub shop: Option<Shop>,
}

/// Starts the participants of `args.mode` and registers them with the coordinator at `url`.
/// Databases it creates with --postgres-admin are pushed onto `fresh`; SQLite files go in
/// `dir`.
pub async fn prepare(
    args: &Args,
    client: &Client,
    url: &str,
    pki: Option<&Pki>,
    dir: &Path,
    prefix: &str,
    fresh: &mut Vec<String>,
) -> Result<Prepared> {
    let mut servers = Vec::new();
    let mut shop = None;
    let workload = match args.mode {
        Mode::Noop => {
            let mut names = Vec::new();
            for i in 0..args.branches {
                let name = format!("p{i}");
                let (endpoint, server) =
                    noop_participant(pki.map(|pki| pki.server(PARTICIPANT))).await?;
                client
                    .coordinator()
                    .register_participant(client.request(pb::RegisterParticipantRequest {
                        name: name.clone(),
                        endpoint,
                    }))
                    .await?;
                servers.push(server);
                names.push(name);
            }
            Workload::Noop {
                names: Arc::new(names),
                batched: args.batched,
                serial: args.serial,
                timeout: Duration::from_millis(args.timeout_ms),
            }
        }
        Mode::Shop => {
            let template = match (&args.shop_store, &args.postgres_admin) {
                (Some(t), _) => t.clone(),
                (None, Some(admin)) => {
                    for service in settle_participants::shop::SERVICES {
                        let name = format!("{prefix}_{service}");
                        fresh.push(name.clone());
                        settle_testkit::fresh_database(admin, &name).await?;
                    }
                    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                    format!("{base}/{prefix}_{{service}}")
                }
                (None, None) => format!("sqlite://{}/{{service}}.db", dir.display()),
            };
            let options = match pki {
                Some(pki) => shop::Options {
                    tls: Some(pki.server(PARTICIPANT)),
                    coordinator_identity: Some(COORDINATOR.to_owned()),
                    credentials: Credentials {
                        tls: Some(pki.client(Some(CLIENT))),
                        token: None,
                    },
                    ..shop::Options::default()
                },
                None => shop::Options::default(),
            };
            let started = Shop::start_with(
                &template,
                url,
                std::net::Ipv4Addr::LOCALHOST.into(),
                options,
            )
            .await?;
            let skus = args.skus.max(1);
            for s in 0..skus {
                started
                    .inventory
                    .restock(&sku(s), args.buyers / skus + 1)
                    .await?;
            }
            let users: Vec<i64> = (1..=args.buyers).collect();
            started.payment.open_accounts(&users, PRICE).await?;
            started.points.open_accounts(&users, 0).await?;
            let form = match args.form {
                Form::Tcc => Purchasing::Tcc,
                Form::Message => Purchasing::Message {
                    inventory: started.inventory.clone(),
                    // Its registered name: the coordinator looks its endpoint up.
                    query_endpoint: shop::INVENTORY.to_owned(),
                    wait: Duration::from_millis(args.message_wait_ms),
                },
            };
            shop = Some(started);
            Workload::Shop {
                next_buyer: Arc::new(AtomicI64::new(1)),
                buyers: args.buyers,
                skus,
                form,
            }
        }
    };
    Ok(Prepared {
        workload,
        servers,
        shop,
    })
}

/// The shop's invariants (`settle_participants::invariants`) once the last purchases'
/// phase two is done: checked until they hold, for at most 30 s.
pub async fn shop_invariants(shop: &Shop, buyers: i64) -> Result<Vec<String>> {
    let opening = Opening {
        money: buyers * PRICE,
        points: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let violations = invariants::check(shop, opening).await?;
        if violations.is_empty() || Instant::now() > deadline {
            return Ok(violations);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const PRICE: i64 = 100;
const REWARD: i64 = 10;

fn sku(n: i64) -> String {
    format!("BENCH-{n}")
}

/// What one global transaction is.
pub enum Workload {
    Noop {
        names: Arc<Vec<String>>,
        batched: bool,
        serial: bool,
        timeout: Duration,
    },
    Shop {
        next_buyer: Arc<AtomicI64>,
        buyers: i64,
        skus: i64,
        form: Purchasing,
    },
}

/// How a shop purchase is run.
pub enum Purchasing {
    Tcc,
    Message {
        inventory: Arc<Inventory>,
        query_endpoint: String,
        wait: Duration,
    },
}

impl Workload {
    /// Runs one global transaction; `Err` is the error kind.
    pub async fn run_one(&self, client: &Client) -> std::result::Result<(), String> {
        match self {
            Workload::Noop {
                names,
                batched: true,
                timeout,
                ..
            } => batched_noop_transaction(client, names, *timeout).await,
            Workload::Noop {
                names,
                batched: false,
                serial,
                timeout,
            } => noop_transaction(client, names, *serial, *timeout).await,
            Workload::Shop {
                next_buyer,
                buyers,
                skus,
                form,
            } => {
                let user_id = next_buyer.fetch_add(1, Ordering::Relaxed);
                if user_id > *buyers {
                    return Err("buyers exhausted (raise --buyers)".to_owned());
                }
                let purchase = Purchase {
                    user_id,
                    campaign: "bench".to_owned(),
                    sku: sku(user_id % skus),
                    qty: 1,
                    price: PRICE,
                    reward: REWARD,
                };
                let purchased = match form {
                    Purchasing::Tcc => flows::purchase(client, &purchase)
                        .await
                        .map_err(|error| error_kind(&error)),
                    Purchasing::Message {
                        inventory,
                        query_endpoint,
                        wait,
                    } => {
                        flows::purchase_message(client, inventory, query_endpoint, &purchase, *wait)
                            .await
                            .map_err(|error| message_error_kind(&error))
                    }
                };
                match purchased? {
                    Outcome::Done(_) => Ok(()),
                    Outcome::Refused { participant, .. } => {
                        Err(format!("refused by {participant}"))
                    }
                }
            }
        }
    }
}

/// Begin registering every branch, Try on all of them concurrently, Commit waiting for the
/// final status.
async fn batched_noop_transaction(
    client: &Client,
    names: &[String],
    timeout: Duration,
) -> std::result::Result<(), String> {
    let mut tx = client
        .begin_with(BeginOptions {
            timeout,
            branches: names
                .iter()
                .map(|name| BranchSpec::raw(name, "noop", Bytes::new()))
                .collect(),
            ..BeginOptions::default()
        })
        .await
        .map_err(|e| error_kind(&e))?;
    if let Err(error) = tx.try_all().await {
        let kind = error_kind(&error);
        let _ = tx.abort(&error.to_string()).await;
        return Err(kind);
    }
    commit(tx).await
}

/// Commits, expecting the final status within the client's commit wait.
async fn commit(tx: settle::Transaction) -> std::result::Result<(), String> {
    match tx.commit().await {
        Ok(Status::Committed) => Ok(()),
        Ok(other) => Err(format!("commit answered {}", other.as_str_name())),
        Err(error) => Err(error_kind(&error)),
    }
}

/// Begin, RegisterBranch + Try on every participant, Commit waiting for the final status.
async fn noop_transaction(
    client: &Client,
    names: &[String],
    serial: bool,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let tx = client.begin(timeout).await.map_err(|e| error_kind(&e))?;
    let tried = if serial {
        let mut tried = Ok(());
        for name in names {
            if let Err(error) = tx.try_branch_raw(name, "noop", Bytes::new()).await {
                tried = Err(error);
                break;
            }
        }
        tried
    } else {
        futures::future::join_all(
            names
                .iter()
                .map(|name| tx.try_branch_raw(name, "noop", Bytes::new())),
        )
        .await
        .into_iter()
        .find_map(|r| r.err())
        .map_or(Ok(()), Err)
    };
    if let Err(error) = tried {
        let kind = error_kind(&error);
        let _ = tx.abort(&error.to_string()).await;
        return Err(kind);
    }
    commit(tx).await
}

/// The kind of an SDK error: who answered, and the gRPC code.
fn error_kind(error: &settle::client::Error) -> String {
    use settle::client::Error as E;
    match error {
        E::Refused { participant, .. } => format!("refused by {participant}"),
        E::Coordinator(status) | E::Overloaded { status, .. } => {
            format!("coordinator {:?}", status.code())
        }
        E::Participant { status, .. } => format!("participant {:?}", status.code()),
        E::Connect(_) => "connect".to_owned(),
        E::InvalidUrl(_) => "invalid URL".to_owned(),
        E::Payload(_) => "payload".to_owned(),
    }
}

/// The kind of a message-form purchase's error (its message names the gid).
fn message_error_kind(error: &settle::message::Error<settle::participant::Error>) -> String {
    use settle::message::Error as E;
    match error {
        E::Coordinator(status) | E::Overloaded { status, .. } => {
            format!("coordinator {:?}", status.code())
        }
        E::Local(_) => "local transaction".to_owned(),
        E::Aborted(_) => "local transaction aborted".to_owned(),
        E::RolledBack(_) => "rolled back".to_owned(),
        E::CommitUnknown { .. } => "local commit unknown".to_owned(),
        E::SubmitRefused { .. } => "submit refused".to_owned(),
        E::Database(_) => "local database".to_owned(),
        E::Barrier(_) => "barrier".to_owned(),
        E::Payload { .. } => "payload".to_owned(),
        E::Builder(_) => "builder".to_owned(),
    }
}

/// A participant that answers every call OK at once (and every message committed).
#[derive(Debug, Clone, Copy)]
struct Noop;

#[tonic::async_trait]
impl Participant for Noop {
    async fn r#try(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
    async fn confirm(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
    async fn cancel(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
    async fn execute(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
    async fn compensate(
        &self,
        _: tonic::Request<pb::BranchRequest>,
    ) -> std::result::Result<tonic::Response<pb::BranchResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchResponse {}))
    }
    async fn query_prepared(
        &self,
        _: tonic::Request<pb::QueryPreparedRequest>,
    ) -> std::result::Result<tonic::Response<pb::QueryPreparedResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::QueryPreparedResponse {
            status: pb::LocalStatus::Committed as i32,
        }))
    }
}

/// Serves a [`Noop`] participant on a free local port, over `tls` when given; returns its
/// URL. Accepted connections get TCP_NODELAY (tonic applies its own setting only to
/// listeners it binds), or small replies could wait out a delayed ACK.
async fn noop_participant(tls: Option<ServerTls>) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = tokio::spawn(async move {
        let server = tonic::transport::Server::builder().add_service(ParticipantServer::new(Noop));
        let served = match tls {
            Some(tls) => {
                server
                    .serve_with_incoming(settle::security::listen::incoming(listener, Some(tls)))
                    .await
            }
            // Plain, as the benches before --tls served it, so that A/Bs against them
            // compare the coordinator alone.
            None => {
                server
                    .serve_with_incoming(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                    )
                    .await
            }
        };
        if let Err(error) = served {
            eprintln!("noop participant {addr} failed: {error}");
        }
    });
    Ok((format!("{scheme}://{addr}"), server))
}
