//! First-boot settings: a box flashed from the image is set up by editing
//! `astral.toml` on the card's boot partition (FAT, readable on any computer) before
//! its first boot. `astral firstboot` copies the settings into /etc/astral/node.toml,
//! keeping the file's comments, writes the Wi-Fi network for wpa_supplicant, and
//! renames the file to `astral.toml.applied` so it is applied once. Nothing is
//! written unless every setting is valid.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{Config, NodeArgs};
use crate::files::write_atomic;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FirstBoot {
    portal: Option<String>,
    name: Option<String>,
    title: Option<String>,
    source: Option<String>,
    advertise: Option<String>,
    video: Option<Video>,
    wifi: Option<Wifi>,
}

/// node.toml's `[video]`: a small board or a slow camera may need less than 720p30.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Video {
    size: Option<String>,
    fps: Option<i64>,
    bitrate_kbps: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wifi {
    ssid: String,
    /// None: an open network.
    password: Option<String>,
    /// ISO 3166 country code, for the radio's legal channels.
    country: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FirstBootArgs {
    /// The settings file on the boot partition
    #[arg(long, default_value = "/boot/firmware/astral.toml")]
    pub settings: PathBuf,
    /// The node's config file, updated in place
    #[arg(long, default_value = "/etc/astral/node.toml")]
    pub config: PathBuf,
    /// Where wpa_supplicant-wlan0.conf is written
    #[arg(long, default_value = "/etc/wpa_supplicant")]
    pub wifi_dir: PathBuf,
}

/// What `apply` changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// node.toml keys set (`video.` ones in its [video] table).
    pub keys: Vec<&'static str>,
    /// The Wi-Fi configuration written, if any.
    pub wifi: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum FirstBootError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}; fix it on the boot partition and reboot (nothing was changed)")]
    Invalid { path: PathBuf, message: String },
}

/// Applies the settings file, if there is one; returns None when there is not.
pub fn apply(args: &FirstBootArgs) -> Result<Option<Applied>, FirstBootError> {
    let text = match fs::read_to_string(&args.settings) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FirstBootError::Read {
                path: args.settings.clone(),
                source,
            })
        }
    };
    let invalid = |message: String| FirstBootError::Invalid {
        path: args.settings.clone(),
        message,
    };
    let wanted: FirstBoot = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;

    let config_text = fs::read_to_string(&args.config).map_err(|source| FirstBootError::Read {
        path: args.config.clone(),
        source,
    })?;
    let mut doc: toml_edit::DocumentMut =
        config_text.parse().map_err(|e| FirstBootError::Invalid {
            path: args.config.clone(),
            message: format!("{e}"),
        })?;
    let mut applied = Applied::default();
    for (key, value) in [
        ("portal", &wanted.portal),
        ("name", &wanted.name),
        ("title", &wanted.title),
        ("source", &wanted.source),
        ("advertise", &wanted.advertise),
    ] {
        if let Some(value) = value {
            doc[key] = toml_edit::value(value.as_str());
            applied.keys.push(key);
        }
    }
    if let Some(video) = &wanted.video {
        let table = doc["video"].or_insert(toml_edit::table());
        for (key, name, value) in [
            (
                "size",
                "video.size",
                video.size.clone().map(toml_edit::value),
            ),
            ("fps", "video.fps", video.fps.map(toml_edit::value)),
            (
                "bitrate_kbps",
                "video.bitrate_kbps",
                video.bitrate_kbps.map(toml_edit::value),
            ),
        ] {
            if let Some(value) = value {
                table[key] = value;
                applied.keys.push(name);
            }
        }
    }
    let new_config = doc.to_string();
    Config::from_toml(&new_config, &NodeArgs::default()).map_err(|e| invalid(e.to_string()))?;
    let wifi = wanted
        .wifi
        .as_ref()
        .map(wpa_supplicant_conf)
        .transpose()
        .map_err(invalid)?;

    let write = |path: &Path, contents: &str, mode| {
        write_atomic(path, contents.as_bytes(), mode).map_err(|source| FirstBootError::Write {
            path: path.to_owned(),
            source,
        })
    };
    if !applied.keys.is_empty() {
        write(&args.config, &new_config, 0o644)?;
    }
    if let Some(conf) = wifi {
        fs::create_dir_all(&args.wifi_dir).map_err(|source| FirstBootError::Write {
            path: args.wifi_dir.clone(),
            source,
        })?;
        let path = args.wifi_dir.join("wpa_supplicant-wlan0.conf");
        // The password is a secret: only root reads it.
        write(&path, &conf, 0o600)?;
        applied.wifi = Some(path);
    }
    let mut done = args.settings.clone().into_os_string();
    done.push(".applied");
    fs::rename(&args.settings, &done).map_err(|source| FirstBootError::Write {
        path: PathBuf::from(done),
        source,
    })?;
    Ok(Some(applied))
}

