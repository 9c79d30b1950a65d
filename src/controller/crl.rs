//! The revocation ledger and the CRL built from it, both in ConfigMap `mandate-crl`.
//!
//! One ConfigMap holds the entries (`revoked.json`), the CRL number (`crlNumber`) and
//! the signed CRL (`crl.pem`), written together under `resourceVersion`, so the CRL
//! can never disagree with the ledger, the number only increases across restarts and
//! failovers (threat 23), and an entry stays until the certificate it names would have
//! expired. Revocations are batched: every request waiting when a write starts goes
//! into that write, and each is acknowledged only once it is stored.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::ca::CaState;
use crate::pki::{CrlEntry, CrlRequest, OffsetDateTime, RevocationReason};

pub const CRL_KEY: &str = "crl.pem";
const LEDGER_KEY: &str = "revoked.json";
const NUMBER_KEY: &str = "crlNumber";
/// Most revocations folded into one write; bounds the time one write takes.
const MAX_BATCH: usize = 1000;

/// One revoked certificate, as stored in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    pub serial: String,
    pub not_after: Timestamp,
    pub revoked_at: Timestamp,
    pub reason: String,
    /// `<namespace>/<grant>`, for audit.
    pub grant: String,
}

impl Revoked {
    fn rfc5280_reason(&self) -> RevocationReason {
        match self.reason.as_str() {
            "ScopeChanged" | "SecretLost" => RevocationReason::Superseded,
            "IdentitySuspended" | "IdentityDeleted" | "ExceedsIdentityCeiling" | "InvalidToolName" => {
                RevocationReason::PrivilegeWithdrawn
            }
            _ => RevocationReason::CessationOfOperation,
        }
    }
}

/// Why a revocation could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("failed to record revocations: the CA is unavailable ({0})")]
    CaUnavailable(String),
    #[error("failed to write the CRL ConfigMap: {0}")]
    Write(String),
    #[error("failed to sign the CRL: {0}")]
    Sign(String),
    #[error("the revocation ledger stopped")]
    Stopped,
}

struct Request {
    entries: Vec<Revoked>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the ledger task.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Request>,
}

impl Ledger {
    /// Records `entries` on the CRL; returns once the signed CRL holding them is stored.
    pub async fn revoke(&self, entries: Vec<Revoked>) -> Result<(), LedgerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request { entries, done })
            .await
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?.map_err(LedgerError::Write)
    }
}

/// The ledger's stored form.
#[derive(Debug, Default)]
struct Stored {
    number: u64,
    entries: Vec<Revoked>,
    resource_version: Option<String>,
}

fn parse(cm: &ConfigMap) -> Stored {
    let data = cm.data.clone().unwrap_or_default();
    Stored {
        number: data.get(NUMBER_KEY).and_then(|n| n.parse().ok()).unwrap_or(0),
        entries: data
            .get(LEDGER_KEY)
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default(),
        resource_version: cm.metadata.resource_version.clone(),
    }
}

/// Merges new entries into the ledger (an entry already there keeps its first
/// revocation time) and drops entries whose certificates have expired.
pub fn merge(existing: &[Revoked], new: &[Revoked], now: Timestamp) -> Vec<Revoked> {
    let mut by_serial: BTreeMap<&str, &Revoked> = BTreeMap::new();
    for e in existing.iter().chain(new) {
        by_serial.entry(e.serial.as_str()).or_insert(e);
    }
    by_serial.into_values().filter(|e| e.not_after > now).cloned().collect()
}

