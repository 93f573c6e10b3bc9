// The dashboard: per slot and city, posterior curves, traffic share and CTR over time (IST).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let tenant = null, banners = [];

  function color(banner) { return sb.COLORS[Math.max(0, banners.indexOf(banner)) % sb.COLORS.length]; }

  function legend(target) {
    target.replaceChildren(...banners.map((b) => sb.el("span", { style: `--c:${color(b)}` }, b)));
  }

  function curveChart(city) {
    const W = 360, H = 150, P = 22;
    const lo = Math.max(0, Math.min(...city.banners.map((b) => b.lower95)) * 0.8);
    const hi = Math.min(1, Math.max(...city.banners.map((b) => b.upper95)) * 1.2 + 1e-4);
    const xs = Array.from({ length: 160 }, (_, i) => lo + (hi - lo) * (i + 0.5) / 160);
    const curves = city.banners.map((b) => ({ b, ys: xs.map((x) => sb.betaPdf(x, b.alpha, b.beta)) }));
    const ymax = Math.max(1e-9, ...curves.flatMap((c) => c.ys.filter(Number.isFinite)));
    const sx = (x) => P + (W - 2 * P) * (x - lo) / (hi - lo);
    const sy = (y) => H - P - (H - 2 * P) * y / ymax;
    const g = sb.svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", class: "curves", "data-city": city.city });
    g.append(sb.svg("line", { x1: P, x2: W - P, y1: H - P, y2: H - P, stroke: "#999" }));
    for (let i = 0; i <= 4; i++) {
      const x = lo + (hi - lo) * i / 4;
      g.append(sb.svg("text", { x: sx(x), y: H - 6, "text-anchor": "middle" }, sb.pct(x, 1)));
    }
    for (const c of curves) {
      const d = xs.map((x, i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(Number.isFinite(c.ys[i]) ? c.ys[i] : 0).toFixed(1)}`).join("");
      g.append(sb.svg("path", { d, fill: "none", stroke: color(c.b.banner), "stroke-width": 1.5 },
        sb.svg("title", {}, `${c.b.banner}: mean ${sb.pct(c.b.mean)}, P(best) ${sb.pct(c.b.p_best, 1)}`)));
    }
    const best = city.banners.reduce((a, b) => (b.p_best > a.p_best ? b : a));
    const imp = city.banners.reduce((s, b) => s + b.impressions, 0);
    return sb.el("div", {},
      sb.el("div", { class: "chart-title" }, city.city === "*" ? "all cities" : city.city),
      sb.el("div", { class: "meta" }, `${imp.toLocaleString("en-IN")} impressions · leader ${best.banner} (P(best) ${sb.pct(best.p_best, 1)})`),
      g);
  }

  function trafficChart(cities) {
    const rows = cities.filter((c) => c.city !== "*").map((c) => ({
      city: c.city,
      imp: c.banners.reduce((s, b) => s + b.impressions, 0),
      clk: c.banners.reduce((s, b) => s + b.clicks, 0),
    })).sort((a, b) => b.imp - a.imp);
    const total = rows.reduce((s, r) => s + r.imp, 0) || 1;
    const table = sb.el("table", { id: "traffic-table" }, sb.el("thead", {}, sb.el("tr", {},
      sb.el("th", {}, "city"), sb.el("th", { class: "num" }, "impressions"), sb.el("th", { class: "num" }, "share"),
      sb.el("th", { class: "num" }, "CTR"), sb.el("th", {}, ""))));
    const body = sb.el("tbody");
    for (const r of rows) {
      body.append(sb.el("tr", {}, sb.el("td", {}, r.city), sb.el("td", { class: "num" }, r.imp.toLocaleString("en-IN")),
        sb.el("td", { class: "num" }, sb.pct(r.imp / total, 1)), sb.el("td", { class: "num" }, sb.pct(r.clk / Math.max(1, r.imp))),
        sb.el("td", { style: "width:40%" }, sb.el("div", { class: "bar", style: `width:${100 * r.imp / total}%` }))));
    }
    table.append(body);
    return table;
  }

  function seriesChart(series) {
    const W = 1100, H = 260, P = 40;
    const pts = series.points;
    if (!pts.length) return sb.el("p", { class: "meta" }, "No counts in the store yet.");
    const ctr = banners.map((_, i) => pts.map((p) => (p.impressions[i] ? p.clicks[i] / p.impressions[i] : null)));
    const smooth = ctr.map((ys, i) => ys.map((_, j) => {
      // CTR over a 24-bucket trailing window: single buckets hold few clicks.
      let imp = 0, clk = 0;
      for (let k = Math.max(0, j - 23); k <= j; k++) { imp += pts[k].impressions[i]; clk += pts[k].clicks[i]; }
      return imp ? clk / imp : null;
    }));
    const ymax = Math.max(0.001, ...smooth.flat().filter((y) => y !== null)) * 1.1;
    const sx = (j) => P + (W - 2 * P) * j / Math.max(1, pts.length - 1);
    const sy = (y) => H - P - (H - 2 * P) * y / ymax;
    const g = sb.svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", id: "series-svg" });
    g.append(sb.svg("line", { x1: P, x2: W - P, y1: H - P, y2: H - P, stroke: "#999" }));
    for (let i = 0; i <= 4; i++) {
      const y = ymax * i / 4;
      g.append(sb.svg("text", { x: 4, y: sy(y) + 3 }, sb.pct(y, 1)));
      g.append(sb.svg("line", { x1: P, x2: W - P, y1: sy(y), y2: sy(y), stroke: "#eee" }));
    }
    const step = Math.max(1, Math.ceil(pts.length / 10));
    for (let j = 0; j < pts.length; j += step) {
      g.append(sb.svg("text", { x: sx(j), y: H - 12, "text-anchor": "middle" }, sb.istShort(pts[j].start) + "h"));
    }
    smooth.forEach((ys, i) => {
      let d = "", pen = false;
      ys.forEach((y, j) => {
        if (y === null) { pen = false; return; }
        d += `${pen ? "L" : "M"}${sx(j).toFixed(1)},${sy(y).toFixed(1)}`;
        pen = true;
      });
      g.append(sb.svg("path", { d, fill: "none", stroke: color(banners[i]), "stroke-width": 1.4 }, sb.svg("title", {}, banners[i])));
    });
    return g;
  }

  async function refresh() {
    const slot = $("slot").value;
    if (!slot) return;
    const post = (await sb.api(`/v1/tenants/${tenant}/slots/${slot}/posteriors`)).body;
    banners = post.cities[0] ? post.cities[0].banners.map((b) => b.banner) : [];
    $("as-of").textContent = "posteriors as of " + sb.ist(post.as_of);
    legend($("legend"));
    $("curves").replaceChildren(...post.cities.map(curveChart));
    $("traffic").replaceChildren(trafficChart(post.cities));
    const cities = ["", ...post.cities.map((c) => c.city).filter((c) => c !== "*")];
    const chosen = $("series-city").value;
    $("series-city").replaceChildren(...cities.map((c) => sb.el("option", { value: c }, c || "all cities")));
    $("series-city").value = cities.includes(chosen) ? chosen : "";
    await refreshSeries();
  }

  async function refreshSeries() {
    const slot = $("slot").value;
    const c = $("series-city").value;
    const q = c ? `?city=${encodeURIComponent(c)}` : "";
    const series = (await sb.api(`/v1/tenants/${tenant}/slots/${slot}/series${q}`)).body;
    $("bucket").textContent = series.bucket_minutes === 60 ? "hour" : `${series.bucket_minutes} minutes`;
    legend($("series-legend"));
    $("series").replaceChildren(seriesChart(series));
  }

  async function start() {
    if (!sb.key()) { $("key-card").classList.remove("hidden"); return; }
    const me = (await sb.api("/v1/me")).body;
    tenant = me.tenant;
    $("whoami").textContent = `tenant ${me.tenant} · role ${me.role}`;
    $("key-card").classList.add("hidden");
    const slots = (await sb.api(`/v1/tenants/${tenant}/slots`)).body.slots;
    $("slot").replaceChildren(...slots.map((s) => sb.el("option", { value: s.slot }, s.slot)));
    await refresh();
    document.body.dataset.loaded = "true";
  }

  $("save-key").addEventListener("click", () => { sb.setKey($("key").value); start(); });
  $("slot").addEventListener("change", refresh);
  $("series-city").addEventListener("change", refreshSeries);
  setInterval(() => { if (tenant) refresh().catch(() => {}); }, 5000);
  start().catch((e) => { $("key-card").classList.remove("hidden"); $("as-of").textContent = e.message; });
})();
