//! The coordinator's three modes on one [`Context`]: [`Tcc`], the saga functions and the
//! message functions are peers that share the store, the participants and the settings, and [`Engine`] is what
//! the gRPC services, the admin and the recovery loop hold. Work that comes back to the
//! coordinator (claimed by recovery, or retried by an operator) is handed to its mode by
//! [`Engine::resume`].
//!
//! The engine adds no rules of its own; they are in `crate::tcc`, `crate::saga` and
//! `crate::message`.

use tracing::info;

use crate::{
    context::Context,
    error::{Error, Result},
    message::{self, Preparation, Prepared},
    model::{Branch, GlobalTx, Mode},
    saga::{self, Submission, Submitted},
    store::Store,
    tcc::Tcc,
    validate,
};

/// Every mode on one context. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    ctx: Context,
    tcc: Tcc,
}

impl Engine {
    /// An engine on `ctx`.
    pub fn new(ctx: Context) -> Engine {
        Engine {
            tcc: Tcc::new(ctx.clone()),
            ctx,
        }
    }

    /// The shared context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.ctx.store()
    }

    /// TCC mode.
    pub fn tcc(&self) -> &Tcc {
        &self.tcc
    }

    /// Validates, persists and starts a saga (see [`saga::submit`]).
    pub async fn submit_saga(&self, submission: Submission) -> Result<Submitted> {
        saga::submit(&self.ctx, submission).await
    }

    /// Validates and stores a PREPARED message (see [`message::prepare`]).
    pub async fn prepare(&self, preparation: Preparation) -> Result<Prepared> {
        message::prepare(&self.ctx, preparation).await
    }

    /// Submits a message and delivers its steps (see [`message::submit`]).
    pub async fn submit(&self, submission: message::Submission) -> Result<Submitted> {
        message::submit(&self.ctx, submission).await
    }

    /// Drives a transaction that came back to this instance with its lease, by its mode.
    pub async fn resume(&self, tx: GlobalTx) -> Result<()> {
        match tx.mode {
            Mode::Tcc => self.tcc.resume(tx).await,
            Mode::Saga => saga::resume(&self.ctx, tx).await.map(|_| ()),
            Mode::Message => message::resume(&self.ctx, tx).await,
        }
    }

    /// Reads a transaction and its branches.
    pub async fn get(&self, gid: &str) -> Result<(GlobalTx, Vec<Branch>)> {
        validate::gid(gid)?;
        let tx = self
            .store()
            .get(gid)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no transaction {gid}")))?;
        let branches = self.store().branches(gid).await?;
        Ok((tx, branches))
    }

    /// Records a participant's endpoint, registered by the authenticated caller `by`
    /// (`None`: from configuration, or callers are not authenticated).
    pub async fn register_participant(
        &self,
        name: &str,
        endpoint: &str,
        by: Option<&str>,
    ) -> Result<()> {
        validate::participant(name)?;
        validate::endpoint(endpoint)?;
        if endpoint.starts_with("https://") && !self.ctx.participants().calls_tls() {
            return Err(Error::FailedPrecondition(format!(
                "endpoint {endpoint} is https, and this coordinator has no CA to verify it: \
                 start settled with --tls-ca"
            )));
        }
        self.ctx.participants().register(name, endpoint, by).await?;
        info!(participant = name, endpoint, by, "participant registered");
        Ok(())
    }

    /// Gives back every lease this instance holds.
    pub async fn release_leases(&self) -> Result<u64> {
        Ok(self.store().release(self.ctx.instance()).await?)
    }
}
