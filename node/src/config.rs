//! The node's configuration: a TOML file, then environment, then flags, parsed raw and
//! validated into [`Config`] before any port is bound. A bad value is a [`ConfigError`]
//! naming the field; the binary exits with status 64 on it, and systemd does not restart
//! a node that cannot start.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use capture::TestPatternConfig;
use serde::Deserialize;

use crate::hub::HubConfig;
use crate::rtmp::url::RtmpUrl;
use crate::settings::Settings;

/// Flags of `astral node`. Each may also come from the environment (`ASTRAL_…`) and
/// overrides the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML config file [default: /etc/astral/node.toml when it exists]
    #[arg(long, env = "ASTRAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's name, shown on the portal's map (its id comes from its key)
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
    /// Publish from a local source: `test-pattern`, with `:clock` (the wall clock
    /// burned in, for glass-to-glass latency), `:noise` (as heavy as its bitrate) or
    /// `:clock,noise`; or `v4l2:/dev/videoN`
    #[arg(long, env = "ASTRAL_SOURCE")]
    pub source: Option<String>,
    /// Stream name the local source publishes as [default: the node's name]
    #[arg(long)]
    pub source_stream: Option<String>,
    /// Video size of the local source, WIDTHxHEIGHT [default: 1280x720]
    #[arg(long)]
    pub size: Option<String>,
    /// Frame rate of the local source [default: 30]
    #[arg(long)]
    pub fps: Option<u32>,
    /// Video bitrate of the local source in kbit/s [default: 2500]
    #[arg(long)]
    pub bitrate_kbps: Option<u32>,
    /// H.264 encoder: auto (hardware first), h264_v4l2m2m, h264_vaapi or libx264
    /// [default: auto]
    #[arg(long)]
    pub encoder: Option<String>,
    /// Sound with the local source, from this ALSA device (`default`, `hw:1,0`, …)
    #[arg(long, value_name = "ALSA_DEVICE")]
    pub audio: Option<String>,
    /// Relay a stream: rtmp://HOST[:PORT]/APP/STREAM. Repeat for fallbacks of the same
    /// stream, tried in order when the current upstream fails.
    #[arg(long = "pull", value_name = "URL")]
    pub pull: Vec<String>,
    /// An upstream silent for this long counts as dead [default: 1000]
    #[arg(long)]
    pub stall_timeout_ms: Option<u64>,
    /// Keep a hot-standby parent with a free slot, outside the parent's subtree:
    /// `full` plays from it too, so that the parent's failure loses nothing and waits
    /// for nothing; `idle` only holds its slot and plays from it once the parent
    /// stalls [default: off; `relay.standby`; the flag alone: full]
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "full")]
    pub standby: Option<Standby>,
    /// A supernode's API address (HOST:PORT), tried before the portal's list. Repeat
    /// for more.
    #[arg(long = "supernode", value_name = "ADDR")]
    pub supernodes: Vec<SocketAddr>,
    /// The IP address other boxes reach this one at [default: the API's address, or,
    /// when that is 0.0.0.0, the address this box reaches the portal from]
    #[arg(long, env = "ASTRAL_ADVERTISE")]
    pub advertise: Option<IpAddr>,
    /// Ask the home router to forward this box's ports (UPnP, PCP, NAT-PMP) when the
    /// portal cannot reach it [default: true]
    #[arg(long, env = "ASTRAL_PORT_MAPPING")]
    pub port_mapping: Option<bool>,
    /// When boxes beyond the router cannot connect to this one, still forward to
    /// those that can, by connecting to them (connection reversal) [default: true]
    #[arg(long, env = "ASTRAL_REVERSAL")]
    pub reversal: Option<bool>,
    /// Use this box's own IPv6 address, when it has one the portal answers on, to
    /// connect directly to boxes that have IPv6 too [default: true]
    #[arg(long, env = "ASTRAL_IPV6")]
    pub ipv6: Option<bool>,
    /// Players from this network (CIDR) play without a ticket. Repeat for more
    /// [default: 127.0.0.0/8 and ::1, the box itself]
    #[arg(long = "play-without-ticket", value_name = "CIDR")]
    pub play_without_ticket: Vec<String>,
    /// Most boxes this node registers when it is a supernode [default: 100]
    #[arg(long)]
    pub supernode_max_children: Option<usize>,
    /// Title of the local source's stream in the portal's directory
    #[arg(long)]
    pub title: Option<String>,
}

