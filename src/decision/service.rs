//! One decision, whatever protocol asked: establish the subject, look its facts up in
//! the indexes, decide, record.
//!
//! Every lookup is in memory; nothing here calls the API server. Until every watch the
//! decision reads has synced, and while the CA is unusable, every answer is NotReady.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;
use tracing::debug;

use super::{
    caller::Caller,
    subject::{SubjectCache, Trust},
};
use crate::{
    api::AgentIdentity,
    audit::{AuditLog, CallInfo, Event, EventKind, GrantKey, Keys, TaskKey},
    decide::authorize::{self, Call, Facts, Limits, Reason, Subject, Verdict},
    metrics::Metrics,
    pki::CaState,
    policy::PolicyStore,
    state::{ready::Ready, records::RecordIndex, tasks::TaskIndex},
};

/// Who the call is for, as the request names it.
#[derive(Clone, Debug, Default)]
pub struct Named {
    /// The agent's certificate, PEM or URL-encoded PEM.
    pub certificate: Option<String>,
    /// SPIFFE ID and serial, when a trusted proxy terminated TLS and sends only these.
    pub asserted: Option<(String, String)>,
    /// Identity headers or fields that only a proxy may send were present.
    pub identity_claimed: bool,
}

/// The answer, with what identifies it.
#[derive(Clone, Debug)]
pub struct Answer {
    pub decision_id: String,
    pub verdict: Verdict,
    pub serial: String,
}

/// The watch caches a decision reads, and whether each has synced.
#[derive(Clone)]
pub struct Indexes {
    pub records: RecordIndex,
    pub grants: crate::state::grants::GrantCache,
    pub identities: Store<AgentIdentity>,
    pub tasks: TaskIndex,
    pub policies: watch::Receiver<Option<Arc<PolicyStore>>>,
    pub ca: watch::Receiver<CaState>,
    /// One per watch: records, grants, identities, Jobs, Pods.
    pub ready: Vec<(&'static str, Ready)>,
}

/// The decision service's state.
pub struct Service {
    pub indexes: Indexes,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    subjects: SubjectCache,
    trust: RwLock<(usize, Arc<Trust>)>,
    epoch: AtomicUsize,
}

fn decision_id() -> String {
    let bytes: [u8; 16] = rand::random();
    crate::pki::hex_lower(&bytes)
}

impl Service {
    pub fn new(indexes: Indexes, audit: AuditLog, metrics: Arc<Metrics>, limits: Limits) -> Self {
        Service {
            indexes,
            audit,
            metrics,
            limits,
            subjects: SubjectCache::new(65_536),
            trust: RwLock::new((usize::MAX, Arc::new(Trust::default()))),
            epoch: AtomicUsize::new(0),
        }
    }

    /// What has not synced yet: watches, the policy store, the CA (none when ready).
    fn pending(&self) -> impl Iterator<Item = &'static str> + '_ {
        let watches = self
            .indexes
            .ready
            .iter()
            .filter(|(_, r)| !r.is_ready())
            .map(|(n, _)| *n);
        let policies = self.indexes.policies.borrow().is_none().then_some("policies");
        let ca = (!matches!(&*self.indexes.ca.borrow(), CaState::Ready(_))).then_some("ca");
        watches.chain(policies).chain(ca)
    }

    /// The watches that have not synced yet (empty when ready).
    pub fn unsynced(&self) -> Vec<&'static str> {
        self.pending().collect()
    }

