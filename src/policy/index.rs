//! Which policies can apply to a request, by their scope alone.
//!
//! Evaluating a Cedar policy costs about a microsecond, so a store of a thousand
//! policies evaluated in full would spend a millisecond per tool. Most policies name
//! their action, their tool or their namespace in the scope (`principal in
//! Mandate::Namespace::"x"`, `resource == Mandate::Tool::"y"`), and a policy whose
//! scope cannot match a request is never satisfied, so it cannot change the
//! decision. The index buckets policies by those scope constraints; a lookup returns
//! only the buckets a request can match, plus the unconstrained ones. Conditions
//! (`when`, `unless`) are never looked at: a policy that constrains only there stays
//! a candidate for every request, which is always correct.
//!
//! Every scope form the index does not understand (an `in` on an entity of another
//! type, `is`, a constraint on an entity type the principal or resource can never
//! have) lands in the "any" bucket of that position: the index may keep a policy it
//! could have dropped, never the reverse.

use std::collections::HashMap;

use cedar_policy::{ActionConstraint, EntityUid, Policy, PrincipalConstraint, ResourceConstraint};

use super::input::NAMES;

/// A policy's scope, reduced to what the index buckets on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scope {
    /// The action ids the policy can apply to; `None` for any action.
    pub actions: Option<Vec<String>>,
    /// The one tool the policy can apply to; `None` for any.
    pub tool: Option<String>,
    /// Which agents the policy can apply to.
    pub principal: PrincipalScope,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PrincipalScope {
    Any,
    /// Agents in this namespace.
    Namespace(String),
    /// This agent (`<namespace>/<name>`).
    Agent(String),
}

/// How a policy's scope constrains one position, as far as the index is concerned.
struct Position<T> {
    /// What the index buckets the policy on; `None` for "any".
    bucket: Option<T>,
    /// Whether every request looked up in that bucket satisfies the constraint.
    /// False for forms that only look bucketable (`principal is Requester in
    /// Mandate::Agent::"x"` lands in the agent's bucket, but never matches).
    implied: bool,
}

impl<T> Position<T> {
    fn any() -> Self {
        Position {
            bucket: None,
            implied: false,
        }
    }

    fn exactly(bucket: T, implied: bool) -> Self {
        Position {
            bucket: Some(bucket),
            implied,
        }
    }
}

fn is_action(u: &EntityUid) -> bool {
    u.type_name().basename() == "Action" && u.type_name().namespace() == "Mandate"
}

fn action_position(policy: &Policy) -> Position<Vec<String>> {
    match policy.action_constraint() {
        ActionConstraint::Eq(a) if is_action(&a) => Position::exactly(vec![a.id().unescaped().to_string()], true),
        // `action in [...]`: Mandate's schema has no action groups, so `in` is
        // membership of the listed actions themselves.
        ActionConstraint::In(list) if list.iter().all(is_action) => {
            Position::exactly(list.iter().map(|a| a.id().unescaped().to_string()).collect(), true)
        }
        _ => Position::any(),
    }
}

fn tool_position(policy: &Policy) -> Position<String> {
    let n = &*NAMES;
    // Tools have no parents, so `resource in Tool::"x"` is `resource == Tool::"x"`.
    match policy.resource_constraint() {
        ResourceConstraint::Eq(u) | ResourceConstraint::In(u) if u.type_name() == &n.tool => {
            Position::exactly(u.id().unescaped().to_string(), true)
        }
        ResourceConstraint::IsIn(ty, u) if u.type_name() == &n.tool => {
            Position::exactly(u.id().unescaped().to_string(), ty == n.tool)
        }
        _ => Position::any(),
    }
}

