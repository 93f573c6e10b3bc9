// Shared by the demo page and the dashboard: the API key, API calls, IST formatting.
"use strict";

const sb = (() => {
  const STORAGE = "slotbandit.key";

  function keyFromFragment() {
    const m = /(?:^#|&)key=([^&]+)/.exec(location.hash);
    if (m) {
      localStorage.setItem(STORAGE, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return localStorage.getItem(STORAGE);
  }

  let key = keyFromFragment();

  function setKey(k) {
    key = k.trim();
    localStorage.setItem(STORAGE, key);
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: "Bearer " + key }, options.headers || {});
    const res = await fetch(path, Object.assign({}, options, { headers }));
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = { detail: text }; }
    if (!res.ok) {
      const err = new Error((body && body.detail) || res.statusText);
      err.status = res.status;
      err.body = body;
      throw err;
    }
    return { status: res.status, body };
  }

  const IST = new Intl.DateTimeFormat("en-IN", {
    timeZone: "Asia/Kolkata", day: "2-digit", month: "short", hour: "2-digit",
    minute: "2-digit", second: "2-digit", hour12: false,
  });
  const IST_SHORT = new Intl.DateTimeFormat("en-IN", {
    timeZone: "Asia/Kolkata", day: "2-digit", month: "short", hour: "2-digit", hour12: false,
  });

  function ist(ts) { return IST.format(new Date(ts)) + " IST"; }
  function istShort(ts) { return IST_SHORT.format(new Date(ts)); }

  function imageUrl(image) {
    return /^(https?:)?\/\//.test(image) || image.startsWith("/") ? image : "/static/banners/" + encodeURIComponent(image);
  }

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  function svg(tag, attrs = {}, ...children) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  // Lanczos approximation of ln Γ, for Beta densities.
  function lnGamma(z) {
    const g = 7, c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028,
      771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012,
      9.9843695780195716e-6, 1.5056327351493116e-7];
    if (z < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * z)) - lnGamma(1 - z);
    z -= 1;
    let x = c[0];
    for (let i = 1; i < g + 2; i++) x += c[i] / (z + i);
    const t = z + g + 0.5;
    return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(x);
  }

  function betaPdf(x, a, b) {
    if (x <= 0 || x >= 1) return 0;
    return Math.exp((a - 1) * Math.log(x) + (b - 1) * Math.log1p(-x) + lnGamma(a + b) - lnGamma(a) - lnGamma(b));
  }

  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function pct(x, digits = 2) { return (100 * x).toFixed(digits) + "%"; }

  return { key: () => key, setKey, api, ist, istShort, imageUrl, el, svg, betaPdf, COLORS, pct };
})();
