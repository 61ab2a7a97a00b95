// The portal's pages: the live streams, a stream's watch page, the network map, an
// owner's boxes. One WebSocket (/api/map/ws) keeps the state current: a snapshot, then
// each change; the page in view is drawn again from the state after every change.

import mpegts from "mpegts.js";
import { h, s, call, duration, kbps, now } from "./lib.js";

const state = {
  streams: new Map(), // id → StreamEntry
  nodes: new Map(), // id → NodeReport
  thumbnails: new Map(), // stream id → version
  connected: false,
};

/** A box's name, for people: its owner's name for it, else the start of its node id. */
function nameOf(id) {
  const node = state.nodes.get(id);
  return (node && node.name) || (id ? id.slice(0, 8) : "");
}

// ---- the feed -------------------------------------------------------------

function apply(event) {
  switch (event.type) {
    case "snapshot":
      state.streams = new Map(event.streams.map((e) => [e.id, e]));
      state.nodes = new Map(event.nodes.map((n) => [n.peer.id, n]));
      state.thumbnails = new Map(Object.entries(event.thumbnails || {}));
      break;
    case "node":
      state.nodes.set(event.node.peer.id, event.node);
      break;
    case "node_gone":
      state.nodes.delete(event.id);
      break;
    case "stream":
      state.streams.set(event.stream.id, event.stream);
      break;
    case "stream_gone":
      state.streams.delete(event.id);
      break;
    case "thumbnail":
      state.thumbnails.set(event.id, event.version);
      break;
  }
}

