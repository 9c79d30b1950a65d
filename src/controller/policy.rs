//! AgentPolicy: compile each one into its status, and keep one immutable
//! [`PolicyStore`] of all of them for the grant controller.
//!
//! The store is rebuilt whenever an AgentPolicy or a namespace's labels change, and
//! published through a watch channel; every change re-checks every grant (a policy
//! change is a fresh decision). Until the first store is built the channel holds
//! `None` and grants are held, not denied: a starting operator must not revoke
//! anything because it has not read its policies yet.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::core::v1::Namespace,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    core::{Selector, SelectorExt},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        reflector::Store,
    },
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Context, Error};
use crate::{
    api::{AgentPolicy, AgentPolicyStatus, AuditDenial, AuditSummary},
    conditions::{self, Desired},
    policy::{AgentPolicyEntry, Compiled, NamespaceMatcher, PolicyStore, compile},
};

/// Most recent would-be denials kept per Audit policy.
const RECENT_AUDIT_DENIALS: usize = 20;

/// A compiled AgentPolicy and the generation it was compiled from.
type CompiledAt = (Option<i64>, Arc<Compiled>);

/// Compiled AgentPolicies by UID and generation, so a rebuild recompiles only what changed.
#[derive(Default)]
pub struct CompileCache {
    by_uid: Mutex<HashMap<String, CompiledAt>>,
}

impl CompileCache {
    pub fn get(&self, policy: &AgentPolicy) -> Arc<Compiled> {
        let uid = policy.uid().unwrap_or_default();
        let generation = policy.metadata.generation;
        let mut map = self.by_uid.lock().expect("compile cache");
        if let Some((g, c)) = map.get(&uid)
            && *g == generation
        {
            return c.clone();
        }
        let compiled = Arc::new(compile(&policy.spec.policies, &policy.name_any()));
        map.insert(uid, (generation, compiled.clone()));
        compiled
    }

    fn retain(&self, live: &BTreeSet<String>) {
        self.by_uid
            .lock()
            .expect("compile cache")
            .retain(|uid, _| live.contains(uid));
    }
}

/// Would-be denials of Audit policies since the operator started, by AgentPolicy name.
#[derive(Default)]
pub struct AuditLog {
    by_policy: Mutex<HashMap<String, AuditSummary>>,
}

impl AuditLog {
    /// Records that the Audit policies `policy_ids` (`<AgentPolicy>/<id>`) would have
    /// denied a decision; returns the AgentPolicy names touched.
    pub fn record(
        &self,
        policy_ids: &[String],
        grant: &str,
        generation: i64,
        decision_id: &str,
        now: Timestamp,
    ) -> Vec<String> {
        let mut by_owner: HashMap<&str, Vec<String>> = HashMap::new();
        for id in policy_ids {
            let owner = id.split_once('/').map(|(o, _)| o).unwrap_or(id);
            by_owner.entry(owner).or_default().push(id.clone());
        }
        let mut map = self.by_policy.lock().expect("audit log");
        let mut touched = vec![];
        for (owner, ids) in by_owner {
            let summary = map.entry(owner.to_string()).or_default();
            summary.would_deny_count += 1;
            summary.recent.insert(
                0,
                AuditDenial {
                    grant: grant.to_string(),
                    generation,
                    policy_ids: ids,
                    decision_id: decision_id.to_string(),
                    time: Time(now),
                },
            );
            summary.recent.truncate(RECENT_AUDIT_DENIALS);
            touched.push(owner.to_string());
        }
        touched
    }

    fn get(&self, name: &str) -> Option<AuditSummary> {
        self.by_policy.lock().expect("audit log").get(name).cloned()
    }
}

/// Which namespaces a selector picks, among the namespaces the operator can see.
fn matcher(selector: Option<&LabelSelector>, namespaces: &Store<Namespace>) -> Result<NamespaceMatcher, String> {
    let Some(selector) = selector else {
        return Ok(NamespaceMatcher::All);
    };
    let selector = Selector::try_from(selector.clone()).map_err(|e| format!("invalid namespaceSelector: {e}"))?;
    if selector.selects_all() {
        return Ok(NamespaceMatcher::All);
    }
    let names = namespaces
        .state()
        .iter()
        .filter(|ns| selector.matches(ns.labels()))
        .map(|ns| ns.name_any())
        .collect();
    Ok(NamespaceMatcher::Names(names))
}

/// What a policy store was built from: per AgentPolicy (by name), its UID and
/// generation (its text and mode), and the namespaces it selected (or why it could not).
pub type StoreInputs = Vec<(String, String, Option<i64>, Result<NamespaceMatcher, String>)>;

