//! Runs a parsed command: [`execute`] dispatches to the bootstrap, the node,
//! the demo, or a call to a node's API.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::bootstrap::{InitOptions, JoinOptions};
use crate::util::now_ms;

use super::actions::*;
use super::args::*;
use super::failure::*;
use super::render::*;
use tandem_web::{SettingsView, StatusView};

/// Runs one command.
///
/// # Errors
/// A [`Failure`] carrying the exit code.
pub async fn execute(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::SharedIpGuard => Ok(crate::shared_ip::guard::run_guard().await?),
        Command::Init(a) => init(a).await,
        Command::Run(a) => {
            let overrides = crate::RunOverrides {
                peer_listen: a.peer_listen,
                api_listen: a.api_listen,
                admin_tls: admin_tls_flags(a.admin_cert, a.admin_key)?,
            };
            crate::run(a.dir.dir, overrides, shutdown_on_signals()).await?;
            Ok(())
        }
        Command::Token(a) => token(a).await,
        Command::Certs(CertsArgs {
            action: CertsAction::Renew(api),
        }) => {
            let v: Value = api
                .client()?
                .call(Method::POST, "/api/v1/certs/renew", None::<&Value>)
                .await?;
            let when = v["not_after_ms"]
                .as_u64()
                .map_or_else(|| "unknown".to_string(), iso8601);
            println!("certificate renewed; valid until {when}");
            Ok(())
        }
        Command::Join(a) => join(a).await,
        Command::Status(a) if a.members => {
            show(&a.api, "/api/v1/cluster", a.json, "cluster", |v: &Value| {
                render_status(v)
            })
            .await
        }
        Command::Status(a) => {
            show(
                &a.api,
                "/api/v1/status",
                a.json,
                "status",
                |v: &StatusView| render_relationship(v, now_ms()),
            )
            .await
        }
        Command::Swap(a) => swap(a).await,
        Command::Sync(a) => sync(a).await,
        Command::Break(a) => break_or_rejoin(a, None).await,
        Command::Rejoin(a) => break_or_rejoin(a.confirm, Some(a.rejoin_token)).await,
        Command::Settings(a) => match a.command {
            SettingsCommand::Show(a) => {
                show(
                    &a.api,
                    "/api/v1/settings",
                    a.json,
                    "settings",
                    |v: &SettingsView| render_settings(v, ""),
                )
                .await
            }
            SettingsCommand::Set(a) => settings_set(a).await,
        },
        Command::History(a) => {
            let mut query = Vec::new();
            if let Some(l) = a.limit {
                query.push(format!("limit={l}"));
            }
            if let Some(k) = &a.kind {
                query.push(format!("kind={k}"));
            }
            if let Some(b) = a.before {
                query.push(format!("before={b}"));
            }
            let path = if query.is_empty() {
                "/api/v1/history".to_string()
            } else {
                format!("/api/v1/history?{}", query.join("&"))
            };
            show(&a.api, &path, a.json, "history", render_history).await
        }
        Command::Readiness(a) => {
            show(
                &a.api,
                "/api/v1/readiness",
                a.json,
                "readiness",
                render_readiness,
            )
            .await
        }
        Command::Maintenance(a) => maintenance(a).await,
        Command::Demo(a) => {
            crate::cli::demo::run_demo(a.dir, shutdown_on_signals()).await?;
            Ok(())
        }
    }
}

/// `GET path` on the node `api` names, printed as JSON with `json`, else
/// decoded as `V` and rendered.
async fn show<V: serde::de::DeserializeOwned>(
    api: &ApiArgs,
    path: &str,
    json: bool,
    what: &str,
    render: impl FnOnce(&V) -> String,
) -> Result<(), Failure> {
    let v: Value = api.client()?.get(path).await?;
    if json {
        return print_json(&v);
    }
    let view: V =
        serde_json::from_value(v).map_err(|e| anyhow::anyhow!("unexpected {what} answer: {e}"))?;
    print!("{}", render(&view));
    Ok(())
}

