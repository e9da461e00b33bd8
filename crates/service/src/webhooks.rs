//! Webhooks: Standard Webhooks signatures, the SSRF guard, and the durable delivery loop.
//!
//! A finished execution with a `callback_url` becomes a delivery row (its message id is
//! stable across retries). The loop POSTs due deliveries, records every attempt, and
//! reschedules failures with backoff until a 2xx, a 410, or the last attempt. The target's
//! addresses are checked before every attempt and the connection is pinned to a checked
//! address, so DNS cannot move a delivery onto a private network between check and connect;
//! redirects are not followed.
//!
//! Several nodes may share one database (docs/cluster.md): each attempt is made under a claim
//! of the delivery by this node ([`Store::claim_due_deliveries`]) with a lease of
//! [`Webhooks::lease`], twice the longest an attempt may take, and recording the attempt
//! releases the claim. A node that dies mid-attempt loses its claims when their leases pass,
//! and another node makes the attempt; the lost one is not recorded (it counts as not made).

use runcell_engine::model::now_ms;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use ipnet::IpNet;
use tokio::sync::Notify;

use runcell_store::{Attempt, DeliveryRow, DeliveryState, Store};

use serde::{Deserialize, Serialize};

/// Webhook delivery settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Hosts, IP addresses or CIDR ranges allowed as targets although they are loopback,
    /// private, link-local or metadata addresses.
    pub allow: Vec<String>,
    /// Attempts before a delivery is given up (the first one included).
    pub max_attempts: u32,
    /// Waits between attempts, seconds; the last one repeats.
    pub backoff_secs: Vec<f64>,
    /// Timeout of one attempt, seconds.
    pub timeout_secs: f64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow: Vec::new(),
            max_attempts: 8,
            backoff_secs: vec![5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0],
            timeout_secs: 10.0,
        }
    }
}

/// An entry of the allow list: a host name, an address or a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    Host(String),
    Net(IpNet),
}

impl AllowEntry {
    pub fn parse(s: &str) -> Result<AllowEntry, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty entry".into());
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(AllowEntry::Net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(AllowEntry::Net(IpNet::from(ip)));
        }
        if s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Ok(AllowEntry::Host(s.to_ascii_lowercase()));
        }
        Err(format!(
            "{s:?} is not a host name, an IP address or a CIDR range"
        ))
    }
}

/// The allow list.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<AllowEntry>);

impl AllowList {
    pub fn new(entries: &[String]) -> Result<AllowList, String> {
        entries
            .iter()
            .map(|e| AllowEntry::parse(e))
            .collect::<Result<Vec<_>, _>>()
            .map(AllowList)
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.0
            .iter()
            .any(|e| matches!(e, AllowEntry::Host(h) if *h == host))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.0
            .iter()
            .any(|e| matches!(e, AllowEntry::Net(n) if n.contains(&ip)))
    }
}

fn v4_forbidden(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.0.0/16, cloud metadata included
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || o[0] >= 240 // reserved
}

fn v6_forbidden(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_forbidden(v4);
    }
    // NAT64 (64:ff9b::/96) carries an IPv4 address too.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return v4_forbidden(v4);
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fd00:ec2::254 metadata included
        || (s[0] & 0xffc0) == 0xfe80 // link local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
}

/// True for loopback, private, link-local (cloud metadata), and other non-public addresses.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_forbidden(v4),
        IpAddr::V6(v6) => v6_forbidden(v6),
    }
}

