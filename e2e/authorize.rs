//! Request-time decisions on the real control plane: `POST /v1/authorize`, the caller's
//! authentication (client certificate, ServiceAccount token through TokenReview), every
//! denial with its own reason, and the audit trail of a task. The same decisions
//! through a real Envoy are in `envoy.rs`.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use mandate::api::GrantPhase;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::{
    grants::Fixture,
    support::{
        kubelet::{self, Outcome},
        tls::{Pair, Reply, Signer, https},
    },
};

pub(crate) const GATEWAY: &str = "spiffe://e2e.example/gateway/envoy";

/// Permits calls inside the grant (the matcher has checked them before policy), and
/// forbids a destructive query in a call's arguments.
pub(crate) const INVOKE_BASE: &str = r#"
@id("in-scope")
permit (principal, action == Mandate::Action::"invoke", resource);
@id("no-drop")
forbid (principal, action == Mandate::Action::"invoke", resource)
  when { context.arguments.hasTag("query") && context.arguments.getTag("query") like "*DROP*" };
"#;

/// An operator with a gateway allowed as a proxy, an identity, a running Job and an
/// issued grant for it.
pub(crate) struct Setup {
    pub f: Fixture,
    /// The agent's certificate and key, from its Secret.
    pub agent: Pair,
    /// Mandate's CA.
    pub ca: Signer,
    /// The gateway's client certificate (from Mandate's CA).
    pub gateway: Pair,
    pub serial: String,
}

pub(crate) fn tools() -> Value {
    json!([
        { "name": "github", "actions": ["read"], "destinations": ["api.github.com"] },
        { "name": "query", "actions": ["call"], "destinations": ["mcp.example"] },
    ])
}

