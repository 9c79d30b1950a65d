use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// One tool, the actions allowed on it and the destinations it may reach.
///
/// Names are compared exactly, byte for byte: there are no wildcards and no case
/// folding, so a grant can never be wider than what it spells out. The schema only
/// admits lower-case ASCII names, which rules out look-alike Unicode, padding and
/// path tricks before the operator sees them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolScope {
    /// Tool name, for example `github` or `postgres`. Lower-case letters, digits, `.`, `_`
    /// and `-`; starts and ends with a letter or digit; at most 63 characters.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$')").message("tool names are lower-case letters, digits, '.', '_' or '-', start and end with a letter or digit, and are at most 63 characters"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// Actions allowed on the tool, for example `read`, `write`, `create-issue`. Same
    /// character rules as tool names. At least one, at most 32, no repeats.
    #[schemars(
        length(min = 1, max = 32),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub actions: Vec<String>,

    /// Destinations the tool may reach: host names, `host:port`, or URL-style
    /// prefixes such as `api.github.com/repos/acme`. Lower-case; no wildcards, no
    /// `..`, no query or fragment. Empty means the tool needs no network destination.
    /// At most 32, no repeats, each at most 253 characters.
    #[serde(default)]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([a-z0-9.:/_-]*[a-z0-9/])?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(d, !d.contains('..') && !d.contains('//'))").message("destinations must not contain '..' or '//'"))]
    pub destinations: Vec<String>,
}
