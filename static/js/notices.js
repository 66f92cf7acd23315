// Dismiss a notice (Django's messages, shown at the top of every page).
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-dismiss-toast]");
  if (!button) return;
  const toast = button.closest(".toast");
  const list = toast.parentElement;
  toast.remove();
  if (!list.querySelector(".toast")) list.remove();
});
