// Behaviour the pages declare in data attributes (the Content-Security-Policy
// allows no inline script): a form with data-confirm asks before it is sent.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
