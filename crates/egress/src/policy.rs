//! Allow-lists: what a run may reach, what a tenant may ask for, and the request's shape.
//!
//! A rule is a host name (`pypi.org`), a wildcard for the names beneath a domain
//! (`*.pythonhosted.org`, which does not match `pythonhosted.org` itself), or `*` (any name;
//! only useful in the operator's configuration), with a port (`api.example.com:8443`). A rule
//! without a port allows 80 and 443. The operator may also write `host:*` (any port the tenant
//! names). Names are compared in lower case without a trailing dot; addresses are never
//! rules (an allow-list is about names; addresses are checked after resolution).

use std::fmt;

use serde::Deserialize;

/// Rules in one list at most.
pub const MAX_RULES: usize = 64;

/// A rule's hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Exactly this name.
    Exact(String),
    /// The names strictly beneath this domain (`*.domain`).
    Below(String),
    /// Any name (`*`).
    Any,
}

/// A rule's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// 80 and 443 (a rule written without a port).
    Web,
    One(u16),
    /// Any port (`host:*`, operator rules only).
    Any,
}

impl Ports {
    fn contains(self, port: u16) -> bool {
        match self {
            Ports::Web => port == 80 || port == 443,
            Ports::One(p) => p == port,
            Ports::Any => true,
        }
    }

    fn list(self) -> Vec<u16> {
        match self {
            Ports::Web => vec![80, 443],
            Ports::One(p) => vec![p],
            Ports::Any => Vec::new(),
        }
    }

    fn covers(self, other: Ports) -> bool {
        match other {
            Ports::Web => self.contains(80) && self.contains(443),
            Ports::One(p) => self.contains(p),
            Ports::Any => self == Ports::Any,
        }
    }
}

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub host: Host,
    pub ports: Ports,
}

/// Why a list or a request was refused, in a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn err(s: impl Into<String>) -> PolicyError {
    PolicyError(s.into())
}

/// A name in canonical form (lower case, no trailing dot), if it is a valid host name.
pub fn canonical_name(name: &str) -> Option<String> {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if n.is_empty() || n.len() > 253 {
        return None;
    }
    for label in n.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return None;
        }
    }
    Some(n)
}

fn looks_like_address(n: &str) -> bool {
    n.parse::<std::net::IpAddr>().is_ok()
        || n.rsplit('.')
            .next()
            .is_some_and(|tld| !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()))
}

impl Rule {
    /// Parses one entry; `operator` allows the forms only the operator's configuration
    /// takes (`*` alone, `host:*`).
    pub fn parse(text: &str, operator: bool) -> Result<Rule, PolicyError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(err("an allow-list entry is empty"));
        }
        if t.contains("://") || t.contains('/') {
            return Err(err(format!(
                "{t:?} is not a host name: write the name alone, like \"pypi.org\" or \"api.example.com:443\""
            )));
        }
        if t.starts_with('[') || t.matches(':').count() > 1 {
            return Err(err(format!(
                "{t:?} is an address: allow-lists take host names, not addresses"
            )));
        }
        let (host, ports) = match t.rsplit_once(':') {
            Some((h, "*")) if operator => (h, Ports::Any),
            Some((_, "*")) => {
                return Err(err(format!(
                    "{t:?}: name the port (\"host:443\"); any port is not allowed"
                )));
            }
            Some((h, p)) => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| err(format!("{t:?}: the port must be 1 to 65535")))?;
                (h, Ports::One(port))
            }
            None => (t, Ports::Web),
        };
        let host = if host == "*" {
            if !operator {
                return Err(err(
                    "\"*\" (any host) cannot be asked for; list the names the program needs",
                ));
            }
            Host::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            let d = canonical_name(domain)
                .ok_or_else(|| err(format!("{t:?} is not a valid wildcard (\"*.example.com\")")))?;
            if !d.contains('.') && !operator {
                return Err(err(format!(
                    "{t:?} covers a whole top-level domain; name a domain beneath it"
                )));
            }
            Host::Below(d)
        } else {
            Host::Exact(
                canonical_name(host)
                    .ok_or_else(|| err(format!("{t:?} is not a valid host name")))?,
            )
        };
        if looks_like_address(host_text(&host)) {
            return Err(err(format!(
                "{t:?} is an address: allow-lists take host names, not addresses"
            )));
        }
        Ok(Rule { host, ports })
    }

    fn matches_name(&self, name: &str) -> bool {
        match &self.host {
            Host::Exact(n) => n == name,
            Host::Below(d) => {
                name.len() > d.len() + 1 && name.ends_with(d.as_str()) && {
                    name.as_bytes()[name.len() - d.len() - 1] == b'.'
                }
            }
            Host::Any => true,
        }
    }

    /// Whether this (operator) rule allows everything `other` (a requested rule) allows.
    fn covers(&self, other: &Rule) -> bool {
        let hosts = match (&self.host, &other.host) {
            (Host::Any, _) => true,
            (_, Host::Any) => false,
            (Host::Exact(a), Host::Exact(b)) => a == b,
            (Host::Exact(_), Host::Below(_)) => false,
            (Host::Below(_), Host::Exact(b)) => self.matches_name(b),
            (Host::Below(a), Host::Below(b)) => a == b || self.matches_name(b),
        };
        hosts && self.ports.covers(other.ports)
    }
}

