//! `astral status | streams | watch | seed | stop | leave | nodes | tickets`: the CLI
//! on the local node's API. Tables for people, `--json` for scripts. Admin calls carry
//! the token the node keeps in its data directory.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use proto::StreamInfo;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::api::{Membership, Status, TicketLine, Watching};
use crate::config::{Config, NodeArgs};
use crate::control::Role;
use crate::settings::Effective;

/// Where the local node is, and how to prove we are its admin.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's API [default: from the node's config, else 127.0.0.1:8000]
    #[arg(long, env = "ASTRAL_API")]
    pub api: Option<SocketAddr>,
    /// The node's config file, to find its API and data directory
    #[arg(long, env = "ASTRAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// The node's data directory, which holds the admin token
    #[arg(long, env = "ASTRAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// The CLI's commands, each with the flags that find the node.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Show the local node: who it is, its supernode, its streams, recent events
    Status(Target),
    /// List the streams on the local node, with their place in the tree
    Streams(Target),
    /// Relay a stream for players on this box, and print where to play it
    Watch(StreamTarget),
    /// Relay a stream to help the network, without watching it
    Seed(StreamTarget),
    /// Stop relaying a watched or seeded stream
    Stop(StreamTarget),
    /// Leave the overlay gracefully and stop the local node
    Leave(Target),
    /// Show the local node's supernode, or the boxes registered with it
    Nodes(Target),
    /// List the forwards the local node grants to other boxes
    Tickets(Target),
    /// Show or change the local node's settings, saved and applied at once
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Show the settings in force, and which were set with `config set`
    Get(Target),
    /// Change settings: KEY=VALUE, or KEY= to go back to node.toml's value. Keys:
    /// source, size, fps, bitrate_kbps, encoder, title, description, upload_kbps,
    /// max_forwards
    Set {
        #[arg(value_name = "KEY=VALUE", required = true)]
        settings: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct StreamTarget {
    /// The stream's id, as the portal lists it
    pub stream: String,
    #[command(flatten)]
    pub target: Target,
}

impl Command {
    fn target(&self) -> &Target {
        match self {
            Command::Status(t)
            | Command::Streams(t)
            | Command::Leave(t)
            | Command::Nodes(t)
            | Command::Tickets(t) => t,
            Command::Watch(s) | Command::Seed(s) | Command::Stop(s) => &s.target,
            Command::Config(ConfigCommand::Get(t)) => t,
            Command::Config(ConfigCommand::Set { target, .. }) => target,
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    data_dir: PathBuf,
    json: bool,
}

/// Runs one CLI command; the error says what to do.
pub async fn run(command: Command) -> anyhow::Result<()> {
    let target = command.target().clone();
    let args = NodeArgs {
        config: target.config.clone(),
        api: target.api,
        data_dir: target.data_dir.clone(),
        ..NodeArgs::default()
    };
    let config = Config::load(&args).context("cannot read the node's config")?;
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .no_proxy()
            .build()?,
        base: format!("http://{}", loopback_for(config.api)),
        data_dir: config.data_dir,
        json: target.json,
    };
    match command {
        Command::Status(_) => client.status().await,
        Command::Streams(_) => client.streams().await,
        Command::Watch(s) => client.watch(&s.stream, Role::Watch).await,
        Command::Seed(s) => client.watch(&s.stream, Role::Seed).await,
        Command::Stop(s) => client.stop(&s.stream).await,
        Command::Leave(_) => client.leave().await,
        Command::Nodes(_) => client.nodes().await,
        Command::Tickets(_) => client.tickets().await,
        Command::Config(ConfigCommand::Get(_)) => client.config(None).await,
        Command::Config(ConfigCommand::Set { settings, .. }) => {
            client.config(Some(settings_patch(&settings)?)).await
        }
    }
}

/// `KEY=VALUE` arguments as a JSON patch: `KEY=` clears a setting.
fn settings_patch(settings: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut patch = serde_json::Map::new();
    for setting in settings {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("{setting:?}: write KEY=VALUE, for example fps=25 (KEY= clears a setting)");
        };
        let value = match value {
            "" => serde_json::Value::Null,
            v => serde_json::Value::String(v.to_owned()),
        };
        patch.insert(key.trim().to_owned(), value);
    }
    Ok(serde_json::Value::Object(patch))
}

/// A node listening on every address is reached on loopback.
fn loopback_for(api: SocketAddr) -> SocketAddr {
    if api.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], api.port()))
    } else {
        api
    }
}

