//! Revocation that depends on no object a requester can touch.
//!
//! A grant's own reconcile revokes its certificates while the grant exists. A grant
//! whose finalizer was removed and that was then deleted (while the operator ran or
//! while it was down) never reaches that reconcile again. The sweeper closes the gap
//! from the revocation record: any unrevoked record whose grant object (by UID) is
//! gone, on the API server's word, is revoked as `GrantVanished` (threat 37). It looks
//! when the grant watch reports a deletion, once every cache is filled at start, and
//! then every [`SWEEP_EVERY`] as a safety net.
//!
//! It also ends each record's life: once its certificate has expired (plus
//! [`EXPIRY_GRACE`] for relying parties' clock skew) the record's finalizer comes off
//! and the record is deleted. A record someone else deleted early is held by that
//! finalizer, and if it was not revoked yet, it is revoked first.

use std::{collections::BTreeSet, time::Duration};

use futures::StreamExt;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::ledger::{self, Ledger, Published};
use crate::{
    api::{
        CertificateRecord, RecordedGrant, RecordedTask, RevocationCause, ToolGrant,
        names::{LABEL_GRANT, RECORD_FINALIZER},
    },
    state::{
        cached::{GrantSecret, SecretStore},
        ready::Ready,
        records::RecordFacts,
    },
};

/// How often every record is looked at, besides the events that trigger a look.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long after its certificate expired a record is kept: relying parties whose
/// clocks run behind still find the serial in the CRL.
pub const EXPIRY_GRACE: SignedDuration = SignedDuration::from_mins(5);
/// Records looked at concurrently.
const CONCURRENCY: usize = 8;

/// What the sweeper reads and writes.
pub struct Sweeper {
    pub client: Client,
    pub ledger: Ledger,
    /// The CA's namespace, where the records are.
    pub namespace: String,
    /// Only grants in this namespace are ours to judge (a scoped operator).
    pub watch_namespace: Option<String>,
    pub grants: crate::state::grants::GrantCache,
    pub grants_ready: Ready,
    /// Grant Secrets (certificates only), to find one still holding a revoked serial.
    pub secrets: SecretStore,
    pub records_ready: Ready,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// What to do with one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: live and its grant exists, or revoked and not expired yet.
    Keep,
    /// Expired: take the finalizer off and delete it.
    Retire,
    /// Unrevoked and its grant may be gone: ask the API server.
    CheckGrant,
    /// Unrevoked and being deleted: revoke before letting it go.
    Revoke(RevocationCause),
    /// Revoked, but a Secret still holds it and its grant may be gone (a crash between
    /// the revocation and the withdrawal): ask the API server, then withdraw it.
    CheckWithdrawn,
}

/// Judges one record from memory (pure).
pub fn judge(r: &RecordFacts, grant_cached: bool, in_a_secret: bool, now: Timestamp) -> Verdict {
    if r.not_after + EXPIRY_GRACE < now {
        return Verdict::Retire;
    }
    if r.revoked.is_some() {
        return if in_a_secret && !grant_cached {
            Verdict::CheckWithdrawn
        } else {
            Verdict::Keep
        };
    }
    if r.deleting {
        return Verdict::Revoke(RevocationCause::GrantVanished);
    }
    if grant_cached {
        Verdict::Keep
    } else {
        Verdict::CheckGrant
    }
}

impl Sweeper {
    fn ours(&self, r: &RecordFacts) -> bool {
        self.watch_namespace.as_ref().is_none_or(|ns| *ns == r.grant_namespace)
    }

    fn grant_cached(&self, r: &RecordFacts) -> bool {
        self.grants
            .get(&r.grant_namespace, &r.grant_name)
            .is_some_and(|g| g.facts.uid == r.grant_uid)
    }