impl Setup {
    pub(crate) async fn new(prefix: &str, flags: &[&str]) -> Setup {
        let mut all = vec![format!("--decision-proxy-spiffe-ids={GATEWAY}")];
        all.extend(flags.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let f = Fixture::with_flags(prefix, &refs).await;
        crate::support::agent_policy(&f.ns, "invoke-base", "Enforce", INVOKE_BASE).await;
        let mut id = crate::identity::identity("agent");
        id.spec.tools = serde_json::from_value(tools()).unwrap();
        f.ids.create(&PostParams::default(), &id).await.unwrap();
        f.job("work", None).await;
        kubelet::wait_for_job_pod(&f.pods, "work").await;
        f.grant("g", "agent", ("batch/v1", "Job", "work"), tools(), None).await;
        let serial = f.issued_serial("g").await;
        let agent = agent_pair(&f, "g").await;
        let ca = Signer::mandate(&f.ns.api::<Secret>()).await;
        let now = OffsetDateTime::now_utc();
        let gateway = ca.client(
            GATEWAY,
            now - time::Duration::minutes(5),
            now + time::Duration::hours(1),
            None,
        );
        let s = Setup {
            f,
            agent,
            ca,
            gateway,
            serial,
        };
        s.wait_ready().await;
        // The decision service's caches follow the API server's watch events: wait
        // until they hold what the setup created (the grant, its identity, its task).
        s.wait_reason(&s.agent.cert, json!({}), "Allowed").await;
        s
    }

    /// Waits until `/readyz` says the decision service can answer.
    pub(crate) async fn wait_ready(&self) {
        crate::support::wait::poll("the decision service to be ready", || async {
            let (status, body) = self.f.op.get("/readyz").await;
            if status == 200 {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&body).into_owned())
            }
        })
        .await
    }

    /// `POST /v1/authorize` as `caller` (a client certificate) and/or with `token`.
    pub(crate) async fn authorize(&self, caller: Option<&Pair>, token: Option<&str>, body: Value) -> Reply {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        https(
            self.f.op.decision_port,
            &self.ca.cert_pem,
            caller,
            "POST",
            "/v1/authorize",
            &headers,
            serde_json::to_vec(&body).unwrap(),
        )
        .await
    }

    /// `method path` on the decision service with no credentials at all.
    pub(crate) async fn anonymous(&self, method: &str, path: &str) -> Reply {
        https(
            self.f.op.decision_port,
            &self.ca.cert_pem,
            None,
            method,
            path,
            &[],
            vec![],
        )
        .await
    }

    /// `GET <path>` on the decision service as the gateway (the audit trail).
    pub(crate) async fn gateway_get(&self, path: &str) -> Reply {
        https(
            self.f.op.decision_port,
            &self.ca.cert_pem,
            Some(&self.gateway),
            "GET",
            path,
            &[],
            vec![],
        )
        .await
    }

    /// `POST /v1/audit` of `report` as the gateway.
    pub(crate) async fn report(&self, report: &Value) -> Reply {
        https(
            self.f.op.decision_port,
            &self.ca.cert_pem,
            Some(&self.gateway),
            "POST",
            "/v1/audit",
            &[("content-type", "application/json")],
            serde_json::to_vec(report).unwrap(),
        )
        .await
    }

    /// The usual in-scope call for `cert`, as the gateway asks it.
    pub(crate) async fn ask(&self, cert: &str, extra: Value) -> Value {
        let mut body = json!({
            "certificate": cert, "tool": "github", "action": "read", "destination": "api.github.com/repos/acme/widgets",
            "intent": "read the open issues", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        let r = self.authorize(Some(&self.gateway), None, body).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Asks until the answer's reason is `reason` (the decision follows watch events).
    pub(crate) async fn wait_reason(&self, cert: &str, extra: Value, reason: &str) -> Value {
        crate::support::wait::poll(&format!("the answer {reason}"), || async {
            let got = self.ask(cert, extra.clone()).await;
            if got["reason"] == reason {
                Ok(got)
            } else {
                Err(got.to_string())
            }
        })
        .await
    }

    /// A token of ServiceAccount `name` (created if needed) for Mandate's audience.
    pub(crate) async fn token(&self, name: &str) -> String {
        crate::support::service_account_token(&self.f.ns.api::<ServiceAccount>(), name).await
    }
}

/// The certificate and key in the grant's Secret.
pub(crate) async fn agent_pair(f: &Fixture, grant: &str) -> Pair {
    let secret = f.secrets.get(grant).await.unwrap();
    let data = secret.data.unwrap();
    Pair {
        cert: String::from_utf8(data["tls.crt"].0.clone()).unwrap(),
        key: String::from_utf8(data["tls.key"].0.clone()).unwrap(),
    }
}

#[tokio::test]
async fn an_in_scope_call_is_allowed_with_its_grant_task_and_cache_bound() {
    let s = Setup::new("authz-allow", &[]).await;
    let got = s.ask(&s.agent.cert, json!({})).await;
    assert_eq!(got["allowed"], true, "{got}");
    assert_eq!(got["reason"], "Allowed");
    let g = s.f.grants.get("g").await.unwrap();
    assert_eq!(got["grant"]["name"], "g");
    assert_eq!(got["grant"]["uid"], json!(g.metadata.uid));
    assert_eq!(got["grant"]["generation"], json!(g.metadata.generation));
    assert_eq!(got["identity"], format!("{}/agent", s.f.ns.name));
    assert_eq!(got["task"]["kind"], "Job");
    assert_eq!(got["task"]["name"], "work");
    assert_eq!(got["serial"], s.serial);
    assert_eq!(got["decisionId"].as_str().unwrap().len(), 32);
    // validUntil: at most the flag's bound (5 s) ahead, never past the certificate.
    let until: k8s_openapi::jiff::Timestamp = got["validUntil"].as_str().unwrap().parse().unwrap();
    let now = k8s_openapi::jiff::Timestamp::now();
    assert!(
        until > now && until <= now + k8s_openapi::jiff::SignedDuration::from_secs(6),
        "{until}"
    );
    assert_eq!(
        got["policies"],
        json!([format!("{}-invoke-base/in-scope", s.f.ns.name)])
    );
    // The trust bundle and the CRL are public.
    let r = s.anonymous("GET", "/v1/trust-bundle").await;
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8(r.body).unwrap().trim(), s.ca.cert_pem.trim());
    let r = s.anonymous("GET", "/v1/crl").await;
    assert_eq!(r.status, 200);
    assert!(crate::grants::crl_der(&r.body).is_some());
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_16_an_unauthenticated_caller_learns_nothing() {
    let s = Setup::new("authz-unauth", &[]).await;
    let body =
        json!({"certificate": s.agent.cert, "tool": "github", "action": "read", "destination": "api.github.com"});
    for token in [None, Some("not-a-token")] {
        let r = s.authorize(None, token, body.clone()).await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.json(),
            json!({"reason": "Unauthenticated"}),
            "nothing but the refusal"
        );
    }
    // The audit trail is for trusted proxies only.
    let r = s.anonymous("GET", "/v1/audit").await;
    assert_eq!(r.status, 401);
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_13_a_stolen_certificate_replayed_by_another_serviceaccount_is_denied() {
    let s = Setup::new("authz-stolen", &[]).await;
    let body =
        json!({"certificate": s.agent.cert, "tool": "github", "action": "read", "destination": "api.github.com"});
    // The agent's own ServiceAccount asks about its own certificate: allowed.
    let own = s.token("agent").await;
    let r = s.authorize(None, Some(&own), body.clone()).await;
    assert_eq!(r.json()["reason"], "Allowed", "{}", String::from_utf8_lossy(&r.body));
    // Another pod's ServiceAccount presenting that certificate: denied.
    let thief = s.token("thief").await;
    let r = s.authorize(None, Some(&thief), body.clone()).await;
    assert_eq!(r.status, 200);
    let got = r.json();
    assert_eq!(got["allowed"], false);
    assert_eq!(got["reason"], "CallerNotSubject", "{got}");
    // An agent's own client certificate cannot vouch for another certificate either.
    let now = OffsetDateTime::now_utc();
    let forged = s.ca.client(
        "spiffe://e2e.example/ns/other/agent/x",
        now - time::Duration::minutes(1),
        now + time::Duration::hours(1),
        Some(&s.agent.cert),
    );
    let r = s.authorize(Some(&forged), None, body).await;
    assert_eq!(r.json()["reason"], "CallerNotSubject");
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_16_an_identity_asserted_by_an_untrusted_caller_is_denied() {
    let s = Setup::new("authz-assert", &[]).await;
    let spiffe = format!("spiffe://e2e.example/ns/{}/agent/agent", s.f.ns.name);
    let body = json!({"spiffeId": spiffe, "serial": s.serial, "tool": "github", "action": "read", "destination": "api.github.com"});
    let token = s.token("agent").await;
    let r = s.authorize(None, Some(&token), body.clone()).await;
    assert_eq!(r.json()["reason"], "UntrustedIdentityAssertion");
    // The trusted proxy may assert it (it terminated the agent's TLS).
    let r = s.authorize(Some(&s.gateway), None, body.clone()).await;
    assert_eq!(r.json()["reason"], "Allowed", "{}", String::from_utf8_lossy(&r.body));
    // ...but not a SPIFFE ID that is not the serial's.
    let mut wrong = body;
    wrong["spiffeId"] = json!("spiffe://e2e.example/ns/x/agent/y");
    let r = s.authorize(Some(&s.gateway), None, wrong).await;
    assert_eq!(r.json()["reason"], "IdentityMismatch");
    // No certificate at all.
    let r = s
        .authorize(
            Some(&s.gateway),
            None,
            json!({"tool": "github", "action": "read", "destination": "api.github.com"}),
        )
        .await;
    assert_eq!(r.json()["reason"], "NoCertificate");
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_15_calls_outside_the_certificates_scope_are_denied_each_with_its_reason() {
    let s = Setup::new("authz-scope", &[]).await;
    let cases = [
        (json!({"tool": "slack"}), "ToolNotGranted"),
        (json!({"action": "write"}), "ActionNotGranted"),
        (
            json!({"destination": "api.github.com.evil.example"}),
            "DestinationNotGranted",
        ),
        (json!({"dataSensitivity": "restricted"}), "SensitivityExceeded"),
        (
            json!({"tool": "query", "action": "call", "destination": "mcp.example/mcp", "arguments": {"query": "DROP TABLE orders"}}),
            "PolicyForbidden",
        ),
        (json!({"arguments": "not an object"}), "InvalidRequest"),
    ];
    for (extra, reason) in cases {
        let mut body = json!({
            "certificate": s.agent.cert, "tool": "github", "action": "read", "destination": "api.github.com",
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = s.authorize(Some(&s.gateway), None, body).await;
        let got = r.json();
        assert_eq!(got["reason"], reason, "{extra}: {got}");
        assert_eq!(got["allowed"], false);
    }
    // Arguments over the bound are refused before policy sees them.
    let big = "x".repeat(20_000);
    let r = s
        .authorize(
            Some(&s.gateway),
            None,
            json!({"certificate": s.agent.cert, "tool": "query", "action": "call", "destination": "mcp.example", "arguments": {"query": big}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], "InvalidRequest");
    // A harmless query passes.
    let got = s
        .ask(
            &s.agent.cert,
            json!({"tool": "query", "action": "call", "destination": "mcp.example", "arguments": {"query": "select 1"}}),
        )
        .await;
    assert_eq!(got["reason"], "Allowed", "{got}");
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_15_certificates_from_another_ca_expired_or_unrecorded_are_denied() {
    let s = Setup::new("authz-forged", &[]).await;
    let now = OffsetDateTime::now_utc();
    let spiffe = format!("spiffe://e2e.example/ns/{}/agent/agent", s.f.ns.name);
    let expired = s.ca.client(
        &spiffe,
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
        Some(&s.agent.cert),
    );
    assert_eq!(s.ask(&expired.cert, json!({})).await["reason"], "CertificateExpired");
    let stranger = Signer::other().client(
        &spiffe,
        now - time::Duration::hours(1),
        now + time::Duration::hours(1),
        Some(&s.agent.cert),
    );
    assert_eq!(s.ask(&stranger.cert, json!({})).await["reason"], "UntrustedIssuer");
    // Signed by Mandate's CA but never recorded: not a certificate Mandate issued.
    let unrecorded = s.ca.client(
        &spiffe,
        now - time::Duration::hours(1),
        now + time::Duration::hours(1),
        Some(&s.agent.cert),
    );
    assert_eq!(s.ask(&unrecorded.cert, json!({})).await["reason"], "UnknownSerial");
    assert_eq!(
        s.ask(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            json!({})
        )
        .await["reason"],
        "MalformedCertificate"
    );
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_12_a_completed_task_is_denied_at_once_and_its_timeline_is_one_query() {
    let s = Setup::new("authz-done", &[]).await;
    let first = s.ask(&s.agent.cert, json!({})).await;
    assert_eq!(first["reason"], "Allowed");
    // The gateway reports the call it let through.
    let report = json!({"kind": "ToolCall", "decisionId": first["decisionId"], "tool": "github", "action": "read",
                        "destination": "api.github.com/repos/acme/widgets", "message": "200 OK\nforged: line"});
    let r = s.report(&report).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));

    kubelet::finish_job_pod(&s.f.pods, "work", Outcome::Succeeded).await;
    let denied = s.wait_reason(&s.agent.cert, json!({}), "TaskFinished").await;
    assert_eq!(denied["allowed"], false);
    s.f.wait_phase("g", GrantPhase::Revoked).await;
    s.f.wait_revoked_in_crl(&s.serial).await;
    // Still denied once the record is revoked: nothing un-revokes it.
    assert_eq!(s.ask(&s.agent.cert, json!({})).await["allowed"], false);

    let task_uid = first["task"]["uid"].as_str().unwrap().to_string();
    let r = s.gateway_get(&format!("/v1/audit?task={task_uid}")).await;
    assert_eq!(r.status, 200);
    let page = r.json();
    let events = page["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let pos = |what: &str, is: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .position(is)
            .unwrap_or_else(|| panic!("no {what} in {kinds:?}"))
    };
    // The setup asked until the answer was Allowed, so the timeline may start with
    // denials from before the indexes held the task: find this test's events by what
    // they are, not by kind alone.
    let issued = pos("CertificateIssued", &|e| e["kind"] == "CertificateIssued");
    let allowed_at = pos("the first call's allow", &|e| {
        e["kind"] == "DecisionAllowed" && e["decisionId"] == first["decisionId"]
    });
    let call_at = pos("ToolCall", &|e| e["kind"] == "ToolCall");
    let finished_at = pos("the TaskFinished denial", &|e| {
        e["kind"] == "DecisionDenied" && e["reason"] == "TaskFinished"
    });
    assert!(issued < allowed_at, "{kinds:?}");
    assert!(allowed_at < call_at, "{kinds:?}");
    assert!(call_at < finished_at, "{kinds:?}");
    assert!(kinds.contains(&"CertificateRevoked"), "{kinds:?}");
    let g = s.f.grants.get("g").await.unwrap();
    for e in events {
        // Every event of the task carries the same correlation keys.
        assert_eq!(e["task"]["uid"], task_uid.as_str(), "{e}");
        assert_eq!(e["task"]["kind"], "Job");
        assert_eq!(e["task"]["name"], "work");
        assert_eq!(e["grant"]["uid"], json!(g.metadata.uid), "{e}");
        assert_eq!(e["grant"]["generation"], json!(g.metadata.generation));
        assert_eq!(e["identity"], format!("{}/agent", s.f.ns.name));
        assert_eq!(e["serial"], s.serial.as_str(), "{e}");
    }
    let allowed = &events[allowed_at];
    assert_eq!(allowed["decisionId"], first["decisionId"]);
    assert_eq!(allowed["reason"], "Allowed");
    assert_eq!(allowed["call"]["tool"], "github");
    assert_eq!(allowed["call"]["destination"], "api.github.com/repos/acme/widgets");
    assert_eq!(
        allowed["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    let call = &events[call_at];
    assert_eq!(call["decisionId"], first["decisionId"]);
    assert_eq!(call["message"], "200 OK\nforged: line");
    // The same events on stdout, one well-formed JSON object per line, the report's
    // newline escaped (threat 28).
    let (stdout, _) =
        s.f.op
            .audit_lines("the tool call's report on stdout", |lines| {
                lines
                    .iter()
                    .any(|l| l["kind"] == "ToolCall" && l["decisionId"] == first["decisionId"])
            })
            .await;
    assert!(!stdout.lines().any(|l| l.starts_with("forged")));
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_14_a_revoked_serial_stays_denied_while_its_replacement_is_issued() {
    let s = Setup::new("authz-renew", &[]).await;
    assert_eq!(s.ask(&s.agent.cert, json!({})).await["reason"], "Allowed");
    // The Secret is lost: its certificate is revoked and a new one issued.
    s.f.secrets.delete("g", &DeleteParams::default()).await.unwrap();
    s.f.wait_revoked_in_crl(&s.serial).await;
    let denied = s.wait_reason(&s.agent.cert, json!({}), "Revoked").await;
    assert!(denied["message"].as_str().unwrap().contains("SecretLost"), "{denied}");
    let fresh = crate::support::wait_for(&s.f.grants, "g", "a new serial", |g: &mandate::api::ToolGrant| {
        g.status
            .as_ref()
            .and_then(|st| st.certificate.as_ref())
            .is_some_and(|c| c.serial_number != s.serial)
    })
    .await;
    let _ = fresh;
    let new = agent_pair(&s.f, "g").await;
    assert_eq!(s.ask(&new.cert, json!({})).await["reason"], "Allowed");
    // The old one never comes back, however often the new one is renewed.
    for _ in 0..20 {
        assert_eq!(s.ask(&s.agent.cert, json!({})).await["reason"], "Revoked");
    }
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn grant_changes_suspension_and_deletion_deny_at_once() {
    let s = Setup::new("authz-live", &[]).await;
    assert_eq!(s.ask(&s.agent.cert, json!({})).await["reason"], "Allowed");
    // The grant's spec changes: the certificate no longer describes it.
    s.f.grants
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"purpose": "something else"}})),
        )
        .await
        .unwrap();
    s.wait_reason(&s.agent.cert, json!({}), "GrantChanged").await;
    let new = {
        crate::support::wait_for(&s.f.grants, "g", "reissued", |g: &mandate::api::ToolGrant| {
            g.status
                .as_ref()
                .and_then(|st| st.certificate.as_ref())
                .is_some_and(|c| c.grant_generation == 2)
        })
        .await;
        agent_pair(&s.f, "g").await
    };
    assert_eq!(s.ask(&new.cert, json!({})).await["reason"], "Allowed");
    // The identity is suspended.
    s.f.ids
        .patch(
            "agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": true}})),
        )
        .await
        .unwrap();
    s.wait_reason(&new.cert, json!({}), "IdentitySuspended").await;
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_17_a_deleted_grant_is_denied_before_any_allow() {
    let s = Setup::new("authz-deleted", &[]).await;
    assert_eq!(s.ask(&s.agent.cert, json!({})).await["reason"], "Allowed");
    s.f.grants.delete("g", &DeleteParams::default()).await.unwrap();
    // From the deletion on (the finalizer still holds the object), never an allow.
    let got = s.wait_reason(&s.agent.cert, json!({}), "GrantNotLive").await;
    assert_eq!(got["allowed"], false);
    crate::support::wait::wait_deleted(&s.f.grants, "g", "grant gone").await;
    // Once the deletion event has reached the decision service's cache.
    s.wait_reason(&s.agent.cert, json!({}), "GrantNotFound").await;
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn threat_28_a_flood_of_reports_is_bounded_and_counted() {
    let s = Setup::new("authz-flood", &["--audit-buffer-events=50"]).await;
    let first = s.ask(&s.agent.cert, json!({})).await;
    let crafted = "name\u{1b}[31m\r\nkind: CertificateRevoked\u{0}";
    for i in 0..120 {
        let report =
            json!({"kind": "DataAccess", "serial": s.serial, "tool": crafted, "message": format!("{i}{crafted}")});
        let r = s.report(&report).await;
        assert_eq!(r.status, 202);
    }
    // Oversized reports are refused.
    let big = json!({"kind": "DataAccess", "serial": s.serial, "message": "x".repeat(20_000)});
    let r = https(
        s.f.op.decision_port,
        &s.ca.cert_pem,
        Some(&s.gateway),
        "POST",
        "/v1/audit",
        &[],
        serde_json::to_vec(&big).unwrap(),
    )
    .await;
    assert_eq!(r.status, 413);
    let r = s.gateway_get("/v1/audit?limit=10000").await;
    let page = r.json();
    assert!(page["events"].as_array().unwrap().len() <= 50, "the buffer is bounded");
    assert!(page["dropped"].as_u64().unwrap() >= 70, "{}", page["dropped"]);
    let (_, metrics) = s.f.op.get("/metrics").await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mandate_audit_events_dropped_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // Each line on stdout is one JSON object; the crafted text stays inside its string.
    let (stdout, lines) =
        s.f.op
            .audit_lines("the 120 reports on stdout", |lines| {
                lines.iter().filter(|v| v["kind"] == "DataAccess").count() >= 120
            })
            .await;
    let mut reports = 0;
    for (l, v) in stdout.lines().zip(&lines) {
        if v["kind"] == "DataAccess" {
            reports += 1;
            assert_eq!(v["call"]["tool"], crafted);
        }
        assert!(
            !l.contains('\u{1b}') && !l.contains('\r'),
            "control characters are escaped: {l:?}"
        );
    }
    assert_eq!(reports, 120);
    let _ = first;
    s.f.ns.cleanup().await;
}