fn principal_position(policy: &Policy) -> Position<PrincipalScope> {
    let n = &*NAMES;
    // Agents' only parent is their namespace.
    match policy.principal_constraint() {
        PrincipalConstraint::Eq(u) | PrincipalConstraint::In(u) if u.type_name() == &n.agent => {
            Position::exactly(PrincipalScope::Agent(u.id().unescaped().to_string()), true)
        }
        PrincipalConstraint::IsIn(ty, u) if u.type_name() == &n.agent => {
            Position::exactly(PrincipalScope::Agent(u.id().unescaped().to_string()), ty == n.agent)
        }
        PrincipalConstraint::In(u) if u.type_name() == &n.namespace => {
            Position::exactly(PrincipalScope::Namespace(u.id().unescaped().to_string()), true)
        }
        PrincipalConstraint::IsIn(ty, u) if u.type_name() == &n.namespace => {
            Position::exactly(PrincipalScope::Namespace(u.id().unescaped().to_string()), ty == n.agent)
        }
        _ => Position::any(),
    }
}

impl Scope {
    #[cfg(test)]
    pub fn of(policy: &Policy) -> Scope {
        classify(policy).0
    }
}

/// A policy's scope, as the index buckets it, and the policy as evaluated from its
/// bucket: the same id, effect, annotations and conditions, without the scope
/// constraints the bucket already guarantees (`None` when nothing is implied, or the
/// policy cannot be rewritten; it is then used as written).
///
/// Evaluating `principal in Mandate::Namespace::"x"` costs an entity lookup and an
/// ancestor check for every policy of every decision, though the index only ever
/// hands this policy to requests by agents of that namespace. Dropping what is
/// implied cuts the cost of evaluating a scoped policy by about a third and cannot
/// change its answer for those requests. The rewritten policy must only be
/// evaluated through the index.
pub fn classify(policy: &Policy) -> (Scope, Option<Policy>) {
    let (action, tool, principal) = (
        action_position(policy),
        tool_position(policy),
        principal_position(policy),
    );
    let relaxed = relaxed(
        policy,
        [
            ("action", action.implied),
            ("resource", tool.implied),
            ("principal", principal.implied),
        ],
    );
    let scope = Scope {
        actions: action.bucket,
        tool: tool.bucket,
        principal: principal.bucket.unwrap_or(PrincipalScope::Any),
    };
    (scope, relaxed)
}

fn relaxed(policy: &Policy, implied: [(&str, bool); 3]) -> Option<Policy> {
    let unconstrained = || serde_json::json!({ "op": "All" });
    if !implied.iter().any(|(_, i)| *i) {
        return None;
    }
    let mut est = policy.to_json().ok()?;
    for (position, implied) in implied {
        if implied {
            *est.get_mut(position)? = unconstrained();
        }
    }
    Policy::from_json(Some(policy.id().clone()), est).ok()
}

/// Leaves bucketed by action, then tool, then principal. While the store is built a
/// leaf is the list of policy numbers with that scope; the store then turns each
/// into the Cedar policy sets it evaluates ([`ScopeIndex::map`]).
#[derive(Debug)]
pub(crate) struct ScopeIndex<T> {
    any_action: ToolBuckets<T>,
    by_action: HashMap<String, ToolBuckets<T>>,
}

#[derive(Debug)]
struct ToolBuckets<T> {
    any_tool: PrincipalBuckets<T>,
    by_tool: HashMap<String, PrincipalBuckets<T>>,
}

#[derive(Debug)]
struct PrincipalBuckets<T> {
    any: T,
    by_namespace: HashMap<String, T>,
    by_agent: HashMap<String, T>,
}

// Hand-written so `T` need not be `Default` for the maps (derive would require it).
impl<T: Default> Default for ScopeIndex<T> {
    fn default() -> Self {
        ScopeIndex {
            any_action: ToolBuckets::default(),
            by_action: HashMap::new(),
        }
    }
}

impl<T: Default> Default for ToolBuckets<T> {
    fn default() -> Self {
        ToolBuckets {
            any_tool: PrincipalBuckets::default(),
            by_tool: HashMap::new(),
        }
    }
}

impl<T: Default> Default for PrincipalBuckets<T> {
    fn default() -> Self {
        PrincipalBuckets {
            any: T::default(),
            by_namespace: HashMap::new(),
            by_agent: HashMap::new(),
        }
    }
}

