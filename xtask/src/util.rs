//! Small helpers shared by the tasks that run real processes.

use std::process::{Child, Command};

use anyhow::{bail, Context};

/// This machine's Debian architecture (amd64, arm64, …).
pub fn host_deb_arch() -> anyhow::Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("cannot run dpkg: this task runs on Debian or Ubuntu")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A GET on loopback; the body of a 200 (at most 1 MiB), else an error.
pub fn http_get(url: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    let response = ureq::get(url)
        .timeout(std::time::Duration::from_secs(5))
        .call()?;
    let mut body = String::new();
    response
        .into_reader()
        .take(1 << 20)
        .read_to_string(&mut body)?;
    Ok(body)
}

/// A child process, killed when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What ffprobe decoded of a stream's video.
#[derive(Debug, PartialEq, Eq)]
pub struct VideoProbe {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// Frames decoded in the seconds read.
    pub frames: u32,
}

/// Reads `seconds` of `url` with ffprobe and counts its video frames.
pub fn probe_video(url: &str, seconds: u32) -> anyhow::Result<VideoProbe> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "15000000"])
        .args(["-read_intervals", &format!("%+{seconds}")])
        .args(["-count_frames", "-select_streams", "v:0", "-of", "csv=p=0"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
        ])
        .arg(url)
        .output()
        .context("cannot run ffprobe")?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let fields: Vec<&str> = text.split(',').collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse().ok());
    match (fields.first(), number(1), number(2), number(3)) {
        (Some(codec), Some(width), Some(height), Some(frames)) if out.status.success() => {
            Ok(VideoProbe {
                codec: (*codec).to_owned(),
                width,
                height,
                frames,
            })
        }
        _ => bail!(
            "ffprobe {url}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}
