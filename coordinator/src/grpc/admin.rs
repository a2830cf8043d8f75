//! `settle.v1.Admin` over [`crate::admin::Admin`]: wire conversions, the acting operator's
//! name from the `x-settle-actor` header (and the client certificate's name, when the
//! connection has a verified one), and
//! [`AdminAuth`], the interceptor that demands `authorization: Bearer <token>` when a token
//! is configured.
//!
//! The rules for what an operator may do live in `crate::admin`; whether Admin may be served
//! at all without a token is decided when the coordinator starts
//! (`crate::access::Security::check_exposure`).

use std::sync::Arc;

use settle_proto::{
    metadata,
    v1::{self as pb, admin_server},
};
use settle_security::{
    Peer,
    auth::{bearer, constant_time_eq},
};
use tonic::{Request, Response, Status, metadata::MetadataMap, service::Interceptor};

use crate::{
    admin::{Admin, DEFAULT_ACTOR, ListQuery, Outcome},
    model::Status as TxStatus,
};

/// Checks the bearer token on every Admin call. Without a configured token every call
/// passes; the coordinator refuses to start that way on a non-loopback address.
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl AdminAuth {
    /// Demands `token` when it is `Some`.
    pub fn new(token: Option<&str>) -> AdminAuth {
        AdminAuth {
            token: token.map(|t| Arc::from(t.as_bytes())),
        }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get(metadata::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer);
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), expected) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong admin token")),
            None => Err(Status::unauthenticated(
                "admin token required: send authorization: Bearer <token>",
            )),
        }
    }
}

/// The actor an Admin call is audited under: the name it declares, and the name in its
/// client certificate when it has one, which unlike the declaration was verified.
fn actor<T>(request: &Request<T>) -> Result<String, Status> {
    let declared = declared_actor(request.metadata())?;
    let identity = request
        .extensions()
        .get::<Peer>()
        .and_then(|peer| peer.identity.as_deref());
    Ok(match identity {
        Some(identity) if declared == DEFAULT_ACTOR => identity.to_owned(),
        Some(identity) => format!("{declared} via {identity}"),
        None => declared,
    })
}

fn declared_actor(metadata: &MetadataMap) -> Result<String, Status> {
    match metadata.get(metadata::ACTOR) {
        None => Ok(DEFAULT_ACTOR.to_owned()),
        Some(value) => {
            let actor = value.to_str().map_err(|_| {
                Status::invalid_argument(format!("{} must be printable ASCII", metadata::ACTOR))
            })?;
            let actor = actor.trim();
            Ok(if actor.is_empty() {
                DEFAULT_ACTOR.to_owned()
            } else {
                actor.to_owned()
            })
        }
    }
}

fn statuses(values: &[i32]) -> Result<Vec<TxStatus>, Status> {
    values
        .iter()
        .map(|&value| {
            pb::Status::try_from(value)
                .ok()
                .and_then(TxStatus::from_proto)
                .ok_or_else(|| Status::invalid_argument(format!("unknown status {value}")))
        })
        .collect()
}

fn admin_response(outcome: Outcome) -> Response<pb::AdminResponse> {
    Response::new(pb::AdminResponse {
        transaction: Some(outcome.tx.to_proto(&outcome.branches)),
        now_ms: outcome.now,
        changed: outcome.changed,
    })
}

/// The Admin gRPC service.
#[derive(Debug, Clone)]
pub struct AdminService {
    admin: Admin,
}

