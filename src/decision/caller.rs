//! Who is asking: the caller of the decision API, as opposed to the subject a
//! decision is about.
//!
//! A caller authenticates with a client certificate from Mandate's CA (checked in the
//! TLS handshake) or a Kubernetes ServiceAccount token (checked with a TokenReview,
//! remembered briefly). A caller named in the configuration is a *proxy*: it
//! terminated the agent's TLS itself, so it may name the subject (send the agent's
//! certificate, or its SPIFFE ID and serial). Any other authenticated caller is an
//! *agent* asking about itself: the certificate it sends must be its own. Everyone
//! else learns nothing.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};
use sha2::{Digest, Sha256};
use tracing::warn;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A configured gateway: may name any subject.
    Proxy { id: String },
    /// An agent presenting its own client certificate (DER).
    AgentCertificate { spiffe_id: String, der: Vec<u8> },
    /// A ServiceAccount that is not a configured proxy: it may ask about certificates
    /// of its own identity only.
    ServiceAccount { namespace: String, name: String },
}

impl Caller {
    pub fn is_proxy(&self) -> bool {
        matches!(self, Caller::Proxy { .. })
    }

    /// For logs and audit events.
    pub fn describe(&self) -> String {
        match self {
            Caller::Proxy { id } => format!("proxy {id}"),
            Caller::AgentCertificate { spiffe_id, .. } => format!("agent {spiffe_id}"),
            Caller::ServiceAccount { namespace, name } => format!("serviceaccount {namespace}/{name}"),
        }
    }
}

/// Which callers are proxies.
#[derive(Clone, Debug, Default)]
pub struct CallerPolicy {
    /// SPIFFE IDs (URI SANs of client certificates from Mandate's CA).
    pub proxy_spiffe_ids: Vec<String>,
    /// `namespace/name` of ServiceAccounts.
    pub proxy_service_accounts: Vec<String>,
    /// The audience a token must be issued for (empty: the API server's default).
    pub token_audience: String,
}

impl CallerPolicy {
    /// The caller a verified client certificate makes, if it is one that may call.
    pub fn for_certificate(&self, der: &[u8]) -> Option<Caller> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let uri = cert
            .subject_alternative_name()
            .ok()
            .flatten()?
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })?;
        if self.proxy_spiffe_ids.contains(&uri) {
            return Some(Caller::Proxy { id: uri });
        }
        // Any other certificate of Mandate's CA must be an agent's (it carries a grant
        // scope); a serving certificate or a stray one authenticates no one.
        crate::pki::read_scope(der).ok().flatten()?;
        Some(Caller::AgentCertificate {
            spiffe_id: uri,
            der: der.to_vec(),
        })
    }

    fn for_username(&self, username: &str) -> Option<Caller> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        let key = format!("{namespace}/{name}");
        if self.proxy_service_accounts.contains(&key) {
            return Some(Caller::Proxy {
                id: format!("serviceaccount {key}"),
            });
        }
        Some(Caller::ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

type TokenHash = [u8; 32];
/// When a token was reviewed, and the username it authenticated (`None`: it did not).
type Reviewed = (Instant, Option<String>);

/// TokenReview answers, by the token's SHA-256, for a short while.
pub struct TokenReviews {
    client: Client,
    cache: Mutex<HashMap<TokenHash, Reviewed>>,
    ttl: Duration,
}

const MAX_TOKENS: usize = 10_000;

impl TokenReviews {
    pub fn new(client: Client, ttl: Duration) -> Self {
        TokenReviews {
            client,
            cache: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The caller a bearer token makes, or `None` when it does not authenticate (or
    /// the API server could not be asked: fail closed).
    pub async fn caller(&self, policy: &CallerPolicy, token: &str) -> Option<Caller> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((at, user)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return user.as_deref().and_then(|u| policy.for_username(u));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: (!policy.token_audience.is_empty()).then(|| vec![policy.token_audience.clone()]),
            },
            ..Default::default()
        };
        let user = match Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(r) => r.status.and_then(|s| {
                if s.authenticated == Some(true) {
                    s.user.and_then(|u| u.username)
                } else {
                    None
                }
            }),
            Err(e) => {
                // Not cached: the next call asks again.
                warn!(error = %e, "TokenReview failed; the caller is not authenticated");
                return None;
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_TOKENS {
            cache.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if cache.len() >= MAX_TOKENS {
                cache.clear();
            }
        }
        cache.insert(key, (now, user.clone()));
        user.as_deref().and_then(|u| policy.for_username(u))
    }
}