/// A checked target: the URL and the addresses it may be delivered to.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: url::Url,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Parses and checks a callback URL: http or https, no credentials, and every address its
/// host resolves to must be public unless the host or the address is allow-listed.
pub async fn check_target(raw: &str, allow: &AllowList) -> Result<Target, String> {
    let url =
        url::Url::parse(raw).map_err(|e| format!("callback_url {raw:?} is not a URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "callback_url must use http or https, not {}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("callback_url must not contain credentials".into());
    }
    let host = url
        .host_str()
        .ok_or_else(|| "callback_url has no host".to_string())?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| "callback_url has no port".to_string())?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| format!("resolving {host} timed out"))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    if !allow.allows_host(&host) {
        for a in &addrs {
            if forbidden(a.ip()) && !allow.allows_ip(a.ip()) {
                return Err(format!(
                    "callback_url {host} resolves to {}, a loopback, private, link-local or \
                     metadata address; this server only calls such targets when they are \
                     allow-listed (RUNCELL_WEBHOOK_ALLOW)",
                    a.ip()
                ));
            }
        }
    }
    Ok(Target { url, host, addrs })
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under a `whsec_` secret.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("bad webhook secret: {e}"))?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key)
        .map_err(|e| format!("bad webhook secret: {e}"))?;
    mac.update(format!("{msg_id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// A new webhook secret (24 random bytes).
pub fn new_secret() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("the kernel's random source");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b)
    )
}

/// What an attempt may take besides the POST's own timeout: resolving the target (at most
/// 5 s), reading the tenant's secret, and slack.
const ATTEMPT_OVERHEAD: Duration = Duration::from_secs(15);

/// Deliveries claimed at once (attempted concurrently).
const CLAIM_BATCH: u32 = 32;

/// The delivery loop's handle.
pub struct Webhooks {
    pub config: WebhookConfig,
    pub allow: AllowList,
    pub wake: Notify,
    /// The node whose claims this loop makes (its registered id, `crate::cluster`).
    node: String,
    /// The POST's timeout (`config.timeout_secs`).
    post_timeout: Duration,
    /// The most one attempt may take (the POST's timeout and [`ATTEMPT_OVERHEAD`]): an
    /// attempt still under way then is abandoned and recorded as failed.
    attempt_limit: Duration,
}

impl Webhooks {
    /// `node` identifies this process among the nodes sharing the database: its claims on
    /// deliveries carry it.
    pub fn new(config: WebhookConfig, node: String) -> Result<Webhooks, String> {
        let post_timeout = Duration::try_from_secs_f64(config.timeout_secs)
            .map_err(|e| format!("webhooks.timeout_secs {}: {e}", config.timeout_secs))?;
        let attempt_limit = post_timeout
            .checked_add(ATTEMPT_OVERHEAD)
            .filter(|l| {
                l.checked_mul(2)
                    .is_some_and(|lease| lease.as_millis() < (1 << 40))
            })
            .ok_or_else(|| format!("webhooks.timeout_secs {} is too long", config.timeout_secs))?;
        Ok(Webhooks {
            allow: AllowList::new(&config.allow)?,
            config,
            wake: Notify::new(),
            node,
            post_timeout,
            attempt_limit,
        })
    }

    /// The node whose claims this loop makes.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long a claim lasts: twice the most one attempt may take (50 s with the default
    /// 10 s timeout), so an attempt always ends, and is recorded, within its claim's lease.
    pub fn lease(&self) -> Duration {
        self.attempt_limit * 2
    }

    /// Wait before attempt number `attempt` (1-based: the wait after the first failure is
    /// `backoff_secs[0]`).
    fn backoff(&self, failed_attempts: usize) -> Duration {
        let b = &self.config.backoff_secs;
        let s = b
            .get(failed_attempts.saturating_sub(1))
            .or(b.last())
            .copied()
            .unwrap_or(60.0);
        Duration::from_secs_f64(s)
    }

