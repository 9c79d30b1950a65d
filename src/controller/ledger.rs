//! The revocation record (one CertificateRecord per signed serial) and the CRL built
//! from it (ConfigMap `mandate-crl`).
//!
//! The record is the truth; the CRL is derived from it:
//! - a serial is recorded ([`Ledger::record_issued`]) before its certificate is written
//!   anywhere, so a crash at any later step leaves it findable;
//! - it is marked revoked ([`Ledger::revoke`]) before its Secret is deleted. The
//!   CRD's own CEL rules make that mark permanent, and a finalizer keeps the record
//!   until its certificate has expired, so nothing un-revokes (threat 36);
//! - the CRL lists every revoked, unexpired record. It is re-signed after each batch
//!   of revocations and at half its validity. A revocation waits for the CRL that lists
//!   it, unless the CRL cannot be signed right now (no usable CA, an unreadable CRL
//!   ConfigMap): then the record alone has made it durable, the Secret is withdrawn
//!   anyway, and the CRL catches up once it can be signed (threat 38).
//!
//! The CRL ConfigMap is read strictly: a `crlNumber` or `crl.pem` that does not parse,
//! or a missing ConfigMap while records exist, stops issuance and is never overwritten
//! (an operator restores it, or deliberately resets it by creating it empty). The CRL
//! number is the signing time in milliseconds, or one more than the highest number
//! seen if that is larger, so it never goes backwards, not even across a reset.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::core::v1::ConfigMap,
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::{
    api::{
        CertificateRecord, CertificateRecordSpec, RecordedGrant, RecordedRevocation, RecordedTask, RevocationCause,
        names::{
            CRL_KEY, CRL_NUMBER_KEY, CRL_PART_KEY, CRL_PARTS_KEY, CRL_SHA256_KEY, LABEL_CRL, LABEL_GRANT,
            LABEL_GRANT_NAMESPACE, LABEL_GRANT_UID, MANAGED_BY, MANAGER, RECORD_FINALIZER,
        },
    },
    failpoint::crash_point,
    pki::{CaState, CrlEntry, CrlRequest, OffsetDateTime, RevocationReason},
    state::{
        crl::{Head, Layout, MAX_PARTS, Served, assemble, layout, parse_head},
        ready::Ready,
        records::{RecordFacts, RecordIndex},
    },
};

/// The key an earlier version kept its ledger under; read once to migrate it.
const LEGACY_LEDGER_KEY: &str = "revoked.json";
/// Most revocations folded into one CRL write; bounds the time one write takes.
const MAX_BATCH: usize = 1000;
/// A part nothing names is deleted once it is this old: a writer names its parts
/// within seconds of creating them, so an older one is an orphan.
const ORPHAN_AGE: Duration = Duration::from_secs(600);
/// Retries of a failed CRL write back off from this to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why the CRL could not be published; each variant names the failed step.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("failed to create CertificateRecord {serial}: {source}")]
    CreateRecord {
        serial: String,
        #[source]
        source: kube::Error,
    },
    #[error("CertificateRecord {serial} already exists and describes another certificate")]
    RecordConflict { serial: String },
    #[error("failed to mark CertificateRecord {serial} revoked: {source}")]
    MarkRevoked {
        serial: String,
        #[source]
        source: kube::Error,
    },
    #[error("the CA is unavailable ({reason}): {message}")]
    CaUnavailable { reason: &'static str, message: String },
    #[error("failed to read ConfigMap {name}: {source}")]
    ReadCrl {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "ConfigMap {name} cannot be read ({detail}); nothing is issued until it is fixed: restore it from a backup, \
         or replace it with an empty ConfigMap of that name to rebuild the CRL from the CertificateRecords"
    )]
    CrlUnreadable { name: String, detail: String },
    #[error(
        "ConfigMap {name} is missing while {records} CertificateRecords exist; nothing is issued until it is back: \
         restore it from a backup, or create an empty ConfigMap of that name to rebuild the CRL from the records"
    )]
    CrlMissing { name: String, records: usize },
    #[error("the CRL would hold {bytes} bytes, more than {MAX_PARTS} parts of {part_bytes} bytes")]
    CrlTooLarge { bytes: usize, part_bytes: usize },
    #[error("failed to write CRL part {name}: {source}")]
    WritePart {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to sign the CRL: {0}")]
    Sign(#[source] crate::pki::PkiError),
    #[error("failed to write ConfigMap {name}: {source}")]
    WriteCrl {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("ConfigMap {name} changed under every one of {attempts} writes")]
    Conflicts { name: String, attempts: usize },
    #[error("the revocation ledger stopped")]
    Stopped,
}

impl LedgerError {
    /// CamelCase reason for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            LedgerError::CreateRecord { .. } => "RecordCertificateFailed",
            LedgerError::RecordConflict { .. } => "CertificateRecordConflict",
            LedgerError::MarkRevoked { .. } => "RecordRevocationFailed",
            LedgerError::CaUnavailable { reason, .. } => reason,
            LedgerError::ReadCrl { .. } => "ReadCrlFailed",
            LedgerError::CrlUnreadable { .. } => "CrlUnreadable",
            LedgerError::CrlMissing { .. } => "CrlMissing",
            LedgerError::CrlTooLarge { .. } => "CrlTooLarge",
            LedgerError::Sign(_) => "SignCrlFailed",
            LedgerError::WriteCrl { .. } => "WriteCrlFailed",
            LedgerError::WritePart { .. } => "WriteCrlFailed",
            LedgerError::Conflicts { .. } => "WriteCrlFailed",
            LedgerError::Stopped => "LedgerStopped",
        }
    }

    /// Whether issuance must stop while this lasts: the CRL ConfigMap is unusable and
    /// a certificate issued now could not be revoked where relying parties look.
    fn stops_issuance(&self) -> bool {
        matches!(
            self,
            LedgerError::CrlUnreadable { .. } | LedgerError::CrlMissing { .. } | LedgerError::CrlTooLarge { .. }
        )
    }
}