    /// The trust bundle (and its generation), rebuilt when the CA changed.
    pub fn trust(&self) -> Option<(usize, Arc<Trust>)> {
        let ca = match &*self.indexes.ca.borrow() {
            CaState::Ready(ca) => ca.clone(),
            CaState::Unavailable { .. } => return None,
        };
        {
            let t = self.trust.read().unwrap_or_else(|e| e.into_inner());
            if t.1.cas_der.first().map(Vec::as_slice) == Some(ca.cert_der()) {
                return Some((t.0, t.1.clone()));
            }
        }
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed);
        let trust = Arc::new(Trust {
            cas_der: vec![ca.cert_der().to_vec()],
            bundle_pem: ca.bundle_pem(),
        });
        *self.trust.write().unwrap_or_else(|e| e.into_inner()) = (epoch, trust.clone());
        Some((epoch, trust))
    }

    /// Decides one call and records it (audit event, metrics).
    pub fn authorize(&self, caller: &Caller, named: &Named, call: &Call, protocol: &'static str) -> Answer {
        let started = Instant::now();
        let now = Timestamp::now();
        let id = decision_id();
        let (verdict, serial, spiffe) = self.verdict(caller, named, call, now);
        let answer = Answer {
            decision_id: id,
            verdict,
            serial,
        };
        self.record(&answer, call, &spiffe, caller, now);
        self.metrics
            .authorization(protocol, answer.verdict.reason.as_str(), started.elapsed());
        answer
    }

    /// A request that describes no call: denied as InvalidRequest, and recorded.
    pub fn invalid(&self, caller: &Caller, message: String, protocol: &'static str) -> Answer {
        let started = Instant::now();
        let answer = Answer {
            decision_id: decision_id(),
            verdict: Verdict::deny(Reason::InvalidRequest, message),
            serial: String::new(),
        };
        self.record(&answer, &Call::default(), "", caller, Timestamp::now());
        self.metrics
            .authorization(protocol, answer.verdict.reason.as_str(), started.elapsed());
        answer
    }

    fn verdict(&self, caller: &Caller, named: &Named, call: &Call, now: Timestamp) -> (Verdict, String, String) {
        // Allocates only when something is pending.
        let unsynced = if self.pending().next().is_none() {
            vec![]
        } else {
            self.unsynced()
        };
        if !unsynced.is_empty() {
            return (
                Verdict::deny(
                    Reason::NotReady,
                    format!("not ready: waiting for {}", unsynced.join(", ")),
                ),
                String::new(),
                String::new(),
            );
        }
        let subject = match self.subject(caller, named) {
            Ok(s) => s,
            Err((reason, message)) => return (Verdict::deny(reason, message), String::new(), String::new()),
        };
        let record = self.indexes.records.get(&subject.serial);
        let (ns, name) = match (&subject.scope, &record) {
            (Some(s), _) => (s.namespace.as_str(), s.grant_name.as_str()),
            (None, Some(r)) => (r.grant_namespace.as_str(), r.grant_name.as_str()),
            (None, None) => ("", ""),
        };
        let grant = (!name.is_empty()).then(|| self.indexes.grants.get(ns, name)).flatten();
        let identity = grant.as_ref().and_then(|g| {
            self.indexes
                .identities
                .get(&ObjectRef::new(&g.facts.identity).within(ns))
        });
        // A ServiceAccount that is no proxy asks about its own identity only.
        if let Caller::ServiceAccount { namespace, name: sa } = caller
            && identity.as_ref().is_none_or(|i| {
                i.metadata.namespace.as_deref() != Some(namespace) || &i.spec.service_account_name != sa
            })
        {
            let v = Verdict::deny(
                Reason::CallerNotSubject,
                format!("serviceaccount {namespace}/{sa} is not the identity of the certificate it presented"),
            );
            return (v, subject.serial.clone(), subject.spiffe_id.clone());
        }
        let task = record.as_ref().and_then(|r| self.indexes.tasks.get(&r.task_uid));
        let policies = self.indexes.policies.borrow().clone();
        let facts = Facts {
            record: record.as_ref(),
            grant: grant.as_deref().map(|g| &g.facts),
            identity: identity.as_deref(),
            task: task.as_ref(),
            policies: policies.as_deref(),
        };
        let v = authorize::decide(&subject, call, &facts, self.limits, now);
        (v, subject.serial.clone(), subject.spiffe_id.clone())
    }

    fn subject(&self, caller: &Caller, named: &Named) -> Result<Arc<Subject>, (Reason, String)> {
        if named.identity_claimed && !caller.is_proxy() {
            return Err((
                Reason::UntrustedIdentityAssertion,
                format!(
                    "{} is not a trusted proxy: identity headers and asserted identities from it are not accepted",
                    caller.describe()
                ),
            ));
        }
        let Some((epoch, trust)) = self.trust() else {
            return Err((Reason::NotReady, "the CA is not usable".to_string()));
        };
        if let Some(text) = named.certificate.as_deref().filter(|t| !t.is_empty()) {
            let verified = self.subjects.subject(text, &trust, epoch)?;
            if let Caller::AgentCertificate { der, .. } = caller
                && *verified.der != *der.as_slice()
            {
                return Err((
                    Reason::CallerNotSubject,
                    "an agent may only present its own certificate".to_string(),
                ));
            }
            return Ok(verified.subject);
        }
        if let Some((spiffe_id, serial)) = &named.asserted {
            if !caller.is_proxy() {
                return Err((
                    Reason::UntrustedIdentityAssertion,
                    format!(
                        "{} may not assert an identity by SPIFFE ID and serial",
                        caller.describe()
                    ),
                ));
            }
            if spiffe_id.is_empty() || serial.is_empty() {
                return Err((
                    Reason::NoCertificate,
                    "an asserted identity needs both a SPIFFE ID and a serial".to_string(),
                ));
            }
            return Ok(Arc::new(Subject {
                serial: serial.to_ascii_lowercase(),
                spiffe_id: spiffe_id.clone(),
                not_before: None,
                not_after: None,
                scope: None,
            }));
        }
        if let Caller::AgentCertificate { der, .. } = caller {
            let pem = crate::pki::pem_encode_certificate(der);
            return self.subjects.subject(&pem, &trust, epoch).map(|v| v.subject);
        }
        Err((
            Reason::NoCertificate,
            "no client certificate: the call carries no certificate and no identity from a trusted proxy".to_string(),
        ))
    }

    fn record(&self, answer: &Answer, call: &Call, spiffe: &str, caller: &Caller, now: Timestamp) {
        let v = &answer.verdict;
        let n = &v.named;
        let keys = Keys {
            identity: (!n.identity.is_empty()).then(|| n.identity.clone()),
            grant: (!n.grant_uid.is_empty()).then(|| GrantKey {
                namespace: n.grant_namespace.clone(),
                name: n.grant_name.clone(),
                uid: n.grant_uid.clone(),
                generation: n.grant_generation,
            }),
            task: (!n.task_uid.is_empty()).then(|| TaskKey {
                kind: n.task_kind.clone(),
                name: n.task_name.clone(),
                uid: n.task_uid.clone(),
            }),
            serial: (!answer.serial.is_empty()).then(|| answer.serial.clone()),
            decision_id: Some(answer.decision_id.clone()),
            traceparent: (!call.traceparent.is_empty()).then(|| call.traceparent.clone()),
        };
        let kind = if v.allowed() {
            EventKind::DecisionAllowed
        } else {
            EventKind::DecisionDenied
        };
        debug!(decision_id = %answer.decision_id, reason = %v.reason, tool = %call.tool, action = %call.action,
               destination = %call.destination, spiffe_id = %spiffe, caller = %caller.describe(), "decision");
        self.audit.emit(Event {
            time: now,
            kind,
            keys,
            reason: Some(v.reason.as_str().to_string()),
            message: Some(v.message.clone()),
            call: Some(CallInfo {
                tool: call.tool.clone(),
                action: call.action.clone(),
                destination: call.destination.clone(),
                data_sensitivity: call.data_sensitivity.as_str().to_string(),
                request_id: call.request_id.clone(),
            }),
        });
    }

    /// The cached-answer bound, for responses.
    pub fn max_cache(&self) -> Duration {
        self.limits.max_cache
    }
}
