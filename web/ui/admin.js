// A box's admin page: log in with the admin token (the box keeps it in an HttpOnly
// cookie, never in a URL), then status, stills of its streams, the settings form
// (the same PATCH /config as `astral config set`) and the log's latest lines.

import { h, call, duration, kbps } from "./lib.js";

const app = document.getElementById("app");
const same = { credentials: "same-origin" };
let timers = [];

async function main() {
  const session = await call("/session", same);
  document.getElementById("box-name").textContent = session.name;
  document.title = `Astral box ${session.name}`;
  if (session.admin) panels();
  else login();
}

function login(message) {
  timers.forEach(clearInterval);
  timers = [];
  document.getElementById("logout").hidden = true;
  const error = h("p", { class: "error", id: "login-error" }, message || "");
  const token = h("input", { type: "password", id: "token", autocomplete: "current-password", size: 40, placeholder: "admin token" });
  app.replaceChildren(
    h(
      "form",
      {
        class: "panel",
        id: "login",
        onsubmit: async (ev) => {
          ev.preventDefault();
          try {
            await call("/session", { ...same, method: "POST", body: { token: token.value.trim() } });
            panels();
          } catch (e) {
            error.textContent = e.message;
          }
        },
      },
      h("h2", {}, "Log in to this box"),
      h("p", { class: "dim" }, "The token is in the box's data directory: ", h("code", {}, "sudo cat /var/lib/astral/admin-token")),
      token,
      " ",
      h("button", { type: "submit" }, "Log in"),
      error,
    ),
  );
  token.focus();
}

// ---- the panels -----------------------------------------------------------

function panels() {
  document.getElementById("logout").hidden = false;
  const status = h("div", { class: "panel", id: "status" }, h("h2", {}, "Status"));
  const stills = h("div", { class: "panel thumbs", id: "stills" }, h("h2", {}, "Streams"));
  const settings = h("div", { class: "panel", id: "settings" }, h("h2", {}, "Settings"));
  const logs = h("div", { class: "panel", id: "logs-panel" }, h("h2", {}, "Log"), h("pre", { class: "logs", id: "logs" }));
  app.replaceChildren(h("div", { class: "panels" }, status, stills, settings), logs);
  refresh(status, stills);
  loadSettings(settings);
  loadLogs();
  timers = [setInterval(() => refresh(status, stills), 2000), setInterval(loadLogs, 3000)];
}

/** Admin calls end in the login form once the box no longer knows the cookie. */
async function admin(url, opts = {}) {
  try {
    return await call(url, { ...same, ...opts });
  } catch (e) {
    if (e.status === 401) login("Your session ended; log in again.");
    throw e;
  }
}

