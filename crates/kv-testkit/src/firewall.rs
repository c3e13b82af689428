//! Cutting links between addresses with nftables, inside a network
//! namespace of the test's own (see [`crate::netns`]).
//!
//! Every rule drops packets on input, matched on source and destination
//! address, so a cut link looks like a silent network: nothing is refused,
//! nothing arrives. Connections between the addresses stay open and
//! resume once the rules are removed.

use std::net::IpAddr;
use std::process::Command;

const TABLE: &str = "kvfaults";

/// The nftables table holding the test's drop rules.
pub struct Firewall;

impl Firewall {
    /// Creates the (empty) table and its input chain, replacing any left
    /// from before.
    pub fn new() -> Firewall {
        let _ = Command::new(nft_program())
            .args(["delete", "table", "inet", TABLE])
            .output();
        nft(&["add", "table", "inet", TABLE]);
        nft(&[
            "add",
            "chain",
            "inet",
            TABLE,
            "cut",
            "{ type filter hook input priority 0; policy accept; }",
        ]);
        Firewall
    }

    /// Drops everything from `a` to `b` and from `b` to `a`.
    pub fn cut(&self, a: IpAddr, b: IpAddr) {
        for (from, to) in [(a, b), (b, a)] {
            let (from, to) = (from.to_string(), to.to_string());
            let family = if a.is_ipv4() { "ip" } else { "ip6" };
            nft(&[
                "add", "rule", "inet", TABLE, "cut", family, "saddr", &from, family, "daddr", &to,
                "drop",
            ]);
        }
    }

    /// Cuts `node` off from every one of `others`.
    pub fn isolate(&self, node: IpAddr, others: &[IpAddr]) {
        for o in others.iter().filter(|o| **o != node) {
            self.cut(node, *o);
        }
    }

    /// Removes every rule: all links work again.
    pub fn heal(&self) {
        nft(&["flush", "chain", "inet", TABLE, "cut"]);
    }
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall::new()
    }
}

/// The `nft` program: from `PATH`, or from the sbin directories that a
/// user's `PATH` often lacks.
pub(crate) fn nft_program() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft")
}

fn nft(args: &[&str]) {
    let out = Command::new(nft_program())
        .args(args)
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