/// Whether the CRL can take new revocations, as issuance sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The records and the CRL ConfigMap have not been read yet.
    Loading,
    Ready,
    /// The CRL ConfigMap is unusable: issue nothing.
    Unavailable {
        reason: &'static str,
        message: String,
    },
}

/// Where a revocation stands once [`Ledger::revoke`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    /// In the signed CRL with this number.
    Listed { crl_number: u64 },
    /// Recorded (durable, final) but not in a signed CRL yet: the CRL will list it as
    /// soon as it can be signed.
    Deferred { reason: &'static str, message: String },
}

/// What a CRL write replies to each revocation in it.
type WriteResult = Result<u64, (&'static str, String)>;

struct Request {
    /// Serials the request's caller has just marked revoked (their records may not be
    /// in the index yet).
    revoked: Vec<RecordFacts>,
    done: oneshot::Sender<WriteResult>,
}

/// Handle to the revocation record and the CRL writer.
#[derive(Clone)]
pub struct Ledger {
    records_api: Api<CertificateRecord>,
    records: RecordIndex,
    tx: mpsc::Sender<Request>,
    health: watch::Receiver<Health>,
}

/// Configuration of the ledger.
pub struct LedgerConfig {
    pub client: Client,
    /// The CA's namespace: the records and the CRL ConfigMap live there.
    pub namespace: String,
    pub crl_name: String,
    /// Largest CRL stored inline, and the size of each part of a larger one.
    pub part_bytes: usize,
    pub validity: Duration,
    /// The stored CRL as the served watch assembles it: damage to a part is seen there.
    pub served: watch::Receiver<Served>,
    pub ca: watch::Receiver<CaState>,
    pub records: RecordIndex,
    pub records_ready: Ready,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// Starts the CRL writer and returns the handle.
pub fn spawn(cfg: LedgerConfig) -> Ledger {
    let (tx, rx) = mpsc::channel(4096);
    let (health_tx, health) = watch::channel(Health::Loading);
    let ledger = Ledger {
        records_api: Api::namespaced(cfg.client.clone(), &cfg.namespace),
        records: cfg.records.clone(),
        tx,
        health,
    };
    tokio::spawn(run(cfg, rx, health_tx));
    ledger
}

/// The record of a certificate about to be issued, or (with `revocation`) one being revoked.
pub fn new_record(spec: CertificateRecordSpec) -> CertificateRecord {
    let mut r = CertificateRecord::new(&spec.serial_number.clone(), spec);
    r.metadata.finalizers = Some(vec![RECORD_FINALIZER.to_string()]);
    r.metadata.labels = Some(
        [
            (LABEL_GRANT.to_string(), r.spec.grant.name.clone()),
            (LABEL_GRANT_NAMESPACE.to_string(), r.spec.grant.namespace.clone()),
            (LABEL_GRANT_UID.to_string(), r.spec.grant.uid.clone()),
            ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
        ]
        .into(),
    );
    r
}

impl Ledger {
    /// The ledger's current health, for issuance.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// A receiver of health changes (every change re-checks every grant).
    pub fn health_changes(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// The in-memory record.
    pub fn records(&self) -> &RecordIndex {
        &self.records
    }

    /// Records a certificate before it is written anywhere.
    pub async fn record_issued(&self, spec: CertificateRecordSpec) -> Result<(), LedgerError> {
        let serial = spec.serial_number.clone();
        let record = new_record(spec);
        match self.create(&record).await {
            Ok(_) => Ok(()),
            // A retry of a create that landed: the same certificate, nothing to do.
            Err(kube::Error::Api(e)) if e.code == 409 => match self.records_api.get_opt(&serial).await {
                Ok(Some(existing)) if existing.spec == record.spec => Ok(()),
                Ok(_) => Err(LedgerError::RecordConflict { serial }),
                Err(source) => Err(LedgerError::CreateRecord { serial, source }),
            },
            Err(source) => Err(LedgerError::CreateRecord { serial, source }),
        }
    }

    /// Marks each record revoked (creating the ones that do not exist, such as serials
    /// issued before records existed), then waits for the CRL listing them, unless the
    /// CRL cannot be signed now. Once this returns `Ok`, the revocations are durable.
    pub async fn revoke(&self, specs: Vec<CertificateRecordSpec>) -> Result<Published, LedgerError> {
        if specs.is_empty() {
            return Ok(Published::Listed { crl_number: 0 });
        }
        let mut facts = Vec::with_capacity(specs.len());
        for spec in specs {
            facts.push(self.mark_revoked(spec).await?);
        }
        let (done, rx) = oneshot::channel();
        let stopped = || Published::Deferred {
            reason: "LedgerStopped",
            message: "the CRL writer has stopped".into(),
        };
        if self.tx.send(Request { revoked: facts, done }).await.is_err() {
            return Ok(stopped());
        }
        Ok(match rx.await {
            Ok(Ok(crl_number)) => Published::Listed { crl_number },
            Ok(Err((reason, message))) => Published::Deferred { reason, message },
            Err(_) => stopped(),
        })
    }

    /// Creates a record and notes it in the index at once.
    async fn create(&self, record: &CertificateRecord) -> Result<CertificateRecord, kube::Error> {
        let pp = PostParams {
            field_manager: Some(format!("{MANAGER}/ledger")),
            ..Default::default()
        };
        let written = self.records_api.create(&pp, record).await?;
        self.records.wrote(&written);
        Ok(written)
    }

    async fn mark_revoked(&self, spec: CertificateRecordSpec) -> Result<RecordFacts, LedgerError> {
        let serial = spec.serial_number.clone();
        if let Some(f) = self.records.get(&serial)
            && f.revoked.is_some()
        {
            return Ok(f);
        }
        let revocation = spec.revocation.clone().expect("a revocation to record");
        let patch = serde_json::json!({ "spec": { "revocation": revocation } });
        let pp = PatchParams {
            field_manager: Some(format!("{MANAGER}/ledger")),
            ..Default::default()
        };
        match self.records_api.patch(&serial, &pp, &Patch::Merge(&patch)).await {
            Ok(written) => {
                self.records.wrote(&written);
                Ok(RecordFacts::of(&written))
            }
            Err(kube::Error::Api(e)) if e.code == 404 => match self.create(&new_record(spec)).await {
                Ok(written) => Ok(RecordFacts::of(&written)),
                Err(source) => Err(LedgerError::MarkRevoked { serial, source }),
            },
            // The API server refused to change an existing revocation: someone (another
            // reconcile, the sweeper) revoked it first. It is revoked either way.
            Err(kube::Error::Api(e)) if e.code == 422 => match self.records_api.get(&serial).await {
                Ok(r) if r.spec.revocation.is_some() => {
                    self.records.wrote(&r);
                    Ok(RecordFacts::of(&r))
                }
                Ok(_) => Err(LedgerError::MarkRevoked {
                    serial,
                    source: kube::Error::Api(e),
                }),
                Err(source) => Err(LedgerError::MarkRevoked { serial, source }),
            },
            Err(source) => Err(LedgerError::MarkRevoked { serial, source }),
        }
    }
}

/// A revocation's record spec: what is known of the certificate, plus when and why.
pub fn revocation(
    serial: &str,
    not_after: Timestamp,
    grant: RecordedGrant,
    task: RecordedTask,
    identity: &str,
    cause: RevocationCause,
    now: Timestamp,
) -> CertificateRecordSpec {
    CertificateRecordSpec {
        serial_number: serial.to_string(),
        not_after: Time(not_after),
        grant,
        task,
        identity: identity.to_string(),
        revocation: Some(RecordedRevocation {
            time: Time(now),
            reason: cause,
        }),
    }
}

fn rfc5280_reason(cause: RevocationCause) -> RevocationReason {
    match cause {
        RevocationCause::ScopeChanged | RevocationCause::SecretLost => RevocationReason::Superseded,
        RevocationCause::IdentitySuspended | RevocationCause::IdentityDeleted | RevocationCause::Withdrawn => {
            RevocationReason::PrivilegeWithdrawn
        }
        RevocationCause::TaskCompleted
        | RevocationCause::TaskFailed
        | RevocationCause::TaskDeleted
        | RevocationCause::TaskDeadlineExceeded
        | RevocationCause::GrantDeleted
        | RevocationCause::GrantVanished
        | RevocationCause::MaxLifetimeReached => RevocationReason::CessationOfOperation,
    }
}

fn to_offset(t: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.as_second()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The CRL ConfigMap as read, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    pub head: Head,
    /// Entries of an earlier version's ledger still to be turned into records.
    pub legacy: Vec<LegacyEntry>,
}

/// One entry of an earlier version's `revoked.json`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyEntry {
    pub serial: String,
    pub not_after: Timestamp,
    pub revoked_at: Timestamp,
    #[serde(default)]
    pub grant: String,
}

/// Reads the CRL ConfigMap's data strictly (see [`parse_head`]), with the ledger an
/// earlier version kept beside it. An empty ConfigMap is a deliberate reset.
pub fn parse_stored(data: &BTreeMap<String, String>) -> Result<Stored, String> {
    let head = parse_head(data)?;
    let legacy = match data.get(LEGACY_LEDGER_KEY) {
        None => vec![],
        Some(text) => serde_json::from_str(text).map_err(|e| format!("{LEGACY_LEDGER_KEY} does not parse: {e}"))?,
    };
    Ok(Stored { head, legacy })
}

/// Labels of the CRL ConfigMap and its parts: the served watch selects on them.
fn crl_labels(crl_name: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
        (LABEL_CRL.to_string(), crl_name.to_string()),
    ]
    .into()
}

/// The next CRL number: the signing time in milliseconds, or one more than the highest
/// number seen (stored or written by this process) if that is larger.
pub fn next_number(stored: Option<u64>, highest_seen: u64, now: Timestamp) -> u64 {
    let floor = u64::try_from(now.as_millisecond()).unwrap_or(0);
    stored.unwrap_or(0).max(highest_seen).saturating_add(1).max(floor)
}

/// One revoked serial as the CRL needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub serial: String,
    pub not_after: Timestamp,
    pub at: Timestamp,
    pub cause: RevocationCause,
}

