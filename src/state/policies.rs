//! The policy store every decision reads: one immutable [`PolicyStore`] built from all
//! AgentPolicies and the namespaces their selectors pick, rebuilt on every change of
//! either and published through a watch channel. Until the first one is built the
//! channel holds `None`, and grants are held, not denied: a starting operator must not
//! revoke anything because it has not read its policies yet.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::LabelSelector};
use kube::{
    ResourceExt,
    core::{Selector, SelectorExt},
    runtime::reflector::Store,
};
use tokio::sync::watch;
use tracing::info;

use crate::{
    api::AgentPolicy,
    policy::{AgentPolicyEntry, Compiled, NamespaceMatcher, PolicyStore, compile},
};

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
