use clap::Parser;
use mandate::cli::{Cli, Command};

/// See `mandate::allocator` for why mimalloc, and how it is tuned.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mandate::allocator::tune();
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
            #[cfg(feature = "failpoints")]
            let _failpoints = mandate::failpoint::setup();
            match mandate::runtime::run(*args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "operator stopped");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
