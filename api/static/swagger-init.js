// Starts the vendored Swagger UI on /docs (a file, not an inline script, so the
// Content-Security-Policy can allow only this site's own scripts).
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  // Logged in through the browser: changes carry the session's CSRF token.
  requestInterceptor: (request) => {
    if (root.dataset.csrfToken) request.headers["X-CSRF-Token"] = root.dataset.csrfToken;
    return request;
  },
});