impl<T> PrincipalBuckets<T> {
    fn leaf_mut(&mut self, principal: &PrincipalScope) -> &mut T
    where
        T: Default,
    {
        match principal {
            PrincipalScope::Any => &mut self.any,
            PrincipalScope::Namespace(ns) => self.by_namespace.entry(ns.clone()).or_default(),
            PrincipalScope::Agent(a) => self.by_agent.entry(a.clone()).or_default(),
        }
    }

    fn collect<'a>(&'a self, namespace: &str, agent: &str, out: &mut Vec<&'a T>) {
        out.push(&self.any);
        out.extend(self.by_namespace.get(namespace));
        out.extend(self.by_agent.get(agent));
    }

    fn map<U>(self, f: &mut impl FnMut(&PrincipalScope, T) -> U) -> PrincipalBuckets<U> {
        PrincipalBuckets {
            any: f(&PrincipalScope::Any, self.any),
            by_namespace: self
                .by_namespace
                .into_iter()
                .map(|(ns, t)| {
                    let u = f(&PrincipalScope::Namespace(ns.clone()), t);
                    (ns, u)
                })
                .collect(),
            by_agent: self
                .by_agent
                .into_iter()
                .map(|(a, t)| {
                    let u = f(&PrincipalScope::Agent(a.clone()), t);
                    (a, u)
                })
                .collect(),
        }
    }
}

impl<T> ToolBuckets<T> {
    fn collect<'a>(&'a self, tool: &str, namespace: &str, agent: &str, out: &mut Vec<&'a T>) {
        self.any_tool.collect(namespace, agent, out);
        if let Some(b) = self.by_tool.get(tool) {
            b.collect(namespace, agent, out);
        }
    }

    fn map<U>(self, f: &mut impl FnMut(&PrincipalScope, T) -> U) -> ToolBuckets<U> {
        ToolBuckets {
            any_tool: self.any_tool.map(f),
            by_tool: self.by_tool.into_iter().map(|(t, b)| (t, b.map(f))).collect(),
        }
    }
}

impl ScopeIndex<Vec<u32>> {
    /// Add policy number `policy` with scope `scope`.
    pub fn insert(&mut self, scope: &Scope, policy: u32) {
        let add = |buckets: &mut ToolBuckets<Vec<u32>>| {
            let tool = match &scope.tool {
                None => &mut buckets.any_tool,
                Some(t) => buckets.by_tool.entry(t.clone()).or_default(),
            };
            tool.leaf_mut(&scope.principal).push(policy);
        };
        match &scope.actions {
            None => add(&mut self.any_action),
            Some(actions) => {
                // `action in [a, a]` must not put the policy in a leaf twice.
                let unique: std::collections::BTreeSet<&String> = actions.iter().collect();
                for a in unique {
                    add(self.by_action.entry(a.clone()).or_default());
                }
            }
        }
    }
}

impl<T> ScopeIndex<T> {
    /// The leaves whose scope can match `action` by the agent `agent`
    /// (`<namespace>/<name>`, in `namespace`) on `tool`. A policy is in at most one
    /// of them for a given action, so nothing is evaluated twice.
    pub fn leaves(&self, action: &str, namespace: &str, agent: &str, tool: &str) -> Vec<&T> {
        let mut out = Vec::with_capacity(12);
        self.any_action.collect(tool, namespace, agent, &mut out);
        if let Some(b) = self.by_action.get(action) {
            b.collect(tool, namespace, agent, &mut out);
        }
        out
    }

