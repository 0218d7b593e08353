//! HTTP/2 connections to upstreams, for agents that speak HTTP/2.
//!
//! Each agent has a pool of its own (a hyper-util client), so that agents
//! never share an upstream connection, as on the HTTP/1.1 side
//! (`h1_pool`): on a shared one, one agent's streams could take up the
//! connection's concurrent streams while another's requests wait, an error
//! or GOAWAY that one provoked would end the other's streams, and an
//! upstream that answered the h2 offer with http/1.1 would carry both
//! agents' requests on one connection, with whatever state a server ties
//! to it. Within an agent, requests to a host stay multiplexed on one
//! connection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use super::upstream::{self, UpstreamClient};
use crate::dns::Resolver;

pub struct H2Pools {
    resolver: Arc<Resolver>,
    tls: Arc<rustls::ClientConfig>,
    /// One entry per agent that has sent an HTTP/2 request: agents are the
    /// policies' names, a handful, and a pool holds no connection longer
    /// than its upstream keeps it open.
    by_agent: Mutex<HashMap<(Arc<str>, Start), UpstreamClient>>,
}

/// How a client's connections start HTTP/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Start {
    /// Offered by ALPN over TLS (HTTP/1.1 if the upstream declines it).
    Alpn,
    /// From the first byte, in plain text.
    PriorKnowledge,
}

impl Start {
    /// As an agent's HTTP/2 started: by ALPN on a TLS connection, by prior
    /// knowledge on a plain one.
    pub fn over(tls: bool) -> Start {
        if tls {
            Start::Alpn
        } else {
            Start::PriorKnowledge
        }
    }
}

impl H2Pools {
    /// Pools whose connections offer h2 first, with `tls`.
    pub fn new(resolver: Arc<Resolver>, tls: Arc<rustls::ClientConfig>) -> H2Pools {
        H2Pools {
            resolver,
            tls,
            by_agent: Mutex::new(HashMap::new()),
        }
    }

    /// The agent's own client for connections that start as `start`
    /// says, made on its first request.
    pub fn of(&self, agent: &Arc<str>, start: Start) -> UpstreamClient {
        // The lock only guards the map: one poisoned by a panic elsewhere
        // still maps each agent to its own client.
        let mut by_agent = self.by_agent.lock().unwrap_or_else(PoisonError::into_inner);
        by_agent
            .entry((agent.clone(), start))
            .or_insert_with(|| {
                upstream::client(
                    self.resolver.clone(),
                    self.tls.clone(),
                    start == Start::PriorKnowledge,
                )
            })
            .clone()
    }
}