function connect(backoff = 500) {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/map/ws`;
  const ws = new WebSocket(url);
  ws.onopen = () => {
    backoff = 500;
    state.connected = true;
  };
  ws.onmessage = (msg) => {
    apply(JSON.parse(msg.data));
    redraw();
  };
  ws.onclose = () => {
    state.connected = false;
    redraw();
    setTimeout(() => connect(Math.min(backoff * 2, 8000)), backoff);
  };
}

let pending = false;
function redraw() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    document.getElementById("feed-state").textContent = state.connected
      ? `${state.streams.size} live · ${state.nodes.size} boxes`
      : "reconnecting…";
    view.draw(document.getElementById("app"));
  });
}

// ---- derived facts --------------------------------------------------------

/** Boxes holding a stream, apart from its source: the viewers' boxes and seeders. */
function holders(id) {
  let n = 0;
  for (const node of state.nodes.values()) {
    if (node.streams.some((p) => p.stream === id && p.depth > 0)) n++;
  }
  return n;
}

function thumbnailUrl(id) {
  const v = state.thumbnails.get(id);
  return v ? `/api/streams/${encodeURIComponent(id)}/thumbnail.jpg?v=${v}` : null;
}

// ---- the stream list ------------------------------------------------------

const list = {
  draw(app) {
    const streams = [...state.streams.values()].sort(
      (a, b) => holders(b.id) - holders(a.id) || a.id.localeCompare(b.id),
    );
    app.replaceChildren(
      h("h1", {}, "Live now"),
      streams.length
        ? h("div", { class: "grid" }, streams.map(card))
        : h("p", { class: "empty" }, "Nothing is live right now. Plug a camera into a box, or run ", h("code", {}, "./dev demo"), "."),
    );
  },
  tick() {
    for (const el of document.querySelectorAll("[data-uptime]")) {
      el.textContent = `live ${duration(now() - Number(el.dataset.uptime))}`;
    }
  },
};

function card(e) {
  const thumb = thumbnailUrl(e.id);
  const viewers = holders(e.id) || e.viewers;
  return h(
    "article",
    { class: "card", "data-stream": e.id },
    h(
      "a",
      { class: "thumb", href: `/watch/${encodeURIComponent(e.id)}`, "data-nav": true },
      thumb ? h("img", { src: thumb, alt: `Still of ${e.title}`, "data-thumbnail": e.id }) : null,
      h("span", { class: "badge" }, "LIVE"),
    ),
    h(
      "div",
      { class: "body" },
      h("div", { class: "title" }, e.title),
      h(
        "div",
        { class: "facts" },
        h("span", { title: `source box ${e.source.id}` }, `from ${nameOf(e.source.id)}`),
        h("span", { "data-viewers": viewers }, `${viewers} watching`),
        h("span", { "data-uptime": e.started }, `live ${duration(now() - e.started)}`),
        e.width ? h("span", {}, `${e.width}×${e.height}`) : null,
        e.bitrate_kbps ? h("span", {}, kbps(e.bitrate_kbps)) : null,
      ),
      e.description ? h("p", { class: "dim" }, e.description) : null,
      h("div", { class: "actions" }, h("a", { href: `/watch/${encodeURIComponent(e.id)}`, "data-nav": true }, h("button", {}, "Watch"))),
    ),
  );
}

// ---- the watch page -------------------------------------------------------

const DEFAULT_BOX = "http://localhost:8000";

/** An http(s) URL with a host, without its trailing slash; null otherwise. */
function boxUrl(text) {
  try {
    const u = new URL(text);
    return /^https?:$/.test(u.protocol) && u.host ? u.origin : null;
  } catch {
    return null;
  }
}

/** The viewer's own box: `?node=URL` for this visit, else the one the viewer saved
 * on the watch page. A link cannot change what the browser remembers. */
function localNode() {
  const given = boxUrl(new URLSearchParams(location.search).get("node") || "");
  return given || boxUrl(localStorage.getItem("astral.node") || "") || DEFAULT_BOX;
}

function watchPage(id) {
  let player = null;
  let via = null; // { kind: "local" | "public", api, flv, rtmp, id }
  let status = "Looking for your box…";
  let facts = {};
  let stopped = false;
  let timer = null;

  async function start() {
    const local = localNode();
    try {
      const me = await call(`${local}/status`, { timeout: 1500 });
      status = `Asking your box (${me.name}) to join the stream…`;
      redraw();
      const w = await join(local);
      via = { kind: "local", api: local, id: me.peer.id, flv: `${local}/live/${encodeURIComponent(id)}.flv`, rtmp: w.rtmp };
    } catch (err) {
      if (stopped) return;
      status = err.status
        ? `Your box at ${local} said no (${err.message}); finding a public box with a free slot…`
        : "No box of yours answered; finding a public box with a free slot…";
      redraw();
      if (!(await usePublicBox())) return;
    }
    if (stopped) return;
    play(via.flv);
    timer = setInterval(poll, 1000);
  }

  /** Plays from a box the portal picks, with a viewer ticket from it (which takes
   * its slot); false, and why in the status, if there is none. */
  async function usePublicBox() {
    try {
      const at = await call(`/api/streams/${encodeURIComponent(id)}/play`);
      const t = await call(at.ticket_url, { method: "POST", body: {} });
      via = { kind: "public", api: `http://${at.node.api}`, id: at.node.id, flv: t.flv, rtmp: t.rtmp, ticketUrl: at.ticket_url };
      return true;
    } catch (e) {
      status = e.message;
      redraw();
      return false;
    }
  }

  /** Asks the viewer's box to watch, and waits until its video flows: the box's
   * answer (where it plays the stream). */
  async function join(api) {
    const w = await call(`${api}/streams/${encodeURIComponent(id)}/watch`, { method: "POST", body: {} });
    await flowing(api);
    return w;
  }

  /** Waits until the box gets the stream's video, up to 20 s. */
  async function flowing(api) {
    for (let i = 0; i < 80 && !stopped; i++) {
      const st = await call(`${api}/status`);
      const place = st.overlay.streams.find((p) => p.stream === id);
      if (place && place.flowing) return;
      status = place ? `Your box joined the tree at depth ${place.depth}; waiting for video…` : status;
      redraw();
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  function play(url) {
    const video = document.getElementById("video");
    player = mpegts.createPlayer(
      { type: "flv", isLive: true, url },
      {
        enableWorker: false,
        enableStashBuffer: false,
        lazyLoad: false,
        // Live, not smooth at any cost: past half a second behind, skip ahead.
        liveBufferLatencyChasing: true,
        liveBufferLatencyMaxLatency: 0.5,
        liveBufferLatencyMinRemain: 0.1,
      },
    );
    player.attachMediaElement(video);
    player.on(mpegts.Events.ERROR, (type, detail) => {
      status = `Playback stopped (${type}: ${detail}); retrying…`;
      redraw();
      setTimeout(async () => {
        if (stopped) return;
        player.destroy();
        player = null;
        // A viewer ticket is good for one play: a public box is asked again. Your
        // own box may have dropped the stream meanwhile, or restarted: asked again.
        if (via.kind === "public" && !(await usePublicBox())) return;
        if (via.kind === "local") {
          await join(via.api).catch(() => {});
        }
        if (!stopped) play(via.flv);
      }, 1000);
    });
    player.load();
    video.muted = true;
    Promise.resolve(player.play()).catch(() => {});
    status = via.kind === "local" ? `Playing through your box, ${nameOf(via.id)}` : `Playing from public box ${nameOf(via.id)}`;
  }

  /** Depth, parent and latency, once a second. */
  async function poll() {
    const video = document.getElementById("video");
    if (video && video.buffered.length) {
      facts.latency = Math.max(0, video.buffered.end(video.buffered.length - 1) - video.currentTime);
    }
    let place = null;
    if (via.kind === "local") {
      try {
        const st = await call(`${via.api}/status`, { timeout: 900 });
        place = st.overlay.streams.find((p) => p.stream === id) || null;
      } catch {
        /* the box may be busy: keep the last facts */
      }
    } else {
      const node = state.nodes.get(via.id);
      place = node && node.streams.find((p) => p.stream === id);
    }
    if (place) {
      facts.depth = place.depth;
      facts.parent = place.parent ? nameOf(place.parent) : "(the source)";
    }
    redraw();
  }

  /** Where the viewer keeps the address of a box of their own. */
  function yourBoxForm() {
    const input = h("input", { name: "box", value: localNode(), size: 26, "aria-label": "your box" });
    const note = h("p", { class: "dim" }, "The page plays through this box when it answers.");
    return h(
      "form",
      {
        class: "your-box",
        onsubmit: (ev) => {
          ev.preventDefault();
          const url = boxUrl(input.value.trim());
          if (!url) {
            note.textContent = "An address like http://192.168.1.20:8000, please.";
            return;
          }
          localStorage.setItem("astral.node", url);
          location.search = "";
        },
      },
      h("h2", {}, "Your box"),
      input,
      " ",
      h("button", { type: "submit" }, "Use it"),
      note,
    );
  }

  return {
    draw(app) {
      const e = state.streams.get(id);
      if (!document.getElementById("video")) {
        app.replaceChildren(
          h(
            "div",
            { class: "watch" },
            h("section", {}, h("h1", { id: "watch-title" }), h("video", { id: "video", controls: true, muted: true, playsinline: true }), h("p", { class: "status", id: "watch-status" })),
            h("aside", {}, h("h2", {}, "This stream"), h("dl", { class: "facts", id: "watch-facts" }), yourBoxForm()),
          ),
        );
        start();
      }
      document.getElementById("watch-title").textContent = e ? e.title : id;
      document.getElementById("watch-status").textContent = status;
      const flv = via && via.flv;
      const rows = [
        ["Source box", e ? nameOf(e.source.id) : "–"],
        ["Resolution", e && e.width ? `${e.width}×${e.height}` : "–"],
        ["Bitrate", e && e.bitrate_kbps ? kbps(e.bitrate_kbps) : "–"],
        ["Watching", e ? String(holders(id) || e.viewers) : "–"],
        ["Playing via", via ? `${nameOf(via.id)} (${via.kind === "local" ? "your box" : "public box"})` : "–"],
        ["Depth in tree", facts.depth ?? "–"],
        ["Parent", facts.parent ?? "–"],
        ["Latency", facts.latency != null ? `${Math.round(facts.latency * 1000)} ms buffered` : "–"],
        ...(via && via.kind === "public"
          ? [
              ["HTTP-FLV", h("code", {}, `ffplay "$(curl -s -X POST ${via.ticketUrl} | jq -r .flv)"`)],
              ["RTMP", h("code", {}, `vlc "$(curl -s -X POST ${via.ticketUrl} | jq -r .rtmp)"`)],
            ]
          : [
              ["HTTP-FLV", flv ? h("code", {}, `ffplay ${flv}`) : "–"],
              ["RTMP", via ? h("code", {}, `vlc ${via.rtmp}`) : "–"],
            ]),
      ];
      document.getElementById("watch-facts").replaceChildren(
        ...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k }, v)]),
      );
    },
    close() {
      stopped = true;
      clearInterval(timer);
      if (player) {
        player.destroy();
        player = null;
      }
    },
  };
}

