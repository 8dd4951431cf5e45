"""The reverse API Pipedrive calls: routes, validation, auth, the meeting service, manifest and OpenAPI."""