impl Revoked {
    pub fn of(f: &RecordFacts) -> Option<Revoked> {
        let (at, cause) = f.revoked?;
        Some(Revoked {
            serial: f.serial.clone(),
            not_after: f.not_after,
            at,
            cause,
        })
    }

    fn entry(self) -> CrlEntry {
        CrlEntry {
            serial_hex: self.serial,
            revoked_at: to_offset(self.at),
            reason: rfc5280_reason(self.cause),
        }
    }
}

/// Revoked and unexpired, once per serial (the earliest revocation), oldest first.
fn ordered(revoked: impl IntoIterator<Item = Revoked>, now: Timestamp) -> Vec<Revoked> {
    let mut by_serial: HashMap<String, Revoked> = HashMap::new();
    for r in revoked.into_iter().filter(|r| r.not_after > now) {
        match by_serial.get(&r.serial) {
            Some(kept) if kept.at <= r.at => {}
            _ => {
                by_serial.insert(r.serial.clone(), r);
            }
        }
    }
    let mut out: Vec<Revoked> = by_serial.into_values().collect();
    out.sort_by(|a, b| (a.at, &a.serial).cmp(&(b.at, &b.serial)));
    out
}

/// A whole CRL's entries, rebuilt from the record: every revoked, unexpired serial,
/// once, in the order they were revoked.
pub fn crl_entries(revoked: impl IntoIterator<Item = Revoked>, now: Timestamp) -> Vec<CrlEntry> {
    ordered(revoked, now).into_iter().map(Revoked::entry).collect()
}

