//! The composition root: flags to a running operator. The only module that imports
//! both the controllers and the servers (webhook, metrics, CRL).
//!
//! Today one replica runs everything; leader election (next) starts the writers only
//! while the lease is held, and the servers on every replica.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use kube::{
    Api, Client, ResourceExt,
    runtime::{Controller, WatchStreamExt, events::Reporter, reflector, reflector::ObjectRef, watcher},
};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    api::{
        AgentIdentity, AgentPolicy, CertificateRecord, ToolGrant, ToolGrantApproval,
        names::{CRL_CONFIGMAP, LABEL_GRANT},
    },
    cli::RunArgs,
    controller::{
        Context, api_for, backoff, ca, error_policy, grant, identity, ledger, policy, queue, spec_changes, succeeded,
        sweeper, task_watch, within_deadline, written,
    },
    decide::task::FinishedConditions,
    spiffe,
    state::{
        cached::{GrantSecret, JobTask, PodTask, SecretStore},
        slim,
        tasks::{TaskStore, facts},
    },
};

/// Why the operator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("failed to build a Kubernetes client from kubeconfig or in-cluster config: {0}")]
    Client(#[source] kube::Error),
    #[error("invalid --trust-domain: {0}")]
    TrustDomain(#[source] spiffe::SpiffeIdError),
    #[error("failed to load or create the CA: {0}")]
    LoadCa(#[source] kube::Error),
    #[error("invalid webhook flags: {0}")]
    WebhookConfig(#[source] crate::webhook::ConfigError),
    #[error("failed to start the admission webhook: {0}")]
    Webhook(#[source] crate::webhook::WebhookError),
    #[error("failed to listen for metrics: {0}")]
    Metrics(#[source] std::io::Error),
    #[error("failed to start the decision service: {0}")]
    Decision(#[source] crate::decision::server::ServeError),
}

/// A watch's objects as the grant keys they trigger. A watch error is logged (the
/// watch itself retries, with backoff) and triggers nothing.
fn keys<T: 'static>(
    watch: &'static str,
    objects: impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    mut to_keys: impl FnMut(T) -> Vec<ObjectRef<ToolGrant>> + Send + 'static,
) -> futures::stream::BoxStream<'static, Vec<ObjectRef<ToolGrant>>> {
    objects
        .filter_map(move |event| {
            futures::future::ready(match event {
                Ok(obj) => Some(to_keys(obj)),
                Err(e) => {
                    warn!(watch, error = %e, "watch failed; retrying");
                    None
                }
            })
        })
        .boxed()
}

/// SIGINT or SIGTERM, as kube's controllers stop on.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            // Without a handler only SIGINT stops us gracefully; SIGTERM still ends the
            // process, as it would without any handler.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
}

/// Runs the controllers until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    spiffe::validate_trust_domain(&args.trust_domain).map_err(RunError::TrustDomain)?;
    let webhook_config = crate::webhook::config_from_args(&args).map_err(RunError::WebhookConfig)?;
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let recorder = crate::controller::recorder::Recorder::new(
        client.clone(),
        Reporter {
            controller: "mandate".into(),
            instance: None,
        },
    );
    info!(trust_domain = %args.trust_domain, watch_namespace = ?args.watch_namespace, "mandate operator starting");

    let source = ca::CaSource {
        namespace: args.ca_secret_namespace.clone(),
        name: args.ca_secret_name.clone(),
        crl_configmap: CRL_CONFIGMAP.into(),
        validity: args.ca_validity.into(),
    };
    let initial = ca::load_or_bootstrap(&client, &source)
        .await
        .map_err(RunError::LoadCa)?;
    if let ca::CaState::Unavailable { reason, message } = &initial {
        error!(reason, %message, "CA is not usable; nothing will be issued until it is fixed");
    }
    let (ca_tx, ca_rx) = watch::channel(initial);
    tokio::spawn(ca::watch_ca(client.clone(), source, ca_tx));
    let webhook = crate::webhook::start(client.clone(), webhook_config, ca_rx.clone())
        .await
        .map_err(RunError::Webhook)?;
    tokio::spawn(webhook);
    // The audit trail: JSON lines on stdout (logs go to stderr) and a bounded buffer.
    let trail = crate::audit::AuditLog::stdout(crate::audit::Bounds {
        events: args.audit_buffer_events,
        bytes: args.audit_buffer_bytes,
    });
    let metrics = Arc::new(crate::metrics::Metrics::new(trail.dropped_counter()));
    // The published CRL, assembled from the ConfigMaps that store it, served on every
    // replica and watched by the CRL writer for damage.
    let (served_crl, served_crl_watch) =
        crate::state::crl::watch_served(client.clone(), &args.ca_secret_namespace, CRL_CONFIGMAP);
    tokio::spawn(served_crl_watch);
    // The revocation record: one watch on the CertificateRecords in the CA's namespace
    // feeds the index that the grant reconciles, the CRL writer and the sweeper read.
    let records = crate::state::records::RecordIndex::default();
    let (records_mark, records_ready) = crate::state::ready::gate();
    let record_events = {
        let records = records.clone();
        let mut mark = records_mark.on_init_done();
        watcher(
            Api::<CertificateRecord>::namespaced(client.clone(), &args.ca_secret_namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .for_each(move |event| {
            match event {
                Ok(event) => {
                    records.on_event(&event);
                    mark(&event);
                }
                Err(e) => warn!(error = %e, "CertificateRecord watch failed; retrying"),
            }
            futures::future::ready(())
        })
    };
    tokio::spawn(record_events);
    let ledger = ledger::spawn(ledger::LedgerConfig {
        client: client.clone(),
        namespace: args.ca_secret_namespace.clone(),
        crl_name: CRL_CONFIGMAP.into(),
        part_bytes: args.crl_part_bytes,
        validity: args.crl_validity.into(),
        served: served_crl.clone(),
        ca: ca_rx.clone(),
        records: records.clone(),
        records_ready: records_ready.clone(),
        metrics: metrics.clone(),
    });

    let ns = &args.watch_namespace;
    let grants: Api<ToolGrant> = api_for(&client, ns);
    let grant_store = crate::state::grants::GrantCache::default();
    let (job_store, pod_store) = (TaskStore::default(), TaskStore::default());
    let (identity_store, identity_writer) = reflector::store();
    let tasks = crate::state::tasks::TaskIndex::default();
    let finished = FinishedConditions {
        types: args.task_finished_conditions.clone(),
    };
    let secret_store = SecretStore::default();
    let (approval_store, approval_writer) = reflector::store();
    let (namespace_store, namespace_writer) = reflector::store();
    let policy_api: Api<AgentPolicy> = Api::all(client.clone());
    // Readiness of the caches that anything but their own controller waits on comes
    // from their watch events (see `ready`).
    let (policy_store, policy_writer) = reflector::store();
    let (policies_mark, policies_ready) = crate::state::ready::gate();
    let policy_events = watcher(policy_api, watcher::Config::default())
        .default_backoff()
        .reflect(policy_writer)
        .inspect_ok(policies_mark.on_init_done())
        .applied_objects();
    let policy_controller = Controller::for_stream(policy_events, policy_store.clone());
    let (policies_tx, policies_rx) = watch::channel(None);
    let (audit_tx, mut audit_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let approvals = watcher(api_for::<ToolGrantApproval>(&client, ns), watcher::Config::default())
        .default_backoff()
        .modify(slim::approval)
        .reflect(approval_writer)
        .touched_objects();
    // Namespace labels feed AgentPolicy namespace selectors; a scoped operator only
    // needs (and may only be allowed to read) its own namespace.
    let (namespaces_mark, namespaces_ready) = crate::state::ready::gate();
    let ns_config = match ns {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let namespaces = watcher(
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()),
        ns_config,
    )
    .default_backoff()
    .modify(slim::namespace)
    .reflect(namespace_writer)
    .inspect_ok(namespaces_mark.on_init_done())
    .touched_objects();
    // Each cache is updated by the same watch that triggers the grant reconciles, before
    // the trigger passes on, so a reconcile never reads a state older than its trigger.
    // Every cache keeps only the fields Mandate reads (see `slim`).
    // The same watch tells the identity controller which identities' grants changed,
    // so grants are decoded once (not once more by a watch of its own).
    let (identity_tx, identity_rx) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<AgentIdentity>>();
    let (deleted_tx, deleted_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (grants_mark, grants_ready) = crate::state::ready::gate();
    let grant_events = watcher(grants, watcher::Config::default())
        .default_backoff()
        .modify(slim::grant)
        .inspect_ok({
            let cache = grant_store.clone();
            move |event| cache.on_event(event)
        })
        .inspect_ok(grants_mark.on_init_done())
        .inspect_ok(move |event| {
            // A grant gone from the API: the sweeper makes sure its serials are revoked
            // even if its finalizer was removed by hand.
            if let watcher::Event::Delete(g) = event {
                let _ = deleted_tx.send(g.uid().unwrap_or_default());
            }
            if let watcher::Event::Apply(g) | watcher::Event::Delete(g) | watcher::Event::InitApply(g) = event {
                let identity = ObjectRef::new(&g.spec.identity_ref.name).within(&g.namespace().unwrap_or_default());
                // The receiver lives as long as the identity controller; if it has
                // stopped, the operator is shutting down.
                let _ = identity_tx.send(identity);
            }
        })
        .applied_objects();
    let identity_controller = Controller::new(api_for::<AgentIdentity>(&client, ns), watcher::Config::default())
        // A burst of grant changes for one identity becomes one status update.
        .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_millis(500)));
    let (identities_mark, identities_ready) = crate::state::ready::gate();
    let identities = watcher(api_for::<AgentIdentity>(&client, ns), watcher::Config::default())
        .default_backoff()
        .modify(slim::identity)
        .reflect(identity_writer)
        .inspect_ok(identities_mark.on_init_done());
    // Jobs and Pods also feed the task index the decision service reads, from the
    // same events, before they trigger anything.
    let (jobs_mark, jobs_ready) = crate::state::ready::gate();
    let (job_tasks, job_source) = (tasks.clone(), Arc::<str>::from("batch/v1/Job"));
    // Decoded into the compact types of `cached`: what the task adapter read, not the
    // object.
    let jobs = watcher(api_for::<JobTask>(&client, ns), watcher::Config::default())
        .default_backoff()
        .inspect_ok({
            let store = job_store.clone();
            move |event| store.on_event(event)
        })
        .inspect_ok(move |event| job_tasks.on_event(&job_source, event, |j| Some(facts(&j.state))))
        .inspect_ok(jobs_mark.on_init_done());
    let (pods_mark, pods_ready) = crate::state::ready::gate();
    let (pod_tasks, pod_source) = (tasks.clone(), Arc::<str>::from("v1/Pod"));
    let pods = watcher(api_for::<PodTask>(&client, ns), watcher::Config::default())
        .default_backoff()
        .inspect_ok({
            let store = pod_store.clone();
            move |event| store.on_event(event)
        })
        .inspect_ok(move |event| pod_tasks.on_event(&pod_source, event, |p| Some(facts(&p.state))))
        .inspect_ok(pods_mark.on_init_done());
    let written = Arc::new(written::Written::default());
    let ours = written.clone();
    let (secrets_mark, secrets_ready) = crate::state::ready::gate();
    let secrets = watcher(
        api_for::<GrantSecret>(&client, ns),
        watcher::Config::default().labels(LABEL_GRANT),
    )
    .default_backoff()
    .inspect_ok({
        let store = secret_store.clone();
        move |event| store.on_event(event)
    })
    .inspect_ok(secrets_mark.on_init_done())
    // The reconcile that created, applied or deleted a Secret knows what it did;
    // the event of its own write would only run the grant again (and, with the
    // grant's own status event still on its way, read the grant back). Every other
    // change, and every object of a relist, still reaches the grant.
    .try_filter_map(move |event| {
        let secret = match event {
            watcher::Event::Apply(s) if !ours.is_own_secret_write(&s, false) => Some(s),
            watcher::Event::Delete(s) if !ours.is_own_secret_write(&s, true) => Some(s),
            watcher::Event::InitApply(s) => Some(s),
            _ => None,
        };
        futures::future::ready(Ok(secret))
    });

    let (task_tx, mut task_rx) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<ToolGrant>>();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        trust_domain: args.trust_domain.clone(),
        ca: ca_rx,
        ledger: ledger.clone(),
        records_ready: records_ready.clone(),
        operator_max_ttl: args.max_ttl.into(),
        finished_conditions: finished.clone(),
        task_kinds: Mutex::new(HashMap::new()),
        task_watches: task_watch::TaskWatches::new(
            client.clone(),
            ns.clone(),
            grant_store.clone(),
            task_tx,
            (tasks.clone(), finished.clone()),
        ),
        grants: grant_store.clone(),
        identities: identity_store,
        jobs: job_store,
        pods: pod_store,
        secrets: secret_store,
        secrets_ready,
        policies: policies_rx.clone(),
        policy_compiler: policy::CompileCache::default(),
        audit: policy::AuditLog::default(),
        audit_changed: audit_tx,
        approvals: approval_store,
        metrics: metrics.clone(),
        trail: trail.clone(),
        errors: backoff::ErrorBackoff::default(),
        written,
        published_bundles: Mutex::new(HashMap::new()),
    });

    // The decision service, on every replica, from the same indexes.
    let service = Arc::new(crate::decision::service::Service::new(
        crate::decision::service::Indexes {
            records: records.clone(),
            grants: grant_store.clone(),
            identities: ctx.identities.clone(),
            tasks: tasks.clone(),
            policies: ctx.policies.clone(),
            ca: ctx.ca.clone(),
            ready: vec![
                ("certificaterecords", records_ready.clone()),
                ("toolgrants", grants_ready.clone()),
                ("agentidentities", identities_ready),
                ("jobs", jobs_ready),
                ("pods", pods_ready),
            ],
        },
        trail.clone(),
        metrics.clone(),
        crate::decide::authorize::Limits {
            // One trust domain for the life of the process.
            trust_domain: Box::leak(args.trust_domain.clone().into_boxed_str()),
            max_cache: args.decision_max_cache.into(),
        },
    ));
    let api = Arc::new(crate::decision::api::Api {
        service: service.clone(),
        callers: crate::decision::caller::CallerPolicy {
            proxy_spiffe_ids: args.decision_proxy_spiffe_ids.clone(),
            proxy_service_accounts: args.decision_proxy_service_accounts.clone(),
            token_audience: args.decision_token_audience.clone(),
        },
        tokens: crate::decision::caller::TokenReviews::new(client.clone(), args.decision_token_cache.into()),
    });
    crate::decision::server::start(
        crate::decision::server::ServerConfig {
            listen: args.decision_listen,
            dns_names: args.decision_dns_names.clone(),
            ip_addresses: args.decision_ip_addresses.clone(),
            cert_validity: args.decision_cert_validity.into(),
        },
        api,
        crate::decision::crl::routes(served_crl.clone()),
        ctx.ca.clone(),
        args.decision_threads(),
    )
    .map_err(RunError::Decision)?;
    let metrics_server = crate::metrics::serve(
        args.metrics_listen,
        metrics.clone(),
        crate::decision::crl::routes(served_crl.clone()).merge(crate::decision::health::routes(service.clone())),
    )
    .await
    .map_err(RunError::Metrics)?;
    tokio::spawn(metrics_server);
    tokio::spawn(crate::decision::health::live_certificates(
        records.clone(),
        metrics.clone(),
    ));

    let (s1, s2, s3) = (grant_store.clone(), grant_store.clone(), grant_store.clone());
    // Every change of the CA (restored, replaced, deleted) re-checks every grant: ones
    // waiting on it can issue, and none may keep issuing from a CA that is gone.
    let ca_changes = futures::stream::unfold(ctx.ca.clone(), |mut rx| async move {
        rx.changed().await.ok().map(|_| ((), rx))
    });
    // So does every new policy store: a policy change is a fresh decision for all.
    let policy_changes = futures::stream::unfold(policies_rx, |mut rx| async move {
        rx.changed().await.ok().map(|_| ((), rx))
    });
    // And every change of the CRL's health: an unusable CRL stops issuance, a fixed one
    // resumes it.
    let ledger_changes = futures::stream::unfold(ledger.health_changes(), |mut rx| async move {
        rx.changed().await.ok().map(|_| ((), rx))
    });
    tokio::spawn(
        sweeper::Sweeper {
            client: client.clone(),
            ledger: ledger.clone(),
            namespace: args.ca_secret_namespace.clone(),
            watch_namespace: args.watch_namespace.clone(),
            grants: grant_store.clone(),
            grants_ready: grants_ready.clone(),
            secrets: ctx.secrets.clone(),
            records_ready,
            metrics: ctx.metrics.clone(),
        }
        .run(deleted_rx),
    );
    // The grant controller: every trigger queues grant keys, and a fixed number of
    // workers take them namespace by namespace (see `controller::queue`).
    let queue = queue::WorkQueue::new();
    let s4 = ctx.grants.clone();
    let s5 = ctx.grants.clone();
    let all_grants = move |()| s5.keys();
    let grant_triggers = futures::stream::select_all([
        keys("toolgrants", grant_events, |g: ToolGrant| vec![ObjectRef::from_obj(&g)]),
        futures::stream::poll_fn(move |cx| task_rx.poll_recv(cx))
            .map(|g| vec![g])
            .boxed(),
        futures::stream::select(futures::stream::select(ca_changes, policy_changes), ledger_changes)
            .map(all_grants)
            .boxed(),
        keys("toolgrantapprovals", approvals, move |a: ToolGrantApproval| {
            let ns = a.metadata.namespace.as_deref().unwrap_or_default();
            s4.get(ns, &a.spec.grant_name).map(|g| g.key()).into_iter().collect()
        }),
        // A grant Secret triggers its controlling grant, and also the grant its label
        // names: after a grant vanished and a new one of the same name is waiting on
        // its predecessor's Secret, that Secret's deletion must reach the new grant,
        // which does not own it.
        keys("secrets", secrets, |s: GrantSecret| {
            let ns = s.namespace().unwrap_or_default();
            let mut names: Vec<String> = s
                .owner_references()
                .iter()
                .filter(|o| o.controller == Some(true) && o.kind == "ToolGrant")
                .map(|o| o.name.clone())
                .collect();
            if let Some(label) = s.grant_label
                && !names.contains(&label)
            {
                names.push(label);
            }
            names.into_iter().map(|n| ObjectRef::new(&n).within(&ns)).collect()
        }),
        keys("jobs", jobs.touched_objects(), move |job: JobTask| {
            s1.for_task("batch/v1", "Job", job.metadata.namespace.as_deref(), &job.name_any())
        }),
        keys("pods", pods.touched_objects(), move |pod: PodTask| {
            s2.for_task("v1", "Pod", pod.metadata.namespace.as_deref(), &pod.name_any())
        }),
        keys("agentidentities", spec_changes(identities), move |id: AgentIdentity| {
            s3.keys_where(id.metadata.namespace.as_deref(), |g| {
                Some(g.identity.as_str()) == id.metadata.name.as_deref()
            })
        }),
    ]);
    let grant_controller = {
        let (queue, ctx, ready, workers) = (queue.clone(), ctx.clone(), grants_ready.clone(), args.grant_concurrency);
        async move {
            let q = queue.clone();
            let pump = grant_triggers.for_each(move |keys| {
                for key in keys {
                    q.add(key);
                }
                futures::future::ready(())
            });
            // As kube's controller does: nothing runs before the grant cache is filled.
            let workers = async {
                if !ready.wait().await {
                    return;
                }
                let spawned = (0..workers).map(|_| tokio::spawn(grant::work(queue.clone(), ctx.clone())));
                futures::future::join_all(spawned.collect::<Vec<_>>()).await;
            };
            tokio::pin!(workers);
            tokio::select! {
                () = pump => warn!("grant triggers ended"),
                () = shutdown_signal() => info!("stopping: finishing the grant reconciles under way"),
                () = &mut workers => {}
            }
            // Workers finish the reconcile they are in, then stop.
            queue.close();
            workers.await;
        }
    };

    let identity_triggers = futures::stream::unfold(identity_rx, |mut rx| async move {
        rx.recv().await.map(|identity| (identity, rx))
    });
    let identity_controller = identity_controller
        .reconcile_on(identity_triggers)
        .shutdown_on_signal()
        .run(
            |identity, ctx| async move {
                let res = within_deadline(identity::reconcile(identity.clone(), ctx.clone())).await;
                succeeded(&ctx, identity.as_ref(), &res);
                res
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "identity reconcile failed");
            }
        });

    // The policy store: rebuilt once both caches are filled, then after every change
    // of an AgentPolicy or a namespace (a burst of changes becomes one rebuild).
    let (ns_store_for_build, rebuild_ctx) = (namespace_store.clone(), ctx.clone());
    let (rebuild_tx, mut rebuild_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let policy_builder = {
        let policy_store = policy_store.clone();
        async move {
            if !policies_ready.wait().await || !namespaces_ready.wait().await {
                return;
            }
            let mut last = None;
            loop {
                while rebuild_rx.try_recv().is_ok() {}
                policy::rebuild(
                    &policy_store,
                    &ns_store_for_build,
                    &rebuild_ctx.policy_compiler,
                    &policies_tx,
                    &mut last,
                );
                if rebuild_rx.recv().await.is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (t1, t2) = (rebuild_tx.clone(), rebuild_tx);
    let policy_controller = policy_controller
        .watches_stream(namespaces, move |_ns| {
            let _ = t1.send(());
            None::<ObjectRef<AgentPolicy>>
        })
        .reconcile_on(futures::stream::poll_fn(move |cx| {
            audit_rx
                .poll_recv(cx)
                .map(|name| name.map(|n| ObjectRef::<AgentPolicy>::new(&n)))
        }))
        .shutdown_on_signal()
        .run(
            move |p, c| {
                let _ = t2.send(());
                async move {
                    let res = within_deadline(policy::reconcile(p.clone(), c.clone())).await;
                    succeeded(&c, p.as_ref(), &res);
                    res
                }
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "policy reconcile failed");
            }
        });

    futures::join!(grant_controller, identity_controller, policy_controller, async {
        tokio::select! {
            () = policy_builder => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    });
    info!("mandate operator stopped");
    Ok(())
}
