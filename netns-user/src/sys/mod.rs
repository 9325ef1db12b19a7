//! The machine's side: named network namespaces and running code in them, every rtnetlink
//! call, interface offloads (SIOCETHTOOL), whether a namespace filters what it forwards, and
//! where labs keep their state. Nothing here
//! knows about labs or NAT.

pub mod ethtool;
pub mod firewall;
pub mod netlink;
pub mod netns;
pub mod paths;
pub mod rcu;
