//! Watches for task kinds beyond Jobs and Pods (Argo Workflows, Tekton TaskRuns, agent
//! sandboxes, ...), started the first time a grant names the kind.
//!
//! Without them such a grant was only looked at again on a timer, so a finished
//! Workflow kept a valid certificate until the next look. Each watch keeps no cache:
//! an event of a task object only names the grants whose `taskRef` points at it, and
//! their reconcile reads the task fresh, as the API server has it.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, reflector::ObjectRef, watcher},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    api::ToolGrant,
    decide::task::{FinishedConditions, TaskKind},
    state::{
        grants::GrantCache,
        tasks::{TaskIndex, facts_of},
    },
};

/// The watches started so far, and where their triggers go.
pub struct TaskWatches {
    client: Client,
    namespace: Option<String>,
    grants: GrantCache,
    started: Mutex<HashSet<String>>,
    triggers: mpsc::UnboundedSender<ObjectRef<ToolGrant>>,
    /// The task index the decision service reads, and how a task says it finished.
    tasks: (TaskIndex, FinishedConditions),
}

impl TaskWatches {
    pub fn new(
        client: Client,
        namespace: Option<String>,
        grants: GrantCache,
        triggers: mpsc::UnboundedSender<ObjectRef<ToolGrant>>,
        tasks: (TaskIndex, FinishedConditions),
    ) -> Arc<Self> {
        Arc::new(TaskWatches {
            client,
            namespace,
            grants,
            started: Mutex::new(HashSet::new()),
            triggers,
            tasks,
        })
    }

    /// Starts the watch of `ar`'s kind unless it runs already.
    pub fn ensure(self: &Arc<Self>, ar: &ApiResource) {
        let key = format!("{}/{}", ar.api_version, ar.kind);
        if !self.started.lock().expect("task watch set").insert(key.clone()) {
            return;
        }
        info!(kind = %key, "watching a task kind named by a grant");
        let api: Api<DynamicObject> = match &self.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        };
        let this = self.clone();
        let ar = ar.clone();
        tokio::spawn(async move {
            let source: Arc<str> = key.clone().into();
            let events = watcher(api, watcher::Config::default()).default_backoff();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let (index, finished) = &this.tasks;
                        index.on_event(&source, &event, |t| Some(facts_of(TaskKind::Generic, t, finished)));
                        match &event {
                            watcher::Event::Apply(t) | watcher::Event::Delete(t) | watcher::Event::InitApply(t) => {
                                this.trigger(&ar, t)
                            }
                            watcher::Event::Init | watcher::Event::InitDone => {}
                        }
                    }
                    Err(e) => {
                        warn!(kind = %key, error = %e, "task watch failed; retrying (does the operator may list and watch this kind?)")
                    }
                }
            }
        });
    }

    fn trigger(&self, ar: &ApiResource, task: &DynamicObject) {
        let name = task.name_any();
        let ns = task.metadata.namespace.as_deref();
        for g in self.grants.for_task(&ar.api_version, &ar.kind, ns, &name) {
            // The receiver lives as long as the grant controller.
            let _ = self.triggers.send(g);
        }
    }
}
