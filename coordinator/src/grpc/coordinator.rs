//! `settle.v1.Coordinator` over the engine: wire conversions, one tracing span per gid, the
//! authenticated caller handed on as who began or decided (the interceptor in front has
//! already refused calls without credentials), and the registration policy of
//! `crate::access` applied to RegisterParticipant.

use settle_proto::v1::{self as pb, coordinator_server::Coordinator};
use tonic::{Request, Response, Status};
use tracing::Span;

use settle_security::Caller;

use crate::{
    access::Security,
    engine::Engine,
    error::Error,
    message::{self, Preparation},
    saga::Submission,
    store::{NewBranch, saga::NewStep},
};

/// The Coordinator gRPC service.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    engine: Engine,
    security: Security,
}

impl CoordinatorService {
    /// A service handing every call to `engine`, registrations allowed by `security`. Its
    /// callers are authenticated by the interceptor in front of it.
    pub fn new(engine: Engine, security: Security) -> CoordinatorService {
        CoordinatorService { engine, security }
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    #[tracing::instrument(name = "begin", skip_all, fields(gid = tracing::field::Empty))]
    async fn begin(
        &self,
        request: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::BeginResponse>, Status> {
        let by = caller_name(&request);
        let req = request.into_inner();
        match pb::Mode::try_from(req.mode) {
            Ok(pb::Mode::Unspecified | pb::Mode::Tcc) => {}
            Ok(pb::Mode::Saga) => {
                return Err(Status::invalid_argument(
                    "sagas are started with SubmitSaga, not Begin",
                ));
            }
            Ok(pb::Mode::Message) => {
                return Err(Status::invalid_argument(
                    "messages are started with Prepare (or Submit), not Begin",
                ));
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown mode {}",
                    req.mode
                )));
            }
        }
        let branches: Vec<NewBranch<'_>> = req
            .branches
            .iter()
            .map(|b| NewBranch {
                participant: &b.participant,
                action: &b.action,
                payload: &b.payload,
            })
            .collect();
        let begun = self
            .engine
            .tcc()
            .begin(
                &req.gid,
                req.timeout_ms,
                &req.labels,
                &branches,
                by.as_deref(),
            )
            .await?;
        Span::current().record("gid", begun.tx.gid.as_str());
        Ok(Response::new(pb::BeginResponse {
            gid: begun.tx.gid,
            deadline_ms: begun.tx.deadline,
            status: begun.tx.status.to_proto() as i32,
            created: begun.created,
            branches: begun
                .branches
                .into_iter()
                .map(|r| pb::RegisterBranchResponse {
                    branch_id: r.branch_id,
                    endpoint: r.endpoint,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "register_branch", skip_all, fields(gid = %request.get_ref().gid))]
    async fn register_branch(
        &self,
        request: Request<pb::RegisterBranchRequest>,
    ) -> Result<Response<pb::RegisterBranchResponse>, Status> {
        let req = request.into_inner();
        let registered = self
            .engine
            .tcc()
            .register_branch(&req.gid, &req.participant, &req.action, &req.payload)
            .await?;
        Ok(Response::new(pb::RegisterBranchResponse {
            branch_id: registered.branch_id,
            endpoint: registered.endpoint,
        }))
    }

    #[tracing::instrument(name = "commit", skip_all, fields(gid = %request.get_ref().gid))]
    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let by = caller_name(&request);
        let req = request.into_inner();
        let status = self
            .engine
            .tcc()
            .commit(&req.gid, req.wait_ms, by.as_deref())
            .await?;
        Ok(Response::new(pb::CommitResponse {
            status: status.to_proto() as i32,
        }))
    }

    #[tracing::instrument(name = "abort", skip_all, fields(gid = %request.get_ref().gid))]
    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let by = caller_name(&request);
        let req = request.into_inner();
        let status = self
            .engine
            .tcc()
            .abort(&req.gid, &req.reason, req.wait_ms, by.as_deref())
            .await?;
        Ok(Response::new(pb::AbortResponse {
            status: status.to_proto() as i32,
        }))
    }

    #[tracing::instrument(name = "get", skip_all, fields(gid = %request.get_ref().gid))]
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let (tx, branches) = self.engine.get(&request.get_ref().gid).await?;
        Ok(Response::new(tx.to_proto(&branches)))
    }

