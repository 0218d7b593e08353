//! Where captured connections land. `accept` claims the kernel's record
//! for each accepted socket, names the agent, and routes the connection:
//! raw TCP relay (`tcp:` rules), DNS over TCP, or the HTTP/TLS layer.

mod accept;
pub mod listener;
pub mod orig_dst;
mod relay;

pub use accept::{Proxy, serve};
