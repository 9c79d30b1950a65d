//! Compact types the Pod, Job and grant-Secret watches decode into.
//!
//! A `k8s_openapi` Pod is 2.4 KiB before any of its strings, and a grant Secret's
//! certificate PEM another kilobyte; at 10,000 grants those alone were most of the
//! operator's memory. These types deserialize only what Mandate reads (serde skips
//! the rest without allocating it) and keep what the adapters concluded, not the text
//! they concluded it from: a task's [`TaskState`], a certificate's [`CertFacts`].
//!
//! The grant Secret type has no field for the private key or the CA bundle: they are
//! skipped by the decoder, so a key is never even base64-decoded on a read path.

use std::{borrow::Cow, marker::PhantomData};

use k8s_openapi::{
    ByteString, NamespaceResourceScope,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{Resource, api::DynamicObject};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    api::names::{ANN_RENEW_AT, ANN_SERIAL, LABEL_GRANT},
    decide::task::{FinishedConditions, TaskKind, TaskState, observe},
    pki,
    state::named::Named,
};

/// Which built-in task kind a [`TaskObject`] is.
pub trait BuiltinTask: Clone + std::fmt::Debug + Send + Sync + 'static {
    const KIND: &'static str;
    const GROUP: &'static str;
    const VERSION: &'static str;
    const PLURAL: &'static str;
    const TASK: TaskKind;
}

#[derive(Clone, Debug)]
pub struct PodKind;
impl BuiltinTask for PodKind {
    const KIND: &'static str = "Pod";
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "pods";
    const TASK: TaskKind = TaskKind::Pod;
}

#[derive(Clone, Debug)]
pub struct JobKind;
impl BuiltinTask for JobKind {
    const KIND: &'static str = "Job";
    const GROUP: &'static str = "batch";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "jobs";
    const TASK: TaskKind = TaskKind::Job;
}

/// A Pod or Job as the caches keep it: its identity and what the task adapter read.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "RawTask", bound = "")]
pub struct TaskObject<K: BuiltinTask> {
    pub metadata: ObjectMeta,
    pub state: TaskState,
    kind: PhantomData<K>,
}

pub type PodTask = TaskObject<PodKind>;
pub type JobTask = TaskObject<JobKind>;

/// The fields of a Pod or Job the adapter reads; everything else is skipped unread.
#[derive(Deserialize)]
struct RawTask {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: RawSpec,
    #[serde(default)]
    status: RawStatus,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    active_deadline_seconds: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    phase: Option<String>,
    start_time: Option<String>,
    conditions: Option<Value>,
}

impl<K: BuiltinTask> From<RawTask> for TaskObject<K> {
    fn from(raw: RawTask) -> Self {
        // The adapter reads the object's JSON shape; rebuilt from the few fields kept,
        // so both cached and freshly read tasks go through the one reading of a task.
        let mut status = Map::new();
        if let Some(p) = raw.status.phase {
            status.insert("phase".into(), Value::String(p));
        }
        if let Some(t) = raw.status.start_time {
            status.insert("startTime".into(), Value::String(t));
        }
        if let Some(c) = raw.status.conditions {
            status.insert("conditions".into(), c);
        }
        let mut spec = Map::new();
        if let Some(s) = raw.spec.active_deadline_seconds {
            spec.insert("activeDeadlineSeconds".into(), s.into());
        }
        let metadata = ObjectMeta {
            name: raw.metadata.name,
            namespace: raw.metadata.namespace,
            uid: raw.metadata.uid,
            resource_version: raw.metadata.resource_version,
            deletion_timestamp: raw.metadata.deletion_timestamp,
            ..Default::default()
        };
        let obj = DynamicObject {
            types: None,
            metadata: metadata.clone(),
            data: serde_json::json!({ "spec": spec, "status": status }),
        };
        // Built-in kinds never read the configured condition types.
        let state = observe(K::TASK, &obj, &FinishedConditions::default());
        TaskObject {
            metadata,
            state,
            kind: PhantomData,
        }
    }
}

impl<K: BuiltinTask> Resource for TaskObject<K> {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What a grant Secret's certificate says, as far as the grant controller reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    pub serial_hex: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub sha256_fingerprint: String,
    pub spiffe_id: String,
    pub grant_generation: i64,
    pub task_uid: String,
}