fn host_text(h: &Host) -> &str {
    match h {
        Host::Exact(n) | Host::Below(n) => n,
        Host::Any => "",
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Exact(n) => write!(f, "{n}")?,
            Host::Below(d) => write!(f, "*.{d}")?,
            Host::Any => write!(f, "*")?,
        }
        match self.ports {
            Ports::Web => Ok(()),
            Ports::One(p) => write!(f, ":{p}"),
            Ports::Any => write!(f, ":*"),
        }
    }
}

/// An allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    pub rules: Vec<Rule>,
}

impl AllowList {
    /// Parses entries; `operator` as in [`Rule::parse`].
    pub fn parse<S: AsRef<str>>(entries: &[S], operator: bool) -> Result<AllowList, PolicyError> {
        if entries.len() > MAX_RULES {
            return Err(err(format!(
                "an allow-list has at most {MAX_RULES} entries, got {}",
                entries.len()
            )));
        }
        let rules = entries
            .iter()
            .map(|e| Rule::parse(e.as_ref(), operator))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The ports `name` (canonical) may be reached on; empty: the name is not allowed.
    pub fn ports_for(&self, name: &str) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .rules
            .iter()
            .filter(|r| r.matches_name(name))
            .flat_map(|r| r.ports.list())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The first requested rule that no rule of `self` (the operator's) covers.
    pub fn first_uncovered<'a>(&self, requested: &'a AllowList) -> Option<&'a Rule> {
        requested
            .rules
            .iter()
            .find(|r| !self.rules.iter().any(|o| o.covers(r)))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A run's or sandbox's network limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetLimits {
    /// Bytes both ways together, over the run's (sandbox's) life.
    pub bytes: u64,
    /// Bytes per second both ways together.
    pub bytes_per_sec: u64,
    /// Connections open at once.
    pub connections: u32,
}

/// The `network` setting of a request, as sent.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    pub egress: Option<EgressRequest>,
    #[serde(default)]
    pub limits: Option<NetLimitsRequest>,
}

/// `network.egress`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EgressRequest {
    /// Host names (`pypi.org`), wildcards (`*.pythonhosted.org`) and ports
    /// (`api.example.com:8443`; without one, 80 and 443).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Only `deny`: what is not listed is refused.
    #[serde(default)]
    pub default: Option<String>,
}

/// `network.limits`: each may only lower the server's.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetLimitsRequest {
    pub bytes: Option<u64>,
    pub bytes_per_sec: Option<u64>,
    pub connections: Option<u32>,
}

/// What a request's `network` asks for: nothing (offline), or an allow-list with limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub allow: AllowList,
    pub limits: NetLimits,
}

