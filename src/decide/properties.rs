//! Property tests of the pure decisions: scope matching, name validation and the grant
//! step, over generated inputs (the CRL's entries and number: `controller::ledger`).

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::{
    grant::{CaObs, LiveCert, Observed, Plan, PolicyObs, SecretObs, decide, live_serials},
    scope::{destination_within, excess, validate},
    task::{Outcome, TaskState},
};
use crate::{
    api::{AgentIdentity, GrantPhase, RecordFacts, ToolGrant, ToolScope},
    spiffe::SpiffeId,
};

const NOW: i64 = 1_800_000_000;

fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,6}[a-z0-9]"
}

fn tool() -> impl Strategy<Value = ToolScope> {
    (
        word(),
        prop::collection::btree_set(word(), 1..4),
        prop::collection::btree_set("[a-z]{1,5}\\.example(/[a-z]{1,4}){0,2}", 0..3),
    )
        .prop_map(|(name, actions, destinations)| ToolScope {
            name,
            actions: actions.into_iter().collect(),
            destinations: destinations.into_iter().collect(),
            sensitivity: Default::default(),
        })
}

fn tools() -> impl Strategy<Value = Vec<ToolScope>> {
    prop::collection::vec(tool(), 1..4).prop_map(|mut v| {
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.dedup_by(|a, b| a.name == b.name);
        v
    })
}

fn record() -> impl Strategy<Value = RecordFacts> {
    ("[0-9a-f]{2,4}", NOW - 100..NOW + 100, prop::option::of(NOW - 200..NOW))
        .prop_map(|(s, not_after, revoked)| RecordFacts::sample(&s, not_after, revoked))
}

proptest! {
    /// A grant that asks for exactly its ceiling, or for any part of it, is within it.
    #[test]
    fn a_subset_of_the_ceiling_is_never_excess(ceiling in tools(), keep in any::<prop::sample::Index>()) {
        prop_assert!(excess(&ceiling, &ceiling).is_empty());
        let mut narrower = ceiling.clone();
        let t = &mut narrower[keep.index(ceiling.len())];
        t.actions.truncate(1);
        t.destinations.truncate(1);
        prop_assert!(excess(&narrower, &ceiling).is_empty());
    }

    /// Anything added beyond the ceiling is named, whatever else the grant asks for.
    #[test]
    fn an_action_beyond_the_ceiling_is_always_named(ceiling in tools(), extra in "[a-z]{9,12}") {
        let mut wider = ceiling.clone();
        wider[0].actions.push(extra.clone());
        let found = excess(&wider, &ceiling);
        prop_assert_eq!(found.len(), 1);
        prop_assert!(found[0].to_string().contains(&extra));
    }

    /// A destination is within another only at a path boundary: no suffix trick widens it.
    #[test]
    fn destinations_match_only_at_a_path_boundary(host in "[a-z]{1,8}\\.example", tail in "[a-z.]{1,8}", path in "[a-z]{1,6}") {
        prop_assert!(destination_within(&host, &host));
        let below = format!("{host}/{path}");
        prop_assert!(destination_within(&below, &host));
        let longer = format!("{host}{tail}");
        prop_assert!(!destination_within(&longer, &host));
        prop_assert!(!destination_within(&host, &below), "a path never allows its parent");
    }

    /// Names with anything outside the small ASCII alphabet are refused, never normalised.
    #[test]
    fn tool_names_outside_the_alphabet_are_refused(name in "[a-z]{1,4}[A-Z \\x00/*%\u{0430}][a-z]{1,4}") {
        let t = ToolScope { name: name.clone(), actions: vec!["read".into()], destinations: vec![], sensitivity: Default::default() };
        prop_assert!(validate(&[t]).is_err(), "{name:?} accepted");
    }

    /// Every agent name that builds a SPIFFE ID yields exactly one plain path: no
    /// `%`, `..`, `?`, `#` or extra segment.
    #[test]
    fn spiffe_ids_are_built_only_from_plain_segments(name in "\\PC{0,70}", ns in "[a-z0-9-]{1,70}") {
        if let Ok(id) = SpiffeId::for_agent("example.org", &ns, &name) {
            let s = id.to_string();
            let path = s.strip_prefix("spiffe://example.org/").unwrap();
            let segments: Vec<&str> = path.split('/').collect();
            prop_assert_eq!(segments.len(), 4);
            prop_assert!(segments.iter().all(|seg| !seg.is_empty() && seg.len() <= 63
                && seg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')));
        }
    }

    /// The grant step never issues when anything that must hold does not, and never
    /// revokes a serial that is not live.
    #[test]
    fn the_grant_step_issues_only_when_everything_holds(
        suspended in any::<bool>(),
        finished in prop::option::of(prop_oneof![Just(Outcome::Succeeded), Just(Outcome::Failed), Just(Outcome::Deleting)]),
        task_exists in any::<bool>(),
        identity_exists in any::<bool>(),
        deleted in any::<bool>(),
        policy in prop_oneof![Just(PolicyObs::Allow), Just(PolicyObs::Loading), Just(PolicyObs::Deny { message: "no".into() })],
        ca_ready in any::<bool>(),
        has_live in any::<bool>(),
        final_phase in any::<bool>(),
        records in prop::collection::vec(record(), 0..4),
        jitter in 0.0f64..1.0,
    ) {
        let now = Timestamp::from_second(NOW).unwrap();
        let mut g: ToolGrant = serde_json::from_value(serde_json::json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
            "metadata": {"name": "g", "namespace": "ns", "uid": "g-uid", "generation": 1},
            "spec": {"identityRef": {"name": "a"}, "taskRef": {"apiVersion": "v1", "kind": "Pod", "name": "p"},
                     "tools": [{"name": "github", "actions": ["read"]}], "purpose": "x", "requester": {"username": "alice"}}
        })).unwrap();
        if deleted {
            g.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        }
        if final_phase {
            g.status = Some(crate::api::ToolGrantStatus { phase: Some(GrantPhase::Revoked), ..Default::default() });
        }
        let mut id: AgentIdentity = serde_json::from_value(serde_json::json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "AgentIdentity",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"owner": "team", "serviceAccountName": "sa", "tools": [{"name": "github", "actions": ["read"]}]}
        })).unwrap();
        id.spec.suspended = suspended;
        let o = Observed {
            now,
            grant: &g,
            identity: identity_exists.then_some(&id),
            task: task_exists.then(|| TaskState {
                uid: "t-uid".into(),
                started_at: Some(now),
                deadline: None,
                finished: finished.map(|f| (f, "done".into())),
                finished_at: None,
            }),
            secret: if has_live {
                SecretObs::Ours(Some(LiveCert {
                    serial: "ab".into(),
                    not_after: now + SignedDuration::from_hours(1),
                    renew_at: now - SignedDuration::from_mins(1),
                    grant_generation: 1,
                    task_uid: "t-uid".into(),
                }))
            } else {
                SecretObs::Absent
            },
            ca: if ca_ready {
                CaObs::Ready { not_after: now + SignedDuration::from_hours(1000) }
            } else {
                CaObs::Unavailable { reason: "CaMissing", message: "gone".into() }
            },
            operator_max_ttl: std::time::Duration::from_secs(3600),
            jitter,
            policy: policy.clone(),
            records: records.clone(),
        };
        let live = live_serials(&o);
        let ended_in_record = records.iter().any(|r| r.revoked.is_some_and(|(_, c)| c.is_final()));
        match decide(&o) {
            Plan::Issue { revoke_first, .. } => {
                prop_assert!(!suspended && identity_exists && task_exists && finished.is_none() && !deleted);
                prop_assert!(ca_ready && policy == PolicyObs::Allow && !final_phase && !ended_in_record);
                prop_assert!(revoke_first.iter().all(|s| live.contains(s)));
            }
            Plan::Revoke { serials, .. } | Plan::Withhold { serials, .. } => {
                prop_assert!(serials.iter().all(|s| live.contains(s)), "{serials:?} not all live in {live:?}");
            }
            Plan::Hold { .. } => {}
        }
    }
}

