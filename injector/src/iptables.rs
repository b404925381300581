//! `pillion-init`'s redirect: `nat` rules that send a pod's inbound TCP to the proxy's
//! inbound port and its outbound TCP to the outbound port. The proxy's own connections (by its
//! user), loopback and the listed ports pass untouched. Two chains of ours, filled in one
//! `iptables-restore` (atomic), jumped to once: running it again changes nothing.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::overrides::PortRange;

pub const INBOUND_CHAIN: &str = "PILLION_INBOUND";
pub const OUTBOUND_CHAIN: &str = "PILLION_OUTBOUND";

#[derive(Debug, Clone)]
pub struct Rules {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub proxy_uid: u32,
    pub skip_inbound: Vec<PortRange>,
    pub skip_outbound: Vec<PortRange>,
}

/// The jumps from the built-in chains to ours.
fn jumps() -> [String; 2] {
    [
        format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"),
        format!("-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}"),
    ]
}

/// `multiport` takes at most 15 ports, a range counting two: the list in rules that fit.
fn port_groups(ports: &[PortRange]) -> Vec<String> {
    let mut groups = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut used = 0;
    for p in ports {
        let cost = if p.lo == p.hi { 1 } else { 2 };
        if used + cost > 15 {
            groups.push(current.join(","));
            current.clear();
            used = 0;
        }
        current.push(p.to_string());
        used += cost;
    }
    if !current.is_empty() {
        groups.push(current.join(","));
    }
    groups
}

impl Rules {
    /// `iptables-restore --noflush` input. `existing` is `iptables-save -t nat` output: the
    /// jumps already there are not added again. Declaring our chains flushes them, so their
    /// rules are replaced, not doubled.
    pub fn restore_input(&self, existing: &str) -> String {
        let mut out = String::from("*nat\n");
        for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
            out.push_str(&format!(":{chain} - [0:0]\n"));
            out.push_str(&format!("-F {chain}\n"));
        }
        for group in port_groups(&self.skip_inbound) {
            out.push_str(&format!(
                "-A {INBOUND_CHAIN} -p tcp -m multiport --dports {group} -j RETURN\n"
            ));
        }
        out.push_str(&format!(
            "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
            self.inbound_port
        ));
        // The proxy's own connections leave as they are: this is what keeps them from
        // looping back into it.
        out.push_str(&format!(
            "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN\n",
            self.proxy_uid
        ));
        // Calls within the pod (to localhost or its own address) stay local.
        out.push_str(&format!("-A {OUTBOUND_CHAIN} -o lo -j RETURN\n"));
        for group in port_groups(&self.skip_outbound) {
            out.push_str(&format!(
                "-A {OUTBOUND_CHAIN} -p tcp -m multiport --dports {group} -j RETURN\n"
            ));
        }
        out.push_str(&format!(
            "-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
            self.outbound_port
        ));
        let present: Vec<&str> = existing.lines().map(str::trim).collect();
        for jump in jumps() {
            if !present.contains(&jump.as_str()) {
                out.push_str(&jump);
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// What went wrong, said so that the fix is clear.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "{program} not found: install iptables (the pillion-proxy image has it), or name the binary with --iptables"
    )]
    Missing { program: String },
    #[error(
        "{program}: permission denied: pillion-init must run as root with the NET_ADMIN and NET_RAW capabilities (securityContext.capabilities.add){detail}"
    )]
    NotPermitted { program: String, detail: String },
    #[error("{program} failed: {stderr}")]
    Failed { program: String, stderr: String },
}

