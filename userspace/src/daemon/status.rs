//! The daemon's answer to `airlock status`.

use std::{path::PathBuf, sync::Arc, time::Instant};

use serde_json::json;

use super::{
    Listening,
    admin::{AdminHandler, AdminRequest},
};
use crate::{
    approvals::Approvals,
    audit::Audit,
    cgroup::AgentIndex,
    config::Config,
    ebpf::Kernel,
    policy::PolicyStore,
    proxy::{Credentials, LiveConns},
};

pub struct StatusSource {
    pub started: Instant,
    pub config: Config,
    pub config_path: PathBuf,
    pub kernel: Arc<Kernel>,
    pub agents: Arc<AgentIndex>,
    pub policies: Arc<PolicyStore>,
    pub audit: Audit,
    pub approvals: Arc<Approvals>,
    pub live: Arc<LiveConns>,
    pub listening: Listening,
    pub credentials: Arc<Credentials>,
}

impl StatusSource {
    fn status(&self) -> serde_json::Value {
        let attached = crate::ebpf::attached_program_count(&self.kernel.report.cgroup);
        // Ports and network namespace, as this daemon asked the loader.
        let settings_ok = self.kernel.settings() == Some(self.kernel.requested());
        let live = self.live.snapshot();
        let processes = self.agents.processes();
        let agents: Vec<_> = self
            .agents
            .snapshot()
            .into_iter()
            .map(|(id, name)| {
                json!({
                    "agent": &*name,
                    "cgroup_id": id,
                    "policy": self.policies.get(&name).map(|p| p.source.display().to_string()),
                    "live_connections": live.get(&*name).copied().unwrap_or(0),
                    "connection_limit": self.live.limit(),
                    "unconfined_processes": processes
                        .get(&name)
                        .map_or(0, |pids| super::confinement::unconfined(pids)),
                })
            })
            .collect();
        let counters: serde_json::Map<String, serde_json::Value> = self
            .kernel
            .stats
            .all()
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let audit = self.audit.state();
        let programs = self.kernel.programs();
        let (reattached, reattached_at) = self.kernel.reattached();
        let healthy = settings_ok
            && audit.accepting
            && attached
                .as_ref()
                .is_ok_and(|n| *n as usize >= programs.len());
        json!({
            "healthy": healthy,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "config": self.config_path.display().to_string(),
            "cgroup": self.kernel.report.cgroup.display().to_string(),
            "pin_dir": self.kernel.report.pin_dir.display().to_string(),
            "programs": programs,
            "maps_replaced": self.kernel.report.maps_replaced,
            "hooks_reattached": reattached,
            "hooks_reattached_at": reattached_at,
            "attached_programs": attached.as_ref().ok(),
            "attached_programs_error": attached.as_ref().err().map(|e| e.to_string()),
            "listening": self.listening,
            "agents": agents,
            "policies": self.policies.summary(),
            "kernel_counters": counters,
            "recent_denials": self.audit.recent_denials(),
            "audit": audit,
            "approvals_pending": self.approvals.pending(),
        })
    }
}

impl StatusSource {
    fn agent_env(&self, agent: &str) -> serde_json::Value {
        let Some(policy) = self.policies.get(agent) else {
            return json!({"error": format!(
                "no policy for agent {agent} is in force (policy_dir {}): it would get no egress at all",
                self.config.policy_dir.display()
            )});
        };
        let placeholders =
            match crate::vault::Vault::open(&self.config.state_dir).and_then(|v| v.list()) {
                Ok(list) => list.into_iter().map(|i| (i.name, i.placeholder)).collect(),
                Err(err) => return json!({"error": format!("vault: {err}")}),
            };
        let env = crate::agent_env::build(&policy, &placeholders, &self.config.state_dir);
        json!({"env": env.vars, "missing_secrets": env.missing_secrets})
    }
}

impl AdminHandler for StatusSource {
    fn handle(&self, req: AdminRequest) -> serde_json::Value {
        match req {
            AdminRequest::Status => self.status(),
            AdminRequest::ApprovalsList => {
                let pending: Vec<_> = self
                    .approvals
                    .list()
                    .into_iter()
                    .map(|p| serde_json::to_value(p).unwrap_or_default())
                    .collect();
                json!({ "pending": pending })
            }
            AdminRequest::Approve { id } => match self.approvals.approve(&id) {
                Ok(()) => json!({"ok": true}),
                Err(err) => json!({"error": err.to_string()}),
            },
            AdminRequest::AgentEnv { agent } => self.agent_env(&agent),
            AdminRequest::VaultChanged => {
                self.credentials.reload();
                json!({"ok": true})
            }
            AdminRequest::Deny { id } => match self.approvals.deny(&id) {
                Ok(()) => json!({"ok": true}),
                Err(err) => json!({"error": err.to_string()}),
            },
        }
    }
}
