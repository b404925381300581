//! Installs the pod's traffic redirect to the Pillion proxy (the injected init container).

use clap::Parser;
use pillion_injector::iptables::{self, Rules};
use pillion_injector::overrides::PortList;

#[derive(Parser)]
#[command(
    name = "pillion-init",
    version,
    about = "Redirect a pod's TCP traffic to the Pillion proxy with iptables nat rules",
    after_help = "Examples:\n  pillion-init --dry-run\n  pillion-init --skip-inbound-ports 4191,9000-9010 --skip-outbound-ports 3306\n\nExit status: 0 rules installed (or printed), 1 iptables failed, 2 usage."
)]
struct Args {
    /// The proxy's inbound port: where inbound TCP is sent.
    #[arg(long, env = "PILLION_INIT_INBOUND_PORT", default_value_t = 4143)]
    inbound_port: u16,
    /// The proxy's outbound port: where the pod's outbound TCP is sent.
    #[arg(long, env = "PILLION_INIT_OUTBOUND_PORT", default_value_t = 4140)]
    outbound_port: u16,
    /// The user the proxy runs as; its connections are not redirected.
    #[arg(long, env = "PILLION_INIT_PROXY_UID", default_value_t = 2102)]
    proxy_uid: u32,
    /// Inbound ports that reach the pod directly (`4191,9000-9010`).
    #[arg(long, env = "PILLION_INIT_SKIP_INBOUND_PORTS", default_value = "4191")]
    skip_inbound_ports: PortList,
    /// Outbound ports that leave the pod directly.
    #[arg(long, env = "PILLION_INIT_SKIP_OUTBOUND_PORTS", default_value = "")]
    skip_outbound_ports: PortList,
    /// The iptables binary (`iptables`, `iptables-legacy`, `iptables-nft`); its `-save` and
    /// `-restore` siblings are used.
    #[arg(long, env = "PILLION_INIT_IPTABLES", default_value = "iptables")]
    iptables: String,
    /// Also install the rules for IPv6 (with the ip6tables twin of --iptables).
    #[arg(long, env = "PILLION_INIT_IPV6")]
    ipv6: bool,
    /// Print the rules instead of installing them.
    #[arg(long, env = "PILLION_INIT_DRY_RUN")]
    dry_run: bool,
}

fn main() {
    let args = Args::parse();
    let rules = Rules {
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        proxy_uid: args.proxy_uid,
        skip_inbound: args.skip_inbound_ports.0.clone(),
        skip_outbound: args.skip_outbound_ports.0.clone(),
    };
    if args.dry_run {
        print!("{}", rules.restore_input(""));
        return;
    }
    let mut binaries = vec![args.iptables.clone()];
    if args.ipv6 {
        binaries.push(iptables::ipv6_twin(&args.iptables));
    }
    for bin in binaries {
        match iptables::apply(&rules, &bin) {
            Ok(applied) => {
                eprintln!("pillion-init: {bin}: rules installed");
                print!("{applied}");
            }
            Err(e) => {
                eprintln!("pillion-init: {e}");
                std::process::exit(1);
            }
        }
    }
}