    /// Delivers due messages until the process ends.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            let now = now_ms();
            let lease_until = now + self.lease().as_millis() as i64;
            match store
                .claim_due_deliveries(&self.node, now, lease_until, CLAIM_BATCH)
                .await
            {
                Ok(due) if !due.is_empty() => {
                    let mut tasks = Vec::new();
                    for d in due {
                        let me = Arc::clone(&self);
                        let store = Arc::clone(&store);
                        tasks.push(tokio::spawn(async move { me.attempt(&*store, d).await }));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("claiming due webhook deliveries: {e}"),
            }
            let wait = match store.next_delivery_due().await {
                Ok(Some(t)) => Duration::from_millis((t - now_ms()).clamp(10, 60_000) as u64),
                _ => Duration::from_secs(60),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn attempt(&self, store: &dyn Store, d: DeliveryRow) {
        let started = std::time::Instant::now();
        let at = now_ms();
        let posted = tokio::time::timeout(self.attempt_limit, self.post(store, &d))
            .await
            .unwrap_or_else(|_| {
                Err((
                    format!(
                        "the attempt took longer than {} s",
                        self.attempt_limit.as_secs_f64()
                    ),
                    false,
                ))
            });
        let (status_code, error, permanent) = match posted {
            Ok(code) => (Some(code), None, code == 410),
            Err((e, permanent)) => (None, Some(e), permanent),
        };
        let delivered = status_code.is_some_and(|c| (200..300).contains(&c));
        let attempts = d.attempts.len() + 1;
        let (state, next) = if delivered {
            (DeliveryState::Delivered, None)
        } else if permanent || attempts >= self.config.max_attempts as usize {
            (DeliveryState::Failed, None)
        } else {
            let wait = self.backoff(attempts);
            (DeliveryState::Pending, Some(at + wait.as_millis() as i64))
        };
        let attempt = Attempt {
            at,
            status_code,
            error,
            duration_ms: started.elapsed().as_millis() as i64,
        };
        match store
            .record_attempt(&self.node, &d.id, &attempt, state, next)
            .await
        {
            Ok(true) => {}
            // Deleted with its execution, or this node's claim lapsed and another node took
            // the delivery: that node's attempt counts, not this one.
            Ok(false) => tracing::info!(
                "webhook attempt {} not recorded: the delivery is gone or no longer claimed by \
                 this node",
                d.id
            ),
            Err(e) => tracing::warn!("recording webhook attempt {}: {e}", d.id),
        }
    }

    /// One POST. Errors say whether retrying is pointless.
    async fn post(&self, store: &dyn Store, d: &DeliveryRow) -> Result<u16, (String, bool)> {
        let target = check_target(&d.url, &self.allow)
            .await
            .map_err(|e| (e, true))?;
        let secret = store
            .webhook_secret(&d.tenant, new_secret())
            .await
            .map_err(|e| (e.to_string(), false))?;
        let ts = now_ms() / 1000;
        let signature = sign(&secret, &d.id, ts, &d.payload).map_err(|e| (e, true))?;
        let client = reqwest::Client::builder()
            .resolve_to_addrs(&target.host, &target.addrs)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.post_timeout)
            .user_agent("runcell-webhooks/1")
            .build()
            .map_err(|e| (format!("http client: {e}"), false))?;
        let method = reqwest::Method::from_bytes(d.method.as_bytes())
            .map_err(|_| (format!("unknown HTTP method {:?}", d.method), true))?;
        let resp = client
            .request(method, target.url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await
            .map_err(|e| (format!("{e}"), false))?;
        Ok(resp.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(forbidden(ip.parse().unwrap()), "{ip} must be forbidden");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!forbidden(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn targets_are_checked() {
        let none = AllowList::default();
        assert!(check_target("http://127.0.0.1:9/x", &none).await.is_err());
        assert!(check_target("http://[::1]:9/x", &none).await.is_err());
        assert!(
            check_target("http://169.254.169.254/latest", &none)
                .await
                .is_err()
        );
        assert!(check_target("http://localhost:9/x", &none).await.is_err());
        assert!(check_target("ftp://example.com/", &none).await.is_err());
        assert!(
            check_target("http://user:pw@8.8.8.8/", &none)
                .await
                .is_err()
        );
        assert!(check_target("not a url", &none).await.is_err());
        assert!(check_target("http://8.8.8.8:80/hook", &none).await.is_ok());
        let allow = AllowList::new(&["127.0.0.1".into()]).unwrap();
        assert!(check_target("http://127.0.0.1:9/x", &allow).await.is_ok());
        assert!(check_target("http://10.0.0.1/x", &allow).await.is_err());
        let allow = AllowList::new(&["10.0.0.0/8".into(), "localhost".into()]).unwrap();
        assert!(check_target("http://10.9.9.9/x", &allow).await.is_ok());
        assert!(check_target("http://localhost:9/x", &allow).await.is_ok());
        assert!(AllowList::new(&["bad entry!".into()]).is_err());
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(new_secret().starts_with("whsec_"));
    }
}
