//! The published CRL, as it is stored in the API and as relying parties are served it.
//!
//! One signed CRL, whatever its size. A ConfigMap holds at most 1 MiB, and 100,000
//! unexpired revocations make a DER CRL of about 5 MB, so the list is stored in one of
//! two shapes, both under the CRL ConfigMap's name (`mandate-crl`):
//! - **inline**: the CRL fits one part; `crl.pem` (PEM) and `crlNumber`, as always;
//! - **split**: the DER is cut every `--crl-part-bytes`, each part in an immutable
//!   ConfigMap named by its content (`mandate-crl-<sha256 prefix>`, `binaryData`), and
//!   the CRL ConfigMap names them in order: `crlNumber`, `parts` and the `sha256` of the
//!   whole DER. Entries are in revocation order and new ones are appended, so the next
//!   CRL shares every part but the first (its dates) and the last: a revocation writes
//!   two parts, not the whole list.
//!
//! The writer creates the parts that do not exist yet, then points the CRL ConfigMap at
//! them, then deletes the parts nothing names any more. A crash at any step leaves the previous CRL
//! whole (its parts are deleted only once nothing names them) and, at worst, parts
//! nothing names, which the next write deletes. Every part and the CRL ConfigMap carry
//! the label `mandate.dev/crl`, so one watch sees them all, in the order they were
//! written: by the time the CRL ConfigMap names a part, the part has been seen.
//!
//! Reading is strict, as everywhere the record is read: a part that is missing, a hash
//! or CRL number that does not agree, bytes that do not parse are [`Served::Damaged`],
//! never an empty or a shorter list. Every replica serves the assembled DER over HTTP
//! (`GET /v1/crl`), so a relying party fetches one signed list and checks one signature.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, OnceLock},
};

use bytes::Bytes;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{error, warn};

use crate::{
    api::names::{CRL_KEY, CRL_NUMBER_KEY, CRL_PART_KEY, CRL_PARTS_KEY, CRL_SHA256_KEY, LABEL_CRL},
    pki::{crl_pem, inspect_crl_der, inspect_crl_pem},
};

/// The default `--crl-part-bytes`: a ConfigMap holds at most 1 MiB in all; a part
/// leaves room for the rest of the object and for the API server's own overhead.
pub const DEFAULT_PART_BYTES: usize = 768 * 1024;

/// Most parts one CRL may be split into: 64 parts of the default 768 KiB hold about
/// 1,000,000 revocations. Past that the CRL is refused as too large, not truncated.
pub const MAX_PARTS: usize = 64;

/// What the CRL ConfigMap says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    /// Created empty: a deliberate reset (the CRL is rebuilt from the records).
    Reset,
    /// The whole CRL, in the ConfigMap itself.
    Inline { number: u64, der: Vec<u8> },
    /// The CRL is in the part ConfigMaps named by `parts`, in order; `sha256` is the
    /// hash of their concatenation.
    Split {
        number: u64,
        parts: Vec<String>,
        sha256: String,
    },
}

impl Head {
    /// The CRL number it names; `None` for a reset.
    pub fn number(&self) -> Option<u64> {
        match self {
            Head::Reset => None,
            Head::Inline { number, .. } | Head::Split { number, .. } => Some(*number),
        }
    }

    /// The names of the part ConfigMaps it refers to.
    pub fn part_names(&self) -> Vec<String> {
        match self {
            Head::Split { parts, .. } => parts.clone(),
            _ => vec![],
        }
    }
}

/// The name of the part holding `bytes`: named by its content, so a part that the next
/// CRL shares byte for byte (all but the first and the last, as entries are appended)
/// is neither written nor deleted again.
pub fn part_name(head_name: &str, bytes: &[u8]) -> String {
    let hash = crate::pki::hex_lower(&Sha256::digest(bytes));
    format!("{head_name}-{}", &hash[..20])
}

