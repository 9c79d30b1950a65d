use clap::Parser;
use mandate::cli::{Cli, Command};

/// Policy decisions and the watch caches allocate many small, short-lived objects;
/// mimalloc serves them faster than glibc's allocator and returns freed pages
/// instead of keeping per-thread arenas (docs/benchmarks.md has both numbers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match mandate::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("failed to render CRDs: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            mandate::telemetry::init(args.log_format);
            match mandate::controller::run(*args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "operator stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