/// A grant Secret as the caches (and the grant controller's reads) keep it: its
/// identity, owner, the one label and two annotations Mandate reads, and its
/// certificate's facts (`None`: no `tls.crt`, or one that is no certificate of ours
/// with a scope).
///
/// The label and annotations are fields, not maps in `metadata`: a `BTreeMap` holds
/// its entries in a node of eleven, about 540 bytes however few it holds, so the two
/// maps cost a kilobyte per Secret (10 MiB at 10,000 grants) to hold three strings.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "RawSecret")]
pub struct GrantSecret {
    /// Name, namespace, UID, resource version and the controlling owner only.
    pub metadata: ObjectMeta,
    /// The `mandate.dev/grant` label: the grant (by name) the Secret was written for.
    pub grant_label: Option<String>,
    /// The serial annotation: the certificate the Secret holds, as Mandate wrote it.
    pub serial: Option<String>,
    /// The renew-at annotation, as written (RFC 3339).
    pub renew_at: Option<String>,
    pub cert: Option<CertFacts>,
}

#[derive(Deserialize)]
struct RawSecret {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    data: RawSecretData,
}

/// Only the certificate; the key and the bundle are skipped without being decoded.
#[derive(Default, Deserialize)]
struct RawSecretData {
    #[serde(rename = "tls.crt")]
    tls_crt: Option<ByteString>,
}

impl From<RawSecret> for GrantSecret {
    fn from(raw: RawSecret) -> Self {
        let mut m = raw.metadata;
        let mut annotation = |key: &str| m.annotations.as_mut().and_then(|a| a.remove(key));
        let (serial, renew_at) = (annotation(ANN_SERIAL), annotation(ANN_RENEW_AT));
        let grant_label = m.labels.as_mut().and_then(|l| l.remove(LABEL_GRANT));
        let owners: Vec<_> = m
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .filter(|o| o.controller == Some(true))
            .collect();
        let metadata = ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            owner_references: (!owners.is_empty()).then_some(owners),
            ..Default::default()
        };
        let cert = raw
            .data
            .tls_crt
            .and_then(|b| pki::inspect_leaf_pem(&String::from_utf8_lossy(&b.0)).ok())
            .and_then(|info| {
                let scope = info.scope?;
                Some(CertFacts {
                    serial_hex: info.serial_hex,
                    not_before: pki::timestamp_of(info.not_before),
                    not_after: pki::timestamp_of(info.not_after),
                    sha256_fingerprint: info.sha256_fingerprint,
                    spiffe_id: info.uri_sans.into_iter().next().unwrap_or_default(),
                    grant_generation: scope.grant_generation,
                    task_uid: scope.task_uid,
                })
            });
        GrantSecret {
            metadata,
            grant_label,
            serial,
            renew_at,
            cert,
        }
    }
}

/// What the Secret cache keeps of a grant Secret: [`GrantSecret`] without its name and
/// namespace (the cache's keys) and without an `ObjectMeta` (see `state::named`).
#[derive(Clone, Debug)]
pub struct CachedSecret {
    uid: Option<String>,
    resource_version: Option<String>,
    controller: Option<OwnerReference>,
    grant_label: Option<String>,
    serial: Option<String>,
    renew_at: Option<String>,
    cert: Option<CertFacts>,
}

impl CachedSecret {
    pub fn of(s: &GrantSecret) -> CachedSecret {
        CachedSecret {
            uid: s.metadata.uid.clone(),
            resource_version: s.metadata.resource_version.clone(),
            controller: s.metadata.owner_references.as_ref().and_then(|o| o.first().cloned()),
            grant_label: s.grant_label.clone(),
            serial: s.serial.clone(),
            renew_at: s.renew_at.clone(),
            cert: s.cert.clone(),
        }
    }

    /// The Secret as read, again.
    pub fn secret(&self, namespace: &str, name: &str) -> GrantSecret {
        GrantSecret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                uid: self.uid.clone(),
                resource_version: self.resource_version.clone(),
                owner_references: self.controller.clone().map(|o| vec![o]),
                ..Default::default()
            },
            grant_label: self.grant_label.clone(),
            serial: self.serial.clone(),
            renew_at: self.renew_at.clone(),
            cert: self.cert.clone(),
        }
    }

    pub fn serial(&self) -> Option<&str> {
        self.serial.as_deref()
    }
}