/// wpa_supplicant's configuration for one network. The SSID is written in hex, so any
/// bytes in it are safe; the password is quoted, which wpa_supplicant reads up to the
/// line's last quote.
fn wpa_supplicant_conf(wifi: &Wifi) -> Result<String, String> {
    let country = &wifi.country;
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "wifi.country {country:?} must be a two-letter country code such as \"GB\""
        ));
    }
    if wifi.ssid.is_empty() || wifi.ssid.len() > 32 {
        return Err("wifi.ssid must be 1-32 bytes".into());
    }
    let mut conf = format!(
        "# Written by `astral firstboot` from the boot partition's astral.toml.\n\
         ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\n\
         update_config=1\n\
         country={country}\n\n\
         network={{\n    ssid="
    );
    for byte in wifi.ssid.bytes() {
        let _ = write!(conf, "{byte:02x}");
    }
    conf.push('\n');
    match &wifi.password {
        Some(password) => {
            if !(8..=63).contains(&password.len()) || password.chars().any(|c| c.is_control()) {
                return Err("wifi.password must be 8-63 characters (WPA2), on one line".into());
            }
            let _ = writeln!(conf, "    psk=\"{password}\"");
        }
        None => conf.push_str("    key_mgmt=NONE\n"),
    }
    conf.push_str("}\n");
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_TOML: &str = "# The box's name.\nname = \"astral-box\"\n\n# portal = \"http://x\"\nsource = \"v4l2:/dev/video0\"\n";

    fn setup(settings: &str) -> (tempfile::TempDir, FirstBootArgs) {
        let dir = tempfile::tempdir().unwrap();
        let args = FirstBootArgs {
            settings: dir.path().join("astral.toml"),
            config: dir.path().join("node.toml"),
            wifi_dir: dir.path().join("wpa"),
        };
        fs::write(&args.settings, settings).unwrap();
        fs::write(&args.config, NODE_TOML).unwrap();
        (dir, args)
    }

    #[test]
    fn settings_go_into_node_toml_keeping_its_comments() {
        let (_dir, args) = setup(
            "portal = \"http://10.0.2.2:8080\"\nname = \"kitchen\"\ntitle = \"Kitchen\"\n\n\
             [video]\nsize = \"640x360\"\nfps = 15\n\n\
             [wifi]\nssid = \"Home \\\"5G\\\"\"\npassword = \"pass\\\"word\"\ncountry = \"GB\"\n",
        );
        let applied = apply(&args).unwrap().unwrap();
        assert_eq!(
            applied.keys,
            ["portal", "name", "title", "video.size", "video.fps"]
        );
        let config = fs::read_to_string(&args.config).unwrap();
        assert!(config.starts_with("# The box's name.\nname = \"kitchen\"\n"));
        assert!(config.contains("portal = \"http://10.0.2.2:8080\""));
        assert!(config.contains("source = \"v4l2:/dev/video0\""));
        assert!(
            config.ends_with("[video]\nsize = \"640x360\"\nfps = 15\n"),
            "{config}"
        );
        let wifi = fs::read_to_string(applied.wifi.unwrap()).unwrap();
        assert!(wifi.contains("country=GB\n"));
        // "Home \"5G\"" in hex.
        assert!(wifi.contains("ssid=486f6d652022354722\n"), "{wifi}");
        assert!(wifi.contains("psk=\"pass\"word\"\n"));
        assert!(!args.settings.exists(), "applied once");
        assert!(args.settings.with_extension("toml.applied").exists());
        assert_eq!(apply(&args).unwrap(), None, "nothing left to apply");
    }

    #[test]
    fn a_bad_setting_changes_nothing_and_says_which() {
        for (settings, says) in [
            ("name = \"my box!\"", "name"),
            ("colour = \"blue\"", "unknown field `colour`"),
            ("portal = \"not a url\"", "portal"),
            ("[video]\nsize = \"huge\"", "size"),
            (
                "[wifi]\nssid = \"x\"\npassword = \"short\"\ncountry = \"GB\"",
                "wifi.password",
            ),
            (
                "[wifi]\nssid = \"x\"\ncountry = \"Britain\"",
                "wifi.country",
            ),
        ] {
            let (_dir, args) = setup(settings);
            let err = apply(&args).unwrap_err().to_string();
            assert!(err.contains(says), "{settings}: {err}");
            assert_eq!(fs::read_to_string(&args.config).unwrap(), NODE_TOML);
            assert!(args.settings.exists(), "left for the user to fix");
            assert!(!args.wifi_dir.exists());
        }
    }

    #[test]
    fn no_settings_file_is_nothing_to_do() {
        let (_dir, args) = setup("");
        fs::remove_file(&args.settings).unwrap();
        assert_eq!(apply(&args).unwrap(), None);
    }
}
