//! Every flag of the `mandate` binary, in one place.

use clap::{Parser, Subcommand, ValueEnum};

/// Mandate: task-scoped identities for AI agents.
#[derive(Parser, Debug)]
#[command(name = "mandate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against the cluster of the usual kubeconfig resolution
    /// (`KUBECONFIG`, `~/.kube/config`, or in-cluster).
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// SPIFFE trust domain of every identity this operator issues for.
    #[arg(long, env = "MANDATE_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Watch only this namespace (default: all namespaces). The CA and CRL still live
    /// in their own namespace (see `--ca-secret-namespace`).
    #[arg(long, env = "MANDATE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Log format on stderr.
    #[arg(long, env = "MANDATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
