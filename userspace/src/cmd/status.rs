use std::process::ExitCode;

use crate::{cli::ConfigArg, daemon::AdminRequest};

pub fn run(arg: &ConfigArg, json: bool) -> anyhow::Result<ExitCode> {
    let (config, _) = super::load_config(arg)?;
    let status = crate::daemon::admin_request(&config.admin_socket, &AdminRequest::Status)?;
    let healthy = status["healthy"].as_bool().unwrap_or(false);
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_human(&status);
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_human(s: &serde_json::Value) {
    let healthy = s["healthy"].as_bool().unwrap_or(false);
    println!(
        "airlock {}: {} (pid {}, up {}s)",
        s["version"].as_str().unwrap_or("?"),
        if healthy { "healthy" } else { "UNHEALTHY" },
        s["pid"],
        s["uptime_secs"]
    );
    println!("cgroup:   {}", s["cgroup"].as_str().unwrap_or("?"));
    println!(
        "programs: {} attached to the cgroup ({} in this build)",
        s["attached_programs"],
        s["programs"].as_array().map_or(0, Vec::len)
    );
    if let Some(err) = s["attached_programs_error"].as_str() {
        println!("          kernel query failed: {err}");
    }
    let switched: Vec<&str> = s["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["link"] == "replaced")
        .filter_map(|p| p["name"].as_str())
        .collect();
    if !switched.is_empty() {
        println!(
            "          pinned links switched to this build's program at start: {}",
            switched.join(", ")
        );
    }
    if let Some(change) = s["maps_replaced"].as_str() {
        println!("          pinned maps replaced at start ({change})");
    }
    if let Some(n) = s["hooks_reattached"].as_u64().filter(|n| *n > 0) {
        println!(
            "          attached again {n} time(s) to a cgroup root made anew, last at {} (Unix time)",
            s["hooks_reattached_at"]
        );
    }
    let audit = &s["audit"];
    println!(
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
    );
    if audit["sync_failing"].as_bool() == Some(true) {
        println!(
            "          NOT SYNCING TO DISK: records written since the last sync would not outlive a power cut (the daemon's log says why)"
        );
    }
    if let Some(n) = audit["recovered_at_start"].as_u64().filter(|n| *n > 0) {
        println!(
            "          {n} record(s) that a killed run left were found at start, and written first"
        );
    }
    println!("proxy:    {}", s["listening"]["proxy"]);
    println!("dns:      {}", s["listening"]["dns"]);
    println!("metrics:  {}", s["listening"]["metrics"]);
    println!("agents:");
    match s["agents"].as_array() {
        Some(agents) if !agents.is_empty() => {
            for a in agents {
                println!(
                    "  {:<20} cgroup {:<8} live connections {:<4} policy {}",
                    a["agent"].as_str().unwrap_or("?"),
                    a["cgroup_id"],
                    a["live_connections"],
                    a["policy"].as_str().unwrap_or("NONE (no egress)")
                );
                if let Some(n) = a["unconfined_processes"].as_u64().filter(|n| *n > 0) {
                    println!(
                        "  {:<20} UNCONFINED: {n} process(es) without a system call filter (placed without `airlock run`?): they may open sockets the hooks never see (AF_VSOCK, io_uring); see README, Run an agent",
                        ""
                    );
                }
            }
        }
        _ => println!("  (none running)"),
    }
    if let Some(errors) = s["policies"]["errors"].as_array() {
        for e in errors {
            println!("policy error: {}", e.as_str().unwrap_or("?"));
        }
    }
    println!("kernel counters: {}", s["kernel_counters"]);
    if let Some(denials) = s["recent_denials"].as_array() {
        println!("recent denials: {}", denials.len());
        for d in denials.iter().rev().take(10) {
            println!(
                "  {} {} {}:{} {}",
                d["ts"].as_str().unwrap_or(""),
                d["agent"].as_str().unwrap_or("-"),
                d["host"].as_str().unwrap_or(""),
                d["port"],
                d["reason"].as_str().unwrap_or("")
            );
        }
    }
}