/// Reads the CRL ConfigMap's data strictly. Keys it does not know are ignored (an
/// earlier version's ledger is read by the ledger itself).
pub fn parse_head(data: &BTreeMap<String, String>) -> Result<Head, String> {
    if data.is_empty() {
        return Ok(Head::Reset);
    }
    let raw = data
        .get(CRL_NUMBER_KEY)
        .ok_or_else(|| format!("{CRL_NUMBER_KEY} is missing"))?;
    let number: u64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{CRL_NUMBER_KEY} {raw:?} is not a number"))?;
    match (data.get(CRL_KEY), data.get(CRL_PARTS_KEY)) {
        (Some(_), Some(_)) => Err(format!("both {CRL_KEY} and {CRL_PARTS_KEY} are present")),
        (None, None) => Err(format!("{CRL_KEY} is missing")),
        (Some(pem), None) => {
            let info = inspect_crl_pem(pem).map_err(|e| format!("{CRL_KEY}: {e}"))?;
            if info.crl_number != Some(number) {
                return Err(format!(
                    "{CRL_KEY} carries CRL number {:?} but {CRL_NUMBER_KEY} says {number}",
                    info.crl_number
                ));
            }
            let der = pem::parse(pem).map_err(|e| format!("{CRL_KEY}: {e}"))?.into_contents();
            Ok(Head::Inline { number, der })
        }
        (None, Some(raw)) => {
            let parts: Vec<String> = raw.split(',').map(|p| p.trim().to_string()).collect();
            if !(1..=MAX_PARTS).contains(&parts.len()) {
                return Err(format!(
                    "{CRL_PARTS_KEY} names {} parts, not between 1 and {MAX_PARTS}",
                    parts.len()
                ));
            }
            if let Some(bad) = parts.iter().find(|p| {
                p.is_empty()
                    || p.len() > 253
                    || !p
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            }) {
                return Err(format!("{CRL_PARTS_KEY} names {bad:?}, which is not a ConfigMap name"));
            }
            let sha256 = data
                .get(CRL_SHA256_KEY)
                .ok_or_else(|| format!("{CRL_SHA256_KEY} is missing"))?
                .trim()
                .to_string();
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{CRL_SHA256_KEY} {sha256:?} is not a SHA-256 in hex"));
            }
            Ok(Head::Split { number, parts, sha256 })
        }
    }
}

/// The whole DER CRL a head describes, from its parts as `part` finds them (by name):
/// `None` for a reset. Every part must be there and the whole must hash to what the
/// head says and carry its CRL number.
pub fn assemble<'a>(head: &'a Head, part: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Option<(u64, Vec<u8>)>, String> {
    match head {
        Head::Reset => Ok(None),
        Head::Inline { number, der } => Ok(Some((*number, der.clone()))),
        Head::Split { number, sha256, .. } => {
            let mut der = Vec::new();
            for name in head.part_names() {
                let bytes = part(&name).ok_or_else(|| format!("part {name} is missing"))?;
                der.extend_from_slice(bytes);
            }
            let actual = crate::pki::hex_lower(&Sha256::digest(&der));
            if !actual.eq_ignore_ascii_case(sha256) {
                return Err(format!(
                    "the parts hash to {actual}, not the {sha256} {CRL_SHA256_KEY} says"
                ));
            }
            let info = inspect_crl_der(&der).map_err(|e| format!("the assembled CRL: {e}"))?;
            if info.crl_number != Some(*number) {
                return Err(format!(
                    "the assembled CRL carries number {:?} but {CRL_NUMBER_KEY} says {number}",
                    info.crl_number
                ));
            }
            Ok(Some((*number, der)))
        }
    }
}

/// How a signed CRL is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    Inline {
        pem: String,
    },
    /// Each part's name and bytes, in order.
    Split {
        parts: Vec<(String, Vec<u8>)>,
        sha256: String,
    },
}

