//! Astral's browser pages, embedded in the binary: the portal's (stream list, watch
//! page, network map) and the admin page every box serves.
//!
//! The JavaScript is bundled at build time (`build.rs`: esbuild, with mpegts.js from
//! npm as `package-lock.json` pins it), so a box needs no Node.js and no files beside
//! its binary. This crate hands out the files; the servers decide where they go,
//! and serve them, and their APIs, through [`server`], reading boxes' signed requests
//! through [`signed`].

pub mod server;
pub mod signed;

use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};

/// A file of a page.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// A `GET` (or `HEAD`) of one of `files`, as a response; `None` for anything else,
/// which the server answers in its own way.
pub fn serve(files: fn(&str) -> Option<Asset>, method: &Method, path: &str) -> Option<Response> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let asset = files(path)?;
    // Pages change with the binary: a browser asks again, cheaply, each time.
    let headers = [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    Some((headers, asset.body).into_response())
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const STYLE: Asset = Asset {
    content_type: CSS,
    body: include_bytes!("../ui/style.css"),
};

/// The portal's files by path. Every page of the portal is the same document: its
/// script reads the path (`/`, `/watch/ID`, `/map`, `/boxes`).
pub fn portal(path: &str) -> Option<Asset> {
    match path {
        "/assets/portal.js" => Some(Asset {
            content_type: JS,
            body: include_bytes!(concat!(env!("OUT_DIR"), "/portal.js")),
        }),
        "/assets/style.css" => Some(STYLE),
        "/" | "/map" | "/boxes" => Some(PORTAL_PAGE),
        _ if path
            .strip_prefix("/watch/")
            .is_some_and(|id| !id.contains('/')) =>
        {
            Some(PORTAL_PAGE)
        }
        _ => None,
    }
}

const PORTAL_PAGE: Asset = Asset {
    content_type: HTML,
    body: include_bytes!("../ui/portal.html"),
};

/// A box's admin page and its files, by path.
pub fn admin(path: &str) -> Option<Asset> {
    match path {
        "/" => Some(Asset {
            content_type: HTML,
            body: include_bytes!("../ui/admin.html"),
        }),
        "/assets/admin.js" => Some(Asset {
            content_type: JS,
            body: include_bytes!(concat!(env!("OUT_DIR"), "/admin.js")),
        }),
        "/assets/style.css" => Some(STYLE),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_has_its_script_bundled() {
        for (page, script) in [
            (portal("/").unwrap(), portal("/assets/portal.js").unwrap()),
            (admin("/").unwrap(), admin("/assets/admin.js").unwrap()),
        ] {
            assert!(page.content_type.starts_with("text/html"));
            assert!(
                script.body.len() > 1000,
                "a bundle of {} bytes",
                script.body.len()
            );
        }
        // mpegts.js is in the portal's bundle, not fetched from anywhere else.
        let portal_js = std::str::from_utf8(portal("/assets/portal.js").unwrap().body).unwrap();
        assert!(portal_js.contains("MSE"), "mpegts.js is not bundled");
        assert!(portal("/watch/cam").is_some());
        assert!(portal("/watch/a/b").is_none());
        assert!(admin("/map").is_none());
    }
}