/// The next CRL's entries between two rebuilds: the last CRL's, unchanged and in the
/// same order, then the serials revoked since. Nothing is dropped, not even an entry
/// that has expired meanwhile: RFC 5280 (3.3) keeps an entry until it has appeared on
/// one scheduled CRL past its certificate's expiry, and the scheduled rebuild drops it.
/// Appending keeps every stored part but the first and the last byte for byte.
pub fn appended_entries(
    listed: &[CrlEntry],
    listed_serials: &HashSet<String>,
    revoked: impl IntoIterator<Item = Revoked>,
    now: Timestamp,
) -> Vec<CrlEntry> {
    let new = ordered(revoked.into_iter().filter(|r| !listed_serials.contains(&r.serial)), now);
    listed
        .iter()
        .cloned()
        .chain(new.into_iter().map(Revoked::entry))
        .collect()
}

/// What the last CRL this process wrote listed.
struct Listed {
    entries: Vec<CrlEntry>,
    serials: HashSet<String>,
}

struct Writer {
    api: Api<ConfigMap>,
    /// resourceVersions of our own latest writes, to tell their watch events apart.
    ours: std::collections::VecDeque<String>,
    records_api: Api<CertificateRecord>,
    cfg: LedgerConfig,
    /// The ConfigMap as our last write left it, and what it says; its resourceVersion
    /// guards the next write, so anyone else's write in between conflicts and is read
    /// fresh.
    last: Option<(ConfigMap, Stored)>,
    highest: u64,
    /// The entries of the last CRL written, to append to; `None` rebuilds from the
    /// record (at start, at the scheduled refresh, after anyone else's change).
    listed: Option<Listed>,
    /// Parts the CRL ConfigMap named before our last write: no longer named, ours to delete.
    unnamed: Vec<String>,
    /// The parts our last write named (never deleted).
    keep: Vec<String>,
    /// Whether to look for orphaned parts after the next write.
    orphan_sweep: bool,
}

