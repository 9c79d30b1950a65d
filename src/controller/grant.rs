//! ToolGrant: fetch what the grant depends on, decide (see `decide::grant`), apply.
//!
//! The order of writes is what makes crashes harmless:
//! - issuance: sign, write the Secret, then the status. A crash after the Secret write
//!   is healed by reading the certificate back from the Secret (it is adopted, never
//!   issued twice);
//! - revocation: the serials go onto the CRL first, then the Secret is deleted, then
//!   the status says Revoked, then the finalizer goes. A crash anywhere repeats the
//!   remaining steps, and recording a serial twice is harmless.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        events::{Event, EventType},
        reflector::ObjectRef,
    },
};
use serde_json::json;
use tracing::{Instrument, info, warn};

use super::{
    Context, Error, decision,
    ledger::{self, Published},
    queue::WorkQueue,
    trail,
    written::CachedGrant,
};
use crate::{
    api::{
        AgentIdentity, ApprovalRecord, CertificateRecordSpec, CertificateStatus, GrantPhase, RecordedGrant,
        RecordedTask, RevocationCause, SupersededCertificate, ToolGrant, ToolGrantStatus,
        names::{ANN_RENEW_AT, ANN_SERIAL, FINALIZER, LABEL_GRANT, LABEL_IDENTITY, LABEL_TASK, MANAGED_BY, MANAGER},
    },
    audit::EventKind,
    decide::{
        approval::Pick,
        grant::{CaObs, LiveCert, Observed, Plan, PolicyObs, SecretObs, decide},
        grant_status,
        task::{self, TaskKind, TaskState},
    },
    failpoint::crash_point,
    pki::{self, CaState, LeafRequest, OffsetDateTime},
    spiffe::SpiffeId,
    state::{cached::GrantSecret, grants::GrantEntry},
};

fn to_offset(t: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.as_second()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

use pki::timestamp_of as to_ts;

fn secret_name(grant: &ToolGrant) -> String {
    grant.spec.secret_name.clone().unwrap_or_else(|| grant.name_any())
}

/// Reads the grant's Secret into what the decision needs.
fn observe_secret(grant: &ToolGrant, secret: Option<&GrantSecret>) -> SecretObs {
    let Some(secret) = secret else { return SecretObs::Absent };
    if !is_controlled_by(secret, grant) {
        return SecretObs::Foreign;
    }
    let live = secret.cert.as_ref().map(|c| {
        // Renewal time is stored beside the certificate (it carries the jitter); if it is
        // missing, fall back to two thirds of the lifetime.
        let renew_at = secret
            .renew_at
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| c.not_before + c.not_before.duration_until(c.not_after).mul_f64(2.0 / 3.0));
        LiveCert {
            serial: c.serial_hex.clone(),
            not_after: c.not_after,
            renew_at,
            grant_generation: c.grant_generation,
            task_uid: c.task_uid.clone(),
        }
    });
    SecretObs::Ours(live)
}

fn is_controlled_by(secret: &GrantSecret, grant: &ToolGrant) -> bool {
    secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == grant.metadata.uid.as_ref())
}

/// Looks up the API resource of a task kind: built in for Jobs and Pods, discovered
/// (and cached) for any other kind.
async fn task_resource(ctx: &Context, api_version: &str, kind: &str) -> Result<ApiResource, Error> {
    let key = format!("{api_version}/{kind}");
    if let Some(ar) = ctx.task_kinds.lock().expect("task kind cache").get(&key) {
        return Ok(ar.clone());
    }
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    };
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, kind);
    let (ar, _caps) = kube::discovery::pinned_kind(&ctx.client, &gvk)
        .await
        .map_err(|source| Error::DiscoverTaskKind {
            kind: key.clone(),
            source,
        })?;
    ctx.task_kinds.lock().expect("task kind cache").insert(key, ar.clone());
    Ok(ar)
}

async fn fetch_task(ctx: &Context, grant: &ToolGrant, ns: &str) -> Result<Option<TaskState>, Error> {
    let r = &grant.spec.task_ref;
    let kind = TaskKind::of(&r.api_version, &r.kind);
    let cached = match kind {
        TaskKind::Job => ctx.jobs.get(ns, &r.name),
        TaskKind::Pod => ctx.pods.get(ns, &r.name),
        TaskKind::Generic => None,
    };
    if let Some(state) = cached {
        return Ok(Some(state));
    }
    // A cache miss is confirmed against the API server: a task is only ever reported
    // gone (which revokes) on the API server's word.
    let ar = task_resource(ctx, &r.api_version, &r.kind).await?;
    if kind == TaskKind::Generic {
        // Its end must reach the grant at once, as a Job's does.
        ctx.task_watches.ensure(&ar);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let obj = api.get_opt(&r.name).await.map_err(|source| Error::FetchTask {
        name: r.name.clone(),
        source,
    })?;
    Ok(obj.map(|o| task::observe(kind, &o, &ctx.finished_conditions)))
}

async fn fetch_identity(ctx: &Context, grant: &ToolGrant, ns: &str) -> Result<Option<AgentIdentity>, Error> {
    let name = &grant.spec.identity_ref.name;
    if let Some(id) = ctx.identities.get(&ObjectRef::new(name).within(ns)) {
        return Ok(Some(id.as_ref().clone()));
    }
    let identities: Api<AgentIdentity> = Api::namespaced(ctx.client.clone(), ns);
    identities.get_opt(name).await.map_err(|source| Error::FetchIdentity {
        name: name.clone(),
        source,
    })
}

/// When a grant is next reconciled if nothing about it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// On its next change (or that of something it depends on).
    OnChange,
    /// After this long: a renewal, a deadline, a retry.
    After(Duration),
}

