//! The original destination of a connection that iptables redirected to the proxy.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// `SO_ORIGINAL_DST`; `None` when the socket was not redirected (the kernel then reports the
/// local address, which the caller compares against) or the option is unavailable.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let dst = if local.is_ipv4() {
        let sin = getsockopt(stream, sockopt::OriginalDst).ok()?;
        SocketAddr::from((
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        ))
    } else {
        let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
        SocketAddr::from((
            Ipv6Addr::from(sin6.sin6_addr.s6_addr),
            u16::from_be(sin6.sin6_port),
        ))
    };
    (dst != local).then_some(dst)
}
