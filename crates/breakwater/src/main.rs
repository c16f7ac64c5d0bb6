//! `breakwater`: see `breakwater --help`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: malloc and free were a sixth of `up`'s CPU under webhook load with glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
