//! Where captured connections land. `accept` claims the kernel's record
//! for each accepted socket, names the agent, and routes the connection:
//! raw TCP relay (`tcp:` rules), DNS over TCP, or, for HTTP and TLS,
//! `intercept` (terminate, decide per request in `forward`, swap
//! credentials, forward via `h1_pool` or, for HTTP/2, `h2_pools`). `rescue` turns failures into
//! answers, `agent_body` reads away the rest of an upload nothing wanted,
//! and `linger` what an agent still sends to a connection closed on it.

mod accept;
mod agent_body;
mod body;
mod body_claims;
mod credentials;
mod dial;
mod early_answer;
mod forward;
mod h1_pool;
mod h2_pools;
mod headers;
mod intercept;
mod last_decision;
mod linger;
pub mod listener;
mod live;
mod log_gate;
mod method_claims;
pub mod orig_dst;
mod peek;
mod relay;
mod rescue;
mod upstream;
mod websocket;
mod whole_body;

pub use accept::{Proxy, serve};
pub use credentials::Credentials;
pub use h1_pool::H1Pool;
pub use h2_pools::H2Pools;
#[cfg(test)]
pub use headers::map_of as header_map;
pub use intercept::Intercept;
pub use live::LiveConns;
pub use log_gate::AgentLogGates;
pub use upstream::Connector as UpstreamConnector;
