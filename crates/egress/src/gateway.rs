//! A jail's gateway: its resolver and its relay.
//!
//! A jail that may reach the network still has no interface and no route out. Its network
//! namespace gets two things, both made by the host (the namespace belongs to the host's user
//! namespace, so nothing inside can change them):
//! * a `local` route for 198.18.0.0/15 on its loopback, so that every address of that range
//!   is the jail's own, and
//! * a UDP socket on 127.0.0.1:53, the only resolver in the jail's `/etc/resolv.conf`.
//!
//! The gateway answers a query for an allowed name with a stand-in address from that range
//! (one per name) and listens on it, inside the namespace, on the ports the allow-list gives
//! the name. A connection to it is relayed by the server: the first bytes must not name
//! another host (TLS SNI, HTTP `Host`), the name is resolved again, addresses a jail may never
//! reach are dropped (loopback, private, link-local and metadata, this node's own), and the
//! relay connects to what is left, counting bytes both ways under the run's limits. Anything
//! else a program tries (an address it knows, another port, UDP, another resolver) meets a
//! namespace with no route: refused by the kernel, not by us.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::addr::{forbidden, own_addresses};
use crate::dns::{self, Lookup};
use crate::peek::{MAX_PEEK, Peek, peek};
use crate::policy::{AllowList, NetLimits, NetworkPlan};

/// The range of stand-in addresses, made local to each jail's namespace.
pub const STAND_IN_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const STAND_IN_PREFIX: u8 = 15;
/// Where a jail's resolver listens.
pub const RESOLVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53);
/// Names one jail may look up at most.
pub const MAX_NAMES: usize = 256;
/// Refusals kept for the report (all are counted).
pub const MAX_REFUSALS: usize = 32;

/// Operations in a jail's network namespace, done by the host.
pub trait Netns: Send + Sync + 'static {
    /// Makes every address of `net/prefix` local (a `local` route on the loopback).
    fn add_local_route(&self, net: Ipv4Addr, prefix: u8) -> io::Result<()>;
    /// A listening TCP socket bound to `addr` in the namespace.
    fn bind_tcp(&self, addr: SocketAddrV4) -> io::Result<std::net::TcpListener>;
    /// A UDP socket bound to `addr` in the namespace.
    fn bind_udp(&self, addr: SocketAddrV4) -> io::Result<std::net::UdpSocket>;
}

/// The gateway's settings (the server's, for every jail).
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The resolver the gateway asks (from the host's network).
    pub resolver: SocketAddr,
    /// One try of a lookup.
    pub resolve_timeout: Duration,
    /// Connecting to an allowed host.
    pub connect_timeout: Duration,
    /// Waiting for a connection's first bytes (after it, a server-speaks-first protocol is
    /// assumed).
    pub first_bytes_timeout: Duration,
}

impl EgressConfig {
    pub fn new(resolver: SocketAddr) -> EgressConfig {
        EgressConfig {
            resolver,
            resolve_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            first_bytes_timeout: Duration::from_secs(2),
        }
    }
}

/// The host's first resolver (`/etc/resolv.conf`), port 53.
pub fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// What a jail's network did, as results and metrics report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkStats {
    /// Bytes the jail sent out.
    pub bytes_out: u64,
    /// Bytes the jail received.
    pub bytes_in: u64,
    /// Connections relayed.
    pub connections: u64,
    /// Lookups and connections refused.
    pub refused: u64,
    /// The network limit that was reached (`bytes`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_exceeded: Option<String>,
    /// The first refusals, each with the name asked for and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
}

/// One refused lookup or connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Refusal {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub reason: String,
}

/// The gateway service: a small runtime of its own that serves every jail's gateway.
pub struct Egress {
    rt: Option<tokio::runtime::Runtime>,
    cfg: EgressConfig,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").field("cfg", &self.cfg).finish()
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Egress {
    pub fn new(cfg: EgressConfig) -> io::Result<Egress> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("runcell-egress")
            .enable_all()
            .build()?;
        Ok(Egress { rt: Some(rt), cfg })
    }

    pub fn config(&self) -> &EgressConfig {
        &self.cfg
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.rt
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
    }