    /// Runs until `deleted` closes: `deleted` carries the UIDs of grants the watch saw go.
    pub async fn run(self, mut deleted: mpsc::UnboundedReceiver<String>) {
        if !self.records_ready.wait().await || !self.grants_ready.wait().await {
            return;
        }
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            let deleted_uids: Option<BTreeSet<String>> = tokio::select! {
                uid = deleted.recv() => {
                    let Some(uid) = uid else { return };
                    let mut uids = BTreeSet::from([uid]);
                    while let Ok(more) = deleted.try_recv() {
                        uids.insert(more);
                    }
                    Some(uids)
                }
                _ = tick.tick() => None,
            };
            let now = Timestamp::now();
            let held = self.secrets.serials();
            // Judged where they are: only the records that need something are copied out.
            let needs = |r: &RecordFacts| {
                self.ours(r) && judge(r, self.grant_cached(r), held.contains(&r.serial), now) != Verdict::Keep
            };
            let records: Vec<RecordFacts> = match deleted_uids {
                Some(uids) => uids
                    .iter()
                    .flat_map(|u| self.ledger.records().for_grant(u))
                    .filter(|r| needs(r))
                    .collect(),
                None => self.ledger.records().select(needs),
            };
            let held = &held;
            let this = &self;
            futures::stream::iter(records)
                .for_each_concurrent(CONCURRENCY, |r| async move {
                    let verdict = judge(&r, this.grant_cached(&r), held.contains(&r.serial), now);
                    if let Err(e) = this.act(&r, verdict).await {
                        warn!(serial = %r.serial, grant = %r.grant_name, namespace = %r.grant_namespace,
                              error = %e, "failed to settle a certificate record; retrying at the next sweep");
                    }
                })
                .await;
        }
    }

    async fn act(&self, r: &RecordFacts, verdict: Verdict) -> Result<(), SweepError> {
        match verdict {
            Verdict::Keep => Ok(()),
            Verdict::Retire => self.retire(r).await,
            Verdict::Revoke(cause) => self.revoke(r, cause).await,
            Verdict::CheckWithdrawn => {
                if self.grant_exists(r).await? {
                    Ok(())
                } else {
                    self.withdraw_secrets(r).await
                }
            }
            Verdict::CheckGrant => {
                if self.grant_exists(r).await? {
                    // The grant exists: its own reconcile owns its certificates.
                    Ok(())
                } else {
                    self.revoke(r, RevocationCause::GrantVanished).await
                }
            }
        }
    }

    /// Whether the record's grant object exists, on the API server's word.
    async fn grant_exists(&self, r: &RecordFacts) -> Result<bool, SweepError> {
        let api: Api<ToolGrant> = Api::namespaced(self.client.clone(), &r.grant_namespace);
        let grant = api
            .get_opt(&r.grant_name)
            .await
            .map_err(|source| SweepError::FetchGrant {
                name: r.grant_name.clone(),
                source,
            })?;
        Ok(grant.is_some_and(|g| g.metadata.uid.as_deref() == Some(r.grant_uid.as_str())))
    }

    async fn revoke(&self, r: &RecordFacts, cause: RevocationCause) -> Result<(), SweepError> {
        let spec = ledger::revocation(
            &r.serial,
            r.not_after,
            RecordedGrant {
                namespace: r.grant_namespace.clone(),
                name: r.grant_name.clone(),
                uid: r.grant_uid.clone(),
                generation: r.generation,
            },
            // Only used if the record itself is gone, which the finalizer prevents.
            RecordedTask {
                api_version: String::new(),
                kind: String::new(),
                name: String::new(),
                uid: r.task_uid.clone(),
            },
            "",
            cause,
            Timestamp::now(),
        );
        let published = self.ledger.revoke(vec![spec]).await.map_err(SweepError::Revoke)?;
        self.metrics.swept(cause.as_str());
        // Its Secret may outlive it: the task co-owns it, so the garbage collector keeps
        // it while the task runs. It holds a revoked key and blocks a new grant of the
        // same name: withdraw it, as the grant's own revocation would have.
        self.withdraw_secrets(r).await?;
        info!(serial = %r.serial, grant = %r.grant_name, namespace = %r.grant_namespace, grant_uid = %r.grant_uid,
              reason = cause.as_str(), listed = matches!(published, Published::Listed { .. }),
              "certificate revoked: its grant is gone and its revocation was never recorded");
        Ok(())
    }

    /// Deletes the Secrets of the vanished grant object (never one of a new grant of
    /// the same name).
    async fn withdraw_secrets(&self, r: &RecordFacts) -> Result<(), SweepError> {
        // Listed through the compact type: the keys are never decoded.
        let api: Api<GrantSecret> = Api::namespaced(self.client.clone(), &r.grant_namespace);
        let lp = ListParams::default().labels(&format!("{LABEL_GRANT}={}", r.grant_name));
        let list = api.list(&lp).await.map_err(|source| SweepError::WithdrawSecret {
            name: r.grant_name.clone(),
            source,
        })?;
        // The garbage collector drops the reference to the vanished owner while the task
        // still owns the Secret, so it is known by the serial it holds: one the record
        // says belongs to that grant object. A Secret another grant object controls is
        // never touched.
        let vanished = |s: &GrantSecret| {
            let controller = s.owner_references().iter().find(|o| o.controller == Some(true));
            controller.is_none_or(|o| o.uid == r.grant_uid)
                && s.serial.as_deref().is_some_and(|serial| {
                    self.ledger
                        .records()
                        .get(serial)
                        .is_some_and(|f| f.grant_uid == r.grant_uid)
                })
        };
        for secret in list.items.iter().filter(|s| vanished(s)) {
            let dp = super::delete_exactly(secret);
            match api.delete(&secret.name_any(), &dp).await {
                Ok(_) => info!(secret = %secret.name_any(), namespace = %r.grant_namespace,
                               "Secret of a vanished grant withdrawn"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(source) => {
                    return Err(SweepError::WithdrawSecret {
                        name: secret.name_any(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    async fn retire(&self, r: &RecordFacts) -> Result<(), SweepError> {
        let api: Api<CertificateRecord> = Api::namespaced(self.client.clone(), &self.namespace);
        let record = match api.get_opt(&r.serial).await {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(()),
            Err(source) => {
                return Err(SweepError::Retire {
                    serial: r.serial.clone(),
                    source,
                });
            }
        };
        let finalizers = record.metadata.finalizers.clone().unwrap_or_default();
        if let Some(i) = finalizers.iter().position(|f| f == RECORD_FINALIZER) {
            let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
                { "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": RECORD_FINALIZER },
                { "op": "remove", "path": format!("/metadata/finalizers/{i}") },
            ]))
            .expect("valid JSON patch");
            match api
                .patch(&r.serial, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
                Err(source) => {
                    return Err(SweepError::Retire {
                        serial: r.serial.clone(),
                        source,
                    });
                }
            }
        }
        match api.delete(&r.serial, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(SweepError::Retire {
                serial: r.serial.clone(),
                source,
            }),
        }
    }
}

/// Why a record could not be settled; each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("failed to read ToolGrant {name}: {source}")]
    FetchGrant {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to revoke: {0}")]
    Revoke(#[source] ledger::LedgerError),
    #[error("failed to withdraw Secret {name} of a vanished grant: {source}")]
    WithdrawSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to retire the expired CertificateRecord {serial}: {source}")]
    Retire {
        serial: String,
        #[source]
        source: kube::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(not_after: i64, revoked: bool, deleting: bool) -> RecordFacts {
        RecordFacts {
            deleting,
            ..RecordFacts::sample("aa", not_after, revoked.then_some(1))
        }
    }

    #[test]
    fn threat_37_a_live_record_without_its_grant_is_checked_and_one_being_deleted_is_revoked() {
        let now = Timestamp::from_second(1000).unwrap();
        assert_eq!(judge(&facts(2000, false, false), true, false, now), Verdict::Keep);
        assert_eq!(
            judge(&facts(2000, false, false), false, false, now),
            Verdict::CheckGrant
        );
        assert_eq!(
            judge(&facts(2000, false, true), true, false, now),
            Verdict::Revoke(RevocationCause::GrantVanished)
        );
    }

    /// A crash between revoking a vanished grant's serial and deleting its Secret: the
    /// next sweep finds the Secret still holding the revoked serial and withdraws it.
    #[test]
    fn threat_31_a_revoked_serial_still_in_a_vanished_grants_secret_is_withdrawn() {
        let now = Timestamp::from_second(1000).unwrap();
        assert_eq!(
            judge(&facts(2000, true, false), false, true, now),
            Verdict::CheckWithdrawn
        );
        assert_eq!(
            judge(&facts(2000, true, false), true, true, now),
            Verdict::Keep,
            "its grant handles it"
        );
        assert_eq!(judge(&facts(2000, true, false), false, false, now), Verdict::Keep);
    }

    #[test]
    fn threat_36_a_revoked_record_stays_until_its_certificate_expired() {
        let now = Timestamp::from_second(10_000).unwrap();
        assert_eq!(
            judge(&facts(10_001, true, true), true, false, now),
            Verdict::Keep,
            "even when deleted early"
        );
        assert_eq!(
            judge(&facts(10_000 - 60, true, false), true, true, now),
            Verdict::Keep,
            "within the grace"
        );
        assert_eq!(
            judge(&facts(10_000 - 301, true, false), false, false, now),
            Verdict::Retire
        );
        assert_eq!(
            judge(&facts(10_000 - 301, false, false), false, false, now),
            Verdict::Retire
        );
    }
}