// ---- the network map ------------------------------------------------------

const ROW = 80;
const COL = 90;

/** One tree per stream, from each box's report of its parent (the ticket's grantor). */
function trees() {
  const out = [];
  for (const stream of new Set([...state.nodes.values()].flatMap((n) => n.streams.map((p) => p.stream)))) {
    const children = new Map();
    const places = new Map();
    for (const node of state.nodes.values()) {
      const place = node.streams.find((p) => p.stream === stream);
      if (!place) continue;
      places.set(node.peer.id, place);
    }
    for (const [id, place] of places) {
      const parent = place.parent && places.has(place.parent) ? place.parent : null;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(id);
    }
    for (const list of children.values()) list.sort();
    out.push({ stream, places, children, roots: children.get(null) || [] });
  }
  return out.sort((a, b) => a.stream.localeCompare(b.stream));
}

/** A tidy layout: leaves side by side, each parent over the middle of its children. */
function layout(tree) {
  const pos = new Map();
  let next = 0;
  const place = (id, depth) => {
    const kids = tree.children.get(id) || [];
    if (!kids.length) {
      pos.set(id, { x: next++, y: depth });
    } else {
      kids.forEach((k) => place(k, depth + 1));
      const xs = kids.map((k) => pos.get(k).x);
      pos.set(id, { x: (Math.min(...xs) + Math.max(...xs)) / 2, y: depth });
    }
  };
  // Sources first: a box whose parent is off the map is a root of its own.
  const roots = [...tree.roots].sort((a, b) => tree.places.get(a).depth - tree.places.get(b).depth);
  roots.forEach((r) => {
    place(r, 0);
    next += 0.5;
  });
  return { pos, width: Math.max(next, 1) };
}

