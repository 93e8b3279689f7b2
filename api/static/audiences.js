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
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        var action = form.querySelector("[name=action]");
        if (action && action.value !== "remove" && !form.hasAttribute("data-confirm-always")) return;
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
  });
})();
