//! What each tenant may let its runs and sandboxes reach: the operator's allow-lists.

use std::collections::HashMap;
use std::sync::Arc;

use runcell_egress::{AllowList, NetworkPlan};

use crate::config::{Config, ConfigError, NetworkConfig};
use crate::error::{Error, Kind, Result};
use crate::tenants::{hash_key, tenant_of};

/// The names every tenant may ask for, and more for some.
#[derive(Debug, Default)]
pub struct Allowances {
    all: AllowList,
    by_tenant: HashMap<String, AllowList>,
}

impl Allowances {
    /// From `[network]` (each list checked; a key's own list names the key as configured).
    pub fn of(cfg: &Config) -> Result<Allowances, ConfigError> {
        let n: &NetworkConfig = &cfg.network;
        let parse = |what: &str, l: &[String]| {
            AllowList::parse(l, true).map_err(|e| ConfigError(format!("network.{what}: {e}")))
        };
        let all = parse("egress_allow", &n.egress_allow)?;
        let mut by_tenant = HashMap::new();
        for (key, list) in &n.key_allow {
            let mut l = parse("key_allow", list)?;
            l.rules.extend(all.rules.iter().cloned());
            by_tenant.insert(tenant_of(&hash_key(key)), l);
        }
        Ok(Allowances { all, by_tenant })
    }

    /// Whether any tenant may reach anything (the server then runs a gateway).
    pub fn any(&self) -> bool {
        !self.all.is_empty() || self.by_tenant.values().any(|l| !l.is_empty())
    }

    fn of_tenant(&self, tenant: &str) -> &AllowList {
        self.by_tenant.get(tenant).unwrap_or(&self.all)
    }

    /// Refuses (403) a plan asking for a name or port the tenant may not reach.
    pub fn check(&self, tenant: &str, plan: Option<&NetworkPlan>) -> Result<()> {
        let Some(plan) = plan else { return Ok(()) };
        let allowed = self.of_tenant(tenant);
        if allowed.is_empty() {
            return Err(Error::new(
                Kind::Forbidden,
                "NETWORK_NOT_ALLOWED",
                "this server gives this API key no network access; runs are offline (the \
                 operator can allow names with [network] egress_allow)",
            ));
        }
        if let Some(rule) = allowed.first_uncovered(&plan.allow) {
            return Err(Error::new(
                Kind::Forbidden,
                "NETWORK_NOT_ALLOWED",
                format!("this API key may not reach {rule}; it may reach only {allowed}"),
            ));
        }
        Ok(())
    }
}

pub type SharedAllowances = Arc<Allowances>;

#[cfg(test)]
mod tests {
    use super::*;
    use runcell_egress::{NetLimits, parse_network};

    fn plan(allow: &[&str]) -> NetworkPlan {
        let v = serde_json::json!({"egress": {"allow": allow}});
        let max = NetLimits {
            bytes: 1,
            bytes_per_sec: 1,
            connections: 1,
        };
        parse_network(Some(&v), max).unwrap().unwrap()
    }

    #[test]
    fn keys_get_the_common_list_and_their_own() {
        let mut cfg = Config::default();
        cfg.network.egress_allow = vec!["pypi.org".into(), "*.pythonhosted.org".into()];
        cfg.network
            .key_allow
            .insert("key-b".into(), vec!["github.com:*".into()]);
        let a = Allowances::of(&cfg).unwrap();
        assert!(a.any());
        let ta = tenant_of(&hash_key("key-a"));
        let tb = tenant_of(&hash_key("key-b"));
        assert!(a.check(&ta, None).is_ok());
        assert!(
            a.check(&ta, Some(&plan(&["pypi.org", "files.pythonhosted.org"])))
                .is_ok()
        );
        let e = a.check(&ta, Some(&plan(&["github.com:22"]))).unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Forbidden, "NETWORK_NOT_ALLOWED"));
        assert!(e.detail.contains("github.com:22"), "{}", e.detail);
        assert!(
            a.check(&tb, Some(&plan(&["github.com:22", "pypi.org"])))
                .is_ok()
        );

        let none = Allowances::of(&Config::default()).unwrap();
        assert!(!none.any());
        let e = none.check(&ta, Some(&plan(&["pypi.org"]))).unwrap_err();
        assert!(e.detail.contains("no network access"), "{}", e.detail);

        cfg.network.egress_allow = vec!["http://pypi.org".into()];
        assert!(Allowances::of(&cfg).is_err());
    }
}
