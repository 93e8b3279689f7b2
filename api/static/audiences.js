// Audience pages: tick every row of the page; confirm a removal.
(function () {
  "use strict";
  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }
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
