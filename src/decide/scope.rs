//! Scope checks: is what a grant asks for within its identity's ceiling?
//!
//! Comparison is exact and byte-wise: no wildcards, no case folding, no Unicode
//! normalisation. The CRD schema already rejects names outside a small ASCII alphabet;
//! [`validate`] repeats that here so an object written before the schema tightened, or
//! through a path that skipped it, can never widen a grant.

use std::fmt;

use crate::api::ToolScope;

/// One thing a grant asks for that its identity's ceiling does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Excess {
    Tool { tool: String },
    Action { tool: String, action: String },
    Destination { tool: String, destination: String },
}

impl fmt::Display for Excess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Excess::Tool { tool } => write!(f, "tool {tool:?} is not in the identity's ceiling"),
            Excess::Action { tool, action } => write!(f, "action {action:?} on tool {tool:?} is not in the ceiling"),
            Excess::Destination { tool, destination } => {
                write!(f, "destination {destination:?} of tool {tool:?} is not in the ceiling")
            }
        }
    }
}

/// A name or destination that breaks the character rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is invalid: {rule}")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
    pub rule: &'static str,
}

fn is_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn is_destination(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b':' | b'/' | b'_' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && !s.contains("..")
        && !s.contains("//")
}

/// Checks every tool name, action and destination against the character rules.
pub fn validate(tools: &[ToolScope]) -> Result<(), InvalidName> {
    const WORD: &str = "use lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit";
    for t in tools {
        if !is_word(&t.name) {
            return Err(InvalidName {
                what: "tool name",
                value: t.name.clone(),
                rule: WORD,
            });
        }
        if let Some(a) = t.actions.iter().find(|a| !is_word(a)) {
            return Err(InvalidName {
                what: "action",
                value: a.clone(),
                rule: WORD,
            });
        }
        if let Some(d) = t.destinations.iter().find(|d| !is_destination(d)) {
            return Err(InvalidName {
                what: "destination",
                value: d.clone(),
                rule: "use a lower-case host, host:port or host/path without wildcards, '..' or '//'",
            });
        }
    }
    Ok(())
}

/// Whether destination `wanted` lies within `allowed`: the same, or a path below it.
/// The `/` boundary is what keeps `api.github.com` from also allowing
/// `api.github.com.evil.example`.
pub fn destination_within(wanted: &str, allowed: &str) -> bool {
    let allowed = allowed.trim_end_matches('/');
    wanted == allowed || wanted.strip_prefix(allowed).is_some_and(|rest| rest.starts_with('/'))
}

/// Everything in `requested` that `ceiling` does not allow; empty when within.
pub fn excess(requested: &[ToolScope], ceiling: &[ToolScope]) -> Vec<Excess> {
    let mut out = vec![];
    for r in requested {
        let Some(c) = ceiling.iter().find(|c| c.name == r.name) else {
            out.push(Excess::Tool { tool: r.name.clone() });
            continue;
        };
        for a in r.actions.iter().filter(|a| !c.actions.contains(a)) {
            out.push(Excess::Action {
                tool: r.name.clone(),
                action: a.clone(),
            });
        }
        for d in r
            .destinations
            .iter()
            .filter(|d| !c.destinations.iter().any(|cd| destination_within(d, cd)))
        {
            out.push(Excess::Destination {
                tool: r.name.clone(),
                destination: d.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, actions: &[&str], dests: &[&str]) -> ToolScope {
        ToolScope {
            name: name.into(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
            destinations: dests.iter().map(|s| s.to_string()).collect(),
            sensitivity: None,
        }
    }

    #[test]
    fn grant_within_ceiling_has_no_excess() {
        let ceiling = [tool("github", &["read", "write"], &["api.github.com"])];
        let req = [tool("github", &["read"], &["api.github.com/repos/acme"])];
        assert!(excess(&req, &ceiling).is_empty());
    }

    #[test]
    fn threat_2_every_excess_is_named() {
        let ceiling = [tool("github", &["read"], &["api.github.com/repos/acme"])];
        let req = [
            tool(
                "github",
                &["read", "admin"],
                &["api.github.com", "api.github.com/repos/acme/x"],
            ),
            tool("postgres", &["read"], &[]),
        ];
        assert_eq!(
            excess(&req, &ceiling),
            vec![
                Excess::Action {
                    tool: "github".into(),
                    action: "admin".into()
                },
                Excess::Destination {
                    tool: "github".into(),
                    destination: "api.github.com".into()
                },
                Excess::Tool {
                    tool: "postgres".into()
                },
            ]
        );
    }

    #[test]
    fn threat_3_lookalike_names_never_match_the_ceiling() {
        let ceiling = [tool("github", &["read"], &["api.github.com"])];
        for name in ["GitHub", "github ", "git\u{0435}hub", "*", "github/../admin"] {
            assert_eq!(
                excess(&[tool(name, &["read"], &[])], &ceiling),
                vec![Excess::Tool { tool: name.into() }]
            );
            assert!(
                validate(&[tool(name, &["read"], &[])]).is_err(),
                "{name:?} passed validation"
            );
        }
        assert!(validate(&[tool("github", &["re\0ad"], &[])]).is_err());
        assert!(validate(&[tool("github", &["read"], &["*.github.com"])]).is_err());
        assert!(validate(&[tool("github", &["read"], &["api.github.com/../admin"])]).is_err());
        assert!(validate(&[tool("github", &["read"], &["api.github.com/repos/acme"])]).is_ok());
    }

    #[test]
    fn destination_prefix_respects_the_path_boundary() {
        assert!(destination_within("api.github.com", "api.github.com"));
        assert!(destination_within("api.github.com/repos", "api.github.com"));
        assert!(destination_within("api.github.com/repos", "api.github.com/"));
        assert!(!destination_within("api.github.com.evil.example", "api.github.com"));
        assert!(!destination_within("api.github.com:8443", "api.github.com"));
        assert!(!destination_within("api.github.com", "api.github.com/repos"));
    }

    #[test]
    fn empty_ceiling_destinations_allow_no_destination() {
        let ceiling = [tool("calc", &["run"], &[])];
        assert!(excess(&[tool("calc", &["run"], &[])], &ceiling).is_empty());
        assert_eq!(excess(&[tool("calc", &["run"], &["example.com"])], &ceiling).len(), 1);
    }
}
