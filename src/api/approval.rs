use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, core::Duration};
use serde::{Deserialize, Serialize};

/// A human's decision on one generation of one ToolGrant that a policy held for
/// approval. Creating one needs RBAC on `toolgrantapprovals`, separately from creating
/// grants. Mandate's admission webhook records who created it; the whole spec is
/// immutable.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mandate.dev",
    version = "v1alpha1",
    kind = "ToolGrantApproval",
    namespaced,
    doc = "A human's approval or denial of exactly one generation of one ToolGrant object (by UID) held for approval by policy.",
    status = "ToolGrantApprovalStatus",
    shortname = "approval",
    category = "mandate",
    printcolumn = r#"{"name":"Grant","type":"string","jsonPath":".spec.grantName"}"#,
    printcolumn = r#"{"name":"Grant UID","type":"string","jsonPath":".spec.grantUID","priority":1}"#,
    printcolumn = r#"{"name":"Generation","type":"integer","jsonPath":".spec.grantGeneration"}"#,
    printcolumn = r#"{"name":"Decision","type":"string","jsonPath":".spec.decision"}"#,
    printcolumn = r#"{"name":"Approver","type":"string","jsonPath":".spec.approver.username"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a ToolGrantApproval's spec is immutable: create a new one"))]
#[serde(rename_all = "camelCase")]
pub struct ToolGrantApprovalSpec {
    /// The ToolGrant, in this namespace, this decision is about.
    #[schemars(length(min = 1, max = 253))]
    pub grant_name: String,

    /// The `metadata.uid` of that ToolGrant (`kubectl get toolgrant NAME -o
    /// jsonpath='{.metadata.uid}'`). A grant deleted and created again under the same
    /// name is another object, and this decision does not count for it.
    #[serde(rename = "grantUID")]
    #[schemars(length(min = 1, max = 64))]
    pub grant_uid: String,

    /// The exact `metadata.generation` of the grant being decided (shown by `kubectl get
    /// toolgrant -o wide` and in the grant's decision). Any later change to the grant's
    /// spec voids the decision.
    #[schemars(range(min = 1))]
    pub grant_generation: i64,

    /// `Approve` or `Deny`. A denial is final for that generation.
    pub decision: ApprovalDecision,

    /// Why, in plain words; kept for audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,

    /// How long an approval stays usable if the grant has not been issued under it,
    /// counted from its creation, as a Go duration. Defaults to `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("validFor must be a duration between 1m and 168h, such as 30m or 1h"))]
    #[schemars(length(max = 32))]
    pub valid_for: Option<Duration>,

    /// Who created this decision, recorded by Mandate's admission webhook from the
    /// request's authenticated user. Setting it yourself is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<UserInfo>,
}

/// Approve or deny.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ApprovalDecision {
    /// Lift the approval requirement for this generation.
    Approve,
    /// Refuse this generation for good.
    Deny,
}

/// An authenticated Kubernetes user, as the API server told the admission webhook.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    /// The user's name, for example `alice@example.com` or
    /// `system:serviceaccount:ci:deployer`.
    #[schemars(length(max = 512))]
    pub username: String,
    /// The user's UID, when the authenticator provides one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 512))]
    pub uid: String,
    /// The user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 512)))]
    pub groups: Vec<String>,
}

/// What became of an approval.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolGrantApprovalStatus {
    /// `Pending` (not used yet), `Used` (the grant was issued under it), `Void` (the
    /// grant changed after it), `Refused` (it cannot count, for example self-approval
    /// where a second person is required), `Expired` (unused within `validFor`), or
    /// `Denied` (a denial, applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why it is in that state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the state was last set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Conditions, for tools that read them.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
