// Markdown in the browser, rendered the way the server renders it (conversations/rendering.py):
// GitHub-flavoured markdown by marked, then sanitized by DOMPurify with the server's allow-list
// (one source: conversations/rendering.py, in the page as the json_script "markdown-policy").
// Raw HTML shows as text, images become links, links open in a new tab without a referrer.
// `enhance` adds what both server- and browser-rendered replies get: highlighting and copy buttons.
(function () {
  "use strict";

  // The allow-list is the server's (conversations/rendering.py), handed over by json_script. Without
  // it nothing is rendered as HTML: replies show as plain text.
  let policy = null;
  function loadPolicy() {
    const el = document.getElementById("markdown-policy");
    if (!el) return null;
    const p = JSON.parse(el.textContent);
    const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const perTag = (obj, make) => Object.fromEntries(Object.entries(obj).map(([tag, v]) => [tag, make(v)]));
    return {
      tags: p.tags,
      attributes: perTag(p.attributes, (names) => new Set(names)),
      values: perTag(p.values, (attrs) => perTag(attrs, (values) => new Set(values))),
      classes: perTag(p.classes, (names) => new Set(names)),
      classPatterns: perTag(p.class_patterns, (pattern) => new RegExp(`^(?:${pattern})$`)),
      forced: p.forced,
      linkRel: p.link_rel,
      cleanContent: p.clean_content_tags,
      // One of the schemes, or a relative URL: never javascript:, data:, vbscript: and the like.
      uri: new RegExp(`^(?:(?:${p.url_schemes.map(escape).join("|")}):|[^a-z]|[a-z+.-]+(?:[^a-z+.\\-:]|$))`, "i"),
    };
  }

  // Is this attribute allowed on this tag with this value, by the policy?
  function keepAttribute(tag, name, value) {
    if (name === "class") return false; // classes are filtered one by one below
    const values = policy.values[tag] && policy.values[tag][name];
    if (values) return values.has(value);
    return Boolean(policy.attributes[tag] && policy.attributes[tag].has(name));
  }

  function keptClasses(tag, value) {
    const names = policy.classes[tag];
    const pattern = policy.classPatterns[tag];
    return value.split(/\s+/).filter((c) => c && ((names && names.has(c)) || (pattern && pattern.test(c))));
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  let configured = false;
  function configure() {
    if (configured || !window.marked || !window.DOMPurify) return configured;
    policy = loadPolicy();
    if (!policy) return false;
    window.marked.use({
      gfm: true,
      breaks: false,
      renderer: {
        // Raw HTML in a message is text, as on the server (markdown-it with html=False).
        html(token) { return escapeHtml(token.text); },
        // An image URL would be fetched at once (a way to leak the conversation): show a link.
        image(token) { return `<a href="${escapeHtml(token.href || "")}">[image: ${escapeHtml(token.text || token.href || "image")}]</a>`; },
      },
      tokenizer: {
        // The server links URLs with a scheme only ("www.x" and "README.md" stay text). Returning
        // false hands over to marked's own tokenizer; undefined means "no link here".
        url(src) { return /^www\./i.test(src) ? undefined : false; },
      },
    });
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (!node.attributes) return;
      const tag = node.nodeName.toLowerCase();
      for (const { name, value } of Array.from(node.attributes)) {
        if (name === "class") {
          const kept = keptClasses(tag, value);
          if (kept.length) node.setAttribute("class", kept.join(" ")); else node.removeAttribute("class");
        } else if (!keepAttribute(tag, name, value)) {
          node.removeAttribute(name);
        }
      }
      for (const [name, value] of Object.entries(policy.forced[tag] || {})) node.setAttribute(name, value);
      if (tag === "a") node.setAttribute("rel", policy.linkRel);
    });
    configured = true;
    return true;
  }

  function purifyOptions() {
    const names = new Set(["class"]);
    for (const attrs of Object.values(policy.attributes)) attrs.forEach((n) => names.add(n));
    for (const attrs of Object.values(policy.values)) Object.keys(attrs).forEach((n) => names.add(n));
    return {
      ALLOWED_TAGS: policy.tags,
      ALLOWED_ATTR: [...names],
      ALLOWED_URI_REGEXP: policy.uri,
      // Added to DOMPurify's own list of tags removed with their content (a superset of the server's).
      ADD_FORBID_CONTENTS: policy.cleanContent,
      ALLOW_DATA_ATTR: false,
      ALLOW_ARIA_ATTR: false,
    };
  }

  /** HTML -> HTML with only what the server's allow-list keeps (null when the libraries or the policy are missing). */
  function sanitize(html) {
    if (!configure()) return null;
    return window.DOMPurify.sanitize(html, purifyOptions());
  }

  /** Markdown -> sanitized HTML string ("" when the libraries are missing). */
  function toHtml(text) {
    if (!configure()) return null;
    return sanitize(window.marked.parse(text || ""));
  }

  /** Render `text` into `el` (plain text if the libraries failed to load), then enhance it. */
  function render(el, text) {
    const html = toHtml(text);
    if (html === null) el.textContent = text; else el.innerHTML = html;
    enhance(el);
  }

  let copyTemplate = null;
  function copyButton() {
    copyTemplate = copyTemplate || document.getElementById("tpl-code-copy");
    if (copyTemplate) return copyTemplate.content.firstElementChild.cloneNode(true);
    const b = document.createElement("button");
    b.type = "button";
    b.className = "code-copy";
    b.textContent = "Copy";
    return b;
  }

  function highlight(code) {
    const lang = (code.className.match(/language-([\w-]+)/) || [])[1];
    if (lang && window.hljs && window.hljs.getLanguage(lang) && !code.dataset.highlighted) {
      try { window.hljs.highlightElement(code); } catch (e) { /* leave it plain */ }
    }
  }

  // A long history is highlighted as it scrolls into view: highlighting 500 code blocks at load
  // would hold the page for most of a second. (Colours only: the layout does not move.)
  let observer = null;
  function highlightLater(code) {
    if (!("IntersectionObserver" in window)) { highlight(code); return; }
    observer = observer || new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        observer.unobserve(entry.target);
        highlight(entry.target);
      }
    }, { rootMargin: "600px 0px" });
    observer.observe(code);
  }

  /** Give every code block its bar (language, copy button) and highlight those that name a known language. */
  function enhance(root, options) {
    const lazy = options && options.lazy;
    root.querySelectorAll("table").forEach((table) => { table.tabIndex = 0; }); // may scroll sideways
    root.querySelectorAll("pre > code").forEach((code) => {
      frame(code);
      if (lazy) highlightLater(code); else highlight(code);
    });
  }

  function frame(code) {
    const pre = code.parentElement;
    const lang = (code.className.match(/language-([\w-]+)/) || [])[1];
    if (pre.parentElement.classList.contains("code-block")) return;
    const wrap = document.createElement("div");
    wrap.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const label = document.createElement("span");
    label.className = "code-lang";
    label.textContent = lang || "text";
    const button = copyButton();
    button.setAttribute("aria-label", lang ? `Copy ${lang} code` : "Copy code");
    bar.append(label, button);
    pre.tabIndex = 0; // it scrolls sideways: reachable by keyboard
    pre.replaceWith(wrap);
    wrap.append(bar, pre);
  }

  if (window.hljs) window.hljs.configure({ ignoreUnescapedHTML: true });
  window.ChatMarkdown = { render, enhance, toHtml, sanitize, escapeHtml };
})();
