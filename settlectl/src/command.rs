//! One subcommand from start to finish: its arguments become the Admin request, the client
//! sends it, and the answer goes to [`crate::render`] in the chosen output format.
//!
//! It holds no rule of its own beyond the checks that need no coordinator (a `resolve`
//! note that says nothing); refusing an action is the coordinator's part.

use std::time::Duration;

use settle_proto::v1 as pb;

use crate::{
    cli::{Cli, Command},
    client::Client,
    error::Error,
    render::{self, Action},
};

pub async fn run(cli: Cli) -> Result<(), Error> {
    let tls = cli.tls()?;
    let mut client =
        Client::connect(&cli.coordinator, tls.as_ref(), cli.token(), cli.actor()).await?;
    let output = cli.output;
    match &cli.command {
        Command::List(args) => {
            let mut status: Vec<i32> = args.status.iter().map(|s| s.to_proto() as i32).collect();
            if args.unfinished {
                status = [
                    pb::Status::Trying,
                    pb::Status::Committing,
                    pb::Status::Aborting,
                    pb::Status::Running,
                    pb::Status::Compensating,
                    pb::Status::Prepared,
                ]
                .into_iter()
                .map(|s| s as i32)
                .collect();
            }
            let request = client.request(pb::ListRequest {
                status,
                needs_attention: args.needs_attention,
                older_than_ms: args.older_than.map_or(0, millis),
                participant: args.participant.clone().unwrap_or_default(),
                label: args.label.clone().unwrap_or_default(),
                page_size: args.limit,
                page_token: args.page_token.clone().unwrap_or_default(),
                oldest_first: args.oldest_first,
            });
            let page = client.admin.list(request).await?.into_inner();
            render::list(output, &page)
        }
        Command::Show { gid } => {
            let request = client.request(pb::ShowRequest { gid: gid.clone() });
            let shown = client.admin.show(request).await?.into_inner();
            render::show(output, &shown)
        }
        Command::Retry { gid, note, wait } => {
            let request = client.request(pb::RetryRequest {
                gid: gid.clone(),
                note: note.clone(),
                wait_ms: millis(*wait),
            });
            let done = client.admin.retry(request).await?.into_inner();
            render::change(output, Action::Retry, &done)
        }
        Command::Abort { gid, note, wait } => {
            let request = client.request(pb::ForceAbortRequest {
                gid: gid.clone(),
                note: note.clone(),
                wait_ms: millis(*wait),
            });
            let done = client.admin.force_abort(request).await?.into_inner();
            render::change(output, Action::Abort, &done)
        }
        Command::Resolve { gid, branch, note } => {
            if note.trim().is_empty() {
                return Err(Error::Usage(
                    "--note must say what was fixed by hand".to_owned(),
                ));
            }
            let request = client.request(pb::ResolveBranchRequest {
                gid: gid.clone(),
                branch_id: *branch,
                note: note.clone(),
            });
            let done = client.admin.resolve_branch(request).await?.into_inner();
            render::change(output, Action::Resolve(*branch), &done)
        }
        Command::Pause { gid, note } => {
            let request = client.request(pb::PauseRequest {
                gid: gid.clone(),
                note: note.clone(),
            });
            let done = client.admin.pause(request).await?.into_inner();
            render::change(output, Action::Pause, &done)
        }
        Command::Resume { gid, note } => {
            let request = client.request(pb::ResumeRequest {
                gid: gid.clone(),
                note: note.clone(),
            });
            let done = client.admin.resume(request).await?.into_inner();
            render::change(output, Action::Resume, &done)
        }
        Command::Stats => {
            let request = client.request(pb::StatsRequest {});
            let stats = client.admin.stats(request).await?.into_inner();
            render::stats(output, &stats)
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