/// The config file as written, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
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
    video: RawVideo,
    #[serde(default)]
    streams: BTreeMap<String, RawStream>,
    #[serde(default)]
    pull: Vec<RawPull>,
    #[serde(default)]
    hub: RawHub,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    supernodes: Vec<SocketAddr>,
    advertise: Option<IpAddr>,
    port_mapping: Option<bool>,
    reversal: Option<bool>,
    ipv6: Option<bool>,
    play_without_ticket: Option<Vec<String>>,
    #[serde(default)]
    overlay: RawOverlay,
    gpio: Option<RawGpio>,
    audio: Option<RawAudio>,
    title: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverlay {
    supernode_max_children: Option<usize>,
    search_ttl: Option<u8>,
}

/// The local source's sound.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudio {
    device: Option<String>,
    bitrate_kbps: Option<u32>,
    channels: Option<u16>,
}

/// The box's button and tally LED.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpio {
    chip: Option<PathBuf>,
    button: Option<u32>,
    led: Option<u32>,
    button_active_low: Option<bool>,
}

/// The local source's video, whatever the source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVideo {
    size: Option<String>,
    fps: Option<u32>,
    bitrate_kbps: Option<u32>,
    keyframe_interval_frames: Option<u32>,
    encoder: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPull {
    stream: Option<String>,
    upstreams: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    queue_len: Option<usize>,
    lag_timeout_ms: Option<u64>,
    max_gop_tags: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    stall_timeout_ms: Option<u64>,
    view_idle_secs: Option<u64>,
    standby: Option<RawStandby>,
}

/// `relay.standby`: `true`, `false`, or a mode by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawStandby {
    On(bool),
    Mode(String),
}

/// How a box keeps its hot-standby parent (`relay.standby`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Standby {
    /// No standby: a failed parent is repaired by a claim or a search.
    #[default]
    Off,
    /// Both parents send the stream, and the hub keeps the first copy of each frame:
    /// the stream's bitrate again on the downlink, and a free slot's upload at the
    /// standby parent.
    Full,
    /// The standby parent holds a slot and sends nothing; once the parent stalls, the
    /// box plays from it, resuming after its newest frame.
    Idle,
}

