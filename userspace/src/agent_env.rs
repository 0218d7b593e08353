//! The environment an agent starts with: its policy's `env:` with
//! placeholders (never secrets) and the variables that make common
//! runtimes trust Airlock's CA. Built by the daemon from the policy in
//! force, so `airlock run` agrees with what the proxy enforces.

use std::{collections::BTreeMap, path::Path};

use crate::policy::{EnvValue, Policy};

/// Variables that REPLACE the trust store get the bundle (system roots +
/// Airlock's CA), so passed-through hosts still verify; Node's adds to its
/// built-in roots and gets the CA alone.
const BUNDLE_VARS: [&str; 4] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

pub struct AgentEnv {
    pub vars: BTreeMap<String, String>,
    /// Secrets the policy references that the vault does not hold.
    pub missing_secrets: Vec<String>,
}

/// `placeholders`: secret name -> placeholder, from the vault.
pub fn build(
    policy: &Policy,
    placeholders: &BTreeMap<String, String>,
    state_dir: &Path,
) -> AgentEnv {
    let mut vars = BTreeMap::new();
    let mut missing_secrets = Vec::new();
    for (key, value) in &policy.env {
        let value = match value {
            EnvValue::Plain(s) => s.clone(),
            EnvValue::Placeholder { secret } => match placeholders.get(secret) {
                Some(p) => p.clone(),
                None => {
                    missing_secrets.push(secret.clone());
                    format!("airlock-ph-{secret}")
                }
            },
        };
        vars.insert(key.clone(), value);
    }
    let ca_dir = state_dir.join("ca");
    vars.insert(
        "NODE_EXTRA_CA_CERTS".into(),
        ca_dir.join("ca.crt").display().to_string(),
    );
    for var in BUNDLE_VARS {
        vars.insert(var.into(), ca_dir.join("bundle.pem").display().to_string());
    }
    vars.insert("AIRLOCK_AGENT".into(), policy.agent.clone());
    AgentEnv {
        vars,
        missing_secrets,
    }
}
