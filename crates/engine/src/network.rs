//! Runs that may reach the network: a jail's namespace handed to the egress gateway.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use runcell_egress::{Egress, Gateway, NetLimits, NetworkPlan};
use runcell_jail::{Jail, JailError, JailNet};

/// The most a run's network may use when the operator says nothing: 256 MiB both ways,
/// 8 MiB/s, 32 connections at once.
pub const DEFAULT_NET_MAX: NetLimits = NetLimits {
    bytes: 256 << 20,
    bytes_per_sec: 8 << 20,
    connections: 32,
};

/// A jail's namespace as the gateway sees it.
struct JailNamespace(JailNet);

impl runcell_egress::Netns for JailNamespace {
    fn add_local_route(&self, net: Ipv4Addr, prefix: u8) -> std::io::Result<()> {
        self.0.add_local_route(net, prefix)
    }

    fn bind_tcp(&self, addr: SocketAddrV4) -> std::io::Result<std::net::TcpListener> {
        self.0.bind_tcp(addr)
    }

    fn bind_udp(&self, addr: SocketAddrV4) -> std::io::Result<std::net::UdpSocket> {
        self.0.bind_udp(addr)
    }
}

/// Gives `jail` a gateway serving `plan` (`label` names it in logs). Fails when the server has
/// no gateway: the service refuses such requests first, so this is a server fault.
pub fn attach(
    egress: Option<&Egress>,
    jail: &Jail,
    plan: &NetworkPlan,
    label: &str,
) -> Result<Gateway, JailError> {
    let egress = egress.ok_or_else(|| {
        JailError::InvalidConfig("this server has no egress gateway; runs are offline".into())
    })?;
    let io = |what: &str, source| JailError::Io {
        what: what.to_string(),
        source,
    };
    let net = jail
        .network()
        .map_err(|e| io("open the jail's network namespace", e))?;
    egress
        .attach(Arc::new(JailNamespace(net)), plan, label)
        .map_err(|e| io("start the jail's egress gateway", e))
}
