// qqbot-gateway status page: polls status.json once a second and draws it.
// No libraries, no network but this server. Every chart is inline SVG with its numbers as text.
"use strict";
(function () {
  const POLL_MS = 1000;
  const HIDDEN_POLL_MS = 5000; // a background tab polls less
  const TIMEOUT_MS = 4000;
  const SVG = "http://www.w3.org/2000/svg";

  const CONDITIONS = {
    live: { label: "Live", icon: "\u2714" },
    degraded: { label: "Degraded", icon: "\u26A0" },
    zombie: { label: "Zombie", icon: "\u2620" },
    reconnecting: { label: "Reconnecting", icon: "\u21BB" },
    down: { label: "Down", icon: "\u2716" },
    stopped: { label: "Stopped", icon: "\u25A0" },
    starting: { label: "Starting", icon: "\u2026" },
    standby: { label: "Standby", icon: "\u23F8" },
  };

  // --- tiny DOM helpers ---------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
  }
  // Make `old` look like `nu` while keeping the nodes that did not change (focus, selection
  // and a screen reader's place survive the once-a-second update).
  function morph(old, nu) {
    if (old.nodeType !== nu.nodeType || old.nodeName !== nu.nodeName) {
      old.replaceWith(nu);
      return;
    }
    if (old.nodeType === Node.TEXT_NODE) {
      if (old.data !== nu.data) old.data = nu.data;
      return;
    }
    for (const a of Array.from(old.attributes)) {
      if (!nu.hasAttribute(a.name)) old.removeAttribute(a.name);
    }
    for (const a of Array.from(nu.attributes)) {
      if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
    }
    const oc = Array.from(old.childNodes);
    const nc = Array.from(nu.childNodes);
    nc.forEach((child, i) => (i < oc.length ? morph(oc[i], child) : old.appendChild(child)));
    for (let i = nc.length; i < oc.length; i++) oc[i].remove();
  }
  // --- formatting ---------------------------------------------------------------------
  function dur(sec) {
    if (sec === null || sec === undefined) return "never";
    if (sec < 1) return Math.round(sec * 1000) + " ms";
    if (sec < 10) return sec.toFixed(1) + " s";
    if (sec < 60) return Math.round(sec) + " s";
    if (sec < 3600) {
      const rest = Math.floor(sec % 60);
      return Math.floor(sec / 60) + " min" + (rest ? " " + rest + " s" : "");
    }
    if (sec < 86400) return Math.floor(sec / 3600) + " h " + Math.floor((sec % 3600) / 60) + " min";
    return Math.floor(sec / 86400) + " d " + Math.floor((sec % 86400) / 3600) + " h";
  }
  function ago(sec) {
    return sec === null || sec === undefined ? "never" : dur(sec) + " ago";
  }
  function ms(sec) {
    if (sec === null || sec === undefined) return "n/a";
    return sec < 1 ? (sec * 1000).toFixed(sec < 0.01 ? 1 : 0) + " ms" : sec.toFixed(2) + " s";
  }
  function clock(unix) {
    return new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
  }
  function num(n, digits) {
    return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits || 0 });
  }

  // --- charts -------------------------------------------------------------------------
  // points: [[seconds_ago, value], ...] oldest first. Returns a <figure> with an SVG
  // sparkline (role=img, labelled by the text summary shown under it).
  function sparkline(id, title, points, opts) {
    const W = 300;
    const H = 64;
    const win = opts.window;
    const threshold = opts.threshold;
    let max = 0;
    for (const p of points) max = Math.max(max, p[1]);
    if (threshold) max = Math.max(max, threshold * 1.15);
    if (max <= 0) max = opts.floor || 1;
    const x = (a) => (W * (win - Math.min(win, a))) / win;
    const y = (v) => H - 2 - ((H - 4) * v) / max;
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H}`,
      preserveAspectRatio: "none",
      class: "spark",
      role: "img",
      "aria-labelledby": `${id}-t ${id}-d`,
      focusable: "false",
    });
    svg.appendChild(s("line", { x1: 0, y1: H - 1, x2: W, y2: H - 1, class: "axis" }));
    for (const m of opts.markers || []) {
      if (m.ago <= win) {
        svg.appendChild(
          s("line", { x1: x(m.ago), y1: 0, x2: x(m.ago), y2: H, class: "marker " + (m.kind || "") })
        );
      }
    }
    if (threshold) {
      svg.appendChild(
        s("line", { x1: 0, y1: y(threshold), x2: W, y2: y(threshold), class: "threshold" })
      );
    }
    if (points.length > 0) {
      const coords = points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
      const first = x(points[0][0]).toFixed(1);
      const last = x(points[points.length - 1][0]).toFixed(1);
      svg.appendChild(
        s("path", { d: `M${first},${H - 1}L${coords.join("L")}L${last},${H - 1}Z`, class: "area" })
      );
      svg.appendChild(s("polyline", { points: coords.join(" "), class: "line" }));
      if (opts.dots) {
        for (const c of coords.slice(-60)) {
          const [cx, cy] = c.split(",");
          svg.appendChild(s("circle", { cx, cy, r: 1.6, class: "dot" }));
        }
      }
    }
    return h(
      "figure",
      { class: "chart", id },
      h(
        "figcaption",
        null,
        h("span", { id: `${id}-t`, class: "chart-title" }, title),
        h("span", { class: "chart-max", "aria-hidden": "true" }, "scale 0\u2013" + opts.format(max))
      ),
      svg,
      h(
        "div",
        { class: "chart-axis", "aria-hidden": "true" },
        h("span", null, dur(win) + " ago"),
        h("span", null, "now")
      ),
      h("p", { id: `${id}-d`, class: "chart-text" }, opts.text)
    );
  }

  // --- sections -----------------------------------------------------------------------
  function checkList(checks) {
    return h(
      "ul",
      { class: "checks" },
      checks.map((c) =>
        h(
          "li",
          { class: c.ok ? "ok" : "fail" },
          h("span", { class: "mark", "aria-hidden": "true" }, c.ok ? "\u2714" : "\u2716"),
          h("span", { class: "visually-hidden" }, c.ok ? "passing: " : "failing: "),
          h("code", null, c.name),
          " ",
          h("span", { class: "reason" }, c.reason)
        )
      )
    );
  }

  function probe(name, verdict) {
    const ok = verdict.status === "ok";
    return h(
      "article",
      { class: "probe " + (ok ? "ok" : "fail"), "aria-labelledby": `probe-${name}` },
      h(
        "h3",
        { id: `probe-${name}` },
        h("a", { href: `${name}?verbose` }, "/" + name),
        " ",
        h("span", { class: "pill" }, `${verdict.http_status} ${ok ? "OK" : "failing"}`)
      ),
      checkList(verdict.checks)
    );
  }

  function fact(term, value, extra) {
    return [h("dt", null, term), h("dd", extra || null, value)];
  }

  function meter(value, max) {
    const pct = Math.min(100, (100 * value) / Math.max(1, max));
    return h(
      "span",
      { class: "meter" + (value >= max ? " full" : value > 0 ? " some" : "") },
      h("span", { class: "meter-fill", style: null, "data-pct": Math.round(pct) })
    );
  }

  function layerList(layers) {
    return h(
      "ul",
      { class: "layers" },
      layers.map((l) => {
        const state = l.state || (!l.enabled ? "off" : l.armed ? "armed" : "idle");
        const word = { idle: "not armed" }[state] || state;
        return h(
          "li",
          { class: "layer " + state, "data-layer": l.name },
          h("span", { class: "layer-state" }, word),
          h("span", { class: "layer-title" }, l.title),
          h("span", { class: "layer-detail muted" }, l.detail)
        );
      })
    );
  }

  function incidentItem(i) {
    const cause = i.zombie
      ? [
          h("strong", { class: "zombie-tag" }, "zombie connection"),
          ` detected by ${i.zombie.reason}: ${i.zombie.unacked} heartbeat(s) unacknowledged, ` +
            `silent for ${dur(i.zombie.silent_for_seconds)}`,
        ]
      : [h("strong", null, "disconnected: " + i.reason)];
    let outcome;
    if (i.fatal) {
      outcome = h("p", { class: "outcome fatal" }, "Stopped for good: " + i.fatal);
    } else if (i.recovered) {
      const how = i.recovered_by === "resume" ? "resumed" : "new session (identify)";
      const replay = i.replayed ? `, ${i.replayed} event(s) replayed` : "";
      outcome = h(
        "p",
        { class: "outcome recovered" },
        `Recovered: ${how} after ${dur(i.recovery_seconds)}` +
          (i.attempts ? ` (${i.attempts} attempt${i.attempts === 1 ? "" : "s"})` : "") +
          replay
      );
    } else {
      const last = i.last_attempt_reason ? `; last attempt: ${i.last_attempt_reason}` : "";
      outcome = h(
        "p",
        { class: "outcome open" },
        `Not recovered yet: down for ${dur(i.down_for_seconds)}, ` +
          `${i.attempts} attempt${i.attempts === 1 ? "" : "s"}${last}`
      );
    }
    const code = i.close_code !== null ? ` (close code ${i.close_code})` : "";
    const lived = i.connection_age_seconds !== null
      ? `, connection had lived ${dur(i.connection_age_seconds)}` : "";
    return h(
      "li",
      {
        class: "incident " + (i.fatal ? "fatal" : i.recovered ? "recovered" : "open"),
        "data-reason": i.reason,
        "data-zombie": i.zombie ? i.zombie.reason : null,
      },
      h(
        "p",
        { class: "when" },
        h("time", { datetime: new Date(i.at * 1000).toISOString() }, clock(i.at)),
        h("span", { class: "muted" }, ` (${ago(i.ago_seconds)})`),
        " \u2014 reason ",
        h("code", { class: "reason-code" }, i.reason),
        code
      ),
      h("p", { class: "cause" }, cause, lived),
      i.detail && i.detail !== i.reason ? h("p", { class: "detail muted" }, i.detail) : null,
      outcome
    );
  }

  function rateTable(id, label, rows, caption, empty) {
    if (!rows.length) return h("p", { class: "muted" }, empty);
    return h(
      "table",
      { class: "types", id },
      h("caption", null, caption),
      h(
        "thead",
        null,
        h(
          "tr",
          null,
          h("th", { scope: "col" }, label),
          h("th", { scope: "col", class: "n" }, "Per min"),
          h("th", { scope: "col", class: "n" }, "Total")
        )
      ),
      h(
        "tbody",
        null,
        rows.map((r) =>
          h(
            "tr",
            null,
            h("th", { scope: "row" }, h("code", null, r.name)),
            h("td", { class: "n" }, num(r.per_minute, 1)),
            h("td", { class: "n" }, num(r.total))
          )
        )
      )
    );
  }

  function typeTable(id, events, rateWindow) {
    return rateTable(
      id,
      "Type",
      events.by_type.map((t) => ({ name: t.type, per_minute: t.per_minute, total: t.total })),
      `Events dispatched by type; rates over the last ${rateWindow} s.`,
      "No events dispatched yet."
    );
  }

  // A young process draws its whole life across the chart (at least 30 s), then the window.
  function chartWindow(doc) {
    return Math.min(doc.window_seconds, Math.max(30, Math.ceil(doc.service.uptime_seconds / 10) * 10));
  }

  function shardCard(doc, sh) {
    const id = `shard-${sh.shard}`;
    const cond = CONDITIONS[sh.condition] || { label: sh.condition, icon: "?" };
    const hb = sh.heartbeat;
    const rtt = hb.rtt_seconds;
    const win = chartWindow(doc);
    const series = sh.series;
    const markers = sh.incidents.map((i) => ({ ago: i.ago_seconds, kind: i.zombie ? "zombie" : "" }));
    const idleLimit = hb.idle_deadline_seconds;
    const ages = series.last_frame_age_seconds;
    const maxAge = ages.reduce((m, p) => Math.max(m, p[1]), 0);
    const evs = series.events_per_second;
    const peakRate = evs.reduce((m, p) => Math.max(m, p[1]), 0);
    const depth = series.handler_queue_depth;
    const peakDepth = depth.reduce((m, p) => Math.max(m, p[1]), 0);
    const h_ = sh.handlers;
    const minutes = dur(win);
    const zombieNote = sh.incidents.some((i) => i.zombie && !i.recovered);
    return h(
      "section",
      {
        class: "shard",
        id,
        "data-condition": sh.condition,
        "data-state": sh.state,
        "aria-labelledby": `${id}-h`,
      },
      h(
        "h2",
        { id: `${id}-h` },
        `Shard ${sh.shard} `,
        h(
          "span",
          { class: "badge " + sh.condition },
          h("span", { "aria-hidden": "true" }, cond.icon + " "),
          cond.label
        )
      ),
      h("p", { class: "condition-reason" }, sh.condition_reason),
      zombieNote
        ? h(
            "p",
            { class: "banner zombie" },
            "A zombie connection was detected and torn down; the shard is reconnecting."
          )
        : null,
      h(
        "dl",
        { class: "facts" },
        fact("State", `${sh.state} for ${dur(sh.state_for_seconds)}`),
        fact(
          "Session",
          sh.session.live
            ? `live for ${dur(sh.session.live_for_seconds)} (${sh.session.established_by === "resume" ? "resumed" : "identified"})`
            : "not live"
        ),
        fact(
          "Unacked heartbeats",
          [
            `${hb.unacked} of ${hb.unacked_threshold} `,
            meter(hb.unacked, hb.unacked_threshold),
            h("span", { class: "visually-hidden" }, ` (zombie at ${hb.unacked_threshold})`),
          ],
          { class: hb.unacked >= hb.unacked_threshold ? "bad" : hb.unacked > 0 ? "warn" : "" }
        ),
        fact(
          "Heartbeat",
          hb.interval_seconds ? `every ${dur(hb.interval_seconds)}, last ACK ${ago(hb.last_ack_ago_seconds)}` : "no Hello yet"
        ),
        fact("Last frame", ago(sh.last_frame_ago_seconds)),
        fact(
          "Connection",
          sh.connection.open
            ? `open for ${dur(sh.connection.open_for_seconds)}`
            : "closed" +
                (sh.connection.next_attempt_in_seconds !== null
                  ? `, next attempt in ${dur(sh.connection.next_attempt_in_seconds)}`
                  : "")
        ),
        fact("Events", `${num(sh.events.per_second, 1)}/s now, ${num(sh.events.total)} total`),
        fact(
          "Handler queue",
          `${h_.queue_depth}` + (h_.queue_capacity ? ` of ${h_.queue_capacity}` : "")
        ),
        fact(
          "Handler errors",
          `${num(h_.errors_total)} of ${num(h_.completed_total)} handled`,
          { class: h_.errors_total ? "warn" : "" }
        )
      ),
      h(
        "div",
        { class: "charts" },
        sparkline(`${id}-rtt`, "Heartbeat round trip", series.heartbeat_rtt_seconds, {
          window: win,
          format: ms,
          floor: 0.01,
          dots: true,
          markers,
          text: rtt.last === null
            ? `No heartbeat acknowledged in the last ${minutes}.`
            : `Last ${ms(rtt.last)}; over the last ${minutes}: median ${ms(rtt.median)}, ` +
              `min ${ms(rtt.min)}, max ${ms(rtt.max)}, ${series.heartbeat_rtt_seconds.length} ACKs.`,
        }),
        sparkline(`${id}-age`, "Last-frame age", ages, {
          window: win,
          format: ms,
          floor: 1,
          threshold: idleLimit,
          markers,
          text: `Now ${ago(sh.last_frame_ago_seconds).replace(" ago", "")} since the last frame; ` +
            `peak ${ms(maxAge)} over the last ${minutes}` +
            (idleLimit ? `; a zombie at ${ms(idleLimit)} (dashed line).` : "."),
        }),
        sparkline(`${id}-rate`, "Events per second", evs, {
          window: win,
          format: (v) => num(v, 1),
          floor: 1,
          markers,
          text: `${num(sh.events.per_second, 1)} per second now; peak ${num(peakRate)} per second over the last ${minutes}.`,
        }),
        sparkline(`${id}-queue`, "Handler queue depth", depth, {
          window: win,
          format: (v) => num(v),
          floor: 1,
          text: `${h_.queue_depth} waiting now` +
            (h_.queue_capacity ? ` (capacity ${h_.queue_capacity})` : "") +
            `; peak ${num(peakDepth)} over the last ${minutes}.`,
        })
      ),
      h(
        "div",
        { class: "cols" },
        h(
          "div",
          { class: "panel-stack" },
          h(
            "section",
            { class: "panel", "aria-labelledby": `${id}-tl` },
            h("h3", { id: `${id}-tl` }, "Disconnects"),
            sh.incidents.length
              ? h("ol", { class: "timeline", reversed: true }, sh.incidents.map(incidentItem))
              : h("p", { class: "muted" }, "No disconnect since start.")
          ),
          handlerErrors(id, h_)
        ),
        h(
          "section",
          { class: "panel", "aria-labelledby": `${id}-ll` },
          h("h3", { id: `${id}-ll` }, "Liveness layers"),
          layerList(sh.liveness_layers)
        ),
        h(
          "section",
          { class: "panel", "aria-labelledby": `${id}-ev` },
          h("h3", { id: `${id}-ev` }, "Events by type"),
          typeTable(`${id}-types`, sh.events, doc.rate_window_seconds),
          sh.events.duplicates_dropped
            ? h("p", { class: "muted" }, `${num(sh.events.duplicates_dropped)} replayed duplicate(s) dropped.`)
            : null
        )
      )
    );
  }

  function handlerErrors(id, h_) {
    return h(
      "section",
      { class: "panel", "aria-labelledby": `${id}-he` },
      h("h3", { id: `${id}-he` }, "Handler errors"),
      h_.errors_total
        ? [
            h(
              "ul",
              { class: "plain" },
              h_.errors_by_type.map((e) => h("li", null, h("code", null, e.type), `: ${num(e.count)}`))
            ),
            h_.last_error
              ? h(
                  "p",
                  { class: "muted" },
                  `Last: ${h_.last_error.error_type} in ${h_.last_error.handler} ` +
                    `(${h_.last_error.event_type}), ${ago(h_.last_error.ago_seconds)}. ` +
                    "Messages are in the logs, not here."
                )
              : null,
          ]
        : h("p", { class: "muted" }, "No handler error.")
    );
  }

  // The callback view (webhook transport): the receiver instead of a connection.
  function webhookView(doc) {
    const w = doc.webhook;
    const sh = doc.shards[0];
    const id = "webhook";
    const cond = CONDITIONS[w.condition] || { label: w.condition, icon: "?" };
    const win = chartWindow(doc);
    const minutes = dur(win);
    const ack = w.ack_seconds;
    const reqs = w.series.requests_per_second;
    const peakReqs = reqs.reduce((m, p) => Math.max(m, p[1]), 0);
    const h_ = sh ? sh.handlers : null;
    return h(
      "section",
      { class: "shard", id, "data-condition": w.condition, "aria-labelledby": `${id}-h` },
      h(
        "h2",
        { id: `${id}-h` },
        "Webhook callbacks ",
        h(
          "span",
          { class: "badge " + w.condition },
          h("span", { "aria-hidden": "true" }, cond.icon + " "),
          cond.label
        )
      ),
      h("p", { class: "condition-reason" }, w.condition_reason),
      h(
        "dl",
        { class: "facts" },
        fact(
          "Receiver",
          w.listening ? `listening for ${dur(w.listening_for_seconds)}` : w.stopped ? `stopped (${w.stopped})` : "not listening"
        ),
        w.url ? fact("Listening on", h("code", null, w.url)) : null,
        fact("Last valid callback", ago(w.last_callback_ago_seconds)),
        fact("Last request", ago(w.last_request_ago_seconds)),
        fact("URL validation (op 13)", ago(w.validated_ago_seconds)),
        fact("Requests", num(w.requests_total)),
        fact("Signature failures", num(w.signature_failures_total), {
          class: w.signature_failures_total ? "warn" : "",
        }),
        sh ? fact("Events", `${num(sh.events.per_second, 1)}/s now, ${num(sh.events.total)} total`) : null,
        h_ ? fact("Handler queue", `${h_.queue_depth}` + (h_.queue_capacity ? ` of ${h_.queue_capacity}` : "")) : null
      ),
      h(
        "div",
        { class: "charts" },
        sparkline(`${id}-ack`, "Time to ACK", w.series.ack_seconds, {
          window: win,
          format: ms,
          floor: 0.01,
          dots: true,
          text: ack.last === null
            ? `No signed callback in the last ${minutes}.`
            : `Last ${ms(ack.last)}; over the last ${minutes}: median ${ms(ack.median)}, max ${ms(ack.max)}.`,
        }),
        sparkline(`${id}-rate`, "Callbacks per second", reqs, {
          window: win,
          format: (v) => num(v, 1),
          floor: 1,
          markers: w.series.rejected_per_second.filter((p) => p[1] > 0).map((p) => ({ ago: p[0], kind: "zombie" })),
          text: `Peak ${num(peakReqs)} per second over the last ${minutes}; ` +
            `${num(w.signature_failures_total)} refused for their signature (red lines).`,
        }),
        sh
          ? sparkline(`${id}-queue`, "Handler queue depth", sh.series.handler_queue_depth, {
              window: win,
              format: (v) => num(v),
              floor: 1,
              text: `${h_.queue_depth} waiting now` + (h_.queue_capacity ? ` (capacity ${h_.queue_capacity})` : "") + ".",
            })
          : null
      ),
      h(
        "div",
        { class: "cols" },
        h(
          "section",
          { class: "panel", "aria-labelledby": `${id}-oc` },
          h("h3", { id: `${id}-oc` }, "Requests by outcome"),
          rateTable(`${id}-outcomes`, "Outcome", w.by_outcome.map((o) => ({ name: o.outcome, per_minute: o.per_minute, total: o.total })),
            `Callback requests by outcome; rates over the last ${doc.rate_window_seconds} s.`, "No request yet.")
        ),
        sh
          ? h(
              "section",
              { class: "panel", "aria-labelledby": `${id}-ev` },
              h("h3", { id: `${id}-ev` }, "Events by type"),
              typeTable(`${id}-types`, sh.events, doc.rate_window_seconds)
            )
          : null,
        h_ ? handlerErrors(id, h_) : null
      )
    );
  }

  // --- the loop -----------------------------------------------------------------------
  const announced = new Map();
  let lastOk = null;
  let lastDoc = null;
  let failures = 0;

  function announce(text) {
    const el = document.getElementById("announcer");
    el.textContent = text;
  }

  function announceChanges(doc) {
    const msgs = [];
    const verdicts = `${doc.health.healthz.status}/${doc.health.readyz.status}`;
    if (announced.has("verdict") && announced.get("verdict") !== verdicts) {
      msgs.push(overallText(doc));
    }
    announced.set("verdict", verdicts);
    if (doc.webhook) {
      const w = doc.webhook;
      if (announced.has("webhook") && announced.get("webhook") !== w.condition) {
        const cond = CONDITIONS[w.condition] || { label: w.condition };
        msgs.push(`Webhook receiver: ${cond.label}. ${w.condition_reason}.`);
      }
      announced.set("webhook", w.condition);
    }
    for (const sh of doc.webhook ? [] : doc.shards) {
      const key = `shard-${sh.shard}`;
      const latest = sh.incidents.length ? `${sh.incidents[0].id}:${sh.incidents[0].recovered}` : "";
      const value = `${sh.condition}|${latest}`;
      if (announced.has(key) && announced.get(key) !== value) {
        const cond = CONDITIONS[sh.condition] || { label: sh.condition };
        msgs.push(`Shard ${sh.shard}: ${cond.label}. ${sh.condition_reason}.`);
      }
      announced.set(key, value);
    }
    if (msgs.length) announce(msgs.join(" "));
  }

  function overallText(doc) {
    const hz = doc.health.healthz;
    const rz = doc.health.readyz;
    const failing = [...hz.checks, ...rz.checks].filter((c) => !c.ok);
    if (hz.status === "ok" && rz.status === "ok") return "Healthy and ready.";
    const head = hz.status === "ok" ? "Healthy, not ready" : "Unhealthy";
    const why = failing.slice(0, 2).map((c) => `${c.name}: ${c.reason}`).join("; ");
    return `${head}: ${why}${failing.length > 2 ? "; \u2026" : ""}`;
  }

  function render(doc) {
    const hz = doc.health.healthz;
    const rz = doc.health.readyz;
    const overall = document.getElementById("overall");
    overall.dataset.verdict = hz.status !== "ok" ? "fail" : rz.status !== "ok" ? "warn" : "ok";
    overall.textContent = overallText(doc);
    const svc = doc.service;
    document.getElementById("service").textContent =
      `${svc.name} ${svc.version} \u00B7 ${svc.transport} \u00B7 up ${dur(svc.uptime_seconds)}` +
      (doc.event_loop.lag_seconds !== null
        ? ` \u00B7 event loop lag ${ms(doc.event_loop.lag_seconds)}` : "");
    const probes = document.getElementById("probes-body");
    morph(probes, h("div", { id: "probes-body", class: "probes" }, probe("healthz", hz), probe("readyz", rz)));
    const shards = document.getElementById("shards");
    const views =
      svc.transport === "webhook" && doc.webhook
        ? [webhookView(doc)]
        : doc.shards.map((sh) => shardCard(doc, sh));
    morph(shards, h("div", { id: "shards" }, views));
    applyMeters();
    const bad = doc.shards.filter((sh) => sh.condition !== "live").length;
    document.title = (bad ? `(${bad}) ` : "") + "qqbot-gateway status";
    announceChanges(doc);
  }

  // Meter widths through the CSSOM (the page's CSP allows no inline style attributes).
  function applyMeters() {
    for (const el of document.querySelectorAll(".meter-fill")) {
      el.style.width = el.dataset.pct + "%";
    }
  }

  function freshness() {
    const el = document.getElementById("freshness");
    if (lastOk === null) return;
    const age = (Date.now() - lastOk) / 1000;
    document.body.classList.toggle("stale", failures > 0);
    if (failures === 0) {
      el.className = "freshness muted";
      el.textContent = `Updated ${clock(lastDoc.generated_at)}; live, once a second.`;
    } else {
      el.className = "freshness stale";
      el.textContent =
        `No answer from the gateway process for ${dur(age)} (last update ` +
        `${clock(lastDoc.generated_at)}): the figures below are stale, the process may be down.`;
      const overall = document.getElementById("overall");
      overall.dataset.verdict = "unknown";
      overall.textContent = "Unknown: the gateway process does not answer.";
    }
  }

  let pending = null;
  let inflight = false;

  async function poll() {
    pending = null;
    inflight = true;
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
    try {
      const resp = await fetch("status.json", { cache: "no-store", signal: ctrl.signal });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const doc = await resp.json();
      if (doc.version !== 1) throw new Error("unsupported status document version " + doc.version);
      lastDoc = doc;
      lastOk = Date.now();
      failures = 0;
      render(doc);
    } catch (err) {
      failures += 1;
      if (lastOk === null) {
        document.getElementById("overall").textContent =
          "Cannot read status.json: " + (err && err.message ? err.message : err);
        document.getElementById("overall").dataset.verdict = "unknown";
      }
      if (failures === 3) announce("The status page lost contact with the gateway process.");
    } finally {
      clearTimeout(timer);
      inflight = false;
      freshness();
      pending = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
    }
  }

  // Back in the foreground: update now rather than at the end of the slow background wait.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !inflight && pending !== null) {
      clearTimeout(pending);
      poll();
    }
  });
  poll();
})();
