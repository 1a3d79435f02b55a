"""Where the API key comes from and how clients send it (shared by the app and the runner,
which must not load the app: `medxpert serve`'s parent process stays small)."""

API_KEY_VARIABLE = "MEDXPERT_API_KEY"
API_KEY_HEADER = "X-API-Key"