    /// Gives the namespace `ns` its resolver and stand-in range, and serves them under
    /// `plan`. `label` names the jail in logs. Everything stops when the gateway is closed
    /// or dropped.
    pub fn attach(
        &self,
        ns: Arc<dyn Netns>,
        plan: &NetworkPlan,
        label: impl Into<String>,
    ) -> io::Result<Gateway> {
        ns.add_local_route(STAND_IN_NET, STAND_IN_PREFIX)?;
        let udp = ns.bind_udp(RESOLVER)?;
        udp.set_nonblocking(true)?;
        let handle = self.handle().clone();
        let _enter = handle.enter();
        let udp = UdpSocket::from_std(udp)?;
        let shared = Arc::new(Shared {
            label: label.into(),
            allow: plan.allow.clone(),
            limits: plan.limits,
            cfg: self.cfg.clone(),
            ns,
            own: own_addresses(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            open: AtomicU32::new(0),
            state: Mutex::new(State {
                names: HashMap::new(),
                next: 1,
                cache: HashMap::new(),
                refusals: Vec::new(),
                limit: None,
                bucket: Bucket {
                    tokens: plan.limits.bytes_per_sec as f64,
                    last: Instant::now(),
                },
            }),
            tasks: Mutex::new(Some(JoinSet::new())),
            handle,
        });
        shared.spawn(serve_dns(Arc::clone(&shared), udp));
        Ok(Gateway { shared })
    }
}

/// One jail's gateway. Dropping it stops its resolver and cuts its connections.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("jail", &self.shared.label)
            .finish()
    }
}

impl Gateway {
    /// What the jail's network did so far.
    pub fn stats(&self) -> NetworkStats {
        self.shared.stats()
    }

    /// Stops the gateway; what the jail's network did.
    pub fn close(self) -> NetworkStats {
        self.shared.stop();
        self.shared.stats()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct State {
    /// Names looked up, and their stand-in addresses.
    names: HashMap<String, Ipv4Addr>,
    /// The next stand-in address (offset in the range).
    next: u32,
    /// Upstream answers: addresses and until when they hold.
    cache: HashMap<String, (Vec<Ipv4Addr>, Instant)>,
    refusals: Vec<Refusal>,
    limit: Option<String>,
    bucket: Bucket,
}

struct Shared {
    label: String,
    allow: AllowList,
    limits: NetLimits,
    cfg: EgressConfig,
    ns: Arc<dyn Netns>,
    own: Vec<IpAddr>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Both ways, counted against the byte limit before the bytes pass.
    total: AtomicU64,
    connections: AtomicU64,
    refused: AtomicU64,
    open: AtomicU32,
    state: Mutex<State>,
    tasks: Mutex<Option<JoinSet<()>>>,
    handle: tokio::runtime::Handle,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Out,
    In,
}

#[derive(PartialEq, Eq)]
enum Pumped {
    Done,
    Cut,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = tasks.as_mut() {
            while set.try_join_next().is_some() {}
            set.spawn_on(f, &self.handle);
        }
    }

    /// Stops every task (the resolver, the listeners, the relays) and returns once they
    /// are gone with every socket they held, so that the namespace can be given a gateway
    /// again at once (a session's next run).
    fn stop(&self) {
        let Some(mut set) = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        set.abort_all();
        // Waited for on a thread of its own: the caller may be on any runtime's thread.
        let handle = self.handle.clone();
        let waited = std::thread::Builder::new()
            .name("runcell-egress-stop".into())
            .spawn(move || {
                handle.block_on(async move { while set.join_next().await.is_some() {} })
            });
        if let Ok(t) = waited {
            let _ = t.join();
        }
    }

    fn stats(&self) -> NetworkStats {
        let st = self.state();
        NetworkStats {
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            limit_exceeded: st.limit.clone(),
            refusals: st.refusals.clone(),
        }
    }

    fn refuse(&self, name: &str, port: Option<u16>, reason: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "runcell::egress", jail = %self.label, name, port, %reason, "egress refused");
        let mut st = self.state();
        let r = Refusal {
            name: name.to_string(),
            port,
            reason,
        };
        if st.refusals.len() < MAX_REFUSALS && !st.refusals.contains(&r) {
            st.refusals.push(r);
        }
    }

