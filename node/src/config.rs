//! The node's configuration: a TOML file, then environment, then flags, parsed raw and
//! validated into [`Config`] before any port is bound. A bad value is a [`ConfigError`]
//! naming the field; the binary exits with status 64 on it, and systemd does not restart
//! a node that cannot start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capture::TestPatternConfig;
use serde::Deserialize;

use crate::hub::HubConfig;
use crate::rtmp::url::RtmpUrl;

/// Flags of `astral node`. Each may also come from the environment (`ASTRAL_…`) and
/// overrides the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML config file [default: /etc/astral/node.toml when it exists]
    #[arg(long, env = "ASTRAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's name, shown to peers and on the portal
    #[arg(long, env = "ASTRAL_NAME")]
    pub name: Option<String>,
    /// ReST API and HTTP-FLV address [default: 127.0.0.1:8000]
    #[arg(long, env = "ASTRAL_API")]
    pub api: Option<SocketAddr>,
    /// RTMP address [default: 0.0.0.0:1935]
    #[arg(long, env = "ASTRAL_RTMP")]
    pub rtmp: Option<SocketAddr>,
    /// Portal URL (used by the overlay)
    #[arg(long, env = "ASTRAL_PORTAL")]
    pub portal: Option<String>,
    /// Upload budget in kbit/s
    #[arg(long, env = "ASTRAL_UPLOAD_KBPS")]
    pub upload_kbps: Option<u32>,
    /// Most forwards of one stream to other boxes
    #[arg(long, env = "ASTRAL_MAX_FORWARDS")]
    pub max_forwards: Option<u32>,
    /// State directory [default: /var/lib/astral]
    #[arg(long, env = "ASTRAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Publish from a local source: `test-pattern` or `v4l2:/dev/videoN`
    #[arg(long, env = "ASTRAL_SOURCE")]
    pub source: Option<String>,
    /// Stream name the local source publishes as [default: the node's name]
    #[arg(long)]
    pub source_stream: Option<String>,
    /// Test-pattern size, WIDTHxHEIGHT [default: 1280x720]
    #[arg(long)]
    pub size: Option<String>,
    /// Test-pattern frame rate [default: 30]
    #[arg(long)]
    pub fps: Option<u32>,
    /// Test-pattern video bitrate [default: 2500]
    #[arg(long)]
    pub bitrate_kbps: Option<u32>,
    /// Relay a stream: rtmp://HOST[:PORT]/APP/STREAM. Repeat for fallbacks of the same
    /// stream, tried in order when the current upstream fails.
    #[arg(long = "pull", value_name = "URL")]
    pub pull: Vec<String>,
    /// An upstream silent for this long counts as dead [default: 1000]
    #[arg(long)]
    pub stall_timeout_ms: Option<u64>,
}

