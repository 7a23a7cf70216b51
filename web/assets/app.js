// Tandem admin UI: one small vanilla script for every page. It calls the
// JSON API with the session cookie and the page's CSRF token.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const page = document.body.dataset.page;
  const me = document.body.dataset.user || "";
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fmtTime(ms) {
    if (ms === null || ms === undefined) return "–";
    const d = new Date(ms);
    return d.toLocaleString();
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "";
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }

  class ApiError extends Error {
    constructor(status, body) {
      let msg = (body && body.message) || ("HTTP " + status);
      if (body && body.leader_api) msg += " (the primary's page: " + body.leader_api + "/)";
      super(msg);
      this.status = status;
      this.body = body || {};
    }
  }

  async function api(method, path, body) {
    const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    if (r.status === 401) {
      window.location.href = "/login";
      throw new ApiError(401, { message: "the login session has ended" });
    }
    let data = null;
    const text = await r.text();
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = { message: text }; }
    }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  function say(target, text, kind) {
    const t = typeof target === "string" ? $(target) : target;
    if (!t) return;
    t.className = t.className.replace(/\b(busy|error|ok-msg)\b/g, "").trim();
    if (kind) t.classList.add(kind);
    t.textContent = text;
  }

  function errorText(e) {
    if (e instanceof ApiError) {
      if (e.body.error === "refused") return "Refused: " + e.message;
      return "Failed: " + e.message;
    }
    return "Failed: " + e;
  }

  // ---- role banner (every page) -----------------------------------------

  let lastStatus = null;

  function peerPage(status, id) {
    const p = (status.peers || []).find((x) => x.id === id);
    if (!p || !p.api_addr) return null;
    const base = p.api_addr.startsWith("http") ? p.api_addr : "https://" + p.api_addr;
    return { name: p.name, url: base.replace(/\/$/, "") + "/" };
  }

  function renderBanner(status) {
    const b = $("#role-banner");
    if (!b) return;
    const role = status.this_host.role;
    b.hidden = false;
    b.textContent = "";
    b.className = "banner " + (role === "primary" ? "primary" : role === "backup" ? "backup" : "other");
    if (role === "primary") {
      b.append("This host (" + status.this_host.name + ") is the PRIMARY.");
    } else if (role === "backup") {
      b.append("This host (" + status.this_host.name + ") is the BACKUP. ");
      const p = status.primary != null ? peerPage(status, status.primary) : null;
      if (p) {
        b.append("The primary is ", el("a", { href: p.url, id: "primary-link" }, p.name), " — make changes there.");
      } else {
        b.append("No primary is known right now.");
      }
    } else {
      b.append("This host (" + status.this_host.name + ") is " + role.toUpperCase() + ".");
    }
  }

  function renderMaintenanceBanner(status) {
    const b = $("#maintenance-banner");
    if (!b) return;
    const held = status.maintenance || [];
    b.hidden = held.length === 0;
    b.textContent = held.map((h) => "MAINTENANCE: " + h.node + " is in maintenance until " + fmtTime(h.until_ms) +
      " (" + h.reason + ", by " + h.by + ") and will not be made primary.").join(" ");
  }

  async function loadBanner() {
    try {
      lastStatus = await api("GET", "/api/v1/status");
      renderBanner(lastStatus);
      renderMaintenanceBanner(lastStatus);
    } catch (_) { /* the page shows its own errors */ }
    return lastStatus;
  }

  // ---- failover page ------------------------------------------------------

  function renderStatus(s) {
    lastStatus = s;
    renderBanner(s);
    renderMaintenanceBanner(s);
    renderMaintenanceNodes(s);
    renderChecks(s);
    const h = s.this_host;
    const role = h.role;
    $("#host-name").textContent = h.name + " (node " + h.id + ", " + h.kind + ")";
    $("#host-site").textContent = h.site || "–";
    const roleEl = $("#host-role");
    roleEl.textContent = role;
    roleEl.className = "role-" + role;
    $("#host-epoch").textContent = String(s.epoch) + (h.lease_valid ? " (lease valid)" : "");
    $("#host-topology").textContent = s.topology;
    $("#host-indexes").textContent =
      "log " + (h.last_log_index ?? "–") + " · committed " + (h.committed_index ?? "–") +
      " · applied " + (h.applied_index ?? "–") + " · term " + h.term;
    $("#host-since").textContent = h.primary_since_ms ? fmtTime(h.primary_since_ms) : "–";
    $("#host-ips").textContent = (h.shared_ips_held || []).join(", ") || "none";
    $("#host-updated").textContent = new Date().toLocaleTimeString();
    const notes = $("#host-notes");
    notes.replaceChildren(...(h.notes || []).map((n) => el("li", {}, n)));
    const line = $("#role-line");
    if (role === "primary") line.textContent = "You are on the primary site instance.";
    else if (role === "backup") line.textContent = "You are on the backup site instance.";
    else line.textContent = "This host is " + role + ".";

    const body = $("#peers tbody");
    body.replaceChildren(...s.peers.map((p) => {
      const link = peerPage(s, p.id);
      let lag = "–";
      if (p.lag_entries !== null && p.lag_entries !== undefined) {
        lag = p.lag_entries + " entries";
        if (p.lag_bytes) lag += ", " + fmtBytes(p.lag_bytes);
        if (p.lag_ms) lag += ", " + (p.lag_ms / 1000).toFixed(1) + " s";
      }
      return el("tr", { "data-peer": p.name },
        el("td", {}, p.name),
        el("td", {}, p.kind + (p.voter ? "" : " (non-voter)")),
        el("td", { class: "peer-site" }, p.site || "–"),
        el("td", { class: "role-" + p.role + " peer-role" }, p.role),
        el("td", { class: p.reachable ? "yes" : "no" }, p.reachable ? "yes" : "no"),
        el("td", {}, fmtTime(p.last_contact_ms)),
        el("td", {}, lag),
        el("td", {}, link ? el("a", { href: link.url }, "open") : "–"));
    }));
    const peer = s.peers.find((p) => p.kind === "appliance");
    document.querySelectorAll(".peer-name").forEach((x) => { x.textContent = peer ? peer.name : "the peer"; });
    const swap = $("#swap");
    if (!swap.disabled) swap.textContent = role === "backup" ? "Become primary" : "Become backup";
    const paired = s.topology !== "standalone" && h.kind === "appliance";
    $("#actions").hidden = !paired;
  }

  let busy = false;

  async function runAction(button, label, fn, done) {
    if (busy) return;
    busy = true;
    const status = $("#action-status");
    const buttons = document.querySelectorAll("#actions button");
    buttons.forEach((b) => { b.disabled = true; });
    say(status, label + "…", "busy");
    try {
      const r = await fn();
      say(status, done(r), "ok-msg");
    } catch (e) {
      say(status, errorText(e), "error");
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
      busy = false;
      loadHistory(null);
    }
  }

  function confirmDialog(title, text, typed) {
    const d = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm-typed").hidden = !typed;
    const input = $("#confirm-input");
    input.value = "";
    const ok = $("#confirm-ok");
    ok.disabled = !!typed;
    input.oninput = () => { ok.disabled = typed && input.value.trim() !== typed; };
    return new Promise((resolve) => {
      d.onclose = () => resolve(d.returnValue === "ok" && (!typed || input.value.trim() === typed));
      d.returnValue = "";
      d.showModal();
      if (typed) input.focus();
    });
  }

  function syncText(r) {
    let t = "Synced backup node " + r.backup + " to index " + r.to_index + ": " + r.entries +
      " entries, " + fmtBytes(r.bytes) + (r.snapshot ? " (by snapshot)" : "") + " in " + r.duration_ms + " ms.";
    if (r.verify) {
      t += r.verify.matches ? " Verified: state digests match at index " + r.verify.index + "."
        : " VERIFY FAILED: state digests differ at index " + r.verify.index + ".";
    }
    return t;
  }

  let historyBefore = null;
  let historyNext = null;
  const knownKinds = new Set(["role_change", "peer_lost", "peer_found", "sync", "verify", "swap", "settings_change",
    "break", "user_added", "user_removed", "user_password_set", "user_password_changed", "api_token_created", "api_token_revoked",
    "maintenance_start", "maintenance_end", "maintenance_scheduled", "maintenance_reminder", "maintenance_cancelled",
    "check_state", "check_move_blocked"]);

  async function loadHistory(before) {
    const kind = $("#history-kind").value.trim();
    const q = new URLSearchParams({ limit: "20" });
    if (before !== null && before !== undefined) q.set("before", before);
    if (kind) q.set("kind", kind);
    try {
      const page = await api("GET", "/api/v1/history?" + q);
      historyBefore = before;
      historyNext = page.next_before;
      $("#history tbody").replaceChildren(...page.items.map((e) => {
        knownKinds.add(e.kind);
        return el("tr", {},
          el("td", {}, e.seq), el("td", {}, fmtTime(e.at_ms)),
          el("td", {}, e.node_name || ("node " + e.node)), el("td", {}, e.kind),
          el("td", {}, e.actor), el("td", { class: "details" }, JSON.stringify(e.details)));
      }));
      $("#history-kinds").replaceChildren(...[...knownKinds].sort().map((k) => el("option", { value: k })));
      $("#history-older").disabled = historyNext === null || historyNext === undefined;
      $("#history-info").textContent = page.items.length + " shown of " + page.total + " recorded" + (kind ? " (kind " + kind + ")" : "");
    } catch (e) {
      $("#history-info").textContent = errorText(e);
    }
  }

  // Maintenance: the holds come with every status; the windows are loaded
  // with the page and after each change.
  function renderChecks(s) {
    const checks = s.this_host.checks || [];
    const card = $("#checks");
    if (!card) return;
    card.hidden = checks.length === 0;
    $("#check-table tbody").replaceChildren(...checks.map((c) =>
      el("tr", { "data-check": c.name },
        el("td", {}, c.name + " (" + c.kind + ")"),
        el("td", { class: "check-state " + (c.state === "healthy" ? "yes" : c.state === "failing" ? "no" : "") }, c.state),
        el("td", {}, c.last_ok === null || c.last_ok === undefined ? "–" : (c.last_ok ? "ok" : "failed") + " ×" + c.streak),
        el("td", {}, c.last_change_ms ? fmtTime(c.last_change_ms) : "–"),
        el("td", {}, c.target),
        el("td", { class: "details" }, c.output))));
  }

  let shownHolds = null;

  function renderMaintenanceNodes(s) {
    const select = $("#maintenance-node");
    if (!select) return;
    const appliances = [s.this_host, ...s.peers].filter((n) => n.kind === "appliance").map((n) => n.name);
    const chosen = select.value;
    if (select.options.length !== appliances.length) {
      select.replaceChildren(...appliances.map((n) => el("option", { value: n }, n)));
      if (appliances.includes(chosen)) select.value = chosen;
    }
    // Re-drawn only when the holds change: a status arrives every second,
    // and a row re-drawn under the pointer loses the click.
    const key = JSON.stringify(s.maintenance || []);
    if (key === shownHolds) return;
    shownHolds = key;
    $("#maintenance-nodes tbody").replaceChildren(...(s.maintenance || []).map((h) =>
      el("tr", { "data-node": h.node },
        el("td", {}, h.node), el("td", {}, fmtTime(h.until_ms)), el("td", {}, h.reason), el("td", {}, h.by),
        el("td", {}, el("button", { type: "button", class: "maintenance-end", onclick: () => endMaintenance(h.node) },
          "End maintenance")))));
  }

  async function loadWindows() {
    try {
      const m = await api("GET", "/api/v1/maintenance");
      $("#maintenance-windows tbody").replaceChildren(...m.windows.map((w) =>
        el("tr", { "data-window": w.id },
          el("td", {}, w.id), el("td", {}, w.node), el("td", {}, fmtTime(w.start_ms)), el("td", {}, fmtTime(w.end_ms)),
          el("td", {}, w.reason), el("td", {}, w.by),
          el("td", {}, el("button", { type: "button", onclick: () => cancelWindow(w.id) }, "Cancel")))));
    } catch (e) { say("#maintenance-status", errorText(e), "error"); }
  }

  async function maintenanceChange(label, fn, done) {
    say("#maintenance-status", label + "…", "busy");
    try {
      const r = await fn();
      say("#maintenance-status", done(r), "ok-msg");
      const s = await api("GET", "/api/v1/status");
      renderStatus(s);
    } catch (e) {
      say("#maintenance-status", errorText(e), "error");
    }
    loadWindows();
    loadHistory(null);
  }

  function endMaintenance(node) {
    maintenanceChange("Ending the maintenance of " + node,
      () => api("DELETE", "/api/v1/maintenance/" + encodeURIComponent(node)),
      (r) => "Maintenance of " + node + " ended." + (r.moved_to != null ? " The role went back to node " + r.moved_to + "." : ""));
  }

  function cancelWindow(id) {
    maintenanceChange("Cancelling window " + id, () => api("DELETE", "/api/v1/maintenance/windows/" + id),
      () => "Window " + id + " cancelled.");
  }

  function initMaintenance() {
    $("#maintenance-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const node = $("#maintenance-node").value;
      const reason = $("#maintenance-reason").value.trim();
      const minutes = Number($("#maintenance-minutes").value);
      const start = $("#maintenance-start").value;
      const force = $("#maintenance-force").checked;
      if (start) {
        const startMs = new Date(start).getTime();
        maintenanceChange("Scheduling a window for " + node,
          () => api("POST", "/api/v1/maintenance/windows",
            { node, reason, start_ms: startMs, end_ms: startMs + minutes * 60000 }),
          () => "Window scheduled for " + node + " from " + fmtTime(startMs) + ".");
        return;
      }
      const primary = lastStatus && lastStatus.primary != null &&
        [lastStatus.this_host, ...lastStatus.peers].find((n) => n.id === lastStatus.primary);
      let text = node + " is held out of service for " + minutes + " minutes and is never made primary meanwhile.";
      if (primary && primary.name === node) {
        text += " It is the primary: the role moves to the backup first (a planned swap)" +
          (force ? "; if it cannot, " + node + " stays primary, in maintenance, until it can." : "; if it cannot, nothing changes.");
      }
      if (!(await confirmDialog("Start maintenance of " + node + "?", text, null))) return;
      maintenanceChange("Starting the maintenance of " + node,
        () => api("POST", "/api/v1/maintenance", { node, reason, minutes, force }),
        (r) => "Maintenance of " + node + " started." +
          (r.moved_to != null ? " The role moved to node " + r.moved_to + "." : "") + (r.note ? " " + r.note : ""));
    });
    loadWindows();
  }

  function initFailover() {
    initMaintenance();
    $("#sync-now").addEventListener("click", () => {
      const verify = $("#sync-verify").checked;
      runAction($("#sync-now"), verify ? "Syncing and verifying" : "Syncing",
        () => api("POST", "/api/v1/relationship/sync", { verify }), syncText);
    });
    $("#swap").addEventListener("click", async () => {
      const s = lastStatus;
      if (!s) return;
      const pull = $("#swap-pull").checked;
      const force = $("#swap-force").checked;
      const peer = (s.peers.find((p) => p.kind === "appliance") || { name: "the peer" }).name;
      const here = s.this_host.name;
      const toBackup = s.this_host.role !== "backup";
      const newPrimary = toBackup ? peer : here;
      let text = (toBackup
        ? "This host (" + here + ") becomes the backup and " + peer + " becomes the primary."
        : "This host (" + here + ") becomes the primary and " + peer + " becomes the backup.") +
        " The shared IPs move to " + newPrimary + "; clients are served by " + newPrimary + " afterwards.";
      if (pull) text += " First a full data sync is pulled, so the new primary has every committed entry; writes pause until the swap is complete.";
      if (force && toBackup) text += " FORCED: if " + peer + " cannot be contacted, this host stands down anyway: it releases the shared IPs and accepts no writes, and NOBODY is primary until " + peer + " is made primary by hand (or this is undone with Become primary here).";
      else if (force) text += " FORCED: the swap goes ahead even if " + peer + " cannot be contacted (the epoch is raised; the other side must be made to agree when it is reachable again).";
      else text += " If " + peer + " cannot be contacted, nothing changes and the reason is shown.";
      const label = $("#swap").textContent;
      if (!(await confirmDialog(label + "?", text, null))) return;
      runAction($("#swap"), "Swapping roles", () => api("POST", "/api/v1/relationship/swap", { pull_sync: pull, force }),
        (r) => r.demoted ? "Stood down (epoch " + r.epoch + "): " + r.warning : "Swap done: node " + r.new_primary + " is the primary now (epoch " + r.epoch + ")" +
          (r.forced ? ", forced" : "") + (r.sync ? "; " + syncText(r.sync) : "") + " in " + r.duration_ms + " ms.");
    });
    $("#break").addEventListener("click", async () => {
      const text = "Each host becomes standalone with its own copy of the data; there is no backup and no failover afterwards. Setting up a relationship again means joining the other host anew.";
      if (!(await confirmDialog("Break the relationship?", text, "BREAK"))) return;
      runAction($("#break"), "Breaking the relationship", () => api("POST", "/api/v1/relationship/break"),
        (r) => "Relationship broken: this host is " + r.role + " (former peers: " + r.former_peers.join(", ") + ").");
    });
    $("#history-apply").addEventListener("click", () => loadHistory(null));
    $("#history-kind").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); loadHistory(null); } });
    $("#history-newest").addEventListener("click", () => loadHistory(null));
    $("#history-older").addEventListener("click", () => { if (historyNext !== null) loadHistory(historyNext); });

    api("GET", "/api/v1/status").then(renderStatus).catch((e) => say("#role-line", errorText(e), "error"));
    loadHistory(null);
    let lastHistoryRefresh = Date.now();
    if (window.EventSource) {
      const es = new EventSource("/api/v1/events");
      es.addEventListener("status", (ev) => {
        try { renderStatus(JSON.parse(ev.data)); } catch (_) { /* ignore a bad event */ }
        if (historyBefore === null && Date.now() - lastHistoryRefresh > 5000) {
          lastHistoryRefresh = Date.now();
          loadHistory(null);
        }
      });
      es.addEventListener("error", () => { $("#host-updated").textContent = "reconnecting…"; });
    }
  }

  // ---- settings page ------------------------------------------------------

  let settingsVersion = null;

  function sharedIpRow(ip) {
    const ifaces = Object.entries((ip && ip.interfaces) || {}).map(([n, i]) => n + "=" + i).join(", ");
    const tr = el("tr", { class: "shared-ip" },
      el("td", {}, el("input", { class: "sip-address", value: (ip && ip.address) || "", placeholder: "192.0.2.10/24" })),
      el("td", {}, el("input", { class: "sip-interfaces", value: ifaces, placeholder: "a=eth0, b=eth0" })),
      el("td", {}, el("button", { type: "button", onclick: () => tr.remove() }, "Remove")));
    return tr;
  }

  function fillSettings(s) {
    settingsVersion = s.version;
    $("#primary_timeout_ms").value = s.primary_timeout_ms;
    $("#auto_failover").checked = s.auto_failover;
    $("#test_ips").value = (s.test_ips || []).join("\n");
    $("#verify_interval_secs").value = s.verify_interval_secs;
    $("#bandwidth_limit_bps").value = s.bandwidth_limit_bps;
    $("#backup_operations").checked = s.backup_operations;
    $("#maintenance_max_minutes").value = s.maintenance_max_minutes;
    $("#maintenance_reminder_secs").value = s.maintenance_reminder_secs;
    $("#checks").value = (s.checks || []).length ? JSON.stringify(s.checks, null, 2) : "";
    $("#check_hold_down_secs").value = s.check_hold_down_secs;
    const fb = s.failback && s.failback.preferred ? s.failback : null;
    $("#failback_preferred").value = fb ? fb.preferred : "";
    $("#failback_delay_secs").value = fb ? fb.delay_secs : 60;
    $("#shared-ips tbody").replaceChildren(...(s.shared_ips || []).map(sharedIpRow));
    $("#settings-meta").textContent = "Version " + s.version +
      (s.updated_by ? ", last changed by " + s.updated_by + " at " + fmtTime(s.updated_at_ms) : " (defaults)") +
      ". Settings are replicated: both hosts use them.";
  }

  function clearFieldErrors(root) {
    root.querySelectorAll(".field-error.dynamic").forEach((x) => x.remove());
    root.querySelectorAll("[data-error]").forEach((x) => { x.textContent = ""; });
  }

  function showSettingsErrors(fields) {
    for (const [key, msg] of Object.entries(fields)) {
      let target = null;
      const m = key.match(/^shared_ips\[(\d+)\]\.(address|interfaces)/);
      if (m) {
        const row = document.querySelectorAll("#shared-ips tbody tr")[Number(m[1])];
        if (row) target = row.querySelector(m[2] === "address" ? ".sip-address" : ".sip-interfaces");
      }
      if (!target) {
        const base = key.replace(/\[.*$/, "").replace(/\..*$/, "");
        target = document.querySelector('[data-field="' + base + '"]');
      }
      const span = el("span", { class: "field-error dynamic", "data-for": key }, (key.includes("[") ? key + ": " : "") + msg);
      if (target) target.insertAdjacentElement("afterend", span);
      else $("#settings-status").append(span);
    }
  }

  function initSettings() {
    api("GET", "/api/v1/settings").then(fillSettings).catch((e) => say("#settings-meta", errorText(e), "error"));
    loadBanner();
    $("#add-shared-ip").addEventListener("click", () => $("#shared-ips tbody").append(sharedIpRow(null)));
    $("#settings-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = $("#settings-form");
      clearFieldErrors(form);
      const num = (id) => { const v = $(id).value.trim(); return v === "" ? -1 : Number(v); };
      const sharedIps = [...document.querySelectorAll("#shared-ips tbody tr")].map((tr) => {
        const interfaces = {};
        tr.querySelector(".sip-interfaces").value.split(",").map((x) => x.trim()).filter(Boolean).forEach((pair) => {
          const [n, i] = pair.split("=").map((x) => (x || "").trim());
          interfaces[n] = i || "";
        });
        return { address: tr.querySelector(".sip-address").value.trim(), interfaces };
      });
      const body = {
        primary_timeout_ms: num("#primary_timeout_ms"),
        auto_failover: $("#auto_failover").checked,
        test_ips: $("#test_ips").value.split(/[\n,]/).map((x) => x.trim()).filter(Boolean),
        verify_interval_secs: num("#verify_interval_secs"),
        bandwidth_limit_bps: num("#bandwidth_limit_bps"),
        backup_operations: $("#backup_operations").checked,
        shared_ips: sharedIps,
        maintenance_max_minutes: num("#maintenance_max_minutes"),
        maintenance_reminder_secs: num("#maintenance_reminder_secs"),
        check_hold_down_secs: num("#check_hold_down_secs"),
        failback: $("#failback_preferred").value.trim()
          ? { preferred: $("#failback_preferred").value.trim(), delay_secs: num("#failback_delay_secs") }
          : "off",
      };
      try {
        const text = $("#checks").value.trim();
        body.checks = text ? JSON.parse(text) : [];
        if (!Array.isArray(body.checks)) throw new Error("not a list");
      } catch (_) {
        showSettingsErrors({ checks: "must be a JSON list of checks" });
        say("#settings-status", "Not saved: fix the marked fields.", "error");
        return;
      }
      for (const k of ["primary_timeout_ms", "verify_interval_secs", "bandwidth_limit_bps",
        "maintenance_max_minutes", "maintenance_reminder_secs", "check_hold_down_secs"]) {
        if (!Number.isInteger(body[k]) || body[k] < 0) {
          showSettingsErrors({ [k]: "must be a whole number" });
          say("#settings-status", "Not saved: fix the marked fields.", "error");
          return;
        }
      }
      if (settingsVersion !== null) body.if_version = settingsVersion;
      say("#settings-status", "Saving…", "busy");
      try {
        const s = await api("PUT", "/api/v1/settings", body);
        fillSettings(s);
        say("#settings-status", "Saved (version " + s.version + ").", "ok-msg");
      } catch (e) {
        if (e instanceof ApiError && e.body.fields) {
          showSettingsErrors(e.body.fields);
          say("#settings-status", "Not saved: fix the marked fields.", "error");
        } else {
          say("#settings-status", errorText(e), "error");
        }
      }
    });
  }

  // ---- data page ----------------------------------------------------------

  async function initData() {
    const s = await loadBanner();
    const readOnly = !s || s.this_host.role !== "primary" && s.this_host.role !== "standalone";
    $("#data-mode").textContent = readOnly
      ? "Read-only: this host is not the primary; it shows its local replica."
      : "This host is the primary: keys can be changed here.";
    document.querySelectorAll(".write-only").forEach((x) => { x.hidden = readOnly; });
    async function loadConfig() {
      const q = new URLSearchParams({ stale: "true", limit: "500" });
      const prefix = $("#config-prefix").value.trim();
      if (prefix) q.set("prefix", prefix);
      try {
        const r = await api("GET", "/api/v1/config?" + q);
        $("#config tbody").replaceChildren(...r.items.map((c) => el("tr", {},
          el("td", { class: "mono" }, c.key), el("td", { class: "details" }, JSON.stringify(c.value)),
          el("td", {}, c.version), el("td", {}, c.updated_by), el("td", {}, fmtTime(c.updated_at_ms)),
          el("td", { hidden: readOnly }, el("button", {
            type: "button", class: "danger", onclick: async () => {
              try {
                await api("DELETE", "/api/v1/config/" + c.key.split("/").map(encodeURIComponent).join("/"));
                say("#config-status", "Deleted " + c.key + ".", "ok-msg");
                loadConfig();
              } catch (e) { say("#config-status", errorText(e), "error"); }
            },
          }, "Delete")))));
      } catch (e) { say("#config-status", errorText(e), "error"); }
    }
    $("#config-reload").addEventListener("click", loadConfig);
    $("#config-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const key = $("#config-key").value.trim();
      let value;
      try { value = JSON.parse($("#config-value").value); } catch (_) {
        say("#config-status", "The value is not valid JSON (strings need quotes).", "error");
        return;
      }
      try {
        const r = await api("PUT", "/api/v1/config/" + key.split("/").map(encodeURIComponent).join("/"), { value });
        say("#config-status", "Saved " + r.key + " (version " + r.version + ").", "ok-msg");
        loadConfig();
      } catch (e) { say("#config-status", errorText(e), "error"); }
    });
    loadConfig();
    try {
      const r = await api("GET", "/api/v1/sessions?stale=true&limit=500");
      $("#sessions tbody").replaceChildren(...r.items.map((x) => el("tr", {},
        el("td", { class: "mono" }, x.id), el("td", {}, x.owner), el("td", { class: "details" }, JSON.stringify(x.data)),
        el("td", {}, fmtTime(x.created_at_ms)), el("td", {}, fmtTime(x.expires_at_ms)))));
    } catch (e) { say("#config-status", errorText(e), "error"); }
  }

  // ---- setup page ---------------------------------------------------------

  async function initSetup() {
    const s = await loadBanner();
    let token = null;
    const thisApi = s ? (s.peers.length >= 0 && window.location.origin) : window.location.origin;
    $("#this-api").textContent = thisApi;
    if (s) {
      $("#setup-state").textContent = s.topology === "standalone"
        ? "This host is standalone: create a join token here to make it the primary, or join a primary from here (step 2)."
        : "This host is already in a relationship (" + s.topology + "); a token admits one more node (e.g. a witness).";
      if (s.this_host.role !== "standalone") $("#setup-join").disabled = true;
      if (s.this_host.peer_addr && !$("#setup-reverse").value) $("#setup-reverse").value = s.this_host.peer_addr;
    }
    $("#setup-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = $("#setup-form");
      clearFieldErrors(form);
      const body = {
        primary: $("#setup-primary").value.trim(),
        token: $("#setup-token").value.trim(),
        witness: $("#setup-witness").checked,
        discard_data: $("#setup-discard").checked,
        allow_same_site: $("#setup-same-site").checked,
      };
      const reverse = $("#setup-reverse").value.trim();
      if (reverse) body.reverse_address = reverse;
      const what = body.witness ? "witness" : "backup";
      if (!window.confirm("Join " + body.primary + " as its " + what + "? This node's own data is discarded and it restarts with the cluster's identity.")) return;
      say("#setup-status", "Joining…", "busy");
      $("#setup-join").disabled = true;
      try {
        const r = await api("POST", "/api/v1/relationship/setup", body);
        say("#setup-status", "Joined cluster " + r.cluster_id + " as node " + r.node_id + " (" + r.role +
          "); the primary reaches it at " + r.reverse_address + ". This node is restarting with the cluster's identity: log in again with a user of the primary.", "ok-msg");
        window.setTimeout(() => { window.location.href = "/login"; }, 5000);
      } catch (e) {
        if (e instanceof ApiError && e.body.fields) {
          for (const [k, v] of Object.entries(e.body.fields)) {
            const t = form.querySelector('[data-error="' + k + '"]');
            if (t) t.textContent = v;
          }
        }
        say("#setup-status", errorText(e), "error");
        $("#setup-join").disabled = false;
      }
    });
    function command() {
      if (!token) return "create a token first";
      const name = $("#join-name").value.trim() || "b";
      const peer = $("#join-peer").value.trim() || "HOST:PORT";
      const apiAddr = $("#join-api").value.trim() || "HOST:PORT";
      const site = $("#join-site").value.trim();
      return "tandem join --dir /var/lib/tandem --name " + name +
        ($("#token-kind").value === "witness" ? " --witness" : "") +
        (site ? " --site '" + site.replace(/'/g, "'\\''") + "'" : "") +
        " \\\n  --token " + token + " \\\n  --peer " + thisApi +
        " \\\n  --peer-listen " + peer + " --api-listen " + apiAddr +
        "\ntandem run --dir /var/lib/tandem";
    }
    ["#join-name", "#join-peer", "#join-api", "#join-site", "#token-kind"].forEach((id) =>
      $(id).addEventListener("input", () => { $("#join-command").textContent = command(); }));
    $("#token-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      say("#token-status", "Creating…", "busy");
      try {
        const r = await api("POST", "/api/v1/join-tokens", { kind: $("#token-kind").value, ttl_secs: Number($("#token-ttl").value) });
        token = r.token;
        say("#token-status", "Token (valid until " + fmtTime(r.expires_at_ms) + ", usable once): ", "ok-msg");
        $("#token-status").append(el("code", { id: "join-token" }, r.token));
        $("#join-command").textContent = command();
      } catch (e) { say("#token-status", errorText(e), "error"); }
    });
  }

  // ---- users page ---------------------------------------------------------

  async function initUsers() {
    const s = await loadBanner();
    if (s && s.this_host.role === "backup") {
      $("#users-mode").textContent = "This host is the backup: changes are made on the primary (see the link above).";
    }
    async function loadUsers() {
      try {
        const r = await api("GET", "/api/v1/users");
        $("#users tbody").replaceChildren(...r.items.map((u) => el("tr", { "data-user": u.name },
          el("td", {}, u.name + (u.name === me ? " (you)" : "")), el("td", {}, fmtTime(u.created_at_ms)),
          el("td", {}, fmtTime(u.updated_at_ms)), el("td", {}, u.updated_by),
          el("td", {}, el("button", {
            type: "button", class: "danger", onclick: async () => {
              if (!window.confirm("Remove user " + u.name + " and its API tokens?")) return;
              try {
                await api("DELETE", "/api/v1/users/" + encodeURIComponent(u.name));
                say("#user-status", "Removed " + u.name + ".", "ok-msg");
                loadUsers(); loadTokens();
              } catch (e) { say("#user-status", errorText(e), "error"); }
            },
          }, "Remove")))));
      } catch (e) { say("#user-status", errorText(e), "error"); }
    }
    async function loadTokens() {
      try {
        const r = await api("GET", "/api/v1/api-tokens");
        $("#tokens tbody").replaceChildren(...r.items.map((t) => el("tr", {},
          el("td", { class: "mono" }, t.id), el("td", {}, t.user), el("td", {}, fmtTime(t.created_at_ms)),
          el("td", {}, el("button", {
            type: "button", class: "danger", onclick: async () => {
              try {
                await api("DELETE", "/api/v1/api-tokens/" + encodeURIComponent(t.id));
                say("#token-status", "Revoked " + t.id + ".", "ok-msg");
                loadTokens();
              } catch (e) { say("#token-status", errorText(e), "error"); }
            },
          }, "Revoke")))));
      } catch (e) { say("#token-status", errorText(e), "error"); }
    }
    function fieldErrors(form, e) {
      if (e instanceof ApiError && e.body.fields) {
        for (const [k, v] of Object.entries(e.body.fields)) {
          const t = form.querySelector('[data-error="' + k + '"]');
          if (t) t.textContent = v;
        }
      }
    }
    $("#user-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = $("#user-form");
      clearFieldErrors(form);
      try {
        const u = await api("POST", "/api/v1/users", { name: $("#new-user").value.trim(), password: $("#new-user-password").value });
        say("#user-status", "Added " + u.name + ".", "ok-msg");
        form.reset();
        loadUsers();
      } catch (e) { fieldErrors(form, e); say("#user-status", errorText(e), "error"); }
    });
    $("#password-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = $("#password-form");
      clearFieldErrors(form);
      if ($("#new-password").value !== $("#new-password2").value) {
        say("#password-status", "The new passwords differ.", "error");
        return;
      }
      try {
        await api("POST", "/api/v1/account/password", { old_password: $("#old-password").value, new_password: $("#new-password").value });
        say("#password-status", "Password changed.", "ok-msg");
        form.reset();
      } catch (e) { fieldErrors(form, e); say("#password-status", errorText(e), "error"); }
    });
    $("#create-api-token").addEventListener("click", async () => {
      try {
        const t = await api("POST", "/api/v1/api-tokens", {});
        say("#token-status", "New token for " + t.user + " (shown once, copy it now): ", "ok-msg");
        $("#token-status").append(el("code", { id: "new-api-token" }, t.token));
        loadTokens();
      } catch (e) { say("#token-status", errorText(e), "error"); }
    });
    loadUsers();
    loadTokens();
  }

  const init = { failover: initFailover, settings: initSettings, data: initData, setup: initSetup, users: initUsers };
  if (init[page]) init[page]();
})();
