use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
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

/// What Mandate needs of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordFacts {
    pub serial: String,
    pub not_after: Timestamp,
    pub grant_namespace: String,
    pub grant_name: String,
    pub grant_uid: String,
    pub generation: i64,
    pub task_uid: String,
    /// When and why it was revoked, if it was.
    pub revoked: Option<(Timestamp, RevocationCause)>,
    /// Someone asked the API server to delete the record (its finalizer holds it).
    pub deleting: bool,
}

impl RecordFacts {
    /// A record of grant `g` (UID `g-uid`, namespace `ns`, generation 1, task `t-uid`),
    /// revoked at `revoked` (seconds) as TaskCompleted if given; for tests.
    #[cfg(test)]
    pub fn sample(serial: &str, not_after: i64, revoked: Option<i64>) -> RecordFacts {
        RecordFacts {
            serial: serial.into(),
            not_after: Timestamp::from_second(not_after).unwrap(),
            grant_namespace: "ns".into(),
            grant_name: "g".into(),
            grant_uid: "g-uid".into(),
            generation: 1,
            task_uid: "t-uid".into(),
            revoked: revoked.map(|t| (Timestamp::from_second(t).unwrap(), RevocationCause::TaskCompleted)),
            deleting: false,
        }
    }

    pub fn of(r: &CertificateRecord) -> RecordFacts {
        RecordFacts {
            serial: r.spec.serial_number.clone(),
            not_after: r.spec.not_after.0,
            grant_namespace: r.spec.grant.namespace.clone(),
            grant_name: r.spec.grant.name.clone(),
            grant_uid: r.spec.grant.uid.clone(),
            generation: r.spec.grant.generation,
            task_uid: r.spec.task.uid.clone(),
            revoked: r.spec.revocation.as_ref().map(|v| (v.time.0, v.reason)),
            deleting: r.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Valid and not revoked at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked.is_none() && self.not_after > now
    }
}
