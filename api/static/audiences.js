// Audience pages: tick every row of the page; confirm a removal.
(function () {
  "use strict";
  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }
  // The CSV import's progress bar: while an import request runs, poll how many
  // rows are written (GET /contacts/import/progress) and show "N / total".
  function importProgress() {
    var form = document.getElementById("import-form");
    var box = document.getElementById("import-progress");
    if (!form || !box) return;
    var bar = document.getElementById("import-bar");
    var label = document.getElementById("import-progress-text");
    var importing = false;
    var timer = null;
    function show(p) {
      if (p.total) {
        bar.max = p.total;
        bar.value = p.done;
        label.textContent = box.getAttribute("data-text")
          .replace("{done}", p.done)
          .replace("{total}", p.total);
      }
    }
    function poll() {
      return fetch(box.getAttribute("data-url"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : {}; })
        .then(show)
        .catch(function () {});
    }
    form.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (button) importing = button.value === "import";
    }, true);
    form.addEventListener("htmx:beforeRequest", function () {
      if (!importing) return;
      box.hidden = false;
      bar.removeAttribute("value");
      label.textContent = box.getAttribute("data-reading");
      timer = window.setInterval(poll, 250);
    });
    form.addEventListener("htmx:afterRequest", function () {
      if (timer === null) return;
      window.clearInterval(timer);
      timer = null;
      poll();
    });
  }
  ready(importProgress);
  ready(function () {
    var all = document.getElementById("tick-page");
    if (all) {
      all.addEventListener("change", function () {
        document.querySelectorAll("input.tick").forEach(function (box) {
          box.checked = all.checked;
        });
      });
    }
    // The bulk form asks only for a removal (ui.js asks for every data-confirm form).
    document.querySelectorAll("form[data-confirm-remove]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        var action = form.querySelector("[name=action]");
        if (action && action.value !== "remove") return;
        if (!window.confirm(form.getAttribute("data-confirm-remove"))) event.preventDefault();
      });
    });
  });
})();
