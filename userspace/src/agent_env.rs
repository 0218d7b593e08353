//! The environment an agent starts with: its policy's `env:` with
//! placeholders (never secrets) and the variables that make common
//! runtimes trust Airlock's CA. Built by the daemon from the policy in
//! force, so `airlock run` agrees with what the proxy enforces.

use std::{collections::BTreeMap, path::Path};

use crate::policy::{EnvValue, Policy};

/// Variables that REPLACE the trust store get the bundle (system roots +
/// Airlock's CA), so passed-through hosts still verify; Node's adds to its
/// built-in roots and gets the CA alone. gRPC's C core (Python's, Ruby's,
/// C++'s grpc) trusts roots of its own, not the system's, unless told.
const BUNDLE_VARS: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
];

/// The JVM reads no CA file from the environment, only options: this one
/// names its trust store. Options the policy or the caller give are kept
/// in front, and the JVM takes the last value of a property.
pub const JAVA_OPTIONS_VAR: &str = "JAVA_TOOL_OPTIONS";

/// The JVM options that make it trust `store` (a JKS file) in place of its
/// own `cacerts`, after `existing` ones. None when the path holds
/// whitespace, which splits JVM options and cannot be quoted in all JDKs.
pub fn java_options(existing: Option<&str>, store: &Path) -> Option<String> {
    let store = store
        .to_str()
        .filter(|s| !s.contains(char::is_whitespace))?;
    let ours = format!("-Djavax.net.ssl.trustStore={store} -Djavax.net.ssl.trustStoreType=JKS");
    Some(match existing.map(str::trim).filter(|e| !e.is_empty()) {
        Some(existing) => format!("{existing} {ours}"),
        None => ours,
    })
}

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
    let store = ca_dir.join(crate::ca::JAVA_TRUST_STORE);
    let policy_java = vars.get(JAVA_OPTIONS_VAR).map(String::as_str);
    match java_options(policy_java, &store) {
        Some(options) => {
            vars.insert(JAVA_OPTIONS_VAR.into(), options);
        }
        None => tracing::warn!(
            store = %store.display(),
            "the Java trust store's path holds whitespace, which JVM options cannot carry: Java agents will not trust Airlock's CA"
        ),
    }
    vars.insert("AIRLOCK_AGENT".into(), policy.agent.clone());
    AgentEnv {
        vars,
        missing_secrets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_trusts_the_store_after_any_options_it_already_had() {
        let store = Path::new("/var/lib/airlock/ca/bundle.jks");
        let ours = "-Djavax.net.ssl.trustStore=/var/lib/airlock/ca/bundle.jks -Djavax.net.ssl.trustStoreType=JKS";
        assert_eq!(java_options(None, store).as_deref(), Some(ours));
        assert_eq!(java_options(Some("  "), store).as_deref(), Some(ours));
        // Last wins in the JVM: a trust store the caller named gives way.
        assert_eq!(
            java_options(Some("-Xmx512m -Djavax.net.ssl.trustStore=/x"), store),
            Some(format!("-Xmx512m -Djavax.net.ssl.trustStore=/x {ours}"))
        );
        assert_eq!(
            java_options(None, Path::new("/state dir/ca/bundle.jks")),
            None
        );
    }
}