/// One of the grant controller's workers: reconciles the keys the queue hands it, in
/// the queue's order, until the queue closes. A key is reconciled from the cache as it
/// is when its turn comes, not as it was when it was queued.
pub async fn work(queue: Arc<WorkQueue>, ctx: Arc<Context>) {
    while let Some(key) = queue.next().await {
        let next = match ctx.grants.get_ref(&key) {
            // Gone from the cache: deleted for good (a grant with certificates to
            // revoke is held by its finalizer, and the sweeper covers one without).
            None => Next::OnChange,
            Some(grant) => {
                let span = tracing::info_span!("reconciling object", "object.ref" = %key);
                match reconcile(grant.clone(), ctx.clone()).instrument(span).await {
                    Ok(next) => next,
                    Err(e) => Next::After(super::retry_after_for(
                        &grant.facts.uid,
                        &grant.facts.name,
                        || grant.object_ref(),
                        &e,
                        &ctx,
                    )),
                }
            }
        };
        queue.done(&key);
        if let Next::After(after) = next {
            queue.add_after(key, after);
        }
    }
}

pub async fn reconcile(cached: Arc<GrantEntry>, ctx: Arc<Context>) -> Result<Next, Error> {
    let res = super::within_deadline(reconcile_grant(cached.clone(), &ctx)).await;
    match &res {
        Ok(_) => ctx.errors.succeeded(&cached.facts.uid),
        // Something we wrote may or may not have landed: read fresh next time.
        Err(_) => ctx.written.distrust(&cached.facts.uid),
    }
    res
}

/// What the reconcile starts from.
enum Fetched {
    Grant(Box<ToolGrant>),
    /// The grant is gone.
    Gone,
    /// The cache is behind our own latest write, whose event runs the grant again.
    Behind,
}

/// The grant as of our own last write: from the cache when it has caught up, else read.
async fn fetch_grant(ctx: &Context, api: &Api<ToolGrant>, cached: &GrantEntry) -> Result<Fetched, Error> {
    let f = &cached.facts;
    let uid = f.uid.as_str();
    match ctx.written.cached_grant(uid, f.resource_version.as_deref()) {
        CachedGrant::Current => match cached.unpack() {
            Ok(g) => return Ok(Fetched::Grant(Box::new(g))),
            // Never seen (the tests pack every shape of grant), but not a reason to
            // stop: the API server has the grant.
            Err(e) => {
                warn!(grant = %f.name, namespace = %f.namespace, error = %e,
                      "the cached grant cannot be unpacked; reading it from the API server")
            }
        },
        CachedGrant::Behind => return Ok(Fetched::Behind),
        CachedGrant::Unknown => {}
    }
    let name = f.name.clone();
    let fresh = api
        .get_opt(&name)
        .await
        .map_err(|source| Error::FetchGrant { name, source })?;
    Ok(match fresh {
        // Read fresh: nothing of ours is pending any more.
        Some(g) => {
            ctx.written.wrote_grant(uid, None, g.resource_version());
            Fetched::Grant(Box::new(g))
        }
        None => {
            ctx.written.forget(uid);
            Fetched::Gone
        }
    })
}

/// The grant's Secret as of our own last write to it: from the cache (which holds no
/// private keys) when it has caught up, else read.
async fn fetch_secret(
    ctx: &Context,
    api: &Api<GrantSecret>,
    grant: &ToolGrant,
    ns: &str,
) -> Result<Option<GrantSecret>, Error> {
    let name = secret_name(grant);
    let uid = grant.uid().unwrap_or_default();
    let ready = ctx.secrets_ready.wait().await;
    let cached = ctx.secrets.get(ns, &name);
    if ready
        && ctx.written.secret_is_current(
            &uid,
            cached.as_ref().and_then(|s| s.metadata.resource_version.as_deref()),
        )
    {
        return Ok(cached);
    }
    api.get_opt(&name)
        .await
        .map_err(|source| Error::FetchSecret { name, source })
}

