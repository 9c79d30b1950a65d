use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema, core::Duration};
use serde::{Deserialize, Serialize};

use super::ToolScope;

/// An AI agent's identity: who it is (a SPIFFE ID), who answers for it, and the most
/// it may ever be granted. Grants are what actually confer access, one task at a time.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mandate.dev",
    version = "v1alpha1",
    kind = "AgentIdentity",
    namespaced,
    validation = Rule::new("size(self.metadata.name) <= 63").message("AgentIdentity names are at most 63 characters, so the SPIFFE ID stays well-formed"),
    doc = "An AI agent's identity: its SPIFFE ID, its accountable owner, and the ceiling of tools any of its grants may name.",
    status = "AgentIdentityStatus",
    // The name is the last segment of the SPIFFE ID: a DNS-1123 label, nothing else.
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("an AgentIdentity's name is its SPIFFE ID's last path segment: lower-case letters, digits and '-', at most 63 characters (no '.')"),
    shortname = "agentid",
    category = "mandate",
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner"}"#,
    printcolumn = r#"{"name":"SPIFFE ID","type":"string","jsonPath":".status.spiffeID","priority":1}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspended"}"#,
    printcolumn = r#"{"name":"Grants","type":"integer","jsonPath":".status.activeGrants"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentIdentitySpec {
    /// The accountable team or person, for example `team-payments` or
    /// `alice@example.com`. Recorded in every audit record and visible to policy.
    #[schemars(length(min = 1, max = 253))]
    pub owner: String,

    /// The ServiceAccount, in this namespace, that the agent's Pods run as.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("serviceAccountName must be a DNS-1123 subdomain"))]
    pub service_account_name: String,

    /// The ceiling: every tool, action and destination a grant for this identity may
    /// ever name. A grant that asks for more is denied, and the excess is named in its
    /// status. At most 64 tools, each named once.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u.name == t.name))").message("each tool may appear once in the ceiling"))]
    pub tools: Vec<ToolScope>,

    /// Longest lifetime of one certificate issued for this identity, as a Go
    /// duration (`30m`, `1h`). Defaults to `1h`; the operator also applies its own
    /// `--max-ttl`, whichever is shorter.
    #[serde(default = "default_max_ttl", rename = "maxTTL")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('8760h')").message("maxTTL must be a duration between 1m and 8760h, such as 30m or 1h"))]
    #[schemars(length(max = 32))]
    pub max_ttl: Duration,

    /// How long one grant may keep renewing its certificate, counted from its first
    /// issuance, as a Go duration. When it is reached the grant expires, even if the
    /// task still runs. Defaults to `24h`.
    #[serde(default = "default_max_grant_lifetime")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('8760h')").message("maxGrantLifetime must be a duration between 1m and 8760h, such as 8h or 24h"))]
    #[schemars(length(max = 32))]
    pub max_grant_lifetime: Duration,

    /// The kill switch. While true, no certificate is issued for this identity and
    /// every live certificate of its grants is revoked; revoked grants stay revoked
    /// when the switch is turned off again.
    #[serde(default)]
    pub suspended: bool,
}

fn default_max_ttl() -> Duration {
    std::time::Duration::from_secs(3600).into()
}

fn default_max_grant_lifetime() -> Duration {
    std::time::Duration::from_secs(24 * 3600).into()
}

/// What the operator observed of an AgentIdentity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentIdentityStatus {
    /// The identity's SPIFFE ID, `spiffe://<trust-domain>/ns/<namespace>/agent/<name>`,
    /// the single URI SAN of every certificate issued for it.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "spiffeID")]
    pub spiffe_id: Option<String>,

    /// Number of this identity's grants that currently hold a live certificate.
    #[serde(default)]
    pub active_grants: i32,

    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current state: `Ready` says whether grants for this identity can be issued.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
