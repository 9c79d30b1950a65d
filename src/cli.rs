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
    Run(Box<RunArgs>),
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

    /// Namespace of the CA Secret and of the published CRL (`mandate-crl`): the
    /// operator's own namespace.
    #[arg(long, env = "MANDATE_CA_SECRET_NAMESPACE", default_value = "mandate-system")]
    pub ca_secret_namespace: String,

    /// Name of the CA Secret (`tls.crt`, `tls.key`). Created with a self-signed root on
    /// first start when absent; a user-supplied CA is validated before use.
    #[arg(long, env = "MANDATE_CA_SECRET_NAME", default_value = "mandate-ca")]
    pub ca_secret_name: String,

    /// Validity of a self-signed root generated on first start.
    #[arg(long, env = "MANDATE_CA_VALIDITY", default_value = "87600h")]
    pub ca_validity: kube::core::Duration,

    /// Operator-wide ceiling on any certificate's lifetime, applied over every identity's maxTTL.
    #[arg(long, env = "MANDATE_MAX_TTL", default_value = "24h")]
    pub max_ttl: kube::core::Duration,

    /// How long a published CRL stays valid (its nextUpdate); it is re-signed at half this.
    #[arg(long, env = "MANDATE_CRL_VALIDITY", default_value = "1h")]
    pub crl_validity: kube::core::Duration,

    /// Condition types that mark a task of any other kind than Job or Pod as finished
    /// when True; a type containing "Fail" counts as a failure.
    #[arg(
        long,
        env = "MANDATE_TASK_FINISHED_CONDITIONS",
        value_delimiter = ',',
        default_value = "Complete,Succeeded,Failed"
    )]
    pub task_finished_conditions: Vec<String>,

    /// Address the admission webhook listens on (HTTPS).
    #[arg(long, env = "MANDATE_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub webhook_listen: std::net::SocketAddr,

    /// URL the API server calls the webhook at, for a control plane outside the
    /// cluster (for example `https://127.0.0.1:9443`). Its host goes into the serving
    /// certificate. Exclusive with `--webhook-service`.
    #[arg(long, env = "MANDATE_WEBHOOK_URL", conflicts_with = "webhook_service")]
    pub webhook_url: Option<String>,

    /// Service the API server calls the webhook through, as `namespace/name:port`
    /// (for example `mandate-system/mandate-webhook:443`). Its DNS names go into the
    /// serving certificate.
    #[arg(long, env = "MANDATE_WEBHOOK_SERVICE")]
    pub webhook_service: Option<String>,

    /// Name of the Mutating- and ValidatingWebhookConfiguration the operator applies
    /// (when `--webhook-url` or `--webhook-service` is given).
    #[arg(long, env = "MANDATE_WEBHOOK_CONFIGURATION", default_value = "mandate")]
    pub webhook_configuration_name: String,

    /// How creators are recorded on admission: `policy` (a MutatingAdmissionPolicy,
    /// CEL inside the API server: Kubernetes 1.36 and later), `webhook` (a call to this
    /// operator), or `auto` (the policy when the API server serves it).
    #[arg(long, env = "MANDATE_ADMISSION_MUTATION", value_enum, default_value_t = MutationMode::Auto)]
    pub admission_mutation: MutationMode,

    /// Lifetime of the webhook's serving certificate; it is rotated at two thirds.
    #[arg(long, env = "MANDATE_WEBHOOK_CERT_VALIDITY", default_value = "24h")]
    pub webhook_cert_validity: kube::core::Duration,

    /// How many grants are reconciled at once. Each reconcile in flight holds API
    /// connections and buffers; past the point where the API server is the bottleneck,
    /// more only costs memory.
    #[arg(long, env = "MANDATE_GRANT_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub grant_concurrency: u16,

    /// Largest CRL (PEM, bytes) kept inline in the `mandate-crl` ConfigMap, and the size
    /// of each part (DER) of a larger one, which is split over immutable ConfigMaps
    /// named by their content (docs/design.md, "The CRL"). The API server refuses
    /// ConfigMaps over 1 MiB.
    #[arg(long, env = "MANDATE_CRL_PART_BYTES", default_value_t = crate::state::crl::DEFAULT_PART_BYTES,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1024..=900 * 1024), |v| v as usize))]
    pub crl_part_bytes: usize,

    /// Address of the decision service (HTTPS; `POST /v1/authorize`, Envoy ext_authz
    /// gRPC and HTTP, `/v1/audit`, `/v1/trust-bundle`, `/v1/crl`). Served by every replica.
    #[arg(long, env = "MANDATE_DECISION_LISTEN", default_value = "0.0.0.0:8443")]
    pub decision_listen: std::net::SocketAddr,

    /// Threads serving the decision service, each with the connections it was handed
    /// (0: one per core the process may use).
    #[arg(long, env = "MANDATE_DECISION_THREADS", default_value_t = 0)]
    pub decision_threads: u16,

    /// DNS names in the decision service's serving certificate (what its clients dial).
    #[arg(
        long,
        env = "MANDATE_DECISION_DNS_NAMES",
        value_delimiter = ',',
        default_value = "localhost"
    )]
    pub decision_dns_names: Vec<String>,

    /// IP addresses in the decision service's serving certificate.
    #[arg(
        long,
        env = "MANDATE_DECISION_IP_ADDRESSES",
        value_delimiter = ',',
        default_value = "127.0.0.1"
    )]
    pub decision_ip_addresses: Vec<std::net::IpAddr>,

    /// Lifetime of the decision service's serving certificate; rotated at two thirds.
    #[arg(long, env = "MANDATE_DECISION_CERT_VALIDITY", default_value = "24h")]
    pub decision_cert_validity: kube::core::Duration,

    /// SPIFFE IDs of trusted proxies (gateways such as Envoy) that authenticate with a
    /// client certificate from Mandate's CA. Only they may name the agent a decision is
    /// about, read the audit trail and report tool calls.
    #[arg(long, env = "MANDATE_DECISION_PROXY_SPIFFE_IDS", value_delimiter = ',')]
    pub decision_proxy_spiffe_ids: Vec<String>,

    /// ServiceAccounts (`namespace/name`) of trusted proxies that authenticate with a
    /// token (checked with a TokenReview).
    #[arg(long, env = "MANDATE_DECISION_PROXY_SERVICE_ACCOUNTS", value_delimiter = ',')]
    pub decision_proxy_service_accounts: Vec<String>,

    /// The audience a caller's ServiceAccount token must be issued for (empty: the API
    /// server's own).
    #[arg(long, env = "MANDATE_DECISION_TOKEN_AUDIENCE", default_value = "mandate.dev")]
    pub decision_token_audience: String,

    /// How long a TokenReview's answer is reused.
    #[arg(long, env = "MANDATE_DECISION_TOKEN_CACHE", default_value = "30s")]
    pub decision_token_cache: kube::core::Duration,

    /// The longest a caller may cache an allow (`validUntil`): how stale an answer may
    /// be when a revocation lands. Never past the certificate or the task's deadline.
    #[arg(long, env = "MANDATE_DECISION_MAX_CACHE", default_value = "5s")]
    pub decision_max_cache: kube::core::Duration,

    /// Events the in-memory audit buffer (`GET /v1/audit`) keeps at most.
    #[arg(long, env = "MANDATE_AUDIT_BUFFER_EVENTS", default_value_t = 50_000)]
    pub audit_buffer_events: usize,

    /// Bytes (of JSON) the in-memory audit buffer keeps at most.
    #[arg(long, env = "MANDATE_AUDIT_BUFFER_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub audit_buffer_bytes: usize,

    /// Address of the plain-HTTP `/metrics` and `/healthz` endpoints, and of the
    /// published CRL (`/v1/crl`, DER; `/v1/crl.pem`).
    #[arg(long, env = "MANDATE_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: std::net::SocketAddr,

    /// Log format on stderr.
    #[arg(long, env = "MANDATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// `--decision-threads`, with 0 read as one per core the process may use (which
    /// honours a container's CPU limit).
    pub fn decision_threads(&self) -> usize {
        match self.decision_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => usize::from(n),
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How the creator of a grant or approval is recorded (`--admission-mutation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MutationMode {
    /// The MutatingAdmissionPolicy when `admissionregistration.k8s.io/v1` serves it,
    /// the webhook otherwise.
    Auto,
    /// A MutatingAdmissionPolicy.
    Policy,
    /// The mutating webhook.
    Webhook,
}
