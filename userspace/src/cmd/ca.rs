use std::process::ExitCode;

use crate::cli::{CaAction, ConfigArg};

pub fn run(arg: &ConfigArg, action: CaAction) -> anyhow::Result<ExitCode> {
    let (config, _) = super::load_config(arg)?;
    match action {
        CaAction::Path { bundle } => {
            let dir = config.state_dir.join("ca");
            let path = if bundle {
                dir.join("bundle.pem")
            } else {
                dir.join("ca.crt")
            };
            if !path.exists() {
                anyhow::bail!(
                    "{} does not exist yet: the daemon creates the CA on its first start (`airlock daemon`)",
                    path.display()
                );
            }
            println!("{}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
