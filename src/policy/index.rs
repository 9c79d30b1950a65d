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

impl Scope {
    pub fn of(policy: &Policy) -> Scope {
        let n = &*NAMES;
        let is_action = |u: &EntityUid| u.type_name().basename() == "Action" && u.type_name().namespace() == "Mandate";
        let actions = match policy.action_constraint() {
            ActionConstraint::Any => None,
            ActionConstraint::Eq(a) if is_action(&a) => Some(vec![a.id().unescaped().to_string()]),
            // `action in [...]`: Mandate's schema has no action groups, so `in` is
            // membership of the listed actions themselves.
            ActionConstraint::In(list) if list.iter().all(is_action) => {
                Some(list.iter().map(|a| a.id().unescaped().to_string()).collect())
            }
            _ => None,
        };
        // Tools have no parents, so `resource in Tool::"x"` is `resource == Tool::"x"`.
        let tool = match policy.resource_constraint() {
            ResourceConstraint::Eq(u) | ResourceConstraint::In(u) | ResourceConstraint::IsIn(_, u)
                if u.type_name() == &n.tool =>
            {
                Some(u.id().unescaped().to_string())
            }
            _ => None,
        };
        // Agents' only parent is their namespace.
        let principal = match policy.principal_constraint() {
            PrincipalConstraint::Eq(u) | PrincipalConstraint::In(u) | PrincipalConstraint::IsIn(_, u)
                if u.type_name() == &n.agent =>
            {
                PrincipalScope::Agent(u.id().unescaped().to_string())
            }
            PrincipalConstraint::In(u) | PrincipalConstraint::IsIn(_, u) if u.type_name() == &n.namespace => {
                PrincipalScope::Namespace(u.id().unescaped().to_string())
            }
            _ => PrincipalScope::Any,
        };
        Scope {
            actions,
            tool,
            principal,
        }
    }
}

/// Policy indexes bucketed by action, then tool, then principal.
#[derive(Debug, Default)]
pub(crate) struct ScopeIndex {
    any_action: ToolBuckets,
    by_action: HashMap<String, ToolBuckets>,
}

#[derive(Debug, Default)]
struct ToolBuckets {
    any_tool: PrincipalBuckets,
    by_tool: HashMap<String, PrincipalBuckets>,
}

#[derive(Debug, Default)]
struct PrincipalBuckets {
    any: Vec<u32>,
    by_namespace: HashMap<String, Vec<u32>>,
    by_agent: HashMap<String, Vec<u32>>,
}

impl PrincipalBuckets {
    fn insert(&mut self, principal: &PrincipalScope, policy: u32) {
        match principal {
            PrincipalScope::Any => self.any.push(policy),
            PrincipalScope::Namespace(ns) => self.by_namespace.entry(ns.clone()).or_default().push(policy),
            PrincipalScope::Agent(a) => self.by_agent.entry(a.clone()).or_default().push(policy),
        }
    }

    fn collect(&self, namespace: &str, agent: &str, out: &mut Vec<u32>) {
        out.extend_from_slice(&self.any);
        if let Some(v) = self.by_namespace.get(namespace) {
            out.extend_from_slice(v);
        }
        if let Some(v) = self.by_agent.get(agent) {
            out.extend_from_slice(v);
        }
    }
}

impl ToolBuckets {
    fn insert(&mut self, scope: &Scope, policy: u32) {
        let bucket = match &scope.tool {
            None => &mut self.any_tool,
            Some(t) => self.by_tool.entry(t.clone()).or_default(),
        };
        bucket.insert(&scope.principal, policy);
    }

    fn collect(&self, tool: &str, namespace: &str, agent: &str, out: &mut Vec<u32>) {
        self.any_tool.collect(namespace, agent, out);
        if let Some(b) = self.by_tool.get(tool) {
            b.collect(namespace, agent, out);
        }
    }
}

impl ScopeIndex {
    /// Add policy number `policy` with scope `scope`.
    pub fn insert(&mut self, scope: &Scope, policy: u32) {
        match &scope.actions {
            None => self.any_action.insert(scope, policy),
            Some(actions) => {
                for a in actions {
                    self.by_action.entry(a.clone()).or_default().insert(scope, policy);
                }
            }
        }
    }

    /// The policies whose scope can match `action` by the agent `agent`
    /// (`<namespace>/<name>`, in `namespace`) on `tool`: sorted, without repeats.
    pub fn candidates(&self, action: &str, namespace: &str, agent: &str, tool: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.any_action.collect(tool, namespace, agent, &mut out);
        if let Some(b) = self.by_action.get(action) {
            b.collect(tool, namespace, agent, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
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
    fn candidates_are_the_matching_buckets_and_the_unconstrained_ones() {
        let mut idx = ScopeIndex::default();
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
        assert_eq!(idx.candidates("issue", "pay", "pay/bot", "stripe"), [0, 1, 4]);
        assert_eq!(idx.candidates("issue", "pay", "pay/other", "stripe"), [0, 1]);
        assert_eq!(idx.candidates("issue", "support", "support/x", "github"), [0, 5]);
        assert_eq!(idx.candidates("invoke", "other", "other/x", "jira"), [0, 3]);
    }
}
