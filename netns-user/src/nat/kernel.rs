//! The kernel's NAT, driven through its own tools inside the router namespace: the
//! baseline that the eBPF NAT is compared with.

use std::{
    io::Write as _,
    process::{Output, Stdio},
};

use super::{NatBackend, NatError, NatTarget};
use crate::{config::NatSpec, sys::netns};

/// iptables (on Debian 12 the nf_tables backend: the same datapath as nftables).
pub struct Iptables;
/// A native nftables ruleset.
pub struct Nftables;

/// Name of the nftables table the lab owns.
pub const NFT_TABLE: &str = "netns_nat";

/// The iptables commands (arguments after `iptables`) for these settings.
pub fn iptables_rules(nat: &NatSpec) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    for net in &nat.internal {
        rules.push(
            format!(
                "-w -t nat -A POSTROUTING -s {} -o {} -j MASQUERADE",
                net.0.network(),
                nat.uplink
            )
            .split(' ')
            .map(str::to_owned)
            .collect(),
        );
    }
    for f in &nat.forwards {
        rules.push(
            format!(
                "-w -t nat -A PREROUTING -i {} -p {} --dport {} -j DNAT --to-destination {}",
                nat.uplink, f.protocol, f.port, f.to
            )
            .split(' ')
            .map(str::to_owned)
            .collect(),
        );
    }
    rules
}

/// The nftables ruleset for these settings (one table, loaded atomically by `nft -f -`).
pub fn nft_ruleset(nat: &NatSpec) -> String {
    let mut pre = String::new();
    for f in &nat.forwards {
        pre += &format!(
            "    iifname \"{}\" {} dport {} dnat to {}\n",
            nat.uplink, f.protocol, f.port, f.to
        );
    }
    let mut post = String::new();
    for net in &nat.internal {
        post += &format!(
            "    oifname \"{}\" ip saddr {} masquerade\n",
            nat.uplink,
            net.0.network()
        );
    }
    format!(
        "table ip {NFT_TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{post}  }}\n}}\n"
    )
}

fn run(
    ns: &str,
    tool: &'static str,
    package: &'static str,
    args: &[String],
    stdin: Option<&str>,
) -> Result<Output, NatError> {
    let mut cmd = netns::command(ns, tool)?;
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{tool} {}", args.join(" "));
    let fail = |detail: String| NatError::Command {
        ns: ns.to_owned(),
        command: shown.clone(),
        detail,
    };
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => NatError::ToolMissing { tool, package },
        _ => fail(e.to_string()),
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

impl NatBackend for Iptables {
    fn apply(&self, t: &NatTarget) -> Result<(), NatError> {
        for rule in iptables_rules(t.nat) {
            run(&t.router_ns, "iptables", "iptables", &rule, None)?;
        }
        Ok(())
    }

    fn describe(&self, t: &NatTarget) -> Result<String, NatError> {
        let out = run(
            &t.router_ns,
            "iptables",
            "iptables",
            &["-w".into(), "-t".into(), "nat".into(), "-S".into()],
            None,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn live_entries(&self, t: &NatTarget) -> Result<usize, NatError> {
        conntrack_count(&t.router_ns)
    }
}

/// The kernel's conntrack table size in namespace `ns` (`conntrack -C`).
fn conntrack_count(ns: &str) -> Result<usize, NatError> {
    let out = run(ns, "conntrack", "conntrack", &["-C".into()], None)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0))
}

impl NatBackend for Nftables {
    fn apply(&self, t: &NatTarget) -> Result<(), NatError> {
        run(
            &t.router_ns,
            "nft",
            "nftables",
            &["-f".into(), "-".into()],
            Some(&nft_ruleset(t.nat)),
        )?;
        Ok(())
    }

    fn describe(&self, t: &NatTarget) -> Result<String, NatError> {
        let args = ["list".into(), "table".into(), "ip".into(), NFT_TABLE.into()];
        let out = run(&t.router_ns, "nft", "nftables", &args, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn live_entries(&self, t: &NatTarget) -> Result<usize, NatError> {
        conntrack_count(&t.router_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LabConfig;

    #[test]
    fn iptables_rules_of_the_scenario() {
        let cfg = LabConfig::reference();
        let rules: Vec<String> = iptables_rules(cfg.nat.as_ref().unwrap())
            .iter()
            .map(|r| r.join(" "))
            .collect();
        assert_eq!(
            rules,
            [
                "-w -t nat -A POSTROUTING -s 192.168.15.0/24 -o uplink -j MASQUERADE",
                "-w -t nat -A PREROUTING -i uplink -p tcp --dport 80 -j DNAT --to-destination 192.168.15.2:80",
            ]
        );
    }

    #[test]
    fn nft_ruleset_of_the_scenario() {
        let cfg = LabConfig::reference();
        let rs = nft_ruleset(cfg.nat.as_ref().unwrap());
        assert!(rs.starts_with("table ip netns_nat {"), "{rs}");
        assert!(
            rs.contains("iifname \"uplink\" tcp dport 80 dnat to 192.168.15.2:80"),
            "{rs}"
        );
        assert!(
            rs.contains("oifname \"uplink\" ip saddr 192.168.15.0/24 masquerade"),
            "{rs}"
        );
        assert_eq!(rs.matches('{').count(), rs.matches('}').count());
    }
}
