//! What the resolver needs to know about agents, answered from the kernel's
//! DNS sender records, the cgroup tree and the policies.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    audit::{Action, Audit, AuditRecord},
    cgroup::AgentIndex,
    dns::{DnsEvent, DnsOutcome, DnsPolicy},
    ebpf::ConnTable,
    metrics::Metrics,
    policy::PolicyStore,
};

pub struct DnsView {
    pub conns: Arc<dyn ConnTable>,
    pub agents: Arc<AgentIndex>,
    pub policies: Arc<PolicyStore>,
    pub resolve: BTreeMap<String, Vec<IpAddr>>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
}

impl DnsPolicy for DnsView {
    fn agent_for_udp_peer(&self, peer: SocketAddr) -> Option<String> {
        let record = self.conns.dns_client(peer)?;
        self.agents.agent(record.cgroup_id).map(|a| a.to_string())
    }

    fn name_allowed(&self, agent: &str, name: &str) -> bool {
        self.policies
            .get(agent)
            .is_some_and(|policy| policy.names_host(name))
    }

    fn static_answer(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.resolve.get(name).cloned()
    }

    fn record(&self, event: DnsEvent) {
        let agent = event.agent.as_deref().unwrap_or("-");
        self.metrics
            .dns_queries
            .with_label_values(&[agent, event.outcome.as_str()])
            .inc();
        let action = match event.outcome {
            DnsOutcome::Answered | DnsOutcome::Static => Action::Allow,
            DnsOutcome::NxDomain | DnsOutcome::Refused => Action::Deny,
            DnsOutcome::UpstreamFailed => Action::Error,
        };
        self.audit.record(AuditRecord {
            agent: event.agent.map(Arc::from),
            action: Some(action),
            host: event.name.into(),
            port: 53,
            dst: event.peer.to_string().into(),
            proto: "dns",
            method: Some(event.qtype.into()),
            reason: Some(event.outcome.as_str().into()),
            ..AuditRecord::default()
        });
    }
}