async fn reconcile_grant(cached: Arc<GrantEntry>, ctx: &Arc<Context>) -> Result<Next, Error> {
    let ctx = ctx.clone();
    if cached.facts.namespace.is_empty() {
        return Err(Error::MissingNamespace);
    }
    let ns = cached.facts.namespace.clone();
    let name = cached.facts.name.clone();
    let grants: Api<ToolGrant> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // Reads and deletes go through the compact type: the key is never decoded.
    let grant_secrets: Api<GrantSecret> = Api::namespaced(ctx.client.clone(), &ns);

    // Fetch.
    let grant = match fetch_grant(&ctx, &grants, &cached).await? {
        Fetched::Grant(g) => *g,
        Fetched::Gone | Fetched::Behind => return Ok(Next::OnChange),
    };
    let identity = fetch_identity(&ctx, &grant, &ns).await?;
    let task = fetch_task(&ctx, &grant, &ns).await?;
    let secret = fetch_secret(&ctx, &grant_secrets, &grant, &ns).await?;
    // Which serials this grant object has: never decided from half a record.
    if !ctx.records_ready.wait().await {
        return Ok(Next::OnChange);
    }
    let records = ctx.ledger.records().for_grant(&grant.uid().unwrap_or_default());
    let ca_state = ctx.ca.borrow().clone();
    // A CRL that cannot take revocations stops issuance like a missing CA does: a
    // certificate issued now could not be revoked where relying parties look.
    let ca_obs = match (&ca_state, ctx.ledger.health()) {
        (CaState::Unavailable { reason, message }, _) => CaObs::Unavailable {
            reason,
            message: message.clone(),
        },
        (CaState::Ready(_), ledger::Health::Unavailable { reason, message }) => CaObs::Unavailable { reason, message },
        (CaState::Ready(ca), _) => CaObs::Ready {
            not_after: to_ts(ca.not_after()),
        },
    };
    let now = Timestamp::now();
    // Policy is consulted only for a live grant whose identity exists; decide() never
    // reaches the policy check otherwise.
    let evaluated = match identity.as_ref() {
        Some(id)
            if grant.metadata.deletion_timestamp.is_none()
                && !grant
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(GrantPhase::is_final) =>
        {
            let spiffe_id = SpiffeId::for_agent(&ctx.trust_domain, &ns, &id.name_any())
                .map(|s| s.to_string())
                .unwrap_or_default();
            let approvals = ctx.approvals.state();
            let mine: Vec<&crate::api::ToolGrantApproval> = approvals
                .iter()
                .filter(|a| a.namespace().as_deref() == Some(ns.as_str()) && a.spec.grant_name == name)
                .map(|a| a.as_ref())
                .collect();
            let store = ctx.policies.borrow().clone();
            decision::evaluate(store.as_deref(), &grant, id, &spiffe_id, &mine, now)
        }
        _ => decision::Evaluated::without_record(PolicyObs::Loading),
    };
    let observed = Observed {
        now,
        grant: &grant,
        identity: identity.as_ref(),
        task: task.clone(),
        secret: observe_secret(&grant, secret.as_ref()),
        ca: ca_obs,
        operator_max_ttl: ctx.operator_max_ttl,
        jitter: rand_unit(),
        policy: evaluated.obs.clone(),
        records,
    };

    // Decide.
    let plan = decide(&observed);
    let previous = grant.status.clone().unwrap_or_default();
    let decision = evaluated.record.clone().or(previous.decision.clone());
    let decision_id = decision.as_ref().map(|d| d.decision_id.clone()).unwrap_or_default();
    let new_decision =
        evaluated.record.is_some() && previous.decision.as_ref().map(|d| &d.decision_id) != Some(&decision_id);
    let issued_under = match (&evaluated.pick, &evaluated.obs) {
        (
            Pick::Approved {
                name,
                approver,
                created,
            },
            PolicyObs::Allow,
        ) => Some(ApprovalRecord {
            name: name.clone(),
            approver: approver.clone(),
            generation: grant.metadata.generation.unwrap_or_default(),
            time: Time(*created),
        }),
        _ => None,
    };
    let issues = matches!(plan, Plan::Issue { .. } | Plan::Hold { ready: true, .. });

    // Apply: the plan's writes in order, then the status, then what the status records
    // is announced (`grant_status`).
    // A new decision is announced right after the status that stores it is written
    // (and not for a revocation, whose status does not take it).
    let applied: Result<Next, Error> = async { match plan {
        Plan::Issue {
            lifetime,
            why,
            revoke_first,
            cause,
        } => {
            let CaState::Ready(ca) = ca_state else {
                unreachable!("decide issues only with a ready CA")
            };
            let (Some(identity), Some(task)) = (identity.as_ref(), task.as_ref()) else {
                unreachable!("decide issues only with an identity and a task")
            };
            ensure_finalizer(&ctx, &grants, &grant).await?;
            if !revoke_first.is_empty() {
                record_revocation(&ctx, &grant, &observed, &revoke_first, cause).await?;
            }
            // The CRL's health was read when this reconcile began; the CRL ConfigMap may
            // have been found unusable since. Look again right before signing: nothing is
            // signed that could not be revoked where relying parties look. The health
            // change re-runs every grant, and this one is then held with the reason.
            if matches!(ctx.ledger.health(), ledger::Health::Unavailable { .. }) {
                return Ok(Next::After(Duration::from_millis(200)));
            }
            let spiffe_id =
                SpiffeId::for_agent(&ctx.trust_domain, &ns, &identity.name_any()).map_err(Error::SpiffeId)?;
            let scope = crate::decide::grant::scope_for(&grant, &task.uid);
            let leaf = ca
                .issue_leaf(
                    &LeafRequest {
                        spiffe_id: spiffe_id.to_string(),
                        not_before: to_offset(lifetime.not_before),
                        not_after: to_offset(lifetime.not_after),
                        scope,
                    },
                    to_offset(now),
                )
                .map_err(Error::Issue)?;
            // Recorded before it leaves the operator: from here on, a crash at any step
            // leaves a serial that revocation finds (by the grant's UID).
            ctx.ledger
                .record_issued(CertificateRecordSpec {
                    serial_number: leaf.serial_hex.clone(),
                    not_after: Time(to_ts(leaf.not_after)),
                    grant: recorded_grant(&grant, grant.metadata.generation.unwrap_or_default()),
                    task: recorded_task(&grant, &task.uid),
                    identity: identity.name_any(),
                    revocation: None,
                })
                .await
                .map_err(Error::RecordCertificate)?;
            crash_point("issue-after-record");
            write_secret(
                &ctx,
                &secrets,
                &grant,
                identity,
                task,
                &leaf,
                &ca.bundle_pem(),
                lifetime.renew_at,
                secret.is_some(),
            )
            .await?;
            crash_point("issue-after-secret");
            let replaced_in_secret = match &observed.secret {
                SecretObs::Ours(Some(c)) => Some((c.serial.clone(), c.not_after)),
                _ => None,
            };
            let draft = grant_status::issued(
                grant.status.as_ref(),
                grant_status::Signed {
                    serial: leaf.serial_hex.clone(),
                    not_before: to_ts(leaf.not_before),
                    not_after: to_ts(leaf.not_after),
                    renew_at: lifetime.renew_at,
                    cap: lifetime.cap,
                    spiffe_id: spiffe_id.to_string(),
                    sha256_fingerprint: leaf.sha256_fingerprint.clone(),
                    secret_name: secret_name(&grant),
                    why,
                    replaced_in_secret,
                    revoked_first: revoke_first.clone(),
                },
                decision.clone(),
                issued_under.clone(),
                grant.metadata.generation,
                now,
            );
            store_draft(&ctx, &grants, &grant, &draft, (&evaluated, new_decision, &decision_id), now).await?;
            info!(grant = %name, namespace = %ns, identity = %identity.name_any(), task = %grant.spec.task_ref.name,
                  serial = %leaf.serial_hex, decision_id = %decision_id, not_after = %lifetime.not_after, cap = ?lifetime.cap, why, "certificate issued");
            let (kind, event) = if why == "Renewal" {
                (EventKind::CertificateRenewed, "renewed")
            } else {
                (EventKind::CertificateIssued, "issued")
            };
            ctx.metrics.certificate(event, why);
            trail::emit(
                &ctx,
                &grant,
                trail::Entry {
                    kind,
                    serial: Some(&leaf.serial_hex),
                    generation: grant.metadata.generation.unwrap_or_default(),
                    task_uid: &task.uid,
                    decision_id: Some(&decision_id),
                    reason: why,
                    message: format!("valid until {}", lifetime.not_after),
                },
                now,
            );
            announce(&ctx, &grant, draft.announcement).await;
            Ok(Next::After(until(now, lifetime.renew_at)))
        }
        Plan::Revoke {
            phase,
            reason,
            cause,
            message,
            serials,
        } => {
            record_revocation(&ctx, &grant, &observed, &serials, cause).await?;
            crash_point("revoke-after-record");
            delete_secret_if_ours(&ctx, &grant_secrets, &grant, secret.as_ref()).await?;
            crash_point("revoke-after-secret");
            let draft = grant_status::revoked(
                grant.status.as_ref(),
                phase,
                reason,
                message,
                &serials,
                grant.metadata.generation,
                now,
            );
            if draft.write {
                write_status(&ctx, &grants, &grant, &draft.status).await?;
            }
            if draft.announcement.is_some() {
                info!(grant = %name, namespace = %ns, identity = %grant.spec.identity_ref.name, task = %grant.spec.task_ref.name,
                      serials = ?serials, reason, "grant revoked");
            }
            announce(&ctx, &grant, draft.announcement).await;
            remove_finalizer(&ctx, &grants, &grant).await?;
            Ok(Next::OnChange)
        }
        Plan::Withhold {
            phase,
            reason,
            message,
            serials,
        } => {
            record_revocation(&ctx, &grant, &observed, &serials, RevocationCause::Withdrawn).await?;
            delete_secret_if_ours(&ctx, &grant_secrets, &grant, secret.as_ref()).await?;
            let draft = grant_status::withheld(
                grant.status.as_ref(),
                phase,
                reason,
                message.clone(),
                &serials,
                decision.clone(),
                grant.metadata.generation,
                now,
            );
            store_draft(&ctx, &grants, &grant, &draft, (&evaluated, new_decision, &decision_id), now).await?;
            if draft.announcement.is_some() {
                warn!(grant = %name, namespace = %ns, identity = %grant.spec.identity_ref.name, reason, %message,
                      revoked = ?serials, phase = ?phase, "grant withheld");
            }
            announce(&ctx, &grant, draft.announcement).await;
            Ok(Next::OnChange)
        }
        Plan::Hold {
            phase,
            ready,
            reason,
            message,
            requeue_at,
        } => {
            if !phase.is_final() {
                ensure_finalizer(&ctx, &grants, &grant).await?;
            }
            let adopted = if phase == GrantPhase::Issued {
                adopted(&previous, &grant, secret.as_ref(), &observed, now)
            } else {
                None
            };
            let draft = grant_status::held(
                grant.status.as_ref(),
                phase,
                ready,
                reason,
                message.clone(),
                decision.clone(),
                adopted,
                grant.metadata.generation,
                now,
            );
            store_draft(&ctx, &grants, &grant, &draft, (&evaluated, new_decision, &decision_id), now).await?;
            if draft.announcement.is_some() {
                info!(grant = %name, namespace = %ns, reason, %message, "grant waiting");
            }
            announce(&ctx, &grant, draft.announcement).await;
            if phase.is_final() {
                remove_finalizer(&ctx, &grants, &grant).await?;
            }
            Ok(match requeue_at {
                Some(t) => Next::After(until(now, t)),
                None => Next::OnChange,
            })
        }
    } }
    .await;
    let action = applied?;
    // Then the approvals the decision used: only once the grant's own status says what
    // became of them (a failed apply settles nothing; its retry does).
    settle_approvals(&ctx, &ns, &evaluated, issues).await;
    Ok(action)
}