async function refresh(panel, stills) {
  let st, streams, owner;
  try {
    [st, streams, owner] = await Promise.all([call("/status", same), call("/streams", same), admin("/owner")]);
  } catch (e) {
    panel.replaceChildren(h("h2", {}, "Status"), h("p", { class: "error" }, `The box does not answer: ${e.message}`));
    return;
  }
  const o = st.overlay;
  panel.replaceChildren(
    h("h2", {}, "Status"),
    h(
      "dl",
      { class: "facts" },
      [
        ["Box", st.name],
        ["Version", st.version],
        ["Up", duration(st.uptime_secs)],
        ["Broadcast", h("span", { "data-broadcast": st.broadcast }, st.broadcast)],
        ["Network", o.running ? (o.is_supernode ? `supernode (${o.registered ?? 0} boxes)` : `member of ${o.supernode || "…"}`) : "not in an overlay"],
        ["Reachable", h("span", { "data-reach": st.reach?.state ?? "unknown" }, reachText(st.reach))],
        ["IPv6", ipv6Text(st.reach?.ipv6)],
        ["Portal", h("span", { "data-owner": owner.owner ? "claimed" : "unclaimed" }, ownerText(owner))],
        ["RTMP", st.rtmp],
        ["API", st.api],
      ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
    ),
    o.streams.length ? h("h2", {}, "In the trees") : "",
    ...o.streams.map((p) =>
      h("p", { "data-place": p.stream }, h("b", {}, p.stream), ` ${p.role}, depth ${p.depth}`, p.parent ? `, from ${p.parent}` : "", `, ${p.tickets.length}/${p.slots} forwards`, p.flowing ? "" : " (waiting for video)"),
    ),
  );
  const stamp = Date.now();
  stills.replaceChildren(
    h("h2", {}, "Streams"),
    ...(streams.length
      ? streams.map((info) =>
          h(
            "figure",
            { "data-stream": info.name },
            h("img", { src: `/streams/${encodeURIComponent(info.name)}/thumbnail.jpg?t=${stamp}`, alt: `Still of ${info.name}` }),
            h("figcaption", { class: "dim" }, `${info.name}: ${info.width ? `${info.width}×${info.height}, ` : ""}${kbps(info.bitrate_kbps || 0)}, ${info.fps || 0} fps, ${info.subscribers} players`),
          ),
        )
      : [h("p", { class: "dim" }, "This box holds no stream.")]),
  );
}

// ---- settings -------------------------------------------------------------

/** The settings the form edits: key, label, input type. */
const FIELDS = [
  ["title", "Title", "text"],
  ["description", "Description", "text"],
  ["size", "Size (WxH)", "text"],
  ["fps", "Frame rate", "number"],
  ["bitrate_kbps", "Bitrate (kbit/s)", "number"],
  ["encoder", "Encoder", "text"],
  ["upload_kbps", "Upload (kbit/s)", "number"],
  ["max_forwards", "Forwards", "number"],
];

async function loadSettings(panel) {
  let current;
  try {
    current = await admin("/config");
  } catch (e) {
    panel.append(h("p", { class: "error" }, e.message));
    return;
  }
  const inputs = {};
  const errors = {};
  const note = h("p", { class: "dim", id: "settings-note" }, `Source: ${current.source}`);
  const rows = FIELDS.map(([key, label, type]) => {
    inputs[key] = h("input", { type, name: key, value: current[key] ?? "", "data-setting": key });
    errors[key] = h("span", { class: "field-error" });
    return h("label", {}, label, inputs[key], errors[key]);
  });
  const form = h(
    "form",
    {
      class: "settings",
      onsubmit: async (ev) => {
        ev.preventDefault();
        Object.values(errors).forEach((e) => (e.textContent = ""));
        const patch = {};
        for (const [key, , type] of FIELDS) {
          const raw = inputs[key].value.trim();
          const before = current[key] ?? "";
          if (raw === String(before)) continue;
          patch[key] = raw === "" ? null : type === "number" ? Number(raw) : raw;
        }
        if (!Object.keys(patch).length) {
          note.textContent = "Nothing changed.";
          return;
        }
        try {
          current = await admin("/config", { method: "PATCH", body: patch, timeout: 15000 });
          note.textContent = `Saved and applied: ${Object.keys(patch).join(", ")}.`;
        } catch (e) {
          const key = e.field && FIELDS.find(([k]) => e.field.endsWith(k));
          if (key) errors[key[0]].textContent = e.message;
          note.textContent = `Not saved: ${e.message}`;
        }
      },
    },
    rows,
    h("button", { type: "submit" }, "Save"),
  );
  panel.replaceChildren(h("h2", {}, "Settings"), note, form);
}

async function loadLogs() {
  try {
    const { lines } = await admin("/logs");
    const pre = document.getElementById("logs");
    if (!pre) return;
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = lines.join("\n");
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  } catch {
    /* shown by the next refresh */
  }
}

document.getElementById("logout").addEventListener("click", async () => {
  await call("/session", { ...same, method: "DELETE" }).catch(() => {});
  login("Logged out.");
});

main().catch((e) => app.replaceChildren(h("p", { class: "error" }, `This box's page cannot start: ${e.message}`)));

/** The box's own IPv6 address, and whether boxes with IPv6 reach it there. */
function ipv6Text(v6) {
  if (!v6) return "none";
  return v6.reachable ? `${v6.address}, reached by boxes with IPv6` : `${v6.address}, not reached: ${v6.why ?? ""}`;
}

/** Whether boxes beyond the router reach this one, and if not, why and what to do. */
function reachText(reach) {
  if (!reach || reach.state === "unknown") return reach?.why ? `not known: ${reach.why}` : "not checked";
  if (reach.state === "reachable") return reach.mapped_by ? `yes, at ${reach.api} (ports mapped over ${reach.mapped_by})` : `yes, at ${reach.api}`;
  return `no. ${reach.why ?? ""}`;
}

/** Who manages the box from the portal, or the pairing code that lets its owner claim it. */
function ownerText(owner) {
  if (owner.owner) return `managed by ${owner.owner}`;
  return h("span", {}, "not claimed; pairing code ", h("code", { id: "pairing-code" }, owner.pairing_code ?? "…"), " (give it to the portal to manage this box from there)");
}
