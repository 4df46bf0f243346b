"""Who is asking: bearer JWTs, roles, organisations, services and SMART-style scopes."""