/// Builds the store from every AgentPolicy in the cache and publishes it, unless it
/// would be built from exactly the inputs of the last one (`last`): publishing makes
/// every grant decide again, and most namespace events (a namespace created, its
/// status changing as it terminates) and every AgentPolicy status write change nothing
/// a decision sees.
pub fn rebuild(
    policies: &Store<AgentPolicy>,
    namespaces: &Store<Namespace>,
    cache: &CompileCache,
    tx: &watch::Sender<Option<Arc<PolicyStore>>>,
    last: &mut Option<StoreInputs>,
) {
    let mut all = policies.state();
    all.sort_by_key(|p| p.name_any());
    let selected: Vec<Result<NamespaceMatcher, String>> = all
        .iter()
        .map(|p| matcher(p.spec.namespace_selector.as_ref(), namespaces))
        .collect();
    let inputs: StoreInputs = all
        .iter()
        .zip(&selected)
        .map(|(p, m)| {
            (
                p.name_any(),
                p.uid().unwrap_or_default(),
                p.metadata.generation,
                m.clone(),
            )
        })
        .collect();
    if last.as_ref() == Some(&inputs) {
        return;
    }
    let mut entries = Vec::with_capacity(all.len());
    let mut live = BTreeSet::new();
    for (p, selected) in all.iter().zip(selected) {
        live.insert(p.uid().unwrap_or_default());
        let mut compiled = cache.get(p).as_ref().clone();
        let namespaces = match selected {
            Ok(m) => m,
            Err(message) => {
                // Fail closed: a selector that cannot be read selects everything, and
                // the policy is invalid, so nothing it might cover is issued.
                compiled.errors.push(crate::api::PolicyError {
                    policy_id: None,
                    line: None,
                    column: None,
                    message,
                });
                NamespaceMatcher::All
            }
        };
        entries.push(AgentPolicyEntry {
            compiled,
            mode: p.spec.mode,
            namespaces,
        });
    }
    cache.retain(&live);
    let store = PolicyStore::new(entries);
    info!(
        agent_policies = all.len(),
        policies = store.len(),
        "policy store rebuilt"
    );
    tx.send_replace(Some(Arc::new(store)));
    *last = Some(inputs);
}

/// The status an AgentPolicy should have (pure, `now` passed in).
pub fn desired_status(
    policy: &AgentPolicy,
    compiled: &Compiled,
    audit: Option<AuditSummary>,
    now: Timestamp,
) -> AgentPolicyStatus {
    let current = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let ready = if compiled.is_valid() {
        Desired {
            type_: conditions::READY,
            status: true,
            reason: "Valid",
            message: format!("{} policies compiled and validated", compiled.policies.len()),
        }
    } else {
        let first = &compiled.errors[0];
        let at = match (first.line, first.column) {
            (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
            _ => String::new(),
        };
        Desired {
            type_: conditions::READY,
            status: false,
            reason: "InvalidPolicy",
            message: format!(
                "{}{at}; {} error(s) in all; no grant in the selected namespaces is issued until it is fixed",
                first.message,
                compiled.errors.len()
            ),
        }
    };
    let mut errors = compiled.errors.clone();
    errors.truncate(100);
    let mut summaries = compiled.summaries();
    summaries.truncate(1000);
    AgentPolicyStatus {
        policy_count: compiled.policies.len() as i32,
        policies: summaries,
        errors,
        audit: audit.or(current.audit.clone()),
        observed_generation: generation,
        conditions: conditions::merge(&current.conditions, vec![ready], generation, now),
    }
}

pub async fn reconcile(policy: Arc<AgentPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = policy.name_any();
    let compiled = ctx.policy_compiler.get(&policy);
    let status = desired_status(&policy, &compiled, ctx.audit.get(&name), Timestamp::now());
    if policy.status.as_ref() != Some(&status) {
        let api: Api<AgentPolicy> = Api::all(ctx.client.clone());
        super::apply_status(&api, "AgentPolicy", &name, &status).await?;
        let was_ready = policy
            .status
            .as_ref()
            .map(|s| conditions::is_true(&s.conditions, conditions::READY));
        let ready = compiled.is_valid();
        if was_ready != Some(ready)
            || policy.status.as_ref().and_then(|s| s.observed_generation) != policy.metadata.generation
        {
            let (type_, reason, note) = if ready {
                (
                    EventType::Normal,
                    "Valid",
                    format!("{} policies compiled and validated", compiled.policies.len()),
                )
            } else {
                let e = &compiled.errors[0];
                warn!(agent_policy = %name, line = ?e.line, column = ?e.column, error = %e.message, "AgentPolicy is invalid");
                (
                    EventType::Warning,
                    "InvalidPolicy",
                    status
                        .conditions
                        .iter()
                        .find(|c| c.type_ == conditions::READY)
                        .map(|c| c.message.clone())
                        .unwrap_or_default(),
                )
            };
            info!(agent_policy = %name, valid = ready, policies = compiled.policies.len(), "AgentPolicy compiled");
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(super::backoff::truncate_note(note)),
                action: "Compile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&ev, &policy.object_ref(&())).await {
                warn!(error = %e, "failed to publish event");
            }
        }
    }
    Ok(Action::await_change())
}