async fn run(cfg: LedgerConfig, mut rx: mpsc::Receiver<Request>, health: watch::Sender<Health>) {
    // Never sign before the whole record is in memory: a CRL signed from half a list
    // would drop serials revoked earlier.
    if !cfg.records_ready.wait().await {
        return;
    }
    let mut ca = cfg.ca.clone();
    let mut served = cfg.served.clone();
    // The CRL ConfigMap is watched: a change by anyone else (a corruption, a restored
    // backup, a deletion) is checked at once, so issuance stops the moment it becomes
    // unusable, and resumes (with a CRL re-signed from the record) once it is fixed.
    let crl_watch = watcher(
        Api::<ConfigMap>::namespaced(cfg.client.clone(), &cfg.namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", cfg.crl_name)),
    )
    .default_backoff();
    let mut crl_watch = std::pin::pin!(crl_watch);
    let mut w = Writer {
        api: Api::namespaced(cfg.client.clone(), &cfg.namespace),
        ours: Default::default(),
        records_api: Api::namespaced(cfg.client.clone(), &cfg.namespace),
        cfg,
        last: None,
        highest: 0,
        listed: None,
        unnamed: vec![],
        keep: vec![],
        orphan_sweep: true,
    };
    let mut refresh = tokio::time::interval(w.cfg.validity / 2);
    let mut retry: Option<Duration> = None;
    loop {
        let mut batch: Vec<Request> = vec![];
        let backoff = tokio::time::sleep(retry.unwrap_or(Duration::from_secs(3600)));
        tokio::select! {
            req = rx.recv() => match req {
                Some(r) => batch.push(r),
                None => return,
            },
            // The scheduled CRL: rebuilt from the record, which drops expired entries.
            _ = refresh.tick() => w.listed = None,
            // A CA that comes back (or changes) signs what waited for it at once.
            changed = ca.changed() => {
                if changed.is_err() { return }
                w.listed = None;
            }
            () = backoff, if retry.is_some() => {}
            // A part of the CRL damaged or deleted by someone else: read everything
            // fresh, which stops issuance until it is fixed (as for the ConfigMap itself).
            // A part repaired (re-created, restored) while issuance is stopped for it: check
            // again, so issuance resumes without waiting for the next revocation.
            changed = served.changed() => {
                if changed.is_err() { return }
                let damaged = matches!(&*served.borrow_and_update(), Served::Damaged { .. });
                let stopped = matches!(*health.borrow(), Health::Unavailable { .. });
                if !damaged && !stopped {
                    continue;
                }
                w.last = None;
                w.listed = None;
            }
            event = crl_watch.next() => match event {
                Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                    if cm.resource_version().is_some_and(|rv| w.ours.contains(&rv)) {
                        continue;
                    }
                    // Someone else's version: read it fresh and write over it (or stop).
                    w.last = None;
                    w.listed = None;
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    w.last = None;
                    w.listed = None;
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
                Some(Err(e)) => {
                    warn!(error = %e, "watch of the CRL ConfigMap failed; retrying");
                    continue;
                }
                None => return,
            },
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let extra: Vec<RecordFacts> = batch.iter().flat_map(|r| r.revoked.iter().cloned()).collect();
        let result = w.write(&extra).await;
        let reply: WriteResult = match &result {
            Ok(n) => {
                retry = None;
                health.send_if_modified(|h| std::mem::replace(h, Health::Ready) != Health::Ready);
                Ok(*n)
            }
            Err(e) => {
                let next = retry.map(|d| (d * 2).min(RETRY_MAX)).unwrap_or(RETRY_MIN);
                // An unusable ConfigMap is not retried on a timer: its next change (the
                // fix) is watched, and every revocation in between tries again.
                retry = (!e.stops_issuance()).then_some(next);
                w.cfg.metrics.crl_publish_failed(e.reason());
                let state = if e.stops_issuance() {
                    error!(error = %e, reason = e.reason(), "the CRL cannot be published; nothing is issued until it is fixed");
                    Health::Unavailable {
                        reason: e.reason(),
                        message: e.to_string(),
                    }
                } else {
                    warn!(error = %e, reason = e.reason(), retry_in = ?next, "failed to publish the CRL; revocations are recorded and will be listed");
                    Health::Ready
                };
                health.send_if_modified(|h| std::mem::replace(h, state.clone()) != state);
                Err((e.reason(), e.to_string()))
            }
        };
        for r in batch {
            let _ = r.done.send(reply.clone());
        }
        if result.is_ok() {
            w.tidy().await;
        }
    }
}

impl Writer {
    /// Reads (or starts from our last write), checks, signs and writes, retrying on
    /// write conflicts. Returns the number of the CRL written.
    async fn write(&mut self, extra: &[RecordFacts]) -> Result<u64, LedgerError> {
        const ATTEMPTS: usize = 10;
        let name = self.cfg.crl_name.clone();
        let started = std::time::Instant::now();
        for _ in 0..ATTEMPTS {
            let ca = match self.cfg.ca.borrow().clone() {
                CaState::Ready(ca) => ca,
                CaState::Unavailable { reason, message } => return Err(LedgerError::CaUnavailable { reason, message }),
            };
            let (current, stored) = match self.last.take() {
                Some(ours) => (Some(ours.0), ours.1),
                None => self.read_fresh().await?,
            };
            if !stored.legacy.is_empty() {
                self.migrate(&stored.legacy).await?;
            }
            let now = Timestamp::now();
            let number = next_number(stored.head.number(), self.highest, now);
            let extra_revoked = extra.iter().filter_map(Revoked::of);
            let rebuilt = self.listed.is_none();
            let entries = match &self.listed {
                Some(l) => appended_entries(
                    &l.entries,
                    &l.serials,
                    self.cfg
                        .records
                        .revoked_map(|f| (!l.serials.contains(&f.serial)).then(|| Revoked::of(f)).flatten())
                        .into_iter()
                        .chain(extra_revoked),
                    now,
                ),
                None => crl_entries(
                    self.cfg
                        .records
                        .revoked_map(Revoked::of)
                        .into_iter()
                        .chain(extra_revoked),
                    now,
                ),
            };
            let count = entries.len();
            let next_update = now + SignedDuration::try_from(self.cfg.validity).unwrap_or_default();
            let request = CrlRequest {
                crl_number: number,
                this_update: to_offset(now),
                next_update: to_offset(next_update),
                entries,
            };
            // Signing 100,000 entries and hashing the parts takes a few hundred ms of CPU:
            // on a blocking thread, not on one of the runtime's two workers.
            let part_bytes = self.cfg.part_bytes;
            let head_name = name.clone();
            let (signed, request) = tokio::task::spawn_blocking(move || {
                let signed = ca.sign_crl_der(&request).map(|der| {
                    let laid = layout(&head_name, &der, part_bytes);
                    (der, laid)
                });
                (signed, request)
            })
            .await
            .map_err(|e| LedgerError::Sign(crate::pki::PkiError::Sign(format!("the signing task failed: {e}"))))?;
            let (der, laid) = signed.map_err(LedgerError::Sign)?;
            let signed_in = started.elapsed();
            let before = stored.head.part_names();
            let laid = laid.ok_or(LedgerError::CrlTooLarge {
                bytes: der.len(),
                part_bytes,
            })?;
            // Parts first: the CRL ConfigMap names them only once they all exist.
            let mut data: BTreeMap<String, String> = [(CRL_NUMBER_KEY.to_string(), number.to_string())].into();
            let head = match &laid {
                Layout::Inline { pem } => {
                    data.insert(CRL_KEY.into(), pem.clone());
                    Head::Inline {
                        number,
                        der: der.clone(),
                    }
                }
                Layout::Split { parts, sha256 } => {
                    for (part, bytes) in parts {
                        // Named by content: one the current CRL names already holds these bytes.
                        if !before.contains(part) {
                            self.create_part(part, bytes).await?;
                        }
                    }
                    if !extra.is_empty() {
                        crash_point("crl-after-parts");
                    }
                    let names: Vec<String> = parts.iter().map(|(n, _)| n.clone()).collect();
                    data.insert(CRL_PARTS_KEY.into(), names.join(","));
                    data.insert(CRL_SHA256_KEY.into(), sha256.clone());
                    Head::Split {
                        number,
                        parts: names,
                        sha256: sha256.clone(),
                    }
                }
            };
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    resource_version: current.as_ref().and_then(|c| c.resource_version()),
                    labels: Some(crl_labels(&name)),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            let res = match current {
                Some(_) => self.api.replace(&name, &PostParams::default(), &cm).await,
                None => self.api.create(&PostParams::default(), &cm).await,
            };
            match res {
                Ok(written) => {
                    if !extra.is_empty() {
                        crash_point("crl-after-head");
                    }
                    if let Some(rv) = written.resource_version() {
                        if self.ours.len() >= 16 {
                            self.ours.pop_front();
                        }
                        self.ours.push_back(rv);
                    }
                    let keep = head.part_names();
                    let written_parts = keep.iter().filter(|p| !before.contains(p)).count();
                    self.unnamed.extend(before.into_iter().filter(|p| !keep.contains(p)));
                    self.last = Some((written, Stored { head, legacy: vec![] }));
                    self.highest = number;
                    self.listed = Some(Listed {
                        serials: request.entries.iter().map(|e| e.serial_hex.clone()).collect(),
                        entries: request.entries,
                    });
                    let stored_in = started.elapsed();
                    // The parts no longer named go after the replies (`tidy`): off the
                    // path of every revocation waiting for this CRL. Orphans are looked
                    // for at a rebuild (start, schedule, anyone else's change).
                    self.keep = keep.clone();
                    self.orphan_sweep |= rebuilt;
                    self.cfg
                        .metrics
                        .crl_published(count, der.len(), keep.len().max(1), stored_in);
                    if extra.is_empty() {
                        debug!(crl_number = number, entries = count, bytes = der.len(), "CRL re-signed");
                    } else {
                        info!(
                            crl_number = number,
                            added = extra.len(),
                            entries = count,
                            bytes = der.len(),
                            parts = keep.len().max(1),
                            parts_written = written_parts,
                            signed_ms = signed_in.as_millis() as u64,
                            stored_ms = stored_in.as_millis() as u64,
                            "CRL published"
                        );
                    }
                    return Ok(number);
                }
                // Someone else wrote in between: read again and check again (the parts
                // just written are named by nothing, and go with the next write).
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(source) => return Err(LedgerError::WriteCrl { name, source }),
            }
        }
        Err(LedgerError::Conflicts {
            name,
            attempts: ATTEMPTS,
        })
    }

    /// Reads the CRL ConfigMap and, for a split CRL, every part it names, strictly.
    async fn read_fresh(&self) -> Result<(Option<ConfigMap>, Stored), LedgerError> {
        let name = &self.cfg.crl_name;
        let unreadable = |detail| LedgerError::CrlUnreadable {
            name: name.clone(),
            detail,
        };
        let read = |source| LedgerError::ReadCrl {
            name: name.clone(),
            source,
        };
        let Some(cm) = self.api.get_opt(name).await.map_err(read)? else {
            if !self.cfg.records.is_empty() {
                return Err(LedgerError::CrlMissing {
                    name: name.clone(),
                    records: self.cfg.records.len(),
                });
            }
            return Ok((
                None,
                Stored {
                    head: Head::Reset,
                    legacy: vec![],
                },
            ));
        };
        let stored = parse_stored(&cm.data.clone().unwrap_or_default()).map_err(unreadable)?;
        let mut parts = BTreeMap::new();
        for part in stored.head.part_names() {
            let bytes = self
                .api
                .get_opt(&part)
                .await
                .map_err(read)?
                .and_then(|p| p.binary_data.and_then(|mut b| b.remove(CRL_PART_KEY)))
                .map(|b| b.0);
            if let Some(bytes) = bytes {
                parts.insert(part, bytes);
            }
        }
        assemble(&stored.head, |n| parts.get(n).map(Vec::as_slice)).map_err(unreadable)?;
        Ok((Some(cm), stored))
    }

    /// Creates one immutable part ConfigMap. One that exists already (an attempt that
    /// failed later, or an older CRL's) is taken only if it holds the same bytes, which
    /// its name, a hash of them, all but says.
    async fn create_part(&self, name: &str, bytes: &[u8]) -> Result<(), LedgerError> {
        let name = name.to_string();
        let part = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.cfg.namespace.clone()),
                labels: Some(crl_labels(&self.cfg.crl_name)),
                ..Default::default()
            },
            binary_data: Some([(CRL_PART_KEY.to_string(), ByteString(bytes.to_vec()))].into()),
            immutable: Some(true),
            ..Default::default()
        };
        match self.api.create(&PostParams::default(), &part).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = self.api.get(&name).await.map_err(|source| LedgerError::WritePart {
                    name: name.clone(),
                    source,
                })?;
                if existing
                    .binary_data
                    .as_ref()
                    .and_then(|b| b.get(CRL_PART_KEY))
                    .map(|b| &b.0[..])
                    == Some(bytes)
                {
                    Ok(())
                } else {
                    Err(LedgerError::WritePart {
                        name,
                        source: kube::Error::Api(e),
                    })
                }
            }
            Err(source) => Err(LedgerError::WritePart { name, source }),
        }
    }

    /// After a write (and its replies): deletes parts no CRL names any more, those our
    /// own writes stopped naming and, after a rebuild, orphans (of an attempt that
    /// crashed or lost a race) older than [`ORPHAN_AGE`].
    /// Never a part another writer may be about to name: it would be seconds old. A
    /// failure only leaves parts for the next write: the CRL that is named is whole.
    async fn tidy(&mut self) {
        let keep = self.keep.clone();
        let mut doomed: Vec<String> = std::mem::take(&mut self.unnamed);
        if !std::mem::take(&mut self.orphan_sweep) {
            doomed.retain(|n| !keep.contains(n));
            self.delete_parts(doomed).await;
            return;
        }
        let lp = ListParams::default().labels(&format!("{LABEL_CRL}={}", self.cfg.crl_name));
        match self.api.list_metadata(&lp).await {
            Ok(listed) => {
                let now = Timestamp::now();
                for part in listed.items {
                    let name = part.name_any();
                    let old = part
                        .metadata
                        .creation_timestamp
                        .is_some_and(|t| t.0 + SignedDuration::try_from(ORPHAN_AGE).unwrap_or_default() < now);
                    if name != self.cfg.crl_name && old && !doomed.contains(&name) {
                        doomed.push(name);
                    }
                }
            }
            Err(e) => warn!(error = %e, "failed to list CRL parts; orphaned parts stay until the next write"),
        }
        doomed.retain(|n| !keep.contains(n));
        self.delete_parts(doomed).await;
    }

    async fn delete_parts(&mut self, doomed: Vec<String>) {
        for name in doomed {
            match self.api.delete(&name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    warn!(error = %e, part = %name, "failed to delete a CRL part nothing names; retrying at the next write");
                    self.unnamed.push(name);
                }
            }
        }
    }

    /// Turns an earlier version's ledger entries into revoked records, so upgrading
    /// drops nothing from the CRL.
    async fn migrate(&self, legacy: &[LegacyEntry]) -> Result<(), LedgerError> {
        let now = Timestamp::now();
        for e in legacy.iter().filter(|e| e.not_after > now) {
            if self.cfg.records.get(&e.serial).is_some_and(|f| f.revoked.is_some()) {
                continue;
            }
            let (ns, grant) = e.grant.split_once('/').unwrap_or(("", e.grant.as_str()));
            let spec = revocation(
                &e.serial,
                e.not_after,
                RecordedGrant {
                    namespace: ns.into(),
                    name: grant.into(),
                    uid: String::new(),
                    generation: 0,
                },
                RecordedTask {
                    api_version: String::new(),
                    kind: String::new(),
                    name: String::new(),
                    uid: String::new(),
                },
                "",
                RevocationCause::TaskCompleted,
                e.revoked_at,
            );
            let record = new_record(spec);
            match self.records_api.create(&PostParams::default(), &record).await {
                Ok(written) => self.cfg.records.wrote(&written),
                Err(kube::Error::Api(err)) if err.code == 409 => {}
                Err(source) => {
                    return Err(LedgerError::MarkRevoked {
                        serial: e.serial.clone(),
                        source,
                    });
                }
            }
        }
        info!(
            entries = legacy.len(),
            "revocation ledger of an earlier version migrated to CertificateRecords"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;

    fn facts(serial: &str, not_after: i64, revoked: Option<i64>) -> RecordFacts {
        RecordFacts::sample(serial, not_after, revoked)
    }

    #[test]
    fn threat_23_entries_stay_until_their_certificate_expires() {
        let now = Timestamp::from_second(1000).unwrap();
        let entries = crl_entries(
            [
                facts("aa", 999, Some(1)),
                facts("bb", 2000, Some(1)),
                facts("dd", 2000, None),
                facts("cc", 1500, Some(900)),
            ]
            .iter()
            .filter_map(Revoked::of),
            now,
        );
        let serials: Vec<_> = entries.iter().map(|e| e.serial_hex.as_str()).collect();
        assert_eq!(
            serials,
            ["bb", "cc"],
            "expired and unrevoked serials are not listed; the rest in revocation order"
        );
    }

    #[test]
    fn a_serial_in_the_index_and_the_request_is_listed_once() {
        let now = Timestamp::from_second(10).unwrap();
        let entries = crl_entries(
            [facts("aa", 100, Some(1)), facts("aa", 100, Some(5))]
                .iter()
                .filter_map(Revoked::of),
            now,
        );
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].revoked_at, to_offset(Timestamp::from_second(1).unwrap()));
    }

    #[test]
    fn between_rebuilds_entries_are_appended_and_none_is_dropped() {
        let now = Timestamp::from_second(1000).unwrap();
        let first = crl_entries(
            [facts("bb", 2000, Some(5)), facts("aa", 1001, Some(9))]
                .iter()
                .filter_map(Revoked::of),
            now,
        );
        let serials: HashSet<String> = first.iter().map(|e| e.serial_hex.clone()).collect();
        // "aa" expires before the next write: it stays (until the scheduled rebuild).
        let later = Timestamp::from_second(1500).unwrap();
        let next = appended_entries(
            &first,
            &serials,
            [facts("cc", 3000, Some(1200)), facts("bb", 2000, Some(5))]
                .iter()
                .filter_map(Revoked::of),
            later,
        );
        let listed: Vec<_> = next.iter().map(|e| e.serial_hex.as_str()).collect();
        assert_eq!(listed, ["bb", "aa", "cc"]);
    }

    #[test]
    fn threat_23_the_crl_number_never_goes_backwards() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ms = 1_800_000_000_000;
        assert_eq!(next_number(None, 0, now), ms, "a reset starts from the clock");
        assert_eq!(next_number(Some(5), 0, now), ms, "an old small number is passed");
        assert_eq!(next_number(Some(ms + 10), 0, now), ms + 11);
        assert_eq!(
            next_number(Some(3), ms + 50, now),
            ms + 51,
            "a restored backup is passed"
        );
        assert_eq!(next_number(Some(u64::MAX), 0, now), u64::MAX);
    }

    fn stored_crl(number: u64) -> BTreeMap<String, String> {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let ca = CertificateAuthority::generate_root("t", now, Duration::from_secs(86400)).unwrap();
        let pem = ca
            .sign_crl(&CrlRequest {
                crl_number: number,
                this_update: now,
                next_update: now + time::Duration::hours(1),
                entries: vec![],
            })
            .unwrap();
        [
            (CRL_KEY.to_string(), pem),
            (CRL_NUMBER_KEY.to_string(), number.to_string()),
        ]
        .into()
    }

    #[test]
    fn threat_36_a_damaged_crl_configmap_is_an_error_never_empty() {
        let good = stored_crl(7);
        assert_eq!(parse_stored(&good).unwrap().head.number(), Some(7));
        assert_eq!(
            parse_stored(&BTreeMap::new()).unwrap().head.number(),
            None,
            "created empty: a reset"
        );

        let mut bad_number = good.clone();
        bad_number.insert(CRL_NUMBER_KEY.into(), "7x".into());
        assert!(parse_stored(&bad_number).unwrap_err().contains("not a number"));

        let mut no_number = good.clone();
        no_number.remove(CRL_NUMBER_KEY);
        assert!(parse_stored(&no_number).unwrap_err().contains("missing"));

        let mut truncated = good.clone();
        let pem = truncated[CRL_KEY].clone();
        truncated.insert(CRL_KEY.into(), pem[..pem.len() / 2].to_string());
        assert!(parse_stored(&truncated).is_err());

        let mut disagreeing = good.clone();
        disagreeing.insert(CRL_NUMBER_KEY.into(), "8".into());
        assert!(parse_stored(&disagreeing).unwrap_err().contains("says 8"));

        let mut legacy = good.clone();
        legacy.insert(LEGACY_LEDGER_KEY.into(), "[{\"serial\":\"aa\"".into());
        assert!(parse_stored(&legacy).unwrap_err().contains("does not parse"));
        legacy.insert(
            LEGACY_LEDGER_KEY.into(),
            r#"[{"serial":"aa","notAfter":"2030-01-01T00:00:00Z","revokedAt":"2029-01-01T00:00:00Z","reason":"TaskCompleted","grant":"ns/g"}]"#.into(),
        );
        assert_eq!(parse_stored(&legacy).unwrap().legacy.len(), 1);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const NOW: i64 = 1_800_000_000;

        fn record() -> impl Strategy<Value = RecordFacts> {
            ("[0-9a-f]{2,4}", NOW - 100..NOW + 100, prop::option::of(NOW - 200..NOW))
                .prop_map(|(s, not_after, revoked)| facts(&s, not_after, revoked))
        }

        proptest! {
        /// The CRL lists each revoked, unexpired serial exactly once, whether it came from
        /// the index, the request or both, and nothing else.
        #[test]
        fn the_crl_lists_exactly_the_revoked_unexpired_serials(index in prop::collection::vec(record(), 0..20), extra in prop::collection::vec(record(), 0..5)) {
            let now = Timestamp::from_second(NOW).unwrap();
            let entries = crl_entries(index.iter().chain(&extra).filter_map(Revoked::of), now);
            let listed: Vec<&str> = entries.iter().map(|e| e.serial_hex.as_str()).collect();
            let mut unique = listed.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), listed.len(), "each serial once");
            let order: Vec<_> = entries.iter().map(|e| (e.revoked_at, e.serial_hex.clone())).collect();
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(order, sorted, "in revocation order");
            // A revocation is monotonic: a serial any copy says is revoked (and unexpired)
            // is listed, whichever copy is older.
            let revoked_live = |s: &str| index.iter().chain(&extra).any(|f| f.serial == s && f.revoked.is_some() && f.not_after > now);
            for s in &listed {
                prop_assert!(revoked_live(s));
            }
            for f in index.iter().chain(&extra) {
                if revoked_live(&f.serial) {
                    prop_assert!(listed.contains(&f.serial.as_str()), "{} dropped", f.serial);
                }
            }
        }

        /// Between rebuilds the last CRL is a prefix of the next (its parts stay), and
        /// every revoked, unexpired serial is listed: appending never drops one.
        #[test]
        fn appending_keeps_the_last_crl_as_a_prefix_and_drops_nothing(
            first in prop::collection::vec(record(), 0..20),
            later in prop::collection::vec(record(), 0..20),
            step in 0i64..150,
        ) {
            let now = Timestamp::from_second(NOW).unwrap();
            let listed = crl_entries(first.iter().filter_map(Revoked::of), now);
            let serials: HashSet<String> = listed.iter().map(|e| e.serial_hex.clone()).collect();
            let then = Timestamp::from_second(NOW + step).unwrap();
            let next = appended_entries(&listed, &serials, first.iter().chain(&later).filter_map(Revoked::of), then);
            prop_assert_eq!(&next[..listed.len()], &listed[..]);
            let mut unique: Vec<_> = next.iter().map(|e| e.serial_hex.clone()).collect();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), next.len(), "each serial once");
            for f in first.iter().chain(&later) {
                if f.revoked.is_some() && f.not_after > then {
                    prop_assert!(next.iter().any(|e| e.serial_hex == f.serial), "{} dropped", f.serial);
                }
            }
        }

        /// The CRL number only grows, whatever was stored (a reset, a restored backup).
        #[test]
        fn the_crl_number_only_grows(stored in prop::option::of(any::<u64>()), highest in any::<u64>(), secs in 0i64..4_000_000_000) {
            let now = Timestamp::from_second(secs).unwrap();
            let n = next_number(stored, highest, now);
            let prev = stored.unwrap_or(0).max(highest);
            prop_assert!(n > prev || prev == u64::MAX);
        }

            }
    }
}