impl RawStandby {
    fn mode(&self) -> Result<Standby, ConfigError> {
        match self {
            RawStandby::On(false) => Ok(Standby::Off),
            RawStandby::On(true) => Ok(Standby::Full),
            RawStandby::Mode(m) => <Standby as clap::ValueEnum>::from_str(m, false)
                .map_err(|_| invalid("relay.standby", "must be off, full, idle, true or false")),
        }
    }
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

/// `test-pattern`, or `test-pattern:` with `clock` (the wall clock burned in),
/// `noise` (a picture as costly as its bitrate) or both, comma-separated: whether
/// each is on, or `None` for a spec that is not a test pattern.
fn pattern_options(spec: &str) -> Option<(bool, bool)> {
    let options = match spec.strip_prefix("test-pattern")? {
        "" => return Some((false, false)),
        rest => rest.strip_prefix(':')?,
    };
    let (mut clock, mut noise) = (false, false);
    for option in options.split(',') {
        match option {
            "clock" if !clock => clock = true,
            "noise" if !noise => noise = true,
            _ => return None,
        }
    }
    Some((clock, noise))
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
    pub standby: Standby,
    /// A stream relayed because a player here asked (`Role::View`) is dropped once no
    /// one here has played it for this long.
    pub view_idle: Duration,
    /// Supernodes to try before the portal's list.
    pub supernodes: Vec<SocketAddr>,
    pub advertise: Option<IpAddr>,
    /// Whether the box asks its router to forward its ports when it must.
    pub port_mapping: bool,
    /// Whether a box that cannot be connected to forwards to boxes that can, by
    /// connecting to them.
    pub reversal: bool,
    /// Whether the box uses its own IPv6 address, when it has one.
    pub ipv6: bool,
    /// Networks whose players need no ticket.
    pub play_without_ticket: Vec<Cidr>,
    pub overlay: overlay::Config,
    /// The button and tally LED, when wired.
    pub panel: Option<crate::panel::PanelConfig>,
    /// The remote settings this config includes.
    pub settings: Settings,
    written: Arc<Written>,
}

/// What the operator wrote (node.toml, environment, flags), kept so that a settings
/// change is validated exactly as a start would be.
#[derive(Debug)]
struct Written {
    raw: RawConfig,
    args: NodeArgs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub stream: String,
    /// As configured: `test-pattern`, `test-pattern:clock` or `v4l2:/dev/videoN`.
    pub spec: String,
    pub kind: SourceKind,
    /// Sound, when configured.
    pub audio: Option<capture::MicrophoneConfig>,
    /// How the portal's directory shows the stream.
    pub title: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    TestPattern(TestPatternConfig),
    Camera(capture::CameraConfig),
}

impl SourceKind {
    /// The video it makes.
    pub fn video(&self) -> &capture::VideoConfig {
        match self {
            SourceKind::TestPattern(p) => &p.video,
            SourceKind::Camera(c) => &c.video,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PullConfig {
    pub stream: String,
    pub upstreams: Vec<RtmpUrl>,
}

const DEFAULT_CONFIG: &str = "/etc/astral/node.toml";

impl Config {
    /// Loads the file named by `args.config` (or the default file if it exists), then
    /// applies the flags, then the remote settings saved in the data directory, then
    /// validates.
    pub fn load(args: &NodeArgs) -> Result<Config, ConfigError> {
        let raw = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => RawConfig::default(),
        };
        let written = Arc::new(Written {
            raw,
            args: args.clone(),
        });
        let settings = Settings::load(&data_dir(&written.raw, &written.args))?;
        Config::from_parts(written, settings)
    }

    /// Validates a config given as TOML text, without remote settings (for tests).
    pub fn from_toml(text: &str, args: &NodeArgs) -> Result<Config, ConfigError> {
        let raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })?;
        let written = Arc::new(Written {
            raw,
            args: args.clone(),
        });
        Config::from_parts(written, Settings::default())
    }

    /// What the box offers the overlay: most forwards of a stream, and its upload
    /// budget in kbit/s (none set: no limit).
    pub fn capacity(&self) -> (u8, u32) {
        (
            self.max_forwards.min(u32::from(u8::MAX)) as u8,
            self.upload_kbps.unwrap_or(u32::MAX),
        )
    }

    /// This config with other remote settings, validated as at a start.
    pub fn with_settings(&self, settings: Settings) -> Result<Config, ConfigError> {
        Config::from_parts(Arc::clone(&self.written), settings)
    }

