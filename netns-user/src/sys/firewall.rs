//! Whether a namespace filters what it forwards: nftables chains on the forward hook (which
//! iptables-nft's FORWARD chain is too) and iptables-legacy's FORWARD chain. Packets the
//! fast path redirects skip that hook, so where it filters, the fast path must not run.
//! Read only: nothing here adds a table or a chain (iptables-legacy is asked only about a
//! filter table the namespace already has).

use std::process::{Command, Stdio};

use crate::sys::netns::{self, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("in namespace {ns}: {command}: {detail}")]
    Command {
        ns: String,
        command: String,
        detail: String,
    },
}

/// The first thing in namespace `ns` that filters forwarded packets, described, if any.
/// Tools that are not installed filter nothing.
pub fn forward_filter(ns: &str) -> Result<Option<String>, FirewallError> {
    if let Some(json) = output(ns, "nft", &["-j", "list", "ruleset"])? {
        if let Some(chain) = nft_forward_filters(&json).into_iter().next() {
            return Ok(Some(format!("nftables chain {chain} filters the forward hook")));
        }
    }
    let tables = netns::run_in(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/ip_tables_names").unwrap_or_default()
    })?;
    if tables.lines().any(|t| t == "filter")
        && let Some(save) = output(ns, "iptables-legacy-save", &["-t", "filter"])?
        && legacy_forward_filters(&save)
    {
        return Ok(Some("iptables-legacy's FORWARD chain filters".into()));
    }
    Ok(None)
}

/// `program args` in `ns`: its output, or None if it is not installed.
fn output(ns: &str, program: &str, args: &[&str]) -> Result<Option<String>, FirewallError> {
    let shown = format!("{program} {}", args.join(" "));
    let fail = |detail: String| FirewallError::Command {
        ns: ns.to_owned(),
        command: shown.clone(),
        detail,
    };
    let mut cmd: Command = netns::command(ns, program)?;
    let out = match cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The IPv4 chains (`family table name`) of an `nft -j list ruleset` that hook forward and
/// filter: a rule in them, or a policy other than accept. An empty accepting chain (as
/// iptables-nft leaves after `-S`) changes nothing.
pub fn nft_forward_filters(json: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let ipv4 = |o: &serde_json::Value| matches!(o["family"].as_str(), Some("ip" | "inet"));
    let id = |o: &serde_json::Value, name: &str| {
        format!(
            "{} {} {}",
            o["family"].as_str().unwrap_or(""),
            o["table"].as_str().unwrap_or(""),
            o[name].as_str().unwrap_or("")
        )
    };
    let chains = items.iter().filter_map(|i| i.get("chain")).filter(|c| ipv4(c));
    let forward: Vec<(String, bool)> = chains
        .filter(|c| c["hook"].as_str() == Some("forward"))
        .map(|c| (id(c, "name"), c["policy"].as_str().is_some_and(|p| p != "accept")))
        .collect();
    let with_rules: Vec<String> = items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| ipv4(r))
        .map(|r| id(r, "chain"))
        .collect();
    forward
        .into_iter()
        .filter(|(chain, drops)| *drops || with_rules.contains(chain))
        .map(|(chain, _)| chain)
        .collect()
}

/// Whether an `iptables-legacy-save -t filter` filters in FORWARD: a rule there, or a
/// policy other than ACCEPT.
pub fn legacy_forward_filters(save: &str) -> bool {
    save.lines().any(|l| {
        l.starts_with("-A FORWARD ") || (l.starts_with(":FORWARD ") && !l.starts_with(":FORWARD ACCEPT"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_chains_filter_with_a_rule_or_a_dropping_policy() {
        let json = r#"{"nftables": [{"metainfo": {}},
            {"table": {"family": "ip", "name": "f"}},
            {"chain": {"family": "ip", "table": "f", "name": "quiet", "hook": "forward", "policy": "accept"}},
            {"chain": {"family": "ip", "table": "f", "name": "drops", "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "g", "name": "ruled", "hook": "forward", "policy": "accept"}},
            {"chain": {"family": "ip", "table": "f", "name": "input", "hook": "input", "policy": "drop"}},
            {"chain": {"family": "ip6", "table": "h", "name": "v6", "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "ip", "table": "f", "name": "helper"}},
            {"rule": {"family": "inet", "table": "g", "chain": "ruled", "handle": 3, "expr": []}},
            {"rule": {"family": "ip", "table": "f", "chain": "helper", "handle": 4, "expr": []}}
        ]}"#;
        assert_eq!(nft_forward_filters(json), ["ip f drops", "inet g ruled"]);
        assert!(nft_forward_filters(r#"{"nftables": [{"metainfo": {}}]}"#).is_empty());
        assert!(nft_forward_filters("not json").is_empty());
    }

    #[test]
    fn legacy_forward_filters_with_a_rule_or_a_dropping_policy() {
        let open = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert!(!legacy_forward_filters(open));
        assert!(legacy_forward_filters(
            &open.replace(":FORWARD ACCEPT", ":FORWARD DROP")
        ));
        assert!(legacy_forward_filters(
            &open.replace("COMMIT", "-A FORWARD -s 10.0.0.0/8 -j DROP\nCOMMIT")
        ));
        assert!(!legacy_forward_filters(
            &open.replace("COMMIT", "-A INPUT -j DROP\nCOMMIT")
        ));
    }
}