fn classify(program: &str, stderr: &str) -> InitError {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("permission denied")
        || lower.contains("must be root")
        || lower.contains("operation not permitted")
    {
        return InitError::NotPermitted {
            program: program.into(),
            detail: format!(" ({})", stderr.trim()),
        };
    }
    InitError::Failed {
        program: program.into(),
        stderr: stderr.trim().to_string(),
    }
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, InitError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => InitError::Missing {
                program: program.into(),
            },
            std::io::ErrorKind::PermissionDenied => InitError::NotPermitted {
                program: program.into(),
                detail: String::new(),
            },
            _ => InitError::Failed {
                program: program.into(),
                stderr: e.to_string(),
            },
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| InitError::Failed {
                program: program.into(),
                stderr: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| InitError::Failed {
        program: program.into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(classify(program, &String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the rules with `{iptables}-save` and `{iptables}-restore` (for example
/// `iptables`, `iptables-legacy`, `ip6tables-nft`); returns what it applied.
pub fn apply(rules: &Rules, iptables: &str) -> Result<String, InitError> {
    let existing = run(&format!("{iptables}-save"), &["-t", "nat"], None)?;
    let input = rules.restore_input(&existing);
    run(&format!("{iptables}-restore"), &["--noflush"], Some(&input))?;
    Ok(input)
}

/// The IPv6 twin of an iptables binary name (`iptables-nft` → `ip6tables-nft`).
pub fn ipv6_twin(iptables: &str) -> String {
    match iptables.strip_prefix("iptables") {
        Some(rest) => format!("ip6tables{rest}"),
        None => iptables.replacen("iptables", "ip6tables", 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_uid: 2102,
            skip_inbound: vec![
                PortRange { lo: 4191, hi: 4191 },
                PortRange { lo: 8000, hi: 8010 },
            ],
            skip_outbound: vec![],
        }
    }

    #[test]
    fn the_rules_in_order() {
        let text = rules().restore_input("");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert!(
            lines.contains(
                &"-A PILLION_INBOUND -p tcp -m multiport --dports 4191,8000:8010 -j RETURN"
            )
        );
        let redirect_in = lines
            .iter()
            .position(|l| l.contains("REDIRECT --to-ports 4143"))
            .unwrap();
        let skip_in = lines
            .iter()
            .position(|l| l.contains("--dports 4191"))
            .unwrap();
        assert!(skip_in < redirect_in);
        let uid = lines
            .iter()
            .position(|l| l.contains("--uid-owner 2102 -j RETURN"))
            .unwrap();
        let redirect_out = lines
            .iter()
            .position(|l| l.contains("REDIRECT --to-ports 4140"))
            .unwrap();
        assert!(uid < redirect_out);
        assert!(lines.contains(&"-A PREROUTING -p tcp -j PILLION_INBOUND"));
        assert!(lines.contains(&"-A OUTPUT -p tcp -j PILLION_OUTBOUND"));
        assert_eq!(*lines.last().unwrap(), "COMMIT");
        assert!(!text.contains("--dports  "), "no empty skip rule");
    }

    #[test]
    fn jumps_already_there_are_not_added_again() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j PILLION_INBOUND\n-A OUTPUT -p tcp -j PILLION_OUTBOUND\nCOMMIT\n";
        let text = rules().restore_input(saved);
        assert!(!text.contains("-A PREROUTING"));
        assert!(!text.contains("-A OUTPUT"));
    }

    #[test]
    fn long_port_lists_are_split_for_multiport() {
        let ports: Vec<PortRange> = (1..=20).map(|p| PortRange { lo: p, hi: p }).collect();
        let groups = port_groups(&ports);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].split(',').count(), 15);
        let ranges: Vec<PortRange> = (0..8)
            .map(|i| PortRange {
                lo: i * 10 + 1,
                hi: i * 10 + 5,
            })
            .collect();
        assert_eq!(port_groups(&ranges).len(), 2, "a range counts two");
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = run("pillion-no-such-iptables", &[], None).unwrap_err();
        assert!(e.to_string().contains("not found: install iptables"), "{e}");
        let e = classify(
            "iptables-restore",
            "iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
        );
        assert!(e.to_string().contains("NET_ADMIN"), "{e}");
        assert_eq!(ipv6_twin("iptables-legacy"), "ip6tables-legacy");
        assert_eq!(ipv6_twin("/usr/sbin/iptables"), "/usr/sbin/ip6tables");
    }
}
