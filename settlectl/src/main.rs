//! `settlectl`: the operator's command line for Settle. It talks to the coordinator's
//! `settle.v1.Admin` service over gRPC and prints human tables (ages by the coordinator's
//! clock) or one JSON document per command.
//!
//! Exit codes are for scripts: 0 ok, 1 error (refused, unreachable, unauthenticated),
//! 2 usage (bad flags or arguments, also when the coordinator says INVALID_ARGUMENT),
//! 3 not found. The rules for what an operator may do are the coordinator's, not this tool's.
//!
//! This file only parses the command line, runs the command and turns the outcome into an
//! exit code. The pieces, one concept each: [`cli`] the arguments, [`error`] what can go
//! wrong and its exit code, [`client`] the Admin connection, [`command`] one subcommand from
//! request to output, [`explain`] what a transaction's state means, [`view`] the JSON shapes
//! and names, [`time`] ages and dates, [`render`] tables and JSON on stdout.

mod cli;
mod client;
mod command;
mod error;
mod explain;
mod render;
mod time;
mod view;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match command::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("settlectl: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