impl AdminService {
    /// A service handing every call to `admin`.
    pub fn new(admin: Admin) -> AdminService {
        AdminService { admin }
    }
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    #[tracing::instrument(name = "admin_list", skip_all)]
    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let req = request.into_inner();
        let query = ListQuery {
            statuses: statuses(&req.status)?,
            needs_attention: req.needs_attention,
            older_than_ms: req.older_than_ms,
            participant: req.participant,
            label: req.label,
            page_size: req.page_size,
            page_token: req.page_token,
            oldest_first: req.oldest_first,
        };
        let page = self.admin.list(&query).await?;
        Ok(Response::new(pb::ListResponse {
            transactions: page
                .transactions
                .iter()
                .map(|(tx, branches)| tx.to_proto(branches))
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            now_ms: page.now,
        }))
    }

    #[tracing::instrument(name = "admin_show", skip_all, fields(gid = %request.get_ref().gid))]
    async fn show(
        &self,
        request: Request<pb::ShowRequest>,
    ) -> Result<Response<pb::ShowResponse>, Status> {
        let shown = self.admin.show(&request.get_ref().gid).await?;
        Ok(Response::new(pb::ShowResponse {
            transaction: Some(shown.tx.to_proto(&shown.branches)),
            audit: shown
                .audit
                .into_iter()
                .map(|entry| pb::AuditEntry {
                    at_ms: entry.at,
                    actor: entry.actor,
                    action: entry.action,
                    note: entry.note,
                })
                .collect(),
            now_ms: shown.now,
            decided_at_ms: shown.tx.decided_at.unwrap_or(0),
            owner: shown.tx.owner.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "admin_retry", skip_all, fields(gid = %request.get_ref().gid))]
    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let outcome = self
            .admin
            .retry(&req.gid, &actor, &req.note, req.wait_ms)
            .await?;
        Ok(admin_response(outcome))
    }

    #[tracing::instrument(name = "admin_force_abort", skip_all, fields(gid = %request.get_ref().gid))]
    async fn force_abort(
        &self,
        request: Request<pb::ForceAbortRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let outcome = self
            .admin
            .force_abort(&req.gid, &actor, &req.note, req.wait_ms)
            .await?;
        Ok(admin_response(outcome))
    }

    #[tracing::instrument(name = "admin_resolve_branch", skip_all, fields(gid = %request.get_ref().gid))]
    async fn resolve_branch(
        &self,
        request: Request<pb::ResolveBranchRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let outcome = self
            .admin
            .resolve_branch(&req.gid, req.branch_id, &actor, &req.note)
            .await?;
        Ok(admin_response(outcome))
    }

    #[tracing::instrument(name = "admin_pause", skip_all, fields(gid = %request.get_ref().gid))]
    async fn pause(
        &self,
        request: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let outcome = self.admin.pause(&req.gid, &actor, &req.note).await?;
        Ok(admin_response(outcome))
    }

    #[tracing::instrument(name = "admin_resume", skip_all, fields(gid = %request.get_ref().gid))]
    async fn resume(
        &self,
        request: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let outcome = self.admin.resume(&req.gid, &actor, &req.note).await?;
        Ok(admin_response(outcome))
    }

    #[tracing::instrument(name = "admin_stats", skip_all)]
    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let _ = request;
        let stats = self.admin.stats().await?;
        Ok(Response::new(pb::StatsResponse {
            by_status: stats
                .by_status
                .into_iter()
                .map(|(status, n)| (status.as_str().to_owned(), n))
                .collect(),
            needs_attention: stats.needs_attention,
            oldest_unfinished_age_ms: stats.oldest_unfinished_age_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: &mut AdminAuth, authorization: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            let value = value.parse().map_err(|_| tonic::Code::Internal)?;
            request
                .metadata_mut()
                .insert(metadata::AUTHORIZATION, value);
        }
        auth.call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn tokens_are_checked_only_when_configured() {
        let mut open = AdminAuth::new(None);
        assert_eq!(call(&mut open, None), Ok(()));
        let mut closed = AdminAuth::new(Some("s3cret"));
        let denied = Err(tonic::Code::Unauthenticated);
        assert_eq!(call(&mut closed, None), denied);
        assert_eq!(call(&mut closed, Some("Bearer wrong")), denied);
        assert_eq!(call(&mut closed, Some("Bearer s3cre")), denied);
        assert_eq!(call(&mut closed, Some("Basic s3cret")), denied);
        assert_eq!(call(&mut closed, Some("s3cret")), denied);
        assert_eq!(call(&mut closed, Some("Bearer s3cret")), Ok(()));
        assert_eq!(call(&mut closed, Some("bearer s3cret")), Ok(()));
    }

    #[test]
    fn debug_hides_the_token() {
        let shown = format!("{:?}", AdminAuth::new(Some("s3cret")));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