impl Client {
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        admin: bool,
    ) -> anyhow::Result<(StatusCode, Option<T>)> {
        self.call_with(method, path, admin, None).await
    }

    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        admin: bool,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, Option<T>)> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        if admin {
            let token_path = crate::auth::token_path(&self.data_dir);
            let token = crate::auth::read(&token_path).with_context(|| {
                format!(
                    "cannot read the admin token {} (run as the node's user, or give --data-dir)",
                    token_path.display()
                )
            })?;
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the node at {} (is it running? pick it with --api)",
                self.base
            )
        })?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            let error = serde_json::from_slice::<proto::ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("the node said {status}: {error}");
        }
        if body.is_empty() {
            return Ok((status, None));
        }
        let value = serde_json::from_slice(&body)
            .context("the node's answer is not what this CLI expects")?;
        Ok((status, Some(value)))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        match self.call(Method::GET, path, false).await? {
            (_, Some(value)) => Ok(value),
            (_, None) => bail!("the node sent an empty answer to GET {path}"),
        }
    }

    fn print_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// Shows the settings, after applying `patch` if there is one.
    async fn config(&self, patch: Option<serde_json::Value>) -> anyhow::Result<()> {
        let (method, admin_body) = match &patch {
            Some(p) => (Method::PATCH, Some(p)),
            None => (Method::GET, None),
        };
        let (_, effective): (_, Option<Effective>) =
            self.call_with(method, "/config", true, admin_body).await?;
        let effective = effective.context("the node sent an empty answer")?;
        if self.json {
            return self.print_json(&effective);
        }
        let value = serde_json::to_value(&effective)?;
        let mut rows = vec![["SETTING", "VALUE", "FROM"].map(String::from)];
        for key in crate::settings::KEYS {
            let shown = match &value[key] {
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let from = if effective.set_remotely.iter().any(|k| k == key) {
                "config set"
            } else {
                "node.toml, flags or default"
            };
            rows.push([key.to_owned(), shown, from.to_owned()]);
        }
        print!("{}", table(&rows));
        Ok(())
    }

    async fn status(&self) -> anyhow::Result<()> {
        let status: Status = self.get("/status").await?;
        if self.json {
            return self.print_json(&status);
        }
        let o = &status.overlay;
        println!("node       {} (astral {})", status.name, status.version);
        println!(
            "id         {} (from the key in the data directory)",
            status.peer.id
        );
        println!("uptime     {}", human_duration(status.uptime_secs));
        println!("api        {}    rtmp {}", status.api, status.rtmp);
        println!("reached at api {}  rtmp {}", o.me.api, o.me.rtmp);
        println!("reachable  {}", reach_line(&status.reach));
        println!("ipv6       {}", ipv6_line(status.reach.ipv6.as_ref()));
        let membership = match (o.running, o.is_supernode, &o.supernode) {
            (false, _, _) => "not in an overlay (no --portal or --supernode)".to_owned(),
            (true, true, _) => format!(
                "supernode, {} boxes registered",
                o.registered.unwrap_or_default()
            ),
            (true, false, Some(sn)) => format!("registered with supernode {sn}"),
            (true, false, None) => "joining…".to_owned(),
        };
        println!("overlay    {membership}");
        println!();
        print!("{}", held_table(&o.streams));
        if !o.events.is_empty() {
            println!("\nrecent events");
            for e in o.events.iter().rev().take(10).rev() {
                println!("  {}  {}", clock(e.at), e.event);
            }
        }
        Ok(())
    }

    async fn streams(&self) -> anyhow::Result<()> {
        let streams: Vec<StreamInfo> = self.get("/streams").await?;
        let status: Status = self.get("/status").await?;
        if self.json {
            let both = serde_json::json!({ "streams": streams, "overlay": status.overlay.streams });
            return self.print_json(&both);
        }
        if streams.is_empty() {
            println!("no streams on this node");
            return Ok(());
        }
        let mut rows = vec![[
            "STREAM", "ROLE", "DEPTH", "PARENT", "FLOWING", "KBIT/S", "FPS", "PLAYERS",
        ]
        .map(String::from)];
        for s in &streams {
            let held = status
                .overlay
                .streams
                .iter()
                .find(|h| h.stream.as_str() == s.name);
            rows.push([
                s.name.clone(),
                held.map_or("-".into(), |h| role_name(h.role).into()),
                held.map_or("-".into(), |h| h.depth.to_string()),
                held.and_then(|h| h.parent.clone())
                    .unwrap_or_else(|| "-".into()),
                held.map_or("-".into(), |h| yes_no(h.flowing).into()),
                s.bitrate_kbps.to_string(),
                format!("{:.0}", s.fps),
                s.subscribers.to_string(),
            ]);
        }
        print!("{}", table(&rows));
        Ok(())
    }

    async fn watch(&self, stream: &str, role: Role) -> anyhow::Result<()> {
        let verb = match role {
            Role::Seed => "seed",
            _ => "watch",
        };
        let (_, watching): (_, Option<Watching>) = self
            .call(Method::POST, &format!("/streams/{stream}/{verb}"), true)
            .await?;
        let watching = watching.context("the node sent an empty answer")?;
        // Wait until the stream flows here, showing what the node does meanwhile.
        let mut said = String::new();
        let mut flowing = false;
        for _ in 0..60 {
            let status: Status = self.get("/status").await?;
            if let Some(held) = status
                .overlay
                .streams
                .iter()
                .find(|h| h.stream.as_str() == stream)
            {
                if held.flowing && held.parent.is_some() {
                    flowing = true;
                    break;
                }
            }
            if let Some(last) = status.overlay.events.last() {
                if last.event != said && !self.json {
                    eprintln!("  {}", last.event);
                    said.clone_from(&last.event);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if self.json {
            return self
                .print_json(&serde_json::json!({ "watching": watching, "flowing": flowing }));
        }
        if flowing {
            println!("{stream} flows here.");
        } else {
            println!("{stream}: no parent yet; the node keeps searching (see `astral status`).");
        }
        if role == Role::Watch {
            println!("  play:  ffplay {}", watching.http_flv);
            println!("         or open it in VLC; RTMP: {}", watching.rtmp);
        }
        Ok(())
    }

    async fn stop(&self, stream: &str) -> anyhow::Result<()> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/streams/{stream}/watch"), true)
            .await?;
        if !self.json {
            println!("stopped relaying {stream}");
        }
        Ok(())
    }

    async fn leave(&self) -> anyhow::Result<()> {
        self.call::<serde_json::Value>(Method::POST, "/leave", true)
            .await?;
        if !self.json {
            println!("the node is leaving the overlay and will stop");
        }
        Ok(())
    }

    async fn nodes(&self) -> anyhow::Result<()> {
        let membership: Membership = self.get("/nodes").await?;
        if self.json {
            return self.print_json(&membership);
        }
        match (membership.is_supernode, &membership.supernode) {
            (true, _) => println!(
                "this node is a supernode: {} boxes registered, {} neighbour supernodes",
                membership.registered.len(),
                membership.neighbours.len()
            ),
            (false, Some(sn)) => println!("registered with supernode {sn}"),
            (false, None) => println!("not registered with a supernode"),
        }
        if membership.registered.is_empty() {
            return Ok(());
        }
        let mut rows = vec![["NODE", "API", "SLOTS", "STREAMS (DEPTH, FREE)"].map(String::from)];
        for r in &membership.registered {
            let streams: Vec<String> = r
                .holdings
                .iter()
                .map(|h| format!("{} ({}, {})", h.stream, h.depth(), h.free))
                .collect();
            rows.push([
                r.node.peer.id.to_string(),
                r.node.peer.api.to_string(),
                r.node.max_forwards.to_string(),
                streams.join(" "),
            ]);
        }
        println!();
        print!("{}", table(&rows));
        Ok(())
    }

    async fn tickets(&self) -> anyhow::Result<()> {
        let tickets: Vec<TicketLine> = self.get("/tickets").await?;
        if self.json {
            return self.print_json(&tickets);
        }
        if tickets.is_empty() {
            println!("this node forwards to no other box");
            return Ok(());
        }
        let mut rows = vec![["STREAM", "TICKET", "CHILD", "CONNECTED", "MOVING"].map(String::from)];
        for t in tickets {
            rows.push([
                t.stream.to_string(),
                t.ticket.id,
                t.ticket.child,
                yes_no(t.ticket.connected).into(),
                yes_no(t.ticket.moving).into(),
            ]);
        }
        print!("{}", table(&rows));
        Ok(())
    }
}

fn held_table(streams: &[crate::control::HeldReport]) -> String {
    if streams.is_empty() {
        return "no streams in the overlay\n".into();
    }
    let mut rows = vec![[
        "STREAM", "ROLE", "DEPTH", "PARENT", "FLOWING", "SLOTS", "CHILDREN",
    ]
    .map(String::from)];
    for h in streams {
        rows.push([
            h.stream.to_string(),
            role_name(h.role).into(),
            h.depth.to_string(),
            h.parent.clone().unwrap_or_else(|| "-".into()),
            yes_no(h.flowing).into(),
            h.slots.to_string(),
            h.tickets
                .iter()
                .map(|t| t.child.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    table(&rows)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Source => "source",
        Role::Watch => "watch",
        Role::View => "view",
        Role::Seed => "seed",
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// `HH:MM:SS` UTC of a Unix time.
fn clock(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// `astral status`'s line on whether other boxes reach this one.
fn reach_line(reach: &crate::reach::ReachReport) -> String {
    use crate::reach::ReachState;
    match reach.state {
        ReachState::Reachable => match &reach.mapped_by {
            Some(protocol) => format!("yes, through ports the router mapped over {protocol}"),
            None => "yes".into(),
        },
        ReachState::Unreachable => format!("no. {}", reach.why.as_deref().unwrap_or_default()),
        ReachState::Unknown => match &reach.why {
            Some(why) => format!("not known: {why}"),
            None => "not checked (no portal)".into(),
        },
    }
}

/// `astral status`'s line on the box's own IPv6 address.
fn ipv6_line(ipv6: Option<&crate::reach::ipv6::Ipv6Report>) -> String {
    match ipv6 {
        Some(v6) if v6.reachable => format!("{}, reached by boxes with IPv6", v6.address),
        Some(v6) => format!(
            "{}, not reached: {}",
            v6.address,
            v6.why.as_deref().unwrap_or_default()
        ),
        None => "none (no IPv6 address that reaches the portal's)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = [
            ["A".to_string(), "LONG HEADER".to_string()],
            ["longer".to_string(), "x".to_string()],
        ];
        assert_eq!(table(&rows), "A       LONG HEADER\nlonger  x\n");
    }

    #[test]
    fn durations_and_clocks_read_well() {
        assert_eq!(human_duration(59), "59 s");
        assert_eq!(human_duration(61), "1 min 1 s");
        assert_eq!(human_duration(7260), "2 h 1 min");
        assert_eq!(clock(86_400 + 3661), "01:01:01");
    }
}