/// Lays a DER CRL out: inline when its PEM fits `part_bytes`, otherwise cut at every
/// `part_bytes` (fixed offsets, so that entries appended at the end leave every part
/// but the first, which holds the dates, and the last unchanged). `None` when it would
/// take more than [`MAX_PARTS`].
pub fn layout(head_name: &str, der: &[u8], part_bytes: usize) -> Option<Layout> {
    // Base64 is 4/3 of the DER, plus a newline per 64 characters and the armour.
    let pem_len = der.len().div_ceil(3) * 4 * 65 / 64 + 64;
    if pem_len <= part_bytes {
        let pem = crl_pem(der);
        if pem.len() <= part_bytes {
            return Some(Layout::Inline { pem });
        }
    }
    let parts: Vec<(String, Vec<u8>)> = der
        .chunks(part_bytes.max(1))
        .map(|c| (part_name(head_name, c), c.to_vec()))
        .collect();
    (parts.len() <= MAX_PARTS).then(|| Layout::Split {
        parts,
        sha256: crate::pki::hex_lower(&Sha256::digest(der)),
    })
}

/// A whole, checked CRL, shared by every request that serves it.
#[derive(Debug)]
pub struct Published {
    pub number: u64,
    pub der: Bytes,
    pem: OnceLock<Bytes>,
}

impl Published {
    pub fn new(number: u64, der: Vec<u8>) -> Published {
        Published {
            number,
            der: der.into(),
            pem: OnceLock::new(),
        }
    }

    /// The same CRL as PEM, encoded once, on first use.
    pub fn pem(&self) -> Bytes {
        self.pem.get_or_init(|| crl_pem(&self.der).into()).clone()
    }
}

impl PartialEq for Published {
    fn eq(&self, other: &Self) -> bool {
        self.number == other.number && self.der == other.der
    }
}

impl Eq for Published {}

/// The CRL as every replica serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// The first list has not arrived.
    Loading,
    /// No CRL ConfigMap (or one created empty, not yet re-signed).
    Absent,
    Listed(Arc<Published>),
    /// What is stored cannot be read; nothing is served rather than a wrong list.
    Damaged {
        detail: String,
    },
}

/// What is stored, as the watch has it: each object's name, `data` and `binaryData`.
#[derive(Default)]
struct Objects {
    data: BTreeMap<String, BTreeMap<String, String>>,
    binary: BTreeMap<String, Vec<u8>>,
}

impl Objects {
    fn put(&mut self, cm: &ConfigMap) {
        let name = cm.name_any();
        self.data.insert(name.clone(), cm.data.clone().unwrap_or_default());
        match cm.binary_data.as_ref().and_then(|b| b.get(CRL_PART_KEY)) {
            Some(bytes) => self.binary.insert(name, bytes.0.clone()),
            None => self.binary.remove(&name),
        };
    }

    fn remove(&mut self, name: &str) {
        self.data.remove(name);
        self.binary.remove(name);
    }

    fn served(&self, head_name: &str) -> Served {
        let Some(data) = self.data.get(head_name) else {
            return Served::Absent;
        };
        let head = match parse_head(data) {
            Ok(h) => h,
            Err(detail) => return Served::Damaged { detail },
        };
        match assemble(&head, |n| self.binary.get(n).map(Vec::as_slice)) {
            Ok(Some((number, der))) => Served::Listed(Arc::new(Published::new(number, der))),
            Ok(None) => Served::Absent,
            Err(detail) => Served::Damaged { detail },
        }
    }
}