    /// Turn every leaf into something else, told the principal scope of the leaf.
    pub fn map<U>(self, mut f: impl FnMut(&PrincipalScope, T) -> U) -> ScopeIndex<U> {
        ScopeIndex {
            any_action: self.any_action.map(&mut f),
            by_action: self.by_action.into_iter().map(|(a, b)| (a, b.map(&mut f))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn scope(text: &str) -> Scope {
        Scope::of(&Policy::from_str(text).unwrap())
    }

    #[test]
    fn scopes_are_read_from_the_policy_head() {
        let s = scope(
            r#"permit(principal in Mandate::Namespace::"pay", action == Mandate::Action::"issue", resource == Mandate::Tool::"stripe");"#,
        );
        assert_eq!(
            s,
            Scope {
                actions: Some(vec!["issue".into()]),
                tool: Some("stripe".into()),
                principal: PrincipalScope::Namespace("pay".into())
            }
        );
        let s = scope(
            r#"forbid(principal == Mandate::Agent::"pay/bot", action in [Mandate::Action::"issue", Mandate::Action::"invoke"], resource in Mandate::Tool::"pg");"#,
        );
        assert_eq!(s.actions, Some(vec!["issue".into(), "invoke".into()]));
        assert_eq!(s.tool.as_deref(), Some("pg"));
        assert_eq!(s.principal, PrincipalScope::Agent("pay/bot".into()));
    }

    #[test]
    fn scopes_the_index_does_not_understand_are_any() {
        let s = scope(
            r#"permit(principal in Mandate::Group::"g", action == Other::Action::"issue", resource is Mandate::Tool) when { resource.name == "x" };"#,
        );
        assert_eq!(
            s,
            Scope {
                actions: None,
                tool: None,
                principal: PrincipalScope::Any
            }
        );
    }

    #[test]
    fn relaxed_drops_only_what_the_bucket_implies() {
        let relax = |text: &str| {
            let policy = Policy::parse(Some(cedar_policy::PolicyId::new("pol")), text).unwrap();
            classify(&policy).1.map(|r| {
                assert_eq!(r.id(), policy.id());
                assert_eq!(r.effect(), policy.effect());
                r.to_json().unwrap()
            })
        };
        let all = serde_json::json!({ "op": "All" });

        let r = relax(
            r#"@approval("required") forbid(principal in Mandate::Namespace::"pay", action == Mandate::Action::"issue", resource == Mandate::Tool::"stripe") when { context.ttlSeconds > 60 };"#,
        )
        .unwrap();
        assert_eq!((&r["principal"], &r["action"], &r["resource"]), (&all, &all, &all));
        assert_eq!(r["annotations"]["approval"], "required");
        assert_eq!(r["conditions"].as_array().map(Vec::len), Some(1));

        // Bucketed on the agent, but `is Requester` never matches one: kept.
        let r = relax(
            r#"permit(principal is Mandate::Requester in Mandate::Agent::"pay/bot", action, resource in Mandate::Tool::"pg");"#,
        )
        .unwrap();
        assert_eq!(r["principal"]["op"], "is");
        assert_eq!(r["action"], all);
        assert_eq!(r["resource"], all);

        let r =
            relax(r#"permit(principal is Mandate::Agent in Mandate::Namespace::"pay", action, resource);"#).unwrap();
        assert_eq!(r["principal"], all);

        // Nothing the index buckets on: used as written.
        assert!(relax(r#"permit(principal in Mandate::Group::"g", action, resource is Mandate::Tool);"#).is_none());
    }

    #[test]
    fn candidates_are_the_matching_buckets_and_the_unconstrained_ones() {
        let mut idx = ScopeIndex::<Vec<u32>>::default();
        let policies = [
            r#"permit(principal, action, resource);"#,
            r#"permit(principal in Mandate::Namespace::"pay", action == Mandate::Action::"issue", resource == Mandate::Tool::"stripe");"#,
            r#"permit(principal in Mandate::Namespace::"support", action == Mandate::Action::"issue", resource == Mandate::Tool::"stripe");"#,
            r#"permit(principal, action == Mandate::Action::"invoke", resource);"#,
            r#"forbid(principal == Mandate::Agent::"pay/bot", action, resource);"#,
            r#"forbid(principal, action, resource == Mandate::Tool::"github");"#,
        ];
        for (i, p) in policies.iter().enumerate() {
            idx.insert(&scope(p), i as u32);
        }
        let candidates = |action, ns, agent, tool| {
            let mut c: Vec<u32> = idx
                .leaves(action, ns, agent, tool)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            c.sort();
            c
        };
        assert_eq!(candidates("issue", "pay", "pay/bot", "stripe"), [0, 1, 4]);
        assert_eq!(candidates("issue", "pay", "pay/other", "stripe"), [0, 1]);
        assert_eq!(candidates("issue", "support", "support/x", "github"), [0, 5]);
        assert_eq!(candidates("invoke", "other", "other/x", "jira"), [0, 3]);
    }
}
