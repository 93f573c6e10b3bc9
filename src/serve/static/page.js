// The demo page: pick a slot and city, get a decision, click the banner.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let tenant = null, current = null;

  function status(text, ok) {
    $("status").textContent = text;
    $("status").className = "status " + (ok ? "ok" : "err");
  }

  function city() { return $("other-city").value.trim() || $("city").value; }

  async function start() {
    if (!sb.key()) { $("key-card").classList.remove("hidden"); return; }
    try {
      const me = (await sb.api("/v1/me")).body;
      tenant = me.tenant;
      $("whoami").textContent = `tenant ${me.tenant} · role ${me.role}`;
      $("key-card").classList.add("hidden");
    } catch (e) {
      $("key-card").classList.remove("hidden");
      status("API key refused: " + e.message, false);
      return;
    }
    const slots = (await sb.api(`/v1/tenants/${tenant}/slots`)).body.slots;
    $("slot").replaceChildren(...slots.map((s) => sb.el("option", { value: s.slot }, `${s.slot} (${s.banners} banners)`)));
    await loadCities();
  }

  async function loadCities() {
    const slot = $("slot").value;
    if (!slot) return;
    const post = (await sb.api(`/v1/tenants/${tenant}/slots/${slot}/posteriors`)).body;
    const cities = post.cities.map((c) => c.city).filter((c) => c !== "*");
    const chosen = $("city").value;
    $("city").replaceChildren(...cities.map((c) => sb.el("option", { value: c }, c)));
    if (cities.includes(chosen)) $("city").value = chosen;
    else if (cities.includes("bangalore")) $("city").value = "bangalore";
    await showPosteriors();
  }

  async function showPosteriors() {
    const slot = $("slot").value;
    const c = city();
    if (!slot || !c) return;
    const post = (await sb.api(`/v1/tenants/${tenant}/slots/${slot}/posteriors?city=${encodeURIComponent(c)}`)).body;
    const cp = post.cities[0];
    $("post-city").textContent = cp.city === "*" ? `${c} (no counts yet: all cities pooled)` : cp.city;
    const rows = cp.banners.slice().sort((a, b) => b.mean - a.mean).map((b) => sb.el("tr", {},
      sb.el("td", {}, b.banner),
      sb.el("td", { class: "num" }, b.impressions.toLocaleString("en-IN")),
      sb.el("td", { class: "num" }, b.clicks.toLocaleString("en-IN")),
      sb.el("td", { class: "num" }, sb.pct(b.mean)),
      sb.el("td", { class: "num" }, `${sb.pct(b.lower95)} – ${sb.pct(b.upper95)}`),
      sb.el("td", {}, sb.el("div", { class: "bar", style: `width:${Math.max(1, 100 * b.p_best)}%`, title: sb.pct(b.p_best, 1) }))));
    $("posteriors").tBodies[0].replaceChildren(...rows);
  }

  async function decide() {
    const slot = $("slot").value, c = city();
    const params = new URLSearchParams({ city: c });
    if ($("customer").value.trim()) params.set("customer_id", $("customer").value.trim());
    try {
      current = (await sb.api(`/v1/tenants/${tenant}/slots/${slot}/decision?${params}`)).body;
    } catch (e) {
      status(`${e.status}: ${e.message}`, false);
      return;
    }
    const shown = current.banners[0];
    const img = $("banner-img");
    img.src = sb.imageUrl(shown.image);
    img.dataset.banner = shown.banner;
    img.classList.remove("hidden");
    $("decision-meta").innerHTML = "";
    $("decision-meta").append(
      sb.el("div", {}, "Banner ", sb.el("b", { id: "shown-banner" }, shown.banner), " for ", sb.el("b", {}, current.city)),
      sb.el("div", {}, "posterior of ", current.posterior_city === "*" ? "all cities (no counts for this city yet)" : current.posterior_city),
      sb.el("div", {}, "decided at ", sb.ist(current.ts)));
    status("", true);
  }

  async function click() {
    if (!current) return;
    const body = { request_id: current.request_id, banner: current.banners[0].banner };
    if ($("customer").value.trim()) body.customer_id = $("customer").value.trim();
    try {
      const res = await sb.api(`/v1/tenants/${tenant}/clicks`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      status(`Click on ${res.body.banner} recorded (${res.status}) at ${sb.ist(res.body.ts)}`, true);
    } catch (e) {
      status(`Click not recorded: ${e.status} ${e.message}`, false);
    }
  }

  $("save-key").addEventListener("click", () => { sb.setKey($("key").value); start(); });
  $("slot").addEventListener("change", loadCities);
  $("city").addEventListener("change", () => { $("other-city").value = ""; showPosteriors(); });
  $("other-city").addEventListener("change", showPosteriors);
  $("decide").addEventListener("click", decide);
  $("banner-img").addEventListener("click", click);
  setInterval(() => { if (tenant) showPosteriors().catch(() => {}); }, 3000);
  start().catch((e) => status(e.message, false));
})();