fn to_offset(t: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.as_second()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Configuration of the ledger task.
pub struct LedgerConfig {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub validity: Duration,
    pub ca: watch::Receiver<CaState>,
}

/// Starts the ledger task: it writes batches as they arrive and re-signs the CRL at
/// half its validity so `nextUpdate` never passes.
pub fn spawn(cfg: LedgerConfig) -> Ledger {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(run(cfg, rx));
    Ledger { tx }
}

async fn run(cfg: LedgerConfig, mut rx: mpsc::Receiver<Request>) {
    let api: Api<ConfigMap> = Api::namespaced(cfg.client.clone(), &cfg.namespace);
    let mut refresh = tokio::time::interval(cfg.validity / 2);
    // The ConfigMap as our last write left it: the next write starts from it instead
    // of reading it back (a GET of the whole ledger per batch). Its resourceVersion
    // guards the write, so if anyone else wrote since, the write conflicts and the
    // ConfigMap is read fresh.
    let mut last: Option<ConfigMap> = None;
    loop {
        let mut batch: Vec<Request> = vec![];
        tokio::select! {
            req = rx.recv() => match req {
                Some(r) => batch.push(r),
                None => return,
            },
            _ = refresh.tick() => {}
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let new: Vec<Revoked> = batch.iter().flat_map(|r| r.entries.iter().cloned()).collect();
        let result = write(&api, &cfg, &new, &mut last).await;
        if let Err(e) = &result {
            warn!(error = %e, "failed to publish the CRL");
        }
        for r in batch {
            let _ = r.done.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
    }
}

/// Reads (or starts from `last`), merges, signs and writes, retrying on write
/// conflicts; leaves what it wrote in `last`.
async fn write(
    api: &Api<ConfigMap>,
    cfg: &LedgerConfig,
    new: &[Revoked],
    last: &mut Option<ConfigMap>,
) -> Result<(), LedgerError> {
    for _attempt in 0..10 {
        let ca_state = cfg.ca.borrow().clone();
        let ca = match ca_state {
            CaState::Ready(ca) => ca,
            CaState::Unavailable { message, .. } => return Err(LedgerError::CaUnavailable(message)),
        };
        let current = match last.take() {
            Some(ours) => Some(ours),
            None => api
                .get_opt(&cfg.name)
                .await
                .map_err(|e| LedgerError::Write(e.to_string()))?,
        };
        let stored = current.as_ref().map(parse).unwrap_or_default();
        let now = Timestamp::now();
        let entries = merge(&stored.entries, new, now);
        let number = stored.number + 1;
        let next_update = now + k8s_openapi::jiff::SignedDuration::try_from(cfg.validity).unwrap_or_default();
        let pem = ca
            .sign_crl(&CrlRequest {
                crl_number: number,
                this_update: to_offset(now),
                next_update: to_offset(next_update),
                entries: entries
                    .iter()
                    .map(|e| CrlEntry {
                        serial_hex: e.serial.clone(),
                        revoked_at: to_offset(e.revoked_at),
                        reason: e.rfc5280_reason(),
                    })
                    .collect(),
            })
            .map_err(|e| LedgerError::Sign(e.to_string()))?;
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                resource_version: stored.resource_version.clone(),
                labels: Some([("app.kubernetes.io/managed-by".to_string(), "mandate".to_string())].into()),
                ..Default::default()
            },
            data: Some(
                [
                    (CRL_KEY.to_string(), pem),
                    (NUMBER_KEY.to_string(), number.to_string()),
                    (
                        LEDGER_KEY.to_string(),
                        serde_json::to_string(&entries).expect("ledger serialises"),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let res = match current {
            Some(_) => api.replace(&cfg.name, &PostParams::default(), &cm).await,
            None => api.create(&PostParams::default(), &cm).await,
        };
        match res {
            Ok(written) => {
                *last = Some(written);
                if !new.is_empty() {
                    info!(
                        crl_number = number,
                        added = new.len(),
                        entries = entries.len(),
                        "CRL published"
                    );
                } else {
                    debug!(crl_number = number, "CRL re-signed");
                }
                return Ok(());
            }
            // Someone else wrote in between (another replica, or our own earlier write
            // not yet seen): read again and merge again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(LedgerError::Write(e.to_string())),
        }
    }
    Err(LedgerError::Write("too many write conflicts".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(serial: &str, not_after: i64, revoked_at: i64) -> Revoked {
        Revoked {
            serial: serial.into(),
            not_after: Timestamp::from_second(not_after).unwrap(),
            revoked_at: Timestamp::from_second(revoked_at).unwrap(),
            reason: "TaskCompleted".into(),
            grant: "ns/g".into(),
        }
    }

    #[test]
    fn threat_23_entries_stay_until_their_certificate_expires() {
        let now = Timestamp::from_second(1000).unwrap();
        let merged = merge(
            &[entry("aa", 999, 1), entry("bb", 2000, 1)],
            &[entry("cc", 1500, 900)],
            now,
        );
        let serials: Vec<_> = merged.iter().map(|e| e.serial.as_str()).collect();
        assert_eq!(serials, ["bb", "cc"]);
    }

    #[test]
    fn revoking_again_keeps_the_first_revocation_time() {
        let now = Timestamp::from_second(10).unwrap();
        let merged = merge(&[entry("aa", 100, 1)], &[entry("aa", 100, 5)], now);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].revoked_at, Timestamp::from_second(1).unwrap());
    }
}
