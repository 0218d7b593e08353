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
                println!("{}", pending_line(&p));
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

/// One request waiting for a human, as `approvals list` shows it. Every
/// field the agent's request chose is shown with its control characters
/// escaped: a terminal would act on them, and a backspace or an escape
/// sequence could hide the real method and path from the approver.
fn pending_line(p: &serde_json::Value) -> String {
    let field = |name: &str, absent: &str| shown(p[name].as_str().unwrap_or(absent));
    let claims: Vec<String> = p["claimed_methods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
        .map(shown)
        .collect();
    let method = match claims.as_slice() {
        [] => field("method", "?"),
        _ => format!("{} CLAIMING {}", field("method", "?"), claims.join(",")),
    };
    format!(
        "{}  {}  {} https://{}{}  rule {}  body {}",
        field("id", "?"),
        field("agent", "?"),
        method,
        field("host", "?"),
        field("path", "?"),
        field("rule", "?"),
        field("body_digest", "-"),
    )
}

/// `text` with each control character written as an escape.
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::pending_line;

    #[test]
    fn a_waiting_request_is_shown_without_control_characters() {
        let p = serde_json::json!({
            "id": "a1", "agent": "pr-bot", "method": "POST",
            "claimed_methods": ["\u{8}\u{8}GET\u{1b}[8m"],
            "host": "api.example.com", "path": "/merge\r", "rule": "rules[1]",
            "body_digest": "sha256:00",
        });
        let line = pending_line(&p);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert_eq!(
            line,
            "a1  pr-bot  POST CLAIMING \\u{8}\\u{8}GET\\u{1b}[8m https://api.example.com/merge\\r  rule rules[1]  body sha256:00"
        );
    }
}
