//! The subject of a decision from its certificate: verified against the trust bundle
//! once, then remembered.
//!
//! A gateway sends the same certificate with every call of a task. Parsing it and
//! checking the CA's signature costs more than the rest of the decision, so a verified
//! certificate is kept, by its text as sent, until the trust bundle changes. Only
//! verified certificates are kept, and the cache is bounded (cleared when full): a
//! caller sending junk pays for its own parsing and evicts nothing for long.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::jiff::Timestamp;

use crate::{
    decide::authorize::{Reason, Subject},
    pki::{self, OffsetDateTime, PresentedError},
};

/// The CA certificates a presented certificate may chain to, with an identity so the
/// cache knows when they changed.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub cas_der: Vec<Vec<u8>>,
    pub bundle_pem: String,
}

/// A verified certificate: its subject, and its DER (to match the TLS peer's).
#[derive(Clone, Debug)]
pub struct Verified {
    pub subject: Arc<Subject>,
    pub der: Arc<[u8]>,
}

type Subjects = HashMap<Box<str>, Verified>;

/// Verified subjects by certificate text.
pub struct SubjectCache {
    /// The trust generation the entries were verified against, and the entries.
    inner: RwLock<(usize, Subjects)>,
    capacity: usize,
}

impl SubjectCache {
    pub fn new(capacity: usize) -> Self {
        SubjectCache {
            inner: RwLock::new((0, HashMap::new())),
            capacity,
        }
    }

    /// The subject of `text` (PEM, or URL-encoded PEM as Envoy forwards it), verified
    /// against `trust` (whose generation is `epoch`).
    pub fn subject(&self, text: &str, trust: &Trust, epoch: usize) -> Result<Verified, (Reason, String)> {
        {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if inner.0 == epoch
                && let Some(s) = inner.1.get(text)
            {
                return Ok(s.clone());
            }
        }
        let subject = verify(text, trust)?;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.0 != epoch {
            *inner = (epoch, HashMap::new());
        }
        if inner.1.len() >= self.capacity {
            inner.1.clear();
        }
        inner.1.insert(text.into(), subject.clone());
        Ok(subject)
    }
}

fn timestamp(t: OffsetDateTime) -> Option<Timestamp> {
    Timestamp::from_second(t.unix_timestamp()).ok()
}

/// A presented certificate's PEM: as sent, or URL-decoded (Envoy forwards it
/// URL-encoded; PEM itself never holds a '%').
fn pem_of(text: &str) -> Result<std::borrow::Cow<'_, str>, std::str::Utf8Error> {
    if text.contains('%') {
        percent_encoding::percent_decode_str(text).decode_utf8()
    } else {
        Ok(std::borrow::Cow::Borrowed(text))
    }
}

/// Verifies one presented certificate (PEM or URL-encoded PEM) and reads its subject.
pub fn verify(text: &str, trust: &Trust) -> Result<Verified, (Reason, String)> {
    let pem = pem_of(text).map_err(|e| {
        (
            Reason::MalformedCertificate,
            format!("the certificate is not UTF-8: {e}"),
        )
    })?;
    let der = pki::first_certificate_der(&pem).map_err(|e| (Reason::MalformedCertificate, e.to_string()))?;
    let cas: Vec<&[u8]> = trust.cas_der.iter().map(Vec::as_slice).collect();
    let info = pki::verify_presented(&der, &cas).map_err(|e| match e {
        PresentedError::Malformed(m) => (Reason::MalformedCertificate, m),
        PresentedError::UntrustedIssuer => (Reason::UntrustedIssuer, e.to_string()),
    })?;
    let spiffe_id = match info.uri_sans.as_slice() {
        [one] if one.starts_with("spiffe://") => one.clone(),
        _ => {
            return Err((
                Reason::NotAnAgentCertificate,
                "the certificate does not carry exactly one spiffe:// URI SAN".to_string(),
            ));
        }
    };
    let Some(scope) = info.scope else {
        return Err((
            Reason::NotAnAgentCertificate,
            "the certificate carries no Mandate grant scope".to_string(),
        ));
    };
    Ok(Verified {
        subject: Arc::new(Subject {
            serial: info.serial_hex,
            spiffe_id,
            not_before: timestamp(info.not_before),
            not_after: timestamp(info.not_after),
            scope: Some(scope),
        }),
        der: der.into(),
    })
}