    /// The name's upstream addresses (cached for their TTL, at most a minute).
    async fn lookup(&self, name: &str) -> Result<Vec<Ipv4Addr>, Option<String>> {
        let now = Instant::now();
        if let Some((addrs, until)) = self.state().cache.get(name)
            && now < *until
        {
            return Ok(addrs.clone());
        }
        match dns::resolve_a(self.cfg.resolver, name, self.cfg.resolve_timeout).await {
            Ok(Lookup::Found(addrs, ttl)) => {
                let mut st = self.state();
                if st.cache.len() < MAX_NAMES * 2 {
                    let until = now + Duration::from_secs(u64::from(ttl.min(60)));
                    st.cache.insert(name.to_string(), (addrs.clone(), until));
                }
                Ok(addrs)
            }
            Ok(Lookup::NoSuchName) => Err(None),
            Err(e) => Err(Some(format!("the resolver failed: {e}"))),
        }
    }

    /// The addresses of `addrs` a jail may reach; or why none.
    fn reachable(&self, name: &str, addrs: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>, String> {
        let ok: Vec<Ipv4Addr> = addrs
            .iter()
            .copied()
            .filter(|a| forbidden(IpAddr::V4(*a), &self.own).is_none())
            .collect();
        if !ok.is_empty() {
            return Ok(ok);
        }
        match addrs.first() {
            Some(a) => Err(format!(
                "{name} resolves to {a}, {}; never reachable from a jail",
                forbidden(IpAddr::V4(*a), &self.own).unwrap_or("refused")
            )),
            None => Err(format!("{name} has no IPv4 address")),
        }
    }

    async fn answer(self: &Arc<Self>, msg: &[u8]) -> Option<Vec<u8>> {
        let q = match dns::parse_query(msg) {
            Ok(q) => q,
            Err((Some(id), _)) => return Some(dns::format_error(id)),
            Err((None, _)) => return None,
        };
        if q.qclass != dns::CLASS_IN {
            return Some(dns::answer(&q, dns::NOTIMP, &[], 0));
        }
        let ports = self.allow.ports_for(&q.name);
        if ports.is_empty() {
            if q.qtype == dns::TYPE_A {
                self.refuse(&q.name, None, "the name is not in the allow-list".into());
            }
            return Some(dns::answer(&q, dns::NXDOMAIN, &[], 0));
        }
        if q.qtype != dns::TYPE_A {
            // IPv4 only: an allowed name has no other records here.
            return Some(dns::answer(&q, dns::NOERROR, &[], 0));
        }
        let addrs = match self.lookup(&q.name).await {
            Ok(a) => a,
            Err(None) => return Some(dns::answer(&q, dns::NXDOMAIN, &[], 0)),
            Err(Some(why)) => {
                self.refuse(&q.name, None, why);
                return Some(dns::answer(&q, dns::SERVFAIL, &[], 0));
            }
        };
        if addrs.is_empty() {
            return Some(dns::answer(&q, dns::NOERROR, &[], 0));
        }
        if let Err(why) = self.reachable(&q.name, &addrs) {
            self.refuse(&q.name, None, why);
            return Some(dns::answer(&q, dns::NXDOMAIN, &[], 0));
        }
        match self.stand_in(&q.name, &ports).await {
            Ok(ip) => Some(dns::answer(&q, dns::NOERROR, &[ip], 300)),
            Err(why) => {
                self.refuse(&q.name, None, why);
                Some(dns::answer(&q, dns::SERVFAIL, &[], 0))
            }
        }
    }

    /// The stand-in address of `name`, listening on `ports` (made on first use).
    async fn stand_in(self: &Arc<Self>, name: &str, ports: &[u16]) -> Result<Ipv4Addr, String> {
        if let Some(ip) = self.state().names.get(name) {
            return Ok(*ip);
        }
        if self.state().names.len() >= MAX_NAMES {
            return Err(format!("more than {MAX_NAMES} names were looked up"));
        }
        let span = 1u32 << (32 - STAND_IN_PREFIX);
        for _ in 0..16 {
            let offset = {
                let mut st = self.state();
                let o = st.next;
                st.next += 1;
                o
            };
            if offset >= span - 1 {
                return Err("the stand-in addresses ran out".into());
            }
            let ip = Ipv4Addr::from(u32::from(STAND_IN_NET) + offset);
            let ns = Arc::clone(&self.ns);
            let wanted: Vec<u16> = ports.to_vec();
            let bound = tokio::task::spawn_blocking(move || {
                wanted
                    .iter()
                    .map(|p| {
                        let l = ns.bind_tcp(SocketAddrV4::new(ip, *p))?;
                        l.set_nonblocking(true)?;
                        Ok((*p, l))
                    })
                    .collect::<io::Result<Vec<_>>>()
            })
            .await
            .map_err(|e| format!("binding a stand-in address failed: {e}"))?;
            let listeners = match bound {
                Ok(l) => l,
                // Something in the jail holds that address already: take the next one.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(format!("binding a stand-in address failed: {e}")),
            };
            for (port, l) in listeners {
                let l = TcpListener::from_std(l).map_err(|e| e.to_string())?;
                self.spawn(accept(Arc::clone(self), l, name.to_string(), port));
            }
            self.state().names.insert(name.to_string(), ip);
            return Ok(ip);
        }
        Err("no free stand-in address".into())
    }

    /// How many of `n` bytes may pass under the byte limit (the rest cuts the connection).
    fn take_bytes(&self, n: usize) -> usize {
        let n = n as u64;
        let before = self.total.fetch_add(n, Ordering::Relaxed);
        let cap = self.limits.bytes;
        if before + n <= cap {
            return n as usize;
        }
        let allowed = cap.saturating_sub(before).min(n);
        self.total.fetch_sub(n - allowed, Ordering::Relaxed);
        self.state().limit.get_or_insert_with(|| "bytes".into());
        allowed as usize
    }

    /// How long to wait before `n` bytes may pass under the rate limit.
    fn delay_for(&self, n: usize) -> Duration {
        let rate = self.limits.bytes_per_sec.max(1) as f64;
        let mut st = self.state();
        let now = Instant::now();
        let b = &mut st.bucket;
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
        b.last = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }

    async fn pump(
        &self,
        mut r: tokio::net::tcp::OwnedReadHalf,
        mut w: tokio::net::tcp::OwnedWriteHalf,
        dir: Dir,
    ) -> Pumped {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !self.pass(&mut w, &buf[..n], dir).await {
                return Pumped::Cut;
            }
        }
        let _ = w.shutdown().await;
        Pumped::Done
    }

