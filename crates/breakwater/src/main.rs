//! `breakwater`: see `breakwater --help`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = breakwater::cli::Cli::parse();
    match breakwater::cli::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("breakwater: {e:#}");
            ExitCode::FAILURE
        }
    }
}