/// Watches the CRL ConfigMap and its parts (in `namespace`) and keeps the assembled CRL
/// in the returned receiver. Run the future for as long as the receiver is read.
pub fn watch_served(
    client: Client,
    namespace: &str,
    head_name: &str,
) -> (watch::Receiver<Served>, impl Future<Output = ()> + use<>) {
    let (tx, rx) = watch::channel(Served::Loading);
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&format!("{LABEL_CRL}={head_name}"));
    let head_name = head_name.to_string();
    let run = async move {
        let mut objects = Objects::default();
        let mut relist: Option<Objects> = None;
        let events = watcher(api, config).default_backoff();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => relist = Some(Objects::default()),
                Ok(watcher::Event::InitApply(cm)) => relist.get_or_insert_with(Objects::default).put(&cm),
                Ok(watcher::Event::InitDone) => objects = relist.take().unwrap_or_default(),
                Ok(watcher::Event::Apply(cm)) => objects.put(&cm),
                Ok(watcher::Event::Delete(cm)) => objects.remove(&cm.name_any()),
                Err(e) => {
                    warn!(error = %e, "watch of the CRL ConfigMaps failed; retrying");
                    continue;
                }
            }
            if relist.is_some() {
                continue;
            }
            // Hashing and parsing a CRL of 100,000 entries takes tens of ms of CPU.
            let multi =
                tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
            let served = if multi {
                tokio::task::block_in_place(|| objects.served(&head_name))
            } else {
                objects.served(&head_name)
            };
            if let Served::Damaged { detail } = &served
                && !matches!(&*tx.borrow(), Served::Damaged { .. })
            {
                error!(%detail, configmap = %head_name, "the stored CRL cannot be read; it is not served until it is fixed");
            }
            tx.send_if_modified(|cur| {
                let changed = *cur != served;
                *cur = served;
                changed
            });
        }
    };
    (rx, run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, CrlEntry, CrlRequest, OffsetDateTime, RevocationReason};
    use proptest::prelude::*;

    fn signed(number: u64, entries: usize) -> Vec<u8> {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let ca = CertificateAuthority::generate_root("t", now, std::time::Duration::from_secs(86400)).unwrap();
        ca.sign_crl_der(&CrlRequest {
            crl_number: number,
            this_update: now,
            next_update: now + time::Duration::hours(1),
            entries: (0..entries)
                .map(|i| CrlEntry {
                    serial_hex: format!("7f{:030x}", i + 1),
                    revoked_at: now,
                    reason: RevocationReason::CessationOfOperation,
                })
                .collect(),
        })
        .unwrap()
    }

    /// Stores a layout as the writer does, into `objects`.
    fn store(objects: &mut Objects, head_name: &str, number: u64, layout: &Layout) {
        let mut head: BTreeMap<String, String> = [(CRL_NUMBER_KEY.to_string(), number.to_string())].into();
        match layout {
            Layout::Inline { pem } => {
                head.insert(CRL_KEY.into(), pem.clone());
            }
            Layout::Split { parts, sha256 } => {
                let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
                head.insert(CRL_PARTS_KEY.into(), names.join(","));
                head.insert(CRL_SHA256_KEY.into(), sha256.clone());
                for (name, bytes) in parts {
                    objects.binary.insert(name.clone(), bytes.clone());
                    objects.data.insert(name.clone(), BTreeMap::new());
                }
            }
        }
        objects.data.insert(head_name.into(), head);
    }

    fn names(l: &Layout) -> Vec<String> {
        match l {
            Layout::Split { parts, .. } => parts.iter().map(|(n, _)| n.clone()).collect(),
            Layout::Inline { .. } => vec![],
        }
    }

    #[test]
    fn a_small_crl_stays_inline_and_a_large_one_is_split_and_reassembled() {
        let small = signed(5, 3);
        assert!(matches!(layout("crl", &small, 64 * 1024), Some(Layout::Inline { .. })));

        let large = signed(6, 200);
        let Some(split @ Layout::Split { .. }) = layout("crl", &large, 2048) else {
            panic!("200 entries do not fit 2 KiB");
        };
        let mut objects = Objects::default();
        store(&mut objects, "crl", 6, &split);
        assert_eq!(
            objects.served("crl"),
            Served::Listed(Arc::new(Published::new(6, large.clone())))
        );
    }

    #[test]
    fn threat_36_a_missing_or_altered_part_is_damage_never_a_shorter_list() {
        let der = signed(9, 200);
        let split = layout("crl", &der, 2048).unwrap();
        let parts = names(&split);
        let mut objects = Objects::default();
        store(&mut objects, "crl", 9, &split);

        let mut missing = Objects::default();
        store(&mut missing, "crl", 9, &split);
        missing.remove(&parts[1]);
        let Served::Damaged { detail } = missing.served("crl") else {
            panic!("a missing part must not be served")
        };
        assert!(detail.contains(&format!("{} is missing", parts[1])), "{detail}");

        let mut altered = Objects::default();
        store(&mut altered, "crl", 9, &split);
        altered.binary.get_mut(&parts[0]).unwrap()[40] ^= 1;
        assert!(matches!(altered.served("crl"), Served::Damaged { detail } if detail.contains("hash")));

        // The CRL ConfigMap edited by hand: its number is not the signed CRL's.
        let mut renumbered = objects.data["crl"].clone();
        renumbered.insert(CRL_NUMBER_KEY.into(), "10".into());
        objects.data.insert("crl".into(), renumbered);
        assert!(matches!(objects.served("crl"), Served::Damaged { .. }));
    }

    #[test]
    fn threat_36_a_damaged_head_is_an_error_never_empty() {
        let der = signed(3, 1);
        let pem = crl_pem(&der);
        let good: BTreeMap<String, String> = [
            (CRL_KEY.to_string(), pem.clone()),
            (CRL_NUMBER_KEY.to_string(), "3".to_string()),
        ]
        .into();
        assert_eq!(parse_head(&good).unwrap().number(), Some(3));
        assert_eq!(parse_head(&BTreeMap::new()).unwrap(), Head::Reset);
        let with = |k: &str, v: &str| {
            let mut d = good.clone();
            d.insert(k.into(), v.into());
            d
        };
        assert!(parse_head(&with(CRL_NUMBER_KEY, "4")).unwrap_err().contains("says 4"));
        assert!(parse_head(&with(CRL_PARTS_KEY, "crl-a")).unwrap_err().contains("both"));
        let mut split = with(CRL_PARTS_KEY, "crl-a,crl-b");
        split.remove(CRL_KEY);
        assert!(parse_head(&split).unwrap_err().contains("sha256 is missing"));
        split.insert(CRL_SHA256_KEY.into(), "zz".into());
        assert!(parse_head(&split).unwrap_err().contains("not a SHA-256"));
        split.insert(CRL_SHA256_KEY.into(), "a".repeat(64));
        split.insert(CRL_PARTS_KEY.into(), "crl-a,,crl-b".into());
        assert!(parse_head(&split).unwrap_err().contains("not a ConfigMap name"));
        split.insert(CRL_PARTS_KEY.into(), vec!["crl-a"; 65].join(","));
        assert!(parse_head(&split).unwrap_err().contains("between"));
    }

    #[test]
    fn appending_entries_rewrites_only_the_first_and_the_last_parts() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let ca = CertificateAuthority::generate_root("t", now, std::time::Duration::from_secs(86400)).unwrap();
        let entry = |i: usize| CrlEntry {
            serial_hex: format!("7f{i:030x}"),
            revoked_at: now,
            reason: RevocationReason::CessationOfOperation,
        };
        let sign = |number: u64, n: usize, at: OffsetDateTime| {
            ca.sign_crl_der(&CrlRequest {
                crl_number: number,
                this_update: at,
                next_update: at + time::Duration::hours(1),
                entries: (0..n).map(entry).collect(),
            })
            .unwrap()
        };
        let before = names(&layout("crl", &sign(1, 2000, now), 8192).unwrap());
        let after = names(&layout("crl", &sign(2, 2003, now + time::Duration::seconds(7)), 8192).unwrap());
        assert!(before.len() > 5, "{} parts", before.len());
        let shared = after.iter().filter(|n| before.contains(n)).count();
        assert_eq!(shared, before.len() - 2, "only the first and the last part change");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Any CRL, cut at any part size, reassembles to exactly the signed bytes.
        #[test]
        fn any_split_reassembles_to_the_signed_bytes(entries in 0usize..300, part_bytes in 600usize..20_000) {
            let der = signed(77, entries);
            let Some(l) = layout("crl", &der, part_bytes) else {
                // Only a CRL needing more than MAX_PARTS parts is refused.
                prop_assert!(der.len().div_ceil(part_bytes) > MAX_PARTS);
                return Ok(());
            };
            let mut objects = Objects::default();
            store(&mut objects, "crl", 77, &l);
            let whole = objects.served("crl") == Served::Listed(Arc::new(Published::new(77, der)));
            prop_assert!(whole, "entries {} part_bytes {}", entries, part_bytes);
        }
    }
}