/// The certificate the grant's Secret holds, when the status names another one: a
/// crash came between writing a renewed certificate's Secret and its status. The
/// status then takes the Secret's certificate, and the one it named becomes
/// superseded (it stays valid until it expires, and is revoked with the grant).
fn adopted(
    previous: &ToolGrantStatus,
    grant: &ToolGrant,
    secret: Option<&GrantSecret>,
    observed: &Observed<'_>,
    now: Timestamp,
) -> Option<(CertificateStatus, Vec<SupersededCertificate>)> {
    let SecretObs::Ours(Some(live)) = &observed.secret else {
        return None;
    };
    if previous.certificate.as_ref().map(|c| c.serial_number.as_str()) == Some(live.serial.as_str()) {
        return None;
    }
    let info = secret?.cert.as_ref()?;
    let mut superseded = previous.superseded.clone();
    if let Some(old) = &previous.certificate
        && old.not_after.0 > now
        && !superseded.iter().any(|s| s.serial_number == old.serial_number)
    {
        superseded.push(SupersededCertificate {
            serial_number: old.serial_number.clone(),
            not_after: old.not_after.clone(),
        });
    }
    superseded.retain(|s| s.serial_number != live.serial);
    let current = CertificateStatus {
        serial_number: live.serial.clone(),
        not_before: Time(info.not_before),
        not_after: Time(live.not_after),
        renew_after: Time(live.renew_at),
        lifetime_cap: previous
            .certificate
            .as_ref()
            .map(|c| c.lifetime_cap)
            .unwrap_or(crate::api::LifetimeCap::RequestedTTL),
        secret_name: secret_name(grant),
        spiffe_id: info.spiffe_id.clone(),
        sha256_fingerprint: info.sha256_fingerprint.clone(),
        grant_generation: live.grant_generation,
    };
    Some((current, superseded))
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(t))
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100))
}