/// Parses a request's `network` (`false`/`null`/absent: offline) against the server's
/// maximum limits. Shape errors are [`PolicyError`]s meant for a 400; whether the tenant may
/// ask for these names is the caller's question ([`AllowList::first_uncovered`]).
pub fn parse_network(
    v: Option<&serde_json::Value>,
    max: NetLimits,
) -> Result<Option<NetworkPlan>, PolicyError> {
    use serde_json::Value;
    let v = match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => {
            return Err(err(
                "network: true is not enough: list the hosts the program may reach, as \
                 {\"egress\": {\"allow\": [\"pypi.org\"]}}",
            ));
        }
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(err(
                "network must be false or {\"egress\": {\"allow\": [host names]}}",
            ));
        }
    };
    let req: NetworkRequest =
        serde_json::from_value(v.clone()).map_err(|e| err(format!("network: {e}")))?;
    let Some(egress) = req.egress else {
        return Ok(None);
    };
    match egress.default.as_deref() {
        None | Some("deny") => {}
        Some(other) => {
            return Err(err(format!(
                "network.egress.default must be \"deny\" (everything not listed is refused), got {other:?}"
            )));
        }
    }
    if egress.allow.is_empty() {
        return Ok(None);
    }
    let allow = AllowList::parse(&egress.allow, false)
        .map_err(|e| err(format!("network.egress.allow: {e}")))?;
    let l = req.limits.unwrap_or_default();
    let lower = |name: &str, asked: Option<u64>, max: u64| -> Result<u64, PolicyError> {
        match asked {
            None => Ok(max),
            Some(0) => Err(err(format!("network.limits.{name} must be at least 1"))),
            Some(a) if a > max => Err(err(format!(
                "network.limits.{name} may be at most {max} on this server, got {a}"
            ))),
            Some(a) => Ok(a),
        }
    };
    let limits = NetLimits {
        bytes: lower("bytes", l.bytes, max.bytes)?,
        bytes_per_sec: lower("bytes_per_sec", l.bytes_per_sec, max.bytes_per_sec)?,
        connections: lower(
            "connections",
            l.connections.map(u64::from),
            u64::from(max.connections),
        )? as u32,
    };
    Ok(Some(NetworkPlan { allow, limits }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(e: &[&str], op: bool) -> AllowList {
        AllowList::parse(e, op).unwrap()
    }

    #[test]
    fn rules_parse_names_wildcards_and_ports() {
        let l = list(
            &["PyPI.org.", "*.pythonhosted.org", "api.example.com:8443"],
            false,
        );
        assert_eq!(l.ports_for("pypi.org"), vec![80, 443]);
        assert_eq!(l.ports_for("files.pythonhosted.org"), vec![80, 443]);
        assert_eq!(l.ports_for("a.b.pythonhosted.org"), vec![80, 443]);
        assert!(l.ports_for("pythonhosted.org").is_empty());
        assert!(l.ports_for("evilpythonhosted.org").is_empty());
        assert_eq!(l.ports_for("api.example.com"), vec![8443]);
        assert!(l.ports_for("example.com").is_empty());
        assert_eq!(
            l.to_string(),
            "pypi.org, *.pythonhosted.org, api.example.com:8443"
        );
    }

    #[test]
    fn addresses_urls_and_wide_patterns_are_refused_with_a_reason() {
        for bad in [
            "10.0.0.1",
            "169.254.169.254:80",
            "[::1]:80",
            "fd00:ec2::254",
            "http://pypi.org",
            "pypi.org/simple",
            "",
            "bad_-.com:0",
            "a..b",
            "pypi.org:70000",
            "*",
            "*.com",
            "pypi.org:*",
        ] {
            let e = Rule::parse(bad, false).unwrap_err();
            assert!(!e.0.is_empty(), "{bad}");
        }
        assert!(Rule::parse("*", true).is_ok());
        assert!(Rule::parse("*.test", true).is_ok());
        assert!(Rule::parse("github.com:*", true).is_ok());
        assert!(AllowList::parse(&vec!["a.com"; MAX_RULES + 1], false).is_err());
    }

    #[test]
    fn operator_lists_cover_requests_name_by_name_and_port_by_port() {
        let op = list(
            &["*.test", "pypi.org", "github.com:*", "api.example.com:443"],
            true,
        );
        let ok = list(
            &["allowed.test", "*.a.test", "pypi.org", "github.com:22"],
            false,
        );
        assert_eq!(op.first_uncovered(&ok), None);
        for (asked, bad) in [
            ("test.org", "test.org"),
            ("files.pypi.org", "files.pypi.org"),
            ("*.pypi.org", "*.pypi.org"),
            ("pypi.org:8080", "pypi.org:8080"),
            ("api.example.com", "api.example.com"),
        ] {
            let r = list(&[asked], false);
            assert_eq!(
                op.first_uncovered(&r).map(|r| r.to_string()),
                Some(bad.into())
            );
        }
        assert_eq!(list(&["*:*"], true).first_uncovered(&ok), None);
        // `*` is any name on the web ports only.
        let any_web = list(&["*"], true);
        assert_eq!(
            any_web.first_uncovered(&ok).map(|r| r.to_string()),
            Some("github.com:22".into())
        );
        assert!(AllowList::default().first_uncovered(&ok).is_some());
    }

    #[test]
    fn the_request_shape_is_checked_and_limits_only_lowered() {
        let max = NetLimits {
            bytes: 1000,
            bytes_per_sec: 100,
            connections: 8,
        };
        assert_eq!(parse_network(None, max), Ok(None));
        assert_eq!(parse_network(Some(&json!(false)), max), Ok(None));
        assert_eq!(
            parse_network(Some(&json!({"egress": {"allow": []}})), max),
            Ok(None)
        );
        let p = parse_network(
            Some(&json!({"egress": {"allow": ["a.test"], "default": "deny"},
                         "limits": {"bytes": 10}})),
            max,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.limits.bytes, 10);
        assert_eq!(p.limits.connections, 8);
        for bad in [
            json!(true),
            json!("yes"),
            json!({"egress": {"allow": ["a.test"], "default": "allow"}}),
            json!({"egress": {"allow": ["10.0.0.1"]}}),
            json!({"egress": {"allow": ["a.test"]}, "limits": {"bytes": 1001}}),
            json!({"egress": {"allow": ["a.test"]}, "limits": {"connections": 0}}),
            json!({"egress": {"allow": ["a.test"], "deny": []}}),
        ] {
            assert!(parse_network(Some(&bad), max).is_err(), "{bad}");
        }
    }
}