    fn from_parts(written: Arc<Written>, settings: Settings) -> Result<Config, ConfigError> {
        let (raw, args, set) = (written.raw.clone(), &written.args, &settings);
        let name = args
            .name
            .clone()
            .or(raw.name)
            .unwrap_or_else(|| "astral".into());
        validate_name("name", &name)?;

        let max_forwards = set
            .max_forwards
            .or(args.max_forwards)
            .or(raw.max_forwards)
            .unwrap_or(2);
        if !(0..=16).contains(&max_forwards) {
            return Err(invalid("max_forwards", "must be between 0 and 16"));
        }
        let upload_kbps = set.upload_kbps.or(args.upload_kbps).or(raw.upload_kbps);
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

        let spec = set.source.clone().or(args.source.clone()).or(raw.source);
        let source = match spec.filter(|s| s != "none") {
            None => None,
            Some(spec) => {
                let stream = args
                    .source_stream
                    .clone()
                    .or(raw.source_stream)
                    .unwrap_or_else(|| name.clone());
                validate_name("source_stream", &stream)?;
                let video = &raw.video;
                let size = set
                    .size
                    .as_ref()
                    .or(args.size.as_ref())
                    .or(video.size.as_ref());
                let fps = set.fps.or(args.fps).or(video.fps);
                let bitrate_kbps = set
                    .bitrate_kbps
                    .or(args.bitrate_kbps)
                    .or(video.bitrate_kbps);
                let encoder = set
                    .encoder
                    .clone()
                    .or(args.encoder.clone())
                    .or(video.encoder.clone())
                    .unwrap_or_else(|| "auto".into());
                // The video settings, checked once for any source.
                let video_config = {
                    let defaults = capture::VideoConfig::default();
                    let (width, height) = match size {
                        Some(size) => parse_size(size)?,
                        None => (defaults.width, defaults.height),
                    };
                    let fps = fps.unwrap_or(defaults.fps);
                    let v = capture::VideoConfig {
                        width,
                        height,
                        fps,
                        bitrate_kbps: bitrate_kbps.unwrap_or(defaults.bitrate_kbps),
                        keyframe_interval_frames: video.keyframe_interval_frames.unwrap_or(fps * 2),
                        encoder,
                    };
                    v.validate().map_err(|e| match e {
                        capture::CaptureError::InvalidConfig { field, message } => {
                            let field = match field {
                                "width" | "height" => "size",
                                "keyframe_interval_frames" => "video.keyframe_interval_frames",
                                other => other,
                            };
                            invalid(field, message)
                        }
                        e => invalid("video", e.to_string()),
                    })?;
                    v
                };
                let kind = if let Some((clock, noise)) = pattern_options(&spec) {
                    SourceKind::TestPattern(TestPatternConfig {
                        video: video_config,
                        realtime: true,
                        clock,
                        noise,
                    })
                } else if let Some(device) = spec.strip_prefix("v4l2:") {
                    if !device.starts_with('/') {
                        return Err(invalid(
                            "source",
                            format!("{spec:?}: name the camera's device, as in v4l2:/dev/video0"),
                        ));
                    }
                    SourceKind::Camera(capture::CameraConfig {
                        device: PathBuf::from(device),
                        video: video_config,
                    })
                } else {
                    return Err(invalid(
                        "source",
                        format!(
                            "{spec:?} is not a source; use test-pattern (or test-pattern:clock, \
                             test-pattern:noise, test-pattern:clock,noise) or v4l2:/dev/videoN"
                        ),
                    ));
                };
                let title = set
                    .title
                    .clone()
                    .or(args.title.clone())
                    .or(raw.title)
                    .unwrap_or_else(|| stream.clone());
                let description = set
                    .description
                    .clone()
                    .or(raw.description)
                    .unwrap_or_default();
                let listing = proto::portal::StreamUpdate {
                    title,
                    description,
                    source: placeholder_peer(),
                    bitrate_kbps: 0,
                    width: 0,
                    height: 0,
                };
                listing.check().map_err(|e| invalid("title", e))?;
                let raw_audio = raw.audio.clone().unwrap_or_default();
                let audio = match args.audio.clone().or(raw_audio.device) {
                    None => None,
                    Some(device) if device.is_empty() || device.contains(char::is_whitespace) => {
                        return Err(invalid(
                            "audio.device",
                            "must be an ALSA device name, as arecord -L lists them",
                        ));
                    }
                    Some(device) => {
                        let bitrate_kbps = raw_audio.bitrate_kbps.unwrap_or(96);
                        if !(16..=512).contains(&bitrate_kbps) {
                            return Err(invalid("audio.bitrate_kbps", "must be 16 to 512"));
                        }
                        let channels = raw_audio.channels.unwrap_or(1);
                        if !(1..=2).contains(&channels) {
                            return Err(invalid("audio.channels", "must be 1 or 2"));
                        }
                        Some(capture::MicrophoneConfig {
                            device,
                            bitrate_kbps,
                            channels,
                        })
                    }
                };
                Some(SourceConfig {
                    stream,
                    spec,
                    kind,
                    audio,
                    title: listing.title,
                    description: listing.description,
                })
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

        let view_idle_secs = raw.relay.view_idle_secs.unwrap_or(60);
        if !(5..=86_400).contains(&view_idle_secs) {
            return Err(invalid(
                "relay.view_idle_secs",
                "must be between 5 and 86400",
            ));
        }

        let play_without_ticket = match (&args.play_without_ticket[..], raw.play_without_ticket) {
            ([], None) => vec![Cidr::LOOPBACK_V4, Cidr::LOOPBACK_V6],
            ([], Some(list)) => parse_cidrs("play_without_ticket", &list)?,
            (flags, _) => parse_cidrs("--play-without-ticket", flags)?,
        };
        let standby = match (args.standby, &raw.relay.standby) {
            (Some(mode), _) => mode,
            (None, Some(raw)) => raw.mode()?,
            (None, None) => Standby::Off,
        };
        let mut overlay = overlay::Config {
            standby: standby != Standby::Off,
            ..overlay::Config::default()
        };
        if let Some(n) = args
            .supernode_max_children
            .or(raw.overlay.supernode_max_children)
        {
            if !(1..=10_000).contains(&n) {
                return Err(invalid(
                    "overlay.supernode_max_children",
                    "must be between 1 and 10000",
                ));
            }
            overlay.max_children = n;
        }
        if let Some(ttl) = raw.overlay.search_ttl {
            if ttl > overlay.max_search_ttl {
                return Err(invalid(
                    "overlay.search_ttl",
                    format!("must be at most {}", overlay.max_search_ttl),
                ));
            }
            overlay.search_ttl = ttl;
        }
        let panel = match raw.gpio.clone() {
            Some(g) if g.button.is_some() || g.led.is_some() => {
                if g.button.is_some() && g.button == g.led {
                    return Err(invalid("gpio.led", "is the button's line too"));
                }
                Some(crate::panel::PanelConfig {
                    chip: g.chip.unwrap_or_else(|| PathBuf::from("/dev/gpiochip0")),
                    button: g.button,
                    led: g.led,
                    button_active_low: g.button_active_low.unwrap_or(true),
                })
            }
            _ => None,
        };
        let mut supernodes = args.supernodes.clone();
        supernodes.extend(raw.supernodes);
        let portal = args.portal.clone().or(raw.portal);
        if let Some(portal) = &portal {
            validate_portal(portal)?;
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
            portal,
            upload_kbps,
            max_forwards,
            data_dir: data_dir(&written.raw, args),
            source,
            stream_keys,
            pulls,
            hub,
            stall_timeout: Duration::from_millis(stall_ms),
            standby,
            view_idle: Duration::from_secs(view_idle_secs),
            supernodes,
            advertise: args.advertise.or(raw.advertise),
            port_mapping: args.port_mapping.or(raw.port_mapping).unwrap_or(true),
            reversal: args.reversal.or(raw.reversal).unwrap_or(true),
            ipv6: args.ipv6.or(raw.ipv6).unwrap_or(true),
            play_without_ticket,
            overlay,
            panel,
            settings,
            written,
        })
    }
}

fn data_dir(raw: &RawConfig, args: &NodeArgs) -> PathBuf {
    args.data_dir
        .clone()
        .or(raw.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/var/lib/astral"))
}

/// A network, `ADDR/BITS`: who may play without a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Cidr {
    pub const LOOPBACK_V4: Cidr = Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
        bits: 8,
    };
    pub const LOOPBACK_V6: Cidr = Cidr {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        bits: 128,
    };

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let prefix =
            |bits: u32, width: u32, a: u128, b: u128| bits == 0 || (a ^ b) >> (width - bits) == 0;
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix(
                self.bits.into(),
                32,
                u32::from(net).into(),
                u32::from(ip).into(),
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix(self.bits.into(), 128, u128::from(net), u128::from(ip))
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not ADDRESS/BITS, e.g. 192.168.1.0/24"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => width,
            Some(b) => b
                .parse()
                .ok()
                .filter(|b| *b <= width)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {width}"))?,
        };
        Ok(Cidr { addr, bits })
    }
}

