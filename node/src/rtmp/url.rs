//! `rtmp://HOST[:PORT]/APP/STREAM[?QUERY]` URLs, as relays dial them.

use std::fmt;

/// A parsed RTMP URL. The query (a stream key or a ticket token) is part of the play
/// path sent to the server but never shown by `Display`, so logs carry no secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    pub app: String,
    /// The stream name with its query, as sent in `play`.
    pub play_path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("{0:?} is not a URL: {1}")]
    Syntax(String, String),
    #[error("{0:?}: only rtmp:// URLs can be pulled")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} must name an app and a stream: rtmp://HOST[:PORT]/APP/STREAM")]
    Path(String),
}

impl RtmpUrl {
    pub fn parse(text: &str) -> Result<RtmpUrl, UrlError> {
        let url =
            url::Url::parse(text).map_err(|e| UrlError::Syntax(text.into(), e.to_string()))?;
        if url.scheme() != "rtmp" {
            return Err(UrlError::Scheme(text.into()));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(UrlError::NoHost(text.into())),
        };
        let mut segments = url.path().trim_start_matches('/').splitn(2, '/');
        let (Some(app), Some(stream)) = (segments.next(), segments.next()) else {
            return Err(UrlError::Path(text.into()));
        };
        if app.is_empty() || stream.is_empty() || stream.contains('/') {
            return Err(UrlError::Path(text.into()));
        }
        let play_path = match url.query() {
            Some(q) => format!("{stream}?{q}"),
            None => stream.to_owned(),
        };
        Ok(RtmpUrl {
            host,
            port: url.port().unwrap_or(1935),
            app: app.to_owned(),
            play_path,
        })
    }

    /// The URL a child plays its parent's stream with: `rtmp://PARENT/live/STREAM?ticket=TOKEN`.
    pub fn for_ticket(parent: std::net::SocketAddr, stream: &str, token: &str) -> RtmpUrl {
        RtmpUrl {
            host: parent.ip().to_string(),
            port: parent.port(),
            app: super::APP.to_owned(),
            play_path: format!("{stream}?ticket={token}"),
        }
    }

    /// The URL with this box's proof that it plays the ticket in it (see
    /// `proto::identity::verify_play`). Made anew for each connection: a parent takes
    /// each proof once. A URL without a ticket is returned as it is.
    pub fn proven_by(&self, key: &proto::identity::NodeKey) -> RtmpUrl {
        let Some((stream, query)) = self.play_path.split_once('?') else {
            return self.clone();
        };
        let Some(token) = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "ticket")
            .map(|(_, v)| v.into_owned())
        else {
            return self.clone();
        };
        let proof = key.prove_play(stream, &token, web::signed::now_unix_ms());
        RtmpUrl {
            play_path: format!("{}&{proof}", self.play_path),
            ..self.clone()
        }
    }

    /// The same URL asking to resume after source timestamp `after`, which the
    /// player already has (see `Hub::subscribe_after`).
    pub fn resuming_after(&self, after: u32) -> RtmpUrl {
        let sep = if self.play_path.contains('?') {
            '&'
        } else {
            '?'
        };
        RtmpUrl {
            play_path: format!("{}{sep}after={after}", self.play_path),
            ..self.clone()
        }
    }

    /// The stream name without its query.
    pub fn stream_name(&self) -> &str {
        self.play_path.split('?').next().unwrap_or_default()
    }

    /// The address to dial, as `host:port` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// RTMP's `tcUrl`: the URL of the application.
    pub fn tc_url(&self) -> String {
        format!("rtmp://{}/{}", self.authority(), self.app)
    }
}

impl fmt::Display for RtmpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tc_url(), self.stream_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_app_stream_and_query() {
        let url = RtmpUrl::parse("rtmp://127.0.0.1:1936/live/cam?ticket=abc").unwrap();
        assert_eq!(url.authority(), "127.0.0.1:1936");
        assert_eq!(url.app, "live");
        assert_eq!(url.play_path, "cam?ticket=abc");
        assert_eq!(url.stream_name(), "cam");
        assert_eq!(url.to_string(), "rtmp://127.0.0.1:1936/live/cam");
    }

    #[test]
    fn defaults_the_port_and_brackets_ipv6() {
        let url = RtmpUrl::parse("rtmp://[::1]/live/cam").unwrap();
        assert_eq!(url.authority(), "[::1]:1935");
    }

    #[test]
    fn refuses_what_cannot_be_pulled() {
        for bad in [
            "http://h/live/a",
            "rtmp:///live/a",
            "rtmp://h/live",
            "rtmp://h/live/",
            "rtmp://h//a",
            "live/a",
            "rtmp://h/live/a/b",
        ] {
            assert!(RtmpUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
