//! runcell's egress gateway: what a jail that may reach the network can reach, and how.
//!
//! Runs are offline by default (a network namespace with nothing but loopback). A run or
//! sandbox that asks for egress names the hosts it needs ([`policy`]); the operator decides
//! which names a tenant may ask for. The jail then gets a resolver that answers only those
//! names, with stand-in addresses local to its own namespace, and the server relays
//! connections to them after checking the name the connection asks for and the addresses
//! the name resolves to ([`gateway`]). This crate knows nothing of HTTP APIs or of how a
//! namespace is entered: the jail's side is the [`Netns`] trait.

pub mod addr;
pub mod dns;
pub mod gateway;
pub mod peek;
pub mod policy;

pub use gateway::{
    Egress, EgressConfig, Gateway, Netns, NetworkStats, RESOLVER, Refusal, STAND_IN_NET,
    STAND_IN_PREFIX, system_resolver,
};
pub use policy::{AllowList, NetLimits, NetworkPlan, PolicyError, parse_network};