function drawTree(tree) {
  const { pos, width } = layout(tree);
  const depth = Math.max(0, ...[...pos.values()].map((p) => p.y));
  const X = (p) => 50 + p.x * COL;
  const Y = (p) => 30 + p.y * ROW;
  const edges = [];
  for (const [id, place] of tree.places) {
    if (place.parent && pos.has(place.parent)) {
      const a = pos.get(place.parent), b = pos.get(id);
      edges.push(
        s("line", {
          class: "edge",
          x1: X(a), y1: Y(a), x2: X(b), y2: Y(b),
          "data-edge": `${place.parent}>${id}`,
          "data-edge-names": `${nameOf(place.parent)}>${nameOf(id)}`,
        }),
      );
    }
  }
  const nodes = [...pos].map(([id, p]) => {
    const place = tree.places.get(id);
    const report = state.nodes.get(id);
    const cls = ["node", place.depth === 0 ? "source" : "", place.flowing ? "" : "stalled"].join(" ");
    const shape = report && report.is_supernode
      ? s("rect", { x: X(p) - 13, y: Y(p) - 13, width: 26, height: 26, rx: 4 })
      : s("circle", { cx: X(p), cy: Y(p), r: 13 });
    const free = place.slots - place.children.length - (place.viewers || 0);
    return s(
      "g",
      { class: cls, "data-node": id, "data-name": nameOf(id) },
      s("title", {}, `${nameOf(id)} (${id}): depth ${place.depth}, ${place.children.length}/${place.slots} forwards${report && report.is_supernode ? ", supernode" : ""}`),
      shape,
      s("text", { x: X(p), y: Y(p) + 30 }, nameOf(id)),
      s("text", { x: X(p), y: Y(p) + 4, "font-size": 10 }, free > 0 ? `+${free}` : ""),
    );
  });
  return h(
    "section",
    { "data-tree": tree.stream },
    h("h2", {}, `${tree.stream} · ${count(tree.places.size, "box", "boxes")} · depth ${depth}`),
    svgBox(Math.max(100 + (width - 1) * COL, 300), ROW * (depth + 1) + 30, edges, nodes),
  );
}

