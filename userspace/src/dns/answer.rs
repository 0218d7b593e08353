//! From one parsed query and the agent's policy to the response message.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Edns, Header, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tracing::debug;

use super::upstream::{EDNS_PAYLOAD, addresses};
use super::{DnsEvent, DnsOutcome, Resolver, name};

/// Query types worth forwarding: what connecting to a host needs. TXT, NULL,
/// MX and friends carry arbitrary data back and are the usual tunnelling
/// vehicles, so allowed names get an empty NOERROR for them instead.
const FORWARDED_TYPES: [RecordType; 4] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::HTTPS,
];

/// TTL of answers from the static `resolve:` map.
const STATIC_TTL: u32 = 60;

struct Decision {
    message: Message,
    outcome: DnsOutcome,
    addrs: Vec<IpAddr>,
    ttl: u32,
}

impl Decision {
    fn bare(request: &Message, rcode: ResponseCode, outcome: DnsOutcome) -> Self {
        Self {
            message: response_to(request, rcode),
            outcome,
            addrs: Vec::new(),
            ttl: 0,
        }
    }
}

impl Resolver {
    /// The answer to a parsed query from `agent` (None: unknown sender).
    pub(super) async fn respond(
        &self,
        request: &Message,
        agent: Option<&str>,
        peer: SocketAddr,
    ) -> Message {
        if request.op_code() != OpCode::Query {
            debug!(%peer, op_code = ?request.op_code(), "not a query");
            return response_to(request, ResponseCode::NotImp);
        }
        let [query] = request.queries() else {
            debug!(%peer, count = request.queries().len(), "not exactly one question");
            return response_to(request, ResponseCode::FormErr);
        };
        let name = name::query_name(query.name());
        let decision = self.decide(request, query, agent, &name).await;
        if let (Some(agent), Ok(name), DnsOutcome::Answered) = (agent, &name, decision.outcome)
            && !decision.addrs.is_empty()
        {
            self.told.remember(
                agent,
                name,
                &decision.addrs,
                decision.ttl,
                self.reach,
                std::time::Instant::now(),
            );
        }

        let event = DnsEvent {
            agent: agent.map(str::to_string),
            peer,
            name: match name {
                Ok(name) | Err(name) => name,
            },
            qtype: query.query_type().to_string(),
            outcome: decision.outcome,
            addrs: decision.addrs,
            ttl: decision.ttl,
        };
        debug!(
            agent = event.agent.as_deref().unwrap_or("-"),
            %peer,
            name = %event.name,
            qtype = %event.qtype,
            outcome = event.outcome.as_str(),
            "dns decision"
        );
        self.policy.record(event);
        decision.message
    }

    async fn decide(
        &self,
        request: &Message,
        query: &Query,
        agent: Option<&str>,
        name: &Result<String, String>,
    ) -> Decision {
        let Some(agent) = agent else {
            return Decision::bare(request, ResponseCode::Refused, DnsOutcome::Refused);
        };
        if query.query_class() != DNSClass::IN {
            return Decision::bare(request, ResponseCode::Refused, DnsOutcome::Refused);
        }
        let nxdomain = || Decision::bare(request, ResponseCode::NXDomain, DnsOutcome::NxDomain);
        let Ok(name) = name else {
            return nxdomain();
        };
        if !self.policy.name_allowed(agent, name) {
            return nxdomain();
        }
        if let Some(ips) = self.policy.static_answer(name) {
            return static_decision(request, query, &ips);
        }
        let qtype = query.query_type();
        if !FORWARDED_TYPES.contains(&qtype) {
            return Decision::bare(request, ResponseCode::NoError, DnsOutcome::Answered);
        }
        let Ok(qname) = name::to_fqdn(name) else {
            return nxdomain();
        };
        match self.upstream.query(&qname, qtype).await {
            Ok(reply) => forwarded(request, reply, &qname),
            Err(err) => {
                debug!(%agent, %name, %qtype, error = %err, "all upstreams failed");
                Decision::bare(request, ResponseCode::ServFail, DnsOutcome::UpstreamFailed)
            }
        }
    }
}

/// The response skeleton: the client's ID, flags and question echoed, RA
/// set, and an OPT record only if the client sent one (RFC 6891 6.1.1).
fn response_to(request: &Message, rcode: ResponseCode) -> Message {
    let mut header = Header::response_from_request(request.header());
    header
        .set_recursion_available(true)
        .set_response_code(rcode);
    let mut message = Message::new();
    message
        .set_header(header)
        .add_queries(request.queries().iter().cloned());
    if request.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        message.set_edns(edns);
    }
    message
}

fn static_decision(request: &Message, query: &Query, ips: &[IpAddr]) -> Decision {
    let owner: &Name = query.name();
    let wanted: Vec<IpAddr> = ips
        .iter()
        .copied()
        .filter(|ip| match query.query_type() {
            RecordType::A => ip.is_ipv4(),
            RecordType::AAAA => ip.is_ipv6(),
            _ => false,
        })
        .collect();
    let mut message = response_to(request, ResponseCode::NoError);
    for ip in &wanted {
        let rdata = match *ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        message.add_answer(Record::from_rdata(owner.clone(), STATIC_TTL, rdata));
    }
    let ttl = if wanted.is_empty() { 0 } else { STATIC_TTL };
    Decision {
        message,
        outcome: DnsOutcome::Static,
        addrs: wanted,
        ttl,
    }
}

/// The upstream's records under the client's header and question, so the
/// client sees its own ID and the upstream's EDNS options stay behind.
fn forwarded(request: &Message, mut reply: Message, qname: &Name) -> Decision {
    let (addrs, ttl) = addresses(&reply, qname);
    let mut message = response_to(request, reply.response_code());
    message.insert_answers(reply.take_answers());
    message.insert_name_servers(reply.take_name_servers());
    message.insert_additionals(reply.take_additionals());
    Decision {
        message,
        outcome: DnsOutcome::Answered,
        addrs,
        ttl,
    }
}
