//! The machine's side: named network namespaces and running code in them, every rtnetlink
//! call, interface offloads (SIOCETHTOOL), and where labs keep their state. Nothing here
//! knows about labs or NAT.

pub mod ethtool;
pub mod netlink;
pub mod netns;
pub mod paths;
pub mod rcu;