fn some_duration() -> impl Strategy<Value = std::time::Duration> {
    prop_oneof![
        (0u64..4_000_000).prop_map(std::time::Duration::from_secs),
        any::<u64>().prop_map(std::time::Duration::from_secs),
        Just(std::time::Duration::MAX),
    ]
}

proptest! {
    /// Whatever the durations (zero, huge, `u64::MAX` seconds), a planned certificate
    /// ends at the earliest limit, never after any of them, starts backdated, renews
    /// inside its own validity, and names the limit that won (threats 8 and 9).
    #[test]
    fn a_planned_lifetime_never_outlives_any_limit(
        requested in prop::option::of(some_duration()),
        identity in some_duration(),
        operator in some_duration(),
        deadline in prop::option::of(-100i64..10_000_000),
        lifetime_left in -100i64..10_000_000,
        ca_left in -100i64..100_000_000,
        jitter in 0.0f64..1.0,
    ) {
        use super::lifetime::{BACKDATE, Limits, MIN_LIFETIME, after, plan};
        let now = Timestamp::from_second(NOW).unwrap();
        let at = |s: i64| now + SignedDuration::from_secs(s);
        let limits = Limits {
            now,
            requested_ttl: requested,
            identity_max_ttl: identity,
            operator_max_ttl: operator,
            task_deadline: deadline.map(at),
            grant_expires_at: at(lifetime_left),
            ca_not_after: at(ca_left),
        };
        let bounds: Vec<Timestamp> = [
            requested.map(|d| after(now, d)),
            Some(after(now, identity)),
            Some(after(now, operator)),
            deadline.map(at),
            Some(at(lifetime_left)),
            Some(at(ca_left)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let earliest = *bounds.iter().min().unwrap();
        match plan(&limits, jitter) {
            Ok(l) => {
                prop_assert_eq!(l.not_after, earliest);
                prop_assert!(bounds.iter().all(|b| l.not_after <= *b));
                prop_assert_eq!(l.not_before, now - SignedDuration::try_from(BACKDATE).unwrap());
                prop_assert!(l.renew_at > now && l.renew_at < l.not_after);
                prop_assert!(now.duration_until(l.not_after) >= SignedDuration::try_from(MIN_LIFETIME).unwrap());
            }
            Err(e) => {
                prop_assert_eq!(e.until, earliest);
                prop_assert!(now.duration_until(earliest) < SignedDuration::try_from(MIN_LIFETIME).unwrap());
            }
        }
    }

    /// Go durations as the API accepts them (`ttl`, `maxTTL`, `maxGrantLifetime`): any
    /// text either parses or is an error, never a panic, and a plain count of seconds,
    /// minutes or hours parses to exactly that (threat 8).
    #[test]
    fn durations_parse_exactly_or_fail(text in "\\PC{0,12}", n in 0u64..1_000_000, unit in prop::sample::select(vec![("s", 1u64), ("m", 60), ("h", 3600)])) {
        let _ = text.parse::<kube::core::Duration>();
        let parsed: kube::core::Duration = format!("{n}{}", unit.0).parse().unwrap();
        prop_assert_eq!(std::time::Duration::from(parsed), std::time::Duration::from_secs(n * unit.1));
    }
}
