// Markdown in the browser, rendered the way the server renders it (conversations/rendering.py):
// GitHub-flavoured markdown by marked, then sanitized by DOMPurify with the server's allow-list.
// Raw HTML shows as text, images become links, links open in a new tab without a referrer.
// `enhance` adds what both server- and browser-rendered replies get: highlighting and copy buttons.
(function () {
  "use strict";

  const TAGS = [
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "input", "li",
    "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
  ];
  const ATTRS = ["href", "title", "class", "start", "checked", "disabled", "type", "align"];
  const CLASSES = { ul: /^contains-task-list$/, li: /^task-list-item$/, input: /^task-list-item-checkbox$/, code: /^language-[A-Za-z0-9-]+$/ };
  const ALIGN = new Set(["left", "center", "right"]);
  // http(s), mailto, or a relative URL: never javascript:, data:, vbscript: and the like.
  const URI = /^(?:(?:https?|mailto):|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i;

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  let configured = false;
  function configure() {
    if (configured || !window.marked || !window.DOMPurify) return configured;
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
      const tag = node.nodeName.toLowerCase();
      if (node.hasAttribute("class")) {
        const allowed = CLASSES[tag];
        const kept = allowed ? node.getAttribute("class").split(/\s+/).filter((c) => allowed.test(c)) : [];
        if (kept.length) node.setAttribute("class", kept.join(" ")); else node.removeAttribute("class");
      }
      if ((tag === "td" || tag === "th") && node.hasAttribute("align") && !ALIGN.has(node.getAttribute("align"))) {
        node.removeAttribute("align");
      }
      if (tag !== "td" && tag !== "th") node.removeAttribute("align");
      if (tag !== "input") { node.removeAttribute("checked"); node.removeAttribute("disabled"); node.removeAttribute("type"); }
      if (tag !== "ol") node.removeAttribute("start");
      if (tag === "input") { node.setAttribute("type", "checkbox"); node.setAttribute("disabled", "disabled"); }
      if (tag === "a") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
    configured = true;
    return true;
  }

  const PURIFY = {
    ALLOWED_TAGS: TAGS,
    ALLOWED_ATTR: ATTRS,
    ALLOWED_URI_REGEXP: URI,
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
  };

  /** Markdown -> sanitized HTML string ("" when the libraries are missing). */
  function toHtml(text) {
    if (!configure()) return null;
    return window.DOMPurify.sanitize(window.marked.parse(text || ""), PURIFY);
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
  window.ChatMarkdown = { render, enhance, toHtml, escapeHtml };
})();