/// Grant Secrets by namespace and name.
#[derive(Clone, Default)]
pub struct SecretStore(Named<CachedSecret>);

impl SecretStore {
    pub fn get(&self, namespace: &str, name: &str) -> Option<GrantSecret> {
        self.0.get(namespace, name).map(|c| c.secret(namespace, name))
    }

    /// The serials the cached Secrets hold.
    pub fn serials(&self) -> std::collections::HashSet<String> {
        self.0.collect(|s| s.serial().map(str::to_string))
    }

    pub fn on_event(&self, event: &kube::runtime::watcher::Event<GrantSecret>) {
        self.0.on_event(event, CachedSecret::of);
    }
}

impl Resource for GrantSecret {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Secret".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "secrets".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::task::Outcome;

    #[test]
    fn secret_cache_never_holds_the_private_key() {
        let key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let b64 = |s: &str| serde_json::to_value(ByteString(s.as_bytes().to_vec())).unwrap();
        let s: GrantSecret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "g-tls", "namespace": "ns", "uid": "s1", "resourceVersion": "7",
                "labels": {(LABEL_GRANT): "g", "other": "x"},
                "annotations": {(ANN_SERIAL): "ab", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "ownerReferences": [
                    {"apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant", "name": "g", "uid": "g1", "controller": true},
                    {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "p1", "controller": false}
                ],
                "managedFields": [{"manager": "x"}]
            },
            "data": {"tls.crt": b64("not a certificate"), "tls.key": b64(key), "ca.crt": b64("bundle")}
        }))
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("PRIVATE") && !shown.contains("c2VjcmV0"), "{shown}");
        assert_eq!(s.cert, None, "an unreadable tls.crt is no certificate");
        assert_eq!(s.grant_label.as_deref(), Some("g"));
        assert_eq!(s.serial.as_deref(), Some("ab"));
        assert_eq!(s.renew_at, None);
        assert!(
            s.metadata.labels.is_none() && s.metadata.annotations.is_none(),
            "no maps are kept: {:?}",
            s.metadata
        );
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap().len(),
            1,
            "the controller only"
        );
        assert_eq!(s.metadata.resource_version.as_deref(), Some("7"));
        assert!(s.metadata.managed_fields.is_none());
        // The cache gives back what was read.
        let store = SecretStore::default();
        store.on_event(&kube::runtime::watcher::Event::Apply(s.clone()));
        let again = store.get("ns", "g-tls").expect("cached by namespace and name");
        assert_eq!(format!("{again:?}"), format!("{s:?}"));
        assert_eq!(store.serials(), std::collections::HashSet::from(["ab".to_string()]));
    }

    #[test]
    fn pod_cache_keeps_what_the_task_adapter_reads() {
        let p: PodTask = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "managedFields": [{"manager": "x"}],
                         "labels": {"a": "b"}},
            "spec": {"activeDeadlineSeconds": 60, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Failed", "startTime": "2026-01-01T00:00:00Z", "podIP": "10.0.0.1"}
        }))
        .unwrap();
        assert_eq!(p.state.uid, "u");
        assert_eq!(p.state.deadline, Some("2026-01-01T00:01:00Z".parse().unwrap()));
        assert_eq!(p.state.finished.as_ref().map(|f| f.0), Some(Outcome::Failed));
        assert!(p.metadata.labels.is_none() && p.metadata.managed_fields.is_none());
        assert_eq!(p.metadata.name.as_deref(), Some("p"));
    }

    #[test]
    fn job_cache_reads_conditions_and_deletion() {
        let j: JobTask = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j", "uid": "u", "deletionTimestamp": "2026-01-01T00:05:00Z"},
            "status": {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:04:00Z"}]}
        }))
        .unwrap();
        assert_eq!(j.state.finished.as_ref().map(|f| f.0), Some(Outcome::Succeeded));
        assert_eq!(j.state.finished_at, Some("2026-01-01T00:04:00Z".parse().unwrap()));
        let deleting: JobTask = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j", "uid": "u", "deletionTimestamp": "2026-01-01T00:05:00Z"}
        }))
        .unwrap();
        assert_eq!(deleting.state.finished.as_ref().map(|f| f.0), Some(Outcome::Deleting));
    }
}
