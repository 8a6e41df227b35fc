// Swagger UI over this server's schema; "Authorize" takes an API key (a bearer key), kept in the page only.
window.ui = SwaggerUIBundle({
  url: "/docs/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,
  displayRequestDuration: true,
  validatorUrl: null, // never send the schema to swagger.io's validator
});