    #[tracing::instrument(name = "submit_saga", skip_all, fields(gid = tracing::field::Empty))]
    async fn submit_saga(
        &self,
        request: Request<pb::SubmitSagaRequest>,
    ) -> Result<Response<pb::SubmitSagaResponse>, Status> {
        let by = caller_name(&request);
        let req = request.into_inner();
        let steps = req
            .steps
            .into_iter()
            .map(|step| NewStep {
                participant: step.participant,
                action: step.action,
                payload: step.payload,
                // Empty means "send the forward payload again" (settle.v1.SagaStep).
                compensation: (!step.compensation_payload.is_empty())
                    .then_some(step.compensation_payload),
                group: step.group,
            })
            .collect();
        let submitted = self
            .engine
            .submit_saga(Submission {
                gid: req.gid,
                steps,
                timeout_ms: req.timeout_ms,
                labels: req.labels,
                wait_ms: req.wait_ms,
                by,
            })
            .await?;
        Span::current().record("gid", submitted.gid.as_str());
        Ok(Response::new(pb::SubmitSagaResponse {
            gid: submitted.gid,
            status: submitted.status.to_proto() as i32,
        }))
    }

    #[tracing::instrument(name = "prepare", skip_all, fields(gid = tracing::field::Empty))]
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let by = caller_name(&request);
        let req = request.into_inner();
        let prepared = self
            .engine
            .prepare(Preparation {
                gid: req.gid,
                steps: message_steps(req.steps),
                timeout_ms: req.timeout_ms,
                labels: req.labels,
                query_endpoint: req.query_endpoint,
                by,
            })
            .await?;
        Span::current().record("gid", prepared.gid.as_str());
        Ok(Response::new(pb::PrepareResponse {
            gid: prepared.gid,
            deadline_ms: prepared.deadline,
            status: prepared.status.to_proto() as i32,
            created: prepared.created,
        }))
    }

    #[tracing::instrument(name = "submit", skip_all, fields(gid = tracing::field::Empty))]
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let by = caller_name(&request);
        let req = request.into_inner();
        let submitted = self
            .engine
            .submit(message::Submission {
                gid: req.gid,
                wait_ms: req.wait_ms,
                steps: message_steps(req.steps),
                timeout_ms: req.timeout_ms,
                labels: req.labels,
                by,
            })
            .await?;
        Span::current().record("gid", submitted.gid.as_str());
        Ok(Response::new(pb::SubmitResponse {
            gid: submitted.gid,
            status: submitted.status.to_proto() as i32,
        }))
    }

    #[tracing::instrument(name = "register_participant", skip_all, fields(participant = %request.get_ref().name))]
    async fn register_participant(
        &self,
        request: Request<pb::RegisterParticipantRequest>,
    ) -> Result<Response<pb::RegisterParticipantResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let req = request.into_inner();
        if !self.security.may_register(caller.as_ref(), &req.name) {
            return Err(Error::PermissionDenied(format!(
                "caller {} may not register participant {:?}: a caller registers its own name, \
                 or one granted with --allow-register",
                caller.map_or_else(|| "(unknown)".to_owned(), |c| c.name),
                req.name
            ))
            .into());
        }
        self.engine
            .register_participant(
                &req.name,
                &req.endpoint,
                caller.as_ref().map(|c| c.name.as_str()),
            )
            .await?;
        Ok(Response::new(pb::RegisterParticipantResponse {}))
    }
}

/// A message's steps: saga steps without compensation.
fn message_steps(steps: Vec<pb::MessageStep>) -> Vec<NewStep> {
    steps
        .into_iter()
        .map(|step| NewStep {
            participant: step.participant,
            action: step.action,
            payload: step.payload,
            compensation: None,
            group: step.group,
        })
        .collect()
}

/// The authenticated caller's name, recorded as who began or decided a transaction.
fn caller_name<T>(request: &Request<T>) -> Option<String> {
    Caller::of(request).map(|caller| caller.name.clone())
}
