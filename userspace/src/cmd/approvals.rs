use std::process::ExitCode;

use anyhow::bail;

use crate::{
    cli::{ApprovalAction, ConfigArg},
    daemon::{AdminRequest, admin_request},
};

pub fn run(arg: &ConfigArg, action: ApprovalAction) -> anyhow::Result<ExitCode> {
    let (config, _) = super::load_config(arg)?;
    let socket = &config.admin_socket;
    match action {
        ApprovalAction::List { json } => {
            let answer = admin_request(socket, &AdminRequest::ApprovalsList)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(ExitCode::SUCCESS);
            }
            let pending = answer["pending"].as_array().cloned().unwrap_or_default();
            if pending.is_empty() {
                println!("(no requests waiting)");
            }
            for p in pending {
                let claims: Vec<&str> = p["claimed_methods"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str())
                    .collect();
                let method = match claims.as_slice() {
                    [] => p["method"].as_str().unwrap_or("?").to_owned(),
                    _ => format!(
                        "{} CLAIMING {}",
                        p["method"].as_str().unwrap_or("?"),
                        claims.join(",")
                    ),
                };
                println!(
                    "{}  {}  {} https://{}{}  rule {}  body {}",
                    p["id"].as_str().unwrap_or("?"),
                    p["agent"].as_str().unwrap_or("?"),
                    method,
                    p["host"].as_str().unwrap_or("?"),
                    p["path"].as_str().unwrap_or("?"),
                    p["rule"].as_str().unwrap_or("?"),
                    p["body_digest"].as_str().unwrap_or("-"),
                );
            }
        }
        ApprovalAction::Approve { id } => answer(
            admin_request(socket, &AdminRequest::Approve { id: id.clone() })?,
            &id,
            "approved",
        )?,
        ApprovalAction::Deny { id } => answer(
            admin_request(socket, &AdminRequest::Deny { id: id.clone() })?,
            &id,
            "denied",
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

fn answer(reply: serde_json::Value, id: &str, what: &str) -> anyhow::Result<()> {
    if let Some(err) = reply["error"].as_str() {
        bail!("{err} (see `airlock approvals list`)");
    }
    println!("{what} {id}");
    Ok(())
}