    /// Sends `data` under the limits; false when the connection is to be cut.
    async fn pass(
        &self,
        w: &mut (impl tokio::io::AsyncWrite + Unpin),
        data: &[u8],
        dir: Dir,
    ) -> bool {
        let ok = self.take_bytes(data.len());
        let wait = self.delay_for(ok);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if ok > 0 && w.write_all(&data[..ok]).await.is_err() {
            return false;
        }
        let counter = match dir {
            Dir::Out => &self.bytes_out,
            Dir::In => &self.bytes_in,
        };
        counter.fetch_add(ok as u64, Ordering::Relaxed);
        ok == data.len()
    }
}

async fn serve_dns(sh: Arc<Shared>, sock: UdpSocket) {
    let mut buf = [0u8; 1500];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(reply) = sh.answer(&buf[..n]).await {
            let _ = sock.send_to(&reply, peer).await;
        }
    }
}

async fn accept(sh: Arc<Shared>, l: TcpListener, name: String, port: u16) {
    loop {
        match l.accept().await {
            Ok((conn, _)) => sh.spawn(relay(Arc::clone(&sh), conn, name.clone(), port)),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Decrements the open-connection count when a relay ends.
struct Open<'a>(&'a AtomicU32);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection whose first bytes stop short of naming the host is refused.
const STALLED: &str = "the first bytes stopped before naming the host";

/// Reads a connection's first bytes until they say what they are (or nothing comes: a
/// protocol where the server speaks first).
async fn first_bytes(conn: &mut TcpStream, wait: Duration) -> io::Result<(Vec<u8>, Peek)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let n = match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Err(_) if buf.is_empty() => return Ok((buf, Peek::Other)),
            // Started, then stopped before naming the host: a slow request could otherwise
            // name another host after the check.
            Err(_) => return Ok((buf, Peek::Unreadable(STALLED))),
            Ok(r) => r?,
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match peek(&buf) {
            // MAX_PEEK and a TLS record header: the most `peek` asks for.
            Peek::NeedMore if buf.len() < MAX_PEEK + 5 => {}
            Peek::NeedMore => return Ok((buf, Peek::Unreadable(STALLED))),
            p => return Ok((buf, p)),
        }
    }
}

