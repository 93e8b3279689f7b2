// Behaviour the pages declare in data attributes (the Content-Security-Policy
// allows no inline script). Everything works without it; this only helps.

// A form with data-confirm asks before it is sent.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

// -- the template editor ---------------------------------------------------------

let dirty = false;

// Enter in a one-line field does not submit the editor.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.isComposing) return;
  const field = event.target;
  if (!(field instanceof HTMLInputElement) || !field.closest("#editor")) return;
  if (["submit", "button", "checkbox", "radio"].includes(field.type)) return;
  event.preventDefault();
});

// Unsaved changes: warn before leaving the page.
document.addEventListener("input", (event) => {
  if (event.target.closest && event.target.closest("#editor")) dirty = true;
});
document.addEventListener("change", (event) => {
  if (event.target.closest && event.target.closest("#editor")) {
    dirty = true;
    if (["anchor", "target"].includes(event.target.id)) updateAnchorWords();
    if (["channel", "target"].includes(event.target.id)) updateWecomModes();
  }
});

// 欢迎语 and 朋友圈 are offered for customers on a WeCom channel only; a mode
// already chosen stays (validation says why it cannot).
function updateWecomModes() {
  const form = document.getElementById("editor");
  if (!form || !form.dataset.wecomChannels) return;
  const wecom = JSON.parse(form.dataset.wecomChannels);
  const channel = (form.querySelector("#channel") || {}).value || "";
  const target = (form.querySelector("#target") || {}).value || "contact";
  const on = wecom.includes(channel) && target === "contact";
  form.querySelectorAll("option[data-wecom]").forEach((option) => {
    const keep = on || option.selected;
    option.hidden = !keep;
    option.disabled = !keep;
  });
}
document.addEventListener("submit", (event) => {
  const submitter = event.submitter;
  if (event.target.id === "editor" && submitter && submitter.value === "save") dirty = false;
});
window.addEventListener("beforeunload", (event) => {
  if (dirty && document.getElementById("editor")) {
    event.preventDefault();
    event.returnValue = "";
  }
});

function updateAnchorWords() {
  const form = document.getElementById("editor");
  if (!form || !form.dataset.anchorWords) return;
  const words = JSON.parse(form.dataset.anchorWords);
  const anchor = (form.querySelector("#anchor") || {}).value || "join";
  const target = (form.querySelector("#target") || {}).value || "contact";
  const word = words[anchor + " " + target];
  if (!word) return;
  form.querySelectorAll("[data-anchor-after]").forEach((label) => {
    label.textContent = word;
  });
}

// After htmx swaps the editor: keep focus where the operator was adding, and a
// form sent back with problems still has unsaved changes.
document.addEventListener("htmx:afterSwap", (event) => {
  const form = document.getElementById("editor");
  if (!form || !event.detail.target || event.detail.target.id !== "editor") return;
  if (form.querySelector("#editor-errors")) dirty = true;
  const focus = form.dataset.focus && document.getElementById(form.dataset.focus);
  if (focus) focus.focus();
});

// Insert-variable buttons put {{ contact.name }} etc. at the cursor.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-insert]");
  if (!button) return;
  const field = document.getElementById(button.dataset.into);
  if (!field) return;
  const start = field.selectionStart ?? field.value.length;
  const end = field.selectionEnd ?? field.value.length;
  field.value = field.value.slice(0, start) + button.dataset.insert + field.value.slice(end);
  const caret = start + button.dataset.insert.length;
  field.focus();
  field.setSelectionRange(caret, caret);
  field.dispatchEvent(new Event("input", { bubbles: true }));
});

// -- the narrow-screen menu --------------------------------------------------------

document.addEventListener("click", (event) => {
  const toggle = event.target.closest("[data-nav-toggle]");
  if (!toggle) return;
  const open = document.body.classList.toggle("nav-open");
  toggle.setAttribute("aria-expanded", open ? "true" : "false");
});

// Sections marked data-open-wide (the log's filters) start open on wide screens.
document.addEventListener("DOMContentLoaded", () => {
  if (!window.matchMedia("(min-width: 641px)").matches) return;
  document.querySelectorAll("details[data-open-wide]").forEach((section) => {
    section.open = true;
  });
});

// A card from the material library fills the part's fields.
document.addEventListener("change", (event) => {
  const select = event.target.closest && event.target.closest("select[data-card-into]");
  if (!select || !select.value) return;
  const option = select.selectedOptions[0];
  const fields = JSON.parse(option.dataset.fields || "{}");
  Object.entries(fields).forEach(([name, value]) => {
    const input = document.getElementById(select.dataset.cardInto + "-" + name);
    if (input) {
      input.value = value;
      input.dispatchEvent(new Event("input", { bubbles: true }));
    }
  });
});
