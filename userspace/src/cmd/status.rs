use std::process::ExitCode;

use crate::{cli::ConfigArg, daemon::AdminRequest};

pub fn run(arg: &ConfigArg, json: bool) -> anyhow::Result<ExitCode> {
    let (config, _) = super::load_config(arg)?;
    let status = crate::daemon::admin_request(&config.admin_socket, &AdminRequest::Status)?;
    let healthy = status["healthy"].as_bool().unwrap_or(false);
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("{}", human(&status));
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The status as lines for a person to read.
fn human(s: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let healthy = s["healthy"].as_bool().unwrap_or(false);
    out.push(format!(
        "airlock {}: {} (pid {}, up {}s)",
        s["version"].as_str().unwrap_or("?"),
        if healthy { "healthy" } else { "UNHEALTHY" },
        s["pid"],
        s["uptime_secs"]
    ));
    out.push(format!("cgroup:   {}", s["cgroup"].as_str().unwrap_or("?")));
    out.push(format!(
        "programs: {} attached to the cgroup ({} in this build)",
        s["attached_programs"],
        s["programs"].as_array().map_or(0, Vec::len)
    ));
    if let Some(err) = s["attached_programs_error"].as_str() {
        out.push(format!("          kernel query failed: {err}"));
    }
    let switched: Vec<&str> = s["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["link"] == "replaced")
        .filter_map(|p| p["name"].as_str())
        .collect();
    if !switched.is_empty() {
        out.push(format!(
            "          pinned links switched to this build's program at start: {}",
            switched.join(", ")
        ));
    }
    if let Some(change) = s["maps_replaced"].as_str() {
        out.push(format!(
            "          pinned maps replaced at start ({change})"
        ));
    }
    if let Some(n) = s["hooks_reattached"].as_u64().filter(|n| *n > 0) {
        out.push(format!(
            "          attached again {n} time(s) to a cgroup root made anew, last at {} (Unix time)",
            s["hooks_reattached_at"]
        ));
    }
    let audit = &s["audit"];
    out.push(format!(
        "audit:    {} {}, {} records queued in {}, {} lost",
        match (
            audit["accepting"].as_bool(),
            audit["write_failing"].as_bool()
        ) {
            (Some(true), _) => "writing to",
            (_, Some(true)) => "WRITES FAILING, requests are refused:",
            _ => "FALLING BEHIND, requests are refused:",
        },
        audit["path"].as_str().unwrap_or("?"),
        audit["backlog"],
        audit["journal"].as_str().unwrap_or("?"),
        audit["lost_records"]
    ));
    if audit["write_failing"].as_bool() == Some(true)
        && let Some(why) = audit["write_error"].as_str()
    {
        out.push(format!("          why: {why}"));
    }
    if audit["sync_failing"].as_bool() == Some(true) {
        out.push(
            "          NOT SYNCING TO DISK: records written since the last sync would not outlive a power cut (the daemon's log says why)"
                .into(),
        );
    }
    if let Some(n) = audit["sync_failures"].as_u64().filter(|n| *n > 0) {
        out.push(format!(
            "          {n} sync(s) to disk failed since start, last at {} (Unix time): records written before a failed sync may be missing from the disk, even once syncs succeed again",
            audit["last_sync_failure"]
        ));
    }
    if let Some(n) = audit["recovered_at_start"].as_u64().filter(|n| *n > 0) {
        out.push(format!(
            "          {n} record(s) that a killed run left were found at start, and written first"
        ));
    }
    out.push(format!("proxy:    {}", s["listening"]["proxy"]));
    out.push(format!("dns:      {}", s["listening"]["dns"]));
    out.push(format!("metrics:  {}", s["listening"]["metrics"]));
    out.push("agents:".into());
    match s["agents"].as_array() {
        Some(agents) if !agents.is_empty() => {
            for a in agents {
                out.push(format!(
                    "  {:<20} cgroup {:<8} live connections {:<4} policy {}",
                    a["agent"].as_str().unwrap_or("?"),
                    a["cgroup_id"],
                    a["live_connections"],
                    a["policy"].as_str().unwrap_or("NONE (no egress)")
                ));
                if let (Some(live), Some(limit)) = (
                    a["live_connections"].as_u64(),
                    a["connection_limit"].as_u64(),
                ) && live >= limit
                {
                    out.push(format!(
                        "  {:<20} AT ITS LIMIT of {limit} connections: more are refused until some close (max_connections_per_agent)",
                        ""
                    ));
                }
                if let Some(n) = a["unconfined_processes"].as_u64().filter(|n| *n > 0) {
                    out.push(format!(
                        "  {:<20} UNCONFINED: {n} process(es) without a system call filter (placed without `airlock run`?): they may open sockets the hooks never see (AF_VSOCK, io_uring); see README, Run an agent",
                        ""
                    ));
                }
            }
        }
        _ => out.push("  (none running)".into()),
    }
    if let Some(errors) = s["policies"]["errors"].as_array() {
        for e in errors {
            out.push(format!("policy error: {}", e.as_str().unwrap_or("?")));
        }
    }
    out.push(format!("kernel counters: {}", s["kernel_counters"]));
    if let Some(denials) = s["recent_denials"].as_array() {
        out.push(format!("recent denials: {}", denials.len()));
        for d in denials.iter().rev().take(10) {
            out.push(format!(
                "  {} {} {}:{} {}",
                d["ts"].as_str().unwrap_or(""),
                d["agent"].as_str().unwrap_or("-"),
                d["host"].as_str().unwrap_or(""),
                d["port"],
                d["reason"].as_str().unwrap_or("")
            ));
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditState;

    fn with_audit(audit: AuditState) -> serde_json::Value {
        serde_json::json!({ "healthy": true, "audit": audit })
    }

    fn audit_state() -> AuditState {
        AuditState::healthy_example()
    }

    #[test]
    fn a_log_that_syncs_says_nothing_of_syncing() {
        let text = human(&with_audit(audit_state()));
        assert!(
            text.contains("audit:    writing to /var/log/airlock/audit.jsonl"),
            "{text}"
        );
        assert!(!text.contains("sync"), "{text}");
    }

    #[test]
    fn a_log_that_cannot_be_written_says_why() {
        let failing = AuditState {
            accepting: false,
            write_failing: true,
            write_error: Some("the audit log's file system is down to the 256 MiB that audit_min_free_mib keeps free for the rest of the host (12.0 MiB available)".into()),
            ..audit_state()
        };
        let text = human(&with_audit(failing));
        assert!(
            text.contains(
                "audit:    WRITES FAILING, requests are refused: /var/log/airlock/audit.jsonl"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n          why: the audit log's file system is down to the 256 MiB that audit_min_free_mib keeps free for the rest of the host (12.0 MiB available)"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_sync_stays_on_record_after_syncs_succeed_again() {
        let failing = AuditState {
            sync_failing: true,
            sync_failures: 1,
            last_sync_failure: Some(1_764_950_000),
            ..audit_state()
        };
        let text = human(&with_audit(failing));
        assert!(text.contains("NOT SYNCING TO DISK"), "{text}");

        let recovered = AuditState {
            sync_failures: 2,
            last_sync_failure: Some(1_764_950_000),
            ..audit_state()
        };
        let text = human(&with_audit(recovered));
        assert!(!text.contains("NOT SYNCING"), "{text}");
        assert!(
            text.contains("2 sync(s) to disk failed since start, last at 1764950000 (Unix time): records written before a failed sync may be missing from the disk"),
            "{text}"
        );
    }
}
