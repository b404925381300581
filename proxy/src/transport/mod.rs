//! Bytes on connections: protocol detection, the original destination of a redirected
//! connection. Knows nothing of HTTP routing or the control plane.

pub mod counted;
pub mod detect;
pub mod orig_dst;