fn rand_unit() -> f64 {
    rand::random::<f64>()
}

/// Marks `serials` revoked in the revocation record, then waits for the CRL that lists
/// them, unless the CRL cannot be signed now (the record alone makes them durable,
/// and the CRL lists them once it can be signed).
async fn record_revocation(
    ctx: &Context,
    grant: &ToolGrant,
    o: &Observed<'_>,
    serials: &[String],
    cause: RevocationCause,
) -> Result<(), Error> {
    if serials.is_empty() {
        return Ok(());
    }
    let status = grant.status.clone().unwrap_or_default();
    // Each serial stays listed until the latest moment its certificate could expire.
    let not_after_of = |serial: &str| -> Timestamp {
        if let Some(r) = o.records.iter().find(|r| r.serial == serial) {
            return r.not_after;
        }
        if let SecretObs::Ours(Some(c)) = &o.secret
            && c.serial == serial
        {
            return c.not_after;
        }
        status
            .certificate
            .iter()
            .filter(|c| c.serial_number == serial)
            .map(|c| c.not_after.0)
            .chain(
                status
                    .superseded
                    .iter()
                    .filter(|s| s.serial_number == serial)
                    .map(|s| s.not_after.0),
            )
            .max()
            .unwrap_or(o.now + k8s_openapi::jiff::SignedDuration::from_hours(24 * 365))
    };
    let generation_of = |serial: &str| -> i64 {
        o.records
            .iter()
            .find(|r| r.serial == serial)
            .map(|r| r.generation)
            .or_else(|| match &o.secret {
                SecretObs::Ours(Some(c)) if c.serial == serial => Some(c.grant_generation),
                _ => None,
            })
            .or_else(|| {
                status
                    .certificate
                    .as_ref()
                    .filter(|c| c.serial_number == serial)
                    .map(|c| c.grant_generation)
            })
            .unwrap_or_default()
    };
    let task_uid = o.task.as_ref().map(|t| t.uid.clone()).unwrap_or_default();
    let specs = serials
        .iter()
        .map(|s| {
            ledger::revocation(
                s,
                not_after_of(s),
                recorded_grant(grant, generation_of(s)),
                recorded_task(grant, &task_uid),
                &grant.spec.identity_ref.name,
                cause,
                o.now,
            )
        })
        .collect();
    let published = ctx.ledger.revoke(specs).await.map_err(Error::RecordRevocation)?;
    let (kind, event) = if cause == RevocationCause::MaxLifetimeReached {
        (EventKind::CertificateExpired, "expired")
    } else {
        (EventKind::CertificateRevoked, "revoked")
    };
    let finished_at = o.task.as_ref().and_then(|t| t.finished_at);
    for s in serials {
        ctx.metrics.certificate(event, cause.as_str());
        if let Some(at) = finished_at {
            ctx.metrics.revoked_after(o.now.duration_since(at).as_secs_f64());
        }
        trail::emit(
            ctx,
            grant,
            trail::Entry {
                kind,
                serial: Some(s),
                generation: generation_of(s),
                task_uid: &task_uid,
                decision_id: None,
                reason: cause.as_str(),
                message: format!("serial {s} revoked: {}", cause.as_str()),
            },
            o.now,
        );
    }
    match published {
        Published::Listed { .. } => {}
        Published::Deferred { reason, message } => {
            warn!(grant = %grant.name_any(), namespace = %grant.namespace().unwrap_or_default(), serials = ?serials,
                  reason, %message, "revocation recorded; the CRL will list it once it can be signed");
            ctx.metrics.revocation_deferred(reason);
        }
    }
    Ok(())
}

