//! The participant directory: participant name → endpoint, and one reusable gRPC client per
//! endpoint.
//!
//! Names are persisted in the store (from `RegisterParticipant` and from start-up
//! configuration), so every coordinator sharing a database knows every participant. Each
//! instance keeps a small cache that it refreshes from the store every few seconds, which
//! is how an endpoint change made through another instance reaches this one. Channels are
//! created once per endpoint and connect lazily; tonic reconnects them as needed. An
//! `https://` endpoint is reached over TLS, verified against `--tls-ca`, presenting the
//! coordinator's certificate (the identity participants accept phase two from).
//!
//! The directory does not make calls; `participants/mod.rs` does.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use settle_proto::v1::participant_client::ParticipantClient;
use settle_security::{ClientTls, connect::Target};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use crate::{
    metrics::{Metrics, ParticipantMeters},
    store::{self, Store},
};

/// The most query-endpoint channels kept at once.
const MAX_QUERIED: usize = 1024;

/// How long a cached endpoint is trusted before it is read from the store again.
const REFRESH_AFTER: Duration = Duration::from_secs(5);

/// A participant the engine can call.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its endpoint URL.
    pub endpoint: String,
    /// A client on the shared channel for that endpoint.
    pub client: ParticipantClient<Channel>,
    /// Its metric handles.
    pub meters: Arc<ParticipantMeters>,
    /// Its places for calls in flight (`--participant-concurrency`), if limited.
    pub slots: Option<Arc<Semaphore>>,
}

#[derive(Debug)]
struct Entry {
    resolved: Resolved,
    checked_at: Instant,
}

/// Known participants and their channels.
#[derive(Debug)]
pub struct Directory {
    store: Store,
    connect_timeout: Duration,
    concurrency: Option<usize>,
    tls: Option<ClientTls>,
    metrics: Metrics,
    entries: RwLock<HashMap<String, Entry>>,
    /// Channels to messages' query endpoints, which are URLs rather than names.
    queried: RwLock<HashMap<String, ParticipantClient<Channel>>>,
}

impl Directory {
    /// An empty directory backed by `store`, whose participants each take at most
    /// `concurrency` calls at once, are reached over `tls` at `https://` endpoints, and
    /// record into `metrics`.
    pub fn new(
        store: Store,
        connect_timeout: Duration,
        concurrency: Option<usize>,
        tls: Option<ClientTls>,
        metrics: Metrics,
    ) -> Directory {
        Directory {
            store,
            connect_timeout,
            concurrency,
            tls,
            metrics,
            entries: RwLock::new(HashMap::new()),
            queried: RwLock::new(HashMap::new()),
        }
    }

    /// Where calls are counted.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether `https://` endpoints can be reached.
    pub fn calls_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Records `name` at `endpoint` (already validated), registered by `by`, durably, and
    /// caches it.
    pub async fn register(
        &self,
        name: &str,
        endpoint: &str,
        by: Option<&str>,
    ) -> Result<Resolved, store::Error> {
        self.store.upsert_participant(name, endpoint, by).await?;
        Ok(self.cache(name, endpoint))
    }

    /// Looks `name` up: from the cache while fresh, otherwise from the store.
    pub async fn resolve(&self, name: &str) -> Result<Option<Resolved>, store::Error> {
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = entries.get(name)
                && entry.checked_at.elapsed() < REFRESH_AFTER
            {
                return Ok(Some(entry.resolved.clone()));
            }
        }
        let Some(endpoint) = self.store.participant(name).await? else {
            return Ok(None);
        };
        Ok(Some(self.cache(name, &endpoint)))
    }

    /// A client for the query endpoint of a message: one channel per endpoint, kept.
    pub fn at(&self, endpoint: &str) -> ParticipantClient<Channel> {
        if let Some(client) = self
            .queried
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(endpoint)
        {
            return client.clone();
        }
        let mut queried = self.queried.write().unwrap_or_else(|e| e.into_inner());
        // URLs come from callers: a bounded cache, emptied when full (a channel is cheap to
        // make again; it connects lazily).
        if queried.len() >= MAX_QUERIED {
            queried.clear();
        }
        queried
            .entry(endpoint.to_owned())
            .or_insert_with(|| ParticipantClient::new(self.channel(endpoint)))
            .clone()
    }

    fn cache(&self, name: &str, endpoint: &str) -> Resolved {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(name)
            && entry.resolved.endpoint == endpoint
        {
            entry.checked_at = Instant::now();
            return entry.resolved.clone();
        }
        // A new endpoint keeps the name's metric handles and its limit: the calls still in
        // flight to the old endpoint count against the new one's.
        let (meters, slots) = match entries.get(name) {
            Some(entry) => (entry.resolved.meters.clone(), entry.resolved.slots.clone()),
            None => (
                self.metrics.participant(name),
                self.concurrency.map(|n| Arc::new(Semaphore::new(n))),
            ),
        };
        let resolved = Resolved {
            endpoint: endpoint.to_owned(),
            client: ParticipantClient::new(self.channel(endpoint)),
            meters,
            slots,
        };
        entries.insert(
            name.to_owned(),
            Entry {
                resolved: resolved.clone(),
                checked_at: Instant::now(),
            },
        );
        resolved
    }

    fn channel(&self, endpoint: &str) -> Channel {
        // Endpoints are validated before they are stored; a row written by hand that does
        // not parse still yields a channel, whose calls fail (and are retried) visibly.
        let target = Target::new(endpoint, self.tls.as_ref()).unwrap_or_else(|error| {
            warn!(%endpoint, %error, "participant endpoint unusable");
            Target::from(Endpoint::from_static("http://invalid-endpoint.invalid"))
        });
        target
            .configure(|endpoint| {
                endpoint
                    .connect_timeout(self.connect_timeout)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true)
            })
            .connect_lazy()
    }
}
