//! Settings changed remotely: `PATCH /config` on the API and `astral config set` on
//! the CLI. They live in `settings.toml` in the data directory, written whole (write,
//! fsync, rename), and take precedence over node.toml, the environment and the
//! flags, since they are the owner's latest word. A setting set to `null` goes back
//! to what node.toml and the flags say.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Config, ConfigError};

/// The settings file's name in the data directory.
pub const SETTINGS_FILE: &str = "settings.toml";

/// Every setting a remote owner may change; `None` leaves it to node.toml and flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `test-pattern`, `test-pattern:clock`, `v4l2:/dev/videoN`, or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// WIDTHxHEIGHT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    /// `auto` or an FFmpeg H.264 encoder's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_kbps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_forwards: Option<u32>,
}

/// The settings' names, as the API and the CLI spell them.
pub const KEYS: [&str; 9] = [
    "source",
    "size",
    "fps",
    "bitrate_kbps",
    "encoder",
    "title",
    "description",
    "upload_kbps",
    "max_forwards",
];

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SETTINGS_FILE)
}

impl Settings {
    /// The settings saved in `data_dir`, or none if there is no file.
    pub fn load(data_dir: &Path) -> Result<Settings, ConfigError> {
        let path = path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path,
            message: format!("{e} (fix or delete it: it holds the settings made remotely)"),
        })
    }

    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        let text = format!(
            "# Written by the node on PATCH /config (astral config set); overrides node.toml.\n{text}"
        );
        crate::files::write_atomic(&path(data_dir), text.as_bytes(), 0o644)
    }

    /// These settings with `patch` applied: a JSON object of settings, where `null`
    /// removes one. Numbers may come as strings, as the CLI sends them.
    pub fn patched(&self, patch: &Value) -> Result<Settings, ConfigError> {
        let Value::Object(patch) = patch else {
            return Err(ConfigError::Invalid {
                field: "config".into(),
                message: "send a JSON object of settings".into(),
            });
        };
        let mut merged = match serde_json::to_value(self).expect("settings serialize") {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        for (key, value) in patch {
            if !KEYS.contains(&key.as_str()) {
                return Err(ConfigError::Invalid {
                    field: key.clone(),
                    message: format!("is not a setting; the settings are {}", KEYS.join(", ")),
                });
            }
            match value {
                Value::Null => {
                    merged.remove(key);
                }
                value => {
                    merged.insert(key.clone(), typed(key, value)?);
                }
            }
        }
        Ok(serde_json::from_value(Value::Object(merged)).expect("every key checked"))
    }
}

/// `value` as the type `key` takes, or an error naming `key`.
fn typed(key: &str, value: &Value) -> Result<Value, ConfigError> {
    let numeric = matches!(key, "fps" | "bitrate_kbps" | "upload_kbps" | "max_forwards");
    let wrong = |expected: &str| ConfigError::Invalid {
        field: key.into(),
        message: format!("must be {expected}, not {value}"),
    };
    match (numeric, value) {
        (true, Value::Number(n)) => n
            .as_u64()
            .filter(|n| u32::try_from(*n).is_ok())
            .map(Value::from)
            .ok_or_else(|| wrong("a whole number")),
        (true, Value::String(s)) => s
            .trim()
            .parse::<u32>()
            .map(Value::from)
            .map_err(|_| wrong("a whole number")),
        (false, Value::String(_)) => Ok(value.clone()),
        (true, _) => Err(wrong("a whole number")),
        (false, _) => Err(wrong("a string")),
    }
}

/// The settings in force, as `GET /config` shows them, and which of them were set
/// remotely (the rest come from node.toml, the environment, flags or defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effective {
    pub source: String,
    pub size: Option<String>,
    pub fps: Option<u32>,
    pub bitrate_kbps: Option<u32>,
    pub encoder: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    /// `None`: no limit.
    pub upload_kbps: Option<u32>,
    pub max_forwards: u32,
    pub set_remotely: Vec<String>,
}

impl Effective {
    pub fn of(config: &Config) -> Effective {
        let source = config.source.as_ref();
        let video = source.map(|s| s.kind.video());
        let set_remotely = match serde_json::to_value(&config.settings) {
            Ok(Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        Effective {
            source: source.map_or_else(|| "none".into(), |s| s.spec.clone()),
            size: video.map(|v| format!("{}x{}", v.width, v.height)),
            fps: video.map(|v| v.fps),
            bitrate_kbps: video.map(|v| v.bitrate_kbps),
            encoder: video.map(|v| v.encoder.clone()),
            title: source.map(|s| s.title.clone()),
            description: source.map(|s| s.description.clone()),
            upload_kbps: config.upload_kbps,
            max_forwards: config.max_forwards,
            set_remotely,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_sets_and_clears_settings_and_names_bad_keys() {
        let base = Settings {
            fps: Some(25),
            title: Some("Garden".into()),
            ..Settings::default()
        };
        let patched = base
            .patched(&json!({"bitrate_kbps": "1800", "title": null, "size": "640x480"}))
            .unwrap();
        assert_eq!(
            patched,
            Settings {
                fps: Some(25),
                bitrate_kbps: Some(1800),
                size: Some("640x480".into()),
                ..Settings::default()
            }
        );
        for (patch, field) in [
            (json!({"fsp": 30}), "fsp"),
            (json!({"fps": "fast"}), "fps"),
            (json!({"fps": -1}), "fps"),
            (json!({"title": 3}), "title"),
            (json!([1]), "config"),
        ] {
            match base.patched(&patch) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{patch}"),
                other => panic!("{patch}: {other:?}"),
            }
        }
    }

    #[test]
    fn settings_survive_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), Settings::default());
        let settings = Settings {
            source: Some("test-pattern".into()),
            max_forwards: Some(1),
            description: Some("a \"quoted\" word".into()),
            ..Settings::default()
        };
        settings.save(dir.path()).unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), settings);
        std::fs::write(path(dir.path()), "fps = \"x\"").unwrap();
        assert!(matches!(
            Settings::load(dir.path()),
            Err(ConfigError::Parse { .. })
        ));
    }
}