fn recorded_grant(grant: &ToolGrant, generation: i64) -> RecordedGrant {
    RecordedGrant {
        namespace: grant.namespace().unwrap_or_default(),
        name: grant.name_any(),
        uid: grant.uid().unwrap_or_default(),
        generation,
    }
}

fn recorded_task(grant: &ToolGrant, uid: &str) -> RecordedTask {
    let r = &grant.spec.task_ref;
    RecordedTask {
        api_version: r.api_version.clone(),
        kind: r.kind.clone(),
        name: r.name.clone(),
        uid: uid.to_string(),
    }
}

async fn ensure_finalizer(ctx: &Context, api: &Api<ToolGrant>, grant: &ToolGrant) -> Result<(), Error> {
    if grant.finalizers().iter().any(|f| f == FINALIZER) || grant.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    // JSON patch with a test on resourceVersion-free list state: add to the list whether
    // it exists or not.
    let patch = if grant.finalizers().is_empty() {
        json!([{ "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }])
    } else {
        json!([{ "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER }])
    };
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("valid JSON patch");
    let written = api
        .patch(&grant.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(|source| Error::WriteFinalizer {
            name: grant.name_any(),
            source,
        })?;
    ctx.written.wrote_grant(
        &grant.uid().unwrap_or_default(),
        grant.resource_version(),
        written.resource_version(),
    );
    Ok(())
}

async fn remove_finalizer(ctx: &Context, api: &Api<ToolGrant>, grant: &ToolGrant) -> Result<(), Error> {
    let Some(i) = grant.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER },
        { "op": "remove", "path": format!("/metadata/finalizers/{i}") },
    ]))
    .expect("valid JSON patch");
    match api
        .patch(&grant.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(written) => {
            let uid = grant.uid().unwrap_or_default();
            if written.metadata.deletion_timestamp.is_some() && written.finalizers().is_empty() {
                // The API server deletes it now; nothing more will be written.
                ctx.written.forget(&uid);
            } else {
                ctx.written
                    .wrote_grant(&uid, grant.resource_version(), written.resource_version());
            }
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            ctx.written.forget(&grant.uid().unwrap_or_default());
            Ok(())
        }
        Err(source) => Err(Error::WriteFinalizer {
            name: grant.name_any(),
            source,
        }),
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_secret(
    ctx: &Context,
    api: &Api<Secret>,
    grant: &ToolGrant,
    identity: &AgentIdentity,
    task: &TaskState,
    leaf: &pki::IssuedLeaf,
    bundle: &str,
    renew_at: Timestamp,
    exists: bool,
) -> Result<(), Error> {
    let name = secret_name(grant);
    let task_ref = &grant.spec.task_ref;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [
                    (LABEL_GRANT.to_string(), grant.name_any()),
                    (LABEL_IDENTITY.to_string(), identity.name_any()),
                    (LABEL_TASK.to_string(), task_ref.name.clone()),
                    ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
                ]
                .into(),
            ),
            annotations: Some(
                [
                    (ANN_RENEW_AT.to_string(), renew_at.to_string()),
                    (ANN_SERIAL.to_string(), leaf.serial_hex.clone()),
                ]
                .into(),
            ),
            owner_references: Some(vec![
                grant.controller_owner_ref(&()).expect("grant has a name and uid"),
                // The task owns the Secret too, so deleting the task garbage-collects it
                // even if the operator is down.
                OwnerReference {
                    api_version: task_ref.api_version.clone(),
                    kind: task_ref.kind.clone(),
                    name: task_ref.name.clone(),
                    uid: task.uid.clone(),
                    controller: Some(false),
                    block_owner_deletion: None,
                },
            ]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), ByteString(leaf.cert_pem.as_bytes().to_vec())),
                (
                    "tls.key".to_string(),
                    ByteString(leaf.key_pem.expose().as_bytes().to_vec()),
                ),
                ("ca.crt".to_string(), ByteString(bundle.as_bytes().to_vec())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let res = if exists {
        // Ours (checked by the decision): take every field we manage.
        api.patch(
            &name,
            &PatchParams::apply(&format!("{MANAGER}/secret")).force(),
            &Patch::Apply(&secret),
        )
        .await
    } else {
        // Create-only, so a Secret that appeared since we looked is never overwritten.
        api.create(
            &PostParams {
                field_manager: Some(format!("{MANAGER}/secret")),
                ..Default::default()
            },
            &secret,
        )
        .await
    };
    let uid = grant.uid().unwrap_or_default();
    match res {
        Ok(written) => {
            ctx.written.wrote_secret(&uid, written.resource_version());
            Ok(())
        }
        Err(source) => {
            if matches!(&source, kube::Error::Api(e) if e.code == 409) {
                // A Secret the cache did not show exists (a foreign one): look next time.
                ctx.written.secret_unknown(&uid);
            }
            Err(Error::WriteSecret { name, source })
        }
    }
}

async fn delete_secret_if_ours(
    ctx: &Context,
    api: &Api<GrantSecret>,
    grant: &ToolGrant,
    secret: Option<&GrantSecret>,
) -> Result<(), Error> {
    let Some(secret) = secret else { return Ok(()) };
    if !is_controlled_by(secret, grant) {
        return Ok(());
    }
    let dp = super::delete_exactly(secret);
    match api.delete(&secret.name_any(), &dp).await {
        Ok(_) => {
            ctx.written.deleted_secret(&grant.uid().unwrap_or_default());
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            ctx.written.deleted_secret(&grant.uid().unwrap_or_default());
            Ok(())
        }
        // A different Secret of that name (the UID precondition failed): not ours.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            ctx.written.secret_unknown(&grant.uid().unwrap_or_default());
            Ok(())
        }
        Err(source) => Err(Error::DeleteSecret {
            name: secret.name_any(),
            source,
        }),
    }
}

async fn write_status(
    ctx: &Context,
    api: &Api<ToolGrant>,
    grant: &ToolGrant,
    status: &ToolGrantStatus,
) -> Result<(), Error> {
    let name = grant.name_any();
    let written = super::apply_status(api, "ToolGrant", &name, status).await?;
    ctx.written.wrote_grant(
        &grant.uid().unwrap_or_default(),
        grant.resource_version(),
        written.resource_version(),
    );
    Ok(())
}

async fn publish(ctx: &Context, grant: &ToolGrant, type_: EventType, reason: &str, action: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(super::backoff::truncate_note(note)),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &grant.object_ref(&())).await {
        warn!(error = %e, "failed to publish event");
    }
}

/// Posts a drafted announcement (after the status that records it was written).
async fn announce(ctx: &Context, grant: &ToolGrant, announcement: Option<grant_status::Announcement>) {
    let Some(a) = announcement else { return };
    let type_ = match a.severity {
        grant_status::Severity::Normal => EventType::Normal,
        grant_status::Severity::Warning => EventType::Warning,
    };
    publish(ctx, grant, type_, a.reason, a.action, a.note).await;
}

/// Writes a drafted status if it changed; then, if the decision in it is new,
/// announces it (see [`announce_decision`]): only once it is stored.
async fn store_draft(
    ctx: &Context,
    api: &Api<ToolGrant>,
    grant: &ToolGrant,
    draft: &grant_status::Draft,
    (evaluated, new_decision, id): (&decision::Evaluated, bool, &str),
    now: Timestamp,
) -> Result<(), Error> {
    if !draft.write {
        return Ok(());
    }
    write_status(ctx, api, grant, &draft.status).await?;
    if new_decision {
        announce_decision(ctx, grant, evaluated, id, now).await;
    }
    Ok(())
}

/// Logs a new policy decision, counts it, and reports Audit policies' would-be denials
/// (an Event on the grant, the AgentPolicies' status, metrics).
async fn announce_decision(
    ctx: &Context,
    grant: &ToolGrant,
    evaluated: &decision::Evaluated,
    id: &str,
    now: Timestamp,
) {
    let Some(record) = &evaluated.record else { return };
    let ns = grant.namespace().unwrap_or_default();
    info!(grant = %grant.name_any(), namespace = %ns, identity = %grant.spec.identity_ref.name,
          task = %grant.spec.task_ref.name, decision_id = %id, outcome = %record.outcome, generation = record.generation,
          policies = ?record.policies, requester = %record.inputs.requester, reasons = ?record.reasons,
          audit_denials = ?record.audit_denials, "policy decision");
    ctx.metrics.decision(&record.outcome);
    let kind = match (record.outcome.as_str(), &record.inputs.approval) {
        ("Deny", _) => Some(EventKind::GrantDenied),
        ("Allow", Some(_)) => Some(EventKind::GrantApproved),
        _ => None,
    };
    if let Some(kind) = kind {
        trail::emit(
            ctx,
            grant,
            trail::Entry {
                kind,
                serial: None,
                generation: record.generation,
                task_uid: "",
                decision_id: Some(id),
                reason: &record.outcome,
                message: record.reasons.join("; "),
            },
            now,
        );
    }
    if evaluated.audit_denials.is_empty() {
        return;
    }
    let grant_key = format!("{ns}/{}", grant.name_any());
    let touched = ctx
        .audit
        .record(&evaluated.audit_denials, &grant_key, record.generation, id, now);
    for policy in &evaluated.audit_denials {
        ctx.metrics.audit_would_deny(policy);
    }
    for name in touched {
        let _ = ctx.audit_changed.send(name);
    }
    let note = format!(
        "Audit policies {} would deny this grant if enforced (decision {id})",
        evaluated.audit_denials.join(", ")
    );
    publish(ctx, grant, EventType::Warning, "AuditWouldDeny", "Decide", note).await;
}

/// Writes what became of each ToolGrantApproval naming this grant into its status.
async fn settle_approvals(ctx: &Context, ns: &str, evaluated: &decision::Evaluated, issued: bool) {
    let picked = match &evaluated.pick {
        Pick::Approved { name, .. } => Some(name.as_str()),
        _ => None,
    };
    for v in &evaluated.verdicts {
        let (state, message) = match (&evaluated.obs, v.state) {
            (PolicyObs::Allow, "Pending") if issued && Some(v.name.as_str()) == picked => {
                ("Used", "the grant is issued under this approval".to_string())
            }
            (PolicyObs::Allow, "Pending") if issued => (
                "Unused",
                format!(
                    "the grant is issued under ToolGrantApproval {}",
                    picked.unwrap_or("(none needed)")
                ),
            ),
            // Every usable approval was tried: none satisfies the policy.
            (PolicyObs::RequireApproval { message }, "Pending") => ("Refused", message.clone()),
            (_, state) => (state, v.message.clone()),
        };
        let current = ctx
            .approvals
            .get(&ObjectRef::new(&v.name).within(ns))
            .and_then(|a| a.status.clone())
            .unwrap_or_default();
        if current.state.as_deref() == Some(state) && current.message.as_deref() == Some(message.as_str()) {
            continue;
        }
        let api: Api<crate::api::ToolGrantApproval> = Api::namespaced(ctx.client.clone(), ns);
        let patch = json!({
            "apiVersion": crate::api::api_version(), "kind": "ToolGrantApproval",
            "status": { "state": state, "message": message, "time": Time(Timestamp::now()) },
        });
        match api
            .patch_status(
                &v.name,
                &PatchParams::apply(&format!("{MANAGER}/status")).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => info!(approval = %v.name, namespace = %ns, state, %message, "approval settled"),
            Err(e) => warn!(approval = %v.name, namespace = %ns, error = %e, "failed to write approval status"),
        }
    }
}
