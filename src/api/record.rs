use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The operator's durable record of one certificate it signed, named by its serial,
/// in the CA's namespace (where requesters have no access). It is written before the
/// certificate leaves the operator, marked revoked before the certificate's Secret is
/// deleted, and kept (a finalizer holds it) until the certificate has expired. The CRL
/// lists every revoked record, so revocation never depends on a ToolGrant, its status
/// or its finalizer, all of which a requester may edit.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mandate.dev",
    version = "v1alpha1",
    kind = "CertificateRecord",
    namespaced,
    doc = "Mandate's durable record of one certificate it signed: which grant, task and identity it was for, until when, and whether and why it was revoked. Written by the operator only.",
    shortname = "certrecord",
    category = "mandate",
    printcolumn = r#"{"name":"Grant","type":"string","jsonPath":".spec.grant.name"}"#,
    printcolumn = r#"{"name":"Grant Namespace","type":"string","jsonPath":".spec.grant.namespace"}"#,
    printcolumn = r#"{"name":"Generation","type":"integer","jsonPath":".spec.grant.generation","priority":1}"#,
    printcolumn = r#"{"name":"Revoked","type":"string","jsonPath":".spec.revocation.reason"}"#,
    printcolumn = r#"{"name":"Not After","type":"string","jsonPath":".spec.notAfter"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.serialNumber == oldSelf.serialNumber && self.notAfter == oldSelf.notAfter && self.grant == oldSelf.grant && self.task == oldSelf.task && self.identity == oldSelf.identity").message("a CertificateRecord describes a signed certificate: only spec.revocation may be added"))]
#[x_kube(validation = Rule::new("!has(oldSelf.revocation) || (has(self.revocation) && self.revocation == oldSelf.revocation)").message("a revocation is final: spec.revocation cannot be changed or removed"))]
#[serde(rename_all = "camelCase")]
pub struct CertificateRecordSpec {
    /// The certificate's serial number, lower-case hex (also the object's name).
    #[schemars(length(min = 2, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]+$')").message("serialNumber is lower-case hex"))]
    pub serial_number: String,
    /// When the certificate expires; the record (and any CRL entry for it) is kept until then.
    pub not_after: Time,
    /// The grant the certificate was issued for.
    pub grant: RecordedGrant,
    /// The task the certificate was bound to.
    pub task: RecordedTask,
    /// The AgentIdentity's name, in the grant's namespace.
    #[schemars(length(max = 253))]
    pub identity: String,
    /// Set once, when the certificate is revoked; never changed or removed afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RecordedRevocation>,
}

/// The grant object a certificate was issued for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedGrant {
    /// The grant's namespace.
    #[schemars(length(max = 63))]
    pub namespace: String,
    /// The grant's name.
    #[schemars(length(max = 253))]
    pub name: String,
    /// The grant's UID: a later grant of the same name is another object.
    #[schemars(length(max = 64))]
    pub uid: String,
    /// The grant's `metadata.generation` the certificate carries.
    pub generation: i64,
}

/// The task a certificate was bound to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedTask {
    /// The task's apiVersion.
    #[schemars(length(max = 253))]
    pub api_version: String,
    /// The task's kind.
    #[schemars(length(max = 63))]
    pub kind: String,
    /// The task's name.
    #[schemars(length(max = 253))]
    pub name: String,
    /// The task's UID.
    #[schemars(length(max = 64))]
    pub uid: String,
}

/// Why and when a certificate was revoked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRevocation {
    /// When the revocation was recorded.
    pub time: Time,
    /// Why.
    pub reason: RevocationCause,
}

/// Why a certificate was revoked. Final causes end the grant for good; the others
/// (a scope change, a denial, a lost Secret) only end that certificate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum RevocationCause {
    /// The task completed.
    TaskCompleted,
    /// The task failed.
    TaskFailed,
    /// The task was deleted or replaced.
    TaskDeleted,
    /// The task passed its deadline.
    TaskDeadlineExceeded,
    /// The grant was deleted.
    GrantDeleted,
    /// The grant vanished without its revocation recorded (its finalizer was removed).
    GrantVanished,
    /// The grant reached its maximum lifetime.
    MaxLifetimeReached,
    /// The identity was suspended.
    IdentitySuspended,
    /// The identity was deleted.
    IdentityDeleted,
    /// The grant's scope changed; a new certificate carries the new scope.
    ScopeChanged,
    /// The certificate's Secret was lost; a new certificate replaces it.
    SecretLost,
    /// The grant's current spec is no longer allowed (ceiling, policy, approval).
    Withdrawn,
}

impl RevocationCause {
    /// The CamelCase name, as in conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationCause::TaskCompleted => "TaskCompleted",
            RevocationCause::TaskFailed => "TaskFailed",
            RevocationCause::TaskDeleted => "TaskDeleted",
            RevocationCause::TaskDeadlineExceeded => "TaskDeadlineExceeded",
            RevocationCause::GrantDeleted => "GrantDeleted",
            RevocationCause::GrantVanished => "GrantVanished",
            RevocationCause::MaxLifetimeReached => "MaxLifetimeReached",
            RevocationCause::IdentitySuspended => "IdentitySuspended",
            RevocationCause::IdentityDeleted => "IdentityDeleted",
            RevocationCause::ScopeChanged => "ScopeChanged",
            RevocationCause::SecretLost => "SecretLost",
            RevocationCause::Withdrawn => "Withdrawn",
        }
    }

    /// Whether this cause ends the grant for good (no certificate is issued again).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            RevocationCause::ScopeChanged | RevocationCause::SecretLost | RevocationCause::Withdrawn
        )
    }
}
