use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Cedar policies that decide which ToolGrants may be issued (action `issue`) and,
/// at request time, which tool calls may be made (action `invoke`). Deny by default:
/// a grant is issued only when some Enforce policy permits it and none forbids it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mandate.dev",
    version = "v1alpha1",
    kind = "AgentPolicy",
    doc = "Cedar policies deciding which ToolGrants may be issued and which tool calls may be made; deny by default.",
    status = "AgentPolicyStatus",
    shortname = "apol",
    category = "mandate",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Policies","type":"integer","jsonPath":".status.policyCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicySpec {
    /// `Enforce` (the default): the policies decide. `Audit`: the policies are
    /// evaluated and would-be denials are reported (in the grant's decision, this
    /// policy's status, Events and metrics) without denying anything; a dry run
    /// before enforcement.
    #[serde(default)]
    pub mode: PolicyMode,

    /// Namespaces whose grants these policies apply to, by label (every namespace
    /// carries `kubernetes.io/metadata.name`). Absent or empty selects every namespace.
    /// An invalid Enforce AgentPolicy holds issuance in exactly the namespaces it selects
    /// (an invalid Audit one only reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Cedar policy text: one or more `permit` or `forbid` policies, validated against
    /// Mandate's Cedar schema (see docs/policy.md). Give each policy an `@id("...")`
    /// annotation so status, decisions and Events name it; otherwise it is named by
    /// position (`policy0`, `policy1`, ...). A `forbid` annotated `@approval("required")`
    /// does not deny outright: the grant waits for a ToolGrantApproval instead.
    #[schemars(length(min = 1, max = 262144))]
    pub policies: String,
}

/// Whether an AgentPolicy decides or only reports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum PolicyMode {
    /// The policies decide.
    #[default]
    Enforce,
    /// The policies are evaluated and reported, never deny.
    Audit,
}

/// What the operator found in an AgentPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicyStatus {
    /// Number of policies parsed from `spec.policies`.
    #[serde(default)]
    pub policy_count: i32,

    /// Each policy's id and effect, in source order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub policies: Vec<PolicySummary>,

    /// Parse and validation errors, each with its location in `spec.policies`. While
    /// an Enforce policy has any, no grant in the selected namespaces is issued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub errors: Vec<PolicyError>,

    /// Would-be denials of an Audit policy: how many grant decisions it would have
    /// denied, and the most recent ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSummary>,

    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: true when every policy parsed and validated against the schema.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One policy of an AgentPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    /// The policy's id: its `@id` annotation, or `policy<N>` by position.
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: String,
    /// True for a `forbid` that an approval can lift (`@approval("required")`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_approval: bool,
}

/// A parse or validation error in `spec.policies`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyError {
    /// The policy the error is in, when it could be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// 1-based line in `spec.policies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// 1-based column in `spec.policies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// What is wrong, from the Cedar parser or validator.
    pub message: String,
}

/// Would-be denials of an Audit policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSummary {
    /// Grant decisions this policy would have denied since the operator started.
    #[serde(default)]
    pub would_deny_count: i64,
    /// The most recent would-be denials, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub recent: Vec<AuditDenial>,
}

/// One grant decision an Audit policy would have denied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditDenial {
    /// `namespace/name` of the grant.
    pub grant: String,
    /// The grant generation decided.
    pub generation: i64,
    /// The policies that would have denied it.
    #[serde(default)]
    pub policy_ids: Vec<String>,
    /// The decision's id, as in the grant's status and the audit log.
    pub decision_id: String,
    /// When it was decided.
    pub time: Time,
}
