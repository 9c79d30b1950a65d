use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, core::Duration};
use serde::{Deserialize, Serialize};

use super::{Sensitivity, ToolScope, UserInfo};

/// Named tools, actions and destinations for one identity, for one task, for a bounded
/// time. The operator issues a short-lived certificate for it into a Secret, renews it
/// while the task runs, and revokes it the moment the task ends.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mandate.dev",
    version = "v1alpha1",
    kind = "ToolGrant",
    namespaced,
    doc = "Named tools, actions and destinations for one AgentIdentity, bound to one task and a bounded time; the operator issues, renews and revokes a short-lived certificate for it.",
    status = "ToolGrantStatus",
    // The name is a label value on the grant's Secret and CertificateRecords.
    validation = Rule::new("self.metadata.name.size() <= 63").message("a ToolGrant's name is used as a label value: at most 63 characters"),
    shortname = "grant",
    category = "mandate",
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".spec.identityRef.name"}"#,
    printcolumn = r#"{"name":"Task","type":"string","jsonPath":".spec.taskRef.name"}"#,
    printcolumn = r#"{"name":"Task Kind","type":"string","jsonPath":".spec.taskRef.kind","priority":1}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.certificate.notAfter"}"#,
    printcolumn = r#"{"name":"Serial","type":"string","jsonPath":".status.certificate.serialNumber","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.requester) == has(oldSelf.requester) && (!has(self.requester) || self.requester == oldSelf.requester)").message("spec.requester is recorded by Mandate at creation and cannot be set or changed"))]
#[serde(rename_all = "camelCase")]
pub struct ToolGrantSpec {
    /// The AgentIdentity, in this namespace, the grant is for. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("identityRef is immutable: create a new grant"))]
    pub identity_ref: IdentityRef,

    /// The task the grant lives and dies with, in this namespace. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("taskRef is immutable: create a new grant"))]
    pub task_ref: TaskRef,

    /// Tools, actions and destinations for this task; each must be within the
    /// identity's ceiling. At least one, at most 64, each tool named once.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u.name == t.name))").message("each tool may appear once in a grant"))]
    pub tools: Vec<ToolScope>,

    /// Requested certificate lifetime as a Go duration (`5m`, `1h`). The issued
    /// certificate may be shorter: it never outlives the task's deadline, the
    /// identity's `maxTTL`, the grant's maximum lifetime or the CA. Defaults to the
    /// identity's `maxTTL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('8760h')").message("ttl must be a duration between 1m and 8760h, such as 5m or 1h"))]
    #[schemars(length(max = 32))]
    pub ttl: Option<Duration>,

    /// Name of the `kubernetes.io/tls` Secret to write. Defaults to the grant's name.
    /// A Secret of that name that this grant does not own is never overwritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("secretName must be a DNS-1123 subdomain"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("secretName is immutable: create a new grant"))]
    pub secret_name: Option<String>,

    /// The stated intent of the task, in plain words. Kept for audit and shown to policy.
    #[schemars(length(min = 1, max = 1024))]
    pub purpose: String,

    /// The most sensitive data the task will handle: `public`, `internal` (the
    /// default), `confidential` or `restricted`. Shown to policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sensitivity: Option<Sensitivity>,

    /// Who created the grant, recorded by Mandate's admission webhook from the request's
    /// authenticated user and shown to policy. Setting or changing it is rejected; a
    /// grant without it is never issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<UserInfo>,
}

/// A reference to an AgentIdentity in the grant's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRef {
    /// Name of the AgentIdentity. Cross-namespace references are not supported.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

/// A reference to the task object in the grant's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRef {
    /// API version of the task, for example `batch/v1` or `v1`.
    #[schemars(length(min = 1, max = 253))]
    pub api_version: String,
    /// Kind of the task, for example `Job` or `Pod`. Any other kind works when its
    /// objects report `status.conditions`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// Name of the task object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where a grant is in its life. `Revoked` and `Expired` are final.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum GrantPhase {
    /// Not issued yet: waiting for the identity, the task, or the CA.
    Pending,
    /// Policy permits the grant only with a human's approval of this generation
    /// (a ToolGrantApproval); nothing is issued until then.
    AwaitingApproval,
    /// A live certificate is in the Secret.
    Issued,
    /// The current spec cannot be issued (for example it exceeds the identity's ceiling).
    /// Re-evaluated when the grant or its identity changes.
    Denied,
    /// The certificate was revoked: the task ended, the grant or identity was deleted,
    /// or the identity was suspended.
    Revoked,
    /// The grant reached its maximum lifetime.
    Expired,
}

impl GrantPhase {
    /// Final phases are never left: a new certificate needs a new grant.
    pub fn is_final(self) -> bool {
        matches!(self, GrantPhase::Revoked | GrantPhase::Expired)
    }
}

/// What the readers of the grant cache read of a grant (see `state::grants`): the
/// decision service on every request, and the task, identity and approval scans.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: Option<String>,
    pub generation: i64,
    /// Has a deletion timestamp.
    pub deleting: bool,
    pub phase: Option<GrantPhase>,
    /// `spec.identityRef.name`.
    pub identity: String,
    pub task: TaskRef,
    pub tools: Vec<ToolScope>,
    pub data_sensitivity: Option<Sensitivity>,
}