fn parse_cidrs(field: &str, list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .map(|c| c.parse().map_err(|e: String| invalid(field, e)))
        .collect()
}

/// A stand-in for the node's own address while the config is checked; the directory
/// fills in the real one.
fn placeholder_peer() -> proto::overlay::Peer {
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    let id = proto::overlay::NodeId::new("config").expect("a valid id");
    proto::overlay::Peer::new(id, any, any)
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

/// The portal is spoken to over plain HTTP (TLS belongs to a proxy in front of it).
fn validate_portal(portal: &str) -> Result<(), ConfigError> {
    match url::Url::parse(portal) {
        Ok(url) if url.scheme() == "http" && url.host().is_some() => Ok(()),
        Ok(_) => Err(invalid(
            "portal",
            format!("{portal:?} must be an http:// URL, as in http://portal.example:8080"),
        )),
        Err(e) => Err(invalid(
            "portal",
            format!("{portal:?} is not a URL ({e}); write it as http://portal.example:8080"),
        )),
    }
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
    fn the_packaged_config_is_valid() {
        let text = include_str!("../../packaging/node.toml");
        let config = Config::from_toml(text, &NodeArgs::default()).unwrap();
        let source = config.source.expect("a camera");
        assert_eq!(source.spec, "v4l2:/dev/video0");
        assert_eq!(source.kind.video().encoder, "auto");
        assert_eq!((config.max_forwards, config.upload_kbps), (2, Some(5000)));
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
    fn standby_by_flag_or_by_name() {
        for (text, mode) in [
            ("", Standby::Off),
            ("[relay]\nstandby = true", Standby::Full),
            ("[relay]\nstandby = false", Standby::Off),
            ("[relay]\nstandby = \"idle\"", Standby::Idle),
            ("[relay]\nstandby = \"full\"", Standby::Full),
        ] {
            let config = load(text).unwrap();
            assert_eq!(config.standby, mode, "{text}");
            assert_eq!(config.overlay.standby, mode != Standby::Off, "{text}");
        }
        let args = NodeArgs {
            standby: Some(Standby::Idle),
            ..NodeArgs::default()
        };
        let config = Config::from_toml("[relay]\nstandby = true", &args).unwrap();
        assert_eq!(config.standby, Standby::Idle, "the flag wins");
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
            ("[relay]\nview_idle_secs = 1", "relay.view_idle_secs"),
            ("[relay]\nstandby = \"warm\"", "relay.standby"),
            ("[[pull]]\nupstreams = [\"http://x/live/a\"]", "pull[0]"),
        ] {
            match load(text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected an error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn networks_without_tickets() {
        let config = load("").unwrap();
        let local = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            config.play_without_ticket.iter().any(|c| c.contains(ip))
        };
        assert!(local("127.0.0.1") && local("127.9.9.9") && local("::1"));
        assert!(local("::ffff:127.0.0.1"));
        assert!(!local("192.168.1.5") && !local("::2"));
        let lan: Cidr = "192.168.1.0/24".parse().unwrap();
        assert!(lan.contains("192.168.1.200".parse().unwrap()));
        assert!(!lan.contains("192.168.2.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["192.168.1.0/33", "lan", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert!(matches!(
            load("play_without_ticket = [\"10.0.0.0/99\"]"),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(matches!(
            load("nmae = \"x\""),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn the_test_pattern_shows_the_clock_and_noise_only_when_asked() {
        for (spec, clock, noise) in [
            ("test-pattern", false, false),
            ("test-pattern:clock", true, false),
            ("test-pattern:noise", false, true),
            ("test-pattern:clock,noise", true, true),
            ("test-pattern:noise,clock", true, true),
        ] {
            let config = load(&format!("source = {spec:?}")).unwrap();
            let source = config.source.expect("a source");
            match &source.kind {
                SourceKind::TestPattern(pattern) => {
                    assert_eq!((pattern.clock, pattern.noise), (clock, noise), "{spec}")
                }
                other => panic!("{spec}: expected the test pattern, got {other:?}"),
            }
            // Shown back (GET /config) as written.
            assert_eq!(source.spec, spec);
        }
        for bad in [
            "test-pattern:clok",
            "test-pattern:clock,clock",
            "test-pattern:",
            "test-patterns",
        ] {
            match load(&format!("source = {bad:?}")) {
                Err(ConfigError::Invalid { field, message }) => {
                    assert_eq!(field, "source");
                    assert!(message.contains("test-pattern:clock"), "{message}");
                }
                other => panic!("{bad}: expected an error on source, got {other:?}"),
            }
        }
    }

    #[test]
    fn two_feeds_for_one_stream_are_refused() {
        let text = "source = \"test-pattern\"\nsource_stream = \"cam\"\n[[pull]]\nupstreams = [\"rtmp://h/live/cam\"]";
        assert!(matches!(load(text), Err(ConfigError::Invalid { .. })));
    }
}