async fn relay(sh: Arc<Shared>, mut client: TcpStream, name: String, port: u16) {
    let p = Some(port);
    if sh.state().limit.is_some() {
        sh.refuse(
            &name,
            p,
            format!(
                "the network byte limit ({} bytes) is used up",
                sh.limits.bytes
            ),
        );
        return;
    }
    let open = sh.open.fetch_add(1, Ordering::Relaxed);
    let _open = Open(&sh.open);
    if open >= sh.limits.connections {
        sh.refuse(
            &name,
            p,
            format!("more than {} connections at once", sh.limits.connections),
        );
        return;
    }
    let Ok((first, kind)) = first_bytes(&mut client, sh.cfg.first_bytes_timeout).await else {
        return;
    };
    let mismatch = match &kind {
        Peek::Tls(Some(sni)) if *sni != name => {
            Some(format!("the TLS server name {sni:?} is not {name:?}"))
        }
        Peek::Http(Some(host)) if *host != name => {
            Some(format!("the HTTP Host {host:?} is not {name:?}"))
        }
        Peek::Unreadable(why) => Some((*why).into()),
        _ => None,
    };
    if let Some(why) = mismatch {
        sh.refuse(&name, p, why);
        return;
    }
    // Resolved again, and checked again: a name may now point somewhere else (rebinding).
    let addrs = match sh.lookup(&name).await {
        Ok(a) => a,
        Err(why) => {
            let why = why.unwrap_or_else(|| format!("{name} no longer exists"));
            sh.refuse(&name, p, why);
            return;
        }
    };
    let addrs = match sh.reachable(&name, &addrs) {
        Ok(a) => a,
        Err(why) => {
            sh.refuse(&name, p, why);
            return;
        }
    };
    let mut upstream = None;
    let mut last = String::new();
    for a in addrs {
        let to = SocketAddr::from((a, port));
        match tokio::time::timeout(sh.cfg.connect_timeout, TcpStream::connect(to)).await {
            Ok(Ok(s)) => {
                upstream = Some(s);
                break;
            }
            Ok(Err(e)) => last = format!("{to}: {e}"),
            Err(_) => last = format!("{to}: no answer in {:?}", sh.cfg.connect_timeout),
        }
    }
    let Some(upstream) = upstream else {
        tracing::info!(target: "runcell::egress", jail = %sh.label, name, port, %last, "egress connect failed");
        return;
    };
    sh.connections.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, mut uw) = upstream.into_split();
    if !first.is_empty() && !sh.pass(&mut uw, &first, Dir::Out).await {
        return;
    }
    let out = sh.pump(cr, uw, Dir::Out);
    let inn = sh.pump(ur, cw, Dir::In);
    tokio::pin!(out, inn);
    let (mut out_done, mut in_done) = (false, false);
    while !(out_done && in_done) {
        tokio::select! {
            r = &mut out, if !out_done => {
                out_done = true;
                if r == Pumped::Cut { break; }
            }
            r = &mut inn, if !in_done => {
                in_done = true;
                if r == Pumped::Cut { break; }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair on loopback: what the jail's program would hold, and the relay's end.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn first_bytes_that_stall_or_run_long_before_naming_the_host_are_refused() {
        let wait = Duration::from_millis(200);
        // A request that names its host only after the wait is not let through unchecked.
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let (_, p) = first_bytes(&mut s, wait).await.unwrap();
        assert_eq!(p, Peek::Unreadable(STALLED));
        // Nothing at all: a protocol where the server speaks first.
        let (_c, mut s) = pair().await;
        assert_eq!(first_bytes(&mut s, wait).await.unwrap().1, Peek::Other);
        // A TLS record as long as the peek allows, never completed.
        let (mut c, mut s) = pair().await;
        let mut rec = vec![0x16, 3, 1, 0x40, 0x00, 1];
        rec.resize(MAX_PEEK + 4, 0);
        c.write_all(&rec).await.unwrap();
        assert!(matches!(
            first_bytes(&mut s, wait).await.unwrap().1,
            Peek::Unreadable(_)
        ));
        // A complete request says its host.
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            first_bytes(&mut s, wait).await.unwrap().1,
            Peek::Http(Some("a.test".into()))
        );
    }
}