/** "1 box", "2 boxes". */
function count(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** An SVG drawn at its own size, shrunk to fit narrow screens. */
function svgBox(w, h_, ...children) {
  return s("svg", { viewBox: `0 0 ${w} ${h_}`, width: w, height: h_, style: "max-width: 100%; height: auto" }, ...children);
}

const map = {
  draw(app) {
    const all = trees();
    const idle = [...state.nodes.values()].filter((n) => !n.streams.length);
    const supernodes = [...state.nodes.values()].filter((n) => n.is_supernode);
    app.replaceChildren(
      h(
        "div",
        { class: "map" },
        h("h1", {}, "The network"),
        h(
          "p",
          { class: "legend" },
          `${count(state.nodes.size, "box", "boxes")}, ${count(supernodes.length, "supernode")} (square), ${count(state.streams.size, "live stream")}. `,
          "Lines are tickets, parent above child; red: a source; orange: waiting for video; +N: free forward slots.",
        ),
        all.length ? all.map(drawTree) : h("p", { class: "empty" }, "No stream is relayed right now."),
        idle.length ? [h("h2", {}, "Boxes holding no stream"), h("p", { "data-idle": true }, idle.map((n) => nameOf(n.peer.id)).join(", "))] : null,
        supernodes.length
          ? [
              h("h2", {}, "Supernodes and their boxes"),
              h(
                "ul",
                {},
                supernodes.map((sn) => {
                  const members = [...state.nodes.values()].filter((n) => n.supernode === sn.peer.id && n.peer.id !== sn.peer.id);
                  const names = members.map((m) => nameOf(m.peer.id)).join(", ");
                  return h("li", { "data-supernode": sn.peer.id }, h("b", {}, nameOf(sn.peer.id)), `: ${names || "no boxes"}`);
                }),
              ),
            ]
          : null,
      ),
    );
  },
};

// ---- an owner's boxes -----------------------------------------------------

/** Where the browser keeps the owner's token (the portal keeps only its hash). */
const OWNER_KEY = "astral-owner-token";

/** The owner's page: claim a box with its pairing code, see each box and command it
 * through the portal (its control channel: no port need be open on its router). */
function boxesPage() {
  let boxes = [];
  let message = "";
  let loading = null;
  const token = () => localStorage.getItem(OWNER_KEY);
  const owner = (url, opts = {}) => call(url, { ...opts, timeout: 10000, headers: { Authorization: `Bearer ${token()}` } });
  const say = (text) => {
    message = text;
    redraw();
  };

  async function load() {
    if (!token() || loading) return;
    loading = owner("/api/owner/boxes");
    try {
      boxes = await loading;
    } catch (e) {
      if (e.status === 401) localStorage.removeItem(OWNER_KEY);
      message = e.message;
    }
    loading = null;
    redraw();
  }

  async function command(box, method, route, body, done) {
    try {
      await owner(`/api/owner/boxes/${encodeURIComponent(box.node)}/${route}`, { method, body });
      say(done);
      load();
    } catch (e) {
      say(`${box.status?.name || box.node}: ${e.message}`);
    }
  }

  function start() {
    const key = h("input", { id: "owner-key", size: 40, placeholder: "an owner key from another browser" });
    return h(
      "div",
      { class: "panel", id: "owner-start" },
      h("h2", {}, "Manage your boxes"),
      h("p", { class: "dim" }, "An owner key lets you claim boxes and manage them from here. The portal keeps only its hash: keep the key to manage your boxes from another browser."),
      h(
        "button",
        {
          id: "new-owner",
          onclick: async () => {
            try {
              const created = await call("/api/owners", { method: "POST" });
              localStorage.setItem(OWNER_KEY, created.token);
              say(`Your owner key: ${created.token}`);
              load();
            } catch (e) {
              say(e.message);
            }
          },
        },
        "Make an owner key",
      ),
      " or ",
      key,
      " ",
      h(
        "button",
        {
          onclick: () => {
            localStorage.setItem(OWNER_KEY, key.value.trim());
            load();
          },
        },
        "Use it",
      ),
    );
  }

  function claimForm() {
    const code = h("input", { id: "pairing-code", size: 12, placeholder: "XXXX-XXXX", autocomplete: "off" });
    return h(
      "form",
      {
        class: "panel",
        id: "claim",
        onsubmit: async (ev) => {
          ev.preventDefault();
          try {
            const claimed = await owner("/api/owner/boxes", { method: "POST", body: { code: code.value } });
            say(`Box ${claimed.node} is yours.`);
            load();
          } catch (e) {
            say(e.message);
          }
        },
      },
      h("h2", {}, "Claim a box"),
      h("p", { class: "dim" }, "Its pairing code is on the box's admin page and in its log."),
      code,
      " ",
      h("button", { type: "submit" }, "Claim"),
    );
  }

  function boxCard(box) {
    const st = box.status;
    const name = st?.name || box.node;
    const places = st?.overlay?.streams ?? [];
    const on = st?.broadcast && st.broadcast !== "off";
    const fields = [
      ["max_forwards", "Forwards", "number"],
      ["upload_kbps", "Upload (kbit/s)", "number"],
      ["title", "Title", "text"],
    ].map(([key, label, type]) => [key, type, label, h("input", { name: key, type, size: 10 })]);
    const settings = h(
      "form",
      {
        class: "settings",
        onsubmit: (ev) => {
          ev.preventDefault();
          const patch = {};
          for (const [key, type, , input] of fields) {
            if (input.value !== "") patch[key] = type === "number" ? Number(input.value) : input.value;
          }
          command(box, "PATCH", "config", patch, `${name}: settings saved`);
        },
      },
      fields.map(([, , label, input]) => h("label", {}, label, input)),
      h("button", { type: "submit" }, "Save"),
    );
    return h(
      "article",
      { class: "panel", "data-box": box.node },
      h("h2", {}, name),
      h(
        "dl",
        { class: "facts" },
        [
          ["State", h("span", { "data-online": String(box.online) }, box.online ? "online" : "offline (no control channel)")],
          ["Broadcast", h("span", { "data-broadcast": st?.broadcast ?? "unknown" }, st?.broadcast ?? "unknown")],
          ["Reachable", st?.reach?.state ?? "unknown"],
          ["Node", h("code", {}, box.node)],
          ...places.map((p) => [p.stream, `${p.role}, depth ${p.depth}${p.parent ? `, from ${nameOf(p.parent)}` : ""}, ${p.tickets.length}/${p.slots} forwards`]),
        ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
      ),
      box.streams.map((e) => h("img", { class: "thumbs", src: thumbnailUrl(e.id) || `/api/streams/${encodeURIComponent(e.id)}/thumbnail.jpg`, alt: `Still of ${e.title}`, width: 240 })),
      h(
        "p",
        {},
        h("button", { disabled: !box.online, onclick: () => command(box, "PUT", "broadcast", { on: !on }, `${name}: broadcast ${on ? "stopped" : "started"}`) }, on ? "Stop broadcast" : "Start broadcast"),
      ),
      box.online ? settings : null,
    );
  }

  load();
  return {
    draw(app) {
      const focused = document.activeElement;
      if (focused && app.contains(focused) && focused.tagName === "INPUT") return;
      const mine = h("div", { class: "panels", id: "my-boxes" }, boxes.length ? boxes.map(boxCard) : h("p", { class: "empty" }, "No box claimed yet."));
      app.replaceChildren(
        h("h1", {}, "My boxes"),
        ...(message ? [h("p", { class: "status", id: "owner-message" }, message)] : []),
        ...(token() ? [claimForm(), mine] : [start()]),
      );
    },
    tick() {
      if (Math.floor(now()) % 5 === 0) load();
    },
  };
}

// ---- navigation -----------------------------------------------------------

let view = { draw() {} };

function route() {
  if (view.close) view.close();
  const path = location.pathname;
  const watch = path.match(/^\/watch\/([^/]+)$/);
  let id = null;
  try {
    id = watch && decodeURIComponent(watch[1]);
  } catch {
    /* not a stream's id: the list instead */
  }
  view = id ? watchPage(id) : path === "/map" ? map : path === "/boxes" ? boxesPage() : list;
  document.getElementById("app").replaceChildren();
  for (const a of document.querySelectorAll("header a")) {
    a.classList.toggle("here", a.getAttribute("href") === path);
  }
  redraw();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[data-nav]");
  if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
  ev.preventDefault();
  history.pushState(null, "", a.getAttribute("href") + location.search);
  route();
});
window.addEventListener("popstate", route);
setInterval(() => view.tick && view.tick(), 1000);

route();
connect();
