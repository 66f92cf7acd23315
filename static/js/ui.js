// The page around the conversation: the sidebar (drawer on phones, thread menus, inline rename,
// delete confirmation, search), the new-chat picker, and small helpers chat.js shares (window.chatUI).
(function () {
  "use strict";

  document.documentElement.classList.replace("no-js", "js");

  // The sidebar groups threads by day in the person's own time zone.
  try {
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (tz) document.cookie = `tz=${encodeURIComponent(tz)}; path=/; max-age=31536000; SameSite=Lax`;
  } catch (e) { /* the server's zone then */ }

  const app = document.getElementById("app");
  const main = document.getElementById("main");
  const sidebar = document.getElementById("sidebar");
  if (!app || !sidebar) return;
  const threadList = document.getElementById("thread-list");
  const searchInput = document.getElementById("search-input");
  const searchStatus = document.getElementById("search-status");
  const openBtn = document.querySelector(".drawer-open");
  const currentId = main && main.dataset.conversationId;
  const phone = window.matchMedia("(max-width: 800px)");

  // -- the drawer (phones) ---------------------------------------------------------------------
  function openDrawer() {
    app.classList.add("drawer-open");
    openBtn && openBtn.setAttribute("aria-expanded", "true");
    if (main) main.inert = true;
    const first = sidebar.querySelector(".current .thread-link") || sidebar.querySelector(".new-chat-btn");
    setTimeout(() => first && first.focus(), 50);
  }
  function closeDrawer(returnFocus) {
    if (!app.classList.contains("drawer-open")) return;
    app.classList.remove("drawer-open");
    openBtn && openBtn.setAttribute("aria-expanded", "false");
    if (main) main.inert = false;
    if (returnFocus && openBtn) openBtn.focus();
  }
  openBtn && openBtn.addEventListener("click", openDrawer);
  document.querySelectorAll("[data-drawer-close]").forEach((el) => el.addEventListener("click", () => closeDrawer(true)));
  phone.addEventListener("change", () => { if (!phone.matches) closeDrawer(false); });

  // -- thread menus (<details>): one open at a time, closed by Escape or a click elsewhere ----------
  function closeMenus(except) {
    sidebar.querySelectorAll("details.thread-menu[open]").forEach((d) => { if (d !== except) d.open = false; });
  }
  sidebar.addEventListener("toggle", (event) => {
    const menu = event.target;
    if (!menu.matches("details.thread-menu") || !menu.open) return;
    closeMenus(menu);
    // Near the bottom of the list the menu opens upwards, so it is never cut off.
    const list = menu.closest(".threads-nav");
    const box = menu.querySelector(".menu");
    menu.classList.remove("up");
    if (list && box && box.getBoundingClientRect().bottom > list.getBoundingClientRect().bottom) menu.classList.add("up");
  }, true);
  document.addEventListener("click", (event) => {
    if (!event.target.closest("details.thread-menu")) closeMenus(null);
  });

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      const menu = document.querySelector("details.thread-menu[open]");
      if (menu) {
        menu.open = false;
        menu.querySelector("summary").focus();
        event.preventDefault();
        return;
      }
      if (app.classList.contains("drawer-open")) { closeDrawer(true); event.preventDefault(); }
    }
    // Ctrl/Cmd+K: search the conversations.
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "k" && searchInput) {
      event.preventDefault();
      if (phone.matches) openDrawer();
      searchInput.focus();
      searchInput.select();
    }
  });

  // -- the thread list after any swap: mark the open thread, announce search results ------------------
  function markCurrent() {
    if (!currentId) return;
    const li = document.getElementById(`thread-${currentId}`);
    if (!li || li.classList.contains("current")) return;
    li.classList.add("current");
    const link = li.querySelector(".thread-link");
    if (link) link.setAttribute("aria-current", "page");
  }

  // After settling: htmx restores swapped elements' attributes while it settles, which would undo the mark.
  document.body.addEventListener("htmx:afterSettle", (event) => {
    markCurrent();
    const target = event.detail.target;
    if (target === threadList && event.detail.requestConfig && event.detail.requestConfig.elt.id === "sidebar-search") {
      const n = threadList.querySelectorAll(".thread").length;
      const q = searchInput.value.trim();
      searchStatus.textContent = q ? `${n}${threadList.querySelector(".threads-more") ? "+" : ""} conversation${n === 1 ? "" : "s"} found` : "";
    }
    const input = target && target.querySelector && target.querySelector(".rename-input");
    if (input) { input.focus(); input.select(); }
  });

  // -- inline rename: Enter saves, Escape cancels, leaving the field saves ----------------------------
  function cancelRename(form) {
    const li = form.closest("li");
    if (window.htmx) window.htmx.ajax("GET", form.dataset.cancelUrl, { target: li, swap: "outerHTML" }).then(() => {
      const summary = document.querySelector(`#${CSS.escape(li.id)} summary`);
      summary && summary.focus();
    });
  }
  sidebar.addEventListener("keydown", (event) => {
    const form = event.target.closest && event.target.closest(".rename-form");
    if (form && event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      form.dataset.cancelled = "1";
      cancelRename(form);
    }
  });
  sidebar.addEventListener("focusout", (event) => {
    const form = event.target.closest && event.target.closest(".rename-form");
    if (!form || form.dataset.cancelled || form.dataset.saving) return;
    setTimeout(() => {
      if (!form.isConnected || form.contains(document.activeElement) || form.dataset.cancelled) return;
      if (form.querySelector(".rename-input").value.trim()) {
        form.dataset.saving = "1";
        form.requestSubmit();
      } else {
        cancelRename(form);
      }
    }, 0);
  });
  sidebar.addEventListener("submit", (event) => {
    const form = event.target.closest(".rename-form");
    if (form) form.dataset.saving = "1";
  }, true);

  document.body.addEventListener("chat:renamed", (event) => {
    const { id, title } = event.detail;
    if (id === currentId) setTitle(title);
  });
  document.body.addEventListener("chat:deleted", (event) => {
    if (event.detail.id === currentId) window.location.assign("/");
  });

  function setTitle(title) {
    const h1 = document.getElementById("chat-title");
    if (h1 && title && h1.textContent !== title) h1.textContent = title;
    if (title) document.title = `${title} · Chat`;
  }

  // -- confirmations: our own dialog instead of window.confirm ------------------------------------------
  const dialog = document.getElementById("confirm-dialog");
  document.body.addEventListener("htmx:confirm", (event) => {
    if (!event.detail.question || !dialog || !dialog.showModal) return;
    event.preventDefault();
    const opener = document.activeElement;
    dialog.querySelector("#confirm-text").textContent = event.detail.question;
    dialog.returnValue = "";
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "ok") {
        event.detail.issueRequest(true);
      } else if (opener && opener.isConnected) {
        opener.focus();
      }
    }, { once: true });
    dialog.showModal();
  });

  // -- the offline-model notice can be put away for the rest of the session -----------------------------
  const banner = document.getElementById("offline-banner");
  if (banner) {
    if (sessionStorage.getItem("chat:banner-dismissed")) banner.classList.add("dismissed");
    const close = banner.querySelector("[data-dismiss-banner]");
    close && close.addEventListener("click", () => {
      banner.classList.add("dismissed");
      sessionStorage.setItem("chat:banner-dismissed", "1");
      (document.getElementById("composer-input") || main).focus();
    });
  }

  // -- refreshing the sidebar after a message, and when the model's title arrives -----------------------
  function refreshSidebar() {
    if (!window.htmx || !threadList) return Promise.resolve();
    if (searchInput && searchInput.value.trim()) return Promise.resolve(); // never disturb a search
    if (threadList.querySelector(".editing, details[open]")) return Promise.resolve(); // nor a rename or open menu
    return window.htmx.ajax("GET", "/conversations/sidebar/", { target: threadList, swap: "innerHTML" }).then(() => {
      const li = currentId && document.getElementById(`thread-${currentId}`);
      const title = li && li.querySelector(".thread-title");
      if (title) setTitle(title.textContent);
    });
  }

  // -- clipboard (with a fallback where the async API is missing, e.g. plain http on a LAN address) ----
  function copyText(textOrPromise) {
    if (navigator.clipboard && window.ClipboardItem && typeof textOrPromise !== "string") {
      const blob = Promise.resolve(textOrPromise).then((t) => new Blob([t], { type: "text/plain" }));
      return navigator.clipboard.write([new ClipboardItem({ "text/plain": blob })]);
    }
    return Promise.resolve(textOrPromise).then((text) => {
      if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      if (!ok) throw new Error("copy failed");
    });
  }
  function flashCopied(button, ok) {
    const label = button.querySelector(".act-label");
    const before = label ? label.textContent : button.textContent;
    if (label) label.textContent = ok ? "Copied" : "Copy failed"; else button.textContent = ok ? "Copied" : "Copy failed";
    button.classList.add("copied");
    setTimeout(() => {
      if (label) label.textContent = before; else button.textContent = before;
      button.classList.remove("copied");
    }, 1500);
  }
  // Code blocks' copy buttons (replies rendered by the server and by the browser alike).
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-act='copy-code']");
    if (!button) return;
    const code = button.closest(".code-block").querySelector("pre code");
    copyText(code.textContent).then(() => flashCopied(button, true), () => flashCopied(button, false));
  });

  // -- composer helpers shared by the new-chat form and the conversation page ---------------------------
  const coarse = window.matchMedia("(pointer: coarse)");
  function wireComposer(input, submit, maxChars, counter, canSend) {
    // Ready to type on a desktop; on a phone, opening the keyboard unasked would hide the page.
    if (!coarse.matches && !document.querySelector("dialog[open]")) input.focus({ preventScroll: true });
    function grow() {
      input.style.height = "auto";
      input.style.height = Math.min(input.scrollHeight + 2, Math.round(window.innerHeight * 0.4)) + "px";
    }
    function count() {
      const n = input.value.length;
      const near = n > maxChars * 0.9;
      counter.textContent = near ? `${n.toLocaleString()} / ${maxChars.toLocaleString()} characters` : "";
      counter.classList.toggle("over", n > maxChars);
      return n <= maxChars;
    }
    input.addEventListener("input", () => { grow(); count(); canSend(); });
    input.addEventListener("keydown", (event) => {
      // On touch keyboards Enter makes a new line; the send button sends.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !coarse.matches) {
        event.preventDefault();
        submit();
      }
    });
    grow();
    count();
    return { grow, count };
  }

  // -- the new-chat page: pick a persona, write the first message --------------------------------------
  const newChat = document.getElementById("new-chat");
  if (newChat) {
    const input = newChat.querySelector("#composer-input");
    const banner = document.getElementById("offline-banner");
    const maxChars = parseInt(main.dataset.maxChars || "20000", 10);
    newChat.addEventListener("change", (event) => {
      if (event.target.name === "persona" && banner) banner.hidden = !event.target.dataset.offline;
    });
    let starting = false;
    const start = () => {
      if (starting) return;
      const content = input ? input.value : "";
      if (content.length > maxChars) return;
      starting = true;
      const data = new FormData(newChat);
      data.delete("content");
      fetch(newChat.action, { method: "POST", body: data, credentials: "same-origin" }).then((response) => {
        if (!response.ok || !response.redirected) throw new Error(`status ${response.status}`);
        // The conversation page sends the first message once its socket is open.
        if (content.trim()) sessionStorage.setItem(`chat:first:${new URL(response.url).pathname}`, content);
        window.location.assign(response.url);
      }).catch(() => { starting = false; newChat.submit(); });
    };
    newChat.addEventListener("submit", (event) => { event.preventDefault(); start(); });
    if (input) wireComposer(input, start, maxChars, document.getElementById("char-count"), () => {});
  }

  window.chatUI = { refreshSidebar, setTitle, copyText, flashCopied, wireComposer, closeDrawer };
})();