impl GrantFacts {
    pub fn of(grant: &ToolGrant) -> Self {
        let m = &grant.metadata;
        GrantFacts {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            resource_version: m.resource_version.clone(),
            generation: m.generation.unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
            phase: grant.status.as_ref().and_then(|s| s.phase),
            identity: grant.spec.identity_ref.name.clone(),
            task: grant.spec.task_ref.clone(),
            tools: grant.spec.tools.clone(),
            data_sensitivity: grant.spec.data_sensitivity,
        }
    }
}

/// Which limit decided a certificate's `notAfter`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum LifetimeCap {
    /// The grant's requested `ttl`.
    RequestedTTL,
    /// The identity's `maxTTL`.
    IdentityMaxTTL,
    /// The operator-wide `--max-ttl`.
    OperatorMaxTTL,
    /// The task's deadline (`activeDeadlineSeconds` from `status.startTime`).
    TaskDeadline,
    /// The grant's maximum lifetime (the identity's `maxGrantLifetime`).
    GrantLifetime,
    /// The signing CA's own expiry.
    CAExpiry,
}

/// What the operator observed of a ToolGrant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolGrantStatus {
    /// Where the grant is in its life: Pending, Issued, Denied, Revoked or Expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<GrantPhase>,

    /// The live certificate, or the last one issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,

    /// Why and when the grant was revoked or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationStatus>,

    /// Earlier certificates of this grant, replaced by renewal but not yet expired. They
    /// are revoked together with the current one when the grant ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub superseded: Vec<SupersededCertificate>,

    /// When the grant first had a certificate; its maximum lifetime counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_issued: Option<Time>,

    /// The latest policy decision on this grant: allowed or not, which policies
    /// decided, why, and what they saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionRecord>,

    /// The human approval the current certificate was issued under, when policy
    /// required one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRecord>,

    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current state: `Ready` (a live certificate matches the current spec) and
    /// `Revoked` (the grant's certificates are revoked for good).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Public facts about an issued certificate. Never holds key material.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Serial number, lower-case hex.
    pub serial_number: String,
    /// Start of validity (backdated slightly for clock skew).
    pub not_before: Time,
    /// End of validity.
    pub not_after: Time,
    /// When the operator renews the certificate if the task still runs.
    pub renew_after: Time,
    /// The limit that decided `notAfter`.
    pub lifetime_cap: LifetimeCap,
    /// The Secret holding the certificate and its key.
    pub secret_name: String,
    /// The certificate's single URI SAN.
    #[serde(rename = "spiffeID")]
    pub spiffe_id: String,
    /// SHA-256 fingerprint of the DER certificate, lower-case hex.
    pub sha256_fingerprint: String,
    /// The grant generation whose scope the certificate carries.
    pub grant_generation: i64,
}

/// A certificate replaced by renewal that is still within its validity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupersededCertificate {
    /// Serial number, lower-case hex.
    pub serial_number: String,
    /// End of validity; the entry is dropped after it.
    pub not_after: Time,
}

/// Why and when a grant's certificates were revoked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationStatus {
    /// Machine-readable reason, for example `TaskCompleted`, `TaskFailed`,
    /// `TaskDeleted`, `GrantDeleted`, `IdentitySuspended`, `IdentityDeleted`,
    /// `MaxLifetimeReached`.
    pub reason: String,
    /// Serial numbers put on the certificate revocation list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serial_numbers: Vec<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the revocation was recorded.
    pub time: Time,
}

/// One policy decision on a grant, kept in its status and echoed in an Event and the
/// audit log under the same `decisionId`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    /// Random id correlating this decision across status, Events, logs and metrics.
    pub decision_id: String,
    /// `Allow`, `Deny` or `RequireApproval`.
    pub outcome: String,
    /// The grant generation decided.
    pub generation: i64,
    /// When it was decided.
    pub time: Time,
    /// Ids (`<AgentPolicy>/<policy id>`) of the Enforce policies that decided: the
    /// permits that allowed it, or the forbids that denied it. Empty for a default deny.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub policies: Vec<String>,
    /// Why, in plain words, one line per reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub reasons: Vec<String>,
    /// Ids of Audit policies that would have denied this grant were they enforced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub audit_denials: Vec<String>,
    /// What the policies saw.
    pub inputs: DecisionInputs,
}

/// A summary of a decision's inputs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionInputs {
    /// The requester's username (from `spec.requester`).
    pub requester: String,
    /// The identity's SPIFFE ID.
    #[serde(rename = "agent")]
    pub agent: String,
    /// The identity's owner.
    pub owner: String,
    /// Tools with their actions, as `tool:action,action`.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Every destination asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    /// The highest sensitivity among the request and its tools.
    pub sensitivity: Sensitivity,
    /// The requested ttl in seconds.
    pub ttl_seconds: i64,
    /// The task, as `Kind/name`.
    pub task: String,
    /// The approval that was considered, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// The approval a grant's certificate was issued under.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// Name of the ToolGrantApproval.
    pub name: String,
    /// Who approved.
    pub approver: String,
    /// The grant generation approved.
    pub generation: i64,
    /// When the approval was created.
    pub time: Time,
}