/// The config file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<String>,
    api: Option<SocketAddr>,
    rtmp: Option<SocketAddr>,
    portal: Option<String>,
    upload_kbps: Option<u32>,
    max_forwards: Option<u32>,
    data_dir: Option<PathBuf>,
    source: Option<String>,
    source_stream: Option<String>,
    #[serde(default)]
    test_pattern: RawTestPattern,
    #[serde(default)]
    streams: BTreeMap<String, RawStream>,
    #[serde(default)]
    pull: Vec<RawPull>,
    #[serde(default)]
    hub: RawHub,
    #[serde(default)]
    relay: RawRelay,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTestPattern {
    size: Option<String>,
    fps: Option<u32>,
    bitrate_kbps: Option<u32>,
    keyframe_interval_frames: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPull {
    stream: Option<String>,
    upstreams: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    queue_len: Option<usize>,
    lag_timeout_ms: Option<u64>,
    max_gop_tags: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    stall_timeout_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub api: SocketAddr,
    pub rtmp: SocketAddr,
    pub portal: Option<String>,
    pub upload_kbps: Option<u32>,
    pub max_forwards: u32,
    pub data_dir: PathBuf,
    pub source: Option<SourceConfig>,
    /// Publish keys by stream name.
    pub stream_keys: BTreeMap<String, String>,
    pub pulls: Vec<PullConfig>,
    pub hub: HubConfig,
    pub stall_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub stream: String,
    pub kind: SourceKind,
}

#[derive(Debug, Clone)]
pub enum SourceKind {
    TestPattern(TestPatternConfig),
}

#[derive(Debug, Clone)]
pub struct PullConfig {
    pub stream: String,
    pub upstreams: Vec<RtmpUrl>,
}

const DEFAULT_CONFIG: &str = "/etc/astral/node.toml";

impl Config {
    /// Loads the file named by `args.config` (or the default file if it exists), then
    /// applies the flags, then validates.
    pub fn load(args: &NodeArgs) -> Result<Config, ConfigError> {
        let raw = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => RawConfig::default(),
        };
        Config::from_raw(raw, args)
    }

    /// Validates a config given as TOML text (for tests and the API).
    pub fn from_toml(text: &str, args: &NodeArgs) -> Result<Config, ConfigError> {
        let raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })?;
        Config::from_raw(raw, args)
    }

    fn from_raw(raw: RawConfig, args: &NodeArgs) -> Result<Config, ConfigError> {
        let name = args
            .name
            .clone()
            .or(raw.name)
            .unwrap_or_else(|| "astral".into());
        validate_name("name", &name)?;

        let max_forwards = args.max_forwards.or(raw.max_forwards).unwrap_or(2);
        if !(0..=16).contains(&max_forwards) {
            return Err(invalid("max_forwards", "must be between 0 and 16"));
        }
        let upload_kbps = args.upload_kbps.or(raw.upload_kbps);
        if upload_kbps == Some(0) {
            return Err(invalid(
                "upload_kbps",
                "must be above 0 (omit it for no limit)",
            ));
        }

        let mut stream_keys = BTreeMap::new();
        for (stream, s) in raw.streams {
            validate_name(&format!("streams.{stream}"), &stream)?;
            if s.key.len() < 8 || s.key.contains(['&', '?', '/', ' ']) {
                return Err(invalid(
                    format!("streams.{stream}.key"),
                    "must be at least 8 characters, without '&', '?', '/' or spaces",
                ));
            }
            stream_keys.insert(stream, s.key);
        }

        let source = match args.source.clone().or(raw.source) {
            None => None,
            Some(spec) => {
                let stream = args
                    .source_stream
                    .clone()
                    .or(raw.source_stream)
                    .unwrap_or_else(|| name.clone());
                validate_name("source_stream", &stream)?;
                let kind = if spec == "test-pattern" {
                    let tp = &raw.test_pattern;
                    let mut cfg = TestPatternConfig::default();
                    if let Some(size) = args.size.as_ref().or(tp.size.as_ref()) {
                        (cfg.width, cfg.height) = parse_size(size)?;
                    }
                    cfg.fps = args.fps.or(tp.fps).unwrap_or(cfg.fps);
                    cfg.bitrate_kbps = args
                        .bitrate_kbps
                        .or(tp.bitrate_kbps)
                        .unwrap_or(cfg.bitrate_kbps);
                    cfg.keyframe_interval_frames =
                        tp.keyframe_interval_frames.unwrap_or(cfg.fps * 2);
                    cfg.validate()
                        .map_err(|e| invalid("test_pattern", e.to_string()))?;
                    SourceKind::TestPattern(cfg)
                } else if spec.starts_with("v4l2:") {
                    return Err(invalid(
                        "source",
                        "this build has no V4L2 capture yet; use test-pattern",
                    ));
                } else {
                    return Err(invalid(
                        "source",
                        format!("{spec:?} is not a source; use test-pattern or v4l2:/dev/videoN"),
                    ));
                };
                Some(SourceConfig { stream, kind })
            }
        };

        let mut pulls = Vec::new();
        for (i, p) in raw.pull.into_iter().enumerate() {
            pulls.push(pull_config(&format!("pull[{i}]"), p.stream, &p.upstreams)?);
        }
        if !args.pull.is_empty() {
            pulls.push(pull_config("--pull", None, &args.pull)?);
        }
        for (i, p) in pulls.iter().enumerate() {
            if pulls[..i].iter().any(|q| q.stream == p.stream)
                || source.as_ref().is_some_and(|s| s.stream == p.stream)
            {
                return Err(invalid(
                    "pull",
                    format!("stream {:?} has two feeds", p.stream),
                ));
            }
        }

        let defaults = HubConfig::default();
        let hub = HubConfig {
            queue_len: raw.hub.queue_len.unwrap_or(defaults.queue_len),
            lag_timeout: raw
                .hub
                .lag_timeout_ms
                .map_or(defaults.lag_timeout, Duration::from_millis),
            max_gop_tags: raw.hub.max_gop_tags.unwrap_or(defaults.max_gop_tags),
        };
        if !(8..=65_536).contains(&hub.queue_len) {
            return Err(invalid(
                "hub.queue_len",
                "must be between 8 and 65536 packets",
            ));
        }
        if hub.lag_timeout < Duration::from_millis(100) {
            return Err(invalid("hub.lag_timeout_ms", "must be at least 100"));
        }
        if hub.max_gop_tags < 16 {
            return Err(invalid("hub.max_gop_tags", "must be at least 16"));
        }

        let stall_ms = args
            .stall_timeout_ms
            .or(raw.relay.stall_timeout_ms)
            .unwrap_or(1000);
        if !(100..=60_000).contains(&stall_ms) {
            return Err(invalid(
                "relay.stall_timeout_ms",
                "must be between 100 and 60000",
            ));
        }

        Ok(Config {
            name,
            api: args
                .api
                .or(raw.api)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000))),
            rtmp: args
                .rtmp
                .or(raw.rtmp)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1935))),
            portal: args.portal.clone().or(raw.portal),
            upload_kbps,
            max_forwards,
            data_dir: args
                .data_dir
                .clone()
                .or(raw.data_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/astral")),
            source,
            stream_keys,
            pulls,
            hub,
            stall_timeout: Duration::from_millis(stall_ms),
        })
    }
}

fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Stream and node names travel in URLs and RTMP commands: keep them plain.
pub fn validate_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} must be 1-64 characters of A-Z a-z 0-9 - _ . (not starting with .)"),
        ))
    }
}

fn parse_size(size: &str) -> Result<(u32, u32), ConfigError> {
    size.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .ok_or_else(|| {
            invalid(
                "size",
                format!("{size:?} is not WIDTHxHEIGHT, e.g. 1280x720"),
            )
        })
}

fn pull_config(
    field: &str,
    stream: Option<String>,
    urls: &[String],
) -> Result<PullConfig, ConfigError> {
    if urls.is_empty() {
        return Err(invalid(field, "needs at least one upstream URL"));
    }
    let upstreams = urls
        .iter()
        .map(|u| RtmpUrl::parse(u).map_err(|e| invalid(field, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let stream = stream.unwrap_or_else(|| upstreams[0].stream_name().to_owned());
    validate_name(field, &stream)?;
    Ok(PullConfig { stream, upstreams })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &NodeArgs::default())
    }

    #[test]
    fn defaults_are_a_plain_node() {
        let config = load("").unwrap();
        assert_eq!(config.api.to_string(), "127.0.0.1:8000");
        assert_eq!(config.rtmp.port(), 1935);
        assert!(config.source.is_none() && config.pulls.is_empty());
        assert_eq!(config.stall_timeout, Duration::from_secs(1));
    }

    #[test]
    fn flags_override_the_file() {
        let args = NodeArgs {
            name: Some("flag".into()),
            ..NodeArgs::default()
        };
        let config = Config::from_toml("name = \"file\"", &args).unwrap();
        assert_eq!(config.name, "flag");
    }

    #[test]
    fn pull_stream_name_comes_from_the_url() {
        let args = NodeArgs {
            pull: vec![
                "rtmp://10.0.0.1/live/cam".into(),
                "rtmp://10.0.0.2:1936/live/cam".into(),
            ],
            ..NodeArgs::default()
        };
        let config = Config::from_toml("", &args).unwrap();
        assert_eq!(config.pulls[0].stream, "cam");
        assert_eq!(config.pulls[0].upstreams.len(), 2);
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            ("name = \"a b\"", "name"),
            ("max_forwards = 99", "max_forwards"),
            ("[streams.cam]\nkey = \"short\"", "streams.cam.key"),
            ("source = \"webcam\"", "source"),
            ("[hub]\nqueue_len = 1", "hub.queue_len"),
            ("[relay]\nstall_timeout_ms = 5", "relay.stall_timeout_ms"),
            ("[[pull]]\nupstreams = [\"http://x/live/a\"]", "pull[0]"),
        ] {
            match load(text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected an error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(matches!(
            load("nmae = \"x\""),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn two_feeds_for_one_stream_are_refused() {
        let text = "source = \"test-pattern\"\nsource_stream = \"cam\"\n[[pull]]\nupstreams = [\"rtmp://h/live/cam\"]";
        assert!(matches!(load(text), Err(ConfigError::Invalid { .. })));
    }
}