/// `tandem init`.
async fn init(a: InitArgs) -> Result<(), Failure> {
    let out = crate::bootstrap::init(InitOptions {
        dir: a.dir.dir.clone(),
        name: a.name,
        listen: a.listen.listen(),
        tuning: a.listen.tuning(),
        site: a.place.site,
        host_id: a.place.host_id,
    })
    .await?;
    if a.json {
        return print_json(&out);
    }
    println!(
        "cluster {} created in {}",
        out.cluster_id,
        a.dir.dir.display()
    );
    println!(
        "admin token (shown once, stored hashed): {}",
        out.admin_token
    );
    println!(
        "web UI user {:?}, one-time password (shown once, stored hashed): {}",
        out.admin_user, out.admin_password
    );
    println!("CA certificate: {}", out.ca_file.display());
    println!("API: {}", out.api);
    println!("start it with: tandem run --dir {}", a.dir.dir.display());
    Ok(())
}

/// `tandem token`: a one-time join token from the leader.
async fn token(a: TokenArgs) -> Result<(), Failure> {
    if let Some(TokenAction::RotateAdmin(api)) = a.action {
        let v: Value = api
            .client()?
            .call_leader(Method::POST, "/api/v1/admin-token", None::<&Value>)
            .await?;
        let token = v.get("token").and_then(Value::as_str).unwrap_or_default();
        println!("{token}");
        eprintln!("the old admin token no longer works; store this one (it is not shown again)");
        return Ok(());
    }
    let (path, body) = match a.rejoin {
        Some(node) => (
            "/api/v1/rejoin-tokens",
            json!({ "ttl_secs": a.ttl, "node": node }),
        ),
        None => (
            "/api/v1/join-tokens",
            json!({
                "ttl_secs": a.ttl,
                "kind": if a.witness { "witness" } else { "appliance" },
            }),
        ),
    };
    let Some(api) = a.api else {
        return Err(anyhow::anyhow!("tandem token needs --token (and --dir or --api)").into());
    };
    let v: Value = api
        .client()?
        .call_leader(Method::POST, path, Some(&body))
        .await?;
    let token = v.get("token").and_then(Value::as_str).unwrap_or_default();
    println!("{token}");
    Ok(())
}

/// `tandem join`.
async fn join(a: JoinArgs) -> Result<(), Failure> {
    let out = crate::bootstrap::join(JoinOptions {
        dir: a.dir.dir.clone(),
        name: a.name,
        witness: a.witness,
        token: a.token,
        peer: a.peer,
        listen: a.listen.listen(),
        tuning: a.listen.tuning(),
        site: a.place.site,
        host_id: a.place.host_id,
        allow_same_site: a.allow_same_site,
    })
    .await
    .map_err(|e| {
        let refused = matches!(
            e.downcast_ref::<crate::bootstrap::JoinCallError>(),
            Some(crate::bootstrap::JoinCallError::Refused(_))
        );
        Failure {
            code: if refused { EXIT_REFUSED } else { 1 },
            error: e,
        }
    })?;
    println!(
        "joined cluster {} as node {}; start it with: tandem run --dir {}",
        out.cluster_id,
        out.node_id,
        a.dir.dir.display()
    );
    Ok(())
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

/// `--admin-cert`/`--admin-key` as a config section, with paths made
/// absolute against the current directory (a relative path in `node.toml`
/// is relative to the data directory instead).
pub(crate) fn admin_tls_flags(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<crate::config::AdminTlsConfig>> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    Ok(Some(crate::config::AdminTlsConfig {
        cert: std::path::absolute(&cert).map_err(|e| anyhow::anyhow!("--admin-cert: {e}"))?,
        key: std::path::absolute(&key).map_err(|e| anyhow::anyhow!("--admin-key: {e}"))?,
    }))
}

/// Polls `probe` until it returns `Some`, at most `attempts` times, `every` apart.
pub async fn poll<T, F, Fut>(attempts: u32, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..attempts {
        if let Some(v) = probe().await {
            return Some(v);
        }
        tokio::time::sleep(every).await;
    }
    None
}
